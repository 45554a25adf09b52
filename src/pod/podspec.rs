//! From a PodSpec to what the runtime needs: the sandbox and container configurations,
//! the pod's volumes on disk, and the paths upstream uses (`/var/log/pods/...`,
//! `<root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use nodelet_cri::runtime::{
    ContainerConfig, DnsConfig, Mount, PodRef, SandboxConfig, SeccompMode, SecurityConfig,
};
use thiserror::Error;

/// Why a container's configuration can't be made (status `CreateContainerConfigError`).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A mount names a volume the pod doesn't have.
    #[error("volumeMount {mount:?} references unknown volume {volume:?}")]
    UnknownVolume {
        /// The mount path.
        mount: String,
        /// The volume name.
        volume: String,
    },
    /// A subPath escapes its volume.
    #[error("subPath {0:?} must be a relative path without '..'")]
    BadSubPath(String),
    /// A `seccompProfile` nodelet can't apply.
    #[error("seccompProfile: {0}")]
    BadSeccompProfile(String),
    /// An env var source nodelet can't resolve.
    #[error("env var {name:?}: {reason}")]
    Env {
        /// The variable.
        name: String,
        /// Why.
        reason: String,
    },
    /// A ConfigMap or Secret an env source names does not exist (upstream's
    /// `configmap "x" not found`).
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A `configMapKeyRef` or `secretKeyRef` names a key the object lacks.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        /// The key.
        key: String,
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
    },
    /// The object source failed.
    #[error("{0}")]
    Object(String),
    /// A pod from the apiserver before the Services were listed once.
    #[error("services have not yet been read at least once, cannot construct envvars")]
    ServicesNotSynced,
    /// A file or directory the pod needs could not be made.
    #[error("{path}: {reason}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError {
    let path = path.display().to_string();
    move |e| ConfigError::Io {
        path,
        reason: e.to_string(),
    }
}

/// The identity of a pod as the runtime labels it.
pub fn pod_ref(pod: &Pod) -> PodRef {
    PodRef {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
    }
}

/// The pod's log directory, `<logs>/<namespace>_<name>_<uid>`, as upstream.
pub fn log_dir(pod_logs_dir: &Path, pod: &PodRef) -> PathBuf {
    pod_logs_dir.join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
}

/// The node's DNS settings (`--cluster-dns`, `--cluster-domain`, `--resolv-conf`).
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    /// Cluster DNS server IPs.
    pub cluster_dns: Vec<String>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The host resolv.conf pods with `dnsPolicy: Default` inherit; `None` for none.
    pub resolv_conf: Option<PathBuf>,
}

/// Upstream's limits on what goes in a pod's resolv.conf.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// Parses resolv.conf text into nameservers, search domains and options.
pub fn parse_resolv_conf(text: &str) -> DnsConfig {
    let mut dns = DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.servers.extend(words.next().map(str::to_owned)),
            // The last search line wins, as the resolver reads it.
            Some("search") => dns.searches = words.map(str::to_owned).collect(),
            Some("options") => dns.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    dns
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// The pod's resolv.conf, from its `dnsPolicy` and `dnsConfig`, as upstream's
/// `pkg/kubelet/network/dns` computes it. `host` is the `--resolv-conf` content.
pub fn dns_config(
    spec: &PodSpec,
    namespace: &str,
    settings: &DnsSettings,
    host: &str,
) -> DnsConfig {
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut dns = match policy {
        "None" => DnsConfig::default(),
        // Without cluster DNS, ClusterFirst falls back to Default (upstream warns with
        // a MissingClusterDNS event).
        _ if cluster_first && !settings.cluster_dns.is_empty() => {
            let host = parse_resolv_conf(host);
            let domain = settings.cluster_domain.trim_end_matches('.');
            let mut searches = if domain.is_empty() {
                Vec::new()
            } else {
                vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.to_owned(),
                ]
            };
            push_unique(&mut searches, host.searches);
            DnsConfig {
                servers: settings.cluster_dns.clone(),
                searches,
                options: vec!["ndots:5".to_owned()],
            }
        }
        _ => parse_resolv_conf(host),
    };
    if let Some(cfg) = &spec.dns_config {
        push_unique(
            &mut dns.servers,
            cfg.nameservers.clone().unwrap_or_default(),
        );
        push_unique(&mut dns.searches, cfg.searches.clone().unwrap_or_default());
        for o in cfg.options.iter().flatten() {
            let rendered = match &o.value {
                Some(v) => format!("{}:{v}", o.name.as_deref().unwrap_or("")),
                None => o.name.clone().unwrap_or_default(),
            };
            // A pod option replaces the same-named one from the policy.
            let name = rendered.split(':').next().unwrap_or("").to_owned();
            dns.options
                .retain(|x| x.split(':').next() != Some(name.as_str()));
            dns.options.push(rendered);
        }
    }
    dns.servers.truncate(MAX_NAMESERVERS);
    dns.searches.truncate(MAX_SEARCHES);
    dns
}

