//! Mirror pods: for every static pod (file, URL or push source) a copy in the
//! apiserver, so `kubectl get pods` shows it, as upstream's mirror client
//! (`pkg/kubelet/pod/mirror_client.go`) and `syncPod`/`HandlePodCleanups` keep them:
//!
//! - created with the annotation `kubernetes.io/config.mirror: <config.hash>` and an
//!   owner reference to the Node (controller);
//! - recreated when deleted, replaced (deleted with grace 0 and the UID as
//!   precondition, then created) when the static pod changed or the mirror is marked
//!   for deletion;
//! - removed when its static pod is gone, once every source has reported (so an agent
//!   restart does not churn them).
//!
//! Their status is the status poster's (`pod_status.rs`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use nodelet_manifests::{CONFIG_HASH_ANNOTATION, CONFIG_MIRROR_ANNOTATION, is_static_pod};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::pod_source::{ApiPods, FIRST_RETRY, MAX_RETRY};
use super::{Outage, call};
use crate::pod::manager::DesiredPods;

/// How long a request just made stands before the same one is made again while the
/// watch has not shown its effect.
const SETTLE: Duration = Duration::from_secs(10);

/// One change to the apiserver's mirror pods.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorOp {
    /// Create this mirror pod.
    Create(Box<Pod>),
    /// Delete the mirror pod `namespace/name` with this UID.
    Delete {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its UID (the precondition).
        uid: String,
    },
}

impl MirrorOp {
    fn key(&self) -> String {
        match self {
            MirrorOp::Create(p) => format!(
                "create {}/{} {}",
                p.metadata.namespace.as_deref().unwrap_or(""),
                p.metadata.name.as_deref().unwrap_or(""),
                hash_of(p).unwrap_or("")
            ),
            MirrorOp::Delete { uid, .. } => format!("delete {uid}"),
        }
    }
}

fn hash_of(pod: &Pod) -> Option<&str> {
    let a = pod.metadata.annotations.as_ref()?;
    a.get(CONFIG_MIRROR_ANNOTATION)
        .or_else(|| a.get(CONFIG_HASH_ANNOTATION))
        .map(String::as_str)
}

