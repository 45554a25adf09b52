//! Stale UDP conntrack entries against the real kernel, in throwaway namespaces (see
//! `support`): UDP flows from the client through service VIPs to UDP servers on the
//! node; an endpoint removed takes exactly its entry with it (so the same client socket
//! reaches a live endpoint at once instead of the gone one), another flow's entry to the
//! same endpoint address through another service stays, and a proxy restart with no
//! changes deletes nothing. Needs root.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::net::IpAddr;

use nodelet_netproxy::Proxier;
use nodelet_netproxy::conntrack::netlink::NetlinkConntrack;
use nodelet_netproxy::conntrack::{Conntrack, Flow};
use nodelet_netproxy::model::IpFamily;
use nodelet_netproxy::nft::exec::NftCommand;
use nodelet_netproxy::testing::{cluster_ip, ep, slice, udp, udp_slice};
use support::{World, udp_ask};

fn proxier(w: &World) -> Proxier<NftCommand> {
    w.proxier()
        .with_conntrack(NetlinkConntrack::in_netns(w.node_path()))
}

/// The node's UDP entries towards `vip`.
fn entries_to(w: &World, vip: &str) -> Vec<Flow> {
    let vip: IpAddr = vip.parse().expect("ip");
    NetlinkConntrack::in_netns(w.node_path())
        .list_udp(IpFamily::V4)
        .expect("list conntrack")
        .into_iter()
        .filter(|f| f.orig_dst == vip)
        .collect()
}

/// What the `conntrack` tool sees (an independent reader), when it is installed.
fn conntrack_tool(w: &World) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &w.node, "conntrack", "-L", "-p", "udp"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn removed_udp_endpoint_loses_exactly_its_entries() {
    let mut w = World::new();
    w.udp_endpoint("10.180.0.20", 5353);
    w.udp_endpoint("10.180.0.21", 5353);
    let mut p = proxier(&w);
    let dns = |eps: &[&str]| {
        let eps: Vec<_> = eps.iter().map(|i| ep(i, "node-a")).collect();
        udp_slice(slice("ns", "dns", "dns-1", "dns", 5353, &eps))
    };
    p.service_updated(&udp(cluster_ip("ns", "dns", "172.30.0.70", "dns", 53)));
    p.service_updated(&udp(cluster_ip("ns", "dns2", "172.30.0.71", "dns", 53)));
    p.slice_updated(&dns(&["10.180.0.20", "10.180.0.21"]));
    p.slice_updated(&udp_slice(slice(
        "ns",
        "dns2",
        "dns2-1",
        "dns",
        5353,
        &[ep("10.180.0.20", "node-a"), ep("10.180.0.21", "node-a")],
    )));
    let r = p.sync().await.expect("full sync");
    assert_eq!(r.conntrack_deleted, 0, "nothing stale in a fresh namespace");

    // Client sockets until one flow to each VIP lands on the same endpoint.
    let (mut a, mut b);
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries < 50, "random selection never matched");
        a = w.udp_client();
        b = w.udp_client();
        let via_a = udp_ask(&a, "172.30.0.70", 53).expect("udp via the first VIP");
        let via_b = udp_ask(&b, "172.30.0.71", 53).expect("udp via the second VIP");
        if via_a == via_b {
            break;
        }
        drop((a, b));
    }
    let victim = udp_ask(&a, "172.30.0.70", 53).expect("pinned by conntrack");
    let survivor = if victim == "10.180.0.20" {
        "10.180.0.21"
    } else {
        "10.180.0.20"
    };
    let sport_a = a.local_addr().expect("addr").port();
    let sport_b = b.local_addr().expect("addr").port();
    let ours = |vip: &str, sport: u16| {
        entries_to(&w, vip)
            .into_iter()
            .filter(|f| f.orig_sport == sport)
            .collect::<Vec<_>>()
    };
    assert_eq!(ours("172.30.0.70", sport_a).len(), 1);
    assert_eq!(ours("172.30.0.71", sport_b).len(), 1);
    if let Some(listing) = conntrack_tool(&w) {
        assert!(listing.contains(&format!("sport={sport_a}")), "{listing}");
    }

    // A restart with nothing changed deletes nothing.
    drop(p);
    let mut p = proxier(&w);
    p.service_updated(&udp(cluster_ip("ns", "dns", "172.30.0.70", "dns", 53)));
    p.service_updated(&udp(cluster_ip("ns", "dns2", "172.30.0.71", "dns", 53)));
    p.slice_updated(&dns(&["10.180.0.20", "10.180.0.21"]));
    p.slice_updated(&udp_slice(slice(
        "ns",
        "dns2",
        "dns2-1",
        "dns",
        5353,
        &[ep("10.180.0.20", "node-a"), ep("10.180.0.21", "node-a")],
    )));
    let r = p.sync().await.expect("full sync after restart");
    assert!(r.full);
    assert_eq!(r.conntrack_deleted, 0);
    assert_eq!(ours("172.30.0.70", sport_a).len(), 1);
    assert_eq!(ours("172.30.0.71", sport_b).len(), 1);

    // The endpoint leaves the first service only (its server still answers, so a stale
    // entry would keep sending the client there).
    // Entries of earlier tries count too: every flow of the first VIP to the victim.
    let to_victim = entries_to(&w, "172.30.0.70")
        .into_iter()
        .filter(|f| f.reply_src.to_string() == victim)
        .count();
    let second_vip = entries_to(&w, "172.30.0.71").len();
    p.slice_updated(&dns(&[survivor]));
    let r = p.sync().await.expect("endpoint removed");
    assert!(!r.full);
    assert_eq!(r.conntrack_deleted, to_victim);
    assert!(ours("172.30.0.70", sport_a).is_empty());
    assert!(
        entries_to(&w, "172.30.0.70")
            .iter()
            .all(|f| f.reply_src.to_string() == survivor)
    );
    assert_eq!(entries_to(&w, "172.30.0.71").len(), second_vip);
    let kept = ours("172.30.0.71", sport_b);
    assert_eq!(kept.len(), 1, "the other service's flow stays");
    assert_eq!(kept[0].reply_src.to_string(), victim);
    if let Some(listing) = conntrack_tool(&w) {
        assert!(!listing.contains(&format!("sport={sport_a} ")), "{listing}");
        assert!(listing.contains(&format!("sport={sport_b} ")), "{listing}");
    }
    assert_eq!(
        udp_ask(&a, "172.30.0.70", 53).expect("same socket again"),
        survivor
    );
    assert_eq!(udp_ask(&b, "172.30.0.71", 53).expect("other flow"), victim);

    // The service deleted: its entries go, the other service's stay.
    let left = entries_to(&w, "172.30.0.70").len();
    assert!(left >= 1);
    p.service_deleted(&udp(cluster_ip("ns", "dns", "172.30.0.70", "dns", 53)));
    let r = p.sync().await.expect("service deleted");
    assert_eq!(r.conntrack_deleted, left);
    assert!(entries_to(&w, "172.30.0.70").is_empty());
    assert_eq!(entries_to(&w, "172.30.0.71").len(), second_vip);
    assert_eq!(ours("172.30.0.71", sport_b).len(), 1);
}
