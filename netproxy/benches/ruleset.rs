//! Proxy figures (printed, never failing on time): render and apply the full ruleset for
//! 1k and 10k services × 10 endpoints into a throwaway network namespace, then one
//! endpoint removed and one service added incrementally, each over nf_tables netlink and
//! through the `nft` binary in the same run (with the ratio), versus a full resync, the
//! consistency check's cost (list + parse + compare), the proxy's RSS and live heap (a
//! counting allocator), the proxier's own CPU per change without the kernel, and how long `nft`
//! takes to read the same table as text and as JSON (`nft -j -f`, the `nftables` crate's
//! format).
//!
//! Each size runs with services in one shard table (the kernel validates every service
//! chain at each commit, as the single table before sharding did) and with the default
//! shards (`nft::shard`), or with the shard counts in `NODELET_BENCH_SHARDS` (`1,16`).
//! `NODELET_BENCH_TEXT=0` skips the `nft -f` increments, `NODELET_BENCH_CHECK=0` the
//! consistency check, `NODELET_BENCH_KERNEL=0` everything but the proxier's own work per
//! change over the recording fake (which needs no root).
//!
//! `cargo bench -p nodelet-netproxy --bench ruleset` (root; `-- 1000` for one size,
//! `-- 1000 10000 30000` for the three).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nodelet_netproxy::Proxier;
use nodelet_netproxy::model::{IpFamily, NodeTopology, Protocol, ServiceName, ServicePortName};
use nodelet_netproxy::nft::RenderConfig;
use nodelet_netproxy::nft::exec::{FakeNetlink, Nft, NftCommand, RecordingNft};
use nodelet_netproxy::nft::netlink::{Batch, Socket};
use nodelet_netproxy::nft::shard::{DEFAULT_SHARDS, Layout};
use nodelet_netproxy::testing::{Ep, cluster_ip, slice};
use nodelet_netproxy::watch::Tombstone;

/// The system allocator, counting the bytes live on the heap (requested sizes, without
/// the allocator's own overhead): the bench prints it beside RSS, whose difference is
/// freed memory the allocator keeps (or its per-block overhead).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with `layout`, as `System.dealloc` needs.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc` is `System.realloc`'s.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / 1048576.0
}

