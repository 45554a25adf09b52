//! The proxier's sync decisions on the recording fake: what a partial sync sends for each
//! kind of change, and what the consistency check repairs.

use serde_json::{Value, json};

use super::fixtures::*;
use super::snapshots::scenario;
use crate::Proxier;
use crate::nft::exec::RecordingNft;

async fn synced() -> Proxier<RecordingNft> {
    let mut p = scenario();
    p.sync().await.expect("full sync");
    p
}

fn last_script(p: &Proxier<RecordingNft>) -> String {
    p.nft().scripts().pop().unwrap_or_default()
}

#[tokio::test]
async fn nothing_changed_sends_nothing() {
    let mut p = synced().await;
    // The same objects again are no change.
    p.service_updated(&cluster_ip("ns1", "svc1", "172.30.0.41", "p80", 80));
    p.slice_updated(&slice(
        "ns1",
        "svc1",
        "svc1-a",
        "p80",
        80,
        &[ep("10.180.0.1", "node-b")],
    ));
    let r = p.sync().await.expect("sync");
    assert_eq!((r.full, r.services, r.script_bytes), (false, 0, 0));
    assert_eq!(p.nft().scripts().len(), 1);
}

#[tokio::test]
async fn deleted_service_removes_its_chains_and_elements_only() {
    let mut p = synced().await;
    p.service_deleted(&cluster_ip("ns1", "svc1", "172.30.0.41", "p80", 80));
    p.sync().await.expect("sync");
    let s = last_script(&p);
    let expected = "\
delete element ip nodelet cluster-ips { 172.30.0.41 }
delete element ip nodelet-0 service-ips { 172.30.0.41 . tcp . 80 }
flush chain ip nodelet-0 service-ULMVA6XW-ns1/svc1/tcp/p80
flush chain ip nodelet-0 endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
flush map ip nodelet-0 vmap-service-ULMVA6XW-ns1/svc1/tcp/p80
delete chain ip nodelet-0 service-ULMVA6XW-ns1/svc1/tcp/p80
delete chain ip nodelet-0 endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
delete map ip nodelet-0 vmap-service-ULMVA6XW-ns1/svc1/tcp/p80
";
    assert_eq!(s, expected);
}

#[tokio::test]
async fn shared_cluster_ip_stays_while_another_port_uses_it() {
    let mut p = synced().await;
    let two_ports = service(
        "ns1",
        "svc1",
        json!({"clusterIP": "172.30.0.41", "ports": [
        {"name": "p80", "port": 80}, {"name": "p81", "port": 81}]}),
        None,
    );
    p.service_updated(&two_ports);
    p.sync().await.expect("sync");
    let s = last_script(&p);
    assert!(!s.contains("cluster-ips"), "the IP was already there:\n{s}");
    assert!(s.contains("add element ip nodelet no-endpoint-services { 172.30.0.41 . tcp . 81 : goto reject-chain }"), "{s}");
    p.service_updated(&cluster_ip("ns1", "svc1", "172.30.0.41", "p80", 80));
    p.sync().await.expect("sync");
    let s = last_script(&p);
    assert!(!s.contains("cluster-ips"), "p80 still uses the IP:\n{s}");
    assert_eq!(
        s,
        "delete element ip nodelet no-endpoint-services { 172.30.0.41 . tcp . 81 }\n"
    );
}

#[tokio::test]
async fn losing_all_endpoints_switches_to_reject() {
    let mut p = synced().await;
    p.slice_deleted(&slice("ns1", "svc1", "svc1-a", "p80", 80, &[]));
    p.sync().await.expect("sync");
    let s = last_script(&p);
    let expected = "\
add element ip nodelet no-endpoint-services { 172.30.0.41 . tcp . 80 : goto reject-chain }
delete element ip nodelet-0 service-ips { 172.30.0.41 . tcp . 80 }
flush chain ip nodelet-0 service-ULMVA6XW-ns1/svc1/tcp/p80
flush chain ip nodelet-0 endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
flush map ip nodelet-0 vmap-service-ULMVA6XW-ns1/svc1/tcp/p80
delete chain ip nodelet-0 service-ULMVA6XW-ns1/svc1/tcp/p80
delete chain ip nodelet-0 endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
delete map ip nodelet-0 vmap-service-ULMVA6XW-ns1/svc1/tcp/p80
";
    assert_eq!(s, expected);
    // And back: chains come first, elements after the rules.
    p.slice_updated(&slice(
        "ns1",
        "svc1",
        "svc1-a",
        "p80",
        80,
        &[ep("10.180.0.1", "node-b")],
    ));
    p.sync().await.expect("sync");
    let s = last_script(&p);
    // The main table's part (the no-endpoint element) comes first, then the shard's.
    assert!(
        s.starts_with("delete element ip nodelet no-endpoint-services"),
        "{s}"
    );
    let lines: Vec<&str> = s.lines().filter(|l| l.contains(" nodelet-0 ")).collect();
    assert!(
        lines[0].starts_with("add chain ip nodelet-0 service-ULMVA6XW"),
        "{s}"
    );
    let last_rule = lines
        .iter()
        .rposition(|l| l.starts_with("add rule"))
        .expect("rules");
    let element = lines
        .iter()
        .position(|l| l.starts_with("add element ip nodelet-0 service-ips"))
        .expect("dispatch element");
    assert!(last_rule < element, "{s}");
}

