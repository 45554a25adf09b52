#!/usr/bin/env bash
# The demo: installs what nodelet needs, builds it, imports the busybox image built
# locally into containerd, and runs nodelet standalone on manifests/examples (no
# apiserver, no config file), printing the pods as they come up. Ctrl-C stops the
# agent; the pods keep running, as with upstream's kubelet (remove a manifest from
# the directory while the agent runs to remove its pod). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
manifests=${1:-manifests/examples}
port=10255

scripts/install-deps.sh
cargo build --release --bin nodelet
bin=$PWD/target/release/nodelet

sock=/run/containerd/containerd.sock
if ! ctr --address "$sock" version >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    systemctl enable --now containerd
  else
    echo "starting containerd (log: /var/log/nodelet-demo-containerd.log)" >&2
    containerd >/var/log/nodelet-demo-containerd.log 2>&1 &
  fi
  for _ in $(seq 1 100); do ctr --address "$sock" version >/dev/null 2>&1 && break; sleep 0.1; done
fi

mkdir -p target/nodelet-demo
scripts/build-busybox-image.sh target/nodelet-demo/busybox.tar >/dev/null
"$bin" image import target/nodelet-demo/busybox.tar

"$bin" --pod-manifest-path "$manifests" --read-only-port "$port" &
agent=$!
trap 'kill -TERM $agent 2>/dev/null; wait $agent' INT TERM EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

# Print the table whenever it changes, until every pod has settled (or 60 s).
last=
for _ in $(seq 1 120); do
  table=$("$bin" pods --read-only-port "$port" 2>/dev/null || true)
  if [ "$table" != "$last" ]; then echo; date +%T; echo "$table"; last=$table; fi
  if [ -n "$table" ] && ! echo "$table" | tail -n +2 | grep -qE 'Pending|ContainerCreating|Init'; then
    [ "$(echo "$table" | wc -l)" -gt 1 ] && break
  fi
  sleep 0.5
done
echo
echo "logs: /var/log/pods/   table: $bin pods   stop: Ctrl-C"
wait $agent