/// What the proxier's service and endpoints maps hold: the heap a clone of them takes.
fn model_mib(p: &Proxier<NftCommand>) -> f64 {
    let before = LIVE.load(Ordering::Relaxed);
    let (services, endpoints) = p.maps();
    let copy = (services.clone(), endpoints.clone());
    let took = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    drop(copy);
    took as f64 / 1048576.0
}

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("nodelet-bench-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add");
        assert!(ok.success(), "ip netns add {name} (the bench needs root)");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip_of(n: usize, base: [u8; 2]) -> String {
    format!(
        "{}.{}.{}.{}",
        base[0],
        base[1] + ((n >> 16) & 0xff) as u8,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

fn endpoints(svc: usize, skip: Option<usize>) -> Vec<String> {
    (0..10)
        .filter(|j| Some(*j) != skip)
        .map(|j| ip_of(svc * 10 + j + 1, [10, 128]))
        .collect()
}

fn feed_slice<N: Nft>(p: &mut Proxier<N>, svc: usize, skip: Option<usize>) {
    let ips = endpoints(svc, skip);
    let eps: Vec<Ep<'_>> = ips
        .iter()
        .map(|ip| Ep {
            ip,
            node: "other",
            ready: true,
            terminating: false,
        })
        .collect();
    let name = format!("svc-{svc}");
    p.slice_updated(&slice(
        "bench",
        &name,
        &format!("{name}-1"),
        "http",
        8080,
        &eps,
    ));
}

fn us(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// CPU time of this thread (`/proc/thread-self/schedstat`, ns) plus that of waited-for
/// children (`/proc/self/stat` cutime + cstime, 10 ms ticks): the kernel's work for a
/// netlink batch runs in our thread, nft's (its table dump included) in the child. On a
/// loaded machine wall times stretch; CPU times do not.
fn cpu() -> Duration {
    let own = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, cutime and cstime fields 16 and 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0);
    Duration::from_nanos(own) + Duration::from_millis(ticks * 10)
}

fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// A `/proc/self/status` memory line in MiB (`VmRSS:`, `RssAnon:`, `RssFile:`).
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// A proxier over `nft` as node `node` (no zone), cluster CIDR 10.128.0.0/9 (the
/// synthetic endpoints), services spread over `shards` tables.
fn bench_proxier<N: Nft>(nft: N, shards: usize) -> Proxier<N> {
    let mut cfg = RenderConfig::new(IpFamily::V4);
    cfg.cluster_cidrs = vec!["10.128.0.0/9".parse().expect("cidr")];
    Proxier::new(
        nft,
        cfg,
        NodeTopology {
            node_name: "node".into(),
            zone: None,
        },
    )
    .with_shards(shards)
}

/// The proxier's own work per change, without the kernel: the same cluster into a proxier
/// over the recording fake (which accepts netlink batches), then 21 changes of each kind,
/// each synced alone; the median CPU time of a sync (model update, rendering, diff and
/// encoding of the batch).
async fn own_work(n: usize, shards: usize) {
    let nft = RecordingNft::default();
    let mut p = bench_proxier(nft.clone(), shards);
    for i in 0..n {
        p.service_updated(&cluster_ip(
            "bench",
            &format!("svc-{i}"),
            &ip_of(i + 1, [172, 30]),
            "http",
            80,
        ));
        feed_slice(&mut p, i, None);
    }
    p.sync().await.expect("full sync");
    *nft.netlink.lock().expect("lock") = FakeNetlink::Accept;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for k in 0..21 {
        nft.calls.lock().expect("lock").clear();
        feed_slice(&mut p, (k * 7919) % n, Some(3));
        let c = cpu();
        let r = p.sync().await.expect("sync");
        removed.push(cpu() - c);
        assert!(!r.full && r.netlink_messages > 0, "{r:?}");
        let svc = n + 100 + k;
        p.service_updated(&cluster_ip(
            "bench",
            &format!("svc-{svc}"),
            &ip_of(svc + 1, [172, 30]),
            "http",
            80,
        ));
        feed_slice(&mut p, svc, None);
        let c = cpu();
        let r = p.sync().await.expect("sync");
        added.push(cpu() - c);
        assert!(!r.full && r.netlink_messages > 0, "{r:?}");
    }
    println!(
        "  the proxier's own work per change (fake kernel, median CPU of 21 syncs): one endpoint removed {}, one service added {}",
        us(median(removed)),
        us(median(added))
    );
}

/// What the watches keep between relists for `n` services × 10 endpoints (one Service
/// and one EndpointSlice each, built as the apiserver sends them): the objects
/// themselves, as they did, or their keys and tombstones (`watch::Tombstone`; a
/// Service's is empty).
fn watch_copies(n: usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut objects = Vec::with_capacity(n);
    for i in 0..n {
        let svc = cluster_ip(
            "bench",
            &format!("svc-{i}"),
            &ip_of(i + 1, [172, 30]),
            "http",
            80,
        );
        let ips = endpoints(i, None);
        let eps: Vec<Ep<'_>> = ips
            .iter()
            .map(|ip| Ep {
                ip,
                node: "other",
                ready: true,
                terminating: false,
            })
            .collect();
        let name = format!("svc-{i}");
        let sl = slice("bench", &name, &format!("{name}-1"), "http", 8080, &eps);
        objects.push((svc, sl));
    }
    let full = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let before = LIVE.load(Ordering::Relaxed);
    // Each kept under its (namespace, name), as the watch's map does.
    let key = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (m.namespace.clone(), m.name.clone())
    };
    let stones: Vec<_> = objects
        .iter()
        .map(|(s, e)| (key(&s.metadata), key(&e.metadata), e.tombstone()))
        .collect();
    let kept = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    drop(objects);
    drop(stones);
    println!(
        "  what the watches keep between relists: the objects {:.1} MiB, their tombstones {:.1} MiB",
        full as f64 / 1048576.0,
        kept as f64 / 1048576.0
    );
}

fn env_on(name: &str, default: bool) -> bool {
    std::env::var(name).map_or(default, |v| v != "0")
}

async fn run(n: usize, shards: usize) {
    let ns = Netns::new(&format!("{n}-{shards}"));
    let nft = NftCommand::new()
        .in_netns(&ns.0)
        .with_timeout(Duration::from_secs(1500));
    let mut p = bench_proxier(nft.clone(), shards);
    let heap0 = live_mib();
    let rss0 = rss_mib();
    let t = Instant::now();
    for i in 0..n {
        p.service_updated(&cluster_ip(
            "bench",
            &format!("svc-{i}"),
            &ip_of(i + 1, [172, 30]),
            "http",
            80,
        ));
        feed_slice(&mut p, i, None);
    }
    let feed = t.elapsed();
    let fed = live_mib() - heap0;
    let full = p.sync().await.expect("full sync");
    println!(
        "{n} services x 10 endpoints, {shards} shard table(s): full sync render {} + apply {} (script {:.1} MiB; feeding the model {})",
        ms(full.render),
        ms(full.apply),
        full.script_bytes as f64 / 1048576.0,
        ms(feed)
    );

    println!(
        "  RSS after the full sync: {:.0} MiB (anonymous {:.0}, file {:.0}; {:.0} MiB before the proxier was fed); live heap {:.0} MiB (the proxier {:.0} MiB: service and endpoints maps {:.0} MiB; the change trackers' pending state before the sync was {:.0} MiB)",
        rss_mib(),
        status_mib("RssAnon:"),
        status_mib("RssFile:"),
        rss0,
        live_mib(),
        live_mib() - heap0,
        model_mib(&p),
        fed
    );

    // Incremental syncs: the same kinds of change over nf_tables netlink (the default)
    // and through the `nft` binary (which first reads the whole table), one run each.
    let mut removed = [Duration::ZERO; 2];
    let mut added = [Duration::ZERO; 2];
    let paths: &[bool] = if env_on("NODELET_BENCH_TEXT", true) {
        &[true, false]
    } else {
        &[true]
    };
    for (i, netlink) in paths.iter().copied().enumerate() {
        nft.set_netlink(netlink);
        let how = if netlink { "netlink" } else { "nft -f" };
        // One endpoint gone from one service.
        feed_slice(&mut p, n / 2 + i, Some(3));
        let t = Instant::now();
        let c = cpu();
        let inc = p.sync().await.expect("incremental sync");
        removed[i] = cpu() - c;
        let wall = t.elapsed();
        assert!(
            !inc.full && (inc.netlink_messages > 0) == netlink,
            "{inc:?}"
        );
        println!(
            "  one endpoint removed, {how}: {} CPU, {} wall (render {}, apply {}, {})",
            ms(removed[i]),
            ms(wall),
            ms(inc.render),
            ms(inc.apply),
            if netlink {
                format!("{} messages", inc.netlink_messages)
            } else {
                format!("script {} bytes", inc.script_bytes)
            }
        );
        // One new service.
        let svc = n + i;
        p.service_updated(&cluster_ip(
            "bench",
            &format!("svc-{svc}"),
            &ip_of(svc + 1, [172, 30]),
            "http",
            80,
        ));
        feed_slice(&mut p, svc, None);
        let t = Instant::now();
        let c = cpu();
        let add = p.sync().await.expect("incremental sync");
        added[i] = cpu() - c;
        assert!(!add.full, "{add:?}");
        println!(
            "  one service added, {how}: {} CPU, {} wall",
            ms(added[i]),
            ms(t.elapsed())
        );
    }
    nft.set_netlink(true);
    println!(
        "  nft -f / netlink (CPU): endpoint removed {:.0}x, service added {:.0}x",
        removed[1].as_secs_f64() / removed[0].as_secs_f64().max(1e-9),
        added[1].as_secs_f64() / added[0].as_secs_f64().max(1e-9)
    );
    kernel_costs(&ns.0, n, Layout::new(shards));

    // The same endpoint change as a full resync (what a non-incremental proxy pays). Above
    // a few thousand services the kernel's cost of the per-service anonymous vmaps grows
    // quadratically (10k: minutes), so there the initial full sync above is the figure.
    if n > 3000 {
        println!(
            "  the same change as a full resync: see the full sync above (skipped: minutes at this size)"
        );
    } else {
        feed_slice(&mut p, n / 2, None);
        feed_slice(&mut p, n / 2 + 1, None);
        p.request_full_sync();
        let t = Instant::now();
        let again = p.sync().await.expect("full resync");
        println!(
            "  the same change as a full resync: {} total (render {} + apply {}; the rest lists the table)",
            ms(t.elapsed()),
            ms(again.render),
            ms(again.apply)
        );
    }

    if !env_on("NODELET_BENCH_CHECK", true) {
        println!("  consistency check: skipped (NODELET_BENCH_CHECK=0)");
        return;
    }
    // The runner's check: one table per turn, read on its own socket (no chain dump).
    let mut slowest = (Duration::ZERO, String::new());
    let mut total = Duration::ZERO;
    for _ in 0..p.tables() {
        let plan = p.plan_check();
        let t = Instant::now();
        let observed = nodelet_netproxy::proxier::observe_planned(nft.clone(), plan.clone())
            .await
            .expect("read one table");
        let read = t.elapsed();
        let r = p
            .finish_check(&plan, &observed)
            .await
            .expect("current")
            .expect("check one table");
        assert_eq!(r.repaired, 0, "{}", plan.name);
        total += t.elapsed();
        if t.elapsed() > slowest.0 {
            slowest = (t.elapsed(), format!("{} (read {})", plan.name, ms(read)));
        }
    }
    println!(
        "  per-table check (the runner's turn): slowest {} {}, all {} tables {}",
        ms(slowest.0),
        slowest.1,
        p.tables(),
        ms(total)
    );
    let t = Instant::now();
    let check = p.check().await.expect("check");
    println!(
        "  consistency check (netlink read-back of every table, compare): {} ({} repaired)",
        ms(t.elapsed()),
        check.repaired
    );
    println!(
        "  RSS after the check: {:.0} MiB; live heap {:.0} MiB",
        rss_mib(),
        live_mib()
    );

    // nft reading the same table as text and as JSON, each into a fresh namespace.
    if n > 3000 {
        return;
    }
    let text = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "list", "ruleset", "ip"])
        .output()
        .expect("nft list");
    // Every table of ours (the namespace holds nothing else).
    let json = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-j", "list", "ruleset", "ip"])
        .output()
        .expect("nft -j list");
    let json = loadable(&String::from_utf8_lossy(&json.stdout));
    for (label, flags, input) in [
        ("text", "-f", text.stdout),
        ("JSON", "-jf", json.into_bytes()),
    ] {
        let fresh = Netns::new(&format!("{n}-{label}"));
        let path =
            std::env::temp_dir().join(format!("nodelet-bench-{}-{n}.{label}", std::process::id()));
        std::fs::write(&path, &input).expect("write listing");
        let t = Instant::now();
        let out = Command::new("ip")
            .args(["netns", "exec", &fresh.0, "nft", flags])
            .arg(&path)
            .output()
            .expect("nft -f");
        let took = t.elapsed();
        let _ = std::fs::remove_file(&path);
        if out.status.success() {
            println!(
                "  nft {flags} of the listed table as {label}: {} ({:.1} MiB)",
                ms(took),
                input.len() as f64 / 1048576.0
            );
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            println!(
                "  nft {flags} of the listed table as {label} failed: {}",
                err.lines().next().unwrap_or("")
            );
        }
    }
}

