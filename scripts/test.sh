#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints, unit tests, and the integration and
# end-to-end tests against a real containerd, runc, CNI plugins and network namespaces.
# Installs what is missing, starts a containerd private to the tests (stopped again at
# the end if this script started it). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

started=
if ! scripts/containerd-private.sh status >/dev/null 2>&1; then started=1; fi
sock=$(scripts/containerd-private.sh start)
stop() { if [ -n "$started" ]; then scripts/containerd-private.sh stop; fi; }
trap stop EXIT
export NODELET_TEST_CONTAINERD=$sock

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test (unit, integration, end-to-end)"
cargo test --workspace
