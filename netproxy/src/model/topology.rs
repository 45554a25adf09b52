//! Which endpoints this node sends a service port's traffic to (upstream's
//! `topology.go`, `CategorizeEndpoints`): ready endpoints, falling back to serving and
//! terminating ones when no ready one exists; the Local traffic policies' same-node
//! subset; and topology hints (`forNodes`, `forZones`, which the EndpointSlice controller
//! sets for `trafficDistribution` and the `topology-mode` annotation).

use super::{Endpoint, ServicePortInfo};

/// The node's identity as topology needs it.
#[derive(Debug, Clone, Default)]
pub struct NodeTopology {
    pub node_name: String,
    /// The node's `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
}

/// The endpoints of a service port as this node uses them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// Endpoints for Cluster traffic policy.
    pub cluster: Vec<&'a Endpoint>,
    /// Endpoints for Local traffic policy (this node's).
    pub local: Vec<&'a Endpoint>,
    /// The union of the two, in address order: every endpoint chain to program.
    pub all_reachable: Vec<&'a Endpoint>,
    /// Whether the service has any usable endpoint anywhere in the cluster.
    pub has_any: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    SameNode,
    SameZone,
}

/// Upstream's `topologyModeFromHints`: same-node hints when every ready endpoint has
/// node hints and one names this node; otherwise same-zone hints likewise.
fn topology_mode(endpoints: &[Endpoint], node: &NodeTopology) -> Option<TopologyMode> {
    let mut all_node_hints = true;
    let mut has_for_node = false;
    let mut all_zone_hints = true;
    let mut has_for_zone = false;
    for ep in endpoints.iter().filter(|e| e.ready) {
        if ep.node_hints.is_empty() {
            all_node_hints = false;
        } else if ep.node_hints.contains(&node.node_name) {
            has_for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if node
            .zone
            .as_ref()
            .is_some_and(|z| ep.zone_hints.contains(z))
        {
            has_for_zone = true;
        }
    }
    if all_node_hints && has_for_node {
        return Some(TopologyMode::SameNode);
    }
    if all_zone_hints && has_for_zone {
        return Some(TopologyMode::SameZone);
    }
    None
}

fn available_for_topology(ep: &Endpoint, mode: Option<TopologyMode>, node: &NodeTopology) -> bool {
    match mode {
        None => true,
        Some(TopologyMode::SameNode) => ep.node_hints.contains(&node.node_name),
        Some(TopologyMode::SameZone) => node
            .zone
            .as_ref()
            .is_some_and(|z| ep.zone_hints.contains(z)),
    }
}

/// Splits a service port's endpoints into those used for Cluster and Local policies.
pub fn categorize_endpoints<'a>(
    endpoints: &'a [Endpoint],
    svc: &ServicePortInfo,
    node: &NodeTopology,
) -> Categorized<'a> {
    let mut out = Categorized::default();
    if svc.uses_cluster_endpoints() {
        let mode = topology_mode(endpoints, node);
        out.cluster = endpoints
            .iter()
            .filter(|e| e.ready && available_for_topology(e, mode, node))
            .collect();
        // No ready endpoint anywhere (topology already fell back when none matched this
        // node): use serving, terminating ones so connections drain gracefully.
        if out.cluster.is_empty() {
            out.cluster = endpoints
                .iter()
                .filter(|e| e.serving && e.terminating)
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !svc.uses_local_endpoints() {
        out.all_reachable = out.cluster.clone();
        return out;
    }
    let mut local_ready = false;
    let mut local_terminating = false;
    for ep in endpoints {
        if ep.ready {
            out.has_any = true;
            local_ready |= ep.is_local;
        } else if ep.serving && ep.terminating {
            out.has_any = true;
            local_terminating |= ep.is_local;
        }
    }
    if local_ready {
        out.local = endpoints.iter().filter(|e| e.is_local && e.ready).collect();
    } else if local_terminating {
        out.local = endpoints
            .iter()
            .filter(|e| e.is_local && e.serving && e.terminating)
            .collect();
    }
    if !svc.uses_cluster_endpoints() {
        out.all_reachable = out.local.clone();
        return out;
    }
    let mut all: Vec<&Endpoint> = out
        .cluster
        .iter()
        .chain(out.local.iter())
        .copied()
        .collect();
    all.sort_by_key(|e| (e.ip, e.port));
    all.dedup_by_key(|e| (e.ip, e.port));
    out.all_reachable = all;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn ep(last: u8, local: bool, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            ip: [10, 0, 0, last].into(),
            port: 80,
            is_local: local,
            ready,
            serving,
            terminating,
            zone_hints: Default::default(),
            node_hints: Default::default(),
        }
    }

    fn svc(internal_local: bool, external_local: bool, node_port: u16) -> ServicePortInfo {
        ServicePortInfo {
            cluster_ip: [10, 96, 0, 1].into(),
            port: 80,
            protocol: Protocol::Tcp,
            node_port,
            load_balancer_vips: vec![],
            external_ips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity_seconds: None,
            external_policy_local: external_local,
            internal_policy_local: internal_local,
            health_check_node_port: 0,
            traffic_distribution: None,
        }
    }

    fn node() -> NodeTopology {
        NodeTopology {
            node_name: "a".into(),
            zone: Some("z1".into()),
        }
    }

    fn last(v: &[&Endpoint]) -> Vec<u8> {
        v.iter()
            .map(|e| match e.ip {
                std::net::IpAddr::V4(ip) => ip.octets()[3],
                std::net::IpAddr::V6(_) => 0,
            })
            .collect()
    }

    #[test]
    fn cluster_uses_ready_then_serving_terminating() {
        let eps = [
            ep(1, false, true, true, false),
            ep(2, false, false, true, true),
            ep(3, false, false, false, false),
        ];
        let c = categorize_endpoints(&eps, &svc(false, false, 0), &node());
        assert_eq!(last(&c.cluster), [1]);
        assert!(c.has_any);
        assert_eq!(last(&c.all_reachable), [1]);

        let eps = [
            ep(2, false, false, true, true),
            ep(3, false, false, false, true),
        ];
        let c = categorize_endpoints(&eps, &svc(false, false, 0), &node());
        assert_eq!(last(&c.cluster), [2]);

        let eps = [ep(3, false, false, false, false)];
        let c = categorize_endpoints(&eps, &svc(false, false, 0), &node());
        assert!(c.cluster.is_empty() && !c.has_any);
    }

    #[test]
    fn internal_local_uses_local_ready_then_local_terminating() {
        let eps = [
            ep(1, false, true, true, false),
            ep(2, true, false, true, true),
            ep(3, true, true, true, false),
        ];
        let c = categorize_endpoints(&eps, &svc(true, false, 0), &node());
        assert!(c.cluster.is_empty());
        assert_eq!(last(&c.local), [3]);
        assert_eq!(last(&c.all_reachable), [3]);

        let eps = [
            ep(1, false, true, true, false),
            ep(2, true, false, true, true),
        ];
        let c = categorize_endpoints(&eps, &svc(true, false, 0), &node());
        assert_eq!(
            last(&c.local),
            [2],
            "terminating local only when no local ready"
        );
        assert!(c.has_any);

        let eps = [ep(1, false, true, true, false)];
        let c = categorize_endpoints(&eps, &svc(true, false, 0), &node());
        assert!(c.local.is_empty());
        assert!(c.has_any, "remote endpoints exist");
    }

    #[test]
    fn external_local_reaches_the_union() {
        let eps = [
            ep(1, false, true, true, false),
            ep(2, true, true, true, false),
        ];
        let c = categorize_endpoints(&eps, &svc(false, true, 30000), &node());
        assert_eq!(last(&c.cluster), [1, 2]);
        assert_eq!(last(&c.local), [2]);
        assert_eq!(last(&c.all_reachable), [1, 2]);
    }

    #[test]
    fn topology_hints_zone_and_node() {
        let mut a = ep(1, false, true, true, false);
        a.zone_hints.insert("z1".into());
        let mut b = ep(2, false, true, true, false);
        b.zone_hints.insert("z2".into());
        let eps = [a.clone(), b.clone()];
        let c = categorize_endpoints(&eps, &svc(false, false, 0), &node());
        assert_eq!(last(&c.cluster), [1]);

        // One ready endpoint without hints: hints are ignored.
        let d = ep(3, false, true, true, false);
        let eps = [a.clone(), b.clone(), d];
        let c = categorize_endpoints(&eps, &svc(false, false, 0), &node());
        assert_eq!(last(&c.cluster), [1, 2, 3]);

        // No hint for this zone: all endpoints.
        let other = NodeTopology {
            node_name: "a".into(),
            zone: Some("z9".into()),
        };
        let eps = [a.clone(), b.clone()];
        let c = categorize_endpoints(&eps, &svc(false, false, 0), &other);
        assert_eq!(last(&c.cluster), [1, 2]);

        // Node hints win over zone hints.
        a.node_hints.insert("other".into());
        b.node_hints.insert("a".into());
        let eps = [a, b];
        let c = categorize_endpoints(&eps, &svc(false, false, 0), &node());
        assert_eq!(last(&c.cluster), [2]);
    }
}
