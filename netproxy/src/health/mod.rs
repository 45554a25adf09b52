//! The proxy's health (upstream's `pkg/proxy/healthcheck`): the state of every proxier
//! (`ProxyHealth`: when each family last synced, the oldest change still waiting), the
//! `/healthz` and `/livez` server on `--healthz-bind-address`, the Prometheus `/metrics`
//! server on `--metrics-bind-address` (`metrics`), and the per-service health-check node
//! ports of `externalTrafficPolicy: Local` services (`service`).
//!
//! As upstream: a proxier is unhealthy when a change has waited longer than the health
//! timeout (2 × `syncPeriod`) without a successful sync; `/healthz` is 503 also when the
//! node is not eligible (being deleted or tainted for deletion, `node`), `/livez` ignores
//! that. Bodies are upstream's
//! JSON with Go's `time.Time` formatting.

pub mod metrics;
pub mod node;
pub mod observer;
pub mod service;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::model::IpFamily;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {addr} failed: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
struct State_ {
    last_updated: BTreeMap<IpFamily, SystemTime>,
    oldest_pending: BTreeMap<IpFamily, SystemTime>,
    node_eligible: Option<bool>,
}

/// The proxiers' health, shared by the sync loops and the servers.
#[derive(Debug, Clone)]
pub struct ProxyHealth {
    state: Arc<Mutex<State_>>,
    timeout: Duration,
    pub metrics: metrics::Metrics,
}

impl ProxyHealth {
    /// Health with `timeout` (upstream: 2 × `syncPeriod`).
    pub fn new(timeout: Duration) -> Self {
        Self {
            state: Arc::default(),
            timeout,
            metrics: metrics::Metrics::default(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State_) -> T) -> T {
        match self.state.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// A change is waiting for `family`'s proxier (upstream's `QueuedUpdate`).
    pub fn queued(&self, family: IpFamily) {
        let now = SystemTime::now();
        self.with(|s| {
            s.oldest_pending.entry(family).or_insert(now);
        });
        self.metrics.queued(family, now);
    }

    /// `family`'s proxier synced successfully (upstream's `Updated`).
    pub fn updated(&self, family: IpFamily) {
        let now = SystemTime::now();
        self.with(|s| {
            s.last_updated.insert(family, now);
            s.oldest_pending.remove(&family);
        });
    }

    /// Whether the node may receive load-balancer traffic (false while it is deleted).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.with(|s| s.node_eligible = Some(eligible));
    }

    /// Upstream's `isHealthy`: healthy, and the latest sync time (of the late proxier
    /// when unhealthy).
    pub fn health_at(&self, now: SystemTime) -> (bool, Option<SystemTime>) {
        self.with(|s| {
            let mut last: Option<SystemTime> = None;
            for (family, updated) in &s.last_updated {
                last = last.max(Some(*updated));
                if let Some(queued) = s.oldest_pending.get(family)
                    && now.duration_since(*queued).unwrap_or_default() >= self.timeout
                {
                    return (false, Some(*updated));
                }
            }
            // A proxier that never synced but has waited too long is unhealthy too.
            for (family, queued) in &s.oldest_pending {
                if !s.last_updated.contains_key(family)
                    && now.duration_since(*queued).unwrap_or_default() >= self.timeout
                {
                    return (false, None);
                }
            }
            (true, last)
        })
    }

    /// Healthy now.
    pub fn is_healthy(&self) -> bool {
        self.health_at(SystemTime::now()).0
    }

    fn node_eligible(&self) -> bool {
        self.with(|s| s.node_eligible.unwrap_or(true))
    }

    /// Upstream v1.37's `ProxyHealth` JSON (`json.Marshal` of its struct: fields in
    /// declaration order, RFC 3339 times): the latest sync (now when `fresh`), the
    /// current time, node eligibility (`/healthz` only), the proxiers' health and each
    /// family's status.
    fn body(&self, now: SystemTime, eligible: Option<bool>, fresh: bool) -> (bool, String) {
        let (healthy, last) = self.health_at(now);
        let status: Vec<String> = self.with(|s| {
            s.last_updated
                .iter()
                .map(|(family, updated)| {
                    let late = s.oldest_pending.get(family).is_some_and(|q| {
                        now.duration_since(*q).unwrap_or_default() >= self.timeout
                    });
                    format!(
                        "{:?}:{{\"lastUpdated\":{:?},\"healthy\":{}}}",
                        family.address_type(),
                        rfc3339(Some(*updated)),
                        !late
                    )
                })
                .collect()
        });
        let last = if fresh { Some(now) } else { last };
        let mut out = format!(
            "{{\"lastUpdated\":{:?},\"currentTime\":{:?}",
            rfc3339(last),
            rfc3339(Some(now))
        );
        if let Some(e) = eligible {
            out.push_str(&format!(",\"nodeEligible\":{e}"));
        }
        out.push_str(&format!(",\"healthy\":{healthy}"));
        if !status.is_empty() {
            out.push_str(&format!(",\"status\":{{{}}}", status.join(",")));
        }
        out.push('}');
        (healthy, out)
    }

    /// The `/healthz` answer at `now`: 503 when a proxier is late or the node is not
    /// eligible; upstream's body.
    pub fn healthz(&self, now: SystemTime) -> (StatusCode, String) {
        let eligible = self.node_eligible();
        let ok = self.health_at(now).0 && eligible;
        let (_, body) = self.body(now, Some(eligible), ok);
        let code = status(ok);
        self.metrics.healthz(code.as_u16());
        (code, body)
    }

    /// The `/livez` answer at `now` (node eligibility left out).
    pub fn livez(&self, now: SystemTime) -> (StatusCode, String) {
        let ok = self.health_at(now).0;
        let (_, body) = self.body(now, None, ok);
        let code = status(ok);
        self.metrics.livez(code.as_u16());
        (code, body)
    }

    /// Serves `/healthz` and `/livez` on `addr` (on a task; abort it to stop).
    ///
    /// # Errors
    /// The address could not be bound.
    pub fn serve_healthz(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio::task::JoinHandle<()>, ServeError> {
        let app = Router::new()
            .route("/healthz", get(healthz_handler))
            .route("/livez", get(livez_handler))
            .with_state(self.clone());
        serve(addr, app)
    }

    /// Serves `/metrics` on `addr`.
    ///
    /// # Errors
    /// The address could not be bound.
    pub fn serve_metrics(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio::task::JoinHandle<()>, ServeError> {
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone());
        serve(addr, app)
    }
}

fn status(healthy: bool) -> StatusCode {
    if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Binds `addr` (at once, so a taken port is an error here) and serves `app` on a task.
/// An IPv6 wildcard takes IPv4 too (the kernel's default, as Go's listeners). Needs a
/// tokio runtime.
pub(crate) fn serve(
    addr: SocketAddr,
    app: Router,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let listener = std::net::TcpListener::bind(addr);
    spawn_server(addr, listener, app)
}

/// [`serve`] with IPv6 sockets limited to IPv6 (`IPV6_V6ONLY`), so an IPv4 and an IPv6
/// listener can share a port (the health-check node ports of a dual-stack node).
pub(crate) fn serve_v6only(
    addr: SocketAddr,
    app: Router,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let listener = match addr {
        SocketAddr::V4(_) => std::net::TcpListener::bind(addr),
        SocketAddr::V6(a) => bind_v6only(a),
    };
    spawn_server(addr, listener, app)
}

fn bind_v6only(addr: std::net::SocketAddrV6) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, bind, listen, setsockopt, socket,
        sockopt,
    };
    use std::os::fd::AsRawFd as _;
    let fd = socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn6::from(addr))?;
    listen(&fd, Backlog::new(1024)?)?;
    Ok(std::net::TcpListener::from(fd))
}

