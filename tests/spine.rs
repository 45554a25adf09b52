//! End-to-end tests of the spine: the `nodelet` binary runs static pods through real
//! containerd, runc and CNI plugins, each test in its own world (see `support`).

mod support;

use std::time::Duration;

use support::{BUSYBOX, World, container_status, log_lines, phase, wait_for};

fn running_and_ready(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    phase(p) == "Running"
        && p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

fn pod_dir_name(w: &World, pod: &k8s_openapi::api::core::v1::Pod) -> std::path::PathBuf {
    w.logs.join(format!(
        "default_{}_{}",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    ))
}

/// Two containers share the pod's network: one serves on localhost, the other
/// fetches from it. The pod gets an IP from the test's CIDR, both containers' output
/// lands in CRI-format log files, and `nodelet pods` shows the pod Running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_container_pod_shares_network_and_logs() {
    let mut w = World::new().await;
    w.write_manifest(
        "web.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - name: server
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www && echo served-by-server > /www/index.html && echo to-stderr >&2 && exec httpd -f -p 8080 -h /www"]
  - name: client
    image: {BUSYBOX}
    command: ["sh", "-c", "until wget -qO- http://127.0.0.1:8080/; do sleep 0.2; done; cat /etc/hostname; exec sleep 3600"]
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod(
            "web",
            "Running with both containers ready",
            running_and_ready,
        )
        .await;
    let status = pod.status.clone().expect("status");
    let ip: std::net::Ipv4Addr = status
        .pod_ip
        .as_deref()
        .expect("pod IP")
        .parse()
        .expect("an IPv4 pod IP");
    assert_eq!(
        ip.octets()[..3],
        [10, 99, w.subnet],
        "pod IP {ip} from the test's CIDR"
    );
    assert_eq!(
        w.allocated_ips(),
        vec![ip],
        "host-local allocated exactly the pod IP"
    );
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    for c in ["server", "client"] {
        let cs = container_status(&pod, c).expect("container status");
        assert!(
            cs.container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("containerd://"))
        );
        assert!(
            cs.image_id.starts_with("sha256:"),
            "imageID {}",
            cs.image_id
        );
        assert_eq!(cs.restart_count, 0);
        assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    }

    let dir = pod_dir_name(&w, &pod);
    let client_log = dir.join("client/0.log");
    let lines = wait_for(
        "the client's output in its CRI log",
        Duration::from_secs(30),
        || {
            let lines = log_lines(&client_log);
            async move {
                lines
                    .iter()
                    .any(|(_, t)| t == "served-by-server")
                    .then_some(lines)
            }
        },
    )
    .await;
    assert!(
        lines.contains(&("stdout".into(), format!("web-{}", w.node))),
        "hostname is the pod name: {lines:?}"
    );
    let server_log = log_lines(&dir.join("server/0.log"));
    assert!(
        server_log.contains(&("stderr".into(), "to-stderr".into())),
        "{server_log:?}"
    );

    // The table a user reads.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args(["pods", "--read-only-port", &w.port.to_string()])
        .output()
        .expect("run nodelet pods");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let header = table.lines().next().unwrap_or("");
    for col in ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP"] {
        assert!(header.contains(col), "{header}");
    }
    let row = table
        .lines()
        .find(|l| l.contains(&format!("web-{}", w.node)))
        .unwrap_or_else(|| panic!("no row for the pod in:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[2..4], ["2/2", "Running"], "{row}");
    assert!(cells.contains(&ip.to_string().as_str()), "{row}");
    w.stop_agent();
}

/// `restartPolicy: Never`: exit 0 ends Succeeded, exit 3 ends Failed with exit code 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_decide_the_phase() {
    let mut w = World::new().await;
    for (name, code) in [("ok", 0), ("fails", 3)] {
        w.write_manifest(
            &format!("{name}.yaml"),
            &format!(
                r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c", "echo exiting with {code}; exit {code}"]
"#
            ),
        );
    }
    w.start_agent().await;
    let ok = w
        .wait_pod("ok", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    let t = container_status(&ok, "main")
        .and_then(|c| c.state.clone())
        .and_then(|s| s.terminated)
        .expect("terminated state");
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert!(t.started_at.is_some() && t.finished_at.is_some());

    let failed = w
        .wait_pod("fails", "Failed", |p| phase(p) == "Failed")
        .await;
    let t = container_status(&failed, "main")
        .and_then(|c| c.state.clone())
        .and_then(|s| s.terminated)
        .expect("terminated state");
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    let log = log_lines(&pod_dir_name(&w, &failed).join("main/0.log"));
    assert_eq!(
        log,
        vec![("stdout".to_owned(), "exiting with 3".to_owned())]
    );

    // A finished pod gives its IP back; its containers stay for their status and logs.
    wait_for(
        "finished pods' IPs released",
        Duration::from_secs(30),
        || {
            let ips = w.allocated_ips();
            async move { ips.is_empty().then_some(()) }
        },
    )
    .await;
    w.stop_agent();
}

/// Deleting the manifest stops and removes the sandbox, the containers and the CNI
/// allocation, the network namespace pin and the pod's cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_manifest_removes_everything() {
    let mut w = World::new().await;
    w.write_manifest(
        "sleeper.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: sleeper}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"#
        ),
    );
    w.start_agent().await;
    let pod = w.wait_pod("sleeper", "Running", running_and_ready).await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let runtime = w.runtime().await;
    use nodelet_cri::runtime::Runtime as _;
    assert_eq!(
        runtime
            .list_sandboxes(Some(&uid))
            .await
            .expect("list")
            .len(),
        1
    );
    assert_eq!(w.allocated_ips().len(), 1);
    let cgroup = format!(
        "/sys/fs/cgroup/pids{}/kubepods/besteffort/pod{uid}",
        w.cgroup_root
    );
    assert!(std::path::Path::new(&cgroup).exists(), "{cgroup}");

    std::fs::remove_file(w.manifests.join("sleeper.yaml")).expect("remove manifest");
    wait_for(
        "the pod gone from the agent",
        Duration::from_secs(30),
        || {
            let w = &w;
            async move { w.pod("sleeper").await.is_none().then_some(()) }
        },
    )
    .await;
    assert!(
        runtime
            .list_sandboxes(Some(&uid))
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        runtime
            .list_containers(Some(&uid))
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        w.allocated_ips().is_empty(),
        "IP released: {:?}",
        w.allocated_ips()
    );
    let pins: Vec<_> = std::fs::read_dir(w.root.join("runtime/netns"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(pins.is_empty(), "netns pins left: {pins:?}");
    assert!(
        !std::path::Path::new(&cgroup).exists(),
        "pod cgroup left: {cgroup}"
    );
    assert!(!w.root.join("pods").join(&uid).exists(), "pod dir left");
    w.stop_agent();
}

/// Killing the agent and starting it again leaves running containers alone: same
/// container IDs, same start times, same processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_running_pods() {
    let mut w = World::new().await;
    w.write_manifest(
        "steady.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: steady}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: ["sh", "-c", "while true; do echo tick; sleep 1; done"]
"#
        ),
    );
    w.start_agent().await;
    let before = w.wait_pod("steady", "Running", running_and_ready).await;
    let runtime = w.runtime().await;
    use nodelet_cri::runtime::Runtime as _;
    let uid = before.metadata.uid.clone().expect("uid");
    let containers_before = runtime.list_containers(Some(&uid)).await.expect("list");
    let sandboxes_before = runtime.list_sandboxes(Some(&uid)).await.expect("list");

    w.kill_agent();
    w.start_agent().await;
    let after = w
        .wait_pod("steady", "Running again", running_and_ready)
        .await;
    let cs_before = container_status(&before, "main").expect("status");
    let cs_after = container_status(&after, "main").expect("status");
    assert_eq!(cs_before.container_id, cs_after.container_id);
    assert_eq!(
        cs_before
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.clone()),
        cs_after
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.clone())
    );
    assert_eq!(cs_after.restart_count, 0);
    assert_eq!(
        before.status.as_ref().and_then(|s| s.pod_ip.clone()),
        after.status.as_ref().and_then(|s| s.pod_ip.clone())
    );
    let containers_after = runtime.list_containers(Some(&uid)).await.expect("list");
    let ids = |v: &[nodelet_cri::runtime::ContainerInfo]| {
        v.iter().map(|c| (c.id.clone(), c.pid)).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&containers_before),
        ids(&containers_after),
        "same containers, same PIDs"
    );
    let sb_after = runtime.list_sandboxes(Some(&uid)).await.expect("list");
    assert_eq!(
        sandboxes_before
            .iter()
            .map(|s| (&s.id, s.pid))
            .collect::<Vec<_>>(),
        sb_after.iter().map(|s| (&s.id, s.pid)).collect::<Vec<_>>()
    );
    // The log driver kept writing while the agent was down (it belongs to the shim).
    let log = pod_dir_name(&w, &after).join("main/0.log");
    let n = log_lines(&log).len();
    wait_for(
        "more log lines after the restart",
        Duration::from_secs(10),
        || {
            let more = log_lines(&log).len() > n;
            async move { more.then_some(()) }
        },
    )
    .await;
    w.stop_agent();
}

