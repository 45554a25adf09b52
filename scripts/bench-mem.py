#!/usr/bin/env python3
"""The agent's memory and containerd round trips per pod start, without the Rust bench
driver (benches/kubelet_vs.rs needs a release build of its dev-dependencies): nodelet
agents run one after the other on static pods, in a network namespace and a containerd
of their own, exactly as scripts/bench-vs-kubelet.sh runs them, and for each round of N
pods (manifests written at once -> every container ready in /pods) this prints p50/p99,
RSS, anon/file memory, threads, the allocator heap (/debug/memory) and the containerd
calls per pod start by method (/debug/containerd/calls); then RSS again once the pods
are gone (3 s, and 13 s to see a periodic heap trim).

  scripts/bench-mem.py SIZES AGENT=BINARY[,ENV=VALUE...] ...     (as root)
  e.g. scripts/bench-mem.py 10,30,110 before=/tmp/nodelet-before after=target/release/nodelet \\
         je=/tmp/nodelet-before,LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2

Everything it makes (netns nlmem<pid>, cgroups /nodelet-mem-<pid>*, the run dir under
/var/tmp) is removed at the end; processes are stopped by PID.
"""
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUSYBOX = "nodelet.local/busybox:1.35"
PID = os.getpid()
NETNS = f"nlmem{PID}"
CG = f"nodelet-mem-{PID}"
RUN = tempfile.mkdtemp(prefix="nodelet-membench.", dir="/var/tmp")
SOCK = f"{RUN}/containerd/containerd.sock"
procs = []


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, **kw)


def get(port, path, timeout=10):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return json.loads(r.read())
    except Exception:
        return None