/// What the kernel alone charges for a netlink batch: one element without a verdict, and
/// one with a `goto` (any jump or goto makes the kernel revalidate every chain reachable
/// from the hooks at commit, which is O(table)).
fn kernel_costs(ns: &str, n: usize, layout: Layout) {
    let sock = Socket::open_in_netns(ns).expect("netlink socket");
    let svc0 = ServiceName {
        namespace: "bench".into(),
        name: "svc-0".into(),
    };
    let table = layout.table_name(layout.shard_of(&svc0));
    let chain = format!(
        "service-{}",
        nodelet_netproxy::nft::chain_base(&ServicePortName {
            namespace: "bench".into(),
            name: "svc-0".into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        })
    );
    let elem = |set: &str, key: &str, v: Option<String>, add: bool| {
        let mut b = Batch::new(IpFamily::V4, &table);
        if add {
            b.add_elements(set, &[(key.to_string(), v)])
                .expect("encode");
        } else {
            b.delete_elements(set, &[key.to_string()]).expect("encode");
        }
        let c = cpu();
        sock.apply(&b).expect("netlink batch");
        cpu() - c
    };
    // A `drop` verdict needs no loop check: it stands for an element without a jump.
    let plain = elem(
        "service-ips",
        "172.99.0.1 . tcp . 80",
        Some("drop".into()),
        true,
    );
    elem("service-ips", "172.99.0.1 . tcp . 80", None, false);
    let key = "172.99.0.1 . tcp . 80";
    let goto = elem("service-ips", key, Some(format!("goto {chain}")), true);
    elem("service-ips", key, None, false);
    // The same element in a table of its own with nothing else: what any commit in this
    // namespace costs (nf_tables_commit walks every chain of every table, see
    // `nft::shard`).
    let probe = "nodelet-bench-probe";
    let made = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            if let Some(mut i) = c.stdin.take() {
                i.write_all(
                    format!("add table ip {probe}\nadd set ip {probe} cluster-ips {{ type ipv4_addr; }}\n")
                        .as_bytes(),
                )?;
            }
            c.wait()
        })
        .expect("nft");
    assert!(made.success(), "probe table");
    let mut b = Batch::new(IpFamily::V4, probe);
    b.add_elements("cluster-ips", &[("10.1.2.3".to_string(), None)])
        .expect("encode");
    let c = cpu();
    sock.apply(&b).expect("probe element");
    let floor = cpu() - c;
    println!(
        "  kernel CPU for one netlink element in {table} ({n} services, ~{} chains in the netns): drop verdict {}, goto {} (table revalidation); a set element in an empty table of the same netns {} (the per-commit walk of every chain)",
        n * 11,
        ms(plain),
        ms(goto),
        ms(floor)
    );
}

/// The JSON listing reordered so `nft -j -f` can load it: the listing puts maps (whose
/// elements jump to chains) before the chains, and rules last is what references need.
fn loadable(listing: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(listing).expect("listing JSON");
    let rank = |i: &serde_json::Value| {
        ["metainfo", "table", "chain", "set", "map", "rule"]
            .iter()
            .position(|k| i.get(k).is_some())
            .unwrap_or(6)
    };
    if let Some(items) = v["nftables"].as_array_mut() {
        items.sort_by_key(rank);
    }
    v.to_string()
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1000, 10_000]
    } else {
        sizes
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let shards: Vec<usize> = std::env::var("NODELET_BENCH_SHARDS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, DEFAULT_SHARDS]);
    for n in sizes {
        for &k in &shards {
            if env_on("NODELET_BENCH_KERNEL", true) {
                rt.block_on(run(n, k));
            }
            rt.block_on(own_work(n, k));
            watch_copies(n);
        }
    }
}
