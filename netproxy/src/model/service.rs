//! Services to service ports (upstream's `servicechangetracker.go` and `serviceport.go`):
//! which Services the proxy skips, how a Service's ports become `ServicePortInfo`s for one
//! IP family, and the tracker that batches Service events until the next sync.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::{
    Cidr, IpFamily, Protocol, ServiceName, ServicePortInfo, ServicePortName, TrafficDistribution,
};

/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_STICKY_SECONDS: u32 = 10_800;

/// The ports of one service, by port name.
type Ports = BTreeMap<ServicePortName, ServicePortInfo>;

/// The service ports the proxy programs, by name.
#[derive(Debug, Default, Clone)]
pub struct ServicePortMap {
    ports: BTreeMap<ServicePortName, ServicePortInfo>,
}

impl ServicePortMap {
    /// The service port named `name`.
    pub fn get(&self, name: &ServicePortName) -> Option<&ServicePortInfo> {
        self.ports.get(name)
    }

    /// Every service port, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&ServicePortName, &ServicePortInfo)> {
        self.ports.iter()
    }

    /// How many service ports there are.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The ports of `service`, in name order (a range of the map, not a scan).
    pub fn service_ports(
        &self,
        service: &ServiceName,
    ) -> impl Iterator<Item = (&ServicePortName, &ServicePortInfo)> {
        self.ports.range(port_range(service))
    }

    /// The ports of `service` currently in the map.
    fn ports_of(&self, service: &ServiceName) -> Ports {
        self.ports
            .range(port_range(service))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Applies the tracker's pending changes (upstream's `ServicePortMap.Update`).
    pub fn apply(&mut self, tracker: &mut ServiceChangeTracker) -> ServiceUpdate {
        let mut result = ServiceUpdate::default();
        for (service, current) in std::mem::take(&mut tracker.pending) {
            let current: Ports = current.into_vec().into_iter().collect();
            let previous = self.ports_of(&service);
            if previous == current {
                continue;
            }
            let kept: BTreeSet<(IpAddr, u16)> = current
                .values()
                .filter(|i| i.protocol == Protocol::Udp)
                .flat_map(udp_destinations)
                .collect();
            let kept_node_ports: BTreeSet<u16> = current
                .values()
                .filter(|i| i.protocol == Protocol::Udp && i.node_port != 0)
                .map(|i| i.node_port)
                .collect();
            for (name, info) in &previous {
                if info.protocol == Protocol::Udp {
                    if !current.contains_key(name) {
                        result.deleted_udp_cluster_ips.insert(info.cluster_ip);
                    }
                    result
                        .stale_udp_destinations
                        .extend(udp_destinations(info).filter(|d| !kept.contains(d)));
                    if info.node_port != 0 && !kept_node_ports.contains(&info.node_port) {
                        result.stale_udp_node_ports.insert(info.node_port);
                    }
                }
                self.ports.remove(name);
            }
            self.ports.extend(current);
            result.updated.insert(service);
        }
        result
    }
}

/// Every `(VIP, port)` a service port is reached at: its cluster IP, external IPs and
/// load-balancer VIPs.
fn udp_destinations(info: &ServicePortInfo) -> impl Iterator<Item = (IpAddr, u16)> + '_ {
    std::iter::once(info.cluster_ip)
        .chain(info.external_ips.iter().copied())
        .chain(info.load_balancer_vips.iter().copied())
        .map(|ip| (ip, info.port))
}

/// The range of `ServicePortName`s that belong to `service` in a map ordered by them.
pub(super) fn port_range(
    service: &ServiceName,
) -> (
    std::ops::Bound<ServicePortName>,
    std::ops::Bound<ServicePortName>,
) {
    use std::ops::Bound;
    let lo = ServicePortName {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        port: String::new(),
        protocol: Protocol::Tcp,
    };
    // The next service name in order: the name with a NUL appended sorts right after it.
    let hi = ServicePortName {
        namespace: service.namespace.clone(),
        name: format!("{}\0", service.name),
        port: String::new(),
        protocol: Protocol::Tcp,
    };
    (Bound::Included(lo), Bound::Excluded(hi))
}

/// What one `ServicePortMap::apply` changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServiceUpdate {
    /// Services whose ports changed (rules for them must be rewritten).
    pub updated: BTreeSet<ServiceName>,
    /// Cluster IPs of UDP ports that went away (their conntrack entries are stale).
    pub deleted_udp_cluster_ips: BTreeSet<IpAddr>,
    /// `(VIP, port)` destinations of UDP ports that no UDP port of the same service has
    /// any more (a port, cluster IP, external IP or load-balancer IP changed or went
    /// away): conntrack entries to them are stale whatever their reply source.
    pub stale_udp_destinations: BTreeSet<(IpAddr, u16)>,
    /// UDP node ports the service no longer has.
    pub stale_udp_node_ports: BTreeSet<u16>,
}

