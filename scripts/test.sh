#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints, unit tests, and the integration and
# end-to-end tests against a real containerd, runc, CNI plugins and network namespaces, and
# the real apiserver tier (kube-apiserver v1.37.2 and etcd on loopback, built once from the Go
# module proxy into /var/cache/nodelet-test by scripts/build-apiserver.sh).
# Installs what is missing, starts a containerd private to the tests (stopped again at
# the end if this script started it) and the control plane in target/nodelet-apiserver
# (stopped again at the end, whatever happens). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# A fresh machine has Go only at /usr/local/go/bin; build-apiserver.sh looks on $PATH.
case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) export PATH=$PATH:/usr/local/go/bin ;; esac

export NODELET_APISERVER_DIR=$PWD/target/nodelet-apiserver

started=
apiserver_started=
stop() {
  local rc=$?
  if [ -n "$apiserver_started" ]; then scripts/apiserver.sh stop || rc=1; fi
  if [ -n "$started" ]; then scripts/containerd-private.sh stop || rc=1; fi
  exit $rc
}
trap stop EXIT

if ! scripts/containerd-private.sh status >/dev/null 2>&1; then started=1; fi
sock=$(scripts/containerd-private.sh start)
export NODELET_TEST_CONTAINERD=$sock

echo "== real apiserver tier (build cached in /var/cache/nodelet-test)"
scripts/build-apiserver.sh >/dev/null
apiserver_started=1
scripts/apiserver.sh start >/dev/null
# Tests that need the apiserver read this and fail, saying so, when it is unset.
export NODELET_TEST_KUBECONFIG=$NODELET_APISERVER_DIR/admin.kubeconfig

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test (unit, integration, end-to-end, real apiserver)"
cargo test --workspace
echo "== packages (.deb and .rpm built and checked)"
scripts/package.sh
scripts/test-packages.sh