/// Bad input never stops the agent or other pods: a manifest that doesn't parse is
/// reported with its file and position, an image that can't be pulled shows
/// `ErrImagePull` with the registry's reason and then `ImagePullBackOff`, and the good
/// pod runs regardless. (The registry is a closed loopback port: nothing leaves the
/// machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_and_missing_images_are_reported() {
    let mut w = World::new().await;
    w.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: broken\nspec: [\n",
    );
    w.write_manifest(
        "invalid.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec:\n  containers:\n  - name: c\n",
    );
    w.write_manifest(
        "noimage.yaml",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers:
  - name: main
    image: 127.0.0.1:1/does-not-exist:1.0
  - name: never
    image: 127.0.0.1:1/does-not-exist:1.0
    imagePullPolicy: Never
"#,
    );
    w.write_manifest(
        "good.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: good}}\nspec:\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ),
    );
    w.start_agent().await;
    w.wait_pod("good", "Running", running_and_ready).await;
    let pod = w
        .wait_pod("noimage", "waiting on its image", |p| {
            container_status(p, "main")
                .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
        })
        .await;
    assert_eq!(phase(&pod), "Pending");
    let waiting = container_status(&pod, "main")
        .and_then(|c| c.state.clone()?.waiting)
        .expect("waiting");
    assert!(
        waiting
            .message
            .as_deref()
            .is_some_and(|m| m.contains("127.0.0.1:1/does-not-exist:1.0")),
        "{waiting:?}"
    );
    w.wait_pod("noimage", "backing off its pull", |p| {
        container_status(p, "main")
            .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .is_some_and(|r| r == "ImagePullBackOff")
    })
    .await;
    let never = container_status(&pod, "never")
        .and_then(|c| c.state.clone()?.waiting)
        .expect("waiting");
    assert_eq!(never.reason.as_deref(), Some("ErrImageNeverPull"));
    assert_eq!(
        never.message.as_deref(),
        Some(
            r#"Container image "127.0.0.1:1/does-not-exist:1.0" is not present with pull policy of Never"#
        )
    );
    assert_eq!(w.pods().await.len(), 2, "only the valid pods exist");
    let log = std::fs::read_to_string(w.agent_log()).expect("agent log");
    assert!(
        log.contains("broken.yaml"),
        "the broken file is named in the log"
    );
    assert!(log.contains("line"), "the parse error carries a position");
    assert!(
        log.contains(r#"metadata.name: Invalid value: "Bad_Name-node-"#),
        "the validation error names the field"
    );
    assert!(log.contains("spec.containers[0].image: Required value"));

    // The broken file fixed: its pod starts, nothing else is disturbed.
    w.write_manifest(
        "broken.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: fixed}}\nspec:\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ),
    );
    w.wait_pod("fixed", "Running", running_and_ready).await;
    assert!(w.pod("good").await.is_some_and(|p| running_and_ready(&p)));
    w.stop_agent();
}