/// The mirror pod of `static_pod`: a copy with the mirror annotation and the Node as
/// its owner; no UID, resourceVersion or status (the apiserver sets them).
pub fn mirror_pod(static_pod: &Pod, node_name: &str, node_uid: &str) -> Pod {
    let mut pod = static_pod.clone();
    let hash = static_pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
        .or_else(|| static_pod.metadata.uid.clone())
        .unwrap_or_default();
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(CONFIG_MIRROR_ANNOTATION.to_owned(), hash);
    pod.metadata.uid = None;
    pod.metadata.resource_version = None;
    pod.metadata.creation_timestamp = None;
    pod.metadata.deletion_timestamp = None;
    pod.metadata.deletion_grace_period_seconds = None;
    pod.metadata.managed_fields = None;
    pod.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Node".to_owned(),
        name: node_name.to_owned(),
        uid: node_uid.to_owned(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    pod.status = None;
    pod
}

/// What must change so the apiserver's mirror pods match the static pods in
/// `desired`. Orphans are removed only once `desired` is `ready`.
pub fn plan(
    desired: &DesiredPods,
    api: &ApiPods,
    node_name: &str,
    node_uid: &str,
) -> Vec<MirrorOp> {
    let mut ops = Vec::new();
    let mut mirrors: BTreeMap<(String, String), &Pod> = api
        .mirrors()
        .map(|p| {
            (
                (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                ),
                p,
            )
        })
        .collect();
    for pod in desired.pods.values().filter(|p| is_static_pod(p)) {
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        let wanted = mirror_pod(pod, node_name, node_uid);
        match mirrors.remove(&key) {
            Some(m)
                if m.metadata.deletion_timestamp.is_none() && hash_of(m) == hash_of(&wanted) => {}
            Some(m) => {
                ops.push(MirrorOp::Delete {
                    namespace: key.0,
                    name: key.1,
                    uid: m.metadata.uid.clone().unwrap_or_default(),
                });
                ops.push(MirrorOp::Create(Box::new(wanted)));
            }
            None => ops.push(MirrorOp::Create(Box::new(wanted))),
        }
    }
    if desired.ready {
        for ((namespace, name), m) in mirrors {
            ops.push(MirrorOp::Delete {
                namespace,
                name,
                uid: m.metadata.uid.clone().unwrap_or_default(),
            });
        }
    }
    ops
}

/// Keeps the mirror pods in step until cancelled.
pub struct MirrorPods {
    client: kube::Client,
    node_name: String,
    node_uid: String,
    desired: watch::Receiver<DesiredPods>,
    api: watch::Receiver<ApiPods>,
}

impl std::fmt::Debug for MirrorPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorPods")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl MirrorPods {
    /// The manager for node `node_name` (UID `node_uid`, its mirror pods' owner).
    pub fn new(
        client: kube::Client,
        node_name: String,
        node_uid: String,
        desired: watch::Receiver<DesiredPods>,
        api: watch::Receiver<ApiPods>,
    ) -> Self {
        Self {
            client,
            node_name,
            node_uid,
            desired,
            api,
        }
    }

    /// Runs until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        // Requests made, by op key: when, so they are not repeated before the watch
        // shows their effect.
        let mut made: HashMap<String, Instant> = HashMap::new();
        let mut delay = FIRST_RETRY;
        let mut outage = Outage::default();
        loop {
            let desired = self.desired.borrow_and_update().clone();
            let api = self.api.borrow_and_update().clone();
            let mut failed = false;
            if api.listed {
                let now = Instant::now();
                made.retain(|_, at| now.duration_since(*at) < SETTLE);
                for op in plan(&desired, &api, &self.node_name, &self.node_uid) {
                    let key = op.key();
                    if made.contains_key(&key) {
                        continue;
                    }
                    match self.apply(&op).await {
                        Ok(()) => {
                            outage.ok("mirror pods");
                            made.insert(key, Instant::now());
                        }
                        Err(e) => {
                            outage.failed("mirror pods", &e);
                            failed = true;
                            break;
                        }
                    }
                }
            }
            delay = if failed {
                (delay * 2).min(MAX_RETRY)
            } else {
                FIRST_RETRY
            };
            let wake = if failed || !made.is_empty() {
                Some(Instant::now() + if failed { delay } else { SETTLE })
            } else {
                None
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                r = self.desired.changed() => if r.is_err() { return },
                r = self.api.changed() => if r.is_err() { return },
                () = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    async fn apply(&self, op: &MirrorOp) -> Result<(), super::ClusterError> {
        match op {
            MirrorOp::Create(pod) => {
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                let object = format!("Pod/{namespace}/{name}");
                match call(
                    "create",
                    object.clone(),
                    api.create(&PostParams::default(), pod),
                )
                .await
                {
                    Ok(_) => {
                        info!(pod = %object, "mirror pod created");
                        Ok(())
                    }
                    // Another pod holds the name (or our earlier create landed): the
                    // watch tells which; a mirror of another version is replaced then.
                    Err(e) if e.code() == Some(409) => Ok(()),
                    Err(e) if e.code().is_some() => {
                        // Refused (a missing namespace, a forbidden field): say so
                        // once per settle period and carry on.
                        warn!(pod = %object, error = %e, "cannot create the mirror pod");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            MirrorOp::Delete {
                namespace,
                name,
                uid,
            } => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
                let object = format!("Pod/{namespace}/{name}");
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match call("delete", object.clone(), api.delete(name, &params)).await {
                    Ok(_) => {
                        info!(pod = %object, uid, "mirror pod deleted");
                        Ok(())
                    }
                    Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use nodelet_manifests::{API_SOURCE, CONFIG_SOURCE_ANNOTATION};

    use super::*;

    fn static_pod(uid: &str, name: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        p.metadata.annotations = Some(
            [
                (CONFIG_SOURCE_ANNOTATION.to_owned(), "file".to_owned()),
                (CONFIG_HASH_ANNOTATION.to_owned(), uid.to_owned()),
            ]
            .into_iter()
            .collect(),
        );
        p
    }

    fn desired(pods: Vec<Pod>, ready: bool) -> DesiredPods {
        DesiredPods {
            ready,
            pods: Arc::new(
                pods.into_iter()
                    .map(|p| (p.metadata.uid.clone().unwrap_or_default(), Arc::new(p)))
                    .collect(),
            ),
        }
    }

    fn api(pods: Vec<Pod>) -> ApiPods {
        ApiPods {
            pods: Arc::new(
                pods.into_iter()
                    .map(|p| (p.metadata.uid.clone().unwrap_or_default(), p))
                    .collect(),
            ),
            listed: true,
        }
    }

    fn in_api(mut mirror: Pod, uid: &str) -> Pod {
        mirror.metadata.uid = Some(uid.into());
        mirror
    }

    #[test]
    fn the_mirror_is_a_copy_owned_by_the_node() {
        let m = mirror_pod(&static_pod("h1", "web-node"), "node", "node-uid");
        let a = m.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[CONFIG_MIRROR_ANNOTATION], "h1");
        assert_eq!(a[CONFIG_SOURCE_ANNOTATION], "file");
        assert_eq!(m.metadata.uid, None);
        let owner = &m.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Node", "node", "node-uid")
        );
        assert_eq!(owner.controller, Some(true));
        assert!(nodelet_manifests::is_mirror_pod(&m));
    }

    #[test]
    fn missing_mirrors_are_created_and_current_ones_kept() {
        let s = static_pod("h1", "web-node");
        let ops = plan(&desired(vec![s.clone()], true), &api(vec![]), "node", "n");
        assert!(matches!(&ops[..], [MirrorOp::Create(_)]));
        let m = in_api(mirror_pod(&s, "node", "n"), "m1");
        assert!(plan(&desired(vec![s], true), &api(vec![m]), "node", "n").is_empty());
    }

    #[test]
    fn a_changed_static_pod_or_a_deleted_mirror_is_replaced() {
        let old = in_api(mirror_pod(&static_pod("h1", "web-node"), "node", "n"), "m1");
        let new = static_pod("h2", "web-node");
        let ops = plan(
            &desired(vec![new.clone()], true),
            &api(vec![old]),
            "node",
            "n",
        );
        assert!(
            matches!(&ops[..], [MirrorOp::Delete { uid, .. }, MirrorOp::Create(_)] if uid == "m1")
        );
        let mut marked = in_api(mirror_pod(&new, "node", "n"), "m2");
        marked.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        let ops = plan(&desired(vec![new], true), &api(vec![marked]), "node", "n");
        assert!(
            matches!(&ops[..], [MirrorOp::Delete { uid, .. }, MirrorOp::Create(_)] if uid == "m2")
        );
    }

    #[test]
    fn orphans_go_only_once_every_source_reported_and_api_pods_are_not_mirrored() {
        let orphan = in_api(
            mirror_pod(&static_pod("h1", "gone-node"), "node", "n"),
            "m1",
        );
        let mut api_pod = static_pod("a1", "api-pod");
        api_pod
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(CONFIG_SOURCE_ANNOTATION.to_owned(), API_SOURCE.to_owned());
        assert!(
            plan(
                &desired(vec![api_pod.clone()], false),
                &api(vec![orphan.clone()]),
                "node",
                "n"
            )
            .is_empty()
        );
        let ops = plan(
            &desired(vec![api_pod], true),
            &api(vec![orphan]),
            "node",
            "n",
        );
        assert!(matches!(&ops[..], [MirrorOp::Delete { uid, .. }] if uid == "m1"));
    }
}
