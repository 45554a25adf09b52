//! EndpointSlices to endpoints per service port (upstream's `endpointslicecache.go` and
//! `endpointschangetracker.go`): a cache of every slice by service, merged per service
//! port when a service's slices changed; conditions read as upstream (`ready` unset means
//! ready, `serving` unset follows `ready`, `terminating` unset means not terminating).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::service::port_range;
use super::{Endpoint, IpFamily, Protocol, ServiceName, ServicePortName};

/// The label naming the service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Endpoints of every service port, sorted by address.
#[derive(Debug, Default, Clone)]
pub struct EndpointsMap {
    endpoints: BTreeMap<ServicePortName, Vec<Endpoint>>,
}

impl EndpointsMap {
    /// The endpoints of a service port (empty when it has none).
    pub fn get(&self, name: &ServicePortName) -> &[Endpoint] {
        self.endpoints.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Applies the tracker's pending changes (upstream's `EndpointsMap.Update`).
    pub fn apply(&mut self, tracker: &mut EndpointsChangeTracker) -> EndpointsUpdate {
        let mut result = EndpointsUpdate::default();
        tracker.changes = 0;
        for service in std::mem::take(&mut tracker.dirty) {
            let current = tracker.merged(&service);
            // The service's ports are a range of the ordered map: O(log n), not a scan.
            let previous: BTreeMap<ServicePortName, Vec<Endpoint>> = self
                .endpoints
                .range(port_range(&service))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if previous == current {
                continue;
            }
            for (name, eps) in &previous {
                if name.protocol != Protocol::Udp {
                    continue;
                }
                let now = current.get(name).map(Vec::as_slice).unwrap_or(&[]);
                for ep in eps {
                    if !now.iter().any(|e| e.ip == ep.ip && e.port == ep.port) {
                        result
                            .deleted_udp_endpoints
                            .push((name.clone(), ep.ip, ep.port));
                    }
                }
            }
            for name in previous.keys() {
                self.endpoints.remove(name);
            }
            self.endpoints.extend(current);
            result.updated.insert(service);
        }
        result
    }
}

/// What one `EndpointsMap::apply` changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EndpointsUpdate {
    /// Services whose endpoints changed.
    pub updated: BTreeSet<ServiceName>,
    /// UDP endpoints that went away: (service port, IP, port), for conntrack cleanup.
    pub deleted_udp_endpoints: Vec<(ServicePortName, IpAddr, u16)>,
}

/// One slice as the cache keeps it: per port (name, protocol, number), its endpoints.
type CachedSlice = Vec<((String, Protocol), Vec<Endpoint>)>;

/// Collects EndpointSlice events between syncs (upstream's `EndpointsChangeTracker` with
/// its `EndpointSliceCache`).
#[derive(Debug)]
pub struct EndpointsChangeTracker {
    family: IpFamily,
    node_name: String,
    /// Each service's slices, sorted by name: a `Vec`, as a service has one or a few (an
    /// inner `BTreeMap` allocated a whole 11-slot node per service, ~0.5 KiB).
    slices: BTreeMap<ServiceName, Vec<(String, CachedSlice)>>,
    dirty: BTreeSet<ServiceName>,
    /// Updates and deletions that changed something since the last `apply` (upstream's
    /// `sync_proxy_rules_endpoint_changes_pending`, incremented per such change).
    changes: usize,
}

impl EndpointsChangeTracker {
    /// A tracker for the proxier of `family` on node `node_name`.
    pub fn new(family: IpFamily, node_name: impl Into<String>) -> Self {
        Self {
            family,
            node_name: node_name.into(),
            slices: BTreeMap::new(),
            dirty: BTreeSet::new(),
            changes: 0,
        }
    }

    /// Records a slice's current state (added or modified). Slices of another address
    /// family, or without the service-name label, are ignored.
    pub fn update(&mut self, slice: &EndpointSlice) {
        let Some((service, slice_name)) = self.key(slice) else {
            return;
        };
        let cached = self.cache(slice);
        let entry = self.slices.entry(service.clone()).or_default();
        let changed = match entry.binary_search_by(|(n, _)| n.cmp(&slice_name)) {
            Ok(i) if entry[i].1 == cached => false,
            Ok(i) => {
                entry[i].1 = cached;
                true
            }
            Err(i) => {
                entry.insert(i, (slice_name, cached));
                true
            }
        };
        if changed {
            self.dirty.insert(service);
            self.changes += 1;
        }
    }

