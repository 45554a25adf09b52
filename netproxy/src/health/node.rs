//! Node eligibility for `/healthz` (upstream's `ProxyHealthServer.SyncNode`, fed by its
//! `NodeEligibleHandler`): a watch on this node's Node object; the node is not eligible
//! for load-balancer traffic while it is being deleted (a deletion timestamp) or carries
//! the cluster autoscaler's `ToBeDeletedByClusterAutoscaler` taint, and `/healthz`
//! answers 503 then (`/livez` does not look). Every add and update re-evaluates the
//! object it carries; a deleted Node is not eligible (upstream v1.37's kube-proxy exits
//! then; the agent's proxy stays up and answers 503).

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use super::ProxyHealth;

/// The cluster autoscaler's taint on nodes it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether `node` may receive load-balancer traffic.
#[must_use]
pub fn eligible(node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    !node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

/// Watches Node `name` and keeps `health`'s eligibility current, until the stream
/// ends (it retries with kube-runtime's backoff, so only when dropped).
pub async fn watch_eligibility(client: Client, name: String, health: ProxyHealth) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(Api::<Node>::all(client), config)
        .default_backoff()
        .map_err(|e| e.to_string())
        .boxed();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                let now = eligible(&n);
                tracing::debug!(node = %name, eligible = now, "node eligibility");
                health.set_node_eligible(now);
            }
            Ok(watcher::Event::Delete(_)) => {
                tracing::info!(node = %name, "the node was deleted: not eligible");
                health.set_node_eligible(false);
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => tracing::warn!(node = %name, error = %e, "node watch error, retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).expect("node")
    }

    #[test]
    fn deleting_or_autoscaler_tainted_nodes_are_not_eligible() {
        assert!(eligible(&node(
            serde_json::json!({"metadata": {"name": "n"}})
        )));
        assert!(eligible(&node(serde_json::json!({
            "metadata": {"name": "n"},
            "spec": {"taints": [{"key": "other", "effect": "NoSchedule"}]}
        }))));
        assert!(!eligible(&node(serde_json::json!({
            "metadata": {"name": "n", "deletionTimestamp": "2026-01-01T00:00:00Z"}
        }))));
        assert!(!eligible(&node(serde_json::json!({
            "metadata": {"name": "n"},
            "spec": {"taints": [{"key": TO_BE_DELETED_TAINT, "effect": "NoSchedule"}]}
        }))));
    }
}
