//! The proxy against the real kernel: rules programmed with `nft` in a throwaway network
//! namespace (see `support`), traffic from a client namespace through service VIPs and
//! node ports to TCP servers standing in for pods. Needs root.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use nodelet_netproxy::Proxier;
use nodelet_netproxy::model::{IpFamily, NodeTopology};
use nodelet_netproxy::nft::RenderConfig;
use nodelet_netproxy::nft::exec::NftCommand;
use nodelet_netproxy::testing::{cluster_ip, ep, service, slice};
use serde_json::json;
use support::{NODE_IP, World};

fn proxier(w: &World) -> Proxier<NftCommand> {
    w.proxier()
}

#[tokio::test]
async fn cluster_ip_load_balances_over_two_endpoints() {
    let mut w = World::new();
    w.endpoint("10.180.0.1", 8080);
    w.endpoint("10.180.0.2", 8080);
    let mut p = proxier(&w);
    p.service_updated(&cluster_ip("ns", "web", "172.30.0.10", "http", 80));
    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.0.1", "node-a"), ep("10.180.0.2", "node-b")],
    ));
    let r = p.sync().await.expect("sync");
    assert!(r.full);

    let counts = w.spread("172.30.0.10", 80, 40);
    assert_eq!(counts.len(), 2, "both endpoints reached: {counts:?}");
    assert!(counts.values().all(|n| *n >= 5), "roughly even: {counts:?}");

    // From the node itself (nat output), too.
    let who = World::connect_from(&w.node, "172.30.0.10", 80).expect("from the node");
    assert!(who.starts_with("10.180.0."), "{who}");

    // A wrong port of a ClusterIP is rejected, not left to time out.
    let t = Instant::now();
    let err = w.connect("172.30.0.10", 81).expect_err("no such port");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(t.elapsed() < Duration::from_secs(1));

    // The live table matches what was programmed: the check finds nothing to repair.
    let r = p.check().await.expect("check");
    assert_eq!(r.repaired, 0, "{}", w.table());
}

#[tokio::test]
async fn node_port_reaches_the_endpoints() {
    let mut w = World::new();
    w.endpoint("10.180.0.3", 8080);
    let mut p = proxier(&w);
    p.service_updated(&service(
        "ns",
        "np",
        json!({
        "type": "NodePort", "clusterIP": "172.30.0.20",
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
        None,
    ));
    p.slice_updated(&slice(
        "ns",
        "np",
        "np-1",
        "http",
        8080,
        &[ep("10.180.0.3", "node-a")],
    ));
    p.sync().await.expect("sync");
    assert_eq!(w.connect(NODE_IP, 30080).expect("node port"), "10.180.0.3");
    assert_eq!(
        w.connect("172.30.0.20", 80).expect("cluster ip"),
        "10.180.0.3"
    );
}

#[tokio::test]
async fn client_ip_affinity_pins_the_client() {
    let mut w = World::new();
    w.endpoint("10.180.0.4", 8080);
    w.endpoint("10.180.0.5", 8080);
    let mut p = proxier(&w);
    p.service_updated(&service(
        "ns",
        "sticky",
        json!({
        "clusterIP": "172.30.0.30", "sessionAffinity": "ClientIP",
        "ports": [{"name": "http", "port": 80}]}),
        None,
    ));
    p.slice_updated(&slice(
        "ns",
        "sticky",
        "sticky-1",
        "http",
        8080,
        &[ep("10.180.0.4", "n"), ep("10.180.0.5", "n")],
    ));
    p.sync().await.expect("sync");
    let counts = w.spread("172.30.0.30", 80, 20);
    assert_eq!(counts.len(), 1, "one endpoint for one client: {counts:?}");
    // The affinity set holds the client.
    assert!(w.table().contains(support::CLIENT_IP), "{}", w.table());
    let r = p.check().await.expect("check");
    assert_eq!(
        r.repaired, 0,
        "affinity elements added by the kernel are not drift"
    );
}

#[tokio::test]
async fn service_without_endpoints_refuses_at_once() {
    let w = World::new();
    let mut p = proxier(&w);
    p.service_updated(&cluster_ip("ns", "empty", "172.30.0.40", "http", 80));
    p.sync().await.expect("sync");
    let t = Instant::now();
    let err = w.connect("172.30.0.40", 80).expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "refused, not timed out: {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn endpoint_removal_is_applied_as_a_diff() {
    let mut w = World::new();
    w.endpoint("10.180.0.6", 8080);
    w.endpoint("10.180.0.7", 8080);
    let mut p = proxier(&w);
    p.service_updated(&cluster_ip("ns", "web", "172.30.0.50", "http", 80));
    p.service_updated(&cluster_ip("ns", "other", "172.30.0.51", "http", 80));
    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.0.6", "n"), ep("10.180.0.7", "n")],
    ));
    p.slice_updated(&slice(
        "ns",
        "other",
        "other-1",
        "http",
        8080,
        &[ep("10.180.0.6", "n")],
    ));
    assert!(p.sync().await.expect("sync").full);
    assert_eq!(w.spread("172.30.0.50", 80, 30).len(), 2);

    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.0.6", "n")],
    ));
    let r = p.sync().await.expect("sync");
    assert!(!r.full);
    assert!(r.netlink_messages > 0, "the diff went over netlink: {r:?}");
    assert_eq!(r.services, 1);
    let counts = w.spread("172.30.0.50", 80, 20);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["10.180.0.6"],
        "{counts:?}"
    );
    assert!(!w.table().contains("10.180.0.7"), "{}", w.table());
    assert_eq!(
        w.connect("172.30.0.51", 80)
            .expect("other service untouched"),
        "10.180.0.6"
    );

    // A service deleted, then drift made by hand: the check repairs it.
    p.service_deleted(&cluster_ip("ns", "other", "172.30.0.51", "http", 80));
    p.sync().await.expect("sync");
    assert!(w.connect("172.30.0.51", 80).is_err());
    let ruleset = w.table();
    // The service port's chain, in the shard table holding it.
    let mut table = "";
    let (table, chain) = ruleset
        .lines()
        .find_map(|l| {
            if let Some(t) = l.strip_prefix("table ip ") {
                table = t.trim_end_matches(" {");
            }
            l.trim()
                .strip_prefix("chain service-")
                .filter(|c| c.contains('/'))
                .map(|c| (table, c.trim_end_matches(" {").to_string()))
        })
        .expect("a service port's chain");
    assert!(table.starts_with("nodelet-"), "{ruleset}");
    support::in_ns(
        &w.node,
        &[
            "nft",
            "flush",
            "chain",
            "ip",
            table,
            &format!("service-{chain}"),
        ],
    );
    support::in_ns(
        &w.node,
        &["nft", "add", "chain", "ip", "nodelet", "endpoint-stray"],
    );
    let r = p.check().await.expect("check");
    assert_eq!(r.repaired, 2);
    assert_eq!(
        w.connect("172.30.0.50", 80).expect("repaired"),
        "10.180.0.6"
    );
    assert!(!w.table().contains("endpoint-stray"));
    assert_eq!(p.check().await.expect("check").repaired, 0);
}