fn spawn_server(
    addr: SocketAddr,
    listener: std::io::Result<std::net::TcpListener>,
    app: Router,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let to_tokio = |l: std::net::TcpListener| -> std::io::Result<tokio::net::TcpListener> {
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    };
    let listener = listener
        .and_then(to_tokio)
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(%addr, error = %e, "proxy health server stopped");
        }
    }))
}

/// Upstream's JSON bodies with its headers.
pub(crate) fn json(code: StatusCode, body: String) -> Response {
    let mut r = (code, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn healthz_handler(State(h): State<ProxyHealth>) -> Response {
    let (code, body) = h.healthz(SystemTime::now());
    json(code, body)
}

async fn livez_handler(State(h): State<ProxyHealth>) -> Response {
    let (code, body) = h.livez(SystemTime::now());
    json(code, body)
}

async fn metrics_handler(State(h): State<ProxyHealth>) -> Response {
    let mut r = h.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Go's `time.Time` JSON (RFC 3339 with trailing fractional zeros dropped) in UTC; the
/// zero time for `None`, as upstream prints a proxier that never synced.
pub fn rfc3339(t: Option<SystemTime>) -> String {
    let zero = || "0001-01-01T00:00:00Z".to_owned();
    let Some(t) = t else {
        return zero();
    };
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => format!("{}Z", ts.strftime("%Y-%m-%dT%H:%M:%S%.f")),
        Err(_) => zero(),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_metrics;
