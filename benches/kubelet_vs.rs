//! Figures, not a test: pod start side by side with the upstream kubelet, in one run.
//!
//! For each agent in turn (the kubelet on containerd's CRI plugin, then nodelet on the same
//! containerd), for 1, 10, 30 and 110 static pods: writes the manifests at once, polls the
//! agent's read-only `/pods` every 100 ms, and takes each pod's latency as manifest written →
//! every container ready there. CPU seconds per pod start are cgroup `cpuacct.usage` deltas
//! over the round (the agent, containerd with its shims, runc and the CRI plugin's CNI
//! plugins, and the agent's pod cgroups), divided by the pods started. RSS is the agent's.
//!
//! The agent `floor` (in `NODELET_BENCH_AGENTS`) starts the same pods through nodelet's
//! runtime layer alone, with no agent (see `kubelet_vs/floor.rs`): what containerd, the
//! shims, runc and the pods cost bounds what any agent can reach on this machine.
//! `floor-hostnet` is that floor with the pods on the host's network, so the two rows
//! give the pod network's share of a start; `floor-netonly` sets up only the pods'
//! network (netns and built-in network, no container), so its rows time that alone.
//!
//! The `nodelet-crun` agent is nodelet with its pods on the `crun` runtime handler
//! (`runtimeClassName: crun`), so one run compares runc against crun.
//!
//! Run through `scripts/bench-vs-kubelet.sh`, which builds the kubelet, starts a containerd
//! with its CRI plugin in a network namespace of its own, and runs this binary there.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "kubelet_vs/floor.rs"]
mod floor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const POLL: Duration = Duration::from_millis(100);
const ROUND_LIMIT: Duration = Duration::from_secs(600);
/// containerd's CRI plugin works in this namespace.
const CRI_NAMESPACE: &str = "k8s.io";

struct Env {
    dir: PathBuf,
    socket: String,
    cgroup: String,
    kubelet: PathBuf,
    nodelet: PathBuf,
}

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run scripts/bench-vs-kubelet.sh"))
}

/// A bench pod; `class` sets its `runtimeClassName` (the `nodelet-crun` agent's pods).
fn manifest(name: &str, class: Option<&str>) -> String {
    let class = class.map_or(String::new(), |c| format!("  runtimeClassName: {c}\n"));
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{class}  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {}\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n",
        support::BUSYBOX
    )
}

/// One agent under test: how it is started and where it keeps its pods.
struct Agent {
    name: String,
    port: u16,
    cgroup_root: String,
    manifests: PathBuf,
    child: Option<Child>,
}

