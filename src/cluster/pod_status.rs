//! The pod status poster: every pod's status from the status store patched onto the
//! apiserver's copy, as upstream's status manager (`pkg/kubelet/status`):
//!
//! - a pod from the apiserver gets its own status; a static pod's goes to its mirror
//!   pod (upstream's `TranslatePodUID`), once one exists;
//! - the patch is strategic, on the `status` subresource, with the pod's UID as a
//!   precondition, and carries only the conditions the agent owns, so conditions
//!   other controllers set are never clobbered;
//! - a pod marked for deletion whose containers are all stopped (its worker removed
//!   it from the store) gets its final status, then is deleted with grace period 0
//!   and the UID as precondition (upstream's `canBeDeleted`);
//! - a change is posted as soon as the store has it; a failure is retried with
//!   back-off per pod, and the store keeps a removed pod's final status until it is
//!   posted, so an apiserver outage loses nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use nodelet_manifests::{CONFIG_HASH_ANNOTATION, CONFIG_MIRROR_ANNOTATION, is_static_pod};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pod_source::{ApiPods, FIRST_RETRY, MAX_RETRY};
use super::{ClusterError, Outage, call};
use crate::pod::status_store::{PodEntry, StatusStore, agent_owned_condition};

/// How many pods' statuses are in flight at once.
const IN_FLIGHT: usize = 8;

/// The apiserver pod a status goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID (the precondition).
    pub uid: String,
}

/// What to do for one store entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing to post (a static pod that is gone: its mirror pod goes with it).
    Nothing,
    /// Not yet: a static pod whose mirror pod the apiserver does not show yet.
    Wait,
    /// Patch `body` onto `target`, then delete it when `delete`.
    Post {
        /// The pod.
        target: Target,
        /// The strategic merge patch.
        body: Value,
        /// The pod is marked for deletion and its worker is done: delete it.
        delete: bool,
    },
}

/// The status fields the agent owns, in the patch: each present one is set, each
/// absent one is removed (JSON `null`), as upstream's two-way diff would.
const OWNED_FIELDS: [&str; 12] = [
    "phase",
    "message",
    "reason",
    "hostIP",
    "hostIPs",
    "podIP",
    "podIPs",
    "startTime",
    "qosClass",
    "containerStatuses",
    "initContainerStatuses",
    "ephemeralContainerStatuses",
];

/// The strategic merge patch for `status` on the pod with UID `uid`: the fields the
/// agent owns, and only the conditions it owns (merged by type by the apiserver).
pub fn status_patch(uid: &str, status: &PodStatus) -> Value {
    let mut ours = status.clone();
    ours.conditions = status.conditions.as_ref().map(|cs| {
        cs.iter()
            .filter(|c| agent_owned_condition(&c.type_))
            // A disruption condition is ours only when the agent terminated the pod.
            .filter(|c| {
                c.type_ != "DisruptionTarget" || c.reason.as_deref() == Some("TerminationByKubelet")
            })
            .cloned()
            .collect()
    });
    let encoded = serde_json::to_value(&ours).unwrap_or(Value::Null);
    let mut fields = serde_json::Map::new();
    for key in OWNED_FIELDS {
        fields.insert(
            key.to_owned(),
            encoded.get(key).cloned().unwrap_or(Value::Null),
        );
    }
    if let Some(conditions) = encoded
        .get("conditions")
        .filter(|c| c.as_array().is_some_and(|a| !a.is_empty()))
    {
        fields.insert("conditions".to_owned(), conditions.clone());
    }
    json!({ "metadata": { "uid": uid }, "status": fields })
}

