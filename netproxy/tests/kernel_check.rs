//! The per-table consistency check against the real kernel, in throwaway network
//! namespaces (see `support`): the runner programs a service, a rule of its shard is
//! deleted behind the proxy's back with `nft`, and the check repairs that shard within
//! one round of the tables while incremental syncs of another service keep going at
//! their pace. The per-table read-back (without the family-wide chain dump) sees what
//! `nft -j list table` sees. Needs root.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodelet_netproxy::model::{IpFamily, ServiceName};
use nodelet_netproxy::nft::listing;
use nodelet_netproxy::nft::netlink::{Socket, dump};
use nodelet_netproxy::nft::shard::Layout;
use nodelet_netproxy::runner::{self, Event, Periods};
use nodelet_netproxy::testing::{cluster_ip, ep, slice};
use nodelet_netproxy::{SyncError, SyncReport};
use support::{World, in_ns};
use tokio::sync::mpsc;
use tokio::time::Instant;

const SHARDS: usize = 2;

/// A service name in another shard than `web`'s.
fn other_than_web() -> String {
    let layout = Layout::new(SHARDS);
    let of = |name: &str| {
        layout.shard_of(&ServiceName {
            namespace: "ns".into(),
            name: name.into(),
        })
    };
    (0..100)
        .map(|i| format!("other{i}"))
        .find(|n| of(n) != of("web"))
        .expect("a service in the other shard")
}

/// The service chain of table `table` and the handle of its rule choosing an endpoint.
fn rule_handle(ns: &str, table: &str) -> (String, String) {
    let listed = in_ns(ns, &["nft", "-a", "list", "table", "ip", table]);
    let mut chain = None;
    for line in listed.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("chain ") {
            chain = rest
                .split_whitespace()
                .next()
                .filter(|c| c.starts_with("service-"))
                .map(str::to_string);
        } else if let (Some(c), Some((_, h))) = (&chain, l.rsplit_once("# handle "))
            && l.contains("vmap")
        {
            return (c.clone(), h.trim().to_string());
        }
    }
    panic!("no service chain rule in {table}: {listed}");
}