/// Collects Service events between syncs (upstream's `ServiceChangeTracker`): only the
/// latest state of each service is kept.
#[derive(Debug)]
pub struct ServiceChangeTracker {
    family: IpFamily,
    /// The latest ports of each changed service, in name order: a boxed slice, as a
    /// `BTreeMap` per service allocated a whole 11-slot node (~2 KiB) per service, and
    /// a burst of 30k services left that many holes in the heap once applied.
    pending: BTreeMap<ServiceName, Box<[(ServicePortName, ServicePortInfo)]>>,
}

impl ServiceChangeTracker {
    /// A tracker for the proxier of `family`.
    pub fn new(family: IpFamily) -> Self {
        Self {
            family,
            pending: BTreeMap::new(),
        }
    }

    /// Records the current state of a Service (added or modified).
    pub fn update(&mut self, service: &Service) {
        if let Some(name) = service_name(service) {
            let ports = service_ports(service, self.family);
            self.pending.insert(name, ports.into_iter().collect());
        }
    }

    /// Records that a Service was deleted.
    pub fn delete(&mut self, service: &Service) {
        if let Some(name) = service_name(service) {
            self.pending.insert(name, Box::default());
        }
    }

    /// Whether any change waits for a sync.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The services with a change waiting for a sync.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The names of the services with a change waiting for a sync.
    pub fn pending_services(&self) -> impl Iterator<Item = &ServiceName> {
        self.pending.keys()
    }
}

fn service_name(service: &Service) -> Option<ServiceName> {
    Some(ServiceName {
        namespace: service.metadata.namespace.clone()?,
        name: service.metadata.name.clone()?,
    })
}