fn ns_name(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// What to post for `entry`, given what the apiserver shows.
pub fn plan(entry: &PodEntry, api: &ApiPods) -> Action {
    let pod = &entry.pod;
    let (namespace, name) = ns_name(pod);
    let status = pod.status.clone().unwrap_or_default();
    if is_static_pod(pod) {
        if entry.removed {
            return Action::Nothing;
        }
        if !api.listed {
            return Action::Wait;
        }
        let hash = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION));
        let mirror = api.mirror_of(&namespace, &name).filter(|m| {
            m.metadata.deletion_timestamp.is_none()
                && m.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(CONFIG_MIRROR_ANNOTATION))
                    == hash
        });
        let Some(uid) = mirror.and_then(|m| m.metadata.uid.clone()) else {
            return Action::Wait;
        };
        return Action::Post {
            body: status_patch(&uid, &status),
            target: Target {
                namespace,
                name,
                uid,
            },
            delete: false,
        };
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // The apiserver's latest word on deletion (the store's copy may predate it).
    let in_api = api.pods.get(&uid);
    if entry.removed && api.listed && in_api.is_none() {
        // Already gone from the apiserver: nothing left to post to.
        return Action::Nothing;
    }
    let marked = in_api.map_or(pod.metadata.deletion_timestamp.is_some(), |p| {
        p.metadata.deletion_timestamp.is_some()
    });
    Action::Post {
        body: status_patch(&uid, &status),
        target: Target {
            namespace,
            name,
            uid,
        },
        delete: entry.removed && marked,
    }
}

/// Posts pod statuses until cancelled.
pub struct PodStatusPoster {
    client: kube::Client,
    store: Arc<StatusStore>,
    api: watch::Receiver<ApiPods>,
}

impl std::fmt::Debug for PodStatusPoster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodStatusPoster").finish_non_exhaustive()
    }
}

/// What a finished post means for the entry.
enum Posted {
    /// Done (posted, or the pod is gone from the apiserver).
    Done,
    /// Try again later.
    Failed(ClusterError),
}

impl PodStatusPoster {
    /// A poster of `store`'s statuses, with what the pod source sees in `api`.
    pub fn new(
        client: kube::Client,
        store: Arc<StatusStore>,
        api: watch::Receiver<ApiPods>,
    ) -> Self {
        Self { client, store, api }
    }