/// The sandbox configuration of a pod.
pub fn sandbox_config(
    pod: &Pod,
    attempt: u32,
    pod_logs_dir: &Path,
    cgroup_parent: Option<String>,
    dns: &DnsSettings,
) -> SandboxConfig {
    let r = pod_ref(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = spec
        .hostname
        .clone()
        .unwrap_or_else(|| r.name.chars().take(63).collect());
    SandboxConfig {
        log_directory: log_dir(pod_logs_dir, &r),
        cgroup_parent,
        attempt,
        hostname: hostname.trim_end_matches(['-', '.']).to_owned(),
        host_network: spec.host_network.unwrap_or(false),
        host_ipc: spec.host_ipc.unwrap_or(false),
        host_pid: spec.host_pid.unwrap_or(false),
        share_process_namespace: spec.share_process_namespace.unwrap_or(false),
        dns: Some(dns_config(
            &spec,
            &r.namespace,
            dns,
            &dns.resolv_conf
                .as_ref()
                .and_then(|p| fs::read_to_string(p).ok())
                .unwrap_or_default(),
        )),
        host_aliases: spec
            .host_aliases
            .iter()
            .flatten()
            .map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default()))
            .collect(),
        fqdn: spec
            .subdomain
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|sub| {
                let domain = dns.cluster_domain.trim_end_matches('.');
                let base = format!("{hostname}.{sub}.{}.svc", r.namespace);
                if domain.is_empty() {
                    base
                } else {
                    format!("{base}.{domain}")
                }
            }),
        sysctls: spec
            .security_context
            .as_ref()
            .and_then(|s| s.sysctls.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.name, s.value))
            .collect(),
        oom_score_adj: None,
        port_mappings: port_mappings(&spec),
        // The worker resolves the pod's RuntimeClass into its handler.
        runtime_handler: String::new(),
        pod: r,
    }
}

/// The pod's hostPorts, as upstream's `generatePodSandboxConfig` and containerd pass
/// them on: every app container's port with a `hostPort` above 0, once each. A
/// `hostIP` of either family maps only the pod's address of that family; one that is
/// not an IP address is not mapped.
fn port_mappings(spec: &PodSpec) -> Vec<nodelet_cri::podnet::PortMapping> {
    let mut out: Vec<nodelet_cri::podnet::PortMapping> = Vec::new();
    for port in spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
    {
        let (Some(host_port), Ok(container_port)) = (
            port.host_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0),
            u16::try_from(port.container_port),
        ) else {
            continue;
        };
        let Some(protocol) =
            nodelet_cri::podnet::Protocol::from_k8s(port.protocol.as_deref().unwrap_or(""))
        else {
            continue;
        };
        let host_ip = match port.host_ip.as_deref().unwrap_or("") {
            "" => None,
            ip => match ip.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => continue,
            },
        };
        let m = nodelet_cri::podnet::PortMapping {
            protocol,
            host_port,
            container_port,
            host_ip,
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

/// The node's capacity, which stands in for a container's unset limits in the
/// downward API (upstream merges node allocatable into them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeCapacity {
    /// CPUs, in millicores.
    pub cpu_millis: i128,
    /// Memory, in bytes.
    pub memory_bytes: i128,
}

