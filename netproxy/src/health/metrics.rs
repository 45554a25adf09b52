//! The proxy's Prometheus metrics: those v1.37's `pkg/proxy/metrics` registers in
//! nftables mode, with upstream's names, types, labels, buckets and help texts, rendered in
//! the text exposition format by hand (a handful of series do not need a registry crate).
//! As upstream, the sync durations and timestamps, the network programming latency, the
//! nftables sync and cleanup failures, the conntrack reconciler's duration and deletions
//! and the no-local-endpoints gauges carry an `ip_family` label (`IPv4`, `IPv6`: one
//! series per proxier, present once that proxier set it); the change counters and the
//! pending-change gauges do not (the gauges add up the proxiers' pending changes, which
//! for one proxier is upstream's value; upstream's dual-stack proxiers overwrite each
//! other's).
//!
//! Not here: the alpha `KubeProxyNFTablesLocalhostNodePorts` gate's metrics (off by
//! default upstream, and the gate's localhost node-port proxy is not implemented).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::model::IpFamily;

/// A cumulative histogram.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Self {
        Self {
            counts: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// The series of one label set (`labels`: `key="value",` items, or empty).
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let bare = labels.trim_end_matches(',');
        let braces = if bare.is_empty() {
            String::new()
        } else {
            format!("{{{bare}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// One histogram per IP family, created at its first observation.
#[derive(Debug, Clone)]
struct FamilyHistograms {
    bounds: fn() -> Vec<f64>,
    by_family: BTreeMap<IpFamily, Histogram>,
}

impl FamilyHistograms {
    fn new(bounds: fn() -> Vec<f64>) -> Self {
        Self {
            bounds,
            by_family: BTreeMap::new(),
        }
    }

    fn observe(&mut self, family: IpFamily, v: f64) {
        let bounds = self.bounds;
        self.by_family
            .entry(family)
            .or_insert_with(|| Histogram::new(bounds()))
            .observe(v);
    }

    /// Nothing before the first observation (client_golang writes no family without
    /// series).
    fn render(&self, out: &mut String, name: &str, help: &str) {
        if self.by_family.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} [ALPHA] {help}\n# TYPE {name} histogram");
        for (family, h) in &self.by_family {
            h.render_series(out, name, &family_label(*family));
        }
    }
}

/// `ip_family="IPv4",` (upstream's label values are `v1.IPFamily`).
fn family_label(family: IpFamily) -> String {
    format!("ip_family=\"{}\",", family.address_type())
}

/// Upstream's `ExponentialBuckets(0.001, 2, 15)` of the sync durations.
fn sync_buckets() -> Vec<f64> {
    (0..15).map(|i| 0.001 * f64::from(1u32 << i)).collect()
}

/// Upstream's network-programming buckets: 0.25 s steps to 0.5 s, 1 s steps to 59 s,
/// 5 s steps to 115 s, 30 s steps to 300 s.
fn programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b
}

#[derive(Debug)]
struct Inner {
    sync: FamilyHistograms,
    sync_full: FamilyHistograms,
    sync_partial: FamilyHistograms,
    programming: FamilyHistograms,
    last_sync: BTreeMap<IpFamily, f64>,
    last_queued: BTreeMap<IpFamily, f64>,
    sync_failures: BTreeMap<IpFamily, u64>,
    cleanup_failures: BTreeMap<IpFamily, u64>,
    endpoint_changes: u64,
    service_changes: u64,
    /// Per proxier: (services, endpoint changes) waiting for a sync.
    pending: BTreeMap<IpFamily, (usize, usize)>,
    /// Per proxier: service ports with (internal, external) Local policy and no local
    /// endpoint, as of its last successful sync.
    no_local: BTreeMap<IpFamily, (usize, usize)>,
    conntrack_sync: FamilyHistograms,
    conntrack_deleted: BTreeMap<IpFamily, u64>,
    healthz: BTreeMap<u16, u64>,
    livez: BTreeMap<u16, u64>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            sync: FamilyHistograms::new(sync_buckets),
            sync_full: FamilyHistograms::new(sync_buckets),
            sync_partial: FamilyHistograms::new(sync_buckets),
            programming: FamilyHistograms::new(programming_buckets),
            last_sync: BTreeMap::new(),
            last_queued: BTreeMap::new(),
            sync_failures: BTreeMap::new(),
            cleanup_failures: BTreeMap::new(),
            endpoint_changes: 0,
            service_changes: 0,
            pending: BTreeMap::new(),
            no_local: BTreeMap::new(),
            conntrack_sync: FamilyHistograms::new(sync_buckets),
            conntrack_deleted: BTreeMap::new(),
            healthz: BTreeMap::new(),
            livez: BTreeMap::new(),
        }
    }
}

