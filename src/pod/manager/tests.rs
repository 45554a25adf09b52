//! The pod manager on the fake runtime, in paused tokio time: a UID's life across
//! source snapshots, deletion, tombstones, restarts, panics, and final statuses.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use nodelet_manifests::SourceEvent;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Inputs, PANIC_REASON, PodManager, is_update};
use crate::pod::fake_runtime::Call;
use crate::pod::testing::{Harness, epoch, simple_pod, wait_until};

const LONG: Duration = Duration::from_secs(3600);

struct Running {
    h: Harness,
    sources: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
    _events: mpsc::Sender<crate::pod::router::Routed>,
    _commands: mpsc::Sender<crate::node::pressure::PodCommand>,
}

impl Running {
    fn start() -> Self {
        let h = Harness::new();
        let (sources, sources_rx) = mpsc::channel(16);
        let (events, events_rx) = mpsc::channel(16);
        let (commands, commands_rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let manager = PodManager::new(Arc::clone(&h.env), &["file"]);
        tokio::spawn(manager.run(
            Inputs {
                sources: sources_rx,
                events: events_rx,
                commands: commands_rx,
            },
            cancel.clone(),
        ));
        Self {
            h,
            sources,
            cancel,
            _events: events,
            _commands: commands,
        }
    }

    async fn snapshot(&self, pods: Vec<Pod>) {
        self.sources
            .send(SourceEvent::Snapshot {
                source: "file",
                pods,
            })
            .await
            .expect("manager running");
    }

    fn sandboxes_made(&self) -> usize {
        self.h
            .rt
            .call_list()
            .iter()
            .filter(|c| matches!(c, Call::RunSandbox(_)))
            .count()
    }
}

#[test]
fn only_spec_metadata_and_deletion_changes_are_updates() {
    let a = simple_pod("u", "Always");
    let mut b = a.clone();
    b.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Running".into()),
        ..Default::default()
    });
    b.metadata.resource_version = Some("42".into());
    assert!(!is_update(&a, &b), "status and resourceVersion alone");
    let mut c = a.clone();
    c.metadata.annotations = Some([("k".to_owned(), "v".to_owned())].into());
    assert!(is_update(&a, &c));
    let mut d = a.clone();
    d.metadata.deletion_grace_period_seconds = Some(5);
    assert!(is_update(&a, &d));
    let mut e = a.clone();
    if let Some(spec) = e.spec.as_mut() {
        spec.active_deadline_seconds = Some(5);
    }
    assert!(is_update(&a, &e));
}

