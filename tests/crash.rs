//! End-to-end tests of crash safety (issue 17): the agent killed (SIGKILL, through a
//! debug build's `NODELET_FAILPOINT`) at each step of sandbox and container creation
//! leaks nothing once restarted (netns pins, IPs, veths, CNI cache entries, state
//! directories, snapshots), also when killed again in the middle of the reclaim pass
//! that follows, a container left `Created` with a task is started, and a pod cgroup
//! kept busy by a stray process is emptied and removed.

mod support;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nodelet_cri::runtime::Runtime as _;
use support::{BUSYBOX, Leftovers, PodNet, World, container_status, phase, wait_for};

fn pod_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
    )
}

fn running(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    phase(p) == "Running" && container_status(p, "main").is_some_and(|c| c.ready)
}

/// Waits for the agent to kill itself at its failpoint.
async fn wait_for_crash(w: &mut World, point: &str) {
    let child = w.agent.as_mut().expect("agent started");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the agent") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent did not reach failpoint {point}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    w.agent = None;
    assert_eq!(status.signal(), Some(9), "killed at {point}: {status:?}");
}

/// The reclaim's own figure from the agent log past byte `from`, in milliseconds.
fn reclaim_ms(w: &World, from: usize) -> Option<u64> {
    let log = std::fs::read_to_string(w.agent_log()).ok()?;
    let line = log
        .get(from..)?
        .lines()
        .find(|l| l.contains("reclaimed resources"))?;
    let at = line.find("elapsed_ms=")? + "elapsed_ms=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Everything a pod used is gone once the agent removed it.
async fn wait_pod_gone(w: &World, name: &str) {
    wait_for(
        &format!("pod {name} to go"),
        Duration::from_secs(60),
        || async {
            let gone = w.pod(name).await.is_none()
                && w.runtime()
                    .await
                    .list_sandboxes(None)
                    .await
                    .ok()?
                    .is_empty();
            gone.then_some(())
        },
    )
    .await;
}

const SANDBOX_POINTS: &[&str] = &[
    "sandbox-after-intent",
    "sandbox-after-netns",
    // The network's own points go here (see `sandbox_points`).
    "sandbox-after-cni",
    "sandbox-after-snapshot",
    "sandbox-after-record",
    "sandbox-after-task-create",
];

/// The sandbox points with the pod network's own: CNI's after `ADD`, or the built-in
/// network's after the address is allocated and after the veth exists.
fn sandbox_points(net: PodNet) -> Vec<&'static str> {
    let network: &[&str] = match net {
        PodNet::Cni => &["cni-after-add"],
        PodNet::Builtin => &["podnet-after-ipam", "podnet-after-veth"],
    };
    let mut points = SANDBOX_POINTS.to_vec();
    let at = points
        .iter()
        .position(|p| *p == "sandbox-after-netns")
        .map_or(0, |i| i + 1);
    points.splice(at..at, network.iter().copied());
    points
}

const CONTAINER_POINTS: &[&str] = &["container-after-snapshot", "container-after-task-create"];

#[tokio::test(flavor = "multi_thread")]
async fn killed_at_each_step_of_creation_leaks_nothing() {
    let mut w = World::new().await;
    let mut figures = Vec::new();
    let points = sandbox_points(w.pod_net);
    for (i, point) in points.iter().chain(CONTAINER_POINTS).enumerate() {
        let name = format!("crash{i}");
        let file = format!("{name}.yaml");
        w.agent_env = vec![("NODELET_FAILPOINT".into(), (*point).into())];
        w.start_agent().await;
        w.write_manifest(&file, &pod_yaml(&name));
        wait_for_crash(&mut w, point).await;
        let left = w.leftovers();
        eprintln!("{point}: left by the crash: {left:?}");

        w.agent_env.clear();
        let from = std::fs::metadata(w.agent_log()).map_or(0, |m| m.len());
        w.start_agent().await;
        w.wait_pod(&name, "running after the restart", running)
            .await;
        let ms = reclaim_ms(&w, usize::try_from(from).unwrap_or(0));
        figures.push((*point, left, ms));
        // One pod: one of each, plus its container's snapshot.
        let one = w.expected_leftovers(1, 1);
        assert_eq!(
            w.leftovers(),
            one,
            "after a crash at {point}, with the pod running"
        );

        std::fs::remove_file(w.manifests.join(&file)).expect("remove manifest");
        wait_pod_gone(&w, &name).await;
        wait_for(
            &format!("nothing left of the pod killed at {point}"),
            Duration::from_secs(20),
            || async { (w.leftovers() == Leftovers::default()).then_some(()) },
        )
        .await;
        assert!(w.stop_agent().is_some());
    }
    for (point, left, ms) in figures {
        eprintln!("figure: killed at {point}: left {left:?}; reclaimed at restart in {ms:?} ms");
    }
}

