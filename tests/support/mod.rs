//! Support for end-to-end tests: a private world per test (containerd namespace,
//! CNI bridge and /24, cgroup root, directories, ports) and the real `nodelet` binary
//! running in it. Everything is removed on drop, also when the test fails.
//!
//! Pod network: a world writes a CNI conflist of its own (bridge + host-local), except
//! in the `builtin_network` test binary (which runs the network-relevant test files
//! again) or with `NODELET_TEST_POD_NETWORK=builtin`: then its CNI directory stays empty
//! and the agent uses its built-in network, on the same private bridge name and /24
//! (`--pod-network-bridge`, `--pod-cidr`), its nft table named after that bridge.
//!
//! containerd: `NODELET_TEST_CONTAINERD` (a socket path; `scripts/test.sh` starts a
//! private containerd and sets it), else `/run/containerd/containerd.sock`. If neither
//! answers, tests fail with a message saying so: they never pass without running.

#![allow(dead_code, clippy::unwrap_used)]

pub mod cluster;
pub mod events;
mod host;
mod images;
mod status;

// Each test binary uses a part of these.
#[allow(unused_imports)]
pub use host::*;
#[allow(unused_imports)]
pub use images::*;
#[allow(unused_imports)]
pub use status::*;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::List;
use k8s_openapi::api::core::v1::Pod;
use nodelet_cri::cni::CniConfig;
use nodelet_cri::image::OciImage;
use nodelet_cri::runtime::{ContainerdRuntime, Runtime, RuntimeConfig};

/// The containerd socket tests use.
pub fn containerd_socket() -> String {
    nodelet_testkit::containerd_socket()
}

/// Waits for `cond` to hold, polling, up to `limit`; panics naming `what` on timeout.
pub async fn wait_for<F, Fut, T>(what: &str, limit: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The pod network a world's agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodNet {
    /// A conflist of the world's own: the bridge plugin and host-local.
    Cni,
    /// The agent's built-in network (no CNI config).
    Builtin,
}

/// The network worlds get from [`World::new`]: [`PodNet::Builtin`] in the
/// `builtin_network` test binary or with `NODELET_TEST_POD_NETWORK=builtin`, else
/// [`PodNet::Cni`].
pub fn default_pod_net() -> PodNet {
    let var = std::env::var("NODELET_TEST_POD_NETWORK").unwrap_or_default();
    match var.as_str() {
        "builtin" => PodNet::Builtin,
        "cni" => PodNet::Cni,
        "" if env!("CARGO_CRATE_NAME") == "builtin_network" => PodNet::Builtin,
        "" => PodNet::Cni,
        other => panic!("NODELET_TEST_POD_NETWORK={other:?}: expected builtin or cni"),
    }
}

/// One test's private world.
pub struct World {
    /// Short unique ID.
    pub id: String,
    /// containerd namespace.
    pub namespace: String,
    /// containerd socket.
    pub socket: String,
    /// Temp directory holding everything below.
    pub dir: tempfile::TempDir,
    /// `--root-dir`.
    pub root: PathBuf,
    /// `--pod-logs-dir`.
    pub logs: PathBuf,
    /// `--container-logs-dir` (the `/var/log/containers` symlinks).
    pub container_logs: PathBuf,
    /// `--pod-manifest-path`.
    pub manifests: PathBuf,
    /// `--cni-conf-dir`.
    pub cni_conf: PathBuf,
    /// host-local's data dir.
    pub ipam: PathBuf,
    /// The CNI network name.
    pub network: String,
    /// The test bridge.
    pub bridge: String,
    /// The test subnet's third octet (10.99.N.0/24).
    pub subnet: u8,
    /// The pod network the agent uses.
    pub pod_net: PodNet,
    /// `--pod-cidr` (the built-in network's range; `10.99.N.0/24` unless a test sets it).
    pub pod_cidr: String,
    /// `--cgroup-root`.
    pub cgroup_root: String,
    /// `--read-only-port`.
    pub port: u16,
    /// `--healthz-port`.
    pub healthz: u16,
    /// `--port` (the kubelet API's secure port).
    pub secure_port: u16,
    /// `--address` (the read-only and secure ports' address).
    pub address: String,
    /// `--node-ip`.
    pub node_ip: String,
    /// The node name.
    pub node: String,
    /// The running agent, if any.
    pub agent: Option<Child>,
    /// The agent's `--v` log filter.
    pub log_filter: String,
    /// More agent flags.
    pub extra_args: Vec<String>,
    /// Environment variables for the agent (e.g. `NODELET_FAILPOINT`).
    pub agent_env: Vec<(String, String)>,
    http: reqwest::Client,
}

