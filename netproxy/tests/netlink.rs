//! The netlink path of incremental syncs against the real kernel, in throwaway network
//! namespaces (see `support`): every fragment shape sent over netlink lists exactly as
//! the same fragments sent as `nft -f` text, traffic follows services added and changed
//! over netlink, the consistency check finds no drift, and a rejected batch falls back to
//! a full sync. Needs root.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use nodelet_netproxy::Proxier;
use nodelet_netproxy::model::{IpFamily, NodeTopology};
use nodelet_netproxy::nft::RenderConfig;
use nodelet_netproxy::nft::exec::NftCommand;
use nodelet_netproxy::nft::listing;
use nodelet_netproxy::nft::netlink::{Socket, dump};
use nodelet_netproxy::testing::{cluster_ip, ep, service, slice};
use serde_json::{Value, json};
use support::{NODE_IP, World, in_ns};

fn proxier(ns: &str, cfg: RenderConfig) -> Proxier<NftCommand> {
    Proxier::new(
        NftCommand::new().in_netns(ns),
        cfg,
        NodeTopology {
            node_name: "node-a".into(),
            zone: None,
        },
    )
}

/// A slice with a TCP port `p80` and a UDP port `p53`, endpoints `(ip, node)`.
fn slice2(fam: IpFamily, ns: &str, svc: &str, eps: &[(&str, &str)]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": format!("{svc}-1"),
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": fam.address_type(),
        "ports": [{"name": "p80", "port": 8080, "protocol": "TCP"},
                  {"name": "p53", "port": 5353, "protocol": "UDP"}],
        "endpoints": endpoints
    }))
    .expect("slice")
}