    /// Posts every change until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let consumer = self.store.register();
        let mut statuses = self.store.subscribe();
        // Per UID: the version last seen through, and the body last posted (which
        // names its target's UID: a new mirror pod is posted to afresh).
        let mut done: HashMap<String, (u64, Option<Value>)> = HashMap::new();
        let mut retry: HashMap<String, (Instant, Duration)> = HashMap::new();
        let mut outage = Outage::default();
        loop {
            let snapshot = statuses.borrow_and_update().clone();
            let api = self.api.borrow_and_update().clone();
            done.retain(|uid, _| snapshot.entries().contains_key(uid));
            retry.retain(|uid, _| snapshot.entries().contains_key(uid));
            let now = Instant::now();
            let mut work = Vec::new();
            for (uid, entry) in snapshot.entries() {
                if retry.get(uid).is_some_and(|(at, _)| *at > now) {
                    continue;
                }
                let action = plan(entry, &api);
                let posted = done.get(uid);
                let same_version = posted.is_some_and(|(v, _)| *v >= entry.version);
                let same_target = match (&action, posted.and_then(|(_, b)| b.as_ref())) {
                    (Action::Post { body, .. }, Some(last)) => {
                        body["metadata"]["uid"] == last["metadata"]["uid"]
                    }
                    (Action::Post { .. }, None) => false,
                    _ => true,
                };
                if same_version && same_target {
                    continue;
                }
                match action {
                    Action::Wait => {}
                    Action::Nothing => {
                        done.insert(uid.clone(), (entry.version, None));
                        consumer.seen(uid, entry.version);
                    }
                    Action::Post {
                        target,
                        body,
                        delete,
                    } => {
                        let unchanged = !delete
                            && done
                                .get(uid)
                                .and_then(|(_, b)| b.as_ref())
                                .is_some_and(|b| *b == body);
                        if unchanged {
                            done.insert(uid.clone(), (entry.version, Some(body)));
                            consumer.seen(uid, entry.version);
                        } else {
                            work.push((uid.clone(), entry.version, target, body, delete));
                        }
                    }
                }
            }
            let results: Vec<_> = futures::stream::iter(work)
                .map(|(uid, version, target, body, delete)| {
                    let client = self.client.clone();
                    async move {
                        let result = post(client, &target, &body, delete).await;
                        (uid, version, body, result)
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            for (uid, version, body, result) in results {
                match result {
                    Posted::Done => {
                        outage.ok("pod status");
                        retry.remove(&uid);
                        done.insert(uid.clone(), (version, Some(body)));
                        consumer.seen(&uid, version);
                    }
                    Posted::Failed(error) => {
                        outage.failed("pod status", &error);
                        let delay = retry
                            .get(&uid)
                            .map_or(FIRST_RETRY, |(_, d)| (*d * 2).min(MAX_RETRY));
                        retry.insert(uid, (Instant::now() + delay, delay));
                    }
                }
            }
            let next_retry = retry.values().map(|(at, _)| *at).min();
            tokio::select! {
                () = cancel.cancelled() => return,
                r = statuses.changed() => if r.is_err() { return },
                r = self.api.changed() => if r.is_err() { return },
                () = async {
                    match next_retry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }
}

/// Patches the status onto `target` (and deletes it when `delete`).
async fn post(client: kube::Client, target: &Target, body: &Value, delete: bool) -> Posted {
    let api: Api<Pod> = Api::namespaced(client, &target.namespace);
    let object = format!("Pod/{}/{}", target.namespace, target.name);
    let patched = call(
        "patch status",
        object.clone(),
        api.patch_status(
            &target.name,
            &PatchParams::default(),
            &Patch::Strategic(body),
        ),
    )
    .await;
    match patched {
        Ok(_) => debug!(pod = %object, "status posted"),
        Err(e) if gone(&e) => {
            debug!(pod = %object, error = %e, "status not posted: the pod is gone");
            return Posted::Done;
        }
        Err(e) if e.code() == Some(422) => {
            // An invalid status would be refused again: say so once and move on.
            warn!(pod = %object, error = %e, "the apiserver refused the pod status");
        }
        Err(e) => return Posted::Failed(e),
    }
    if !delete {
        return Posted::Done;
    }
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(target.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match call("delete", object.clone(), api.delete(&target.name, &params)).await {
        Ok(_) => {
            info!(pod = %object, uid = %target.uid, "pod terminated; deleted from the apiserver");
            Posted::Done
        }
        Err(e) if gone(&e) => Posted::Done,
        Err(e) => Posted::Failed(e),
    }
}

/// A 404 (deleted) or a 409 (the name now holds another pod: the UID precondition
/// failed): nothing of this pod is left to post to.
fn gone(e: &ClusterError) -> bool {
    matches!(e.code(), Some(404 | 409))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::PodCondition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use nodelet_manifests::{API_SOURCE, CONFIG_SOURCE_ANNOTATION};

    use super::*;

    fn pod(uid: &str, source: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.name = Some(format!("pod-{uid}"));
        p.metadata.namespace = Some("ns".into());
        p.metadata.annotations = Some(
            [
                (CONFIG_SOURCE_ANNOTATION.to_owned(), source.to_owned()),
                (CONFIG_HASH_ANNOTATION.to_owned(), uid.to_owned()),
            ]
            .into_iter()
            .collect(),
        );
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some("10.0.0.2".into()),
            conditions: Some(vec![
                PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                },
                PodCondition {
                    type_: "example.com/Custom".into(),
                    status: "True".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        p
    }

    fn entry(pod: Pod, removed: bool) -> PodEntry {
        PodEntry {
            pod: Arc::new(pod),
            version: 1,
            removed,
        }
    }

    fn api(pods: Vec<Pod>) -> ApiPods {
        ApiPods {
            pods: Arc::new(
                pods.into_iter()
                    .map(|p| (p.metadata.uid.clone().unwrap_or_default(), p))
                    .collect::<BTreeMap<_, _>>(),
            ),
            listed: true,
        }
    }

    #[test]
    fn the_patch_carries_owned_fields_and_conditions_only() {
        let p = pod("u1", API_SOURCE);
        let body = status_patch("u1", p.status.as_ref().unwrap());
        assert_eq!(body["metadata"]["uid"], "u1");
        assert_eq!(body["status"]["phase"], "Running");
        assert_eq!(body["status"]["podIP"], "10.0.0.2");
        // Absent owned fields are removed, as a two-way diff would.
        assert_eq!(body["status"]["message"], Value::Null);
        assert!(body["status"].as_object().unwrap().contains_key("message"));
        let conditions = body["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0]["type"], "Ready");
        // Fields the agent doesn't own are left alone.
        assert!(
            !body["status"]
                .as_object()
                .unwrap()
                .contains_key("nominatedNodeName")
        );
    }

    #[test]
    fn an_api_pod_is_posted_and_deleted_once_terminated_when_marked() {
        let p = pod("u1", API_SOURCE);
        let mut marked = p.clone();
        marked.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        match plan(&entry(p.clone(), false), &api(vec![marked.clone()])) {
            Action::Post { target, delete, .. } => {
                assert_eq!(target.uid, "u1");
                assert_eq!(target.namespace, "ns");
                assert!(!delete, "running still: not deleted");
            }
            other => panic!("unexpected {other:?}"),
        }
        match plan(&entry(p.clone(), true), &api(vec![marked])) {
            Action::Post { delete, .. } => assert!(delete),
            other => panic!("unexpected {other:?}"),
        }
        // Removed but not marked (gone from a source some other way): final status only.
        match plan(&entry(p.clone(), true), &api(vec![p.clone()])) {
            Action::Post { delete, .. } => assert!(!delete),
            other => panic!("unexpected {other:?}"),
        }
        // Removed and gone from the apiserver: nothing to do.
        assert_eq!(plan(&entry(p, true), &api(vec![])), Action::Nothing);
    }

    #[test]
    fn a_static_pod_posts_to_its_current_mirror() {
        let p = pod("s1", "file");
        assert_eq!(plan(&entry(p.clone(), false), &api(vec![])), Action::Wait);
        let mut mirror = Pod::default();
        mirror.metadata.uid = Some("m1".into());
        mirror.metadata.name = p.metadata.name.clone();
        mirror.metadata.namespace = Some("ns".into());
        mirror.metadata.annotations = Some(
            [(CONFIG_MIRROR_ANNOTATION.to_owned(), "s1".to_owned())]
                .into_iter()
                .collect(),
        );
        match plan(&entry(p.clone(), false), &api(vec![mirror.clone()])) {
            Action::Post {
                target,
                delete,
                body,
            } => {
                assert_eq!(target.uid, "m1");
                assert!(!delete);
                assert_eq!(body["metadata"]["uid"], "m1");
            }
            other => panic!("unexpected {other:?}"),
        }
        // A mirror of an older version of the static pod is not posted to.
        let mut stale = mirror.clone();
        stale.metadata.annotations = Some(
            [(CONFIG_MIRROR_ANNOTATION.to_owned(), "old".to_owned())]
                .into_iter()
                .collect(),
        );
        assert_eq!(
            plan(&entry(p.clone(), false), &api(vec![stale])),
            Action::Wait
        );
        // A static pod that is gone: its mirror pod goes with it.
        assert_eq!(plan(&entry(p, true), &api(vec![mirror])), Action::Nothing);
    }

    mod mock {
        //! The poster against a mock apiserver (`tower-test` behind `kube::Client`):
        //! the answers a real server can't be made to give on demand.

        use http::{Method, Request, Response, StatusCode};
        use kube::client::Body;
        use tokio::sync::watch;
        use tokio_util::sync::CancellationToken;

        use super::*;

        type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

        fn status_body(code: u16, reason: &str) -> Body {
            Body::from(
                serde_json::to_vec(&serde_json::json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": reason, "reason": reason, "code": code
                }))
                .unwrap(),
            )
        }

        async fn answer(
            handle: &mut Handle,
            method: Method,
            path_end: &str,
            code: u16,
            body: Body,
        ) {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.method(), method, "{}", req.uri());
            assert!(req.uri().path().ends_with(path_end), "{}", req.uri());
            send.send_response(
                Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .body(body)
                    .unwrap(),
            );
        }

        /// Answers the next request, a status patch of pod `pod-u1`.
        async fn patch(handle: &mut Handle, code: u16, body: Body) {
            answer(handle, Method::PATCH, "/pods/pod-u1/status", code, body).await;
        }

        fn pod_body(p: &Pod) -> Body {
            Body::from(serde_json::to_vec(p).unwrap())
        }

        fn start(pods: Vec<Pod>) -> (Arc<StatusStore>, Handle, CancellationToken) {
            let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(svc, "default");
            let store = Arc::new(StatusStore::new());
            for p in &pods {
                store.set(p, p.status.clone().unwrap_or_default());
            }
            let (_tx, rx) = watch::channel(api(pods));
            // The sender may go: the poster keeps the last value.
            std::mem::forget(_tx);
            let cancel = CancellationToken::new();
            let poster = PodStatusPoster::new(client, Arc::clone(&store), rx);
            tokio::spawn(poster.run(cancel.clone()));
            (store, handle, cancel)
        }

        #[tokio::test(start_paused = true)]
        async fn throttled_and_failed_patches_are_retried_until_they_land() {
            let p = pod("u1", API_SOURCE);
            let (_store, mut handle, cancel) = start(vec![p.clone()]);
            patch(&mut handle, 429, status_body(429, "TooManyRequests")).await;
            patch(&mut handle, 500, status_body(500, "InternalError")).await;
            patch(&mut handle, 200, pod_body(&p)).await;
            // Posted: nothing more until the status changes.
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(
                futures::FutureExt::now_or_never(handle.next_request()).is_none(),
                "a landed status was posted again"
            );
            cancel.cancel();
        }

        #[tokio::test(start_paused = true)]
        async fn a_stalled_patch_times_out_and_is_retried() {
            let p = pod("u1", API_SOURCE);
            let (_store, mut handle, cancel) = start(vec![p.clone()]);
            let (_req, stalled) = handle.next_request().await.expect("a request");
            // No answer: the request times out and the status is posted again.
            patch(&mut handle, 200, pod_body(&p)).await;
            drop(stalled);
            cancel.cancel();
        }

        #[tokio::test(start_paused = true)]
        async fn a_terminated_pod_is_deleted_with_its_uid_and_a_conflict_means_gone() {
            let mut p = pod("u1", API_SOURCE);
            p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
            let (store, mut handle, cancel) = start(vec![p.clone()]);
            patch(&mut handle, 200, pod_body(&p)).await;
            store.remove("u1");
            patch(&mut handle, 200, pod_body(&p)).await;
            let (req, send) = handle.next_request().await.expect("the delete");
            assert_eq!(req.method(), Method::DELETE);
            let body = req.into_body().collect_bytes().await.unwrap();
            let params: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(params["gracePeriodSeconds"], 0);
            assert_eq!(params["preconditions"]["uid"], "u1");
            // The name holds another pod now: nothing of ours is left.
            send.send_response(
                Response::builder()
                    .status(StatusCode::CONFLICT)
                    .body(status_body(409, "Conflict"))
                    .unwrap(),
            );
            tokio::time::sleep(Duration::from_secs(60)).await;
            assert!(futures::FutureExt::now_or_never(handle.next_request()).is_none());
            // The final status was seen: the store let go of the removed pod.
            assert!(store.snapshot().entries().is_empty());
            cancel.cancel();
        }
    }
}