impl NodeCapacity {
    /// The CPUs and memory of the machine's capacity, read once by the agent.
    pub fn from_capacity(cap: &nodelet_cgroups::NodeCapacity) -> Self {
        Self {
            cpu_millis: i128::from(cap.cpu_milli.max(1000)),
            memory_bytes: i128::from(cap.memory),
        }
    }
}

fn quantity(
    q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
) -> Option<nodelet_manifests::Quantity> {
    q.and_then(|q| nodelet_manifests::Quantity::parse(&q.0).ok())
}

fn ceil_div(a: i128, b: i128) -> i128 {
    if b == 0 {
        return 0;
    }
    let q = a / b;
    if (a % b != 0) && ((a > 0) == (b > 0)) {
        q + 1
    } else {
        q
    }
}

/// A `resourceFieldRef` value, as upstream's `ExtractContainerResourceValue`: CPU as
/// ceil(milli-value / divisor's milli-value), memory and storage as ceil(value /
/// divisor's value); an unset limit is the node's capacity.
///
/// # Errors
/// An unsupported resource name.
pub fn resource_field(
    c: &Container,
    rf: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    node: &NodeCapacity,
) -> Result<String, String> {
    let divisor = quantity(rf.divisor.as_ref())
        .filter(|d| d.nanos() != 0)
        .unwrap_or_else(|| nodelet_manifests::Quantity::from_nanos(1_000_000_000));
    let res = c.resources.clone().unwrap_or_default();
    let limits = res.limits.unwrap_or_default();
    let requests = res.requests.unwrap_or_default();
    let value = |q: nodelet_manifests::Quantity| ceil_div(q.nanos(), 1_000_000_000);
    let out = match rf.resource.as_str() {
        "limits.cpu" | "requests.cpu" => {
            let q = if rf.resource == "limits.cpu" {
                quantity(limits.get("cpu")).map_or(node.cpu_millis, |q| q.milli_value_ceil())
            } else {
                quantity(requests.get("cpu")).map_or(0, |q| q.milli_value_ceil())
            };
            ceil_div(q, divisor.milli_value_ceil())
        }
        "limits.memory" => ceil_div(
            quantity(limits.get("memory")).map_or(node.memory_bytes, value),
            value(divisor),
        ),
        "requests.memory" => ceil_div(
            quantity(requests.get("memory")).map_or(0, value),
            value(divisor),
        ),
        "limits.ephemeral-storage" | "requests.ephemeral-storage" => {
            let map = if rf.resource.starts_with("limits") {
                &limits
            } else {
                &requests
            };
            ceil_div(
                quantity(map.get("ephemeral-storage")).map_or(0, value),
                value(divisor),
            )
        }
        other => return Err(format!("unsupported container resource {other:?}")),
    };
    Ok(out.to_string())
}

/// A label or annotation map as the downward API writes it: `key="value"` lines,
/// sorted, quoted as Go's `%q` does (upstream's `fieldpath.FormatMap`).
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Values the downward API can give an env var.
#[derive(Debug, Clone, Default)]
pub struct FieldValues {
    /// The node name.
    pub node_name: String,
    /// The node IP.
    pub host_ip: String,
    /// The pod IP (empty with none yet).
    pub pod_ip: String,
    /// All pod IPs, comma separated.
    pub pod_ips: String,
    /// The container whose env this is (for `resourceFieldRef` without a name).
    pub container: Option<Container>,
    /// The node's capacity, for `resourceFieldRef`s of unset limits.
    pub capacity: NodeCapacity,
    /// What `envFrom`, `configMapKeyRef`/`secretKeyRef` and the service variables
    /// read ([`EnvObjects::fetch`](crate::pod::env::EnvObjects::fetch)).
    pub env_objects: crate::pod::env::EnvObjects,
}

pub(crate) fn field_ref(pod: &Pod, path: &str, f: &FieldValues) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let from_map = |map: Option<&BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => Some(f.node_name.clone()),
        "spec.serviceAccountName" => Some(
            spec.and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
        ),
        "status.podIP" => Some(f.pod_ip.clone()),
        "status.podIPs" => Some(f.pod_ips.clone()),
        "status.hostIP" | "status.hostIPs" => Some(f.host_ip.clone()),
        _ => from_map(m.labels.as_ref(), "metadata.labels['")
            .or_else(|| from_map(m.annotations.as_ref(), "metadata.annotations['")),
    }
}