/// `restartPolicy: Always`: a crashing container is restarted, then held back with
/// `CrashLoopBackOff` and upstream's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_container_backs_off() {
    let mut w = World::new().await;
    w.write_manifest(
        "crash.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: crash}}\nspec:\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sh, -c, 'echo crash; exit 1']\n"
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("crash", "in CrashLoopBackOff", |p| {
            container_status(p, "main")
                .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .is_some_and(|r| r == "CrashLoopBackOff")
        })
        .await;
    let cs = container_status(&pod, "main").expect("status");
    assert!(cs.restart_count >= 1, "restarted once before backing off");
    let msg = cs
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(
        msg.starts_with("back-off 10s restarting failed container=main pod=crash-"),
        "{msg}"
    );
    let last = cs
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 1);
    assert_eq!(
        phase(&pod),
        "Running",
        "restartPolicy Always keeps the pod Running"
    );
    // Each instance writes its own log file, named by restart count.
    let dir = pod_dir_name(&w, &pod).join("main");
    assert!(dir.join("0.log").exists() && dir.join("1.log").exists());
    w.stop_agent();
}

/// A host-network pod uses the node's network namespace: no CNI, podIP = hostIP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod() {
    let mut w = World::new().await;
    w.write_manifest(
        "hostnet.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: hostnet}}\nspec:\n  hostNetwork: true\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sh, -c, 'cat /proc/net/dev; sleep 3600']\n"
        ),
    );
    w.start_agent().await;
    let pod = w.wait_pod("hostnet", "Running", running_and_ready).await;
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
        Some("127.0.0.1")
    );
    assert!(
        w.allocated_ips().is_empty(),
        "no CNI allocation for host network"
    );
    let log = pod_dir_name(&w, &pod).join("main/0.log");
    let host_ifaces = std::fs::read_to_string("/proc/net/dev").expect("host /proc/net/dev");
    let first_host_iface = host_ifaces
        .lines()
        .nth(2)
        .and_then(|l| l.split(':').next())
        .map(str::trim)
        .unwrap_or("lo")
        .to_owned();
    wait_for(
        "the host's interfaces seen inside the container",
        Duration::from_secs(20),
        || {
            let lines = log_lines(&log);
            let want = first_host_iface.clone();
            async move {
                lines
                    .iter()
                    .any(|(_, t)| t.trim_start().starts_with(&format!("{want}:")))
                    .then_some(())
            }
        },
    )
    .await;
    w.stop_agent();
}

/// The healthz port answers, and SIGTERM stops the agent cleanly while pods keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_clean_shutdown() {
    let mut w = World::new().await;
    w.write_manifest(
        "p.yaml",
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"),
    );
    w.start_agent().await;
    let body = reqwest::get(format!("http://127.0.0.1:{}/healthz", w.healthz))
        .await
        .expect("healthz")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "ok");
    let pod = w.wait_pod("p", "Running", running_and_ready).await;
    let status = w.stop_agent().expect("agent exited");
    assert!(status.success(), "agent exit status {status}");
    use nodelet_cri::runtime::{ContainerState, Runtime as _};
    let uid = pod.metadata.uid.clone().expect("uid");
    let cs = w
        .runtime()
        .await
        .list_containers(Some(&uid))
        .await
        .expect("list");
    assert!(
        cs.iter().all(|c| c.state == ContainerState::Running),
        "pods outlive the agent"
    );
}
