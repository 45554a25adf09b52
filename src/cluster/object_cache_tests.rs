//! [`ObjectCache`] against a mock apiserver (`tower-test` behind `kube::Client`), so
//! each answer, and the order of the requests, is the test's: the first read starts a
//! list by name and answers nothing until it is done; changes are announced once per
//! resourceVersion; a deletion reads as absent; an immutable object is not watched
//! further; a failed list is retried; a watch nobody reads is stopped.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::client::Body;
use tokio::sync::broadcast;

use super::{IDLE, ObjectCache};
use crate::volume::ObjectKey;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn cache() -> (
    ObjectCache<ConfigMap>,
    Handle,
    broadcast::Receiver<ObjectKey>,
) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let (tx, rx) = broadcast::channel(16);
    (ObjectCache::new(client, "configmap", tx), handle, rx)
}

fn cm(rv: &str, value: &str, immutable: bool) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "ns", "resourceVersion": rv},
        "data": {"v": value}, "immutable": immutable
    })
}

fn key() -> ObjectKey {
    ObjectKey {
        kind: "configmap",
        namespace: "ns".into(),
        name: "cfg".into(),
    }
}

fn value(got: Option<Option<ConfigMap>>) -> Option<Option<String>> {
    got.map(|o| o.map(|c| c.data.unwrap_or_default()["v"].clone()))
}

/// Takes the next request, which must be a GET of configmap `name` by field
/// selector, a list (`watch: false`) or a watch; answers `code` with `body`.
async fn answer(handle: &mut Handle, name: &str, watch: bool, code: u16, body: String) {
    let (req, send) = handle.next_request().await.expect("a request");
    assert_eq!(req.method(), Method::GET);
    assert!(
        req.uri().path().ends_with("/namespaces/ns/configmaps"),
        "{}",
        req.uri()
    );
    let query = req.uri().query().unwrap_or_default().to_owned();
    assert!(
        query.contains(&format!("fieldSelector=metadata.name%3D{name}")),
        "{query}"
    );
    assert_eq!(query.contains("watch=true"), watch, "{query}");
    send.send_response(
        Response::builder()
            .status(StatusCode::from_u16(code).unwrap())
            .body(Body::from(body.into_bytes()))
            .unwrap(),
    );
}

fn list(items: &[serde_json::Value], rv: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMapList",
        "metadata": {"resourceVersion": rv}, "items": items
    })
    .to_string()
}

fn events(events: &[(&str, serde_json::Value)]) -> String {
    events
        .iter()
        .map(|(t, o)| serde_json::json!({"type": t, "object": o}).to_string() + "\n")
        .collect()
}

#[tokio::test(start_paused = true)]
async fn reads_come_from_the_watch_once_listed_and_changes_are_announced_once() {
    let (cache, mut handle, mut changes) = cache();
    // Not listed yet: the caller reads the apiserver itself.
    assert_eq!(value(cache.get("ns", "cfg")), None);
    answer(
        &mut handle,
        "cfg",
        false,
        200,
        list(&[cm("1", "a", false)], "1"),
    )
    .await;
    assert_eq!(changes.recv().await.unwrap(), key());
    assert_eq!(value(cache.get("ns", "cfg")), Some(Some("a".into())));

    // An edit, then the same resourceVersion again: one announcement.
    answer(
        &mut handle,
        "cfg",
        true,
        200,
        events(&[
            ("MODIFIED", cm("2", "b", false)),
            ("MODIFIED", cm("2", "b", false)),
        ]),
    )
    .await;
    assert_eq!(changes.recv().await.unwrap(), key());
    // The watch ended with its body: the next one starts once both were read.
    let (req, send) = handle.next_request().await.expect("the next watch");
    assert!(req.uri().query().unwrap_or_default().contains("watch=true"));
    assert!(changes.try_recv().is_err(), "the repeat was announced");
    assert_eq!(value(cache.get("ns", "cfg")), Some(Some("b".into())));

    // Deleted: read as absent, and announced.
    send.send_response(
        Response::builder()
            .body(Body::from(
                events(&[("DELETED", cm("3", "b", false))]).into_bytes(),
            ))
            .unwrap(),
    );
    assert_eq!(changes.recv().await.unwrap(), key());
    assert_eq!(value(cache.get("ns", "cfg")), Some(None));
}