/// A literal value, or a `fieldRef` or `resourceFieldRef`'s.
pub(crate) fn env_value(pod: &Pod, e: &EnvVar, f: &FieldValues) -> Result<String, ConfigError> {
    if let Some(v) = &e.value {
        return Ok(v.clone());
    }
    let Some(from) = &e.value_from else {
        return Ok(String::new());
    };
    if let Some(fr) = &from.field_ref {
        return field_ref(pod, &fr.field_path, f).ok_or_else(|| ConfigError::Env {
            name: e.name.clone(),
            reason: format!("unsupported fieldRef {:?}", fr.field_path),
        });
    }
    if let Some(rf) = &from.resource_field_ref {
        // In env the selector names the container itself unless it says otherwise.
        let spec = pod.spec.clone().unwrap_or_default();
        let container = match rf.container_name.as_deref().filter(|n| !n.is_empty()) {
            None => f.container.clone(),
            Some(name) => spec.containers.iter().find(|c| c.name == name).cloned(),
        };
        let value = container
            .ok_or_else(|| format!("container {:?} not found", rf.container_name))
            .and_then(|c| resource_field(&c, rf, &f.capacity));
        return value.map_err(|reason| ConfigError::Env {
            name: e.name.clone(),
            reason,
        });
    }
    Err(ConfigError::Env {
        name: e.name.clone(),
        reason: "no value source nodelet knows".to_owned(),
    })
}

pub(crate) fn relative_clean(sub: &str) -> Result<&Path, ConfigError> {
    let p = Path::new(sub);
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ConfigError::BadSubPath(sub.to_owned()));
    }
    Ok(p)
}

/// Security settings: the container's `securityContext` over the pod's.
/// `Localhost` seccomp profiles are files under `seccomp_root` (upstream's
/// `<root-dir>/seccomp`).
///
/// # Errors
/// [`ConfigError::BadSeccompProfile`] for an unknown profile type, or a `Localhost`
/// profile without a `localhostProfile` or one that leaves `seccomp_root`.
pub fn security(
    pod: &PodSpec,
    c: &Container,
    seccomp_root: &Path,
) -> Result<SecurityConfig, ConfigError> {
    let psc = pod.security_context.as_ref();
    let csc = c.security_context.as_ref();
    let profile = csc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| psc.and_then(|s| s.seccomp_profile.as_ref()));
    let seccomp = match profile {
        None => SeccompMode::Unconfined,
        Some(p) => match p.type_.as_str() {
            "Unconfined" => SeccompMode::Unconfined,
            "RuntimeDefault" => SeccompMode::RuntimeDefault,
            "Localhost" => {
                let name = p
                    .localhost_profile
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        ConfigError::BadSeccompProfile(
                            "type Localhost needs localhostProfile".to_owned(),
                        )
                    })?;
                let rel = relative_clean(name).map_err(|_| {
                    ConfigError::BadSeccompProfile(format!(
                        "localhostProfile {name:?} must be a relative path without '..'"
                    ))
                })?;
                SeccompMode::Localhost(seccomp_root.join(rel))
            }
            other => {
                return Err(ConfigError::BadSeccompProfile(format!(
                    "unknown type {other:?}"
                )));
            }
        },
    };
    let to_u32 = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let caps = csc.and_then(|s| s.capabilities.as_ref());
    Ok(SecurityConfig {
        run_as_user: to_u32(
            csc.and_then(|s| s.run_as_user)
                .or_else(|| psc.and_then(|s| s.run_as_user)),
        ),
        run_as_group: to_u32(
            csc.and_then(|s| s.run_as_group)
                .or_else(|| psc.and_then(|s| s.run_as_group)),
        ),
        // fsGroup joins the supplemental groups so the container can use volumes
        // owned by it, as upstream does.
        supplemental_groups: psc
            .and_then(|s| s.supplemental_groups.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(psc.and_then(|s| s.fs_group))
            .filter_map(|g| u32::try_from(g).ok())
            .collect(),
        privileged: csc.and_then(|s| s.privileged).unwrap_or(false),
        add_capabilities: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop_capabilities: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        readonly_rootfs: csc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        no_new_privileges: csc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        unmasked_proc: csc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked"),
        seccomp,
    })
}

