//! The floor under any agent on this machine: the same pods started straight through
//! nodelet's runtime layer (`ContainerdRuntime`: sandbox with the built-in network,
//! pause task, app container task), with no agent around it — no manifest source, pod
//! workers, cgroup manager, status or `/pods` polling. What containerd, its shims,
//! runc and the pods' own processes cost here bounds how fast any agent can start pods;
//! the agents' rows in the same run show how close each gets to it.
//!
//! `floor-hostnet` is the same floor with every pod on the host's network: no netns, no
//! veth, no addresses or routes. The difference between the two rows is the pod
//! network's share of a pod start (what a pool of ready network namespaces could save at
//! most).

use std::path::Path;
use std::time::Instant;

use nodelet_cri::cni::CniConfig;
use nodelet_cri::podnet::BuiltinNetwork;
use nodelet_cri::runtime::{
    ContainerConfig, ContainerdRuntime, PodRef, Runtime as _, RuntimeConfig, SandboxConfig,
};

use super::{Env, Round, cpuacct, rss_kib, support};

/// This process's user + system CPU time, in nanoseconds (`/proc/self/stat`, fields
/// 14 and 15, in clock ticks of 10 ms).
fn self_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing paren.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // After the paren: state is field 3, so utime (14) and stime (15) are at 11, 12.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10_000_000
}

/// A runtime in containerd namespace `bench-<name>`, state under the bench dir.
pub async fn runtime(e: &Env, name: &str) -> ContainerdRuntime {
    let dir = e.dir.join(name);
    let log_driver = e
        .nodelet
        .parent()
        .map_or_else(|| e.nodelet.clone(), |d| d.join("nodelet-log-driver"));
    ContainerdRuntime::connect(RuntimeConfig {
        endpoint: e.socket.clone(),
        namespace: format!("bench-{name}"),
        state_dir: dir.join("state"),
        log_driver,
        registries: Default::default(),
        handlers: nodelet_cri::runtime::RuntimeHandlers::default(),
        cni: CniConfig {
            conf_dir: dir.join("cni"),
            cache_dir: dir.join("cni-cache"),
            ..CniConfig::default()
        },
        builtin_network: Some(BuiltinNetwork {
            bridge: "nlfloor0".to_owned(),
            pod_cidr: "10.87.0.0/16".to_owned(),
            ip_masq: true,
            state_dir: dir.join("network"),
        }),
        container_logs_dir: dir.join("containers"),
        log_rotation: nodelet_cri::logs::RotationPolicy::default(),
    })
    .await
    .expect("connect the floor's runtime")
}

/// One pod, started: its sandbox, then its container created and started.
async fn start_pod(
    rt: &ContainerdRuntime,
    dir: &Path,
    cgroup: &str,
    host_network: bool,
    i: usize,
) -> (String, f64) {
    let t = Instant::now();
    let name = format!("f{i}");
    let logs = dir.join("pods").join(&name);
    let sandbox = rt
        .run_sandbox(&SandboxConfig {
            pod: PodRef {
                uid: format!("floor-{i}"),
                name: name.clone(),
                namespace: "default".into(),
            },
            attempt: 0,
            hostname: name.clone(),
            host_network,
            host_ipc: false,
            host_pid: false,
            share_process_namespace: false,
            log_directory: logs.clone(),
            cgroup_parent: Some(format!("{cgroup}/pod{i}")),
            dns: None,
            host_aliases: vec![],
            fqdn: None,
            sysctls: vec![],
            oom_score_adj: None,
            port_mappings: vec![],
            runtime_handler: String::new(),
        })
        .await
        .expect("run sandbox");
    let image = rt
        .image(support::BUSYBOX)
        .await
        .expect("image")
        .expect("busybox imported");
    let id = rt
        .create_container(
            &sandbox,
            &ContainerConfig {
                name: "main".into(),
                attempt: 0,
                image: support::BUSYBOX.into(),
                command: vec!["sleep".into(), "3600".into()],
                args: vec![],
                working_dir: None,
                env: vec![],
                mounts: vec![],
                log_path: logs.join("main/0.log"),
                security: Default::default(),
                resources: Default::default(),
            },
            &image,
        )
        .await
        .expect("create container");
    rt.start_container(&id).await.expect("start container");
    (sandbox.id, t.elapsed().as_secs_f64())
}