#[tokio::test(start_paused = true)]
async fn an_object_absent_when_listed_reads_as_absent() {
    let (cache, mut handle, mut changes) = cache();
    assert_eq!(value(cache.get("ns", "cfg")), None);
    answer(&mut handle, "cfg", false, 200, list(&[], "7")).await;
    assert_eq!(changes.recv().await.unwrap(), key());
    assert_eq!(value(cache.get("ns", "cfg")), Some(None));
    // Created later: the watch brings it.
    answer(
        &mut handle,
        "cfg",
        true,
        200,
        events(&[("ADDED", cm("8", "new", false))]),
    )
    .await;
    assert_eq!(changes.recv().await.unwrap(), key());
    assert_eq!(value(cache.get("ns", "cfg")), Some(Some("new".into())));
}

#[tokio::test(start_paused = true)]
async fn an_immutable_object_is_not_watched_once_seen() {
    let (cache, mut handle, mut changes) = cache();
    assert_eq!(value(cache.get("ns", "cfg")), None);
    answer(
        &mut handle,
        "cfg",
        false,
        200,
        list(&[cm("1", "fixed", true)], "1"),
    )
    .await;
    assert_eq!(changes.recv().await.unwrap(), key());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        futures::FutureExt::now_or_never(handle.next_request()).is_none(),
        "an immutable object was watched"
    );
    // Still answered from the cache.
    assert_eq!(value(cache.get("ns", "cfg")), Some(Some("fixed".into())));
}

#[tokio::test(start_paused = true)]
async fn a_failed_list_is_retried_and_reads_wait_for_it() {
    let (cache, mut handle, mut changes) = cache();
    assert_eq!(value(cache.get("ns", "cfg")), None);
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "boom", "reason": "InternalError", "code": 500
    })
    .to_string();
    answer(&mut handle, "cfg", false, 500, status).await;
    assert_eq!(value(cache.get("ns", "cfg")), None, "still not listed");
    answer(
        &mut handle,
        "cfg",
        false,
        200,
        list(&[cm("4", "ok", false)], "4"),
    )
    .await;
    assert_eq!(changes.recv().await.unwrap(), key());
    assert_eq!(value(cache.get("ns", "cfg")), Some(Some("ok".into())));
}

#[tokio::test(start_paused = true)]
async fn a_watch_nobody_reads_is_stopped_and_started_again_on_the_next_read() {
    let (cache, mut handle, mut changes) = cache();
    assert_eq!(value(cache.get("ns", "cfg")), None);
    answer(
        &mut handle,
        "cfg",
        false,
        200,
        list(&[cm("1", "a", false)], "1"),
    )
    .await;
    assert_eq!(changes.recv().await.unwrap(), key());
    // Its watch waits for events; nobody reads the object for IDLE.
    let (_watch, _pending) = handle.next_request().await.expect("the watch");
    tokio::time::advance(IDLE + Duration::from_secs(1)).await;
    // Reading another object drops the idle entry (and aborts its watch)...
    assert_eq!(value(cache.get("ns", "other")), None);
    answer(&mut handle, "other", false, 200, list(&[], "2")).await;
    // ...so reading the first again starts over with a list.
    assert_eq!(value(cache.get("ns", "cfg")), None);
    let mut listed = false;
    for _ in 0..2 {
        // The other object's watch and the new list may come in either order.
        let (req, send) = handle.next_request().await.expect("a request");
        let query = req.uri().query().unwrap_or_default().to_owned();
        if query.contains("metadata.name%3Dcfg") {
            assert!(!query.contains("watch=true"), "{query}");
            send.send_response(
                Response::builder()
                    .body(Body::from(
                        list(&[cm("5", "again", false)], "5").into_bytes(),
                    ))
                    .unwrap(),
            );
            listed = true;
            break;
        }
    }
    assert!(listed, "no new list of the idle object");
    loop {
        let changed = changes.recv().await.unwrap();
        if changed == key() {
            break;
        }
    }
    assert_eq!(value(cache.get("ns", "cfg")), Some(Some("again".into())));
}
