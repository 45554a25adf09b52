//! End-to-end test of node-pressure eviction (issue 5) on this host's real cgroup v1:
//! the thresholds are set relative to what the test's own `kubepods` cgroup may use
//! (`--system-reserved` leaves 512 MiB of allocatable memory, and
//! `allocatableMemory.available<400Mi` then trips once the pods use about 110 MiB), so
//! the test doesn't depend on what else the machine runs. Also checks `/node` and
//! `/stats/summary` along the way.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use support::cluster::condition_status;
use support::{BUSYBOX, World, phase, wait_for};

fn mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal");
    kib * 1024
}

async fn get_json<T: serde::de::DeserializeOwned>(w: &World, path: &str) -> Option<T> {
    let url = format!("http://127.0.0.1:{}{path}", w.port);
    reqwest::get(&url).await.ok()?.json::<T>().await.ok()
}

fn running(pod: &Pod) -> bool {
    phase(pod) == "Running"
}

/// A BestEffort pod that takes 200 MB is evicted (Failed, Evicted, upstream's
/// message, a DisruptionTarget condition, an Evicted event) while a Guaranteed pod
/// under its request keeps running; the node shows MemoryPressure and its taint, and
/// clears them after the (shortened) transition period; meanwhile a new BestEffort pod
/// is refused at admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_evicts_the_best_effort_pod_first() {
    support::require_cgroup_v1();
    let mut w = World::new().await;
    let reserved = mem_total() - (512 << 20);
    w.extra_args = vec![
        format!("--system-reserved=memory={reserved}"),
        "--eviction-hard=memory.available<400Mi".into(),
        "--eviction-pressure-transition-period=20s".into(),
        "--evict-static-pods=true".into(),
    ];
    w.write_manifest(
        "g.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: steady}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sleep, "3600"]
    resources:
      requests: {{cpu: 100m, memory: 64Mi}}
      limits: {{cpu: 100m, memory: 64Mi}}
"#
        ),
    );
    w.start_agent().await;
    let steady = w.wait_pod("steady", "running", running).await;

    // Before any pressure: the node reports allocatable and no pressure, the summary
    // knows the pod.
    let node: Node = wait_for("the node object", Duration::from_secs(30), || async {
        get_json::<Node>(&w, "/node").await
    })
    .await;
    assert_eq!(
        condition_status(&node, "MemoryPressure").as_deref(),
        Some("False")
    );
    assert_eq!(condition_status(&node, "Ready").as_deref(), Some("True"));
    let allocatable = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("memory"))
        .map(|q| q.0.clone());
    // 512Mi left by the reservation, minus the 400Mi hard threshold.
    assert_eq!(allocatable.as_deref(), Some("112Mi"));
    // The images list: busybox and the pause image, each with its repo digest first.
    let images: Vec<Vec<String>> = node
        .status
        .as_ref()
        .and_then(|s| s.images.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.names.unwrap_or_default())
        .collect();
    for name in [BUSYBOX, "nodelet.local/pause:3.10"] {
        assert!(
            images.iter().any(|names| {
                names.iter().any(|n| n == name)
                    && names.first().is_some_and(|n| n.contains("@sha256:"))
            }),
            "{name} not in the node's images: {images:?}"
        );
    }
    let summary: serde_json::Value = get_json(&w, "/stats/summary").await.expect("summary");
    let steady_uid = steady.metadata.uid.clone().expect("uid");
    let pod_stats = summary["pods"]
        .as_array()
        .and_then(|pods| {
            pods.iter()
                .find(|p| p["podRef"]["uid"] == steady_uid.as_str())
        })
        .cloned()
        .expect("the pod in the summary");
    assert!(
        pod_stats["memory"]["workingSetBytes"]
            .as_u64()
            .is_some_and(|b| b > 0)
    );
    assert_eq!(pod_stats["containers"][0]["name"], "app");
    assert!(
        summary["node"]["memory"]["availableBytes"]
            .as_u64()
            .is_some()
    );

    // The hog: busybox awk's sprintf fills a 200 MB string, then it waits.
    w.write_manifest(
        "hog.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  containers:
  - name: hog
    image: {BUSYBOX}
    command: [awk, 'BEGIN {{ s = sprintf("%200000000s", ""); system("sleep 3600") }}']
"#
        ),
    );
    let pressure_seen = std::sync::atomic::AtomicBool::new(false);
    let hog = wait_for("the hog to be evicted", Duration::from_secs(90), || {
        let (w, seen) = (&w, &pressure_seen);
        async move {
            if let Some(node) = get_json::<Node>(w, "/node").await
                && condition_status(&node, "MemoryPressure").as_deref() == Some("True")
            {
                seen.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            w.pod("hog").await.filter(|p| phase(p) == "Failed")
        }
    })
    .await;
    let mut saw_pressure = pressure_seen.load(std::sync::atomic::Ordering::Relaxed);
    // While the node is under memory pressure (it stays so for the transition period
    // after the eviction), a new BestEffort pod is refused at admission.
    w.write_manifest(
        "late.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: late}}
spec:
  containers:
  - name: app
    image: {BUSYBOX}
    command: [sleep, "3600"]
"#
        ),
    );
    let late = w
        .wait_pod("late", "rejected", |p| phase(p) == "Failed")
        .await;
    let late_status = late.status.clone().expect("status");
    assert_eq!(late_status.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        late_status.message.as_deref(),
        Some("Pod was rejected: The node had condition: [MemoryPressure]. ")
    );
    assert!(
        late_status
            .container_statuses
            .iter()
            .flatten()
            .all(|c| c.state.as_ref().is_none_or(|s| s.running.is_none())),
        "{late_status:?}"
    );

    let status = hog.status.clone().expect("status");
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.starts_with(
            "The node was low on resource: memory. Threshold quantity: 400Mi, available: "
        ),
        "{message}"
    );
    assert!(message.contains("Container hog was using"), "{message}");
    assert!(
        status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "DisruptionTarget" && c.status == "True"),
        "{status:?}"
    );
    // The Guaranteed pod under its request is untouched.
    let steady = w.pod("steady").await.expect("steady");
    assert!(running(&steady), "{:?}", steady.status);
    let events: k8s_openapi::List<Event> = get_json(&w, "/events").await.expect("events");
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Evicted")
                && e.involved_object.name.as_deref() == hog.metadata.name.as_deref()),
        "no Evicted event"
    );
    // And upstream's node event as the eviction manager started reclaiming.
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("EvictionThresholdMet")
                && e.message.as_deref() == Some("Attempting to reclaim memory")
                && e.involved_object.kind.as_deref() == Some("Node")),
        "no EvictionThresholdMet event"
    );

    // Pressure was seen (with its taint), and clears once the transition period passes.
    if !saw_pressure {
        let node: Node = get_json(&w, "/node").await.expect("node");
        saw_pressure = condition_status(&node, "MemoryPressure").as_deref() == Some("True");
        let tainted = node.spec.and_then(|s| s.taints).is_some_and(|t| {
            t.iter()
                .any(|t| t.key == "node.kubernetes.io/memory-pressure")
        });
        assert!(!saw_pressure || tainted, "MemoryPressure without its taint");
    }
    assert!(saw_pressure, "MemoryPressure was never reported");
    wait_for(
        "MemoryPressure to clear",
        Duration::from_secs(60),
        || async {
            let node = get_json::<Node>(&w, "/node").await?;
            (condition_status(&node, "MemoryPressure").as_deref() == Some("False")).then_some(())
        },
    )
    .await;

    // Figure: threshold crossing to the eviction decision, from the agent's log.
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    let evicting = log.lines().position(|l| l.contains("evicting pod"));
    if let Some(i) = evicting {
        let notified = log
            .lines()
            .take(i)
            .filter(|l| l.contains("memory threshold notification"))
            .last();
        eprintln!(
            "FIGURE eviction: notification: {}\nFIGURE eviction: decision: {}",
            notified.unwrap_or("(none: found by the poll)"),
            log.lines().nth(i).unwrap_or_default()
        );
    }
}