#[tokio::test(start_paused = true)]
async fn a_finished_uid_is_never_started_again_while_listed() {
    let m = Running::start();
    let p = simple_pod("u1", "Never");
    m.snapshot(vec![p.clone()]).await;
    wait_until(LONG, "running", || m.h.running("c")).await;
    m.h.rt.exit("c", 0);
    // No event routing here: the worker's resync notices within 10 s.
    wait_until(LONG, "Succeeded", || {
        m.h.phase("u1").as_deref() == Some("Succeeded")
    })
    .await;
    let mut with_status = p.clone();
    with_status.status =
        m.h.store
            .snapshot()
            .get("u1")
            .and_then(|p| p.status.clone());
    m.snapshot(vec![with_status]).await;
    m.snapshot(vec![p.clone()]).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(m.h.creates("c"), 1);
    assert_eq!(m.sandboxes_made(), 1);
    // Gone from the source: removed. Listed again later: a fresh start.
    m.snapshot(vec![]).await;
    wait_until(LONG, "removed", || m.h.rt.containers().is_empty()).await;
    m.snapshot(vec![p]).await;
    wait_until(LONG, "started again", || {
        m.h.creates("c") == 2 && m.h.running("c")
    })
    .await;
    m.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn listed_again_while_terminating_starts_afresh_once_terminated() {
    let m = Running::start();
    let p = simple_pod("u1", "Always");
    m.snapshot(vec![p.clone()]).await;
    wait_until(LONG, "running", || m.h.running("c")).await;
    m.h.rt.stubborn("c");
    m.snapshot(vec![]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    m.snapshot(vec![p]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(m.sandboxes_made(), 1, "not before the termination is over");
    wait_until(LONG, "started again", || {
        m.sandboxes_made() == 2 && m.h.running("c")
    })
    .await;
    m.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_deleted_pod_stops_with_the_sources_grace_and_stays_terminated() {
    let m = Running::start();
    let mut p = simple_pod("u1", "Always");
    m.snapshot(vec![p.clone()]).await;
    wait_until(LONG, "running", || m.h.running("c")).await;
    m.h.rt.stubborn("c");
    p.metadata.deletion_timestamp = crate::pod::status::k8s_time(epoch());
    p.metadata.deletion_grace_period_seconds = Some(5);
    let t0 = tokio::time::Instant::now();
    m.snapshot(vec![p.clone()]).await;
    wait_until(LONG, "removed", || m.h.rt.containers().is_empty()).await;
    assert_eq!(t0.elapsed().as_secs(), 5);
    assert!(m.h.store.snapshot().get("u1").is_none());
    // Still listed (the apiserver has not removed it yet): never started again.
    m.snapshot(vec![p]).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(m.sandboxes_made(), 1);
    m.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_slow_termination_holds_up_no_other_pod() {
    let m = Running::start();
    let mut slow = simple_pod("slow", "Always");
    if let Some(spec) = slow.spec.as_mut() {
        spec.termination_grace_period_seconds = Some(300);
    }
    m.snapshot(vec![slow]).await;
    wait_until(LONG, "running", || m.h.running("c")).await;
    m.h.rt.stubborn("c");
    m.snapshot(vec![]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = tokio::time::Instant::now();
    let mut other = simple_pod("fast", "Always");
    other.spec.as_mut().expect("spec").containers[0].name = "d".into();
    m.snapshot(vec![other]).await;
    wait_until(LONG, "the other pod runs", || m.h.running("d")).await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(m.h.running("c"), "the slow one is still stopping");
    m.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_worker_fails_its_pod_and_nothing_else() {
    let m = Running::start();
    m.h.rt.panic_on_create("boom");
    let mut bad = simple_pod("bad", "Always");
    bad.spec.as_mut().expect("spec").containers[0].name = "boom".into();
    let good = simple_pod("good", "Always");
    m.snapshot(vec![bad.clone(), good.clone()]).await;
    wait_until(LONG, "the bad pod failed", || {
        m.h.phase("bad").as_deref() == Some("Failed")
    })
    .await;
    let snap = m.h.store.snapshot();
    let status = snap
        .get("bad")
        .and_then(|p| p.status.clone())
        .expect("status");
    assert_eq!(status.reason.as_deref(), Some(PANIC_REASON));
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|msg| msg.contains("pod worker panicked")),
        "{status:?}"
    );
    wait_until(LONG, "the good pod runs", || m.h.running("c")).await;
    // The manager still takes snapshots: the bad pod goes, the good one stays.
    m.snapshot(vec![good]).await;
    wait_until(LONG, "bad removed", || {
        m.h.store.snapshot().get("bad").is_none()
    })
    .await;
    assert!(m.h.running("c"));
    m.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_sees_the_final_status() {
    let m = Running::start();
    let consumer = m.h.store.register();
    m.snapshot(vec![simple_pod("u1", "Always")]).await;
    wait_until(LONG, "running", || m.h.running("c")).await;
    m.snapshot(vec![]).await;
    wait_until(LONG, "removed", || m.h.rt.containers().is_empty()).await;
    let snap = m.h.store.snapshot();
    let entry = snap
        .entries()
        .get("u1")
        .expect("kept for the consumer")
        .clone();
    assert!(entry.removed);
    let status = entry.pod.status.clone().expect("status");
    let state = status.container_statuses.expect("statuses")[0]
        .state
        .clone()
        .expect("state");
    assert_eq!(state.terminated.map(|t| t.exit_code), Some(143));
    consumer.seen("u1", entry.version);
    assert!(m.h.store.snapshot().entries().get("u1").is_none());
    m.cancel.cancel();
}
