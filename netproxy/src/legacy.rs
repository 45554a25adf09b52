//! Older apiservers (upstream kube-proxy's fallbacks): when the server has no
//! `discovery.k8s.io/v1` EndpointSlices (before 1.21), the proxy watches
//! `discovery.k8s.io/v1beta1` ones, and without those (before 1.17, or with the API
//! turned off) core `v1` Endpoints. Which one is decided once at start from the server's
//! resource discovery (`discover`); the objects are converted to `v1` EndpointSlices so
//! the model sees one kind:
//!
//! - a `v1beta1` slice is a `v1` one but for the per-endpoint `topology` map, whose
//!   `kubernetes.io/hostname` becomes `nodeName` and `topology.kubernetes.io/zone`
//!   becomes `zone` (the apiserver's own conversion);
//! - an `Endpoints` becomes one slice per subset and address family, as upstream's
//!   EndpointSlice mirroring controller makes them: `addresses` ready, `notReadyAddresses`
//!   not ready (serving follows ready), the subset's ports, the service-name label.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use serde_json::Value;

use crate::model::SERVICE_NAME_LABEL;

/// Where endpoints come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointsSource {
    /// `discovery.k8s.io/v1` EndpointSlices.
    V1,
    /// `discovery.k8s.io/v1beta1` EndpointSlices.
    V1Beta1,
    /// Core `v1` Endpoints.
    CoreEndpoints,
}

/// Asks the server which endpoints API it serves, newest first. A discovery error
/// other than "not found" assumes `v1` (the watch then reports what is wrong).
pub async fn discover(client: &Client) -> EndpointsSource {
    for (version, source) in [
        ("discovery.k8s.io/v1", EndpointsSource::V1),
        ("discovery.k8s.io/v1beta1", EndpointsSource::V1Beta1),
    ] {
        match client.list_api_group_resources(version).await {
            Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => {
                return source;
            }
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(error = %e, version, "API discovery failed; assuming discovery.k8s.io/v1");
                return EndpointsSource::V1;
            }
        }
    }
    EndpointsSource::CoreEndpoints
}

/// A `discovery.k8s.io/v1beta1` EndpointSlice (as JSON) to a `v1` one; `None` when it
/// does not decode.
pub fn slice_from_v1beta1(mut obj: Value) -> Option<EndpointSlice> {
    if let Some(eps) = obj.get_mut("endpoints").and_then(Value::as_array_mut) {
        for ep in eps {
            let Some(ep) = ep.as_object_mut() else {
                continue;
            };
            if let Some(Value::Object(topology)) = ep.remove("topology") {
                if !ep.contains_key("nodeName")
                    && let Some(host) = topology.get("kubernetes.io/hostname")
                {
                    ep.insert("nodeName".into(), host.clone());
                }
                if let Some(zone) = topology.get("topology.kubernetes.io/zone") {
                    ep.insert("zone".into(), zone.clone());
                }
            }
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), "discovery.k8s.io/v1".into());
    }
    serde_json::from_value(obj).ok()
}

/// The slices standing for a core `v1` Endpoints, named `<name>-<family>-<subset>`.
pub fn slices_from_endpoints(eps: &Endpoints) -> Vec<EndpointSlice> {
    let (Some(ns), Some(name)) = (&eps.metadata.namespace, &eps.metadata.name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, subset) in eps.subsets.iter().flatten().enumerate() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: p.name.clone(),
                port: Some(p.port),
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let mut by_family: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
        let all = subset.addresses.iter().flatten().map(|a| (a, true)).chain(
            subset
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a, false)),
        );
        for (addr, ready) in all {
            let family = match addr.ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => "IPv4",
                Ok(std::net::IpAddr::V6(_)) => "IPv6",
                Err(_) => continue,
            };
            by_family.entry(family).or_default().push(Endpoint {
                addresses: vec![addr.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                hostname: addr.hostname.clone(),
                node_name: addr.node_name.clone(),
                target_ref: addr.target_ref.clone(),
                ..Endpoint::default()
            });
        }
        for (family, endpoints) in by_family {
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    namespace: Some(ns.clone()),
                    name: Some(format!("{name}-{}-{i}", family.to_lowercase())),
                    labels: Some(BTreeMap::from([(
                        SERVICE_NAME_LABEL.to_owned(),
                        name.clone(),
                    )])),
                    ..ObjectMeta::default()
                },
                address_type: family.to_owned(),
                endpoints,
                ports: Some(ports.clone()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
