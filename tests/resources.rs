//! End-to-end tests of resources (issue 5) on this host's real cgroup v1: the QoS
//! hierarchy and the values the kernel gets for a pod's requests and limits, OOM kills,
//! the pod pids limit — the `nodelet` binary against real containerd and runc. Every
//! cgroup lives under the test's own `--cgroup-root` and goes with it.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use support::{BUSYBOX, World, container_status, phase, wait_for};

/// The directory of `cgroup` in the v1 hierarchy of `controller`.
fn v1(controller: &str, cgroup: &str) -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
        .join(controller)
        .join(cgroup.trim_start_matches('/'))
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().expect("uid")
}

/// The containerd ID of container `name` (from `containerd://<id>`).
fn container_id(pod: &Pod, name: &str) -> String {
    container_status(pod, name)
        .and_then(|s| s.container_id.clone())
        .and_then(|id| id.strip_prefix("containerd://").map(str::to_owned))
        .expect("container id")
}

fn running(pod: &Pod, name: &str) -> bool {
    container_status(pod, name)
        .and_then(|s| s.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

/// A Guaranteed pod with `cpu: 500m, memory: 64Mi` gets a 50 ms quota per 100 ms
/// period and a 64 MiB limit in its pod cgroup and its container's cgroup, under
/// `kubepods` (no QoS level for Guaranteed); shares follow the request; the QoS
/// cgroups exist; the pause container gets the minimum shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guaranteed_pod_gets_its_limits_from_the_kernel() {
    support::require_cgroup_v1();
    let mut w = World::new().await;
    w.write_manifest(
        "g.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: g}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sleep, "3600"]
    resources:
      requests: {{cpu: 500m, memory: 64Mi}}
      limits: {{cpu: 500m, memory: 64Mi}}
"#
        ),
    );
    w.write_manifest(
        "b.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: b}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sleep, "3600"]
    resources:
      requests: {{cpu: 250m, memory: 32Mi}}
"#
        ),
    );
    w.start_agent().await;
    let g = w.wait_pod("g", "running", |p| running(p, "app")).await;
    let b = w.wait_pod("b", "running", |p| running(p, "app")).await;
    assert_eq!(
        g.status.as_ref().and_then(|s| s.qos_class.as_deref()),
        Some("Guaranteed")
    );
    let pod_cg = format!("{}/kubepods/pod{}", w.cgroup_root, uid(&g));
    let app_cg = format!("{pod_cg}/{}", container_id(&g, "app"));
    for cg in [&pod_cg, &app_cg] {
        assert_eq!(
            read(v1("cpu", cg).join("cpu.cfs_quota_us")),
            "50000",
            "{cg}"
        );
        assert_eq!(
            read(v1("cpu", cg).join("cpu.cfs_period_us")),
            "100000",
            "{cg}"
        );
        assert_eq!(read(v1("cpu", cg).join("cpu.shares")), "512", "{cg}");
        assert_eq!(
            read(v1("memory", cg).join("memory.limit_in_bytes")),
            "67108864",
            "{cg}"
        );
    }
    // The QoS levels and the Burstable pod under its own.
    let burstable = format!("{}/kubepods/burstable", w.cgroup_root);
    let besteffort = format!("{}/kubepods/besteffort", w.cgroup_root);
    assert_eq!(read(v1("cpu", &besteffort).join("cpu.shares")), "2");
    // Upstream: the burstable level's shares are its pods' CPU requests.
    assert_eq!(read(v1("cpu", &burstable).join("cpu.shares")), "256");
    let b_cg = format!("{burstable}/pod{}", uid(&b));
    assert_eq!(read(v1("cpu", &b_cg).join("cpu.shares")), "256");
    assert_eq!(read(v1("cpu", &b_cg).join("cpu.cfs_quota_us")), "-1");
    // No memory limit for a Burstable pod without limits: the kernel's "unlimited".
    let unlimited: u64 = read(v1("memory", &b_cg).join("memory.limit_in_bytes"))
        .parse()
        .expect("number");
    assert!(unlimited > 1 << 60, "{unlimited}");
    // The pause container: cpu.shares 2, in the pod cgroup.
    let pause = std::fs::read_dir(v1("cpu", &pod_cg))
        .expect("pod cgroup")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .find(|p| !p.ends_with(container_id(&g, "app")))
        .expect("pause cgroup");
    assert_eq!(read(pause.join("cpu.shares")), "2");

    // The pod cgroups go with their pods.
    std::fs::remove_file(w.manifests.join("g.yaml")).expect("remove manifest");
    wait_for("the pod cgroup removed", Duration::from_secs(60), || {
        let gone = !v1("cpu", &pod_cg).exists() && !v1("memory", &pod_cg).exists();
        async move { gone.then_some(()) }
    })
    .await;
}

