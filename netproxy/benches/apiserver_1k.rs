//! Proxy figures through the real apiserver (printed, never failing on time): a namespace
//! of the bench's own with 1000 selector-less ClusterIP Services (one TCP port, ClusterIP
//! allocated by the apiserver) each with one EndpointSlice of 10 ready endpoints (on
//! other nodes), created through the API 16 at a time; then the proxy started as
//! `nodelet proxy` runs it (`watch::run_proxy`: discovery, list + watch of Services and
//! EndpointSlices, `minSyncPeriod` 1 s, `syncPeriod` 30 s) programming the real kernel
//! inside a network namespace of the bench's own. It prints:
//!
//! - how long the creates took;
//! - the time from the proxy's start to the end of the first sync that has every service
//!   port of the namespace with its 10 endpoints, and that sync's own duration (render,
//!   apply);
//! - with the proxy running, 5 times each: one endpoint removed from a slice (replace
//!   through the API), and one new Service + slice created, each timed from just before
//!   the first API write to the end of the sync that shows it (the network programming
//!   latency `kubeproxy_network_programming_duration_seconds` measures), median and max;
//! - the process's RSS (`VmRSS`, `VmHWM`: the bench's own client and its copies of the
//!   objects included).
//!
//! The namespace is deleted and the network namespace removed at the end, also when the
//! bench panics. No conntrack cleaner is attached (it would act on the host's table; the
//! services are TCP, so it would have nothing to do).
//!
//! With `NODELET_BENCH_KUBE_PROXY` naming an upstream kube-proxy binary, kube-proxy then
//! runs over the same services in nftables mode, makes the same changes, and the bench
//! prints its figures and the ratios (`support/kube_proxy.rs`).
//!
//! `cargo bench -p nodelet-netproxy --bench apiserver_1k` as root with
//! `NODELET_TEST_KUBECONFIG` naming the apiserver tier's admin kubeconfig
//! (`scripts/apiserver.sh start`); `-- N` for N services instead of 1000.

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "support/kube_proxy.rs"]
mod kube_proxy;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::PostParams;
use kube::{Api, Client};
use nodelet_netproxy::model::{IpFamily, NodeTopology};
use nodelet_netproxy::nft::RenderConfig;
use nodelet_netproxy::nft::exec::{Nft, NftCommand};
use nodelet_netproxy::runner::{Observer, Periods};
use nodelet_netproxy::testing::{Ep, slice};
use nodelet_netproxy::{Proxier, SyncError, SyncReport};
use serde_json::json;

/// Endpoints per slice.
const ENDPOINTS: usize = 10;
/// Repeats of each change.
const REPEATS: usize = 5;
/// The bench's slices' manager label (the EndpointSlice controllers leave them alone).
const MANAGED_BY: &str = "nodelet-bench";
/// `nodelet proxy`'s defaults.
const PERIODS: Periods = Periods {
    min_sync_period: Duration::from_secs(1),
    sync_period: Duration::from_secs(30),
};

/// A network namespace of the bench's own, deleted when dropped.
struct Netns(String);

impl Netns {
    fn create() -> Self {
        Self::create_named(&format!("nodelet-bench-{}", std::process::id()))
    }

