#!/usr/bin/env bash
# Prints the path of Debian's kubectl 1.20 (package kubernetes-client), extracted into
# the test cache without installing it: installing the package would replace
# /usr/bin/kubectl, the newer kubectl the tests also use. Idempotent; needs the
# Debian archive only the first time.
set -euo pipefail
cache="${NODELET_TEST_CACHE:-/var/cache/nodelet-test}/kubectl-1.20"
bin="$cache/usr/bin/kubectl"
if [[ ! -x "$bin" ]]; then
  mkdir -p "$cache"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download kubernetes-client >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get download kubernetes-client >/dev/null; })
  dpkg-deb -x "$work"/kubernetes-client_*.deb "$cache"
fi
"$bin" version --client >/dev/null 2>&1 || { echo "kubectl 1.20 at $bin does not run" >&2; exit 1; }
echo "$bin"
