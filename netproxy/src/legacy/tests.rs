//! The conversions of `v1beta1` EndpointSlices and core Endpoints, fed through the
//! model as the proxier would.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::model::{EndpointsChangeTracker, EndpointsMap, IpFamily, Protocol, ServicePortName};

fn spn(port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName {
        namespace: "ns".into(),
        name: "web".into(),
        port: port.into(),
        protocol,
    }
}

#[test]
fn v1beta1_topology_becomes_node_name_and_zone() {
    let s = slice_from_v1beta1(json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"namespace": "ns", "name": "web-abc",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
             "topology": {"kubernetes.io/hostname": "node-a", "topology.kubernetes.io/zone": "z1"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false},
             "nodeName": "node-b", "topology": {"kubernetes.io/hostname": "ignored"},
             "hints": {"forZones": [{"name": "z2"}]}}
        ]
    }))
    .expect("converts");
    assert_eq!(s.endpoints[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(s.endpoints[0].zone.as_deref(), Some("z1"));
    assert_eq!(s.endpoints[1].node_name.as_deref(), Some("node-b"));
    let hints = s.endpoints[1].hints.as_ref().expect("hints");
    assert_eq!(hints.for_zones.as_ref().expect("zones")[0].name, "z2");

    let mut t = EndpointsChangeTracker::new(IpFamily::V4, "node-a");
    t.update(&s);
    let mut m = EndpointsMap::default();
    m.apply(&mut t);
    let eps = m.get(&spn("http", Protocol::Tcp));
    assert_eq!(eps.len(), 2);
    assert!(eps[0].is_local && eps[0].ready);
    assert!(!eps[1].is_local && !eps[1].ready);
    assert!(slice_from_v1beta1(json!({"endpoints": 3})).is_none());
}

#[test]
fn core_endpoints_become_one_slice_per_subset_and_family() {
    let e: Endpoints = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": "web"},
        "subsets": [
            {"addresses": [{"ip": "10.0.0.1", "nodeName": "node-a"}, {"ip": "fd00::1"}],
             "notReadyAddresses": [{"ip": "10.0.0.2", "nodeName": "node-b"}],
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
            {"addresses": [{"ip": "10.0.0.3"}],
             "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
        ]
    }))
    .expect("endpoints");
    let slices = slices_from_endpoints(&e);
    let names: Vec<_> = slices
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s.address_type.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("web-ipv4-0".to_string(), "IPv4".to_string()),
            ("web-ipv6-0".to_string(), "IPv6".to_string()),
            ("web-ipv4-1".to_string(), "IPv4".to_string())
        ]
    );
    let mut t = EndpointsChangeTracker::new(IpFamily::V4, "node-a");
    for s in &slices {
        t.update(s);
    }
    let mut m = EndpointsMap::default();
    m.apply(&mut t);
    let http = m.get(&spn("http", Protocol::Tcp));
    assert_eq!(http.len(), 2);
    assert!(http[0].ready && http[0].is_local && http[0].port == 8080);
    assert!(!http[1].ready && !http[1].serving);
    let dns = m.get(&spn("dns", Protocol::Udp));
    assert_eq!(dns.len(), 1);
    assert_eq!(dns[0].port, 53);

    let empty: Endpoints =
        serde_json::from_value(json!({"metadata": {"namespace": "ns", "name": "web"}}))
            .expect("endpoints");
    assert!(slices_from_endpoints(&empty).is_empty());
}
