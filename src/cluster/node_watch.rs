//! The node as the apiserver shows it, for admission: a watch on this node's Node
//! object whose labels and taints (set by the agent at registration, and by anyone
//! since: `kubectl label`, `kubectl taint`, the node lifecycle controller) replace
//! those admission started with. Allocatable stays the agent's own. Its pod CIDRs
//! (`spec.podCIDRs`, once assigned) go to the built-in pod network (`pod_cidr.rs`).

use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::pod::admission::AdmitNode;

/// Follows Node `name` until `cancel`, publishing its labels and taints on `out` and its
/// pod CIDRs (comma-joined, once it has some) on `pod_cidr`.
pub async fn follow_node(
    client: kube::Client,
    name: String,
    out: watch::Sender<Arc<AdmitNode>>,
    pod_cidr: watch::Sender<Option<String>>,
    cancel: CancellationToken,
) {
    let api: Api<Node> = Api::all(client);
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(290);
    let stream = watcher::watcher(api, config)
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            None => return,
            Some(Err(error)) => debug!(%error, "watching the Node failed; retrying"),
            Some(Ok(node)) => {
                if let Some(cidrs) = crate::cluster::node::pod_cidrs_of(&node) {
                    pod_cidr.send_if_modified(|current| {
                        let changed = current.as_deref() != Some(cidrs.as_str());
                        if changed {
                            *current = Some(cidrs);
                        }
                        changed
                    });
                }
                out.send_modify(|current| {
                    let mut updated = (**current).clone();
                    updated.labels = node.metadata.labels.clone().unwrap_or_default();
                    updated.taints = node
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.clone())
                        .unwrap_or_default();
                    *current = Arc::new(updated);
                });
            }
        }
    }
}