/// What a world's sandboxes leave on the host, counted the way an operator would:
/// netns pins, allocated IPs, veths on the bridge, CNI cache entries, sandbox state
/// directories and active snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leftovers {
    pub netns_pins: usize,
    pub ips: usize,
    pub veths: usize,
    pub cni_cache: usize,
    pub state_dirs: usize,
    pub snapshots: usize,
    /// The built-in network's nft table (0 or 1): there while a pod holds an address.
    pub nft_tables: usize,
}

impl Leftovers {
    /// What `sandboxes` sandboxes and `containers` containers hold on a world using
    /// `net`: one netns pin, IP, veth and state directory per sandbox, a CNI cache entry
    /// each with CNI, the nft table with the built-in network while any sandbox exists,
    /// one snapshot per sandbox and container.
    pub fn expected(net: PodNet, sandboxes: usize, containers: usize) -> Leftovers {
        Leftovers {
            netns_pins: sandboxes,
            ips: sandboxes,
            veths: sandboxes,
            cni_cache: if net == PodNet::Cni { sandboxes } else { 0 },
            state_dirs: sandboxes,
            snapshots: sandboxes + containers,
            nft_tables: usize::from(net == PodNet::Builtin && sandboxes > 0),
        }
    }
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.flatten().count())
}

impl World {
    /// Makes the world on [`default_pod_net`] and imports the busybox image into its
    /// namespace.
    pub async fn new() -> World {
        World::with_pod_net(default_pod_net()).await
    }

