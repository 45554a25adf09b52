#!/usr/bin/env bash
# The side-by-side pod-start bench: the upstream kubelet (built by scripts/build-kubelet.sh from
# the same k8s.io/kubernetes release as the apiserver tier) on containerd's CRI plugin, then
# nodelet, on the same static pods, one after the other in one run (benches/kubelet_vs.rs
# drives the agents and prints the figures).
#
# Everything runs in a world of its own, removed at the end:
#   - a network namespace (nlbench<pid>): the CNI bridges, the pods' veths, both agents'
#     ports and the kubelet's iptables chains live there, never in the host's;
#   - a containerd of its own (root, state and socket under the run dir) with the CRI plugin
#     enabled, `restrict_oom_score_adj = true` (root here lacks CAP_SYS_RESOURCE) and
#     `sandbox_image` set to nodelet's own pause image, imported by the bench with the
#     busybox test image (no registry is reachable);
#   - cpuacct cgroups under /nodelet-bench-<pid> (containerd and its shims; each agent), and
#     each agent's own --cgroup-root, so CPU seconds are read from cgroup accounting;
#   - the kubelet in a private mount namespace where the non-namespaced sysctls it would
#     otherwise set on the host (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops)
#     read as the values it wants; it is killed by PID.
#
#   scripts/bench-vs-kubelet.sh                 (as root)
# Environment: NODELET_BENCH_NO_BUILD=1 (use the binaries the last build left), NODELET_BENCH_SIZES (default 1,10,30,110), NODELET_BENCH_AGENTS (default
# kubelet,nodelet-cni,nodelet: `floor` and `floor-hostnet` are the runtime layer alone with no
# agent, on the built-in network and on the host network, `floor-netonly` the network setup
# alone; `nodelet-cni` is nodelet on the kubelet's CNI chain, `nodelet` its
# built-in network; `nodelet-crun` is `nodelet` with its pods on the crun handler, not in the
# default list: NODELET_BENCH_AGENTS=nodelet,nodelet-crun compares runc with crun; any other
# `nodelet-*` name runs as `nodelet`, with the environment NODELET_BENCH_AGENT_ENV gives it,
# e.g. "nodelet-je:LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", and the binary
# NODELET_BENCH_AGENT_BIN gives it, e.g. "nodelet-before:/path/to/nodelet"), CARGO_TARGET_DIR.
# Each nodelet round also prints its containerd calls per pod start (the agent's
# /debug/containerd/calls) and where its memory is (smaps_rollup, threads, /debug/memory).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH=$PATH:/usr/local/go/bin
log() { echo "bench-vs-kubelet: $*" >&2; }

# The kubelet is built only when it runs (the floor and nodelet rows need no Go build).
case ",${NODELET_BENCH_AGENTS:-kubelet}," in
  *,kubelet,*) kubelet=$("$here/scripts/build-kubelet.sh") ;;
  *) kubelet=/nonexistent/kubelet ;;
esac
target=${CARGO_TARGET_DIR:-$here/target}
if [ -n "${NODELET_BENCH_NO_BUILD:-}" ]; then
  # What the last build left (to rerun without rebuilding on a busy machine).
  bench=$(ls -t "$target"/release/deps/kubelet_vs-* 2>/dev/null | grep -v '\.d$' | head -1)
else
  log "building the release nodelet and the bench driver"
  (cd "$here" && nice -n 15 cargo build --release --bin nodelet >&2)
  bench=$(cd "$here" && nice -n 15 cargo bench --bench kubelet_vs --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*kubelet_vs[^"]*\)".*/\1/p' | tail -1)
fi
[ -x "$bench" ] || { log "could not build benches/kubelet_vs.rs"; exit 1; }
nodelet=$target/release/nodelet

id=$$
netns=nlbench$id
cg=nodelet-bench-$id
dir=$(mktemp -d /var/tmp/nodelet-bench.XXXXXX)
sock=$dir/containerd/containerd.sock
containerd_pid=

cleanup() {
  set +e
  # Whatever a failed run left running in our containerd: killed and deleted through it.
  if ctr --address "$sock" version >/dev/null 2>&1; then
    for ns in $(ctr --address "$sock" namespaces ls -q); do
      for t in $(ctr --address "$sock" -n "$ns" tasks ls -q); do
        ctr --address "$sock" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1
        sleep 0.2
        ctr --address "$sock" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1
      done
    done
  fi
  if [ -n "$containerd_pid" ]; then
    kill "$containerd_pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$containerd_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  # Shims of our containerd are in its cpuacct group; containers were stopped by the driver.
  for pid in $(cat "/sys/fs/cgroup/cpuacct/$cg/containerd/cgroup.procs" 2>/dev/null); do kill "$pid" 2>/dev/null; done
  sleep 0.5
  ip netns del "$netns" 2>/dev/null
  for d in $(find "/sys/fs/cgroup/cpuacct/$cg" -depth -type d 2>/dev/null); do rmdir "$d" 2>/dev/null; done
  for m in /sys/fs/cgroup/*/; do
    for root in "$m"nodelet-bench-$id-*; do
      [ -d "$root" ] || continue
      find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
  done
  # Mounts under the run dir only (rootfs overlays, netns pins), deepest first.
  awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do umount "$m"; done
  rm -rf "$dir"
}
trap cleanup EXIT

ip netns add "$netns"
ip -n "$netns" link set lo up
mkdir -p "/sys/fs/cgroup/cpuacct/$cg/containerd" "$dir/containerd" "$dir/cni-kubelet"

# The kubelet's network: what nodelet writes as its default (bridge + host-local + portmap),
# on a bridge and range of its own.
cat >"$dir/cni-kubelet/10-bench.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "kbench",
  "plugins": [
    {"type": "bridge", "bridge": "kbench0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.87.0.0/16"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$dir/ipam-kubelet"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON

cat >"$dir/containerd/config.toml" <<TOML
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "nodelet.local/pause:3.10"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni-kubelet"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
TOML

nsenter --net="/run/netns/$netns" sh -c \
  'echo $$ >"$1"; exec containerd --config "$2" >"$3" 2>&1' sh \
  "/sys/fs/cgroup/cpuacct/$cg/containerd/cgroup.procs" "$dir/containerd/config.toml" \
  "$dir/containerd/containerd.log" &
containerd_pid=$!
for _ in $(seq 1 100); do
  ctr --address "$sock" version >/dev/null 2>&1 && break
  sleep 0.1
done
ctr --address "$sock" version >/dev/null 2>&1 || { log "containerd did not start"; tail "$dir/containerd/containerd.log" >&2; exit 1; }

log "run dir $dir, netns $netns, kubelet $kubelet"
NODELET_BENCH_DIR=$dir NODELET_BENCH_CONTAINERD=$sock NODELET_BENCH_CGROUP=$cg \
  NODELET_BENCH_KUBELET=$kubelet NODELET_BENCH_NODELET=$nodelet \
  NODELET_BENCH_CONTAINERD_PID=$containerd_pid \
  nsenter --net="/run/netns/$netns" "$bench"
