//! Health-check node ports (upstream's `ServiceHealthServer`): for every
//! `externalTrafficPolicy: Local` LoadBalancer service with a `healthCheckNodePort`, an
//! HTTP server on that port answering any path with the number of local ready endpoints:
//! 200 when there are some and the proxy is healthy, 503 otherwise, so the load balancer
//! sends traffic only to nodes that have endpoints. Servers follow the services after
//! every sync; a port that cannot be bound is logged and retried at the next sync.
//!
//! One server set per IP family (each family's proxier counts its own endpoints, as
//! upstream's per-family proxiers do): on that family's `--nodeport-addresses`, or its
//! wildcard address; an IPv6 listener is `IPV6_V6ONLY` so the two families share ports.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;

use super::{ProxyHealth, json, serve_v6only};
use crate::model::{IpFamily, ServiceName};

/// What each health-check node port answers: the service's port and local endpoints.
pub type Wanted = BTreeMap<ServiceName, (u16, usize)>;

type Counts = Arc<Mutex<HashMap<ServiceName, usize>>>;

/// The health-check servers of one node.
pub struct ServiceHealthServer {
    health: ProxyHealth,
    family: IpFamily,
    addresses: Vec<IpAddr>,
    counts: Counts,
    servers: HashMap<ServiceName, (u16, Vec<tokio::task::JoinHandle<()>>)>,
}

impl ServiceHealthServer {
    /// `family`'s servers, listening on `addresses` (`--nodeport-addresses` of that
    /// family; empty: every address of the family).
    pub fn new(health: ProxyHealth, family: IpFamily, addresses: Vec<IpAddr>) -> Self {
        Self {
            health,
            family,
            addresses,
            counts: Counts::default(),
            servers: HashMap::new(),
        }
    }

    /// The ports served now, by service.
    pub fn ports(&self) -> BTreeMap<ServiceName, u16> {
        self.servers
            .iter()
            .map(|(k, (p, _))| (k.clone(), *p))
            .collect()
    }

    /// Makes the servers match `wanted` (upstream's `SyncServices` + `SyncEndpoints`).
    pub fn sync(&mut self, wanted: &Wanted) {
        if let Ok(mut c) = self.counts.lock() {
            c.clear();
            c.extend(wanted.iter().map(|(k, (_, n))| (k.clone(), *n)));
        }
        self.servers.retain(|name, (port, tasks)| {
            let keep = wanted.get(name).is_some_and(|(p, _)| p == port);
            if !keep {
                tracing::info!(service = %name, port = *port, "closing health-check node port");
                for t in tasks.iter() {
                    t.abort();
                }
            }
            keep
        });
        for (name, (port, _)) in wanted {
            if self.servers.contains_key(name) {
                continue;
            }
            let addrs: Vec<IpAddr> = if self.addresses.is_empty() {
                vec![match self.family {
                    IpFamily::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpFamily::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                }]
            } else {
                self.addresses.clone()
            };
            let mut tasks = Vec::new();
            for ip in addrs {
                let app = Router::new().fallback(handler).with_state(Handler {
                    name: name.clone(),
                    counts: self.counts.clone(),
                    health: self.health.clone(),
                });
                match serve_v6only(SocketAddr::new(ip, *port), app) {
                    Ok(t) => tasks.push(t),
                    Err(e) => {
                        tracing::warn!(service = %name, error = %e, "health-check node port not served");
                    }
                }
            }
            if !tasks.is_empty() {
                tracing::info!(service = %name, port, "serving health-check node port");
                self.servers.insert(name.clone(), (*port, tasks));
            }
        }
    }
}

impl Drop for ServiceHealthServer {
    fn drop(&mut self) {
        for (_, tasks) in self.servers.values() {
            for t in tasks {
                t.abort();
            }
        }
    }
}

#[derive(Clone)]
struct Handler {
    name: ServiceName,
    counts: Counts,
    health: ProxyHealth,
}

/// Upstream's body (its dedented template: tab-indented JSON).
pub fn body(name: &ServiceName, count: usize, healthy: bool) -> String {
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        name.namespace, name.name
    )
}

async fn handler(State(h): State<Handler>) -> Response {
    let count = h
        .counts
        .lock()
        .ok()
        .and_then(|c| c.get(&h.name).copied())
        .unwrap_or(0);
    let healthy = h.health.is_healthy();
    let code = if count != 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = json(code, body(&h.name, count, healthy));
    if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
        r.headers_mut()
            .insert("X-Load-Balancing-Endpoint-Weight", v);
    }
    r
}
