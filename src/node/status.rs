//! The Node object as this agent would post it: capacity and allocatable, conditions
//! (Ready and the pressure conditions from the eviction manager), the pressure taints,
//! addresses, node info and the images list, each built as upstream's node status
//! setters build it (`pkg/kubelet/nodestatus/setters.go`).
//!
//! Without an apiserver the object is served on the read-only port at `GET /node`
//! (a nodelet addition, so a standalone node's conditions can be seen); cluster mode
//! posts the same object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use nodelet_cri::image::ImageInfo;

/// Upstream's `nodeStatusMaxImages` default.
pub const MAX_IMAGES: usize = 50;
/// Upstream's `MaxNamesPerImageInNodeStatus`.
pub const MAX_NAMES_PER_IMAGE: usize = 5;

/// The Kubernetes version whose API and behaviour nodelet follows: the API it is
/// built against (k8s-openapi's `v1_34`). Upstream's skew policy lets a kubelet be up
/// to three minor versions older than the apiserver and never newer, so claiming the
/// API version we compile against (not the newest apiserver we test with, v1.37)
/// keeps every control plane from 1.34 on accepting the node.
pub const KUBELET_VERSION: &str = "v1.34.0";

/// The node's `kubeletVersion`: [`KUBELET_VERSION`] with nodelet's own version as
/// build metadata (a valid semantic version, so version-skew checks parse it).
pub fn kubelet_version() -> String {
    format!("{KUBELET_VERSION}+nodelet-{}", env!("CARGO_PKG_VERSION"))
}

/// Everything the Node object is built from.
#[derive(Debug, Clone, Default)]
pub struct NodeInputs {
    /// The node name.
    pub name: String,
    /// The node's IP (`InternalIP`).
    pub ip: String,
    /// The machine's hostname (`Hostname` address).
    pub hostname: String,
    /// Resource capacity (`cpu`, `memory`, `pods`, `ephemeral-storage`, `hugepages-*`).
    pub capacity: BTreeMap<String, Quantity>,
    /// What pods may use: capacity minus reservations and the hard eviction threshold.
    pub allocatable: BTreeMap<String, Quantity>,
    /// The pressure conditions (MemoryPressure, DiskPressure, PIDPressure).
    pub pressure_conditions: Vec<NodeCondition>,
    /// The taints that go with them (`node.kubernetes.io/*-pressure:NoSchedule`).
    pub taints: Vec<Taint>,
    /// When the agent started (the Ready condition's transition time).
    pub ready_since: jiff::Timestamp,
    /// containerd's version, for `containerRuntimeVersion`.
    pub runtime_version: String,
    /// The images in the runtime.
    pub images: Vec<ImageInfo>,
    /// The pod CIDR, if one was given: one, or two comma-separated (dual-stack).
    pub pod_cidr: Option<String>,
    /// The kubelet API's secure port (`daemonEndpoints.kubeletEndpoint.port`); 0 when
    /// it is not served.
    pub kubelet_port: i32,
    /// Why the node is not ready (upstream's runtime and network health errors, e.g.
    /// `container runtime is down`); empty when ready.
    pub not_ready: Vec<String>,
}

/// Builds the Node.
pub fn node(inputs: &NodeInputs, now: jiff::Timestamp) -> Node {
    // Upstream's ReadyCondition setter: the health errors joined, or ready.
    let ready = if inputs.not_ready.is_empty() {
        NodeCondition {
            type_: "Ready".to_owned(),
            status: "True".to_owned(),
            reason: Some("KubeletReady".to_owned()),
            message: Some("kubelet is posting ready status".to_owned()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(Time(inputs.ready_since)),
        }
    } else {
        NodeCondition {
            type_: "Ready".to_owned(),
            status: "False".to_owned(),
            reason: Some("KubeletNotReady".to_owned()),
            message: Some(inputs.not_ready.join(", ")),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(Time(now)),
        }
    };
    // Upstream's order: MemoryPressure, DiskPressure, PIDPressure, then Ready.
    let mut conditions = inputs.pressure_conditions.clone();
    for c in &mut conditions {
        c.last_heartbeat_time = Some(Time(now));
    }
    conditions.push(ready);
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/hostname".to_owned(), inputs.name.clone());
    labels.insert("kubernetes.io/os".to_owned(), "linux".to_owned());
    labels.insert("kubernetes.io/arch".to_owned(), go_arch().to_owned());
    labels.insert("beta.kubernetes.io/os".to_owned(), "linux".to_owned());
    labels.insert("beta.kubernetes.io/arch".to_owned(), go_arch().to_owned());
    let pod_cidrs: Option<Vec<String>> = inputs
        .pod_cidr
        .as_deref()
        .map(|c| c.split(',').map(|c| c.trim().to_owned()).collect());
    Node {
        metadata: ObjectMeta {
            name: Some(inputs.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            // `--pod-cidr` may hold one CIDR per family, comma-separated (dual-stack):
            // `podCIDRs` lists them, `podCIDR` is the first, as upstream's.
            pod_cidr: pod_cidrs.as_ref().and_then(|c| c.first().cloned()),
            pod_cidrs,
            taints: Some(inputs.taints.clone()).filter(|t| !t.is_empty()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            capacity: Some(inputs.capacity.clone()),
            allocatable: Some(inputs.allocatable.clone()),
            conditions: Some(conditions),
            addresses: Some(addresses(&inputs.ip, &inputs.hostname)),
            node_info: Some(node_info(&inputs.runtime_version)),
            images: Some(images(&inputs.images, MAX_IMAGES)),
            daemon_endpoints: (inputs.kubelet_port != 0).then_some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: inputs.kubelet_port,
                }),
            }),
            ..Default::default()
        }),
    }
}