def enter_netns():
    """This process (and so the agents and containerd it starts) moves into NETNS."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{NETNS}", os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        sys.exit(f"setns {NETNS}: {os.strerror(ctypes.get_errno())}")
    os.close(fd)


def cgroup_mounts():
    for m in sorted(os.listdir("/sys/fs/cgroup")):
        path = f"/sys/fs/cgroup/{m}"
        if os.path.exists(f"{path}/cgroup.procs") and m != "unified":
            yield path


def make_cgroup(name):
    for mount in cgroup_mounts():
        d = f"{mount}/{name}"
        os.makedirs(d, exist_ok=True)
        if mount.endswith("cpuset"):
            for f in ("cpuset.cpus", "cpuset.mems"):
                with open(f"{mount}/{f}") as src, open(f"{d}/{f}", "w") as dst:
                    dst.write(src.read().strip())


def remove_cgroups(prefix):
    for mount in cgroup_mounts():
        for top in os.listdir(mount):
            if top == prefix or top.startswith(prefix + "-"):
                for root, dirs, _ in os.walk(f"{mount}/{top}", topdown=False):
                    for d in dirs:
                        try:
                            os.rmdir(f"{root}/{d}")
                        except OSError:
                            pass
                try:
                    os.rmdir(f"{mount}/{top}")
                except OSError:
                    pass


def proc_kib(pid, file, key):
    try:
        for line in open(f"/proc/{pid}/{file}"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(pid, port):
    rss = proc_kib(pid, "smaps_rollup", "Rss")
    anon = proc_kib(pid, "smaps_rollup", "Anonymous")
    return {
        "rss": proc_kib(pid, "status", "VmRSS") / 1024,
        "anon": anon / 1024,
        "file": (rss - anon) / 1024,
        "threads": proc_kib(pid, "status", "Threads"),
        "heap": get(port, "/debug/memory"),
    }


def manifest(name):
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\n"
        f"spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n"
        f"    image: {BUSYBOX}\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n"
    )


def pods(port):
    listing = get(port, "/pods")
    if listing is None:
        return None
    out = {}
    for p in listing.get("items") or []:
        name = p.get("metadata", {}).get("name", "")
        want = len(p.get("spec", {}).get("containers", []))
        st = (p.get("status") or {}).get("containerStatuses") or []
        out[name] = len(st) == want and all(c.get("ready") for c in st)
    return out


def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(p * len(sorted_values))))
    return sorted_values[rank - 1]


def heap_str(h):
    if not h:
        return ""
    mib = lambda k: h.get(k, 0) / 1048576
    return f" heap in use {mib('inUse'):.1f} free {mib('free'):.1f} mapped {mib('mapped'):.1f} MiB"


def pod_cgroups(root):
    n = 0
    base = f"/sys/fs/cgroup/cpuacct/{root}/kubepods"
    for sub in ("", "burstable", "besteffort"):
        try:
            n += sum(1 for d in os.listdir(f"{base}/{sub}") if d.startswith("pod"))
        except OSError:
            pass
    return n


def run_agent(k, name, binary, env, sizes, busybox):
    port = 10355 + 10 * k
    d = f"{RUN}/{name}"
    manifests = f"{d}/manifests"
    for sub in ("manifests", "cni"):
        os.makedirs(f"{d}/{sub}", exist_ok=True)
    ns = f"bench-{name}"
    sh(binary, "image", "import", busybox, "--container-runtime-endpoint", f"unix://{SOCK}",
       "--containerd-namespace", ns, stdout=subprocess.DEVNULL)
    root = f"{CG}-{name}"
    make_cgroup(root)
    args = [binary, "--pod-manifest-path", manifests, "--root-dir", f"{d}/root",
            "--pod-logs-dir", f"{d}/pod-logs", "--container-logs-dir", f"{d}/container-logs",
            "--container-runtime-endpoint", f"unix://{SOCK}", "--containerd-namespace", ns,
            "--cni-conf-dir", f"{d}/cni", "--pod-cidr", "10.86.0.0/16", "--cgroup-root", f"/{root}",
            "--hostname-override", "bench-node", "--address", "127.0.0.1", "--node-ip", "127.0.0.1",
            "--read-only-port", str(port), "--port", str(port + 1), "--healthz-port", str(port + 2),
            "--v", "info"]
    log = open(f"{d}/agent.log", "w")
    agent = subprocess.Popen(["env"] + [f"{k}={v}" for k, v in env] + args,
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    procs.append(agent)
    # env execs the agent: its PID is the child's.
    up = time.time()
    while pods(port) is None:
        if time.time() - up > 120 or agent.poll() is not None:
            log.flush()
            tail = open(f"{d}/agent.log").read().splitlines()[-20:]
            sys.exit(f"{name} did not serve /pods:\n" + "\n".join(tail))
        time.sleep(0.2)
    time.sleep(5)
    idle = memory(agent.pid, port)
    print(f"{name:>8}: idle RSS {idle['rss']:.1f} MiB (anon {idle['anon']:.1f} file {idle['file']:.1f}) "
          f"threads {idle['threads']}{heap_str(idle['heap'])}", flush=True)
    rows = []
    for n in sizes:
        calls0 = get(port, "/debug/containerd/calls") or {}
        written = {}
        for i in range(n):
            pod = f"b{n}-{i}"
            tmp = f"{manifests}/.{pod}.tmp"
            with open(tmp, "w") as f:
                f.write(manifest(pod))
            os.rename(tmp, f"{manifests}/{pod}.yaml")
            written[pod] = written[f"{pod}-bench-node"] = time.time()
        ready = {}
        start = time.time()
        peak = 0.0
        while len(ready) < n and time.time() - start < 600:
            listing = pods(port) or {}
            now = time.time()
            for pod, ok in listing.items():
                if ok and pod not in ready and pod in written:
                    ready[pod] = now - written[pod]
            peak = max(peak, proc_kib(agent.pid, "status", "VmRSS") / 1024)
            time.sleep(0.1)
        mem = memory(agent.pid, port)
        calls1 = get(port, "/debug/containerd/calls") or {}
        # The same pods running, once the start burst is over.
        time.sleep(12)
        settled = memory(agent.pid, port)
        calls = {m: c - calls0.get(m, 0) for m, c in calls1.items() if c - calls0.get(m, 0) > 0}
        lat = sorted(ready.values())
        for i in range(n):
            try:
                os.remove(f"{manifests}/b{n}-{i}.yaml")
            except OSError:
                pass
        gone = time.time()
        while time.time() - gone < 300:
            if pods(port) == {} and pod_cgroups(root) == 0:
                break
            time.sleep(0.5)
        time.sleep(3)
        after3 = memory(agent.pid, port)
        time.sleep(10)
        after13 = memory(agent.pid, port)
        total = sum(calls.values())
        print(f"{name:>8} {n:>3} pods: ready {len(ready)}/{n} p50 {pct(lat, .5):.2f} s p99 {pct(lat, .99):.2f} s"
              f"  RSS {mem['rss']:.1f} MiB (peak {peak:.1f}; anon {mem['anon']:.1f} file {mem['file']:.1f})"
              f" threads {mem['threads']}{heap_str(mem['heap'])}", flush=True)
        print(f"{name:>8} {n:>3} pods: 12 s later, still running: RSS {settled['rss']:.1f} MiB (anon {settled['anon']:.1f}"
              f" file {settled['file']:.1f}) threads {settled['threads']}{heap_str(settled['heap'])}", flush=True)
        print(f"{name:>8} {n:>3} pods: containerd calls per pod start {total / n:.2f}: "
              + ", ".join(f"{m.rsplit('.', 1)[-1]} {c / n:.2f}" for m, c in sorted(calls.items())), flush=True)
        print(f"{name:>8} {n:>3} pods: after teardown RSS {after3['rss']:.1f} MiB{heap_str(after3['heap'])};"
              f" 10 s later {after13['rss']:.1f} MiB{heap_str(after13['heap'])}", flush=True)
        rows.append((n, pct(lat, .5), pct(lat, .99), mem["rss"], peak, settled["rss"], total / n, after13["rss"]))
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(15)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
    return idle["rss"], rows


def cleanup(containerd):
    if sh("ctr", "--address", SOCK, "version", check=False,
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
        for ns in sh("ctr", "--address", SOCK, "namespaces", "ls", "-q",
                     capture_output=True, text=True, check=False).stdout.split():
            for t in sh("ctr", "--address", SOCK, "-n", ns, "tasks", "ls", "-q",
                        capture_output=True, text=True, check=False).stdout.split():
                sh("ctr", "--address", SOCK, "-n", ns, "tasks", "kill", "-s", "SIGKILL", t,
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.2)
                sh("ctr", "--address", SOCK, "-n", ns, "tasks", "delete", "-f", t,
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    if containerd is not None and containerd.poll() is None:
        containerd.terminate()
        try:
            containerd.wait(5)
        except subprocess.TimeoutExpired:
            containerd.kill()
    try:
        for pid in open(f"/sys/fs/cgroup/cpuacct/{CG}/containerd/cgroup.procs").read().split():
            os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass
    time.sleep(0.5)
    sh("ip", "netns", "del", NETNS, check=False, stderr=subprocess.DEVNULL)
    remove_cgroups(CG)
    mounts = [line.split()[1] for line in open("/proc/mounts") if line.split()[1].startswith(RUN + "/")]
    for m in sorted(mounts, reverse=True):
        sh("umount", m, check=False)
    sh("rm", "-rf", RUN, check=False)


def main():
    sizes = [int(s) for s in sys.argv[1].split(",")]
    agents = []
    for a in sys.argv[2:]:
        name, spec = a.split("=", 1)
        binary, *env = spec.split(",")
        agents.append((name, os.path.abspath(binary), [tuple(e.split("=", 1)) for e in env]))
    busybox = os.environ.get("NODELET_BENCH_BUSYBOX", f"{HERE}/target/nodelet-test/busybox.tar")
    if not os.path.exists(busybox):
        busybox = "/work/main/target/nodelet-test/busybox.tar"
    containerd = None
    try:
        sh("ip", "netns", "add", NETNS)
        sh("ip", "-n", NETNS, "link", "set", "lo", "up")
        enter_netns()
        os.makedirs(f"{RUN}/containerd", exist_ok=True)
        os.makedirs(f"/sys/fs/cgroup/cpuacct/{CG}/containerd", exist_ok=True)
        with open(f"{RUN}/containerd/config.toml", "w") as f:
            f.write(f'version = 2\nroot = "{RUN}/containerd/root"\nstate = "{RUN}/containerd/state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{SOCK}"\n[ttrpc]\n  address = "{SOCK}.ttrpc"\n'
                    f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{RUN}/containerd/opt"\n')
        containerd = subprocess.Popen(
            ["sh", "-c",
             'echo $$ >"$1"; exec containerd --config "$2" >"$3" 2>&1', "sh",
             f"/sys/fs/cgroup/cpuacct/{CG}/containerd/cgroup.procs", f"{RUN}/containerd/config.toml",
             f"{RUN}/containerd/containerd.log"])
        for _ in range(100):
            if sh("ctr", "--address", SOCK, "version", check=False,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.1)
        results = []
        for k, (name, binary, env) in enumerate(agents):
            results.append((name, *run_agent(k, name, binary, env, sizes, busybox)))
        print("\nagent     pods   p50    p99   RSS at ready (peak)  12 s later  calls/pod  RSS 13 s after teardown")
        for name, idle, rows in results:
            print(f"{name:>8}  idle                 {idle:5.1f}")
            for n, p50, p99, rss, peak, settled, calls, after in rows:
                print(f"{name:>8}  {n:>4}  {p50:5.2f}  {p99:5.2f}  {rss:5.1f} ({peak:5.1f})      {settled:5.1f}     {calls:6.2f}     {after:5.1f}")
    finally:
        cleanup(containerd)


if __name__ == "__main__":
    main()