#[tokio::test]
async fn affinity_timeout_change_replaces_the_sets_after_flushing_users() {
    let mut p = synced().await;
    p.service_updated(&service(
        "ns3",
        "svc3",
        json!({
        "type": "LoadBalancer", "clusterIP": "172.30.0.43",
        "loadBalancerSourceRanges": ["203.0.113.0/25"], "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 120}},
        "ports": [{"name": "p80", "port": 80, "nodePort": 3003}]}),
        Some(json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}})),
    ));
    p.sync().await.expect("sync");
    let s = last_script(&p);
    let flush = s
        .find("flush chain ip nodelet-1 endpoint-UEIP74TE")
        .expect("endpoint chain flushed");
    let del = s
        .find("delete set ip nodelet-1 affinity-UEIP74TE")
        .expect("set replaced");
    let rule = s
        .find("add rule ip nodelet-1 endpoint-UEIP74TE")
        .expect("rules re-added");
    assert!(flush < del && del < rule, "{s}");
    assert!(s.contains("timeout 120s"));
}

/// A listing of what the proxier believes is programmed in every table, as `nft -j`
/// shows it.
fn listing(p: &Proxier<RecordingNft>) -> Value {
    let mut items = vec![json!({"metainfo": {"version": "1.0.6"}})];
    for w in p.programmed() {
        let table = w.name.as_str();
        items.push(json!({"table": {"name": table}}));
        let mut chains: Vec<_> = w.base.chains.iter().collect();
        chains.extend(w.parts.iter().flat_map(|f| f.chains.iter()));
        for c in chains {
            items.push(json!({"chain": {"table": table, "name": c.name}}));
            for _ in &c.rules {
                items.push(json!({"rule": {"table": table, "chain": c.name, "expr": []}}));
            }
        }
        for set in w.parts.iter().flat_map(|f| f.sets.iter()) {
            // Element shapes do not matter for these maps, only their number.
            let elems: Vec<Value> = set
                .elements
                .iter()
                .map(|_| json!([0, {"drop": null}]))
                .collect();
            items.push(json!({set.kind: {"table": table, "name": set.name, "elem": elems}}));
        }
        for set in &w.base.sets {
            let elems: Vec<Value> = w
                .index
                .iter()
                .filter(|(c, _, _)| c.name() == set.name)
                .map(|(_, k, v)| element(k, v))
                .collect();
            items.push(json!({set.kind: {"table": table, "name": set.name, "elem": elems}}));
        }
    }
    json!({"nftables": items})
}

/// An element as `nft -j` lists it.
fn element(k: &str, v: Option<&str>) -> Value {
    let parts: Vec<Value> = k
        .split(" . ")
        .map(|p| {
            p.parse::<u64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(p))
        })
        .collect();
    let key = if parts.len() == 1 {
        parts[0].clone()
    } else {
        json!({"concat": parts})
    };
    match v {
        None => key,
        Some(v) => {
            let verdict = match v.split_once(' ') {
                Some((kind, target)) => json!({kind: {"target": target}}),
                None => json!({v: null}),
            };
            json!([key, verdict])
        }
    }
}

fn set_listing(p: &Proxier<RecordingNft>, v: &Value) {
    set_listing_of(p.nft(), v);
}

fn set_listing_of(nft: &RecordingNft, v: &Value) {
    if let Ok(mut l) = nft.listing.lock() {
        *l = Some(v.to_string());
    }
}

#[tokio::test]
async fn check_without_drift_sends_nothing() {
    let mut p = synced().await;
    set_listing(&p, &listing(&p));
    let r = p.check().await.expect("check");
    assert_eq!(r.repaired, 0);
    assert_eq!(p.nft().scripts().len(), 1);
}

