//! Upstream kube-proxy (`--proxy-mode=nftables`) on the same cluster, for `apiserver_1k`'s
//! side-by-side figures: run when `NODELET_BENCH_KUBE_PROXY` names its binary
//! (`NODELET_K8S_PROGRAMS=kube-proxy scripts/build-apiserver.sh` builds it into the
//! apiserver cache's `bin/`).
//!
//! It runs inside a network namespace of the bench's own (it programs the netns it runs
//! in and sets per-netns sysctls there; its `0` conntrack flags leave the host-wide
//! conntrack sysctls alone), as node `bench-node-<pid>`, a Node the bench creates with an
//! InternalIP (without one kube-proxy waits 30 s for it before its first sync) and
//! deletes at the end. The apiserver listens on the host's loopback, so the bench relays
//! the same address inside the netns to it and the admin kubeconfig works unchanged; the
//! metrics port is read from inside the netns the same way.
//!
//! When kube-proxy programmed a change is read from the kernel: `nft monitor rules` in its
//! netns prints each rule as its transaction commits, and a change is programmed when the
//! rule choosing among the service's endpoints (`numgen random mod N`, N the new count)
//! shows up in that service port's chain. (nodelet's own figures come from its sync
//! observer, at the end of the sync: a few hundred µs after the commit.) kube-proxy's
//! metrics (v1.37.2's `pkg/proxy/metrics`, the IPv4 series: it runs its dual-stack
//! metaproxier here, the IPv6 proxier syncing an empty table beside it, as on any node
//! whose kernel has IPv6) say when its first sync ended
//! (`kubeproxy_sync_proxy_rules_last_timestamp_seconds`), how long it took (the full-sync
//! histogram) and how long its syncs around each change took (the mean of the
//! `kubeproxy_sync_proxy_rules_duration_seconds` observations meanwhile). The map of
//! service IPs is read once with `nft` to check the first sync programmed every service.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use nix::sched::{CloneFlags, setns};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Where kube-proxy serves its metrics, inside its netns.
const METRICS: &str = "127.0.0.1:10249";

/// nodelet's figures from the same run, for the ratios.
pub struct Ours {
    pub first: Duration,
    pub first_sync: Duration,
    pub removed: Duration,
    pub removed_sync: Duration,
    pub added: Duration,
    pub added_sync: Duration,
    pub rss_kib: u64,
}

/// Runs `f` on a thread that entered netns `ns`; sockets it makes stay in that netns.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open the netns");
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// Relays connections to `addr` inside netns `ns` to the same address in the bench's.
fn relay(ns: &str, addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = in_netns(ns, move || {
        let l = TcpListener::bind(addr).expect("bind the relay in the netns");
        l.set_nonblocking(true).expect("nonblocking");
        l
    });
    let listener = tokio::net::TcpListener::from_std(listener).expect("relay listener");
    tokio::spawn(async move {
        while let Ok((mut inside, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut host) = tokio::net::TcpStream::connect(addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut host).await;
                }
            });
        }
    })
}