/// The metrics, shared by the sync loops and the server. Help texts carry component-base's
/// `[ALPHA]` stability prefix, as upstream's exposition does; label pairs are in name
/// order, as client_golang writes them.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        match self.inner.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// `family`'s sync (or consistency check) finished successfully after `seconds`.
    pub fn synced(&self, family: IpFamily, full: bool, seconds: f64) {
        let now = unix_seconds(SystemTime::now());
        self.with(|m| {
            m.sync.observe(family, seconds);
            if full {
                m.sync_full.observe(family, seconds);
            } else {
                m.sync_partial.observe(family, seconds);
            }
            m.last_sync.insert(family, now);
        });
    }

    /// A sync failed.
    pub fn sync_failed(&self, family: IpFamily) {
        self.with(|m| *m.sync_failures.entry(family).or_default() += 1);
    }

    /// Removing stale nftables objects outside the sync's transaction failed (upstream's
    /// stale-chain cleanup).
    pub fn cleanup_failed(&self, family: IpFamily) {
        self.with(|m| *m.cleanup_failures.entry(family).or_default() += 1);
    }

    /// `family`'s conntrack reconciler ran for `seconds` and deleted `deleted` entries.
    pub fn conntrack_reconciled(&self, family: IpFamily, seconds: f64, deleted: usize) {
        self.with(|m| {
            m.conntrack_sync.observe(family, seconds);
            *m.conntrack_deleted.entry(family).or_default() += deleted as u64;
        });
    }

    /// `family`'s proxier has these changes waiting for a sync (zero after one).
    pub fn pending(&self, family: IpFamily, pending: crate::proxier::PendingChanges) {
        self.with(|m| {
            m.pending
                .insert(family, (pending.services, pending.endpoints));
        });
    }

    /// `family`'s proxier synced with these service ports left without local endpoints.
    pub fn no_local_endpoints(&self, family: IpFamily, n: crate::proxier::NoLocalEndpoints) {
        self.with(|m| {
            m.no_local.insert(family, (n.internal, n.external));
        });
    }

    /// A change for `family`'s proxier was queued at `at`.
    pub fn queued(&self, family: IpFamily, at: SystemTime) {
        let t = unix_seconds(at);
        self.with(|m| {
            m.last_queued.insert(family, t);
        });
    }

    /// A Service (or EndpointSlice) change was seen.
    pub fn change(&self, endpoints: bool) {
        self.with(|m| {
            if endpoints {
                m.endpoint_changes += 1;
            } else {
                m.service_changes += 1;
            }
        });
    }

    /// An endpoint change triggered at `trigger` (the slice's
    /// `endpoints.kubernetes.io/last-change-trigger-time`) is programmed now by
    /// `family`'s proxier.
    pub fn programmed(&self, family: IpFamily, trigger: SystemTime) {
        let d = SystemTime::now()
            .duration_since(trigger)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.with(|m| m.programming.observe(family, d));
    }

    pub(crate) fn healthz(&self, code: u16) {
        self.with(|m| *m.healthz.entry(code).or_default() += 1);
    }

    pub(crate) fn livez(&self, code: u16) {
        self.with(|m| *m.livez.entry(code).or_default() += 1);
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.with(|m| {
            m.sync.render(
                &mut out,
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
            );
            m.sync_full.render(
                &mut out,
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
            );
            m.sync_partial.render(
                &mut out,
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
            );
            m.programming.render(
                &mut out,
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
            );
            m.conntrack_sync.render(
                &mut out,
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "ReconcileConntrackFlowsLatency latency in seconds",
            );
            let scalar = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
                let _ = writeln!(out, "# HELP {name} [ALPHA] {help}\n# TYPE {name} {kind}\n{name} {v}");
            };
            let counter =
                |out: &mut String, name: &str, help: &str, v: u64| scalar(out, name, help, "counter", v);
            let by_family = |out: &mut String,
                             name: &str,
                             help: &str,
                             kind: &str,
                             v: Vec<(IpFamily, String)>| {
                if v.is_empty() {
                    return;
                }
                let _ = writeln!(out, "# HELP {name} [ALPHA] {help}\n# TYPE {name} {kind}");
                for (family, v) in v {
                    let label = family_label(family);
                    let _ = writeln!(out, "{name}{{{}}} {v}", label.trim_end_matches(','));
                }
            };
            by_family(
                &mut out,
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                "gauge",
                m.last_sync
                    .iter()
                    .map(|(f, v)| (*f, v.to_string()))
                    .collect(),
            );
            by_family(
                &mut out,
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                "gauge",
                m.last_queued
                    .iter()
                    .map(|(f, v)| (*f, v.to_string()))
                    .collect(),
            );
            by_family(
                &mut out,
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "Cumulative proxy nftables sync failures",
                "counter",
                m.sync_failures
                    .iter()
                    .map(|(f, v)| (*f, v.to_string()))
                    .collect(),
            );
            by_family(
                &mut out,
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                "Cumulative proxy nftables cleanup failures",
                "counter",
                m.cleanup_failures
                    .iter()
                    .map(|(f, v)| (*f, v.to_string()))
                    .collect(),
            );
            scalar(
                &mut out,
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
                "gauge",
                m.pending.values().map(|p| p.1 as u64).sum(),
            );
            scalar(
                &mut out,
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
                "gauge",
                m.pending.values().map(|p| p.0 as u64).sum(),
            );
            let name = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
            let _ = (!m.no_local.is_empty()).then(|| writeln!(
                out,
                "# HELP {name} [ALPHA] Number of services with a Local traffic policy and no endpoints\n# TYPE {name} gauge"
            ));
            for (family, (internal, external)) in &m.no_local {
                let f = family.address_type();
                let _ = writeln!(
                    out,
                    "{name}{{ip_family=\"{f}\",traffic_policy=\"external\"}} {external}\n{name}{{ip_family=\"{f}\",traffic_policy=\"internal\"}} {internal}"
                );
            }
            counter(
                &mut out,
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
                m.endpoint_changes,
            );
            counter(
                &mut out,
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
                m.service_changes,
            );
            by_family(
                &mut out,
                "kubeproxy_conntrack_reconciler_deleted_entries_total",
                "Cumulative conntrack flows deleted by conntrack reconciler",
                "counter",
                m.conntrack_deleted
                    .iter()
                    .map(|(f, v)| (*f, v.to_string()))
                    .collect(),
            );
            for (name, help, by_code) in [
                (
                    "kubeproxy_proxy_healthz_total",
                    "Cumulative proxy healthz HTTP status",
                    &m.healthz,
                ),
                (
                    "kubeproxy_proxy_livez_total",
                    "Cumulative proxy livez HTTP status",
                    &m.livez,
                ),
            ] {
                if by_code.is_empty() {
                    continue;
                }
                let _ = writeln!(out, "# HELP {name} [ALPHA] {help}\n# TYPE {name} counter");
                for (code, n) in by_code {
                    let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
                }
            }
        });
        out
    }
}
