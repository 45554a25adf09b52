//! The kubelet API's metrics endpoints: `/metrics` (the agent's own series under
//! upstream's names, tikv's `prometheus` registry in the classic text format),
//! `/metrics/probes` (`prober_probe_total`), and, from the stats summary,
//! `/metrics/resource` (what metrics-server scrapes) and `/metrics/cadvisor`
//! (cAdvisor's `container_*` series) in [`resource`].
//!
//! The instruments live in one process-wide [`KubeletMetrics`] ([`metrics`]), so the
//! code that measures (pod workers, probes, eviction) calls a one-line hook without
//! plumbing; the running pod and container gauges are computed at scrape time.

pub mod cadvisor_fs;
pub mod resource;
pub mod runtime;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pod::status_store::PodStatuses;
use crate::server::NodeViewCell;

/// The agent's instruments.
pub struct KubeletMetrics {
    registry: Registry,
    probes: Registry,
    /// `kubelet_pod_start_duration_seconds`.
    pub pod_start_duration: Histogram,
    /// `kubelet_pod_worker_duration_seconds{operation_type}`.
    pub pod_worker_duration: HistogramVec,
    /// `kubelet_runtime_operations_total{operation_type}`.
    pub runtime_operations: IntCounterVec,
    /// `kubelet_runtime_operations_duration_seconds{operation_type}`.
    pub runtime_operations_duration: HistogramVec,
    /// `kubelet_runtime_operations_errors_total{operation_type}`.
    pub runtime_operations_errors: IntCounterVec,
    /// `kubelet_evictions{eviction_signal}`.
    pub evictions: IntCounterVec,
    running_pods: IntGauge,
    running_containers: IntGaugeVec,
    /// `prober_probe_total{probe_type,result,container,pod,namespace,pod_uid}`.
    pub probes_total: IntCounterVec,
    /// `kubelet_certificate_manager_server_ttl_seconds` (registered with
    /// `serverTLSBootstrap` only, as upstream).
    server_ttl: prometheus::Gauge,
    /// `kubelet_server_expiration_renew_errors` (likewise).
    server_renew_errors: prometheus::IntCounter,
}

/// Upstream's `kubelet_pod_start_duration_seconds` buckets.
const POD_START_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