/// Starts the agent without waiting for its API: it may die at a failpoint first.
fn spawn_agent(w: &mut World) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(w.agent_log())
        .expect("agent log");
    let child = Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args(w.agent_args())
        .envs(w.agent_env.iter().cloned())
        .stdout(log.try_clone().expect("agent log"))
        .stderr(log)
        .spawn()
        .expect("start nodelet");
    w.agent = Some(child);
}

/// The sandboxes with a cached CNI result (`<network>-<id>-<ifname>`; an unfinished
/// write, `.<entry>.<pid>.tmp`, is none).
fn cached_sandboxes(w: &World) -> BTreeSet<String> {
    std::fs::read_dir(w.root.join("cni/cache/results"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .filter_map(|n| Some(n.split('-').nth(1)?.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The agent killed in the middle of its reclaim pass (after the first leaked
/// sandbox's network was torn down, before its pin and directory went): the next start
/// finishes the pass, nothing is left beyond the live pods, and no IP freed by the
/// interrupted pass went to two pods. It reads CNI's result cache to know which
/// sandboxes were attached, so it runs on CNI in every binary that includes it.
#[tokio::test(flavor = "multi_thread")]
async fn killed_during_the_reclaim_the_next_start_finishes_it() {
    let mut w = World::with_pod_net(PodNet::Cni).await;
    let names: Vec<String> = (0..4).map(|i| format!("reclaim{i}")).collect();
    // The manifests are there before the agent: it makes the sandboxes at once and
    // dies when the first is past its CNI ADD, the others part made.
    for name in &names {
        w.write_manifest(&format!("{name}.yaml"), &pod_yaml(name));
    }
    w.agent_env = vec![("NODELET_FAILPOINT".into(), "sandbox-after-cni".into())];
    spawn_agent(&mut w);
    wait_for_crash(&mut w, "sandbox-after-cni").await;
    let leaked = w.leftovers();
    eprintln!("left by the crash during creation: {leaked:?}");
    assert!(
        leaked.netns_pins >= 1 && leaked.ips >= 1,
        "a sandbox past CNI leaked: {leaked:?}"
    );

    let attached = cached_sandboxes(&w);
    assert!(!attached.is_empty(), "a CNI ADD finished before the crash");

    w.agent_env = vec![("NODELET_FAILPOINT".into(), "reclaim-after-network".into())];
    let from = std::fs::metadata(w.agent_log()).map_or(0, |m| m.len());
    spawn_agent(&mut w);
    wait_for_crash(&mut w, "reclaim-after-network").await;
    let half = w.leftovers();
    eprintln!("left by the crash during the reclaim: {half:?}");
    assert!(half.ips < leaked.ips, "a network was torn down: {half:?}");
    // The pass died with the first attached sandbox's network gone, its pin and
    // directory still there.
    let still = cached_sandboxes(&w);
    let gone: Vec<&String> = attached.difference(&still).collect();
    assert_eq!(gone.len(), 1, "one attachment torn down: {gone:?}");
    let root = w.root.join("runtime");
    assert!(root.join("netns").join(gone[0]).exists(), "its pin is left");
    assert!(
        root.join("sandboxes").join(gone[0]).exists(),
        "its directory is left"
    );
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    assert!(
        log.get(usize::try_from(from).unwrap_or(0)..)
            .is_some_and(|l| !l.contains("reclaimed resources")),
        "the pass did not finish before the kill"
    );

    w.agent_env.clear();
    let from = std::fs::metadata(w.agent_log()).map_or(0, |m| m.len());
    w.start_agent().await;
    let mut ips = BTreeSet::new();
    for name in &names {
        let pod = w.wait_pod(name, "running after the restart", running).await;
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .unwrap_or_else(|| panic!("pod {name} has no IP"));
        assert!(ips.insert(ip.clone()), "{ip} was given to two pods");
    }
    let ms = reclaim_ms(&w, usize::try_from(from).unwrap_or(0));
    eprintln!("figure: the interrupted reclaim finished at the next start in {ms:?} ms");
    assert!(ms.is_some(), "the next start reclaimed the rest");
    let allocated: BTreeSet<String> = w.allocated_ips().iter().map(ToString::to_string).collect();
    assert_eq!(
        allocated, ips,
        "host-local holds exactly the live pods' IPs"
    );
    let pods = names.len();
    assert_eq!(
        w.leftovers(),
        w.expected_leftovers(pods, pods),
        "one of each per live pod"
    );

    for name in &names {
        std::fs::remove_file(w.manifests.join(format!("{name}.yaml"))).expect("remove manifest");
    }
    for name in &names {
        wait_pod_gone(&w, name).await;
    }
    wait_for(
        "nothing left of the pods",
        Duration::from_secs(30),
        || async { (w.leftovers() == Leftovers::default()).then_some(()) },
    )
    .await;
    assert!(w.stop_agent().is_some());
}

/// The `create task <id>: already exists` loop: killed between creating a container's
/// task and starting it, the restarted agent starts the container.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_left_created_with_a_task_is_started() {
    let mut w = World::new().await;
    w.agent_env = vec![(
        "NODELET_FAILPOINT".into(),
        "container-after-task-create".into(),
    )];
    w.start_agent().await;
    w.write_manifest("p.yaml", &pod_yaml("created"));
    wait_for_crash(&mut w, "container-after-task-create").await;
    // The record and a created (not started) task are there.
    let rt = w.runtime().await;
    let containers = rt.list_containers(None).await.expect("list");
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(
        containers[0].state,
        nodelet_cri::runtime::ContainerState::Created
    );
    let id = containers[0].id.clone();

    w.agent_env.clear();
    w.start_agent().await;
    let pod = w
        .wait_pod("created", "running after the restart", running)
        .await;
    // The same instance, started: not a new one beside it.
    let status = container_status(&pod, "main").expect("status");
    assert_eq!(status.restart_count, 0);
    assert!(
        status
            .container_id
            .as_deref()
            .is_some_and(|c| c.ends_with(&id)),
        "{:?} vs {id}",
        status.container_id
    );
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    assert!(!log.contains("already exists"), "agent log:\n{log}");
}

/// A stray process in a pod's cgroup is killed and the cgroup removed with the pod.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_pod_cgroup_is_emptied_and_removed() {
    support::require_cgroup_v1();
    let mut w = World::new().await;
    w.start_agent().await;
    w.write_manifest("p.yaml", &pod_yaml("busy"));
    let pod = w.wait_pod("busy", "running", running).await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let rel = format!("{}/kubepods/besteffort/pod{uid}", w.cgroup_root);
    let dirs: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroupfs")
        .flatten()
        .map(|e| e.path().join(rel.trim_start_matches('/')))
        .filter(|d| d.join("cgroup.procs").exists())
        .collect();
    assert!(!dirs.is_empty(), "no pod cgroup {rel}");
    // A stray process of the test's own, moved into every hierarchy of the pod. Not
    // the test's child (as a pause process whose shim died is not the agent's), so
    // that init reaps it once killed.
    let out = Command::new("sh")
        .args(["-c", "sleep 600 >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("start sleep");
    let stray: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the stray's PID");
    let alive = || Path::new(&format!("/proc/{stray}")).exists();
    for d in &dirs {
        std::fs::write(d.join("cgroup.procs"), stray.to_string())
            .unwrap_or_else(|e| panic!("move into {}: {e}", d.display()));
    }

    std::fs::remove_file(w.manifests.join("p.yaml")).expect("remove manifest");
    wait_pod_gone(&w, "busy").await;
    let removed = wait_for_result(Duration::from_secs(20), || {
        dirs.iter().all(|d| !d.exists()) && !alive()
    })
    .await;
    if alive() {
        // Ours, by PID: never leave it running.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(stray),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(
        removed,
        "pod cgroup {rel} ({left:?}) or its stray process (alive: {}) still there",
        alive()
    );
}

/// The pod cgroup's directories in every v1 hierarchy that has it.
fn pod_cgroup_dirs(w: &World, uid: &str) -> Vec<std::path::PathBuf> {
    let rel = format!("{}/kubepods/besteffort/pod{uid}", w.cgroup_root);
    std::fs::read_dir("/sys/fs/cgroup")
        .expect("cgroupfs")
        .flatten()
        .map(|e| e.path().join(rel.trim_start_matches('/')))
        .filter(|d| d.join("cgroup.procs").exists())
        .collect()
}

/// A pause process whose shim died (SIGKILLed, as an OOM kill or a crash would)
/// is left behind in the pod cgroup; the pod's removal kills it and removes the
/// cgroup.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_cgroup_kept_busy_by_a_pause_whose_shim_died_is_removed() {
    support::require_cgroup_v1();
    let mut w = World::new().await;
    w.start_agent().await;
    w.write_manifest("p.yaml", &pod_yaml("orphan"));
    let pod = w.wait_pod("orphan", "running", running).await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let dirs = pod_cgroup_dirs(&w, &uid);
    assert!(!dirs.is_empty(), "no pod cgroup for {uid}");
    let sandbox = w
        .runtime()
        .await
        .list_sandboxes(Some(&uid))
        .await
        .expect("list sandboxes")
        .into_iter()
        .find(|s| s.ready)
        .expect("a ready sandbox");
    let pause = i32::try_from(sandbox.pid).expect("pid");
    let shim = *w.shims().get(&sandbox.id).expect("the sandbox's shim");
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    // The agent is stopped so it doesn't replace the sandbox first: the pod is
    // removed while it is down, as a crash would leave it.
    assert!(w.stop_agent().is_some());
    // containerd cleans up after a dead shim with `runc delete --force`, which kills
    // the pause process; with runc's state of the sandbox gone (a wiped /run, a
    // crash mid-delete) that finds nothing and the pause is left running. The
    // state is moved aside (this test's own namespace) to make that happen.
    let runc_state = Path::new("/run/containerd/runc")
        .join(&w.namespace)
        .join(&sandbox.id);
    assert!(
        runc_state.join("state.json").exists(),
        "no runc state at {}",
        runc_state.display()
    );
    let hidden = runc_state.with_file_name(format!(".{}-hidden", sandbox.id));
    std::fs::rename(&runc_state, &hidden).expect("move runc's state aside");
    // This test's pod's shim, by PID.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    let _ = wait_for_result(Duration::from_secs(5), || !alive(shim)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let orphaned = alive(pause);
    eprintln!("figure: the pause process outlived its shim: {orphaned}");

    std::fs::remove_file(w.manifests.join("p.yaml")).expect("remove manifest");
    let from = std::fs::metadata(w.agent_log()).map_or(0, |m| m.len());
    w.start_agent().await;
    wait_pod_gone(&w, "orphan").await;
    let removed = wait_for_result(Duration::from_secs(30), || {
        dirs.iter().all(|d| !d.exists()) && !alive(pause)
    })
    .await;
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    let killed = log
        .get(usize::try_from(from).unwrap_or(0)..)
        .is_some_and(|l| l.contains("killing processes left in the pod cgroup"));
    eprintln!("figure: the agent killed what was left in the pod cgroup: {killed}");
    if alive(pause) {
        // This test's pod's pause process, by PID: never leave it running.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pause),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = std::fs::remove_dir_all(&hidden);
    assert!(
        orphaned,
        "the pause process went with its shim: nothing was busy"
    );
    assert!(
        killed,
        "the agent did not kill what was left in the pod cgroup"
    );
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(
        removed,
        "pod cgroup ({left:?}) or its pause process (alive: {}) still there",
        alive(pause)
    );
}

async fn wait_for_result(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cond()
}

fn big_pod_yaml(name: &str, containers: usize) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n"
    );
    for i in 0..containers {
        y.push_str(&format!(
            "  - name: c{i}\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ));
    }
    y
}

async fn containers_of(w: &World, uid: &str) -> usize {
    w.runtime()
        .await
        .list_containers(Some(uid))
        .await
        .map_or(0, |c| c.len())
}

/// A pod with 1,000 containers removed while they are being made: the start stops
/// and the pod goes.
#[tokio::test(flavor = "multi_thread")]
async fn removing_a_pod_with_a_thousand_containers_interrupts_its_start() {
    const N: usize = 1000;
    let mut w = World::new().await;
    w.start_agent().await;
    w.write_manifest("early.yaml", &big_pod_yaml("early", N));
    let uid = wait_for("the pod", Duration::from_secs(60), || async {
        w.pod("early").await.and_then(|p| p.metadata.uid)
    })
    .await;
    wait_for("20 of its containers", Duration::from_secs(120), || async {
        (containers_of(&w, &uid).await >= 20).then_some(())
    })
    .await;
    std::fs::remove_file(w.manifests.join("early.yaml")).expect("remove manifest");
    let removal = Instant::now();
    wait_pod_gone(&w, "early").await;
    wait_for(
        "no container of the pod",
        Duration::from_secs(120),
        || async { (containers_of(&w, &uid).await == 0).then_some(()) },
    )
    .await;
    eprintln!(
        "figure: a pod removed while starting its {N} containers went in {:?}",
        removal.elapsed()
    );
}

/// 1,000 containers of a pod no source wants, whose records add up past gRPC's
/// 4 MiB in one list reply (about 6.5 MB here), are removed by a starting agent
/// while another pod starts. Issue 17 saw every sync fail past about 930 such
/// containers. The records are made through the runtime without tasks: a thousand
/// runc starts take a quarter of an hour on two cores, and the list is what broke.
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_container_records_are_listed_and_removed_while_another_pod_starts() {
    use nodelet_cri::runtime::{ContainerConfig, PodRef, SandboxInfo};
    const N: usize = 1000;
    let mut w = World::new().await;
    let rt = w.runtime().await;
    let image = rt
        .image(BUSYBOX)
        .await
        .expect("image lookup")
        .expect("busybox imported");
    let uid = "0dd0dd0d-0000-4000-8000-000000001000".to_owned();
    let sandbox = SandboxInfo {
        id: "f".repeat(64),
        pod: PodRef {
            uid: uid.clone(),
            name: "thousand".into(),
            namespace: "default".into(),
        },
        attempt: 0,
        ready: false,
        pid: 0,
        ips: Vec::new(),
        netns: None,
        host_network: true,
        share_pid: false,
        cgroup_parent: None,
        files_dir: w.dir.path().join("thousand-files"),
        log_directory: w.logs.join("thousand"),
        created_at: std::time::SystemTime::now(),
        runtime_handler: String::new(),
    };
    let made = Instant::now();
    for i in 0..N {
        let config = ContainerConfig {
            name: format!("c{i}"),
            attempt: 0,
            image: BUSYBOX.into(),
            command: vec!["sleep".into(), "3600".into()],
            args: Vec::new(),
            working_dir: None,
            env: vec![("PAD".into(), "x".repeat(2000))],
            mounts: Vec::new(),
            log_path: format!("c{i}/0.log").into(),
            security: Default::default(),
            resources: Default::default(),
        };
        rt.create_container(&sandbox, &config, &image)
            .await
            .unwrap_or_else(|e| panic!("create container {i}: {e}"));
    }
    eprintln!("figure: {N} container records made in {:?}", made.elapsed());
    let listed = rt
        .list_containers(Some(&uid))
        .await
        .expect("list the pod's containers");
    assert_eq!(listed.len(), N);

    w.write_manifest("small.yaml", &pod_yaml("small"));
    let start = Instant::now();
    w.start_agent().await;
    w.wait_pod("small", "running beside the removal", running)
        .await;
    eprintln!(
        "figure: the other pod ran {:?} after the agent started",
        start.elapsed()
    );
    wait_for(
        &format!("the {N} containers of the unwanted pod to go"),
        Duration::from_secs(300),
        || async { (containers_of(&w, &uid).await == 0).then_some(()) },
    )
    .await;
    eprintln!(
        "figure: {N} containers of an unwanted pod removed {:?} after the agent started",
        start.elapsed()
    );
}
