//! The correlator against client-go's behaviour (`events_cache_test.go`'s cases,
//! with the clock passed in).

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use super::*;

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn event(object: &str, type_: &str, reason: &str, message: &str, now: SystemTime) -> Event {
    let t = timestamp(now);
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{object}.{:x}",
                now.duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default()
            )),
            namespace: Some("default".to_owned()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            namespace: Some("default".to_owned()),
            name: Some(object.to_owned()),
            uid: Some(format!("uid-{object}")),
            field_path: Some("spec.containers{app}".to_owned()),
            ..ObjectReference::default()
        },
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        type_: Some(type_.to_owned()),
        source: Some(EventSource {
            component: Some("kubelet".to_owned()),
            host: Some("node-1".to_owned()),
        }),
        first_timestamp: t.clone(),
        last_timestamp: t,
        count: Some(1),
        reporting_component: Some("kubelet".to_owned()),
        reporting_instance: Some("node-1".to_owned()),
        ..Event::default()
    }
}

fn sent(c: Correlated) -> (Event, Option<serde_json::Value>) {
    match c {
        Correlated::Send { event, patch } => (*event, patch),
        Correlated::Skip => panic!("skipped"),
    }
}

/// What the apiserver would return for a create or patch: the event with a
/// resourceVersion.
fn stored(mut e: Event, rv: u32) -> Event {
    e.metadata.resource_version = Some(rv.to_string());
    e
}

#[test]
fn an_occurrence_seen_before_is_a_patch_of_count_last_timestamp_and_message() {
    let mut c = Correlator::default();
    let msg = "Back-off restarting failed container app in pod p_default(uid-p)";
    let (first, patch) = sent(c.correlate(event("p", "Warning", "BackOff", msg, at(0)), at(0)));
    assert_eq!(first.count, Some(1));
    assert!(patch.is_none());
    let first_name = first.metadata.name.clone();
    c.update_state(&stored(first, 7));

    let (second, patch) = sent(c.correlate(event("p", "Warning", "BackOff", msg, at(10)), at(10)));
    assert_eq!(second.count, Some(2));
    assert_eq!(second.metadata.name, first_name, "the first one's name");
    assert_eq!(second.metadata.resource_version.as_deref(), Some("7"));
    assert_eq!(second.first_timestamp, timestamp(at(0)));
    assert_eq!(second.last_timestamp, timestamp(at(10)));
    let last = serde_json::to_value(timestamp(at(10))).expect("time");
    assert_eq!(
        patch,
        Some(json!({"count": 2, "lastTimestamp": last, "message": msg}))
    );

    // Without a server answer in between the count still goes on from the cache.
    let (third, _) = sent(c.correlate(event("p", "Warning", "BackOff", msg, at(20)), at(20)));
    assert_eq!(third.count, Some(3));
}

#[test]
fn a_different_field_path_type_reason_or_message_is_a_new_event() {
    let mut c = Correlator::default();
    let base = event("p", "Normal", "Pulled", "m", at(0));
    sent(c.correlate(base.clone(), at(0)));
    let mut other_container = base.clone();
    other_container.involved_object.field_path = Some("spec.initContainers{init}".to_owned());
    let mut warning = base.clone();
    warning.type_ = Some("Warning".to_owned());
    let mut reason = base.clone();
    reason.reason = Some("Pulling".to_owned());
    let mut message = base.clone();
    message.message = Some("m2".to_owned());
    for e in [other_container, warning, reason, message] {
        let (e, patch) = sent(c.correlate(e, at(1)));
        assert_eq!(e.count, Some(1));
        assert!(patch.is_none());
    }
}

#[test]
fn ten_distinct_messages_within_ten_minutes_are_combined() {
    let mut c = Correlator::default();
    for i in 0..9 {
        let (e, _) = sent(c.correlate(
            event(
                "p",
                "Warning",
                "Unhealthy",
                &format!("Liveness probe failed: {i}"),
                at(i),
            ),
            at(i),
        ));
        assert_eq!(e.message, Some(format!("Liveness probe failed: {i}")));
        assert_eq!(e.count, Some(1));
    }
    // The tenth distinct message: an aggregate event, named at `now`.
    let (agg, patch) = sent(c.correlate(
        event(
            "p",
            "Warning",
            "Unhealthy",
            "Liveness probe failed: 9",
            at(9),
        ),
        at(30),
    ));
    assert_eq!(
        agg.message.as_deref(),
        Some("(combined from similar events): Liveness probe failed: 9")
    );
    assert_eq!(agg.count, Some(1));
    assert!(patch.is_none());
    assert_eq!(agg.first_timestamp, timestamp(at(30)));
    assert_eq!(agg.reason.as_deref(), Some("Unhealthy"));
    assert_eq!(agg.type_.as_deref(), Some("Warning"));
    assert_eq!(agg.involved_object.name.as_deref(), Some("p"));
    assert_eq!(agg.metadata.namespace.as_deref(), Some("default"));
    // Upstream's aggregate carries no reporting fields.
    assert!(agg.reporting_component.is_none());
    let agg_name = agg.metadata.name.clone();
    c.update_state(&stored(agg, 3));

    // The next new message updates the aggregate: same name, count 2, its message.
    let (next, patch) = sent(c.correlate(
        event(
            "p",
            "Warning",
            "Unhealthy",
            "Liveness probe failed: 10",
            at(40),
        ),
        at(40),
    ));
    assert_eq!(next.metadata.name, agg_name);
    assert_eq!(next.count, Some(2));
    let patch = patch.expect("a patch");
    assert_eq!(patch["count"], json!(2));
    assert_eq!(
        patch["message"],
        json!("(combined from similar events): Liveness probe failed: 10")
    );
}