    /// Makes the world on the pod network `pod_net` and imports the busybox image.
    pub async fn with_pod_net(pod_net: PodNet) -> World {
        // Process-wide, not this module's: the `builtin_network` binary compiles this
        // module once per test file it includes.
        let n = nodelet_testkit::next_in_process();
        let pid = std::process::id();
        let id = format!("{:x}{n:x}", pid % 0xfffff);
        // A /24 per test from 10.99.0.0/16, spread by process and test.
        let subnet = u8::try_from((pid.wrapping_mul(7).wrapping_add(n * 13)) % 250 + 1).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("nodelet-e2e-")
            .tempdir()
            .unwrap();
        let w = World {
            namespace: format!("nodelet-test-{id}"),
            socket: containerd_socket(),
            root: dir.path().join("root"),
            logs: dir.path().join("logs"),
            container_logs: dir.path().join("containers"),
            manifests: dir.path().join("manifests"),
            cni_conf: dir.path().join("cni"),
            ipam: dir.path().join("ipam"),
            network: format!("nlt{id}"),
            bridge: format!("nlt{id}"),
            subnet,
            pod_net,
            pod_cidr: format!("10.99.{subnet}.0/24"),
            cgroup_root: format!("/nodelet-test-{id}"),
            port: free_port(),
            healthz: free_port(),
            secure_port: free_port(),
            address: "127.0.0.1".into(),
            node_ip: "127.0.0.1".into(),
            node: format!("node-{id}"),
            agent: None,
            log_filter:
                "info,nodelet=debug,nodelet_cri=debug,nodelet_manifests=debug,nodelet_sources=debug"
                    .into(),
            extra_args: Vec::new(),
            agent_env: Vec::new(),
            http: reqwest::Client::new(),
            id,
            dir,
        };
        for d in [&w.root, &w.logs, &w.manifests, &w.cni_conf] {
            std::fs::create_dir_all(d).unwrap();
        }
        // The test's own network: a bridge of its own, no masquerade, so nothing of
        // it reaches the host's firewall or leaves the machine. (The built-in network
        // masquerades in a table of the world's own, `nodelet-pods-<bridge>`.)
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": w.network,
            "plugins": [{
                "type": "bridge", "bridge": w.bridge, "isGateway": true, "ipMasq": false,
                "hairpinMode": true,
                "ipam": {"type": "host-local", "dataDir": w.ipam,
                         "ranges": [[{"subnet": format!("10.99.{}.0/24", w.subnet)}]]}
            }]
        });
        if w.pod_net == PodNet::Cni {
            std::fs::write(w.cni_conf.join("10-test.conflist"), conf.to_string()).unwrap();
        }
        let containerd = nodelet_cri::containerd::Containerd::connect(&w.socket, &w.namespace)
            .await
            .unwrap_or_else(|e| {
                panic!("{e}: start a containerd for the tests (scripts/containerd-private.sh start) and set NODELET_TEST_CONTAINERD")
            });
        containerd
            .import_oci_archive(&busybox_archive())
            .await
            .expect("import busybox");
        w
    }

    /// The agent's flags.
    pub fn agent_args(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        vec![
            "--pod-manifest-path".into(),
            p(&self.manifests),
            "--root-dir".into(),
            p(&self.root),
            "--pod-logs-dir".into(),
            p(&self.logs),
            "--container-logs-dir".into(),
            p(&self.container_logs),
            "--container-runtime-endpoint".into(),
            format!("unix://{}", self.socket),
            "--containerd-namespace".into(),
            self.namespace.clone(),
            "--cni-conf-dir".into(),
            p(&self.cni_conf),
            "--cgroup-root".into(),
            self.cgroup_root.clone(),
            "--hostname-override".into(),
            self.node.clone(),
            "--address".into(),
            self.address.clone(),
            "--read-only-port".into(),
            self.port.to_string(),
            "--healthz-port".into(),
            self.healthz.to_string(),
            "--port".into(),
            self.secure_port.to_string(),
            "--node-ip".into(),
            self.node_ip.clone(),
            "--v".into(),
            self.log_filter.clone(),
            "--pod-cidr".into(),
            self.pod_cidr.clone(),
            "--pod-network-bridge".into(),
            self.bridge.clone(),
        ]
        .into_iter()
        .chain(self.extra_args.iter().cloned())
        .collect()
    }

    /// The agent's log file.
    pub fn agent_log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// What this world's sandboxes hold on the host now.
    pub fn leftovers(&self) -> Leftovers {
        let veths = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .stderr(Stdio::null())
            .output()
            .map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().count());
        let snaps = self.ctr(&["snapshots", "ls"]);
        let snapshots = String::from_utf8_lossy(&snaps.stdout)
            .lines()
            .filter(|l| l.split_whitespace().last() == Some("Active"))
            .count();
        Leftovers {
            netns_pins: entries(&self.root.join("runtime/netns")),
            ips: self.allocated_ips().len(),
            veths,
            cni_cache: entries(&self.root.join("cni/cache/results")),
            state_dirs: entries(&self.root.join("runtime/sandboxes")),
            snapshots,
            nft_tables: usize::from(self.has_nft_table()),
        }
    }

    /// The built-in network's nft table for this world's bridge.
    pub fn nft_table(&self) -> String {
        format!("nodelet-pods-{}", self.bridge)
    }

    /// Whether the built-in network's table for this world's bridge exists.
    pub fn has_nft_table(&self) -> bool {
        Command::new("nft")
            .args(["list", "table", "ip", &self.nft_table()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// What [`Leftovers::expected`] says `sandboxes` and `containers` hold here.
    pub fn expected_leftovers(&self, sandboxes: usize, containers: usize) -> Leftovers {
        Leftovers::expected(self.pod_net, sandboxes, containers)
    }

    /// Starts the agent binary and waits for its read-only API.
    pub async fn start_agent(&mut self) {
        self.start_agent_from(Path::new(env!("CARGO_BIN_EXE_nodelet")))
            .await;
    }

    /// Starts the agent from a copy of its binary at `exe` (as a package installs it) and
    /// waits for its read-only API.
    pub async fn start_agent_from(&mut self, exe: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log())
            .unwrap();
        let child = Command::new(exe)
            .args(self.agent_args())
            .envs(self.agent_env.iter().cloned())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nodelet");
        self.agent = Some(child);
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        let http = self.http.clone();
        // 60 s: on a cold CI machine with both cores busy (a Go build beside the tests)
        // the agent once took over 30 s to serve its first request.
        wait_for("the agent's read-only API", Duration::from_secs(60), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
    }

    /// The runc shims serving the world's containerd namespace, by their `-id`: the
    /// processes `containerd-shim-runc-v2 -namespace <ns> -id <id> …`.
    pub fn shims(&self) -> std::collections::BTreeMap<String, i32> {
        let mut out = std::collections::BTreeMap::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return out;
        };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args
                .first()
                .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
            {
                continue;
            }
            let value = |flag: &str| {
                args.iter()
                    .position(|a| a == flag)
                    .and_then(|i| args.get(i + 1))
                    .cloned()
            };
            if value("-namespace").as_deref() == Some(self.namespace.as_str())
                && let Some(id) = value("-id")
            {
                out.insert(id, pid);
            }
        }
        out
    }

    /// Kills the agent (SIGKILL by PID), as a crash would.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent with SIGTERM and waits for it to exit.
    pub fn stop_agent(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.agent.take()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).ok()?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a manifest file.
    pub fn write_manifest(&self, file: &str, yaml: &str) {
        // Write then rename, as an editor or config tool would, so the source never
        // sees half a file.
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.manifests.join(file)).unwrap();
    }

    /// The pods from the agent's read-only API.
    pub async fn pods(&self) -> Vec<Pod> {
        let url = format!("http://127.0.0.1:{}/pods", self.port);
        match self.http.get(&url).send().await {
            Ok(r) => r
                .json::<List<Pod>>()
                .await
                .map(|l| l.items)
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// The pod named `<name>-<node>`, if the agent has it.
    pub async fn pod(&self, name: &str) -> Option<Pod> {
        let full = format!("{name}-{}", self.node);
        self.pods()
            .await
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(full.as_str()))
    }

    /// Waits until the pod satisfies `check`, returning it.
    pub async fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
        self.wait_pod_for(name, what, Duration::from_secs(60), check)
            .await
    }

    /// Waits up to `limit` until the pod satisfies `check`, returning it.
    pub async fn wait_pod_for(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        check: impl Fn(&Pod) -> bool,
    ) -> Pod {
        let start = Instant::now();
        loop {
            let pod = self.pod(name).await;
            if let Some(p) = pod.as_ref().filter(|p| check(p)) {
                return p.clone();
            }
            if start.elapsed() > limit {
                let log = std::fs::read_to_string(self.agent_log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "timed out waiting for pod {name} to be {what}; last seen: {}\nagent log tail:\n{}",
                    serde_json::to_string_pretty(&pod.map(|p| p.status)).unwrap_or_default(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A runtime handle on the test's namespace, for checking what the agent did.
    pub async fn runtime(&self) -> ContainerdRuntime {
        self.try_runtime().await.expect("connect to containerd")
    }

    async fn try_runtime(&self) -> Result<ContainerdRuntime, nodelet_cri::runtime::RuntimeError> {
        ContainerdRuntime::connect(RuntimeConfig {
            endpoint: self.socket.clone(),
            namespace: self.namespace.clone(),
            state_dir: self.root.join("runtime"),
            log_driver: PathBuf::from(env!("CARGO_BIN_EXE_nodelet")),
            container_logs_dir: self.container_logs.clone(),
            log_rotation: nodelet_cri::logs::RotationPolicy::default(),
            registries: Default::default(),
            handlers: nodelet_cri::runtime::RuntimeHandlers::default(),
            cni: CniConfig {
                conf_dir: self.cni_conf.clone(),
                bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
                cache_dir: self.root.join("cni/cache"),
                timeout: Duration::from_secs(60),
            },
            builtin_network: (self.pod_net == PodNet::Builtin).then(|| {
                nodelet_cri::podnet::BuiltinNetwork {
                    bridge: self.bridge.clone(),
                    pod_cidr: self.pod_cidr.clone(),
                    ip_masq: true,
                    state_dir: self.root.join("network"),
                }
            }),
        })
        .await
    }

    /// The IPs host-local (or the built-in network's allocator) has handed out in
    /// this network.
    pub fn allocated_ips(&self) -> Vec<Ipv4Addr> {
        let dir = match self.pod_net {
            PodNet::Cni => self.ipam.join(&self.network),
            PodNet::Builtin => self.root.join("network/ipam").join(&self.bridge),
        };
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Imports an image built in memory into the test's namespace as `name`.
    pub async fn import_image(&self, image: &OciImage, name: &str) {
        nodelet_cri::containerd::Containerd::connect(&self.socket, &self.namespace)
            .await
            .expect("connect to containerd")
            .import_image(image, name)
            .await
            .unwrap_or_else(|e| panic!("import {name}: {e}"));
    }

    /// Runs `ctr` in the test's namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        nodelet_testkit::ctr(&self.socket, &self.namespace, args)
    }

    fn cleanup(&mut self) {
        self.kill_agent();
        // Sandboxes through the runtime (CNI DEL, netns pins), then whatever is left.
        let this = &*self;
        std::thread::scope(|s| {
            s.spawn(|| {
                let Ok(rt) = tokio::runtime::Runtime::new() else {
                    return;
                };
                rt.block_on(async {
                    // Cleanup never panics: a test that failed already says why.
                    let Ok(runtime) = this.try_runtime().await else {
                        return;
                    };
                    for c in runtime.list_containers(None).await.unwrap_or_default() {
                        let _ = runtime.remove_container(&c.id).await;
                    }
                    for sb in runtime.list_sandboxes(None).await.unwrap_or_default() {
                        let _ = runtime.remove_sandbox(&sb.id).await;
                    }
                });
            });
        });
        // Whatever is left, with containerd's own client.
        let _ = nodelet_testkit::purge_namespace(&self.socket, &self.namespace);
        // Only the bridge this test's network made.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        // Only the table the built-in network made for this world's bridge.
        if self.has_nft_table() {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", &self.nft_table()])
                .stderr(Stdio::null())
                .status();
        }
        if let Err((path, e)) = nodelet_testkit::remove_cgroup(&self.cgroup_root) {
            eprintln!("cleanup: cgroup {} not removed: {e}", path.display());
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.agent_log())
        {
            eprintln!(
                "---- agent log ({}) ----\n{log}",
                self.agent_log().display()
            );
        }
        self.cleanup();
    }
}