/// The service ports of `service` for `family`; empty for services the proxy skips
/// (upstream's `ShouldSkipService`: headless, `ExternalName`, or no cluster IP of this
/// family).
pub fn service_ports(service: &Service, family: IpFamily) -> Ports {
    let mut out = Ports::new();
    let Some(name) = service_name(service) else {
        return out;
    };
    let Some(spec) = &service.spec else {
        return out;
    };
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if type_ == "ExternalName" {
        return out;
    }
    let cluster_ips: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    let Some(cluster_ip) = cluster_ips
        .iter()
        .filter(|s| !s.is_empty() && **s != "None")
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .find(|ip| IpFamily::of(ip) == family)
    else {
        return out;
    };
    let of_family = |ips: &mut dyn Iterator<Item = &str>| -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = ips
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .filter(|ip| IpFamily::of(ip) == family)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let external_ips = of_family(&mut spec.external_ips.iter().flatten().map(String::as_str));
    let is_lb = type_ == "LoadBalancer";
    let load_balancer_vips = if is_lb {
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        of_family(
            &mut ingress
                .into_iter()
                .flatten()
                // ipMode Proxy: the load balancer proxies, traffic never comes with the VIP.
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_deref()),
        )
    } else {
        Vec::new()
    };
    let load_balancer_source_ranges: Vec<Cidr> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|s| s.parse::<Cidr>().ok())
        .filter(|c| c.family() == family)
        .collect();
    let session_affinity_seconds =
        (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_STICKY_SECONDS)
        });
    let externally_accessible = type_ == "NodePort"
        || is_lb
        || !spec.external_ips.as_deref().unwrap_or_default().is_empty();
    let external_policy_local =
        externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = if external_policy_local && is_lb {
        spec.health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0)
    } else {
        0
    };
    let traffic_distribution = match spec.traffic_distribution.as_deref() {
        Some("PreferClose") => Some(TrafficDistribution::PreferClose),
        Some("PreferSameZone") => Some(TrafficDistribution::PreferSameZone),
        Some("PreferSameNode") => Some(TrafficDistribution::PreferSameNode),
        _ => None,
    };
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
            continue;
        };
        let Ok(port_number) = u16::try_from(port.port) else {
            continue;
        };
        let node_port = if type_ == "NodePort" || is_lb {
            port.node_port
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(0)
        } else {
            0
        };
        let spn = ServicePortName {
            namespace: name.namespace.clone(),
            name: name.name.clone(),
            port: port.name.clone().unwrap_or_default(),
            protocol,
        };
        out.insert(
            spn,
            ServicePortInfo {
                cluster_ip,
                port: port_number,
                protocol,
                node_port,
                load_balancer_vips: load_balancer_vips.clone(),
                external_ips: external_ips.clone(),
                load_balancer_source_ranges: load_balancer_source_ranges.clone(),
                session_affinity_seconds,
                external_policy_local,
                internal_policy_local,
                health_check_node_port,
                traffic_distribution,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    fn basic(name: &str, ip: &str) -> Service {
        svc(json!({
            "metadata": {"namespace": "ns", "name": name},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ]}
        }))
    }

    #[test]
    fn skips_headless_external_name_and_other_family() {
        let mut s = basic("a", "None");
        assert!(service_ports(&s, IpFamily::V4).is_empty());
        s = svc(json!({"metadata": {"namespace": "ns", "name": "x"},
            "spec": {"type": "ExternalName", "externalName": "example.invalid"}}));
        assert!(service_ports(&s, IpFamily::V4).is_empty());
        s = basic("a", "fd00::10");
        assert!(service_ports(&s, IpFamily::V4).is_empty());
        assert_eq!(service_ports(&s, IpFamily::V6).len(), 2);
    }

    #[test]
    fn dual_stack_picks_the_family_ip() {
        let s = svc(json!({
            "metadata": {"namespace": "ns", "name": "ds"},
            "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "fd00::5"],
                "externalIPs": ["192.0.2.1", "2001:db8::1"],
                "ports": [{"port": 80}]}
        }));
        let v4 = service_ports(&s, IpFamily::V4);
        let (name, info) = v4.iter().next().expect("port");
        assert_eq!(name.to_string(), "ns/ds");
        assert_eq!(name.protocol, Protocol::Tcp);
        assert_eq!(info.cluster_ip.to_string(), "10.96.0.5");
        assert_eq!(
            info.external_ips,
            vec!["192.0.2.1".parse::<IpAddr>().expect("ip")]
        );
        let v6 = service_ports(&s, IpFamily::V6);
        assert_eq!(
            v6.values().next().expect("port").cluster_ip.to_string(),
            "fd00::5"
        );
    }

    #[test]
    fn load_balancer_fields_and_policies() {
        let s = svc(json!({
            "metadata": {"namespace": "ns", "name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.9",
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                "loadBalancerSourceRanges": ["203.0.113.0/25", " 198.51.100.0/24 ", "2001:db8::/32"],
                "sessionAffinity": "ClientIP",
                "ports": [{"name": "p", "port": 443, "nodePort": 30443}]},
            "status": {"loadBalancer": {"ingress": [
                {"ip": "192.0.2.10"}, {"ip": "192.0.2.11", "ipMode": "Proxy"}, {"hostname": "lb.example.invalid"}
            ]}}
        }));
        let ports = service_ports(&s, IpFamily::V4);
        let info = ports.values().next().expect("port");
        assert_eq!(info.node_port, 30443);
        assert_eq!(
            info.load_balancer_vips,
            vec!["192.0.2.10".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(info.load_balancer_source_ranges.len(), 2);
        assert_eq!(info.session_affinity_seconds, Some(DEFAULT_STICKY_SECONDS));
        assert!(info.external_policy_local);
        assert!(!info.internal_policy_local);
        assert_eq!(info.health_check_node_port, 32000);
        assert!(info.uses_local_endpoints());
        assert!(
            info.uses_cluster_endpoints(),
            "ClusterIP traffic still uses the cluster"
        );
    }

    #[test]
    fn external_policy_local_needs_external_access() {
        let s = svc(json!({
            "metadata": {"namespace": "ns", "name": "c"},
            "spec": {"clusterIP": "10.96.0.9", "externalTrafficPolicy": "Local",
                "internalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30000}]}
        }));
        let info = service_ports(&s, IpFamily::V4)
            .into_values()
            .next()
            .expect("port");
        assert!(
            !info.external_policy_local,
            "ClusterIP type ignores externalTrafficPolicy"
        );
        assert_eq!(
            info.node_port, 0,
            "node ports only for NodePort/LoadBalancer"
        );
        assert!(info.internal_policy_local);
        assert!(info.uses_local_endpoints());
        assert!(!info.uses_cluster_endpoints());
    }

    #[test]
    fn tracker_reports_changes_and_deleted_udp_ips() {
        let mut map = ServicePortMap::default();
        let mut tracker = ServiceChangeTracker::new(IpFamily::V4);
        tracker.update(&basic("a", "10.96.0.1"));
        tracker.update(&basic("b", "10.96.0.2"));
        let r = map.apply(&mut tracker);
        assert_eq!(r.updated.len(), 2);
        assert_eq!(map.len(), 4);
        assert!(!tracker.has_pending());

        // The same object again is no change.
        tracker.update(&basic("a", "10.96.0.1"));
        assert_eq!(map.apply(&mut tracker), ServiceUpdate::default());

        // A service whose name is a prefix of another's keeps them apart.
        tracker.update(&basic("a-longer", "10.96.0.3"));
        map.apply(&mut tracker);
        tracker.delete(&basic("a", "10.96.0.1"));
        let r = map.apply(&mut tracker);
        assert_eq!(
            r.updated
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(
            r.deleted_udp_cluster_ips.into_iter().collect::<Vec<_>>(),
            ["10.96.0.1".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(map.len(), 4);
        assert!(map.iter().all(|(n, _)| n.name != "a"));
    }
}