fn cpuacct(path: &str) -> u64 {
    std::fs::read_to_string(format!(
        "/sys/fs/cgroup/cpuacct/{}/cpuacct.usage",
        path.trim_start_matches('/')
    ))
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

/// Where a process's memory is, from `/proc`: resident anonymous memory (heap, stacks)
/// and file-backed (the binary's text, libraries), in KiB, and its thread count.
struct Mem {
    anon_kib: u64,
    file_kib: u64,
    threads: u64,
    /// The agent's `/debug/memory` (allocator heap), when it serves one.
    heap: Option<Value>,
}

fn proc_field(file: &str, key: &str) -> u64 {
    file.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mem(pid: u32) -> Mem {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = proc_field(&rollup, "Rss");
    let anon = proc_field(&rollup, "Anonymous");
    Mem {
        anon_kib: anon,
        file_kib: rss.saturating_sub(anon),
        threads: proc_field(&status, "Threads"),
        heap: None,
    }
}

/// Calls per method made between two readings of the call counts.
fn calls_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(m, n)| (m.clone(), n - before.get(m).copied().unwrap_or(0).min(*n)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Removes `/<name>` and everything below it in every mounted cgroup v1 hierarchy,
/// deepest first (empty cgroups only: a busy one stays and is left to the script).
fn remove_cgroup_everywhere(name: &str) {
    fn rm(dir: &Path) {
        for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if sub.file_type().is_ok_and(|t| t.is_dir()) {
                rm(&sub.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = entry.path().join(name.trim_start_matches('/'));
        if dir.is_dir() {
            rm(&dir);
        }
    }
}

/// Makes `/<name>` in every mounted cgroup v1 hierarchy (the kubelet checks that its
/// --cgroup-root exists in all of them); cpuset gets its parent's CPUs and memory nodes.
fn make_cgroup_everywhere(name: &str) {
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .expect("/sys/fs/cgroup")
        .flatten()
    {
        let mount = entry.path();
        if mount.join("cgroup.procs").exists() && !mount.ends_with("unified") {
            let dir = mount.join(name.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).expect("mkdir cgroup");
            if mount.ends_with("cpuset") {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read_to_string(mount.join(f)).unwrap_or_default();
                    let _ = std::fs::write(dir.join(f), v.trim());
                }
            }
        }
    }
}

impl Agent {
    fn start(&mut self, e: &Env) {
        let dir = e.dir.join(&self.name);
        let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
        let mut cmd = match self.name.as_str() {
            "kubelet" => kubelet_command(e, &dir, self),
            _ => nodelet_command(e, &dir, self),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("start {}: {err}", self.name));
        let group = format!("/sys/fs/cgroup/cpuacct/{}/{}", e.cgroup, self.name);
        std::fs::create_dir_all(&group).expect("agent cpuacct group");
        std::fs::write(format!("{group}/cgroup.procs"), child.id().to_string())
            .expect("join cgroup");
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cpu(&self, e: &Env) -> [u64; 3] {
        [
            cpuacct(&format!("{}/{}", e.cgroup, self.name)),
            cpuacct(&format!("{}/containerd", e.cgroup)),
            cpuacct(&self.cgroup_root),
        ]
    }

    /// Pod name → every container ready, from the agent's `/pods`.
    async fn pods(&self, http: &reqwest::Client) -> Option<BTreeMap<String, bool>> {
        let url = format!("http://127.0.0.1:{}/pods", self.port);
        let list: Value = http.get(url).send().await.ok()?.json().await.ok()?;
        // The kubelet lists no pods as `"items": null`.
        let none = Vec::new();
        let items = match list.get("items")? {
            Value::Null => &none,
            v => v.as_array()?,
        };
        Some(
            items
                .iter()
                .filter_map(|p| {
                    let name = p.pointer("/metadata/name")?.as_str()?.to_owned();
                    let want = p.pointer("/spec/containers")?.as_array()?.len();
                    let statuses = p
                        .pointer("/status/containerStatuses")
                        .and_then(Value::as_array);
                    let ready = statuses.is_some_and(|s| {
                        s.len() == want
                            && s.iter().all(|c| c.get("ready") == Some(&Value::Bool(true)))
                    });
                    Some((name, ready))
                })
                .collect(),
        )
    }

    /// The agent's containerd calls so far by method (`/debug/containerd/calls`; empty
    /// for an agent that does not serve it).
    async fn calls(&self, http: &reqwest::Client) -> BTreeMap<String, u64> {
        let url = format!("http://127.0.0.1:{}/debug/containerd/calls", self.port);
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
            _ => BTreeMap::new(),
        }
    }

    /// The agent's allocator heap (`/debug/memory`), when it serves one.
    async fn heap(&self, http: &reqwest::Client) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/debug/memory", self.port);
        let r = http.get(url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// Pod cgroups still present under the agent's cgroup root (cpuacct hierarchy).
    fn pod_cgroups(&self) -> usize {
        let base = format!(
            "/sys/fs/cgroup/cpuacct/{}/kubepods",
            self.cgroup_root.trim_start_matches('/')
        );
        let mut n = 0;
        for sub in ["", "burstable", "besteffort"] {
            if let Ok(rd) = std::fs::read_dir(Path::new(&base).join(sub)) {
                n += rd
                    .flatten()
                    .filter(|d| d.file_name().to_string_lossy().starts_with("pod"))
                    .count();
            }
        }
        n
    }
}

fn kubelet_command(e: &Env, dir: &Path, a: &Agent) -> Command {
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {manifests}
fileCheckFrequency: 20s
cgroupDriver: cgroupfs
cgroupRoot: {root}
cgroupsPerQOS: true
failSwapOn: false
failCgroupV1: false
address: 127.0.0.1
readOnlyPort: {port}
port: {secure}
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
containerRuntimeEndpoint: unix://{socket}
podLogsDir: {logs}
maxPods: 110
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
protectKernelDefaults: false
resolvConf: /etc/resolv.conf
",
            manifests = a.manifests.display(),
            root = a.cgroup_root,
            port = a.port,
            secure = a.port + 1,
            healthz = a.port + 2,
            socket = e.socket,
            logs = dir.join("pod-logs").display(),
        ),
    )
    .expect("kubelet config");
    // A private mount namespace: the sysctls the kubelet would set on the host read as the
    // values it wants (files of ours bound over them), and /var/log (where it links
    // /var/log/containers) is a tmpfs of its own.
    let mut script = String::from("set -e; mount -t tmpfs bench-var-log /var/log; ");
    for (key, want) in [
        ("vm/overcommit_memory", "1"),
        ("kernel/panic", "10"),
        ("kernel/panic_on_oops", "1"),
        ("vm/panic_on_oom", "0"),
    ] {
        let file = dir.join(key.replace('/', "."));
        std::fs::write(&file, format!("{want}\n")).expect("sysctl stand-in");
        script.push_str(&format!(
            "mount --bind {} /proc/sys/{key}; ",
            file.display()
        ));
    }
    script.push_str("exec \"$@\"");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(&e.kubelet)
    .arg(format!("--config={}", config.display()))
    .arg(format!("--root-dir={}", dir.join("root").display()))
    .arg(format!("--cert-dir={}", dir.join("pki").display()))
    .args([
        "--hostname-override=bench-node",
        "--node-ip=127.0.0.1",
        "--v=1",
    ]);
    cmd
}

fn nodelet_command(e: &Env, dir: &Path, a: &Agent) -> Command {
    let cni = dir.join("cni");
    std::fs::create_dir_all(&cni).expect("cni dir");
    if a.name == "nodelet-cni" {
        // The kubelet's chain, with IPAM state of its own.
        let conf =
            std::fs::read_to_string(e.dir.join("cni-kubelet/10-bench.conflist")).expect("conflist");
        let conf = conf.replace(
            &e.dir.join("ipam-kubelet").display().to_string(),
            &dir.join("ipam").display().to_string(),
        );
        std::fs::write(cni.join("10-bench.conflist"), conf).expect("conflist");
    }
    let p = |p: PathBuf| p.display().to_string();
    // Another binary for one agent (`NODELET_BENCH_AGENT_BIN="nodelet-before:/path;…"`):
    // two builds side by side in one run.
    let bin = std::env::var("NODELET_BENCH_AGENT_BIN")
        .unwrap_or_default()
        .split(';')
        .find_map(|entry| {
            let (agent, path) = entry.split_once(':')?;
            (agent.trim() == a.name).then(|| PathBuf::from(path.trim()))
        })
        .unwrap_or_else(|| e.nodelet.clone());
    let mut cmd = Command::new(bin);
    cmd.args(["--pod-manifest-path", &p(a.manifests.clone())])
        .args(["--root-dir", &p(dir.join("root"))])
        .args(["--pod-logs-dir", &p(dir.join("pod-logs"))])
        .args(["--container-logs-dir", &p(dir.join("container-logs"))])
        .args([
            "--container-runtime-endpoint",
            &format!("unix://{}", e.socket),
        ])
        .args(["--containerd-namespace", &format!("bench-{}", a.name)])
        .args(["--cni-conf-dir", &p(cni)])
        .args(["--pod-cidr", "10.86.0.0/16"])
        .args(["--cgroup-root", &a.cgroup_root])
        .args([
            "--hostname-override",
            "bench-node",
            "--address",
            "127.0.0.1",
            "--node-ip",
            "127.0.0.1",
        ])
        .args(["--read-only-port", &a.port.to_string()])
        .args(["--port", &(a.port + 1).to_string()])
        .args(["--healthz-port", &(a.port + 2).to_string()])
        .args(["--v", "info"]);
    // Environment of one agent only: `NODELET_BENCH_AGENT_ENV="nodelet-je:LD_PRELOAD=…;…"`
    // (an agent of any other `nodelet-*` name runs as `nodelet`), to compare allocators
    // or allocator settings in one run.
    for entry in std::env::var("NODELET_BENCH_AGENT_ENV")
        .unwrap_or_default()
        .split(';')
    {
        if let Some((agent, kv)) = entry.split_once(':')
            && agent.trim() == a.name
            && let Some((k, v)) = kv.split_once('=')
        {
            cmd.env(k.trim(), v.trim());
        }
    }
    if a.name == "nodelet-crun" {
        // Its pods name the `crun` handler; on a hybrid cgroup host crun runs through
        // scripts/crun-hybrid.sh (an unshare and a mount more per crun call).
        cmd.args(support::crun_handler_args());
    }
    cmd
}

/// A panic anywhere in the bench still stops the agent (by PID).
impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Round {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
    cpu: [f64; 3],
    rss_mib: f64,
    /// containerd calls by method made while the round's pods started (manifests
    /// written → all ready), over all its pods.
    calls: BTreeMap<String, u64>,
    mem: Mem,
    /// RSS and heap again once the round's pods are gone.
    after: Option<(f64, Option<Value>)>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p50, p99 and max of a round's latencies.
fn spread(mut lat: Vec<f64>) -> (f64, f64, f64) {
    lat.sort_by(f64::total_cmp);
    (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    )
}

async fn round(e: &Env, a: &Agent, http: &reqwest::Client, n: usize) -> Round {
    let calls0 = a.calls(http).await;
    let cpu0 = a.cpu(e);
    let mut written = BTreeMap::new();
    for i in 0..n {
        let name = format!("b{n}-{i}");
        let tmp = a.manifests.join(format!(".{name}.tmp"));
        let class = (a.name == "nodelet-crun").then_some("crun");
        std::fs::write(&tmp, manifest(&name, class)).expect("write manifest");
        std::fs::rename(&tmp, a.manifests.join(format!("{name}.yaml"))).expect("rename manifest");
        written.insert(format!("{name}-bench-node"), Instant::now());
        written.insert(name, Instant::now());
    }
    let start = Instant::now();
    let mut ready: BTreeMap<String, f64> = BTreeMap::new();
    while ready.len() < n && start.elapsed() < ROUND_LIMIT {
        if let Some(pods) = a.pods(http).await {
            let now = Instant::now();
            for (name, ok) in pods {
                if ok
                    && !ready.contains_key(&name)
                    && let Some(t) = written.get(&name)
                {
                    ready.insert(name, now.duration_since(*t).as_secs_f64());
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let cpu1 = a.cpu(e);
    let rss_mib = rss_kib(a.pid()) as f64 / 1024.0;
    let calls = calls_between(&calls0, &a.calls(http).await);
    let mut mem = mem(a.pid());
    mem.heap = a.heap(http).await;
    if ready.len() < n {
        println!(
            "  {}: only {}/{n} pods ready after {ROUND_LIMIT:?}",
            a.name,
            ready.len()
        );
    }
    let (p50, p99, max) = spread(ready.values().copied().collect());
    let per_pod = |i: usize| cpu1[i].saturating_sub(cpu0[i]) as f64 / 1e9 / n as f64;
    // Tear the round down: manifests removed, pods gone from /pods and their cgroups removed.
    for i in 0..n {
        let _ = std::fs::remove_file(a.manifests.join(format!("b{n}-{i}.yaml")));
    }
    let gone = Instant::now();
    while gone.elapsed() < Duration::from_secs(300) {
        let empty = a.pods(http).await.is_some_and(|p| p.is_empty());
        if empty && a.pod_cgroups() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = Some((rss_kib(a.pid()) as f64 / 1024.0, a.heap(http).await));
    Round {
        n,
        p50,
        p99,
        max,
        cpu: [per_pod(0), per_pod(1), per_pod(2)],
        rss_mib,
        calls,
        mem,
        after,
    }
}

fn print_round(name: &str, r: &Round) {
    println!(
        "{name:>12} {:>3} pods: p50 {:6.2} s  p99 {:6.2} s  max {:6.2} s  CPU/pod {:.3} s (agent {:.3}, containerd+shims+runc {:.3}, pods {:.3})  RSS {:.1} MiB",
        r.n,
        r.p50,
        r.p99,
        r.max,
        r.cpu.iter().sum::<f64>(),
        r.cpu[0],
        r.cpu[1],
        r.cpu[2],
        r.rss_mib
    );
    let total: u64 = r.calls.values().sum();
    if total > 0 {
        let per_pod = |v: u64| v as f64 / r.n as f64;
        let methods: Vec<String> = r
            .calls
            .iter()
            .map(|(m, v)| {
                let short = m.rsplit('.').next().unwrap_or(m);
                format!("{short} {:.2}", per_pod(*v))
            })
            .collect();
        println!(
            "{name:>12} {:>3} pods: containerd calls per pod start {:.1}: {}",
            r.n,
            per_pod(total),
            methods.join(", ")
        );
    }
    let heap = |h: &Option<Value>| {
        h.as_ref().map_or(String::new(), |h| {
            let mib = |k: &str| h.get(k).and_then(Value::as_f64).unwrap_or(0.0) / 1048576.0;
            format!(
                ", heap in use {:.1} MiB free {:.1} MiB (releasable {:.1}) mapped {:.1} MiB",
                mib("inUse"),
                mib("free"),
                mib("releasable"),
                mib("mapped")
            )
        })
    };
    println!(
        "{name:>12} {:>3} pods: memory anon {:.1} MiB file {:.1} MiB threads {}{}",
        r.n,
        r.mem.anon_kib as f64 / 1024.0,
        r.mem.file_kib as f64 / 1024.0,
        r.mem.threads,
        heap(&r.mem.heap)
    );
    if let Some((rss, h)) = &r.after {
        println!(
            "{name:>12} {:>3} pods: after teardown RSS {rss:.1} MiB{}",
            r.n,
            heap(h)
        );
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let e = Env {
        dir: env("NODELET_BENCH_DIR").into(),
        socket: env("NODELET_BENCH_CONTAINERD"),
        cgroup: env("NODELET_BENCH_CGROUP"),
        kubelet: env("NODELET_BENCH_KUBELET").into(),
        nodelet: env("NODELET_BENCH_NODELET").into(),
    };
    let sizes: Vec<usize> = std::env::var("NODELET_BENCH_SIZES")
        .unwrap_or_else(|_| "1,10,30,110".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let agents: Vec<String> = std::env::var("NODELET_BENCH_AGENTS")
        .unwrap_or_else(|_| "kubelet,nodelet-cni,nodelet".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    // Each agent gets the images in its own containerd namespace (the kubelet's is the
    // CRI plugin's).
    for name in &agents {
        let ns = if name == "kubelet" {
            CRI_NAMESPACE.to_owned()
        } else {
            format!("bench-{name}")
        };
        let c = nodelet_cri::containerd::Containerd::connect(&e.socket, &ns)
            .await
            .expect("connect to the bench containerd");
        c.import_oci_archive(&support::busybox_archive())
            .await
            .expect("import busybox");
        c.ensure_pause_image().await.expect("import pause");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut results: Vec<(String, f64, Vec<Round>)> = Vec::new();
    for (k, name) in agents.iter().enumerate() {
        let dir = e.dir.join(name);
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifest dir");
        let cgroup_root = format!("/{}-{name}", e.cgroup);
        make_cgroup_everywhere(&cgroup_root);
        if name == "floor-netonly" {
            let mut rounds = Vec::new();
            for &n in &sizes {
                let r = floor::net_round(&e, name, n).await;
                print_round(name, &r);
                rounds.push(r);
            }
            results.push((name.clone(), f64::NAN, rounds));
            continue;
        }
        if name == "floor" || name == "floor-hostnet" {
            let rt = floor::runtime(&e, name).await;
            let mut rounds = Vec::new();
            for &n in &sizes {
                let r = floor::round(&e, &rt, name, &cgroup_root, n).await;
                print_round(name, &r);
                rounds.push(r);
            }
            results.push((name.clone(), f64::NAN, rounds));
            continue;
        }
        let mut agent = Agent {
            name: name.clone(),
            port: 10255 + 10 * u16::try_from(k).expect("agents"),
            cgroup_root,
            manifests,
            child: None,
        };
        agent.start(&e);
        let up = Instant::now();
        while agent.pods(&http).await.is_none() {
            assert!(
                up.elapsed() < Duration::from_secs(120),
                "{name} did not serve /pods; see {}",
                dir.join("agent.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let idle = rss_kib(agent.pid()) as f64 / 1024.0;
        let mut rounds = Vec::new();
        for &n in &sizes {
            let r = round(&e, &agent, &http, n).await;
            print_round(name, &r);
            rounds.push(r);
        }
        agent.stop();
        results.push((name.clone(), idle, rounds));
    }
    println!(
        "\nmanifest written -> every container ready in /pods (polled every {POLL:?}); CPU s per pod start; RSS"
    );
    print!("{:>5} |", "pods");
    for (name, _, _) in &results {
        print!(" {name:^55} |");
    }
    println!();
    for (i, &n) in sizes.iter().enumerate() {
        print!("{n:>5} |");
        for (_, _, rounds) in &results {
            let r = &rounds[i];
            print!(
                " p50 {:5.2} p99 {:5.2} cpu {:5.3} rss {:5.1}M calls {:4.1} |",
                r.p50,
                r.p99,
                r.cpu.iter().sum::<f64>(),
                r.rss_mib,
                r.calls.values().sum::<u64>() as f64 / r.n as f64
            );
        }
        println!();
    }
    for (name, idle, _) in &results {
        println!("{name}: idle RSS {idle:.1} MiB");
    }
    if let (Some(k), Some(rest)) = (results.first(), results.get(1..)) {
        for (name, _, rounds) in rest {
            for (a, b) in k.2.iter().zip(rounds) {
                println!(
                    "{name} / {}: {:>3} pods p99 ratio {:.2}, CPU ratio {:.2}",
                    k.0,
                    a.n,
                    b.p99 / a.p99,
                    b.cpu.iter().sum::<f64>() / a.cpu.iter().sum::<f64>()
                );
            }
        }
    }
}