/// A container that allocates past its memory limit ends `OOMKilled` with exit code
/// 137, and its restart count shows under `Always`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_past_its_memory_limit_is_oom_killed() {
    support::require_cgroup_v1();
    let mut w = World::new().await;
    // busybox awk's sprintf allocates and fills a 100 MB string.
    w.write_manifest(
        "oom.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: oom}}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: {BUSYBOX}
    command: [awk, 'BEGIN {{ s = sprintf("%100000000s", ""); print "allocated" }}']
    resources:
      limits: {{memory: 32Mi}}
"#
        ),
    );
    w.start_agent().await;
    // containerd's OOM event may come after the exit under load; the runtime reads
    // the cgroup's OOM kill count at the exit, so the first terminated state shown
    // already says OOMKilled (not `Error` first).
    let pod = w
        .wait_pod("oom", "terminated", |p| {
            container_status(p, "hog")
                .and_then(|s| s.state.as_ref())
                .is_some_and(|s| s.terminated.is_some())
        })
        .await;
    let term = container_status(&pod, "hog")
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .expect("terminated");
    assert_eq!(term.reason.as_deref(), Some("OOMKilled"), "{term:?}");
    assert_eq!(term.exit_code, 137);
    assert_eq!(phase(&pod), "Failed");
}

/// With `--pod-max-pids`, the pod cgroup's `pids.max` caps its processes: a loop
/// that tries to start 100 processes gets only as many as the limit leaves, and the
/// node is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_pids_limit_stops_a_fork_loop() {
    support::require_cgroup_v1();
    let mut w = World::new().await;
    w.extra_args = vec!["--pod-max-pids=20".into()];
    // A bounded "fork bomb": a subshell starts 100 background sleeps (busybox's shell
    // gives up at the first fork that fails); the container's shell, which only uses
    // builtins and exec afterwards, reports when it is done.
    w.write_manifest(
        "forks.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: forks}}
spec:
  containers:
  - name: forker
    image: {BUSYBOX}
    command: [sh, -c, '( for i in $(seq 1 100); do sleep 600 & done ); echo tried; exec sleep 600']
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("forks", "running", |p| running(p, "forker"))
        .await;
    let pod_cg = format!("{}/kubepods/besteffort/pod{}", w.cgroup_root, uid(&pod));
    assert_eq!(read(v1("pids", &pod_cg).join("pids.max")), "20");
    // Wait until the loop is done (it prints "tried") and look at the count.
    let log = w
        .logs
        .join(format!(
            "default_{}_{}",
            pod.metadata.name.as_deref().unwrap_or(""),
            uid(&pod)
        ))
        .join("forker/0.log");
    wait_for("the fork loop to finish", Duration::from_secs(60), || {
        let done = std::fs::read_to_string(&log).is_ok_and(|l| l.contains("tried"));
        async move { done.then_some(()) }
    })
    .await;
    let current: u64 = read(v1("pids", &pod_cg).join("pids.current"))
        .parse()
        .expect("number");
    assert!(current <= 20, "pids.current {current} above the limit");
    assert!(
        current >= 10,
        "pids.current {current}: the loop should fill the limit"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("can't fork"),
        "no fork failure seen in the log:\n{text}"
    );
}