/// `InternalIP` then `Hostname`, as upstream's NodeAddress setter without a cloud.
fn addresses(ip: &str, hostname: &str) -> Vec<NodeAddress> {
    vec![
        NodeAddress {
            type_: "InternalIP".to_owned(),
            address: ip.to_owned(),
        },
        NodeAddress {
            type_: "Hostname".to_owned(),
            address: hostname.to_owned(),
        },
    ]
}

/// The images list: one entry per image ID, largest first, at most `max`, each with its
/// repo digests then its tags, at most five names (upstream's Images setter over the
/// CRI's image list, which groups names by image ID).
pub fn images(list: &[ImageInfo], max: usize) -> Vec<ContainerImage> {
    let mut by_id: BTreeMap<&str, (u64, Vec<String>, Vec<String>)> = BTreeMap::new();
    for image in list {
        let entry = by_id
            .entry(image.id.as_str())
            .or_insert_with(|| (image.size, Vec::new(), Vec::new()));
        entry.0 = entry.0.max(image.size);
        if let Some(digest) = repo_digest(&image.name, &image.repo_digest)
            && !entry.1.contains(&digest)
        {
            entry.1.push(digest);
        }
        // A name that is itself a digest reference is a repo digest, not a tag.
        if !image.name.contains('@') && !entry.2.contains(&image.name) {
            entry.2.push(image.name.clone());
        }
    }
    let mut images: Vec<(&str, u64, Vec<String>)> = by_id
        .into_iter()
        .map(|(id, (size, mut digests, tags))| {
            digests.extend(tags);
            (id, size, digests)
        })
        .collect();
    // Largest first; equal sizes by ID so the list is stable.
    images.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    images
        .into_iter()
        .take(max)
        .map(|(_, size, mut names)| {
            names.truncate(MAX_NAMES_PER_IMAGE);
            ContainerImage {
                names: Some(names),
                size_bytes: i64::try_from(size).ok(),
            }
        })
        .collect()
}

/// `repo@sha256:…` for an image stored as `repo:tag` (or `repo@sha256:…`).
fn repo_digest(name: &str, digest: &str) -> Option<String> {
    if digest.is_empty() {
        return None;
    }
    let repo = match name.split_once('@') {
        Some((repo, _)) => repo,
        None => {
            // The tag is after the last ':' that follows the last '/' (a registry port
            // is not a tag).
            let slash = name.rfind('/').map_or(0, |i| i + 1);
            name[slash..]
                .rfind(':')
                .map_or(name, |i| &name[..slash + i])
        }
    };
    Some(format!("{repo}@{digest}"))
}

/// The node's system info from the host's files.
fn node_info(runtime_version: &str) -> NodeSystemInfo {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let os_release = read("/etc/os-release");
    let uname = nix::sys::utsname::uname().ok();
    NodeSystemInfo {
        architecture: go_arch().to_owned(),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: format!("containerd://{runtime_version}"),
        kernel_version: uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        kube_proxy_version: String::new(),
        kubelet_version: kubelet_version(),
        machine_id: read("/etc/machine-id"),
        operating_system: "linux".to_owned(),
        os_image: pretty_name(&os_release).unwrap_or_else(|| "Linux".to_owned()),
        system_uuid: read("/sys/class/dmi/id/product_uuid"),
        swap: None,
    }
}

/// `PRETTY_NAME` from os-release text.
fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        let v = l.strip_prefix("PRETTY_NAME=")?;
        Some(v.trim_matches('"').to_owned())
    })
}

