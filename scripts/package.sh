#!/usr/bin/env bash
# Builds nodelet's packages from the metadata in Cargo.toml:
#   target/debian/nodelet_<version>-1_<arch>.deb        (cargo-deb)
#   target/generate-rpm/nodelet-<version>-1.<arch>.rpm  (cargo-generate-rpm)
# The binary is the `dist` profile (release, stripped); shell completions and man pages
# are generated from the CLI into target/package/. cargo-deb and cargo-generate-rpm are
# installed once, at pinned versions, into $NODELET_TOOLS_DIR
# (default /var/cache/nodelet-test/cargo-tools), outside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=${NODELET_TOOLS_DIR:-/var/cache/nodelet-test/cargo-tools}
deb_version=3.8.0
rpm_version=0.21.1
target=${CARGO_TARGET_DIR:-target}

tool() { # name version
  if ! "$tools/bin/$1" --version 2>/dev/null | grep -q "$2"; then
    echo "installing $1 $2 into $tools" >&2
    cargo install --locked --quiet --root "$tools" "$1" --version "$2"
  fi
}
tool cargo-deb "$deb_version"
tool cargo-generate-rpm "$rpm_version"
export PATH="$tools/bin:$PATH"

echo "== cargo build --profile dist (release, stripped)" >&2
# The agent and the container log driver the shims start beside it (one per container,
# so it is a small binary of its own).
cargo build --locked --profile dist --bin nodelet --bin nodelet-log-driver

# The package metadata names files relative to the workspace root, under target/.
if [ "$target" != target ]; then
  mkdir -p target
  ln -sfn "$(realpath "$target")/dist" target/dist
fi
bin=target/dist/nodelet
gen=target/package
rm -rf "$gen"
mkdir -p "$gen/completions" "$gen/man"
"$bin" completion bash >"$gen/completions/nodelet.bash"
"$bin" completion zsh >"$gen/completions/_nodelet"
"$bin" completion fish >"$gen/completions/nodelet.fish"
"$bin" man "$gen/man"
gzip -9n "$gen"/man/*.1

echo "== cargo deb" >&2
cargo deb --no-build --no-strip --output target/debian/
echo "== cargo generate-rpm" >&2
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
mkdir -p target/generate-rpm
cargo generate-rpm --output "target/generate-rpm/nodelet-$version-1.$(uname -m).rpm"
ls target/debian/*.deb target/generate-rpm/*.rpm
