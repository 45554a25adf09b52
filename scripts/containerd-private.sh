#!/usr/bin/env bash
# Starts (or stops) a containerd private to nodelet's tests, so they never touch a host
# containerd's state: its own root, state dir and socket under $NODELET_TEST_DIR
# (default: target/nodelet-test), the CRI plugin disabled.
#   scripts/containerd-private.sh start   -> prints the socket path; idempotent
#   scripts/containerd-private.sh stop    -> stops the containerd this script started (by PID)
#   scripts/containerd-private.sh status  -> exit 0 if it is running
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${NODELET_TEST_DIR:-$here/target/nodelet-test}/containerd
sock=$dir/containerd.sock
pidfile=$dir/containerd.pid

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-start}" in
start)
  mkdir -p "$dir"
  if running && ctr --address "$sock" version >/dev/null 2>&1; then echo "$sock"; exit 0; fi
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
  containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if ctr --address "$sock" version >/dev/null 2>&1; then echo "$sock"; exit 0; fi
    sleep 0.1
  done
  echo "containerd did not come up; see $dir/containerd.log" >&2
  tail -20 "$dir/containerd.log" >&2
  exit 1
  ;;
status)
  running && ctr --address "$sock" version >/dev/null 2>&1
  ;;
stop)
  if running; then
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
  ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
