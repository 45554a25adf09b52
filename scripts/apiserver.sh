#!/usr/bin/env bash
# Runs a real Kubernetes control plane on loopback for nodelet's apiserver test tier: etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler, built by
# scripts/build-apiserver.sh, with certificates made here by openssl. Everything lives in a
# run dir, $NODELET_APISERVER_DIR (default target/nodelet-apiserver in the checkout):
#   pki/         ca (also the CSR signer), apiserver serving cert for 127.0.0.1/localhost,
#                admin (O=system:masters), controller-manager, scheduler and the apiserver's
#                kubelet client certs, the service-account key pair, front-proxy-ca and the
#                aggregation layer's front-proxy-client cert
#   etcd/        etcd's data dir; *.log, *.pid per component; ports.env (kept across restarts)
#   admin.kubeconfig, controller-manager.kubeconfig, scheduler.kubeconfig
#
#   scripts/apiserver.sh start          -> starts what is not running, waits for /readyz and
#                                          prints the `env` lines; idempotent
#   scripts/apiserver.sh stop [NAME..]  -> stops the processes this script started (by PID),
#                                          all of them or the named ones (etcd, kube-apiserver,
#                                          kube-controller-manager, kube-scheduler); state is kept,
#                                          so `stop kube-apiserver; start` restarts on the same port
#   scripts/apiserver.sh status         -> one line per component; exit 0 if all run and ready
#   scripts/apiserver.sh env            -> export KUBECONFIG=... and NODELET_APISERVER_* lines
#   scripts/apiserver.sh node-kubeconfig NODE [FILE]
#                                       -> writes a kubeconfig for system:node:NODE (O=system:nodes)
#                                          and prints its path
#   scripts/apiserver.sh clean          -> stop, then remove the run dir
# $NODELET_APISERVER_RUNTIME_CONFIG, when set, is passed as kube-apiserver's --runtime-config
# (e.g. discovery.k8s.io/v1=false: a server without EndpointSlices, for the proxy's core
# Endpoints fallback); unset, the apiserver serves its default API set.
# Other releases: NODELET_K8S_VERSION (and NODELET_K8S_PROGRAMS) go to build-apiserver.sh
# (e.g. v1.24.17, the newest serving discovery.k8s.io/v1beta1, with
# NODELET_APISERVER_RUNTIME_CONFIG=discovery.k8s.io/v1=false for a server with only v1beta1
# slices); kube-apiserver gets only the flags its release has (keyed on its --version), and a
# bin dir built without kube-controller-manager and kube-scheduler runs etcd and
# kube-apiserver alone (the run dir's `components` lists what was started).
# Nothing listens off loopback; the service range 10.96.0.0/16 and cluster CIDR 10.244.0.0/16
# are bookkeeping only (nothing routes or sends traffic there).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${NODELET_APISERVER_DIR:-$here/target/nodelet-apiserver}
pki=$dir/pki
components=(etcd kube-apiserver kube-controller-manager kube-scheduler)

log() { echo "apiserver.sh: $*" >&2; }

pid_of() { [ -f "$dir/$1.pid" ] && cat "$dir/$1.pid"; }
running() {
  local pid
  pid=$(pid_of "$1") || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # The PID must still be the program we started (a recycled PID is someone else's); a
  # rebuild since shows as "(deleted)".
  local exe
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "${exe% (deleted)}" = "$(cat "$dir/$1.exe" 2>/dev/null)" ]
}

# shellcheck source=/dev/null
load_ports() { [ -f "$dir/ports.env" ] && . "$dir/ports.env"; }

# A free TCP port on 127.0.0.1 below the ephemeral range, not one of those already chosen.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    case " ${chosen:-} " in *" $p "*) continue ;; esac
    if [ -z "$(ss -Htln "sport = :$p")" ]; then chosen="${chosen:-} $p"; echo "$p"; return 0; fi
  done
  log "no free port found"
  return 1
}

