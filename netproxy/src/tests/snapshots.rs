//! Snapshot tests: the full ruleset of a small cluster covering every service shape, and
//! the script of an incremental change.

use serde_json::json;

use super::fixtures::*;
use crate::Proxier;
use crate::model::{IpFamily, NodeTopology};
use crate::nft::RenderConfig;
use crate::nft::exec::RecordingNft;

/// Compares `actual` with `snapshots/<name>.nft`, or rewrites it when
/// `NODELET_UPDATE_SNAPSHOTS=1`.
#[allow(clippy::expect_used)]
fn assert_snapshot(name: &str, actual: &str) {
    let path = format!(
        "{}/src/tests/snapshots/{name}.nft",
        env!("CARGO_MANIFEST_DIR")
    );
    if std::env::var_os("NODELET_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .expect("snapshot file (NODELET_UPDATE_SNAPSHOTS=1 creates it)");
    if expected != actual {
        panic!("snapshot {name} differs; expected:\n{expected}\nactual:\n{actual}");
    }
}

/// A proxier on node `node-a`, cluster CIDR 10.0.0.0/8, fed the scenario of upstream's
/// own nftables tests plus affinity, firewall and no-endpoint services.
pub(crate) fn scenario() -> Proxier<RecordingNft> {
    let mut cfg = RenderConfig::new(IpFamily::V4);
    cfg.cluster_cidrs = vec!["10.0.0.0/8".parse().expect("cidr")];
    cfg.service_cidrs = vec!["172.30.0.0/16".parse().expect("cidr")];
    let node = NodeTopology {
        node_name: "node-a".into(),
        zone: None,
    };
    // Two shards: the snapshots show the split (and stay short).
    let mut p = Proxier::new(RecordingNft::default(), cfg, node).with_shards(2);
    p.service_updated(&cluster_ip("ns1", "svc1", "172.30.0.41", "p80", 80));
    p.slice_updated(&slice(
        "ns1",
        "svc1",
        "svc1-a",
        "p80",
        80,
        &[ep("10.180.0.1", "node-b")],
    ));
    // NodePort, external IP, Local external policy, one local endpoint.
    p.service_updated(&service(
        "ns2",
        "svc2",
        json!({
        "type": "NodePort", "clusterIP": "172.30.0.42", "externalIPs": ["192.168.99.22"],
        "externalTrafficPolicy": "Local",
        "ports": [{"name": "p80", "port": 80, "nodePort": 3001}]}),
        None,
    ));
    p.slice_updated(&slice(
        "ns2",
        "svc2",
        "svc2-a",
        "p80",
        80,
        &[ep("10.180.0.2", "node-a")],
    ));
    // LoadBalancer with source ranges and ClientIP affinity, two endpoints.
    p.service_updated(&service(
        "ns3",
        "svc3",
        json!({
        "type": "LoadBalancer", "clusterIP": "172.30.0.43",
        "loadBalancerSourceRanges": ["203.0.113.0/25"], "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
        "ports": [{"name": "p80", "port": 80, "nodePort": 3003}]}),
        Some(json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}})),
    ));
    p.slice_updated(&slice(
        "ns3",
        "svc3",
        "svc3-a",
        "p80",
        80,
        &[ep("10.180.0.3", "node-b"), ep("10.180.0.4", "node-c")],
    ));
    // No endpoints: rejected.
    p.service_updated(&cluster_ip("ns4", "svc4", "172.30.0.44", "p80", 80));
    p
}

#[tokio::test]
async fn full_ruleset_snapshot() {
    let mut p = scenario();
    let r = p.sync().await.expect("sync");
    assert!(r.full);
    assert_eq!(r.services, 4);
    let scripts = p.nft().scripts();
    assert_eq!(scripts.len(), 1);
    assert_snapshot("full", &scripts[0]);
}

#[tokio::test]
async fn endpoint_removal_snapshot() {
    let mut p = scenario();
    p.sync().await.expect("sync");
    p.slice_updated(&slice(
        "ns3",
        "svc3",
        "svc3-a",
        "p80",
        80,
        &[ep("10.180.0.3", "node-b")],
    ));
    let r = p.sync().await.expect("sync");
    assert!(!r.full);
    assert_eq!(r.services, 1);
    let scripts = p.nft().scripts();
    assert_eq!(scripts.len(), 2);
    assert_snapshot("endpoint_removed", &scripts[1]);
}