#[tokio::test]
async fn restart_resyncs_over_the_existing_table() {
    let mut w = World::new();
    w.endpoint("10.180.0.8", 8080);
    w.endpoint("10.180.0.9", 8080);
    let mut p = proxier(&w);
    p.service_updated(&cluster_ip("ns", "web", "172.30.0.60", "http", 80));
    p.service_updated(&cluster_ip("ns", "gone", "172.30.0.61", "http", 80));
    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.0.8", "n"), ep("10.180.0.9", "n")],
    ));
    p.slice_updated(&slice(
        "ns",
        "gone",
        "gone-1",
        "http",
        8080,
        &[ep("10.180.0.9", "n")],
    ));
    p.sync().await.expect("sync");
    drop(p);

    // A new process: it knows only what the apiserver says now ("gone" was deleted
    // meanwhile, "web" lost an endpoint), finds the old table and makes it right.
    let mut p = proxier(&w);
    p.service_updated(&cluster_ip("ns", "web", "172.30.0.60", "http", 80));
    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.0.8", "n")],
    ));
    let r = p.sync().await.expect("full sync over the old table");
    assert!(r.full);
    let table = w.table();
    assert!(
        !table.contains("gone") && !table.contains("10.180.0.9"),
        "{table}"
    );
    let counts = w.spread("172.30.0.60", 80, 10);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["10.180.0.8"],
        "{counts:?}"
    );
    assert_eq!(p.check().await.expect("check").repaired, 0);
}

