//! The stale-entry filter (upstream's `cleanup_test.go` cases), the ctnetlink encoding
//! and parsing, and the proxier calling the cleanup only when UDP services changed.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::json;

use super::netlink::{delete_attrs, parse_flow};
use super::*;
use crate::Proxier;
use crate::model::{EndpointsChangeTracker, NodeTopology, ServiceChangeTracker};
use crate::nft::RenderConfig;
use crate::nft::exec::RecordingNft;
use crate::testing::{cluster_ip, ep, service, slice, udp, udp_slice};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn flow(dst: &str, dport: u16, reply_src: &str) -> Flow {
    Flow {
        proto: IPPROTO_UDP,
        orig_src: ip("192.168.1.2"),
        orig_dst: ip(dst),
        orig_sport: 40000,
        orig_dport: dport,
        reply_src: ip(reply_src),
        zone: 0,
    }
}

fn maps(
    services: &[k8s_openapi::api::core::v1::Service],
    slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
) -> (ServicePortMap, EndpointsMap) {
    let mut st = ServiceChangeTracker::new(IpFamily::V4);
    for s in services {
        st.update(s);
    }
    let mut et = EndpointsChangeTracker::new(IpFamily::V4, "node");
    for s in slices {
        et.update(s);
    }
    let mut sm = ServicePortMap::default();
    sm.apply(&mut st);
    let mut em = EndpointsMap::default();
    em.apply(&mut et);
    (sm, em)
}

#[test]
fn only_entries_of_udp_services_not_going_to_serving_endpoints_are_stale() {
    let svc = udp(service(
        "ns",
        "dns",
        json!({"type": "NodePort", "clusterIP": "172.30.0.10", "externalIPs": ["203.0.113.9"],
               "ports": [{"name": "dns", "port": 53, "nodePort": 30053}]}),
        Some(json!({})),
    ));
    let tcp = cluster_ip("ns", "web", "172.30.0.11", "http", 80);
    let eps = udp_slice(slice(
        "ns",
        "dns",
        "dns-1",
        "dns",
        5353,
        &[ep("10.0.0.1", "node"), ep("10.0.0.2", "node")],
    ));
    let (sm, em) = maps(&[svc, tcp], &[eps]);
    let node_ips: HashSet<IpAddr> = [ip("192.168.1.1")].into();
    let entries = vec![
        flow("172.30.0.10", 53, "10.0.0.1"),    // healthy
        flow("172.30.0.10", 53, "10.0.0.9"),    // endpoint gone
        flow("172.30.0.10", 53, "172.30.0.10"), // made before the service (no DNAT)
        flow("172.30.0.10", 54, "172.30.0.10"), // another port of the VIP: not ours
        flow("203.0.113.9", 53, "10.0.0.7"),    // external IP, endpoint gone
        flow("192.168.1.1", 30053, "10.0.0.2"), // node port, healthy
        flow("192.168.1.1", 30053, "10.0.0.8"), // node port, endpoint gone
        flow("10.0.0.5", 30053, "10.0.0.5"),    // pod-to-pod on the same port number
        flow("172.30.0.11", 80, "172.30.0.11"), // a TCP service's VIP
        flow("8.8.8.8", 53, "8.8.8.8"),         // unrelated
    ];
    let mut tcp_flow = flow("172.30.0.10", 53, "10.0.0.9");
    tcp_flow.proto = 6;
    let mut all = entries.clone();
    all.push(tcp_flow);
    let stale = stale_flows(&all, &sm, &em, &node_ips, &StaleHints::default());
    assert_eq!(
        stale,
        vec![
            entries[1].clone(),
            entries[2].clone(),
            entries[4].clone(),
            entries[6].clone()
        ]
    );
}

#[test]
fn destinations_that_went_away_are_stale_whatever_the_reply() {
    let (sm, em) = maps(&[], &[]);
    let gone = StaleHints {
        destinations: [(ip("172.30.0.10"), 53)].into(),
        node_ports: [30053].into(),
    };
    let node_ips: HashSet<IpAddr> = [ip("192.168.1.1")].into();
    let entries = vec![
        flow("172.30.0.10", 53, "10.0.0.1"),
        flow("172.30.0.10", 80, "10.0.0.1"),
        flow("192.168.1.1", 30053, "10.0.0.1"),
        flow("10.0.0.5", 30053, "10.0.0.5"),
    ];
    let stale = stale_flows(&entries, &sm, &em, &node_ips, &gone);
    assert_eq!(stale, vec![entries[0].clone(), entries[2].clone()]);
}