/// `n` pods started at once through the runtime alone, then removed; on the host's
/// network when `name` ends in `-hostnet`.
pub async fn round(e: &Env, rt: &ContainerdRuntime, name: &str, cgroup: &str, n: usize) -> Round {
    let dir = e.dir.join(name);
    let host_network = name.ends_with("-hostnet");
    let cpu0 = [
        self_cpu_ns(),
        cpuacct(&format!("{}/containerd", e.cgroup)),
        cpuacct(cgroup),
    ];
    let calls0 = nodelet_cri::containerd::call_counts();
    let started =
        futures::future::join_all((0..n).map(|i| start_pod(rt, &dir, cgroup, host_network, i)))
            .await;
    let cpu1 = [
        self_cpu_ns(),
        cpuacct(&format!("{}/containerd", e.cgroup)),
        cpuacct(cgroup),
    ];
    let rss_mib = rss_kib(std::process::id()) as f64 / 1024.0;
    let calls = super::calls_between(&calls0, &nodelet_cri::containerd::call_counts());
    let mem = super::mem(std::process::id());
    let (p50, p99, max) = super::spread(started.iter().map(|(_, l)| *l).collect());
    // One listing for the whole round (the containers of its sandboxes), not one per pod.
    let containers = rt.list_containers(None).await.unwrap_or_default();
    for (sandbox, _) in &started {
        for c in containers.iter().filter(|c| &c.sandbox_id == sandbox) {
            let _ = rt
                .stop_container(&c.id, std::time::Duration::from_secs(1))
                .await;
            let _ = rt.remove_container(&c.id).await;
        }
        let _ = rt.remove_sandbox(sandbox).await;
    }
    super::remove_cgroup_everywhere(cgroup);
    let per_pod = |i: usize| cpu1[i].saturating_sub(cpu0[i]) as f64 / 1e9 / n as f64;
    Round {
        n,
        p50,
        p99,
        max,
        cpu: [per_pod(0), per_pod(1), per_pod(2)],
        rss_mib,
        calls,
        mem,
        after: None,
    }
}

/// The built-in network alone (`floor-netonly`): `n` pods' network namespaces created
/// and attached at once (netns pinned, addresses allocated, veth pair, addresses and
/// routes), with no container; each pod's latency is that setup's, the CPU the bench
/// process's (the netlink and namespace work runs in its syscalls). Then torn down.
pub async fn net_round(e: &Env, name: &str, n: usize) -> Round {
    use nodelet_cri::netns::NetNs;
    use nodelet_cri::podnet::PodNetwork;
    let dir = e.dir.join(name);
    let net = std::sync::Arc::new(
        PodNetwork::new(BuiltinNetwork {
            bridge: "nlnetonly0".to_owned(),
            pod_cidr: "10.88.0.0/16".to_owned(),
            ip_masq: true,
            state_dir: dir.join("network"),
        })
        .expect("the built-in network"),
    );
    let pins = dir.join("netns");
    let cpu0 = self_cpu_ns();
    let started = futures::future::join_all((0..n).map(|i| {
        let (net, pin) = (net.clone(), pins.join(format!("n{i}")));
        async move {
            let t = Instant::now();
            let id = format!("netonly{i:03}");
            let p = pin.clone();
            tokio::task::spawn_blocking(move || NetNs::create(&p))
                .await
                .expect("netns thread")
                .expect("create netns");
            net.setup(&id, &pin, &[]).await.expect("attach");
            (id, pin, t.elapsed().as_secs_f64())
        }
    }))
    .await;
    let cpu = self_cpu_ns().saturating_sub(cpu0) as f64 / 1e9 / n as f64;
    let rss_mib = rss_kib(std::process::id()) as f64 / 1024.0;
    let mem = super::mem(std::process::id());
    let (p50, p99, max) = super::spread(started.iter().map(|(_, _, l)| *l).collect());
    for (id, pin, _) in &started {
        net.teardown(id).await.expect("detach");
        NetNs::remove(pin).expect("remove netns");
    }
    Round {
        n,
        p50,
        p99,
        max,
        cpu: [cpu, 0.0, 0.0],
        rss_mib,
        calls: Default::default(),
        mem,
        after: None,
    }
}