    fn create_named(name: &str) -> Self {
        let name = name.to_string();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Self(name);
        let _ = Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status();
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The end of a sync that showed what a probe waits for.
#[derive(Debug, Clone, Copy)]
struct Hit {
    at: Instant,
    elapsed: Duration,
    full: bool,
    render: Duration,
    apply: Duration,
}

/// What a probe waits for in the proxier's model after a sync.
enum Want {
    /// Every service port of the namespace (at least `n`) with `ENDPOINTS` ready endpoints.
    All(usize),
    /// Service `name` of the namespace with `ready` ready endpoints.
    Service(String, usize),
}

/// Probes checked after every successful sync; the first sync satisfying one is kept.
#[derive(Default)]
struct Probes {
    pending: Vec<(u64, Want)>,
    hits: BTreeMap<u64, Hit>,
    next: u64,
    syncs: usize,
}

type Shared = Arc<Mutex<Probes>>;

/// The observer of the proxier's syncs that checks the probes.
struct ProbeObserver {
    ns: String,
    probes: Shared,
}

impl<N: Nft> Observer<N> for ProbeObserver {
    fn synced(
        &mut self,
        proxier: &Proxier<N>,
        result: &Result<SyncReport, SyncError>,
        elapsed: Duration,
    ) {
        let at = Instant::now();
        let Ok(report) = result else {
            eprintln!("sync failed: {result:?}");
            return;
        };
        let mut probes = self.probes.lock().unwrap();
        probes.syncs += 1;
        if probes.pending.is_empty() {
            return;
        }
        let (services, endpoints) = proxier.maps();
        let ready = |name| endpoints.get(name).iter().filter(|e| e.ready).count();
        let hit = Hit {
            at,
            elapsed,
            full: report.full,
            render: report.render,
            apply: report.apply,
        };
        let pending = std::mem::take(&mut probes.pending);
        for (id, want) in pending {
            let ok = match &want {
                Want::All(n) => {
                    let ours: Vec<_> = services
                        .iter()
                        .filter(|(name, _)| name.namespace == self.ns)
                        .collect();
                    ours.len() >= *n && ours.iter().all(|(name, _)| ready(name) == ENDPOINTS)
                }
                Want::Service(svc, n) => services
                    .iter()
                    .find(|(name, _)| name.namespace == self.ns && &name.name == svc)
                    .is_some_and(|(name, _)| ready(name) == *n),
            };
            if ok {
                probes.hits.insert(id, hit);
            } else {
                probes.pending.push((id, want));
            }
        }
    }
}

/// Registers a probe; its id.
fn probe(probes: &Shared, want: Want) -> u64 {
    let mut p = probes.lock().unwrap();
    let id = p.next;
    p.next += 1;
    p.pending.push((id, want));
    id
}

/// Waits (`timeout` at most) for probe `id`'s hit.
async fn wait_hit(probes: &Shared, id: u64, timeout: Duration, what: &str) -> Hit {
    let end = Instant::now() + timeout;
    loop {
        if let Some(h) = probes.lock().unwrap().hits.get(&id).copied() {
            return h;
        }
        assert!(
            Instant::now() < end,
            "{what}: no sync showed it in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Endpoint address number `k` (10.180.0.1 …, never .0 or .255).
fn addr(k: usize) -> String {
    format!("10.180.{}.{}", k / 250, k % 250 + 1)
}

/// Service `svc-i` with its slice of `ENDPOINTS` ready endpoints on nodes `node-0..`.
fn objects(ns: &str, i: usize) -> (Service, EndpointSlice) {
    let name = format!("svc-{i}");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .expect("service");
    let ips: Vec<String> = (0..ENDPOINTS).map(|j| addr(i * ENDPOINTS + j)).collect();
    let nodes: Vec<String> = (0..ENDPOINTS).map(|j| format!("node-{j}")).collect();
    let eps: Vec<Ep<'_>> = ips
        .iter()
        .zip(&nodes)
        .map(|(ip, node)| Ep {
            ip,
            node,
            ready: true,
            terminating: false,
        })
        .collect();
    let mut s = slice(ns, &name, &format!("{name}-1"), "http", 8080, &eps);
    s.metadata.labels.get_or_insert_default().insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        MANAGED_BY.into(),
    );
    (svc, s)
}

/// Creates service `i` and its slice.
async fn create(client: &Client, ns: &str, i: usize) {
    let (svc, s) = objects(ns, i);
    let ip = Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service")
        .spec
        .and_then(|s| s.cluster_ip);
    assert!(ip.is_some(), "svc-{i} got no ClusterIP");
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create slice");
}

/// Service `i`'s slice as it is now, less its last endpoint.
async fn one_endpoint_fewer(slices: &Api<EndpointSlice>, i: usize) -> EndpointSlice {
    let mut current = slices.get(&format!("svc-{i}-1")).await.expect("get slice");
    current.endpoints.pop();
    current
}

/// Writes `slice` back (a replace through the API).
async fn replace_slice(slices: &Api<EndpointSlice>, slice: &EndpointSlice) {
    slices
        .replace(
            slice.metadata.name.as_deref().unwrap_or_default(),
            &PostParams::default(),
            slice,
        )
        .await
        .expect("replace slice");
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    kube_proxy::status_kib(std::process::id(), field)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The median of `v`.
fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Median and max of `v`.
fn summary(v: &[Duration]) -> String {
    let max = v.iter().max().copied().unwrap_or_default();
    let median = median(v);
    format!(
        "median {} max {}  (all: {})",
        ms(median),
        ms(max),
        v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
    )
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    assert!(
        nix::unistd::geteuid().is_root(),
        "the bench needs root (a network namespace and nft)"
    );
    let _ = cluster::shared_kubeconfig();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(n));
}

async fn run(n: usize) {
    let client = cluster::client().await;
    let guard =
        cluster::NsGuard::create(&client, &format!("bench-1k-{}", std::process::id())).await;
    let ns = guard.name().to_string();
    let netns = Netns::create();
    println!(
        "apiserver_1k: {n} services × {ENDPOINTS} endpoints in namespace {ns}, proxy programming netns {}",
        netns.0
    );

    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (client, ns) = (client.clone(), ns.clone());
            async move { create(&client, &ns, i).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let created = t.elapsed();
    println!(
        "created {n} services + {n} slices (16 at a time): {} ({:.0} objects/s)",
        ms(created),
        (2 * n) as f64 / created.as_secs_f64()
    );

    // The proxy as `nodelet proxy` runs it, on a client of its own.
    let proxy_client = cluster::client().await;
    let mut cfg = RenderConfig::new(IpFamily::V4);
    cfg.cluster_cidrs = vec!["10.180.0.0/16".parse().expect("cidr")];
    let mut proxier = Proxier::new(
        NftCommand::new().in_netns(&netns.0),
        cfg,
        NodeTopology {
            node_name: "bench-node".into(),
            zone: None,
        },
    );
    let probes: Shared = Arc::default();
    let all = probe(&probes, Want::All(n));
    let observer = ProbeObserver {
        ns: ns.clone(),
        probes: probes.clone(),
    };
    let start = Instant::now();
    let proxy = tokio::spawn(async move {
        nodelet_netproxy::watch::run_proxy(proxy_client, &mut proxier, PERIODS, observer).await
    });
    let first = wait_hit(&probes, all, Duration::from_secs(300), "all services").await;
    println!(
        "start → first sync with all {n} service ports and their endpoints: {} (that sync: {} {}, render {}, apply {}; {} syncs so far)",
        ms(first.at - start),
        ms(first.elapsed),
        if first.full { "full" } else { "partial" },
        ms(first.render),
        ms(first.apply),
        probes.lock().unwrap().syncs,
    );

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let pause = PERIODS.min_sync_period + Duration::from_millis(300);
    let mut removed = Vec::new();
    let mut removed_syncs = Vec::new();
    for i in 0..REPEATS.min(n) {
        tokio::time::sleep(pause).await;
        let fewer = one_endpoint_fewer(&slices, i).await;
        let id = probe(&probes, Want::Service(format!("svc-{i}"), ENDPOINTS - 1));
        let t = Instant::now();
        replace_slice(&slices, &fewer).await;
        let hit = wait_hit(&probes, id, Duration::from_secs(60), "endpoint removed").await;
        removed.push(hit.at - t);
        removed_syncs.push(hit.elapsed);
    }
    println!("one endpoint removed → programmed: {}", summary(&removed));
    println!("  those syncs' own duration: {}", summary(&removed_syncs));

    let mut added = Vec::new();
    let mut added_syncs = Vec::new();
    for k in 0..REPEATS {
        tokio::time::sleep(pause).await;
        let i = n + k;
        let id = probe(&probes, Want::Service(format!("svc-{i}"), ENDPOINTS));
        let t = Instant::now();
        create(&client, &ns, i).await;
        let hit = wait_hit(&probes, id, Duration::from_secs(60), "service added").await;
        added.push(hit.at - t);
        added_syncs.push(hit.elapsed);
    }
    println!(
        "one service + slice added → programmed: {}",
        summary(&added)
    );
    println!("  those syncs' own duration: {}", summary(&added_syncs));

    println!(
        "RSS (bench process: proxy + the bench's client): VmRSS {:.1} MiB, VmHWM {:.1} MiB; {} syncs",
        status_kib("VmRSS:") as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0,
        probes.lock().unwrap().syncs
    );
    let ours = kube_proxy::Ours {
        first: first.at - start,
        first_sync: first.elapsed,
        removed: median(&removed),
        removed_sync: median(&removed_syncs),
        added: median(&added),
        added_sync: median(&added_syncs),
        rss_kib: status_kib("VmRSS:"),
    };
    proxy.abort();
    let _ = proxy.await;
    drop(netns);

    if let Some(bin) = std::env::var_os("NODELET_BENCH_KUBE_PROXY") {
        println!("upstream, same services, same changes:");
        kube_proxy::run(
            std::path::Path::new(&bin),
            &cluster::shared_kubeconfig(),
            &client,
            &ns,
            n,
            n + REPEATS,
            REPEATS,
            pause,
            &ours,
        )
        .await;
    }
    drop(guard);
    println!("cleaned up: namespace {ns} deleted, netns removed");
}