#[tokio::test]
async fn check_repairs_drift() {
    let mut p = synced().await;
    let mut l = listing(&p);
    let items = l["nftables"].as_array_mut().expect("items");
    // A chain lost a rule, another chain vanished, a stranger chain and set appeared, an
    // element was deleted and another changed.
    let pos = items
        .iter()
        .position(|i| {
            i["rule"]["chain"]
                .as_str()
                .is_some_and(|c| c.starts_with("service-ULMVA6XW"))
        })
        .expect("rule");
    items.remove(pos);
    items.retain(|i| {
        !i["chain"]["name"]
            .as_str()
            .is_some_and(|c| c.starts_with("endpoint-SGOXE6O3"))
    });
    items.retain(|i| {
        !i["rule"]["chain"]
            .as_str()
            .is_some_and(|c| c.starts_with("endpoint-SGOXE6O3"))
    });
    items.push(json!({"chain": {"table": "nodelet-1", "name": "endpoint-STRANGER"}}));
    items.push(json!({"set": {"table": "nodelet-1", "name": "affinity-STRANGER"}}));
    for i in items.iter_mut() {
        if i["map"]["name"] == "service-nodeports" && i["map"]["table"] == "nodelet-1" {
            i["map"]["elem"] = json!([[{"concat": ["tcp", 3001]}, {"drop": null}]]);
        }
    }
    set_listing(&p, &l);
    let r = p.check().await.expect("check");
    assert_eq!(r.repaired, 6, "{:?}", p.nft().scripts().last());
    let s = last_script(&p);
    assert!(
        s.contains("flush chain ip nodelet-0 service-ULMVA6XW-ns1/svc1/tcp/p80\n"),
        "{s}"
    );
    assert!(
        s.contains("add chain ip nodelet-1 endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80\n"),
        "{s}"
    );
    assert!(s.contains("add rule ip nodelet-1 endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 meta l4proto tcp dnat to 10.180.0.2:80\n"), "{s}");
    assert!(
        s.contains("delete chain ip nodelet-1 endpoint-STRANGER\n"),
        "{s}"
    );
    assert!(
        s.contains("delete set ip nodelet-1 affinity-STRANGER\n"),
        "{s}"
    );
    assert!(
        s.contains("delete element ip nodelet-1 service-nodeports { tcp . 3001 }\n"),
        "{s}"
    );
    assert!(s.contains("add element ip nodelet-1 service-nodeports { tcp . 3001 : goto external-42NFTM6N-ns2/svc2/tcp/p80, tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }\n")
        || s.contains("add element ip nodelet-1 service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80, tcp . 3001 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }\n"), "{s}");
}

#[tokio::test]
async fn check_with_missing_base_falls_back_to_full_sync() {
    let mut p = synced().await;
    let mut l = listing(&p);
    let items = l["nftables"].as_array_mut().expect("items");
    items.retain(|i| i["chain"]["name"] != "nat-output" && i["rule"]["chain"] != "nat-output");
    set_listing(&p, &l);
    let r = p.check().await.expect("check");
    assert!(r.full);
    let s = last_script(&p);
    assert!(s.starts_with("add table ip nodelet"), "{s}");
    // The second full sync does not recreate the hooked chains again.
    assert!(!s.contains("delete chain ip nodelet-0 nat-output"), "{s}");
}

#[tokio::test]
async fn full_sync_removes_the_shards_of_a_larger_layout_only() {
    let mut p = scenario();
    set_listing(
        &p,
        &json!({"nftables": [{"table": {"name": "nodelet-1"}}, {"table": {"name": "nodelet-2"}},
            {"table": {"name": "nodelet-17"}}, {"table": {"name": "nodelet-x"}}, {"table": {"name": "filter"}}]}),
    );
    assert!(p.sync().await.expect("sync").full);
    let s = last_script(&p);
    assert!(s.contains("delete table ip nodelet-2\n"), "{s}");
    assert!(s.contains("delete table ip nodelet-17\n"), "{s}");
    assert!(!s.contains("delete table ip nodelet-1\n"), "{s}");
    assert!(!s.contains("nodelet-x") && !s.contains("filter\n"), "{s}");
    // Every table of the layout is written, each with its own hooks.
    for t in ["nodelet", "nodelet-0", "nodelet-1"] {
        assert!(s.contains(&format!("add table ip {t} {{")), "{s}");
    }
    assert_eq!(
        s.matches("hook prerouting priority -100;").count(),
        2,
        "{s}"
    );
    assert_eq!(
        s.matches("hook postrouting priority 100;").count(),
        1,
        "{s}"
    );
}

#[tokio::test]
async fn cleanup_removes_every_table_of_ours() {
    let nft = RecordingNft::default();
    set_listing_of(
        &nft,
        &json!({"nftables": [{"table": {"name": "nodelet"}}, {"table": {"name": "nodelet-3"}},
            {"table": {"name": "filter"}}]}),
    );
    let n = crate::nft::shard::cleanup(&nft).await.expect("cleanup");
    // The fake lists the same tables for both families.
    assert_eq!(n, 4);
    assert_eq!(
        nft.scripts(),
        [
            "delete table ip nodelet\ndelete table ip nodelet-3\n",
            "delete table ip6 nodelet\ndelete table ip6 nodelet-3\n"
        ]
    );
}

#[tokio::test]
async fn failed_apply_forces_a_full_sync() {
    let mut p = synced().await;
    p.request_full_sync();
    assert!(p.has_pending());
    let r = p.sync().await.expect("sync");
    assert!(r.full);
}
