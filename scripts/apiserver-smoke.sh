#!/usr/bin/env bash
# Smoke check of the real apiserver tier (scripts/build-apiserver.sh, scripts/apiserver.sh):
# starts the control plane in a fresh run dir of its own, checks it the way a user would with
# kubectl (readyz, a namespace, a server-side dry-run of a pod, a service-account token, a
# node client CSR approved with `kubectl certificate approve` and signed by the
# controller-manager, the signed certificate authenticating as that node), stops it and checks
# that none of its processes is left. Exit 0 only if every check passed.
#   scripts/apiserver-smoke.sh   (run dir: $NODELET_APISERVER_DIR, default target/nodelet-apiserver-smoke)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export NODELET_APISERVER_DIR=${NODELET_APISERVER_DIR:-$here/target/nodelet-apiserver-smoke}
api=$here/scripts/apiserver.sh
dir=$NODELET_APISERVER_DIR
passed=0
failed=0

ok() { echo "ok: $*"; passed=$((passed + 1)); }
fail() { echo "FAILED: $*" >&2; failed=$((failed + 1)); }
# check NAME CMD...: runs CMD, counts it.
check() {
  local name=$1
  shift
  if out=$("$@" 2>&1); then ok "$name"; else fail "$name: $out"; fi
}
# until_ok SECONDS CMD...: retries CMD until it succeeds.
until_ok() {
  local secs=$1
  shift
  for _ in $(seq 1 $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  "$@"
}

pids=()
finish() {
  local rc=$?
  "$api" stop || fail "apiserver.sh stop"
  local pid left=""
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left+=" $pid"; done
  if [ -z "$left" ]; then ok "no process left after stop"; else fail "processes left after stop:$left"; fi
  echo "apiserver smoke: $passed passed, $failed failed"
  [ "$failed" -eq 0 ] && [ "$rc" -eq 0 ]
}

"$api" clean
trap finish EXIT
start=$(date +%s%N)
eval "$("$api" start)"
ok "started in $((($(date +%s%N) - start) / 1000000)) ms"
for c in etcd kube-apiserver kube-controller-manager kube-scheduler; do pids+=("$(cat "$dir/$c.pid")"); done
check "apiserver.sh status" "$api" status

kc() { kubectl --kubeconfig="$KUBECONFIG" "$@"; }
check "readyz" test "$(kc get --raw /readyz)" = ok
check "server version v1.37.2" sh -c "kubectl --kubeconfig='$KUBECONFIG' version -o json | grep -q '\"gitVersion\": \"v1.37.2\"'"
check "create namespace" kc create namespace smoke
# The serviceaccount controller makes "default" (pods need it, as upstream); the apiserver
# signs its token with sa.key.
check "service account token" until_ok 30 kc -n smoke create token default

cat >"$dir/smoke-pod.yaml" <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: smoke, namespace: smoke}
spec:
  containers:
  - {name: c, image: nodelet.local/busybox:test, command: [sleep, "3600"]}
EOF
check "pod dry-run=server" kc create --dry-run=server -f "$dir/smoke-pod.yaml"
check "pod not stored by the dry run" sh -c "! kubectl --kubeconfig='$KUBECONFIG' -n smoke get pod smoke"

# A node client certificate through a CSR, as kubelet TLS bootstrap asks for one.
openssl genrsa -out "$dir/smoke-node.key" 2048 2>/dev/null
openssl req -new -key "$dir/smoke-node.key" -subj "/O=system:nodes/CN=system:node:smoke-node" \
  -out "$dir/smoke-node.csr" 2>/dev/null
cat >"$dir/smoke-csr.yaml" <<EOF
apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata: {name: smoke-node}
spec:
  request: $(base64 -w0 <"$dir/smoke-node.csr")
  signerName: kubernetes.io/kube-apiserver-client-kubelet
  usages: [digital signature, client auth]
EOF
check "create CSR" kc create -f "$dir/smoke-csr.yaml"
check "kubectl certificate approve" kc certificate approve smoke-node
issued() { [ -n "$(kc get csr smoke-node -o jsonpath='{.status.certificate}')" ]; }
if until_ok 30 issued; then
  ok "controller-manager issued the certificate"
  kc get csr smoke-node -o jsonpath='{.status.certificate}' | base64 -d >"$dir/smoke-node.crt"
  check "certificate chains to the cluster CA" openssl verify -CAfile "$NODELET_APISERVER_CA" "$dir/smoke-node.crt"
  whoami() {
    kubectl --server="$NODELET_APISERVER_URL" --certificate-authority="$NODELET_APISERVER_CA" \
      --client-certificate="$dir/smoke-node.crt" --client-key="$dir/smoke-node.key" \
      --kubeconfig=/dev/null auth whoami -o jsonpath='{.status.userInfo.username}'
  }
  check "the certificate authenticates as system:node:smoke-node" test "$(whoami)" = system:node:smoke-node
else
  fail "no certificate in CSR smoke-node after 30s: $(kc get csr smoke-node -o yaml)"
fi
