//! A pod's QoS class, and the per-container resource lists the cgroup values are built
//! from.
//!
//! Ported from upstream `pkg/apis/core/v1/helper/qos/qos.go` (`ComputePodQOS`): only
//! `cpu` and `memory` count, init containers are included, quantities are compared by
//! value (so `1` equals `1000m`), and pod-level resources (`spec.resources`, the
//! `PodLevelResources` feature, on by default since 1.34) replace the containers' when
//! set. A limit with no request counts as a request equal to the limit, as the
//! apiserver's defaulting (`SetDefaults_Pod`) would have made it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use nodelet_manifests::quantity::Quantity;

/// A resource list: resource name → parsed quantity.
pub type ResourceList = BTreeMap<String, Quantity>;

/// Upstream's three QoS classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    /// Every container sets cpu and memory limits equal to its requests.
    Guaranteed,
    /// Some requests or limits, but not Guaranteed.
    Burstable,
    /// No cpu or memory request or limit anywhere.
    BestEffort,
}

impl QosClass {
    /// The API string (`Guaranteed`, `Burstable`, `BestEffort`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

impl std::fmt::Display for QosClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a k8s-openapi resource map; entries that don't parse are skipped (manifests
/// are validated before they get here).
pub(crate) fn parse_list(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> ResourceList {
    map.into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), Quantity::parse(&v.0).ok()?)))
        .collect()
}

/// The requests of a requirements block, with the apiserver's defaulting: a resource
/// with a limit but no request gets request = limit.
pub(crate) fn requirements_requests(res: Option<&ResourceRequirements>) -> ResourceList {
    let mut requests = parse_list(res.and_then(|r| r.requests.as_ref()));
    for (name, limit) in requirements_limits(res) {
        requests.entry(name).or_insert(limit);
    }
    requests
}

/// The limits of a requirements block.
pub(crate) fn requirements_limits(res: Option<&ResourceRequirements>) -> ResourceList {
    parse_list(res.and_then(|r| r.limits.as_ref()))
}

/// A container's requests (defaulted from its limits).
pub(crate) fn container_requests(c: &Container) -> ResourceList {
    requirements_requests(c.resources.as_ref())
}

/// A container's limits.
pub(crate) fn container_limits(c: &Container) -> ResourceList {
    requirements_limits(c.resources.as_ref())
}

/// Whether the pod sets pod-level resources upstream supports (`cpu`, `memory`,
/// `hugepages-*`): component-helpers `IsPodLevelResourcesSet`.
pub(crate) fn pod_level_resources_set(spec: &PodSpec) -> bool {
    let Some(res) = spec.resources.as_ref() else {
        return false;
    };
    res.requests
        .iter()
        .chain(res.limits.iter())
        .flat_map(BTreeMap::keys)
        .any(|k| is_supported_pod_level_resource(k))
}

/// component-helpers `IsSupportedPodLevelResource`.
pub(crate) fn is_supported_pod_level_resource(name: &str) -> bool {
    name == "cpu" || name == "memory" || name.starts_with("hugepages-")
}

fn is_qos_resource(name: &str) -> bool {
    name == "cpu" || name == "memory"
}