/// The metrics kube-proxy serves, read from inside its netns.
async fn scrape(ns: &str) -> Option<Scrape> {
    let ns = ns.to_string();
    let text = tokio::task::spawn_blocking(move || {
        in_netns(&ns, || -> Option<String> {
            let addr: SocketAddr = METRICS.parse().ok()?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
    })
    .await
    .ok()??;
    // A series of the IPv4 proxier (v1.37 labels the sync metrics by `ip_family`; the
    // IPv6 proxier of its dual-stack metaproxier syncs too, with no services), or an
    // unlabelled one (the change counters and gauges, shared by both).
    let get = |name: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name).is_some_and(|rest| {
                    rest.starts_with(' ')
                        || (rest.starts_with('{') && rest.contains("ip_family=\"IPv4\""))
                })
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let m = |s: &str| format!("kubeproxy_{s}");
    Some(Scrape {
        last: get(&m("sync_proxy_rules_last_timestamp_seconds")),
        full_sum: get(&m("sync_full_proxy_rules_duration_seconds_sum")),
        full_count: get(&m("sync_full_proxy_rules_duration_seconds_count")),
        sum: get(&m("sync_proxy_rules_duration_seconds_sum")),
        count: get(&m("sync_proxy_rules_duration_seconds_count")),
    })
}

/// The metrics the figures come from.
#[derive(Debug, Clone, Copy, Default)]
struct Scrape {
    last: f64,
    full_sum: f64,
    full_count: f64,
    sum: f64,
    count: f64,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Waits until a scrape satisfies `done`; that scrape.
async fn wait_scrape(ns: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let end = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(s) = scrape(ns).await
            && done(&s)
        {
            return s;
        }
        assert!(
            std::time::Instant::now() < end,
            "kube-proxy: {what} not seen in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `nft monitor rules` in a netns: the rules of the endpoint-choosing kind
/// (`numgen`) as they commit, each with when it was read.
struct Monitor {
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    fn start(ns: &str) -> Self {
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", ns, "nft", "monitor", "rules"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start nft monitor");
        let out = child.stdout.take().expect("nft monitor's stdout");
        let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let seen = lines.clone();
        let task = tokio::spawn(async move {
            let _child = child;
            let mut out = BufReader::new(out).lines();
            while let Ok(Some(line)) = out.next_line().await {
                if line.contains("numgen") {
                    seen.lock()
                        .expect("monitor lines")
                        .push((Instant::now(), line));
                }
            }
        });
        Self { lines, task }
    }

    /// How many lines were read so far.
    fn mark(&self) -> usize {
        self.lines.lock().expect("monitor lines").len()
    }

    /// When a line after `mark` showed service `svc` of `ns` choosing among `n` endpoints.
    async fn wait(&self, mark: usize, ns: &str, svc: &str, n: usize) -> Instant {
        let chain = format!("{ns}/{svc}/tcp/http ");
        let rule = format!("numgen random mod {n} ");
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((at, _)) = self.lines.lock().expect("monitor lines")[mark..]
                .iter()
                .find(|(_, l)| l.contains(&chain) && l.contains(&rule))
            {
                return *at;
            }
            assert!(
                Instant::now() < end,
                "kube-proxy: no rule of {chain}with {rule}committed in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The mean duration of the syncs between scrapes `before` and `after`.
fn syncs_between(before: &Scrape, after: &Scrape) -> Duration {
    let n = after.count - before.count;
    Duration::from_secs_f64(if n > 0.0 {
        (after.sum - before.sum) / n
    } else {
        0.0
    })
}

/// A `/proc/<pid>/status` field in KiB (0 when absent).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The kube-proxy process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The ratio line: upstream's figure over ours.
fn ratio(what: &str, theirs: f64, ours: f64, unit: &str) {
    println!(
        "  {what}: kube-proxy {theirs:.1} {unit}, nodelet {ours:.1} {unit} → kube-proxy / nodelet = {:.1}",
        if ours > 0.0 { theirs / ours } else { f64::NAN }
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs kube-proxy `bin` over the namespace `ns` of `n` services and makes the same
/// changes as nodelet's run: an endpoint removed from `svc-0..` and services `svc-{next}..`
/// added, `repeats` of each, a pause of `pause` before each. Prints its figures and the
/// ratios to `ours`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    bin: &Path,
    kubeconfig: &Path,
    client: &Client,
    ns: &str,
    n: usize,
    next: usize,
    repeats: usize,
    pause: Duration,
    ours: &Ours,
) {
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let server = kube::config::Kubeconfig::read_from(kubeconfig)
        .ok()
        .and_then(|k| k.clusters.first()?.cluster.as_ref()?.server.clone())
        .expect("the kubeconfig's server");
    let addr: SocketAddr = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .expect("the apiserver at an IP:port");

    let node = format!("bench-node-{}", std::process::id());
    let nodes: Api<Node> = Api::all(client.clone());
    let obj: Node = serde_json::from_value(json!({
        "metadata": {"name": node},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.255.0.1"}]}
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &obj)
        .await
        .expect("create the bench's Node");
    let _node_guard = NodeGuard(client.clone(), node.clone());

    let netns = crate::Netns::create_named(&format!("nodelet-bench-kp-{}", std::process::id()));
    let relay = relay(&netns.0, addr);
    let log = std::env::temp_dir().join(format!("kube-proxy-bench-{}.log", std::process::id()));
    let out = File::create(&log).expect("kube-proxy log");
    let err = out.try_clone().expect("kube-proxy log");
    let start = unix_now();
    let child = Command::new("ip")
        .args(["netns", "exec", &netns.0])
        .arg(bin)
        .arg("--proxy-mode=nftables")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--hostname-override={node}"))
        .args([
            "--cluster-cidr=10.180.0.0/16",
            "--metrics-bind-address=127.0.0.1:10249",
            "--healthz-bind-address=127.0.0.1:10256",
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--config-sync-period=15m",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("start kube-proxy");
    let pid = child.id();
    let process = Process(child);
    println!(
        "{version} (nftables mode) in netns {}, log {}",
        netns.0,
        log.display()
    );

    let first = wait_scrape(&netns.0, "a first sync", |s| s.last > 0.0).await;
    let elements = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.0,
            "nft",
            "list",
            "map",
            "ip",
            "kube-proxy",
        ])
        .arg("service-ips")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .matches("goto service-")
                .count()
        })
        .unwrap_or(0);
    assert!(
        elements >= n,
        "kube-proxy's first sync programmed {elements} service IPs, fewer than {n} (log: {})",
        log.display()
    );
    let first_at = Duration::from_secs_f64((first.last - start).max(0.0));
    let first_sync = Duration::from_secs_f64(first.full_sum);
    println!(
        "start → first sync with all {n} service ports ({elements} service IPs in its map): {:.1} ms (that sync: {:.1} ms, {} full)",
        ms(first_at),
        ms(first_sync),
        first.full_count
    );

    let monitor = Monitor::start(&netns.0);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let (mut removed, mut removed_syncs) = (Vec::new(), Vec::new());
    for i in 0..repeats.min(n) {
        tokio::time::sleep(pause).await;
        let fewer = crate::one_endpoint_fewer(&slices, i).await;
        let before = scrape(&netns.0).await.expect("metrics");
        let mark = monitor.mark();
        let t = Instant::now();
        crate::replace_slice(&slices, &fewer).await;
        let seen = monitor
            .wait(mark, ns, &format!("svc-{i}"), fewer.endpoints.len())
            .await;
        removed.push(ms(seen - t));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = scrape(&netns.0).await.expect("metrics");
        removed_syncs.push(ms(syncs_between(&before, &after)));
    }
    let (mut added, mut added_syncs) = (Vec::new(), Vec::new());
    for k in 0..repeats {
        tokio::time::sleep(pause).await;
        let before = scrape(&netns.0).await.expect("metrics");
        let mark = monitor.mark();
        let t = Instant::now();
        crate::create(client, ns, next + k).await;
        let seen = monitor
            .wait(mark, ns, &format!("svc-{}", next + k), crate::ENDPOINTS)
            .await;
        added.push(ms(seen - t));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = scrape(&netns.0).await.expect("metrics");
        added_syncs.push(ms(syncs_between(&before, &after)));
    }
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "one endpoint removed → programmed: median {:.1} ms (all: {}); those syncs' own duration: median {:.1} ms",
        median(&removed),
        fmt(&removed),
        median(&removed_syncs)
    );
    println!(
        "one service + slice added → programmed: median {:.1} ms (all: {}); those syncs' own duration: median {:.1} ms",
        median(&added),
        fmt(&added),
        median(&added_syncs)
    );
    let (rss, hwm) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    println!(
        "RSS (kube-proxy process): VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    println!("side by side (one run, same apiserver, same services and changes):");
    ratio(
        "start → all services programmed",
        ms(first_at),
        ms(ours.first),
        "ms",
    );
    ratio("the first sync", ms(first_sync), ms(ours.first_sync), "ms");
    ratio(
        "endpoint removed → programmed (median)",
        median(&removed),
        ms(ours.removed),
        "ms",
    );
    ratio(
        "  its syncs (median of the mean per change)",
        median(&removed_syncs),
        ms(ours.removed_sync),
        "ms",
    );
    ratio(
        "service added → programmed (median)",
        median(&added),
        ms(ours.added),
        "ms",
    );
    ratio(
        "  its syncs (median of the mean per change)",
        median(&added_syncs),
        ms(ours.added_sync),
        "ms",
    );
    ratio(
        "RSS (nodelet's: the whole bench process)",
        rss as f64 / 1024.0,
        ours.rss_kib as f64 / 1024.0,
        "MiB",
    );

    drop(monitor);
    drop(process);
    relay.abort();
    drop(netns);
}

/// The bench's Node, deleted when dropped (also on a panic).
struct NodeGuard(Client, String);

impl Drop for NodeGuard {
    fn drop(&mut self) {
        let (client, name) = (self.0.clone(), self.1.clone());
        crate::cluster::block_on_thread(async move {
            let _ = Api::<Node>::all(client)
                .delete(&name, &DeleteParams::default())
                .await;
        });
    }
}