choose_ports() {
  load_ports && return 0
  chosen=""
  etcd_port=$(free_port)
  etcd_peer_port=$(free_port)
  apiserver_port=${NODELET_APISERVER_PORT:-$(free_port)}
  kcm_port=$(free_port)
  scheduler_port=$(free_port)
  cat >"$dir/ports.env" <<EOF
etcd_port=$etcd_port
etcd_peer_port=$etcd_peer_port
apiserver_port=$apiserver_port
kcm_port=$kcm_port
scheduler_port=$scheduler_port
EOF
}

ssl() { openssl "$@" 2>>"$pki/openssl.log"; }

# cert NAME SUBJECT [SAN [CA]]: a key and a certificate signed by the CA (default ca) for
# client use, and for server use too when SAN is given. Serialised on a lock in the pki
# directory: tests ask for node kubeconfigs concurrently, and `openssl x509 -CAcreateserial`
# rewrites ca.srl in place (a concurrent reader sees a short line and fails).
cert() {
  (
    flock 8
    cert_unlocked "$@"
  ) 8>"$pki/.lock"
}

cert_unlocked() {
  local name=$1 subj=$2 san=${3:-} ca=${4:-ca}
  [ -f "$pki/$name.crt" ] && return 0
  ssl genrsa -out "$pki/$name.key" 2048
  ssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$pki/$name.ext"
  ssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt"
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# ca NAME CN: a self-signed CA (under the same lock as cert).
ca() {
  (
    flock 8
    ca_unlocked "$@"
  ) 8>"$pki/.lock"
}

ca_unlocked() {
  [ -f "$pki/$1.crt" ] && return 0
  ssl genrsa -out "$pki/$1.key" 2048
  ssl req -x509 -new -key "$pki/$1.key" -subj "/CN=$2" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" -out "$pki/$1.crt"
}

make_pki() {
  mkdir -p "$pki"
  chmod 700 "$pki"
  ca ca nodelet-test-ca
  ca front-proxy-ca nodelet-test-front-proxy-ca
  cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=kubernetes-admin"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  # The aggregation layer's client identity, which kube-controller-manager and kube-scheduler
  # (delegated authentication) read from kube-system/extension-apiserver-authentication.
  cert front-proxy-client "/CN=front-proxy-client" "" front-proxy-ca
  if [ ! -f "$pki/sa.key" ]; then
    ssl genrsa -out "$pki/sa.key" 2048
    ssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
  fi
}

# kubeconfig FILE USER CERT-NAME: a kubeconfig with the CA and client cert embedded.
kubeconfig() {
  local file=$1 user=$2 name=$3
  cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nodelet-test
  cluster:
    server: https://127.0.0.1:$apiserver_port
    certificate-authority-data: $(base64 -w0 <"$pki/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 <"$pki/$name.crt")
    client-key-data: $(base64 -w0 <"$pki/$name.key")
contexts:
- name: $user@nodelet-test
  context:
    cluster: nodelet-test
    user: $user
current-context: $user@nodelet-test
EOF
  chmod 600 "$file.tmp"
  mv "$file.tmp" "$file"
}

# launch NAME ARGS...: starts the built binary NAME in the background, records its PID.
launch() {
  local name=$1
  shift
  running "$name" && return 0
  echo "--- $(date -u +%FT%TZ) start" >>"$dir/$name.log"
  # Where this run's log starts, for waits that read it.
  wc -c <"$dir/$name.log" >"$dir/$name.logstart"
  # 9>&-: the daemon must not hold the run dir's lock (a later start would wait forever).
  "$bin/$name" "$@" </dev/null >>"$dir/$name.log" 2>&1 9>&- &
  echo $! >"$dir/$name.pid"
  readlink -f "$bin/$name" >"$dir/$name.exe"
}

# wait_for NAME SECONDS CMD...: until CMD succeeds, the process NAME still running.
wait_for() {
  local name=$1 secs=$2
  shift 2
  for _ in $(seq 1 $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! running "$name"; then
      log "$name exited; the end of $dir/$name.log:"
      tail -25 "$dir/$name.log" >&2
      return 1
    fi
    sleep 0.2
  done
  log "$name not ready after ${secs}s; the end of $dir/$name.log:"
  tail -25 "$dir/$name.log" >&2
  return 1
}

admin_get() {
  curl -sf --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$apiserver_port$1"
}
etcd_healthy() { curl -sf --max-time 2 "http://127.0.0.1:$etcd_port/health" | grep -q '"health":"true"'; }
# With a --runtime-config turning an API off, the apiserver's own informers of that API never
# sync (its informer-sync check stays failed although every request is served): skip that check.
apiserver_ready() {
  [ "$(admin_get "/readyz${NODELET_APISERVER_RUNTIME_CONFIG:+?exclude=informer-sync}")" = ok ]
}
# Their /healthz is always allowed; each serves a self-signed cert of its own.
kcm_healthy() { [ "$(curl -skf --max-time 2 "https://127.0.0.1:$kcm_port/healthz")" = ok ]; }
# kube-controller-manager builds every controller (each makes its API client, which needs the
# apiserver, and a failure there ends the process) before it starts any; its /healthz is up
# long before. Seeing the first "Controller starting..." of this run means the building is over.
kcm_controllers_started() {
  tail -c +"$(($(cat "$dir/kube-controller-manager.logstart" 2>/dev/null || echo 0) + 1))" \
    "$dir/kube-controller-manager.log" | grep -q '"Controller starting\.\.\."'
}
scheduler_healthy() { [ "$(curl -skf --max-time 2 "https://127.0.0.1:$scheduler_port/healthz")" = ok ]; }

print_env() {
  load_ports || { log "not started: no $dir/ports.env"; return 1; }
  cat <<EOF
export KUBECONFIG=$dir/admin.kubeconfig
export NODELET_APISERVER_DIR=$dir
export NODELET_APISERVER_URL=https://127.0.0.1:$apiserver_port
export NODELET_APISERVER_CA=$pki/ca.crt
export NODELET_APISERVER_CA_KEY=$pki/ca.key
EOF
}

# One start or stop at a time per run dir.
lock() {
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock 9
}

start() {
  lock
  bin=${NODELET_APISERVER_BIN:-$("$here/scripts/build-apiserver.sh")}
  choose_ports
  make_pki
  kubeconfig "$dir/admin.kubeconfig" kubernetes-admin admin
  kubeconfig "$dir/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  kubeconfig "$dir/scheduler.kubeconfig" system:kube-scheduler scheduler

  launch etcd --name=nodelet-test --data-dir="$dir/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="nodelet-test=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync=true --log-level=warn
  wait_for etcd 30 etcd_healthy

  # --shutdown-watch-termination-grace-period (1.27+): without it, open watches (the
  # controller-manager's, the scheduler's, a node's) keep a SIGTERMed apiserver alive until its
  # 60s request timeout.
  local version minor extra=()
  version=$("$bin/kube-apiserver" --version)
  minor=${version#Kubernetes v1.}
  minor=${minor%%.*}
  [[ $minor =~ ^[0-9]+$ ]] || { log "cannot read the minor version of '$version'"; return 1; }
  [ "$minor" -lt 27 ] || extra+=(--shutdown-watch-termination-grace-period=2s)
  launch kube-apiserver --bind-address=127.0.0.1 --secure-port="$apiserver_port" \
    --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --enable-bootstrap-token-auth=true \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --service-cluster-ip-range=10.96.0.0/16 \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" --proxy-client-key-file="$pki/front-proxy-client.key" \
    "${extra[@]}" --cert-dir="$dir/apiserver-certs" --v=1 \
    ${NODELET_APISERVER_RUNTIME_CONFIG:+--runtime-config="$NODELET_APISERVER_RUNTIME_CONFIG"}
  wait_for kube-apiserver 90 apiserver_ready

  if [ ! -x "$bin/kube-controller-manager" ] || [ ! -x "$bin/kube-scheduler" ]; then
    log "$bin has no kube-controller-manager and kube-scheduler: etcd and kube-apiserver only"
    echo "etcd kube-apiserver" >"$dir/components"
    print_env
    return 0
  fi
  echo "${components[*]}" >"$dir/components"

  launch kube-controller-manager --kubeconfig="$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$dir/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$dir/controller-manager-certs" \
    --leader-elect=false --cluster-name=nodelet-test \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --root-ca-file="$pki/ca.crt" --service-account-private-key-file="$pki/sa.key" \
    --use-service-account-credentials=true --controllers='*,bootstrapsigner,tokencleaner' \
    --allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16 --service-cluster-ip-range=10.96.0.0/16 \
    --v=1
  launch kube-scheduler --kubeconfig="$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig="$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$scheduler_port" --leader-elect=false --v=1
  wait_for kube-controller-manager 60 kcm_healthy
  wait_for kube-controller-manager 60 kcm_controllers_started
  wait_for kube-scheduler 60 scheduler_healthy
  # What kubeadm sets up for kubelet TLS bootstrap: bootstrap tokens may file node CSRs
  # (approval stays manual: `kubectl certificate approve`), and a node's CSR renewing its
  # own client certificate is approved by the controller-manager
  # (kubeadm:node-autoapprove-certificate-rotation), so --rotate-certificates works unattended.
  kubectl --kubeconfig="$dir/admin.kubeconfig" apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:kubelet-bootstrap"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:node-bootstrapper"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:bootstrappers:kubeadm:default-node-token"}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "kubeadm:node-autoapprove-certificate-rotation"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}
EOF
  print_env
}

stop() {
  local names=("$@") name pid failed=0
  [ ${#names[@]} -gt 0 ] || names=(kube-scheduler kube-controller-manager kube-apiserver etcd)
  [ -d "$dir" ] || return 0
  lock
  for name in "${names[@]}"; do
    case " ${components[*]} " in *" $name "*) ;; *) log "unknown component $name"; return 2 ;; esac
    if running "$name"; then
      pid=$(pid_of "$name")
      kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        log "$name ($pid) ignored SIGTERM for 10s; SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
      fi
      kill -0 "$pid" 2>/dev/null && failed=1
    fi
    rm -f "$dir/$name.pid" "$dir/$name.exe" "$dir/$name.logstart"
  done
  return $failed
}

status() {
  load_ports || { log "not started: no $dir/ports.env"; return 1; }
  local rc=0 name check started
  read -r -a started <<<"$(cat "$dir/components" 2>/dev/null || echo "${components[*]}")"
  for name in "${started[@]}"; do
    case $name in
      etcd) check=etcd_healthy ;;
      kube-apiserver) check=apiserver_ready ;;
      kube-controller-manager) check=kcm_healthy ;;
      kube-scheduler) check=scheduler_healthy ;;
    esac
    if ! running "$name"; then echo "$name: stopped"; rc=1
    elif $check; then echo "$name: running (pid $(pid_of "$name")), ready"
    else echo "$name: running (pid $(pid_of "$name")), not ready"; rc=1
    fi
  done
  return $rc
}

# A client certificate for the node NODE, as the kubelet's would be after TLS bootstrap.
node_kubeconfig() {
  local node=$1 file=${2:-$dir/node-$1.kubeconfig}
  load_ports || { log "not started: no $dir/ports.env"; return 1; }
  cert "node-$node" "/O=system:nodes/CN=system:node:$node"
  kubeconfig "$file" "system:node:$node" "node-$node"
  echo "$file"
}

cmd=${1:-start}
[ $# -gt 0 ] && shift
case $cmd in
  start) start ;;
  stop) stop "$@" ;;
  status) status ;;
  env) print_env ;;
  node-kubeconfig)
    [ $# -ge 1 ] || { echo "usage: $0 node-kubeconfig NODE [FILE]" >&2; exit 2; }
    node_kubeconfig "$@" ;;
  clean) stop && rm -rf "$dir" ;;
  *) echo "usage: $0 start|stop [NAME..]|status|env|node-kubeconfig NODE [FILE]|clean" >&2; exit 2 ;;
esac