#[tokio::test]
async fn ipv6_ruleset_is_accepted_and_reads_back_clean() {
    let w = World::new();
    let mut cfg = RenderConfig::new(IpFamily::V6);
    cfg.cluster_cidrs = vec!["fd00:10::/64".parse().expect("cidr")];
    cfg.service_cidrs = vec!["fd00:30::/108".parse().expect("cidr")];
    let mut p = Proxier::new(
        NftCommand::new().in_netns(&w.node),
        cfg,
        NodeTopology {
            node_name: "node-a".into(),
            zone: None,
        },
    );
    p.service_updated(&service(
        "ns",
        "v6",
        json!({
        "type": "LoadBalancer", "clusterIP": "fd00:30::10", "clusterIPs": ["fd00:30::10"],
        "ipFamilies": ["IPv6"], "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
        "externalIPs": ["2001:db8::7"], "loadBalancerSourceRanges": ["2001:db8:1::/48"],
        "ports": [{"name": "http", "port": 80, "nodePort": 30600}]}),
        Some(json!({"loadBalancer": {"ingress": [{"ip": "2001:db8::8"}]}})),
    ));
    let slice6: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": "v6-1", "labels": {"kubernetes.io/service-name": "v6"}},
        "addressType": "IPv6",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["fd00:10::1"], "nodeName": "node-a"},
                      {"addresses": ["fd00:10::2"], "nodeName": "node-b"}]
    }))
    .expect("slice");
    p.slice_updated(&slice6);
    p.service_updated(&service(
        "ns",
        "empty6",
        json!({
        "clusterIP": "fd00:30::11", "ports": [{"name": "http", "port": 80}]}),
        None,
    ));
    assert!(p.sync().await.expect("ip6 full sync").full);
    let table = support::in_ns(&w.node, &["nft", "list", "ruleset", "ip6"]);
    assert!(table.contains("dnat to [fd00:10::1]:8080"), "{table}");
    assert!(
        table.contains("fd00:30::11 . tcp . 80 : goto reject-chain"),
        "{table}"
    );
    assert_eq!(p.check().await.expect("check").repaired, 0, "{table}");
}

/// Our tables in the node namespace, sorted.
fn tables(w: &World) -> Vec<String> {
    let out = support::in_ns(&w.node, &["nft", "list", "tables", "ip"]);
    let mut t: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("table ip "))
        .map(str::to_string)
        .collect();
    t.sort();
    t
}

#[tokio::test]
async fn shards_of_another_layout_are_replaced_and_cleanup_removes_every_table() {
    let mut w = World::new();
    w.endpoint("10.180.0.40", 8080);
    // What an unsharded proxy left: one table with the NAT dispatch in it.
    let old = "table ip nodelet {
        map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }
        chain nat-prerouting { type nat hook prerouting priority -100; jump services; }
        chain services { ip daddr . meta l4proto . th dport vmap @service-ips; }
        chain service-old { meta l4proto tcp dnat to 10.180.0.99:8080; }
    }
    add element ip nodelet service-ips { 172.30.0.79 . tcp . 80 : goto service-old }
    ";
    let path = std::env::temp_dir().join(format!("nodelet-old-{}.nft", std::process::id()));
    std::fs::write(&path, old).expect("write");
    support::in_ns(&w.node, &["nft", "-f", path.to_str().expect("path")]);
    let _ = std::fs::remove_file(&path);

    let feed = |p: &mut Proxier<NftCommand>| {
        for i in 0..8 {
            let name = format!("s{i}");
            p.service_updated(&cluster_ip(
                "ns",
                &name,
                &format!("172.30.0.{}", 70 + i),
                "http",
                80,
            ));
            p.slice_updated(&slice(
                "ns",
                &name,
                &format!("{name}-1"),
                "http",
                8080,
                &[ep("10.180.0.40", "n")],
            ));
        }
    };
    let mut p = proxier(&w).with_shards(4);
    feed(&mut p);
    assert!(p.sync().await.expect("sync").full);
    assert_eq!(
        tables(&w),
        [
            "nodelet",
            "nodelet-0",
            "nodelet-1",
            "nodelet-2",
            "nodelet-3"
        ]
    );
    let ruleset = w.table();
    assert!(!ruleset.contains("service-old"), "{ruleset}");
    // Every service answers, whichever shard's NAT chain holds it.
    for i in 0..8 {
        let vip = format!("172.30.0.{}", 70 + i);
        assert_eq!(
            w.connect(&vip, 80).expect("through its shard"),
            "10.180.0.40"
        );
    }
    // The unsharded table's stale dispatch is gone: its address is just refused.
    assert!(w.connect("172.30.0.79", 80).is_err());
    assert_eq!(p.check().await.expect("check").repaired, 0);
    drop(p);

    // A restart with fewer shards drops the others in the same transaction.
    let mut p = proxier(&w).with_shards(2);
    feed(&mut p);
    assert!(p.sync().await.expect("sync").full);
    assert_eq!(tables(&w), ["nodelet", "nodelet-0", "nodelet-1"]);
    for i in 0..8 {
        let vip = format!("172.30.0.{}", 70 + i);
        assert_eq!(
            w.connect(&vip, 80).expect("after resharding"),
            "10.180.0.40"
        );
    }
    assert_eq!(p.check().await.expect("check").repaired, 0);

    let nft = NftCommand::new().in_netns(&w.node);
    let removed = nodelet_netproxy::nft::shard::cleanup(&nft)
        .await
        .expect("cleanup");
    assert_eq!(removed, 3);
    assert!(tables(&w).is_empty());
}