#[test]
fn service_changes_report_the_destinations_they_drop() {
    let mut st = ServiceChangeTracker::new(IpFamily::V4);
    let mut sm = ServicePortMap::default();
    let v1 = udp(service(
        "ns",
        "dns",
        json!({"type": "NodePort", "clusterIP": "172.30.0.10", "externalIPs": ["203.0.113.9"],
               "ports": [{"name": "dns", "port": 53, "nodePort": 30053}]}),
        None,
    ));
    st.update(&v1);
    assert!(sm.apply(&mut st).stale_udp_destinations.is_empty());
    // The port moves and the external IP goes; the cluster IP stays.
    let v2 = udp(service(
        "ns",
        "dns",
        json!({"type": "NodePort", "clusterIP": "172.30.0.10",
               "ports": [{"name": "dns", "port": 5353, "nodePort": 30053}]}),
        None,
    ));
    st.update(&v2);
    let u = sm.apply(&mut st);
    assert_eq!(
        u.stale_udp_destinations.into_iter().collect::<Vec<_>>(),
        vec![(ip("172.30.0.10"), 53), (ip("203.0.113.9"), 53)]
    );
    assert!(u.stale_udp_node_ports.is_empty());
    st.delete(&v2);
    let u = sm.apply(&mut st);
    assert_eq!(
        u.stale_udp_destinations.into_iter().collect::<Vec<_>>(),
        vec![(ip("172.30.0.10"), 5353)]
    );
    assert_eq!(
        u.stale_udp_node_ports.into_iter().collect::<Vec<_>>(),
        vec![30053]
    );
}

#[test]
fn netlink_delete_message_round_trips_through_the_parser() {
    // The delete carries only the original tuple; a dump message adds the reply tuple.
    let f = Flow {
        zone: 7,
        ..flow("172.30.0.10", 53, "10.0.0.1")
    };
    let attrs = delete_attrs(&f);
    // CTA_TUPLE_ORIG, nested: 4 + (4 + 2*8) + (4 + 8 + 8 + 8) = 52 bytes, then CTA_ZONE.
    assert_eq!(&attrs[..4], &[52, 0, 1, 0x80]);
    assert_eq!(&attrs[52..], &[6, 0, 18, 0, 0, 7, 0, 0]);
    let mut reply = delete_attrs(&Flow {
        orig_src: f.reply_src,
        orig_dst: f.orig_src,
        zone: 0,
        ..f.clone()
    });
    reply[2] = 2; // CTA_TUPLE_REPLY
    let mut msg = attrs.clone();
    msg.extend_from_slice(&reply);
    assert_eq!(parse_flow(&msg), Some(f.clone()));

    let f6 = Flow {
        orig_src: ip("fd00::2"),
        orig_dst: ip("fd00:30::10"),
        reply_src: ip("fd00:10::1"),
        zone: 0,
        ..f
    };
    let mut msg = delete_attrs(&f6);
    let mut reply = delete_attrs(&Flow {
        orig_src: f6.reply_src,
        orig_dst: f6.orig_src,
        ..f6.clone()
    });
    reply[2] = 2;
    msg.extend_from_slice(&reply);
    assert_eq!(parse_flow(&msg), Some(f6));
    assert_eq!(parse_flow(&[1, 2, 3]), None);
}

#[tokio::test]
async fn the_proxier_cleans_after_udp_changes_only() {
    let ct = RecordingConntrack::default();
    ct.insert(flow("172.30.0.10", 53, "10.0.0.1"));
    ct.insert(flow("172.30.0.10", 53, "10.0.0.2"));
    ct.insert(flow("172.30.0.10", 53, "172.30.0.10"));
    let mut p = Proxier::new(
        RecordingNft::default(),
        RenderConfig::new(IpFamily::V4),
        NodeTopology {
            node_name: "node".into(),
            zone: None,
        },
    )
    .with_conntrack(ct.clone());
    let two = |ips: &[&str]| {
        let eps: Vec<_> = ips.iter().map(|i| ep(i, "node")).collect();
        udp_slice(slice("ns", "dns", "dns-1", "dns", 5353, &eps))
    };
    p.service_updated(&udp(cluster_ip("ns", "dns", "172.30.0.10", "dns", 53)));
    p.slice_updated(&two(&["10.0.0.1", "10.0.0.2"]));
    let r = p.sync().await.expect("full sync");
    // The entry made before the service existed goes; those of live endpoints stay.
    assert_eq!(r.conntrack_deleted, 1);
    assert!(r.conntrack_reconcile.is_some(), "the reconciler ran: {r:?}");
    assert_eq!(ct.deleted(), vec![flow("172.30.0.10", 53, "172.30.0.10")]);

    // A TCP change: the table is not even listed.
    let lists = ct.lists();
    p.service_updated(&cluster_ip("ns", "web", "172.30.0.11", "http", 80));
    let r = p.sync().await.expect("tcp sync");
    assert_eq!(ct.lists(), lists);
    assert_eq!(
        r.conntrack_reconcile, None,
        "no reconciler run, no duration"
    );

    // An endpoint removed: exactly its entry goes.
    p.slice_updated(&two(&["10.0.0.1"]));
    let r = p.sync().await.expect("endpoint removed");
    assert_eq!(r.conntrack_deleted, 1);
    assert_eq!(
        ct.deleted().last(),
        Some(&flow("172.30.0.10", 53, "10.0.0.2"))
    );

    // The service deleted: the rest of its entries go.
    p.service_deleted(&udp(cluster_ip("ns", "dns", "172.30.0.10", "dns", 53)));
    let r = p.sync().await.expect("service deleted");
    assert_eq!(r.conntrack_deleted, 1);
    assert_eq!(ct.list_udp(IpFamily::V4).expect("list"), vec![]);
}
