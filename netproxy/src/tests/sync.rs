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
delete element ip nodelet service-ips { 172.30.0.41 . tcp . 80 }
flush chain ip nodelet service-ULMVA6XW-ns1/svc1/tcp/p80
flush chain ip nodelet endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
flush map ip nodelet vmap-service-ULMVA6XW-ns1/svc1/tcp/p80
delete chain ip nodelet service-ULMVA6XW-ns1/svc1/tcp/p80
delete chain ip nodelet endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
delete map ip nodelet vmap-service-ULMVA6XW-ns1/svc1/tcp/p80
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
delete element ip nodelet service-ips { 172.30.0.41 . tcp . 80 }
add element ip nodelet no-endpoint-services { 172.30.0.41 . tcp . 80 : goto reject-chain }
flush chain ip nodelet service-ULMVA6XW-ns1/svc1/tcp/p80
flush chain ip nodelet endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
flush map ip nodelet vmap-service-ULMVA6XW-ns1/svc1/tcp/p80
delete chain ip nodelet service-ULMVA6XW-ns1/svc1/tcp/p80
delete chain ip nodelet endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
delete map ip nodelet vmap-service-ULMVA6XW-ns1/svc1/tcp/p80
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
    let lines: Vec<&str> = s.lines().collect();
    assert!(
        lines[0].starts_with("add chain ip nodelet service-ULMVA6XW"),
        "{s}"
    );
    let last_rule = lines
        .iter()
        .rposition(|l| l.starts_with("add rule"))
        .expect("rules");
    let element = lines
        .iter()
        .position(|l| l.starts_with("add element ip nodelet service-ips"))
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
        .find("flush chain ip nodelet endpoint-UEIP74TE")
        .expect("endpoint chain flushed");
    let del = s
        .find("delete set ip nodelet affinity-UEIP74TE")
        .expect("set replaced");
    let rule = s
        .find("add rule ip nodelet endpoint-UEIP74TE")
        .expect("rules re-added");
    assert!(flush < del && del < rule, "{s}");
    assert!(s.contains("timeout 120s"));
}

/// A listing of what the proxier believes is programmed, as `nft -j` shows it.
fn listing(p: &Proxier<RecordingNft>) -> Value {
    let (base, fragments, index) = p.programmed();
    let mut items = vec![
        json!({"metainfo": {"version": "1.0.6"}}),
        json!({"table": {"name": "nodelet"}}),
    ];
    let mut chains: Vec<_> = base.chains.iter().collect();
    chains.extend(fragments.values().flat_map(|f| f.chains.iter()));
    for c in chains {
        items.push(json!({"chain": {"name": c.name}}));
        for _ in &c.rules {
            items.push(json!({"rule": {"chain": c.name, "expr": []}}));
        }
    }
    for set in fragments.values().flat_map(|f| f.sets.iter()) {
        // Element shapes do not matter for these maps, only their number.
        let elems: Vec<Value> = set
            .elements
            .iter()
            .map(|_| json!([0, {"drop": null}]))
            .collect();
        items.push(json!({set.kind: {"name": set.name, "elem": elems}}));
    }
    for set in &base.sets {
        let elems: Vec<Value> = index
            .iter()
            .filter(|(c, _, _)| c.name() == set.name)
            .map(|(_, k, v)| {
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
            })
            .collect();
        items.push(json!({set.kind: {"name": set.name, "elem": elems}}));
    }
    json!({"nftables": items})
}

fn set_listing(p: &Proxier<RecordingNft>, v: &Value) {
    if let Ok(mut l) = p.nft().listing.lock() {
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
    items.push(json!({"chain": {"name": "endpoint-STRANGER"}}));
    items.push(json!({"set": {"name": "affinity-STRANGER"}}));
    for i in items.iter_mut() {
        if i["map"]["name"] == "service-nodeports" {
            i["map"]["elem"] = json!([[{"concat": ["tcp", 3001]}, {"drop": null}]]);
        }
    }
    set_listing(&p, &l);
    let r = p.check().await.expect("check");
    assert_eq!(r.repaired, 6, "{:?}", p.nft().scripts().last());
    let s = last_script(&p);
    assert!(
        s.contains("flush chain ip nodelet service-ULMVA6XW-ns1/svc1/tcp/p80\n"),
        "{s}"
    );
    assert!(
        s.contains("add chain ip nodelet endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80\n"),
        "{s}"
    );
    assert!(s.contains("add rule ip nodelet endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80 meta l4proto tcp dnat to 10.180.0.2:80\n"), "{s}");
    assert!(
        s.contains("delete chain ip nodelet endpoint-STRANGER\n"),
        "{s}"
    );
    assert!(
        s.contains("delete set ip nodelet affinity-STRANGER\n"),
        "{s}"
    );
    assert!(
        s.contains("delete element ip nodelet service-nodeports { tcp . 3001 }\n"),
        "{s}"
    );
    assert!(s.contains("add element ip nodelet service-nodeports { tcp . 3001 : goto external-42NFTM6N-ns2/svc2/tcp/p80, tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }\n")
        || s.contains("add element ip nodelet service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80, tcp . 3001 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }\n"), "{s}");
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
    assert!(!s.contains("delete chain ip nodelet nat-output"), "{s}");
}

#[tokio::test]
async fn failed_apply_forces_a_full_sync() {
    let mut p = synced().await;
    p.request_full_sync();
    assert!(p.has_pending());
    let r = p.sync().await.expect("sync");
    assert!(r.full);
}