    /// Records that a slice was deleted.
    pub fn delete(&mut self, slice: &EndpointSlice) {
        let Some((service, slice_name)) = self.key(slice) else {
            return;
        };
        if let Some(entry) = self.slices.get_mut(&service)
            && let Ok(i) = entry.binary_search_by(|(n, _)| n.cmp(&slice_name))
        {
            entry.remove(i);
            if entry.is_empty() {
                self.slices.remove(&service);
            }
            self.dirty.insert(service);
            self.changes += 1;
        }
    }

    /// Whether any change waits for a sync.
    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The slice updates and deletions that changed something since the last `apply`.
    pub fn pending(&self) -> usize {
        self.changes
    }

    /// The services whose slices changed since the last `apply`.
    pub fn pending_services(&self) -> impl Iterator<Item = &ServiceName> {
        self.dirty.iter()
    }

    fn key(&self, slice: &EndpointSlice) -> Option<(ServiceName, String)> {
        if slice.address_type != self.family.address_type() {
            return None;
        }
        let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        Some((
            ServiceName {
                namespace: slice.metadata.namespace.clone()?,
                name: service.clone(),
            },
            slice.metadata.name.clone()?,
        ))
    }

    fn cache(&self, slice: &EndpointSlice) -> CachedSlice {
        let mut out = CachedSlice::new();
        for port in slice.ports.iter().flatten() {
            let (Some(number), Some(protocol)) = (
                port.port.and_then(|p| u16::try_from(p).ok()),
                Protocol::parse(port.protocol.as_deref()),
            ) else {
                continue;
            };
            let mut eps = Vec::new();
            for ep in &slice.endpoints {
                let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                    continue;
                };
                if IpFamily::of(&ip) != self.family {
                    continue;
                }
                let cond = ep.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
                let hints = ep.hints.as_ref();
                eps.push(Endpoint {
                    ip,
                    port: number,
                    is_local: ep.node_name.as_deref() == Some(self.node_name.as_str()),
                    ready,
                    serving,
                    terminating,
                    zone_hints: hints
                        .and_then(|h| h.for_zones.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|z| z.name.clone())
                        .collect(),
                    node_hints: hints
                        .and_then(|h| h.for_nodes.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|n| n.name.clone())
                        .collect(),
                });
            }
            out.push(((port.name.clone().unwrap_or_default(), protocol), eps));
        }
        out
    }

    /// Every slice of `service` merged per service port: endpoints deduplicated by
    /// address (a local copy wins, as upstream), sorted by address.
    fn merged(&self, service: &ServiceName) -> BTreeMap<ServicePortName, Vec<Endpoint>> {
        let mut by_port: BTreeMap<ServicePortName, BTreeMap<(IpAddr, u16), Endpoint>> =
            BTreeMap::new();
        for slice in self
            .slices
            .get(service)
            .into_iter()
            .flat_map(|s| s.iter().map(|(_, slice)| slice))
        {
            for ((port_name, protocol), eps) in slice {
                let spn = ServicePortName {
                    namespace: service.namespace.clone(),
                    name: service.name.clone(),
                    port: port_name.clone(),
                    protocol: *protocol,
                };
                let set = by_port.entry(spn).or_default();
                for ep in eps {
                    let key = (ep.ip, ep.port);
                    if ep.is_local || !set.contains_key(&key) {
                        set.insert(key, ep.clone());
                    }
                }
            }
        }
        by_port
            .into_iter()
            .filter(|(_, eps)| !eps.is_empty())
            .map(|(k, eps)| (k, eps.into_values().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn slice(svc: &str, name: &str, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": name,
                "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": eps
        }))
        .expect("slice")
    }

    fn spn(svc: &str, port: &str, protocol: Protocol) -> ServicePortName {
        ServicePortName {
            namespace: "ns".into(),
            name: svc.into(),
            port: port.into(),
            protocol,
        }
    }

    #[test]
    fn conditions_default_as_upstream() {
        let mut t = EndpointsChangeTracker::new(IpFamily::V4, "node-a");
        t.update(&slice("s", "s-1", json!([
            {"addresses": ["10.0.0.1"], "nodeName": "node-a"},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true},
             "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "node-a"}]}},
            {"addresses": ["not-an-ip"]}
        ])));
        let mut map = EndpointsMap::default();
        let r = map.apply(&mut t);
        assert_eq!(r.updated.len(), 1);
        let eps = map.get(&spn("s", "http", Protocol::Tcp));
        assert_eq!(eps.len(), 3);
        assert!(eps[0].ready && eps[0].serving && !eps[0].terminating && eps[0].is_local);
        assert!(!eps[1].ready && !eps[1].serving && !eps[1].is_local);
        assert!(!eps[2].ready && eps[2].serving && eps[2].terminating);
        assert!(eps[2].zone_hints.contains("z1") && eps[2].node_hints.contains("node-a"));
        assert_eq!(map.get(&spn("s", "dns", Protocol::Udp)).len(), 3);
    }

    #[test]
    fn slices_merge_and_dedupe_and_udp_removals_are_reported() {
        let mut t = EndpointsChangeTracker::new(IpFamily::V4, "node-a");
        let mut map = EndpointsMap::default();
        t.update(&slice("s", "s-1", json!([{"addresses": ["10.0.0.2"]}])));
        t.update(&slice(
            "s",
            "s-2",
            json!([
                {"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"], "nodeName": "node-a"}
            ]),
        ));
        map.apply(&mut t);
        let eps = map.get(&spn("s", "http", Protocol::Tcp));
        assert_eq!(
            eps.iter().map(|e| e.addr_string()).collect::<Vec<_>>(),
            ["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        assert!(eps[1].is_local, "a local duplicate wins");

        // Re-sending the same slice is not a change.
        t.update(&slice("s", "s-1", json!([{"addresses": ["10.0.0.2"]}])));
        assert!(!t.has_pending());

        t.delete(&slice("s", "s-2", json!([])));
        let r = map.apply(&mut t);
        assert_eq!(
            r.deleted_udp_endpoints,
            vec![(
                spn("s", "dns", Protocol::Udp),
                "10.0.0.1".parse().expect("ip"),
                53
            )]
        );
        assert_eq!(map.get(&spn("s", "http", Protocol::Tcp)).len(), 1);

        t.delete(&slice("s", "s-1", json!([])));
        map.apply(&mut t);
        assert!(map.get(&spn("s", "http", Protocol::Tcp)).is_empty());
    }

    #[test]
    fn an_endpoint_without_hints_stays_small() {
        // Each endpoint is held twice (slice cache and map): 600k at 30k services × 10.
        assert!(std::mem::size_of::<Endpoint>() <= 40);
        let none: crate::model::Hints = Vec::<String>::new().into_iter().collect();
        assert!(none.is_empty() && !none.contains("z1"));
        assert_eq!(none, crate::model::Hints::default());
    }

    #[test]
    fn a_service_change_leaves_services_with_a_longer_name_alone() {
        // The map is updated by the range of the service's ports: "s" must not take
        // the ports of "s-2" (nor the reverse).
        let mut t = EndpointsChangeTracker::new(IpFamily::V4, "n");
        let mut map = EndpointsMap::default();
        t.update(&slice("s", "s-1", json!([{"addresses": ["10.0.0.1"]}])));
        t.update(&slice("s-2", "s-2-1", json!([{"addresses": ["10.0.0.2"]}])));
        t.update(&slice("r", "r-1", json!([{"addresses": ["10.0.0.3"]}])));
        map.apply(&mut t);
        t.delete(&slice("s", "s-1", json!([])));
        let r = map.apply(&mut t);
        assert_eq!(r.updated.len(), 1);
        assert!(map.get(&spn("s", "http", Protocol::Tcp)).is_empty());
        assert_eq!(map.get(&spn("s-2", "http", Protocol::Tcp)).len(), 1);
        assert_eq!(map.get(&spn("r", "dns", Protocol::Udp)).len(), 1);
        assert_eq!(
            r.deleted_udp_endpoints,
            vec![(
                spn("s", "dns", Protocol::Udp),
                "10.0.0.1".parse().expect("ip"),
                53
            )]
        );
    }

    #[test]
    fn other_family_and_unlabelled_slices_are_ignored() {
        let mut t = EndpointsChangeTracker::new(IpFamily::V6, "n");
        t.update(&slice("s", "s-1", json!([{"addresses": ["10.0.0.1"]}])));
        assert!(!t.has_pending());
        let mut t = EndpointsChangeTracker::new(IpFamily::V4, "n");
        let mut s = slice("s", "s-1", json!([{"addresses": ["10.0.0.1"]}]));
        s.metadata.labels = None;
        t.update(&s);
        assert!(!t.has_pending());
    }
}
