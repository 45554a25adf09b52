//! Builders of Services and EndpointSlices for tests and benches (not used by the proxy
//! itself): JSON shaped as the apiserver returns it, deserialised into k8s-openapi types.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

/// A Service from its `spec` (and optional `status`) JSON.
///
/// # Panics
/// When the JSON is not a valid Service (test input only).
#[allow(clippy::expect_used)]
pub fn service(ns: &str, name: &str, spec: Value, status: Option<Value>) -> Service {
    let mut v = json!({"metadata": {"namespace": ns, "name": name}, "spec": spec});
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).expect("a valid Service")
}

/// A ClusterIP service with one TCP port named `port_name`.
pub fn cluster_ip(ns: &str, name: &str, ip: &str, port_name: &str, port: u16) -> Service {
    service(
        ns,
        name,
        json!({"clusterIP": ip, "clusterIPs": [ip],
               "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]}),
        None,
    )
}

/// One endpoint: address, node, ready.
#[derive(Debug, Clone)]
pub struct Ep<'a> {
    pub ip: &'a str,
    pub node: &'a str,
    pub ready: bool,
    pub terminating: bool,
}

/// A ready endpoint on `node`.
pub fn ep<'a>(ip: &'a str, node: &'a str) -> Ep<'a> {
    Ep {
        ip,
        node,
        ready: true,
        terminating: false,
    }
}

/// An IPv4 EndpointSlice of service `svc` with one TCP port.
///
/// # Panics
/// When the JSON is not a valid EndpointSlice (test input only).
#[allow(clippy::expect_used)]
pub fn slice(
    ns: &str,
    svc: &str,
    name: &str,
    port_name: &str,
    port: u16,
    eps: &[Ep<'_>],
) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|e| {
            json!({"addresses": [e.ip], "nodeName": e.node,
                   "conditions": {"ready": e.ready, "serving": e.ready || e.terminating,
                                  "terminating": e.terminating}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .expect("a valid EndpointSlice")
}

/// `svc` with every port's protocol set to UDP.
pub fn udp(mut svc: Service) -> Service {
    if let Some(spec) = svc.spec.as_mut() {
        for p in spec.ports.iter_mut().flatten() {
            p.protocol = Some("UDP".into());
        }
    }
    svc
}

/// `slice` with every port's protocol set to UDP.
pub fn udp_slice(mut slice: EndpointSlice) -> EndpointSlice {
    for p in slice.ports.iter_mut().flatten() {
        p.protocol = Some("UDP".into());
    }
    slice
}