#[test]
fn similar_messages_further_apart_than_ten_minutes_are_not_combined() {
    let mut c = Correlator::default();
    for i in 0..12u64 {
        let now = at(i * 601);
        let (e, _) = sent(c.correlate(
            event("p", "Warning", "Unhealthy", &format!("failed: {i}"), now),
            now,
        ));
        assert_eq!(e.message, Some(format!("failed: {i}")), "occurrence {i}");
    }
}

#[test]
fn the_spam_filter_lets_25_through_then_one_every_five_minutes() {
    let mut c = Correlator::default();
    let msg = "Back-off restarting failed container";
    for i in 0..25 {
        assert!(
            matches!(
                c.correlate(event("p", "Warning", "BackOff", msg, at(i)), at(i)),
                Correlated::Send { .. }
            ),
            "occurrence {i}"
        );
    }
    assert_eq!(
        c.correlate(event("p", "Warning", "BackOff", msg, at(25)), at(25)),
        Correlated::Skip
    );
    // Another object, or the same object's Normal events, have their own bucket.
    assert!(matches!(
        c.correlate(event("q", "Warning", "BackOff", msg, at(25)), at(25)),
        Correlated::Send { .. }
    ));
    assert!(matches!(
        c.correlate(event("p", "Normal", "Pulled", msg, at(25)), at(25)),
        Correlated::Send { .. }
    ));
    // Another container of the same pod shares the pod's bucket.
    let mut other = event("p", "Warning", "BackOff", msg, at(26));
    other.involved_object.field_path = Some("spec.containers{other}".to_owned());
    assert_eq!(c.correlate(other, at(26)), Correlated::Skip);
    // The bucket refills 1/300 a second from the start: one whole token at 300 s.
    assert_eq!(
        c.correlate(event("p", "Warning", "BackOff", msg, at(299)), at(299)),
        Correlated::Skip
    );
    let (e, _) = sent(c.correlate(event("p", "Warning", "BackOff", msg, at(301)), at(301)));
    // Refused occurrences were still counted, as upstream.
    assert_eq!(e.count, Some(28));
    assert_eq!(
        c.correlate(event("p", "Warning", "BackOff", msg, at(302)), at(302)),
        Correlated::Skip
    );
}

#[test]
fn a_clock_going_back_refills_nothing() {
    let mut c = Correlator::default();
    for i in 0..25 {
        sent(c.correlate(event("p", "Normal", "R", "m", at(1000)), at(1000 + i)));
    }
    assert_eq!(
        c.correlate(event("p", "Normal", "R", "m", at(0)), at(0)),
        Correlated::Skip
    );
}

#[test]
fn the_caches_forget_the_least_recently_used_key() {
    let mut c = Correlator::new(2);
    sent(c.correlate(event("a", "Normal", "R", "m", at(0)), at(0)));
    sent(c.correlate(event("b", "Normal", "R", "m", at(1)), at(1)));
    // a used again: b is now the oldest.
    let (a, _) = sent(c.correlate(event("a", "Normal", "R", "m", at(2)), at(2)));
    assert_eq!(a.count, Some(2));
    sent(c.correlate(event("c", "Normal", "R", "m", at(3)), at(3)));
    let (b, patch) = sent(c.correlate(event("b", "Normal", "R", "m", at(4)), at(4)));
    assert_eq!(b.count, Some(1), "b was forgotten");
    assert!(patch.is_none());
    assert!(c.logs.len() <= 2 && c.spam.len() <= 2 && c.aggregates.len() <= 2);
}

#[test]
fn the_lru_keeps_its_capacity_and_order() {
    let mut l = Lru::new(3);
    for k in ["a", "b", "c"] {
        l.add(k.to_owned(), k.len());
    }
    assert!(l.get("a").is_some());
    l.add("d".to_owned(), 1);
    assert!(l.get("b").is_none(), "b was the least recently used");
    assert!(l.get("a").is_some() && l.get("c").is_some() && l.get("d").is_some());
    l.add("a".to_owned(), 9);
    assert_eq!(l.get("a").copied(), Some(9));
    assert_eq!(l.len(), 3);
}

#[test]
fn keys_are_upstreams_fields_joined() {
    let e = event("p", "Warning", "BackOff", "msg", at(0));
    assert_eq!(
        event_key(&e),
        "kubeletnode-1Poddefaultpspec.containers{app}uid-pv1WarningBackOffmsg"
    );
    assert_eq!(spam_key(&e), "kubeletnode-1Poddefaultpuid-pv1Warning");
    assert_eq!(
        aggregate_keys(&e),
        (
            "kubeletnode-1Poddefaultpuid-pv1WarningBackOffkubeletnode-1".to_owned(),
            "msg".to_owned()
        )
    );
}

#[test]
fn the_merge_patch_has_what_changed_and_nulls_what_went() {
    let old = json!({"a": 1, "b": {"x": 1, "y": 2}, "gone": true, "same": "s"});
    let new = json!({"a": 2, "b": {"x": 1, "y": 3}, "added": [1], "same": "s"});
    assert_eq!(
        two_way_merge_patch(&old, &new),
        json!({"a": 2, "b": {"y": 3}, "added": [1], "gone": null})
    );
}
