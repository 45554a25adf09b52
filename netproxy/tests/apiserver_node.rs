//! `/healthz` node eligibility against the real apiserver tier (`NODELET_TEST_KUBECONFIG`,
//! see tests/README.md): a Node created through the API is watched; the cluster
//! autoscaler's `ToBeDeletedByClusterAutoscaler` taint and a deletion held open by a
//! finalizer each turn `/healthz` to 503 with `"nodeEligible":false`, removing the
//! taint turns it back, and the Node gone keeps it 503. No kernel state is touched.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use nodelet_netproxy::health::ProxyHealth;
use nodelet_netproxy::health::node::{TO_BE_DELETED_TAINT, watch_eligibility};
use nodelet_netproxy::model::IpFamily;
use serde_json::json;
use support::cluster::{block_on_thread, client};

const FINALIZER: &str = "nodelet.test/hold";

/// Removes the test's finalizer and Node when dropped (on a fresh runtime thread).
struct NodeGuard(Client, String);

impl Drop for NodeGuard {
    fn drop(&mut self) {
        let (client, name) = (self.0.clone(), self.1.clone());
        block_on_thread(async move {
            let nodes = Api::<Node>::all(client);
            let _ = nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
            let _ = nodes.delete(&name, &DeleteParams::default()).await;
        });
    }
}

async fn wait_healthz(health: &ProxyHealth, code: u16, what: &str) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = health.healthz(SystemTime::now());
        if status.as_u16() == code {
            return body;
        }
        assert!(Instant::now() < end, "{what}: still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_follows_the_nodes_eligibility() {
    let client = client().await;
    let name = format!("nlt-eligible-{}", std::process::id());
    let nodes = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "finalizers": [FINALIZER]}
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create the Node");
    let _guard = NodeGuard(client.clone(), name.clone());

    let health = ProxyHealth::new(Duration::from_secs(60));
    health.updated(IpFamily::V4);
    let watch = tokio::spawn(watch_eligibility(
        client.clone(),
        name.clone(),
        health.clone(),
    ));
    let body = wait_healthz(&health, 200, "a plain node").await;
    assert!(body.contains("\"nodeEligible\":true"), "{body}");

    let taint = |taints: serde_json::Value| Patch::Merge(json!({"spec": {"taints": taints}}));
    nodes
        .patch(
            &name,
            &PatchParams::default(),
            &taint(json!([{"key": TO_BE_DELETED_TAINT, "value": "1", "effect": "NoSchedule"}])),
        )
        .await
        .expect("taint");
    let body = wait_healthz(&health, 503, "the autoscaler's taint").await;
    assert!(body.contains("\"nodeEligible\":false"), "{body}");
    let (live, _) = health.livez(SystemTime::now());
    assert_eq!(live.as_u16(), 200, "/livez ignores eligibility");

    nodes
        .patch(&name, &PatchParams::default(), &taint(json!(null)))
        .await
        .expect("untaint");
    wait_healthz(&health, 200, "the taint removed").await;

    // Deleted, held open by the finalizer: a deletion timestamp.
    nodes
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the Node");
    let body = wait_healthz(&health, 503, "the node being deleted").await;
    assert!(body.contains("\"nodeEligible\":false"), "{body}");
    // The finalizer released: the Node goes, and stays not eligible.
    nodes
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release the finalizer");
    let end = Instant::now() + Duration::from_secs(30);
    while nodes.get_opt(&name).await.expect("get").is_some() {
        assert!(Instant::now() < end, "the Node was not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_healthz(&health, 503, "the node deleted").await;
    watch.abort();
}
