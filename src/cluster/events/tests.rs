//! The sender on a scripted sink in tokio's paused time: creates and patches,
//! client-go's fallbacks and give-ups, the retry pace, and a full queue that never
//! blocks the recorder.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::Status;
use kube::core::response::StatusDetails;

use super::*;

/// One request the fake sink received.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Create {
        name: String,
        count: i32,
        resource_version: Option<String>,
    },
    Patch {
        name: String,
        patch: Value,
    },
}

/// A sink answering from a script (then success), recording every request.
#[derive(Default)]
struct FakeSink {
    calls: Mutex<Vec<Call>>,
    answers: Mutex<VecDeque<Option<ClusterError>>>,
    at: Mutex<Vec<tokio::time::Instant>>,
}

impl FakeSink {
    fn answer(&self, event: &Event) -> Result<Event, ClusterError> {
        self.at
            .lock()
            .expect("lock")
            .push(tokio::time::Instant::now());
        if let Some(Some(e)) = self.answers.lock().expect("lock").pop_front() {
            return Err(e);
        }
        let mut stored = event.clone();
        stored.metadata.resource_version = Some(format!("{}", self.calls().len()));
        Ok(stored)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("lock").clone()
    }

    fn script(&self, answers: Vec<Option<ClusterError>>) {
        *self.answers.lock().expect("lock") = answers.into();
    }
}

impl EventSink for Arc<FakeSink> {
    async fn create(&self, event: &Event) -> Result<Event, ClusterError> {
        self.calls.lock().expect("lock").push(Call::Create {
            name: event.metadata.name.clone().unwrap_or_default(),
            count: event.count.unwrap_or(0),
            resource_version: event.metadata.resource_version.clone(),
        });
        self.answer(event)
    }

    async fn patch(&self, event: &Event, patch: &Value) -> Result<Event, ClusterError> {
        self.calls.lock().expect("lock").push(Call::Patch {
            name: event.metadata.name.clone().unwrap_or_default(),
            patch: patch.clone(),
        });
        let mut merged = event.clone();
        merged.count = patch["count"].as_i64().and_then(|c| i32::try_from(c).ok());
        self.answer(&merged)
    }
}

fn refused(code: u16, reason: &str, cause: Option<&str>) -> ClusterError {
    ClusterError::Api {
        verb: "create",
        object: "Event/default/x".to_owned(),
        source: kube::Error::Api(Box::new(Status {
            code,
            reason: reason.to_owned(),
            message: format!("{code} {reason}"),
            details: cause.map(|c| {
                serde_json::from_value::<StatusDetails>(serde_json::json!({
                    "causes": [{"reason": c, "message": "namespace is being terminated"}]
                }))
                .expect("details")
            }),
            ..Status::default()
        })),
    }
}

fn unreachable() -> ClusterError {
    ClusterError::Timeout {
        verb: "create",
        object: "Event/default/x".to_owned(),
    }
}

fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some("default".to_owned()),
            name: Some("web".to_owned()),
            uid: Some("uid-web".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// A recorder wired to a sender on a fake sink; the sender runs until the test
/// ends.
fn wired() -> (EventRecorder, Arc<FakeSink>, CancellationToken) {
    let recorder = EventRecorder::new("node-1", 100);
    let sink = Arc::new(FakeSink::default());
    let (tx, rx) = mpsc::channel(MAX_QUEUED_EVENTS);
    assert!(recorder.send_to(tx));
    let cancel = CancellationToken::new();
    tokio::spawn(Sender::new(Arc::clone(&sink)).run(rx, cancel.clone()));
    (recorder, sink, cancel)
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_event_again_is_a_patch_of_the_first() {
    let (recorder, sink, _cancel) = wired();
    let events = recorder.for_container(&pod(), "app");
    events.warning(
        "BackOff",
        "Back-off restarting failed container app in pod web",
    );
    settle().await;
    events.warning(
        "BackOff",
        "Back-off restarting failed container app in pod web",
    );
    settle().await;
    let calls = sink.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let Call::Create { name, count: 1, .. } = &calls[0] else {
        panic!("first a create: {calls:?}");
    };
    assert!(name.starts_with("web."), "{name}");
    let Call::Patch {
        name: patched,
        patch,
    } = &calls[1]
    else {
        panic!("then a patch: {calls:?}");
    };
    assert_eq!(patched, name);
    assert_eq!(patch["count"], serde_json::json!(2));
    assert!(patch.get("lastTimestamp").is_some());
    // The in-memory ring still counts them as before.
    assert_eq!(recorder.list(None).items[0].count, Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_patch_of_an_event_gone_creates_it_and_a_409_then_is_final() {
    let (recorder, sink, _cancel) = wired();
    let events = recorder.for_pod(&pod());
    events.normal("R", "m");
    settle().await;
    // The Event expired: the patch finds nothing, a create follows (without a
    // resourceVersion).
    sink.script(vec![Some(refused(404, "NotFound", None))]);
    events.normal("R", "m");
    settle().await;
    let calls = sink.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(matches!(&calls[1], Call::Patch { .. }));
    assert!(matches!(
        &calls[2],
        Call::Create {
            count: 2,
            resource_version: None,
            ..
        }
    ));
    // Gone again, and the create meets one of the same name: given up, no retry.
    sink.script(vec![
        Some(refused(404, "NotFound", None)),
        Some(refused(409, "AlreadyExists", None)),
    ]);
    events.normal("R", "m");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(sink.calls().len(), 5, "{:?}", sink.calls());
}

#[tokio::test(start_paused = true)]
async fn refusals_are_not_retried() {
    let (recorder, sink, _cancel) = wired();
    sink.script(vec![
        Some(refused(403, "Forbidden", Some("NamespaceTerminating"))),
        Some(refused(403, "Forbidden", None)),
        Some(refused(500, "InternalError", None)),
        Some(refused(422, "Invalid", None)),
    ]);
    for i in 0..4 {
        recorder.for_pod(&pod()).normal("R", &format!("m{i}"));
    }
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(sink.calls().len(), 4, "{:?}", sink.calls());
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_apiserver_is_tried_12_times_10_s_apart() {
    let (recorder, sink, _cancel) = wired();
    sink.script((0..12).map(|_| Some(unreachable())).collect());
    let start = tokio::time::Instant::now();
    recorder.for_pod(&pod()).normal("R", "first");
    recorder.for_pod(&pod()).normal("R", "second");
    tokio::time::sleep(Duration::from_secs(200)).await;
    let calls = sink.calls();
    // Twelve tries of the first, then the second (in order, after it).
    assert_eq!(calls.len(), 13, "{calls:?}");
    let at = sink.at.lock().expect("lock").clone();
    let first_wait = at[1] - at[0];
    assert!(first_wait <= SLEEP_DURATION, "randomised: {first_wait:?}");
    for pair in at[1..12].windows(2) {
        assert_eq!(pair[1] - pair[0], SLEEP_DURATION);
    }
    assert!(at[12] - start >= Duration::from_secs(100));
}

#[tokio::test(start_paused = true)]
async fn a_write_that_succeeds_on_a_later_try_is_sent_once() {
    let (recorder, sink, _cancel) = wired();
    sink.script(vec![Some(unreachable()), Some(unreachable())]);
    recorder
        .for_pod(&pod())
        .warning("Failed", "Error: ErrImagePull");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(sink.calls().len(), 3);
    // The state of the written one is kept: the next is a patch.
    recorder
        .for_pod(&pod())
        .warning("Failed", "Error: ErrImagePull");
    settle().await;
    assert!(matches!(sink.calls().last(), Some(Call::Patch { .. })));
}

#[tokio::test(start_paused = true)]
async fn the_spam_filter_stops_a_flood_about_one_object() {
    let (recorder, sink, _cancel) = wired();
    for i in 0..40 {
        recorder
            .for_container(&pod(), "app")
            .warning("Unhealthy", &format!("Liveness probe failed: {i}"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 25 go through (9 distinct, then an aggregate and its patches).
    let calls = sink.calls();
    assert_eq!(calls.len(), 25, "{calls:?}");
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::Create { .. }))
            .count(),
        10
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_without_blocking_the_recorder() {
    let recorder = EventRecorder::new("node-1", 1000);
    let (tx, rx) = mpsc::channel(4);
    assert!(recorder.send_to(tx));
    let (other, _rx2) = mpsc::channel(4);
    assert!(!recorder.send_to(other), "one queue");
    // Nothing drains the queue, on the only thread: a recorder that waited for room
    // would never return.
    for i in 0..100 {
        recorder.for_pod(&pod()).normal("R", &format!("m{i}"));
    }
    assert_eq!(rx.len(), 4, "the first four queued, the rest dropped");
    // The ring keeps them all.
    assert_eq!(recorder.list(None).items.len(), 100);
}

#[test]
fn failures_sort_as_client_go() {
    assert_eq!(failure(&unreachable()), Failure::Retry);
    assert_eq!(
        failure(&refused(409, "AlreadyExists", None)),
        Failure::GiveUp { quiet: true }
    );
    assert_eq!(
        failure(&refused(403, "Forbidden", Some("NamespaceTerminating"))),
        Failure::GiveUp { quiet: true }
    );
    assert_eq!(
        failure(&refused(409, "Conflict", None)),
        Failure::GiveUp { quiet: false }
    );
    assert_eq!(
        failure(&refused(503, "ServiceUnavailable", None)),
        Failure::GiveUp { quiet: false }
    );
    let transport = ClusterError::Api {
        verb: "create",
        object: "Event/default/x".to_owned(),
        source: kube::Error::Service("connection refused".into()),
    };
    assert_eq!(failure(&transport), Failure::Retry);
}