#[derive(Debug, Clone)]
struct Seen {
    at: Duration,
    full: bool,
    repaired: usize,
    netlink: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_shard_is_repaired_within_a_round_while_syncs_go_on() {
    let mut w = World::new();
    for ip in ["10.180.5.1", "10.180.5.2", "10.180.5.3"] {
        w.endpoint(ip, 8080);
    }
    let mut p = w.proxier().with_shards(SHARDS);
    // Three tables over 3 s: a table read every second.
    let periods = Periods {
        min_sync_period: Duration::from_millis(100),
        sync_period: Duration::from_secs(3),
    };
    let other = other_than_web();
    let (tx, rx) = mpsc::channel(100);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let start = Instant::now();
    let record = seen.clone();
    let runner = tokio::spawn(async move {
        runner::run(
            &mut p,
            rx,
            periods,
            move |r: &Result<SyncReport, SyncError>| {
                let r = r.as_ref().expect("sync or check");
                record.lock().unwrap().push(Seen {
                    at: start.elapsed(),
                    full: r.full,
                    repaired: r.repaired,
                    netlink: r.netlink_messages > 0,
                });
            },
        )
        .await;
    });
    let send = |ev: Event| {
        let tx = tx.clone();
        async move { tx.send(ev).await.expect("runner alive") }
    };
    send(Event::ServiceUpdated(Box::new(cluster_ip(
        "ns",
        "web",
        "172.30.5.1",
        "http",
        80,
    ))))
    .await;
    send(Event::SliceUpdated(Box::new(slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.5.1", "n")],
    ))))
    .await;
    send(Event::ServiceUpdated(Box::new(cluster_ip(
        "ns",
        &other,
        "172.30.5.2",
        "http",
        80,
    ))))
    .await;
    send(Event::InitialListDone).await;
    let client = w.client.clone();
    let connect = move |addr: &'static str| {
        let client = client.clone();
        tokio::task::spawn_blocking(move || World::connect_from(&client, addr, 80))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect("172.30.5.1").await.expect("join").is_err() {
        assert!(Instant::now() < deadline, "never programmed: {}", w.table());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Behind the proxy's back: the rule of web's service chain goes.
    let layout = Layout::new(SHARDS);
    let shard = layout.table_name(layout.shard_of(&ServiceName {
        namespace: "ns".into(),
        name: "web".into(),
    }));
    let (chain, handle) = rule_handle(&w.node, &shard);
    in_ns(
        &w.node,
        &[
            "nft", "delete", "rule", "ip", &shard, &chain, "handle", &handle,
        ],
    );
    let drifted_at = start.elapsed();
    assert!(
        connect("172.30.5.1").await.expect("join").is_err(),
        "the drift breaks the service"
    );

    // Incremental syncs of the other service every 250 ms until the repair (or 10 s).
    let mut i = 0u8;
    let repaired_at = loop {
        let eps = [format!("10.180.5.{}", 2 + i % 2), "10.180.5.9".to_string()];
        send(Event::SliceUpdated(Box::new(slice(
            "ns",
            &other,
            &format!("{other}-1"),
            "http",
            8080,
            &[ep(&eps[0], "n"), ep(&eps[1], "n")],
        ))))
        .await;
        i = i.wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let found = seen
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.at > drifted_at && s.repaired > 0)
            .map(|s| s.at);
        if let Some(at) = found {
            break at;
        }
        assert!(
            start.elapsed() < drifted_at + Duration::from_secs(10),
            "no repair: {:?}",
            seen.lock().unwrap()
        );
    };
    println!(
        "repaired {:?} after the drift; log {:?}",
        repaired_at - drifted_at,
        seen.lock().unwrap()
    );
    // Within one round of the three tables (3 s) and the time of a read.
    assert!(
        repaired_at - drifted_at < periods.sync_period + Duration::from_secs(1),
        "repaired {:?} after the drift",
        repaired_at - drifted_at
    );
    assert_eq!(
        connect("172.30.5.1")
            .await
            .expect("join")
            .expect("repaired"),
        "10.180.5.1"
    );
    // The syncs went on over netlink meanwhile, none more than a second apart, and the
    // repair was no full resync.
    let log = seen.lock().unwrap().clone();
    let syncs: Vec<Duration> = log
        .iter()
        .filter(|s| s.at > drifted_at && s.netlink && s.repaired == 0)
        .map(|s| s.at)
        .collect();
    assert!(syncs.len() >= 2, "{log:?}");
    assert!(
        syncs
            .windows(2)
            .all(|p| p[1] - p[0] < Duration::from_secs(1)),
        "{log:?}"
    );
    assert!(
        log.iter().filter(|s| s.at > drifted_at).all(|s| !s.full),
        "{log:?}"
    );

    drop(tx);
    runner.await.expect("runner");
}

#[tokio::test]
async fn a_table_read_alone_sees_what_nft_lists() {
    let mut w = World::new();
    w.endpoint("10.180.6.1", 8080);
    let mut p = w.proxier().with_shards(SHARDS);
    p.service_updated(&cluster_ip("ns", "web", "172.30.6.1", "http", 80));
    p.slice_updated(&slice(
        "ns",
        "web",
        "web-1",
        "http",
        8080,
        &[ep("10.180.6.1", "n")],
    ));
    p.sync().await.expect("sync");
    let sock = Socket::open_in_netns(&w.node).expect("socket");
    let layout = Layout::new(SHARDS);
    // Every chain we program has rules: no table needs the family-wide chain dump.
    for t in 0..layout.tables() {
        let name = layout.table_name(t);
        let (_, dumped) = dump::observe_one_traced(&sock, IpFamily::V4, &name).expect("read");
        assert!(!dumped, "{name} needed the chain dump");
    }
    // An empty chain of our own making (no rules: only the chain dump names it).
    in_ns(
        &w.node,
        &["nft", "add", "chain", "ip", "nodelet-0", "empty-one"],
    );
    let (_, dumped) = dump::observe_one_traced(&sock, IpFamily::V4, "nodelet-0").expect("read");
    assert!(dumped, "the empty chain is seen through the chain dump");
    for t in 0..layout.tables() {
        let name = layout.table_name(t);
        let one = dump::observe_one(&sock, IpFamily::V4, &name).expect("read one");
        let js = listing::parse(&in_ns(
            &w.node,
            &["nft", "-j", "list", "table", "ip", &name],
        ))
        .expect("json");
        assert_eq!(one.chains, js.chains, "{name}");
        assert_eq!(one.sets, js.sets, "{name}");
        assert_eq!(one.elements, js.elements, "{name}");
    }
    let absent = dump::observe_one(&sock, IpFamily::V4, "nodelet-absent").expect("absent");
    assert!(absent.chains.is_empty() && absent.sets.is_empty());
}