/// The architecture as Go names it (`GOARCH`), which is what Kubernetes reports.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodelet_cri::image::ImageRuntimeConfig;

    fn image(name: &str, id: &str, size: u64) -> ImageInfo {
        ImageInfo {
            name: name.to_owned(),
            id: id.to_owned(),
            repo_digest: format!("sha256:{}", id.trim_start_matches("sha256:")),
            chain_id: String::new(),
            size,
            config: ImageRuntimeConfig::default(),
        }
    }

    #[test]
    fn images_are_grouped_by_id_largest_first_with_digests_before_tags() {
        let list = [
            image("docker.io/library/busybox:1.35", "sha256:b", 2_000),
            image("nodelet.local/pause:3.10", "sha256:p", 900),
            image("docker.io/library/busybox:latest", "sha256:b", 2_000),
            image("localhost:5000/big:v1", "sha256:c", 100_000),
        ];
        let out = images(&list, MAX_IMAGES);
        let names: Vec<Vec<String>> = out
            .iter()
            .map(|i| i.names.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                vec![
                    "localhost:5000/big@sha256:c".to_owned(),
                    "localhost:5000/big:v1".to_owned()
                ],
                vec![
                    "docker.io/library/busybox@sha256:b".to_owned(),
                    "docker.io/library/busybox:1.35".to_owned(),
                    "docker.io/library/busybox:latest".to_owned()
                ],
                vec![
                    "nodelet.local/pause@sha256:p".to_owned(),
                    "nodelet.local/pause:3.10".to_owned()
                ],
            ]
        );
        assert_eq!(out[0].size_bytes, Some(100_000));
    }

    #[test]
    fn images_list_and_names_are_capped() {
        let many: Vec<ImageInfo> = (0..60)
            .map(|i| image(&format!("r/i{i}:t"), &format!("sha256:{i:02}"), 1000 - i))
            .collect();
        let out = images(&many, MAX_IMAGES);
        assert_eq!(out.len(), 50);
        assert_eq!(out[0].size_bytes, Some(1000));
        let tags: Vec<ImageInfo> = (0..8)
            .map(|i| image(&format!("r/same:t{i}"), "sha256:s", 5))
            .collect();
        let out = images(&tags, MAX_IMAGES);
        assert_eq!(
            out[0].names.as_ref().map(Vec::len),
            Some(MAX_NAMES_PER_IMAGE)
        );
    }

    #[test]
    fn repo_digest_strips_the_tag_but_not_a_port() {
        assert_eq!(
            repo_digest("localhost:5000/a/b:v1", "sha256:x").as_deref(),
            Some("localhost:5000/a/b@sha256:x")
        );
        assert_eq!(
            repo_digest("localhost:5000/a", "sha256:x").as_deref(),
            Some("localhost:5000/a@sha256:x")
        );
        assert_eq!(
            repo_digest("r/a@sha256:y", "sha256:y").as_deref(),
            Some("r/a@sha256:y")
        );
        assert_eq!(repo_digest("r/a:t", ""), None);
    }

    #[test]
    fn node_has_ready_after_the_pressure_conditions_and_the_taints() {
        let pressure = NodeCondition {
            type_: "MemoryPressure".to_owned(),
            status: "True".to_owned(),
            ..Default::default()
        };
        let taint = Taint {
            key: "node.kubernetes.io/memory-pressure".to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Default::default()
        };
        let inputs = NodeInputs {
            name: "n1".to_owned(),
            ip: "10.0.0.1".to_owned(),
            hostname: "n1".to_owned(),
            pressure_conditions: vec![pressure],
            taints: vec![taint],
            runtime_version: "1.6.20".to_owned(),
            ..Default::default()
        };
        let n = node(&inputs, jiff::Timestamp::UNIX_EPOCH);
        let status = n.status.expect("status");
        let types: Vec<String> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.clone())
            .collect();
        assert_eq!(types, ["MemoryPressure", "Ready"]);
        assert_eq!(n.spec.and_then(|s| s.taints).map(|t| t.len()), Some(1));
        let info = status.node_info.expect("info");
        assert_eq!(info.container_runtime_version, "containerd://1.6.20");
        assert!(info.kubelet_version.starts_with("v1.34.0+nodelet-"));
        assert_eq!(status.addresses.expect("addresses")[0].type_, "InternalIP");
    }

    #[test]
    fn a_node_with_health_errors_is_not_ready_with_upstreams_reason() {
        let inputs = NodeInputs {
            name: "n1".to_owned(),
            not_ready: vec!["container runtime is down".to_owned()],
            ..Default::default()
        };
        let n = node(&inputs, jiff::Timestamp::UNIX_EPOCH);
        let ready = n
            .status
            .and_then(|s| s.conditions)
            .and_then(|cs| cs.into_iter().find(|c| c.type_ == "Ready"))
            .expect("ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("KubeletNotReady"));
        assert_eq!(ready.message.as_deref(), Some("container runtime is down"));
    }

    #[test]
    fn pretty_name_from_os_release() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(
            pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
    }
}
