//! Pods bound to this node in the apiserver: the `api` source, beside the file, URL
//! and push sources (upstream's `pkg/kubelet/config/apiserver.go`).
//!
//! A kube-runtime watcher on pods with `spec.nodeName=<node>` resumes from the last
//! resourceVersion and re-lists on `410 Gone`; every change sends the pod manager the
//! complete set of pods to run, as the other sources do. Mirror pods (the
//! apiserver's copies of static pods) are not run: they are published to the status
//! poster and the mirror pod manager with the rest of what the watch saw.
//!
//! While the apiserver is unreachable the last snapshot stands, so the pods keep
//! running; the first list after an outage or an agent restart is complete, so pods
//! deleted meanwhile are terminated then.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use nodelet_manifests::{API_SOURCE, CONFIG_SOURCE_ANNOTATION, SourceEvent, is_mirror_pod};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Every pod bound to the node as the apiserver last showed it, by UID (mirror pods
/// included, unchanged: no annotation added).
#[derive(Debug, Clone, Default)]
pub struct ApiPods {
    /// The pods, by UID.
    pub pods: Arc<BTreeMap<String, Pod>>,
    /// Whether a complete list has arrived since the agent started.
    pub listed: bool,
}

impl ApiPods {
    /// The mirror pod of the static pod `namespace/name`, if the apiserver has one.
    pub fn mirror_of(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods.values().find(|p| {
            is_mirror_pod(p)
                && p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.name.as_deref() == Some(name)
        })
    }

    /// The mirror pods, by UID.
    pub fn mirrors(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values().filter(|p| is_mirror_pod(p))
    }
}

/// The pods to run from what the apiserver shows: mirror pods left out, each pod
/// marked with its source (`kubernetes.io/config.source: api`) as upstream's pod
/// config does.
pub fn pods_to_run(pods: &BTreeMap<String, Pod>) -> Vec<Pod> {
    pods.values()
        .filter(|p| !is_mirror_pod(p))
        .map(|p| {
            let mut p = p.clone();
            p.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(CONFIG_SOURCE_ANNOTATION.to_owned(), API_SOURCE.to_owned());
            p
        })
        .collect()
}

/// The apiserver pod source.
pub struct ApiPodSource {
    client: kube::Client,
    node_name: String,
}

impl std::fmt::Debug for ApiPodSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiPodSource")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl ApiPodSource {
    /// A source for the pods bound to `node_name`.
    pub fn new(client: kube::Client, node_name: impl Into<String>) -> Self {
        Self {
            client,
            node_name: node_name.into(),
        }
    }

    /// Watches until `cancel`, sending snapshots to `out` and publishing every pod
    /// (mirror pods included) on `seen`.
    pub async fn run(
        self,
        out: mpsc::Sender<SourceEvent>,
        seen: watch::Sender<ApiPods>,
        cancel: CancellationToken,
    ) {
        tokio::select! {
            () = self.watch(out, seen) => {}
            () = cancel.cancelled() => {}
        }
    }

    async fn watch(self, out: mpsc::Sender<SourceEvent>, seen: watch::Sender<ApiPods>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let config = watcher::Config::default()
            .fields(&format!("spec.nodeName={}", self.node_name))
            // Upstream's reflector: a watch that sees nothing for this long is
            // restarted, so a stalled connection cannot hide pods for long.
            .timeout(290);
        let stream = watcher::watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, Pod>> = None;
        let mut listed = false;
        let mut failing = false;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(error) => {
                    if !failing {
                        warn!(%error, "watching this node's pods in the apiserver failed; retrying (pods keep running)");
                        failing = true;
                    } else {
                        debug!(%error, "pod watch still failing");
                    }
                    continue;
                }
            };
            if failing {
                info!("watching this node's pods in the apiserver again");
                failing = false;
            }
            match event {
                Event::Init => listing = Some(BTreeMap::new()),
                Event::InitApply(pod) => {
                    if let (Some(list), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                        list.insert(uid, pod);
                    }
                    continue;
                }
                Event::InitDone => {
                    if let Some(list) = listing.take() {
                        pods = list;
                    }
                    if !listed {
                        info!(
                            pods = pods.len(),
                            "listed this node's pods in the apiserver"
                        );
                    }
                    listed = true;
                }
                Event::Apply(pod) => {
                    if let Some(uid) = pod.metadata.uid.clone() {
                        pods.insert(uid, pod);
                    }
                }
                Event::Delete(pod) => {
                    if let Some(uid) = &pod.metadata.uid {
                        pods.remove(uid);
                    }
                }
            }
            if !listed {
                continue;
            }
            seen.send_replace(ApiPods {
                pods: Arc::new(pods.clone()),
                listed,
            });
            let snapshot = SourceEvent::Snapshot {
                source: API_SOURCE,
                pods: pods_to_run(&pods),
            };
            if out.send(snapshot).await.is_err() {
                return;
            }
        }
    }
}

/// How long the status poster and the mirror pod manager wait before retrying a
/// request the apiserver refused or did not answer (doubling up to [`MAX_RETRY`]).
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use nodelet_manifests::CONFIG_MIRROR_ANNOTATION;

    fn pod(uid: &str, name: &str, mirror: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("default".into());
        if mirror {
            p.metadata.annotations = Some(
                [(CONFIG_MIRROR_ANNOTATION.to_owned(), "hash".to_owned())]
                    .into_iter()
                    .collect(),
            );
        }
        p
    }

    #[test]
    fn mirror_pods_are_not_run_and_api_pods_are_marked() {
        let pods: BTreeMap<String, Pod> = [
            ("a".to_owned(), pod("a", "web", false)),
            ("m".to_owned(), pod("m", "static-node", true)),
        ]
        .into_iter()
        .collect();
        let run = pods_to_run(&pods);
        assert_eq!(run.len(), 1);
        assert_eq!(run[0].metadata.uid.as_deref(), Some("a"));
        assert_eq!(
            run[0].metadata.annotations.as_ref().unwrap()[CONFIG_SOURCE_ANNOTATION],
            "api"
        );
        assert!(!nodelet_manifests::is_static_pod(&run[0]));
        let seen = ApiPods {
            pods: Arc::new(pods),
            listed: true,
        };
        assert_eq!(
            seen.mirror_of("default", "static-node")
                .and_then(|p| p.metadata.uid.as_deref()),
            Some("m")
        );
        assert!(seen.mirror_of("default", "web").is_none());
        assert_eq!(seen.mirrors().count(), 1);
    }
}
