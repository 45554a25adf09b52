//! The node lease: `coordination.k8s.io/v1` Lease `kube-node-lease/<node>`, held by
//! the node, 40 s long, renewed every 10 s, owned by the Node so it goes with it, as
//! upstream's `pkg/kubelet/nodelease` controller (`component-helpers`' lease
//! controller). A failed renewal is retried with upstream's back-off (200 ms doubling
//! to 7 s) until the apiserver answers again.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use tracing::debug;

use crate::cluster::{ClusterError, Outage, call};

/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Upstream's `nodeLeaseDurationSeconds` default.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// Upstream's renew interval: a quarter of the duration.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(10);
/// Upstream's retry back-off after a failed renewal.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(7));

/// The lease as it should be at `now`, kept from `existing` where it has one
/// (resourceVersion, other owners), with the Node as owner when its UID is known.
pub fn lease_object(
    existing: Option<&Lease>,
    node: &str,
    node_uid: Option<&str>,
    now: jiff::Timestamp,
) -> Lease {
    let mut lease = existing.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(node.to_owned()),
            namespace: Some(LEASE_NAMESPACE.to_owned()),
            ..Default::default()
        },
        spec: None,
    });
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(node.to_owned());
    spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
    spec.renew_time = Some(MicroTime(now));
    // Upstream's `setNodeOwnerFunc`: the Node owns its lease.
    if let Some(uid) = node_uid {
        let owners = lease.metadata.owner_references.get_or_insert_with(Vec::new);
        if !owners.iter().any(|o| o.kind == "Node" && o.uid == uid) {
            owners.push(OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Node".to_owned(),
                name: node.to_owned(),
                uid: uid.to_owned(),
                ..Default::default()
            });
        }
    }
    lease
}

/// Keeps the node's lease renewed.
pub struct LeaseRenewer {
    leases: Api<Lease>,
    node: String,
    node_uid: Option<String>,
}

impl LeaseRenewer {
    /// A renewer for node `node` (its Node's UID for the owner reference).
    pub fn new(client: kube::Client, node: String, node_uid: Option<String>) -> Self {
        Self {
            leases: Api::namespaced(client, LEASE_NAMESPACE),
            node,
            node_uid,
        }
    }

    fn object(&self) -> String {
        format!("Lease/{LEASE_NAMESPACE}/{}", self.node)
    }

    /// Renews every [`RENEW_INTERVAL`] forever (until dropped).
    pub async fn run(&self) {
        let mut current: Option<Lease> = None;
        let mut outage = Outage::default();
        let mut delay = BACKOFF.0;
        loop {
            match self.renew(current.take()).await {
                Ok(lease) => {
                    outage.ok("node lease");
                    current = Some(lease);
                    delay = BACKOFF.0;
                    tokio::time::sleep(RENEW_INTERVAL).await;
                }
                Err(e) => {
                    outage.failed("node lease", &e);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF.1);
                }
            }
        }
    }

    /// One renewal: an update of the lease last seen (one request), else a get and
    /// an update, or a create when there is none.
    async fn renew(&self, last: Option<Lease>) -> Result<Lease, ClusterError> {
        let now = jiff::Timestamp::now();
        if let Some(last) = last {
            let lease = lease_object(Some(&last), &self.node, self.node_uid.as_deref(), now);
            match self.replace(&lease).await {
                // Someone else wrote it (or deleted it): read it again below.
                Err(e) if matches!(e.code(), Some(409 | 404)) => {
                    debug!(error = %e, "node lease changed under us; reading it again");
                }
                other => return other,
            }
        }
        let existing = match call("get", self.object(), self.leases.get_opt(&self.node)).await? {
            Some(l) => l,
            None => {
                let lease = lease_object(None, &self.node, self.node_uid.as_deref(), now);
                return call(
                    "create",
                    self.object(),
                    self.leases.create(&PostParams::default(), &lease),
                )
                .await;
            }
        };
        let lease = lease_object(Some(&existing), &self.node, self.node_uid.as_deref(), now);
        self.replace(&lease).await
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, ClusterError> {
        call(
            "update",
            self.object(),
            self.leases
                .replace(&self.node, &PostParams::default(), lease),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_lease_is_held_by_the_node_and_owned_by_it() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        let l = lease_object(None, "n1", Some("uid-1"), now);
        assert_eq!(l.metadata.namespace.as_deref(), Some("kube-node-lease"));
        let spec = l.spec.clone().expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        let owners = l.metadata.owner_references.clone().expect("owners");
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("Node", "uid-1")
        );
        // Renewing keeps the object and adds no second owner.
        let later = now + jiff::SignedDuration::from_secs(10);
        let r = lease_object(Some(&l), "n1", Some("uid-1"), later);
        assert_eq!(r.metadata.owner_references.map(|o| o.len()), Some(1));
        assert_eq!(r.spec.and_then(|s| s.renew_time), Some(MicroTime(later)));
        // Without a Node UID (not registered yet) there is no owner.
        assert!(
            lease_object(None, "n1", None, now)
                .metadata
                .owner_references
                .is_none()
        );
    }
}