/// Upstream's `runAsNonRoot` check against the user the container would run as.
///
/// # Errors
/// The upstream message when the container would run as root, or the image's user
/// is a name that can't be checked.
pub fn verify_run_as_non_root(pod: &Pod, c: &Container, image_user: &str) -> Result<(), String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let psc = spec.security_context.as_ref();
    let csc = c.security_context.as_ref();
    let non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| psc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if !non_root {
        return Ok(());
    }
    let who = format!(
        "(pod: \"{}_{}({})\", container: {})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.uid.as_deref().unwrap_or(""),
        c.name
    );
    let run_as = csc
        .and_then(|s| s.run_as_user)
        .or_else(|| psc.and_then(|s| s.run_as_user));
    if let Some(uid) = run_as {
        return if uid == 0 {
            Err(format!(
                "container's runAsUser breaks non-root policy {who}"
            ))
        } else {
            Ok(())
        };
    }
    let user = image_user.split(':').next().unwrap_or("");
    match user.parse::<u64>() {
        _ if user.is_empty() => Err(format!(
            "container has runAsNonRoot and image will run as root {who}"
        )),
        Ok(0) => Err(format!(
            "container has runAsNonRoot and image will run as root {who}"
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root {who}"
        )),
    }
}

/// The runtime configuration of one container instance.
///
/// # Errors
/// [`ConfigError`] for bad mounts, env sources nodelet can't resolve and seccomp
/// profiles it can't apply.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, in the worker, which has each piece separately"
)]
pub fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    volumes: &BTreeMap<String, PathBuf>,
    termination_log: &Path,
    image: &str,
    fields: &FieldValues,
    seccomp_root: &Path,
) -> Result<ContainerConfig, ConfigError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut mounts = Vec::new();
    for vm in c.volume_mounts.iter().flatten() {
        let base = volumes
            .get(&vm.name)
            .ok_or_else(|| ConfigError::UnknownVolume {
                mount: vm.mount_path.clone(),
                volume: vm.name.clone(),
            })?;
        let host_path = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p = base.join(relative_clean(sub)?);
                if !p.exists() {
                    fs::create_dir_all(&p).map_err(io(&p))?;
                }
                p
            }
            None => base.clone(),
        };
        // A relative mountPath is taken from the root, as the kubelet does.
        let container_path = if vm.mount_path.starts_with('/') {
            vm.mount_path.clone()
        } else {
            format!("/{}", vm.mount_path)
        };
        // Downward API volumes are always read-only, as upstream mounts them.
        let downward = host_path
            .components()
            .any(|c| c.as_os_str() == "kubernetes.io~downward-api");
        mounts.push(Mount {
            container_path,
            host_path,
            readonly: vm.read_only.unwrap_or(false) || downward,
        });
    }
    let tm_path = c
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".to_owned());
    if !mounts.iter().any(|m| m.container_path == tm_path) {
        mounts.push(Mount {
            container_path: tm_path,
            host_path: termination_log.to_path_buf(),
            readonly: false,
        });
    }
    // `$(VAR)` references: each value sees the variables before it; command and
    // args see them all.
    let env = crate::pod::env::make_env(pod, c, fields)?;
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let expand_all = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter()
            .flatten()
            .map(|s| crate::pod::expand::expand(s, lookup))
            .collect()
    };
    let (command, args) = (expand_all(&c.command), expand_all(&c.args));
    Ok(ContainerConfig {
        name: c.name.clone(),
        attempt,
        image: image.to_owned(),
        command,
        args,
        working_dir: c.working_dir.clone(),
        env,
        mounts,
        log_path: PathBuf::from(&c.name).join(format!("{attempt}.log")),
        security: security(&spec, c, seccomp_root)?,
        resources: nodelet_cri::runtime::ContainerResources::default(),
    })
}

#[cfg(test)]
#[path = "podspec_tests.rs"]
mod tests;