fn new_metrics() -> Result<KubeletMetrics, prometheus::Error> {
    let registry = Registry::new();
    let probes = Registry::new();
    let h = |name: &str, help: &str| HistogramOpts::new(name, help);
    let m = KubeletMetrics {
        pod_start_duration: Histogram::with_opts(
            h(
                "kubelet_pod_start_duration_seconds",
                "[ALPHA] Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            )
            .buckets(POD_START_BUCKETS.to_vec()),
        )?,
        pod_worker_duration: HistogramVec::new(
            h(
                "kubelet_pod_worker_duration_seconds",
                "[ALPHA] Duration in seconds to sync a single pod. Broken down by operation type: create, update, or sync",
            ),
            &["operation_type"],
        )?,
        runtime_operations: IntCounterVec::new(
            Opts::new(
                "kubelet_runtime_operations_total",
                "[ALPHA] Cumulative number of runtime operations by operation type.",
            ),
            &["operation_type"],
        )?,
        runtime_operations_duration: HistogramVec::new(
            h(
                "kubelet_runtime_operations_duration_seconds",
                "[ALPHA] Duration in seconds of runtime operations. Broken down by operation type.",
            )
            .buckets(prometheus::exponential_buckets(0.005, 2.5, 14)?),
            &["operation_type"],
        )?,
        runtime_operations_errors: IntCounterVec::new(
            Opts::new(
                "kubelet_runtime_operations_errors_total",
                "[ALPHA] Cumulative number of runtime operation errors by operation type.",
            ),
            &["operation_type"],
        )?,
        evictions: IntCounterVec::new(
            Opts::new(
                "kubelet_evictions",
                "[ALPHA] Cumulative number of pod evictions by eviction signal",
            ),
            &["eviction_signal"],
        )?,
        running_pods: IntGauge::new(
            "kubelet_running_pods",
            "[ALPHA] Number of pods that have a running pod sandbox",
        )?,
        running_containers: IntGaugeVec::new(
            Opts::new(
                "kubelet_running_containers",
                "[ALPHA] Number of containers currently running",
            ),
            &["container_state"],
        )?,
        probes_total: IntCounterVec::new(
            Opts::new(
                "prober_probe_total",
                "[ALPHA] Cumulative number of a liveness, readiness or startup probe for a container by result.",
            ),
            &["probe_type", "result", "container", "pod", "namespace", "pod_uid"],
        )?,
        registry,
        probes,
        server_ttl: prometheus::Gauge::with_opts(Opts::new(
            "kubelet_certificate_manager_server_ttl_seconds",
            "[ALPHA] Gauge of the shortest TTL (time-to-live) of the Kubelet's serving certificate. The value is in seconds until certificate expiry (negative if already expired). If serving certificate is invalid or unused, the value will be +INF.",
        ))?,
        server_renew_errors: prometheus::IntCounter::with_opts(Opts::new(
            "kubelet_server_expiration_renew_errors",
            "[ALPHA] Counter of certificate renewal errors.",
        ))?,
    };
    m.registry
        .register(Box::new(m.pod_start_duration.clone()))?;
    m.registry
        .register(Box::new(m.pod_worker_duration.clone()))?;
    m.registry
        .register(Box::new(m.runtime_operations.clone()))?;
    m.registry
        .register(Box::new(m.runtime_operations_duration.clone()))?;
    m.registry
        .register(Box::new(m.runtime_operations_errors.clone()))?;
    m.registry.register(Box::new(m.evictions.clone()))?;
    m.registry.register(Box::new(m.running_pods.clone()))?;
    m.registry
        .register(Box::new(m.running_containers.clone()))?;
    m.probes.register(Box::new(m.probes_total.clone()))?;
    Ok(m)
}

/// The serving certificate's end of validity in unix seconds (`i64::MIN`: none).
static SERVING_NOT_AFTER: std::sync::atomic::AtomicI64 =
    std::sync::atomic::AtomicI64::new(i64::MIN);
static SERVING_REGISTERED: std::sync::Once = std::sync::Once::new();

/// Registers the serving certificate's series, as upstream does when the kubelet
/// requests its serving certificate (`serverTLSBootstrap`).
pub fn register_serving_certificate() {
    let Some(m) = metrics() else { return };
    SERVING_REGISTERED.call_once(|| {
        for c in [
            Box::new(m.server_ttl.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.server_renew_errors.clone()),
        ] {
            if let Err(e) = m.registry.register(c) {
                tracing::warn!(error = %e, "cannot register the serving certificate metrics");
            }
        }
    });
}

/// The serving certificate now in use (its end of validity).
pub fn observe_serving_certificate(not_after: std::time::SystemTime) {
    let secs = jiff::Timestamp::try_from(not_after).map_or(i64::MAX, |t| t.as_second());
    SERVING_NOT_AFTER.store(secs, std::sync::atomic::Ordering::Relaxed);
}

/// A failed attempt to renew the serving certificate.
pub fn observe_serving_renew_error() {
    if let Some(m) = metrics() {
        m.server_renew_errors.inc();
    }
}

/// Upstream's TTL gauge: seconds until the serving certificate expires (negative
/// once expired), +Inf without one.
fn update_serving_ttl(m: &KubeletMetrics) {
    let not_after = SERVING_NOT_AFTER.load(std::sync::atomic::Ordering::Relaxed);
    let ttl = if not_after == i64::MIN {
        f64::INFINITY
    } else {
        #[expect(
            clippy::cast_precision_loss,
            reason = "seconds of a certificate's life fit an f64 exactly"
        )]
        let d = not_after.saturating_sub(jiff::Timestamp::now().as_second()) as f64;
        d
    };
    m.server_ttl.set(ttl);
}

static METRICS: LazyLock<Option<KubeletMetrics>> = LazyLock::new(|| match new_metrics() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "cannot register the kubelet metrics");
        None
    }
});

/// The process's instruments (`None` only if their static definitions were refused,
/// which the unit tests rule out).
pub fn metrics() -> Option<&'static KubeletMetrics> {
    METRICS.as_ref()
}