/// The pod's QoS class, as upstream `ComputePodQOS` (the kubelet's `GetPodQOS` returns
/// `status.qosClass` when set, which for a pod we admit is this same value).
#[must_use]
pub fn qos_class(spec: &PodSpec) -> QosClass {
    let mut requests: ResourceList = BTreeMap::new();
    let mut limits: ResourceList = BTreeMap::new();
    let mut guaranteed = true;

    let mut add = |reqs: ResourceList, lims: ResourceList, guaranteed: &mut bool| {
        for (name, q) in reqs {
            if is_qos_resource(&name) && q.nanos() > 0 {
                let sum = requests.entry(name).or_insert(Quantity::from_nanos(0));
                *sum = Quantity::from_nanos(sum.nanos() + q.nanos());
            }
        }
        let mut found = (false, false);
        for (name, q) in lims {
            if is_qos_resource(&name) && q.nanos() > 0 {
                if name == "cpu" {
                    found.0 = true;
                } else {
                    found.1 = true;
                }
                let sum = limits.entry(name).or_insert(Quantity::from_nanos(0));
                *sum = Quantity::from_nanos(sum.nanos() + q.nanos());
            }
        }
        if found != (true, true) {
            *guaranteed = false;
        }
    };

    if pod_level_resources_set(spec) {
        let res = spec.resources.as_ref();
        add(
            requirements_requests(res),
            requirements_limits(res),
            &mut guaranteed,
        );
    } else {
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            add(container_requests(c), container_limits(c), &mut guaranteed);
        }
    }

    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    if guaranteed
        && requests
            .iter()
            .any(|(name, req)| limits.get(name) != Some(req))
    {
        guaranteed = false;
    }
    if guaranteed && requests.len() == limits.len() {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

    pub(crate) fn rl(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, K8sQuantity>> {
        if pairs.is_empty() {
            return None;
        }
        Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), K8sQuantity((*v).to_owned())))
                .collect(),
        )
    }

    /// A container with the given requests and limits.
    pub(crate) fn container(
        name: &str,
        requests: &[(&str, &str)],
        limits: &[(&str, &str)],
    ) -> Container {
        Container {
            name: name.to_owned(),
            resources: Some(ResourceRequirements {
                requests: rl(requests),
                limits: rl(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub(crate) fn pod(containers: Vec<Container>, init: Vec<Container>) -> PodSpec {
        PodSpec {
            containers,
            init_containers: if init.is_empty() { None } else { Some(init) },
            ..Default::default()
        }
    }

    // Cases from upstream pkg/apis/core/v1/helper/qos/qos_test.go (TestComputePodQOS).
    #[test]
    fn upstream_table() {
        use QosClass::*;
        let cases: Vec<(PodSpec, QosClass)> = vec![
            (
                pod(vec![container("best-effort", &[], &[])], vec![]),
                BestEffort,
            ),
            (
                pod(
                    vec![
                        container("best-effort-1", &[], &[]),
                        container("best-effort-2", &[], &[]),
                    ],
                    vec![],
                ),
                BestEffort,
            ),
            (
                pod(
                    vec![container(
                        "guaranteed",
                        &[("cpu", "100m"), ("memory", "100Mi")],
                        &[("cpu", "100m"), ("memory", "100Mi")],
                    )],
                    vec![],
                ),
                Guaranteed,
            ),
            (
                pod(
                    vec![
                        container(
                            "guaranteed",
                            &[("cpu", "100m"), ("memory", "100Mi")],
                            &[("cpu", "100m"), ("memory", "100Mi")],
                        ),
                        container("best-effort", &[], &[]),
                    ],
                    vec![],
                ),
                Burstable,
            ),
            (
                pod(
                    vec![container(
                        "burstable",
                        &[("cpu", "100m"), ("memory", "100Mi")],
                        &[],
                    )],
                    vec![],
                ),
                Burstable,
            ),
            (
                pod(
                    vec![container(
                        "burstable",
                        &[("cpu", "100m"), ("memory", "100Mi")],
                        &[("cpu", "200m"), ("memory", "200Mi")],
                    )],
                    vec![],
                ),
                Burstable,
            ),
            (
                pod(
                    vec![container("burstable", &[], &[("memory", "100Mi")])],
                    vec![],
                ),
                Burstable,
            ),
            // Extended resources don't count.
            (
                pod(
                    vec![container(
                        "guaranteed",
                        &[
                            ("cpu", "100m"),
                            ("memory", "100Mi"),
                            ("nvidia.com/gpu", "2"),
                        ],
                        &[
                            ("cpu", "100m"),
                            ("memory", "100Mi"),
                            ("nvidia.com/gpu", "4"),
                        ],
                    )],
                    vec![],
                ),
                Guaranteed,
            ),
            // A best-effort init container makes a guaranteed pod burstable.
            (
                pod(
                    vec![container(
                        "guaranteed",
                        &[("cpu", "100m"), ("memory", "100Mi")],
                        &[("cpu", "100m"), ("memory", "100Mi")],
                    )],
                    vec![container("init", &[], &[])],
                ),
                Burstable,
            ),
            (
                pod(
                    vec![container("best-effort", &[], &[])],
                    vec![container("init", &[("cpu", "10m")], &[])],
                ),
                Burstable,
            ),
        ];
        for (i, (spec, want)) in cases.iter().enumerate() {
            assert_eq!(qos_class(spec), *want, "case {i}");
        }
    }

    #[test]
    fn quantities_compare_by_value() {
        let spec = pod(
            vec![container(
                "c",
                &[("cpu", "1"), ("memory", "1Gi")],
                &[("cpu", "1000m"), ("memory", "1073741824")],
            )],
            vec![],
        );
        assert_eq!(qos_class(&spec), QosClass::Guaranteed);
    }

    #[test]
    fn limits_only_default_requests() {
        let spec = pod(
            vec![container("c", &[], &[("cpu", "500m"), ("memory", "64Mi")])],
            vec![],
        );
        assert_eq!(qos_class(&spec), QosClass::Guaranteed);
    }

    #[test]
    fn pod_level_resources_replace_containers() {
        let mut spec = pod(vec![container("c", &[], &[])], vec![]);
        spec.resources = Some(ResourceRequirements {
            limits: rl(&[("cpu", "1"), ("memory", "1Gi")]),
            ..Default::default()
        });
        assert_eq!(qos_class(&spec), QosClass::Guaranteed);
        spec.resources = Some(ResourceRequirements {
            requests: rl(&[("cpu", "1")]),
            ..Default::default()
        });
        assert_eq!(qos_class(&spec), QosClass::Burstable);
    }
}
