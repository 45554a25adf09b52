//! The proxy's pure model of the cluster, after upstream's `pkg/proxy`: a service port
//! (`ServicePortName` → `ServicePortInfo`), its endpoints (`Endpoint`), the change trackers
//! that turn Service and EndpointSlice events into updates of the service and endpoints
//! maps, and the topology filter that picks which endpoints this node uses.
//!
//! Everything here is a function of API objects and the node's identity: no I/O, so every
//! rule of upstream's semantics is unit-tested without a kernel.

mod cidr;
mod endpoints;
mod service;
mod topology;

pub use cidr::{Cidr, CidrError};
pub use endpoints::{EndpointsChangeTracker, EndpointsMap, EndpointsUpdate, SERVICE_NAME_LABEL};
pub use service::{ServiceChangeTracker, ServicePortMap, ServiceUpdate};
pub use topology::{Categorized, NodeTopology, categorize_endpoints};

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// The IP family a proxier instance programs (upstream runs one proxier per family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The EndpointSlice `addressType` of this family.
    pub fn address_type(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

/// A service port's L4 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the API's protocol string; absent means TCP, as the apiserver defaults it.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The lower-case name nftables and chain names use.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Identifies one port of one service: upstream's `proxy.ServicePortName`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's name (empty for a single unnamed port).
    pub port: String,
    pub protocol: Protocol,
}

impl ServicePortName {
    /// The service's `namespace/name`.
    pub fn service(&self) -> ServiceName {
        ServiceName {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for ServicePortName {
    /// Upstream's `String()`: `ns/name:port`, or `ns/name` for an unnamed port.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// A service's `namespace/name` (upstream's `types.NamespacedName`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.trafficDistribution` values the proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficDistribution {
    PreferClose,
    PreferSameZone,
    PreferSameNode,
}

/// One service port as the proxy programs it (upstream's `BaseServicePortInfo`), for one
/// IP family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// 0 when the port has no node port.
    pub node_port: u16,
    /// `status.loadBalancer.ingress[].ip` of this family (ipMode `Proxy` excluded).
    pub load_balancer_vips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_source_ranges: Vec<Cidr>,
    /// `Some(timeout seconds)` for `sessionAffinity: ClientIP`.
    pub session_affinity_seconds: Option<u32>,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    pub health_check_node_port: u16,
    pub traffic_distribution: Option<TrafficDistribution>,
}

impl ServicePortInfo {
    /// Upstream's `ExternallyAccessible`: reachable through a node port, an external IP
    /// or a load-balancer VIP.
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.load_balancer_vips.is_empty() || !self.external_ips.is_empty()
    }

    /// Upstream's `UsesClusterEndpoints`.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || (self.externally_accessible() && !self.external_policy_local)
    }

    /// Upstream's `UsesLocalEndpoints`.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }
}

/// One endpoint of a service port (upstream's `BaseEndpointInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// On this node (`nodeName` equals the proxy's node name).
    pub is_local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone_hints: Hints,
    pub node_hints: Hints,
}

/// An endpoint's `hints.forZones` or `hints.forNodes` names, sorted: a pointer, null
/// when there are none (nearly always), so an endpoint takes 40 bytes instead of 72 with
/// two empty `BTreeSet`s; the proxy holds each endpoint twice (slice cache and endpoints
/// map), 600k of them at 30k services × 10 endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints(Option<Box<HintNames>>);

/// The names behind a non-empty [`Hints`] (a struct, so the pointer to it is thin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintNames(Vec<String>);

impl Hints {
    /// Whether there is no hint.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether `name` is one of the hints.
    pub fn contains(&self, name: &str) -> bool {
        self.0
            .as_deref()
            .is_some_and(|s| s.0.binary_search_by(|h| h.as_str().cmp(name)).is_ok())
    }

    /// Adds a hint.
    pub fn insert(&mut self, name: String) {
        let mut all = self.0.take().map(|s| s.0).unwrap_or_default();
        all.push(name);
        *self = all.into_iter().collect();
    }
}

impl FromIterator<String> for Hints {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        let set: BTreeSet<String> = iter.into_iter().collect();
        Hints((!set.is_empty()).then(|| Box::new(HintNames(set.into_iter().collect()))))
    }
}

impl Endpoint {
    /// `ip:port`, with brackets for IPv6 (upstream's `String()`).
    pub fn addr_string(&self) -> String {
        match self.ip {
            IpAddr::V4(ip) => format!("{ip}:{}", self.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", self.port),
        }
    }
}