/// Records one pod worker sync (`create` the first time a pod is synced, `sync` after).
pub fn observe_pod_worker(operation: &'static str, started: Instant) {
    if let Some(m) = metrics() {
        m.pod_worker_duration
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Records one runtime operation and whether it failed.
pub fn observe_runtime_operation(operation: &'static str, started: Instant, failed: bool) {
    if let Some(m) = metrics() {
        m.runtime_operations.with_label_values(&[operation]).inc();
        m.runtime_operations_duration
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        if failed {
            m.runtime_operations_errors
                .with_label_values(&[operation])
                .inc();
        }
    }
}

/// Records one eviction under its signal (`memory.available`, `nodefs.available`, …).
pub fn observe_eviction(signal: &str) {
    if let Some(m) = metrics() {
        m.evictions.with_label_values(&[signal]).inc();
    }
}

/// Records one probe run: `result` is `successful`, `failed` or `unknown`.
pub fn observe_probe(
    probe_type: &str,
    result: &str,
    container: &str,
    pod: &str,
    namespace: &str,
    pod_uid: &str,
) {
    if let Some(m) = metrics() {
        m.probes_total
            .with_label_values(&[probe_type, result, container, pod, namespace, pod_uid])
            .inc();
    }
}

/// Upstream's container states as the `container_state` label sees them.
fn update_running(pods: &PodStatuses, m: &KubeletMetrics) {
    let mut pods_running = 0;
    let mut states: HashMap<&str, i64> = HashMap::new();
    for pod in pods.values() {
        let Some(status) = &pod.status else { continue };
        let all = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        let mut any_running = false;
        for c in all {
            let state = match &c.state {
                Some(s) if s.running.is_some() => "running",
                Some(s) if s.terminated.is_some() => "exited",
                Some(s) if s.waiting.is_some() => "created",
                _ => "unknown",
            };
            any_running |= state == "running";
            *states.entry(state).or_default() += 1;
        }
        let phase = status.phase.as_deref().unwrap_or_default();
        if any_running || phase == "Running" {
            pods_running += 1;
        }
    }
    m.running_pods.set(pods_running);
    m.running_containers.reset();
    for (state, n) in states {
        m.running_containers.with_label_values(&[state]).set(n);
    }
}

fn encode(registry: &Registry) -> Response {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut body) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// What the metrics endpoints read.
#[derive(Clone)]
pub struct MetricsState {
    /// The pods (running gauges, cAdvisor labels).
    pub pods: watch::Receiver<PodStatuses>,
    /// The node view (stats).
    pub node: NodeViewCell,
    /// The devices of the node's filesystems (cAdvisor's `device` label).
    pub fs_devices: Arc<cadvisor_fs::FsDevices>,
}

/// `/metrics`, `/metrics/probes`, `/metrics/resource`, `/metrics/cadvisor`.
pub fn router(state: MetricsState) -> Router {
    Router::new()
        .route("/metrics", get(kubelet))
        .route("/metrics/probes", get(probes))
        .route("/metrics/resource", get(resource::resource_handler))
        .route("/metrics/cadvisor", get(resource::cadvisor_handler))
        .with_state(state)
}

async fn kubelet(State(state): State<MetricsState>) -> Response {
    let Some(m) = metrics() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no metrics").into_response();
    };
    update_running(&state.pods.borrow(), m);
    update_serving_ttl(m);
    encode(&m.registry)
}

async fn probes() -> Response {
    match metrics() {
        Some(m) => encode(&m.probes),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "no metrics").into_response(),
    }
}

/// Watches the pod statuses and records `kubelet_pod_start_duration_seconds`: from
/// the first status a pod had on this node to the first with phase Running.
pub async fn watch_pod_starts(mut pods: watch::Receiver<PodStatuses>, cancel: CancellationToken) {
    // UID → first seen, or None once its start was recorded.
    let mut seen: HashMap<String, Option<Instant>> = HashMap::new();
    loop {
        {
            let snapshot = pods.borrow_and_update().clone();
            let now = Instant::now();
            for (uid, pod) in snapshot.live() {
                let entry = seen.entry(uid.clone()).or_insert(Some(now));
                let running = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|p| p == "Running");
                if running
                    && let Some(first) = entry.take()
                    && let Some(m) = metrics()
                {
                    m.pod_start_duration
                        .observe(now.duration_since(first).as_secs_f64());
                }
            }
            seen.retain(|uid, _| snapshot.get(uid).is_some());
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = pods.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruments_register() {
        let m = new_metrics().expect("static metric definitions");
        m.runtime_operations
            .with_label_values(&["create_container"])
            .inc();
        let mut body = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut body)
            .expect("encode");
        let text = String::from_utf8(body).expect("utf-8");
        assert!(
            text.contains(
                "kubelet_runtime_operations_total{operation_type=\"create_container\"} 1"
            )
        );
        assert!(text.contains("# TYPE kubelet_running_pods gauge"));
    }
}