/// Addresses of one family for the scenario.
struct Addrs {
    fam: IpFamily,
    vip: [&'static str; 5],
    ext: &'static str,
    lb: [&'static str; 2],
    ranges: [&'static str; 2],
    eps: [&'static str; 4],
}

const V4: Addrs = Addrs {
    fam: IpFamily::V4,
    vip: [
        "172.30.1.1",
        "172.30.1.2",
        "172.30.1.3",
        "172.30.1.4",
        "172.30.1.5",
    ],
    ext: "192.168.99.22",
    lb: ["5.6.7.8", "5.6.7.9"],
    ranges: ["203.0.113.0/25", "198.51.100.0/24"],
    eps: ["10.180.0.1", "10.180.0.2", "10.180.0.3", "10.190.0.4"],
};

const V6: Addrs = Addrs {
    fam: IpFamily::V6,
    vip: [
        "fd00:30::1",
        "fd00:30::2",
        "fd00:30::3",
        "fd00:30::4",
        "fd00:30::5",
    ],
    ext: "2001:db8::7",
    lb: ["2001:db8::8", "2001:db8::9"],
    ranges: ["2001:db8:1::/48", "2001:db8:2::/63"],
    eps: ["fd00:10::1", "fd00:10::2", "fd00:10::3", "fd00:11::4"],
};

/// Every service shape: ClusterIP over two ports (TCP and UDP), NodePort with an
/// external IP and `externalTrafficPolicy: Local`, LoadBalancer with two source ranges
/// and ClientIP affinity, a service without endpoints, a Local LoadBalancer without local
/// endpoints.
fn feed(p: &mut Proxier<NftCommand>, a: &Addrs) {
    let fams = json!([a.fam.address_type()]);
    let ports = json!([{"name": "p80", "port": 80, "protocol": "TCP"},
                       {"name": "p53", "port": 53, "protocol": "UDP"}]);
    p.service_updated(&service(
        "ns",
        "plain",
        json!({"clusterIP": a.vip[0], "clusterIPs": [a.vip[0]], "ipFamilies": fams, "ports": ports}),
        None,
    ));
    p.slice_updated(&slice2(
        a.fam,
        "ns",
        "plain",
        &[(a.eps[0], "node-a"), (a.eps[1], "node-b")],
    ));
    p.service_updated(&service(
        "ns",
        "np",
        json!({"type": "NodePort", "clusterIP": a.vip[1], "clusterIPs": [a.vip[1]],
               "ipFamilies": fams, "externalIPs": [a.ext], "externalTrafficPolicy": "Local",
               "ports": [{"name": "p80", "port": 80, "nodePort": 30080}]}),
        None,
    ));
    p.slice_updated(&slice2(a.fam, "ns", "np", &[(a.eps[2], "node-a")]));
    p.service_updated(&service(
        "ns",
        "lb",
        json!({"type": "LoadBalancer", "clusterIP": a.vip[2], "clusterIPs": [a.vip[2]],
               "ipFamilies": fams, "loadBalancerSourceRanges": a.ranges,
               "sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
               "ports": [{"name": "p80", "port": 80, "nodePort": 30081},
                         {"name": "p53", "port": 53, "protocol": "UDP", "nodePort": 30082}]}),
        Some(json!({"loadBalancer": {"ingress": [{"ip": a.lb[0]}]}})),
    ));
    p.slice_updated(&slice2(
        a.fam,
        "ns",
        "lb",
        &[(a.eps[0], "node-b"), (a.eps[3], "node-c")],
    ));
    p.service_updated(&service(
        "ns",
        "empty",
        json!({"clusterIP": a.vip[3], "clusterIPs": [a.vip[3]], "ipFamilies": fams,
               "ports": [{"name": "p80", "port": 80}]}),
        None,
    ));
    p.service_updated(&service(
        "ns",
        "remote",
        json!({"type": "LoadBalancer", "clusterIP": a.vip[4], "clusterIPs": [a.vip[4]],
               "ipFamilies": fams, "externalTrafficPolicy": "Local",
               "loadBalancerSourceRanges": [a.ranges[0]],
               "ports": [{"name": "p80", "port": 80, "nodePort": 30083}]}),
        Some(json!({"loadBalancer": {"ingress": [{"ip": a.lb[1]}]}})),
    ));
    p.slice_updated(&slice2(a.fam, "ns", "remote", &[(a.eps[1], "node-b")]));
}

/// Changes after the first sync: an endpoint gone, a service gone, affinity dropped.
fn change(p: &mut Proxier<NftCommand>, a: &Addrs) {
    p.slice_updated(&slice2(a.fam, "ns", "lb", &[(a.eps[3], "node-c")]));
    p.service_deleted(&cluster_ip("ns", "empty", a.vip[3], "p80", 80));
    p.slice_updated(&slice2(a.fam, "ns", "plain", &[(a.eps[1], "node-b")]));
}

/// Removes `handle` keys everywhere and sorts set elements (hash order differs between
/// tables).
fn normalise(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("handle");
            for (k, x) in o.iter_mut() {
                normalise(x);
                if k == "elem"
                    && let Value::Array(items) = x
                {
                    items.sort_by_key(ToString::to_string);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// `nft -j list ruleset` of the family (the namespace holds only our tables: the main
/// one and the shards) as a map: `chain/TABLE/NAME`, `set/TABLE/NAME`,
/// `rule/TABLE/CHAIN/N` (rules keep their order) → normalised object.
fn listing(ns: &str, fam: IpFamily) -> BTreeMap<String, Value> {
    let ip = if fam == IpFamily::V4 { "ip" } else { "ip6" };
    let out = in_ns(ns, &["nft", "-j", "list", "ruleset", ip]);
    let v: Value = serde_json::from_str(&out).expect("listing JSON");
    let mut map = BTreeMap::new();
    let mut positions: BTreeMap<String, usize> = BTreeMap::new();
    for mut item in v["nftables"].as_array().cloned().unwrap_or_default() {
        normalise(&mut item);
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let key = match kind.as_str() {
            "metainfo" => continue,
            "rule" => {
                let chain = format!(
                    "{}/{}",
                    body["table"].as_str().unwrap_or(""),
                    body["chain"].as_str().unwrap_or("")
                );
                let n = positions.entry(chain.clone()).or_insert(0);
                *n += 1;
                format!("rule/{chain}/{n}")
            }
            "table" => format!("table/{}", body["name"].as_str().unwrap_or("")),
            _ => format!(
                "{kind}/{}/{}",
                body["table"].as_str().unwrap_or(""),
                body["name"].as_str().unwrap_or("")
            ),
        };
        map.insert(key, item.clone());
    }
    map
}

/// `nft -t list ruleset` of the family (sets without their elements) as its chain and
/// set blocks, each under its table's name, sorted: the text shows what JSON does not,
/// such as a map's `typeof` key.
fn terse(ns: &str, fam: IpFamily) -> Vec<String> {
    let ip = if fam == IpFamily::V4 { "ip" } else { "ip6" };
    let out = in_ns(ns, &["nft", "-t", "list", "ruleset", ip]);
    let mut blocks = Vec::new();
    let mut cur = String::new();
    let mut table = String::new();
    for line in out.lines() {
        if line.starts_with("table ") {
            table = line.to_string();
        }
        let opens = line.starts_with('\t') && !line.starts_with("\t\t") && line != "\t}";
        if opens && !cur.is_empty() {
            blocks.push(std::mem::take(&mut cur));
        }
        if opens {
            cur.push_str(&table);
            cur.push('\n');
        }
        cur.push_str(line);
        cur.push('\n');
    }
    blocks.push(cur);
    blocks.sort();
    blocks
}

fn assert_same(netlink: &BTreeMap<String, Value>, text: &BTreeMap<String, Value>) {
    let mut diffs = Vec::new();
    for k in netlink.keys().chain(text.keys()) {
        if netlink.get(k) != text.get(k) && !diffs.contains(k) {
            diffs.push(k.clone());
        }
    }
    assert!(
        diffs.is_empty(),
        "listings differ:\n{}",
        diffs
            .iter()
            .map(|k| format!(
                "{k}\n  netlink: {}\n  text:    {}",
                netlink.get(k).map(ToString::to_string).unwrap_or_default(),
                text.get(k).map(ToString::to_string).unwrap_or_default()
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(netlink.len() > 20, "a real table was compared: {netlink:?}");
}

/// Every table of ours read back over netlink (what the consistency check compares) is
/// what `nft -j list table` shows: chains and rule counts, sets and maps, the dispatch
/// elements (keys and verdicts), the sizes of the endpoint maps.
fn read_back_matches_the_listing(ns: &str, fam: IpFamily) {
    let ip = if fam == IpFamily::V4 { "ip" } else { "ip6" };
    let sock = Socket::open_in_netns(ns).expect("socket");
    let tables = in_ns(ns, &["nft", "list", "tables", ip]);
    let tables: Vec<&str> = tables
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(tables.len() > 2, "{tables:?}");
    let mut elements = 0;
    for t in tables {
        let nl = dump::observe(&sock, fam, t).expect("read back");
        let js = listing::parse(&in_ns(ns, &["nft", "-j", "list", "table", ip, t])).expect("json");
        assert_eq!(nl.chains, js.chains, "{t}");
        assert_eq!(nl.sets, js.sets, "{t}");
        assert_eq!(nl.maps, js.maps, "{t}");
        assert_eq!(nl.elements, js.elements, "{t}");
        for (set, n) in &nl.set_sizes {
            assert_eq!(js.set_sizes.get(set), Some(n), "{t} {set}");
        }
        elements += nl.elements.values().map(|m| m.len()).sum::<usize>();
    }
    assert!(elements > 5, "dispatch elements were compared");
    // A table that is not there reads as empty.
    let none = dump::observe(&sock, fam, "nodelet-absent").expect("absent table");
    assert!(none.chains.is_empty() && none.sets.is_empty());
}

/// Builds the scenario in two namespaces, through netlink (incremental syncs after an
/// empty start) and as text (a full sync, then `nft -f` increments), and compares the
/// listings after the first sync and after a round of changes.
async fn same_both_ways(a: &Addrs, cfg: RenderConfig) {
    let w1 = World::new();
    let w2 = World::new();
    let mut nl = proxier(&w1.node, cfg.clone());
    assert!(nl.sync().await.expect("empty full sync").full);
    feed(&mut nl, a);
    let r = nl.sync().await.expect("netlink sync");
    assert!(!r.full && r.netlink_messages > 0, "{r:?}");

    let mut text = proxier(&w2.node, cfg);
    text.nft().set_netlink(false);
    feed(&mut text, a);
    assert!(text.sync().await.expect("text sync").full);
    assert_same(&listing(&w1.node, a.fam), &listing(&w2.node, a.fam));
    assert_eq!(terse(&w1.node, a.fam), terse(&w2.node, a.fam));
    read_back_matches_the_listing(&w1.node, a.fam);
    assert_eq!(nl.check().await.expect("check").repaired, 0);

    change(&mut nl, a);
    change(&mut text, a);
    let r = nl.sync().await.expect("netlink change");
    assert!(!r.full && r.netlink_messages > 0, "{r:?}");
    let r = text.sync().await.expect("text change");
    assert!(!r.full && r.netlink_messages == 0, "{r:?}");
    assert_same(&listing(&w1.node, a.fam), &listing(&w2.node, a.fam));
    assert_eq!(terse(&w1.node, a.fam), terse(&w2.node, a.fam));
    assert_eq!(nl.check().await.expect("check").repaired, 0);
    assert_eq!(text.check().await.expect("check").repaired, 0);
}

#[tokio::test]
async fn ipv4_shapes_list_the_same_through_netlink_and_text() {
    // A cluster CIDR off the byte boundary (masked compare), the node inside a source
    // range (the VIPs join the firewall's set).
    let mut cfg = RenderConfig::new(IpFamily::V4);
    cfg.cluster_cidrs = vec!["10.128.0.0/9".parse().expect("cidr")];
    cfg.service_cidrs = vec!["172.30.0.0/16".parse().expect("cidr")];
    cfg.node_ip = Some("203.0.113.5".parse().expect("ip"));
    same_both_ways(&V4, cfg).await;
}

#[tokio::test]
async fn ipv4_two_cluster_cidrs_list_the_same_through_netlink_and_text() {
    // Two cluster CIDRs: `ip saddr != { a, b }` as an anonymous interval set.
    let mut cfg = RenderConfig::new(IpFamily::V4);
    cfg.cluster_cidrs = vec![
        "10.180.0.0/16".parse().expect("cidr"),
        "10.190.0.0/16".parse().expect("cidr"),
    ];
    same_both_ways(&V4, cfg).await;
}

#[tokio::test]
async fn ipv4_masquerade_all_lists_the_same_through_netlink_and_text() {
    let mut cfg = RenderConfig::new(IpFamily::V4);
    cfg.masquerade_all = true;
    same_both_ways(&V4, cfg).await;
}

#[tokio::test]
async fn ipv6_shapes_list_the_same_through_netlink_and_text() {
    let mut cfg = RenderConfig::new(IpFamily::V6);
    cfg.cluster_cidrs = vec![
        "fd00:10::/64".parse().expect("cidr"),
        "fd00:11::/63".parse().expect("cidr"),
    ];
    cfg.service_cidrs = vec!["fd00:30::/108".parse().expect("cidr")];
    same_both_ways(&V6, cfg).await;
    let mut cfg = RenderConfig::new(IpFamily::V6);
    cfg.cluster_cidrs = vec!["fd00:10::/60".parse().expect("cidr")];
    same_both_ways(&V6, cfg).await;
}

fn v4_cfg() -> RenderConfig {
    let mut cfg = RenderConfig::new(IpFamily::V4);
    cfg.cluster_cidrs = vec!["10.180.0.0/16".parse().expect("cidr")];
    cfg.service_cidrs = vec!["172.30.0.0/16".parse().expect("cidr")];
    cfg
}

#[tokio::test]
async fn services_added_over_netlink_carry_traffic() {
    let mut w = World::new();
    for ip in ["10.180.1.1", "10.180.1.2", "10.180.1.3"] {
        w.endpoint(ip, 8080);
    }
    let mut p = proxier(&w.node, v4_cfg());
    assert!(p.sync().await.expect("empty start").full);

    // ClusterIP over two endpoints, a NodePort, ClientIP affinity: all incremental.
    p.service_updated(&cluster_ip("ns", "web", "172.30.2.1", "http", 80));
    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.1.1", "node-a"), ep("10.180.1.2", "node-b")],
    ));
    p.service_updated(&service(
        "ns",
        "np",
        json!({"type": "NodePort", "clusterIP": "172.30.2.2",
               "ports": [{"name": "http", "port": 80, "nodePort": 30090}]}),
        None,
    ));
    p.slice_updated(&slice(
        "ns",
        "np",
        "np-1",
        "http",
        8080,
        &[ep("10.180.1.3", "node-a")],
    ));
    p.service_updated(&service(
        "ns",
        "sticky",
        json!({"clusterIP": "172.30.2.3", "sessionAffinity": "ClientIP",
               "ports": [{"name": "http", "port": 80}]}),
        None,
    ));
    p.slice_updated(&slice(
        "ns",
        "sticky",
        "sticky-1",
        "http",
        8080,
        &[ep("10.180.1.1", "n"), ep("10.180.1.2", "n")],
    ));
    let r = p.sync().await.expect("netlink sync");
    assert!(!r.full && r.netlink_messages > 0, "{r:?}");

    let counts = w.spread("172.30.2.1", 80, 40);
    assert_eq!(counts.len(), 2, "both endpoints reached: {counts:?}");
    assert!(counts.values().all(|n| *n >= 5), "roughly even: {counts:?}");
    assert_eq!(w.connect(NODE_IP, 30090).expect("node port"), "10.180.1.3");
    let sticky = w.spread("172.30.2.3", 80, 20);
    assert_eq!(sticky.len(), 1, "one endpoint for one client: {sticky:?}");
    assert_eq!(p.check().await.expect("check").repaired, 0, "{}", w.table());

    // An endpoint removed over netlink: new connections avoid it.
    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.1.2", "node-b")],
    ));
    let r = p.sync().await.expect("netlink change");
    assert!(!r.full && r.netlink_messages > 0, "{r:?}");
    let counts = w.spread("172.30.2.1", 80, 10);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["10.180.1.2"],
        "{counts:?}"
    );
    assert_eq!(p.check().await.expect("check").repaired, 0);
}

#[tokio::test]
async fn rejected_netlink_batch_falls_back_to_a_full_sync() {
    let mut w = World::new();
    w.endpoint("10.180.2.1", 8080);
    w.endpoint("10.180.2.2", 8080);
    let mut p = proxier(&w.node, v4_cfg());
    p.service_updated(&cluster_ip("ns", "web", "172.30.3.1", "http", 80));
    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.2.1", "n"), ep("10.180.2.2", "n")],
    ));
    assert!(p.sync().await.expect("sync").full);

    // Someone removes our table: the next batch flushes a chain that is not there.
    in_ns(&w.node, &["nft", "flush", "ruleset", "ip"]);
    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.2.2", "n")],
    ));
    let r = p.sync().await.expect("fallback");
    assert!(r.full && r.fell_back, "{r:?}");
    assert_eq!(w.connect("172.30.3.1", 80).expect("rebuilt"), "10.180.2.2");
    assert_eq!(p.check().await.expect("check").repaired, 0);

    // And the next change goes over netlink again.
    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.2.1", "n")],
    ));
    let r = p.sync().await.expect("netlink again");
    assert!(!r.full && r.netlink_messages > 0, "{r:?}");
    assert_eq!(w.connect("172.30.3.1", 80).expect("changed"), "10.180.2.1");
}
