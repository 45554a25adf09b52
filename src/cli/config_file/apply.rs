//! The supported `KubeletConfiguration` fields mapped onto the agent's flags, with
//! upstream's v1beta1 defaulting (`pkg/kubelet/apis/config/v1beta1/defaults.go`): a
//! non-pointer field at its zero value counts as unset, and an unset field takes the
//! v1beta1 default when a `--config` file was read (with only `--config-dir` it keeps
//! the flag's value, the base upstream merges drop-ins over). A flag given on the
//! command line is never touched.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::convert::{
    boolean, duration, headers, int, ip, is_zero, list, pairs, path, port, taint, text,
    verbosity_filter,
};
use super::{ConfigFileError, Loaded};
use crate::cli::{AgentArgs, LogFormat};

// `logging` left out keeps `--log-format`/`--v`: their defaults are upstream's
// (`text`, verbosity 0), and `nodelet run` keeps its quieter one.

/// Each supported field and the argument id (the `AgentArgs` field) it sets.
pub const FIELD_ARGS: &[(&str, &str)] = &[
    ("staticPodPath", "pod_manifest_path"),
    ("podLogsDir", "pod_logs_dir"),
    ("containerLogMaxSize", "container_log_max_size"),
    ("containerLogMaxFiles", "container_log_max_files"),
    ("fileCheckFrequency", "file_check_frequency"),
    ("httpCheckFrequency", "http_check_frequency"),
    ("staticPodURL", "manifest_url"),
    ("staticPodURLHeader", "manifest_url_header"),
    ("address", "address"),
    ("readOnlyPort", "read_only_port"),
    ("port", "port"),
    ("tlsCertFile", "tls_cert_file"),
    ("tlsPrivateKeyFile", "tls_private_key_file"),
    ("serverTLSBootstrap", "rotate_server_certificates"),
    (
        "streamingConnectionIdleTimeout",
        "streaming_connection_idle_timeout",
    ),
    ("authentication.x509.clientCAFile", "client_ca_file"),
    ("authentication.anonymous.enabled", "anonymous_auth"),
    (
        "authentication.webhook.enabled",
        "authentication_token_webhook",
    ),
    (
        "authentication.webhook.cacheTTL",
        "authentication_token_webhook_cache_ttl",
    ),
    ("authorization.mode", "authorization_mode"),
    (
        "authorization.webhook.cacheAuthorizedTTL",
        "authorization_webhook_cache_authorized_ttl",
    ),
    (
        "authorization.webhook.cacheUnauthorizedTTL",
        "authorization_webhook_cache_unauthorized_ttl",
    ),
    ("enableServer", "read_only_port"),
    ("registryPullQPS", "registry_qps"),
    ("registryBurst", "registry_burst"),
    ("healthzPort", "healthz_port"),
    ("healthzBindAddress", "healthz_bind_address"),
    ("clusterDomain", "cluster_domain"),
    ("clusterDNS", "cluster_dns"),
    ("imageMinimumGCAge", "minimum_image_ttl_duration"),
    ("imageMaximumGCAge", "image_maximum_gc_age"),
    ("imageGCHighThresholdPercent", "image_gc_high_threshold"),
    ("imageGCLowThresholdPercent", "image_gc_low_threshold"),
    ("cgroupRoot", "cgroup_root"),
    ("cgroupsPerQOS", "cgroups_per_qos"),
    ("cgroupDriver", "cgroup_driver"),
    ("maxPods", "max_pods"),
    ("podCIDR", "pod_cidr"),
    ("podPidsLimit", "pod_max_pids"),
    ("resolvConf", "resolv_conf"),
    ("cpuCFSQuota", "cpu_cfs_quota"),
    ("cpuCFSQuotaPeriod", "cpu_cfs_quota_period"),
    ("kubeAPIQPS", "kube_api_qps"),
    ("kubeAPIBurst", "kube_api_burst"),
    ("serializeImagePulls", "serialize_image_pulls"),
    ("maxParallelImagePulls", "max_parallel_image_pulls"),
    ("evictionHard", "eviction_hard"),
    ("evictionSoft", "eviction_soft"),
    ("evictionSoftGracePeriod", "eviction_soft_grace_period"),
    (
        "evictionPressureTransitionPeriod",
        "eviction_pressure_transition_period",
    ),
    ("evictionMaxPodGracePeriod", "eviction_max_pod_grace_period"),
    ("evictionMinimumReclaim", "eviction_minimum_reclaim"),
    (
        "mergeDefaultEvictionSettings",
        "merge_default_eviction_settings",
    ),
    ("featureGates", "feature_gates"),
    ("systemReserved", "system_reserved"),
    ("kubeReserved", "kube_reserved"),
    ("enforceNodeAllocatable", "enforce_node_allocatable"),
    ("kernelMemcgNotification", "kernel_memcg_notification"),
    ("logging.format", "log_format"),
    ("logging.verbosity", "v"),
    ("registerWithTaints", "register_with_taints"),
    ("registerNode", "register_node"),
    ("containerRuntimeEndpoint", "container_runtime_endpoint"),
    ("nodeletRuntimeHandlers", "runtime_handlers"),
];

/// An empty `evictionHard` map means no hard thresholds upstream; nodelet's flag
/// reads an empty list as "the defaults", so it gets a threshold eviction ignores
/// (`0%`, as upstream's `parseThresholdStatement`).
const NO_HARD_EVICTION: &str = "memory.available<0%";

/// Sets every flag a supported field of `loaded` maps to, except the flags in
/// `explicit` (argument ids given on the command line).
///
/// # Errors
/// [`ConfigFileError::Value`] for a value the flag cannot take (an address that is
/// not an IP, a port out of range, an unknown log format, …).
pub fn apply(
    loaded: &Loaded,
    args: &mut AgentArgs,
    explicit: &HashSet<String>,
) -> Result<(), ConfigFileError> {
    let c = Ctx { loaded, explicit };
    let s = Duration::from_secs;
    c.set(
        &mut args.pod_manifest_path,
        "staticPodPath",
        Unset::Never,
        Some(None),
        |v| Ok(Some(PathBuf::from(text(v)?)).filter(|p| !p.as_os_str().is_empty())),
    )?;
    c.set(
        &mut args.pod_logs_dir,
        "podLogsDir",
        Unset::Zero,
        Some("/var/log/pods".into()),
        path,
    )?;
    c.set(
        &mut args.container_log_max_size,
        "containerLogMaxSize",
        Unset::Zero,
        Some(nodelet_cri::logs::rotate::DEFAULT_MAX_SIZE),
        |v| crate::cli::parse_log_max_size(&text(v)?),
    )?;
    c.set(
        &mut args.container_log_max_files,
        "containerLogMaxFiles",
        Unset::Zero,
        Some(nodelet_cri::logs::rotate::DEFAULT_MAX_FILES),
        |v| crate::cli::parse_log_max_files(&int::<i64>(v)?.to_string()),
    )?;
    c.set(
        &mut args.file_check_frequency,
        "fileCheckFrequency",
        Unset::Zero,
        Some(s(20)),
        duration,
    )?;
    c.set(
        &mut args.http_check_frequency,
        "httpCheckFrequency",
        Unset::Zero,
        Some(s(20)),
        duration,
    )?;
    c.set(
        &mut args.manifest_url,
        "staticPodURL",
        Unset::Never,
        Some(None),
        |v| Ok(Some(text(v)?).filter(|u| !u.is_empty())),
    )?;
    c.set(
        &mut args.manifest_url_header,
        "staticPodURLHeader",
        Unset::Never,
        Some(Vec::new()),
        headers,
    )?;
    c.set(
        &mut args.address,
        "address",
        Unset::Zero,
        Some([0, 0, 0, 0].into()),
        ip,
    )?;
    c.set(
        &mut args.read_only_port,
        "readOnlyPort",
        Unset::Never,
        Some(0),
        port,
    )?;
    // Upstream starts the read-only server only inside `enableServer`.
    if c.lookup("enableServer") == Some(&Value::Bool(false)) && !explicit.contains("read_only_port")
    {
        args.read_only_port = 0;
    }
    apply_secure(&c, &mut args.secure)?;
    c.set(
        &mut args.registry_qps,
        "registryPullQPS",
        Unset::Never,
        Some(5),
        int,
    )?;
    c.set(
        &mut args.registry_burst,
        "registryBurst",
        Unset::Zero,
        Some(10),
        int,
    )?;
    c.set(
        &mut args.healthz_port,
        "healthzPort",
        Unset::Never,
        Some(10248),
        port,
    )?;
    c.set(
        &mut args.healthz_bind_address,
        "healthzBindAddress",
        Unset::Zero,
        Some([127, 0, 0, 1].into()),
        ip,
    )?;
    c.set(
        &mut args.cluster_domain,
        "clusterDomain",
        Unset::Never,
        Some(String::new()),
        text,
    )?;
    c.set(
        &mut args.cluster_dns,
        "clusterDNS",
        Unset::Never,
        Some(Vec::new()),
        |v| list(v)?.iter().map(ip).collect(),
    )?;
    let gc = &mut args.image_gc;
    c.set(
        &mut gc.minimum_image_ttl_duration,
        "imageMinimumGCAge",
        Unset::Zero,
        Some(s(120)),
        duration,
    )?;
    c.set(
        &mut gc.image_maximum_gc_age,
        "imageMaximumGCAge",
        Unset::Never,
        Some(s(0)),
        duration,
    )?;
    c.set(
        &mut gc.image_gc_high_threshold,
        "imageGCHighThresholdPercent",
        Unset::Never,
        Some(85),
        int,
    )?;
    c.set(
        &mut gc.image_gc_low_threshold,
        "imageGCLowThresholdPercent",
        Unset::Never,
        Some(80),
        int,
    )?;
    c.set(
        &mut args.cgroup_root,
        "cgroupRoot",
        Unset::Never,
        Some("/".into()),
        |v| {
            Ok(Some(text(v)?)
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "/".into()))
        },
    )?;
    c.set(&mut args.pod_cidr, "podCIDR", Unset::Zero, None, text)?;
    c.set(
        &mut args.resolv_conf,
        "resolvConf",
        Unset::Never,
        Some("/etc/resolv.conf".into()),
        path,
    )?;
    let r = &mut args.resources;
    c.set(
        &mut r.cgroups_per_qos,
        "cgroupsPerQOS",
        Unset::Never,
        Some(true),
        boolean,
    )?;
    c.set(
        &mut r.cgroup_driver,
        "cgroupDriver",
        Unset::Zero,
        Some("cgroupfs".into()),
        text,
    )?;
    c.set(&mut r.max_pods, "maxPods", Unset::Zero, Some(110), int)?;
    c.set(
        &mut r.pod_max_pids,
        "podPidsLimit",
        Unset::Never,
        Some(-1),
        |v| int::<i64>(v).map(|n| n.max(-1)),
    )?;
    c.set(
        &mut r.cpu_cfs_quota,
        "cpuCFSQuota",
        Unset::Never,
        Some(true),
        boolean,
    )?;
    c.set(
        &mut r.cpu_cfs_quota_period,
        "cpuCFSQuotaPeriod",
        Unset::Never,
        Some(Duration::from_millis(100)),
        duration,
    )?;
    c.set(
        &mut r.kube_reserved,
        "kubeReserved",
        Unset::Never,
        Some(String::new()),
        |v| Ok(pairs(v, "=")?.join(",")),
    )?;
    c.set(
        &mut r.system_reserved,
        "systemReserved",
        Unset::Never,
        Some(String::new()),
        |v| Ok(pairs(v, "=")?.join(",")),
    )?;
    c.set(
        &mut r.enforce_node_allocatable,
        "enforceNodeAllocatable",
        Unset::Never,
        Some("pods".into()),
        |v| {
            Ok(list(v)?
                .iter()
                .map(text)
                .collect::<Result<Vec<_>, _>>()?
                .join(","))
        },
    )?;
    feature_gates(&c, &mut r.feature_gates)?;
    c.set(
        &mut args.kube_api_qps,
        "kubeAPIQPS",
        Unset::Never,
        Some(50),
        int,
    )?;
    c.set(
        &mut args.kube_api_burst,
        "kubeAPIBurst",
        Unset::Zero,
        Some(100),
        int,
    )?;
    // Upstream's default for serializeImagePulls follows the file's
    // maxParallelImagePulls: parallel pulls when it allows two or more.
    let parallel = c.lookup("maxParallelImagePulls").and_then(Value::as_i64);
    let serialize_default = parallel.is_none_or(|n| n < 2);
    c.set(
        &mut args.serialize_image_pulls,
        "serializeImagePulls",
        Unset::Never,
        Some(serialize_default),
        boolean,
    )?;
    c.set(
        &mut args.max_parallel_image_pulls,
        "maxParallelImagePulls",
        Unset::Never,
        Some(None),
        |v| {
            let n: i32 = int(v)?;
            match usize::try_from(n) {
                Ok(n) if n >= 1 => Ok(Some(n)),
                _ => Err(format!("{n} must be a positive number")),
            }
        },
    )?;
    let e = &mut args.eviction;
    c.set(
        &mut e.merge_default_eviction_settings,
        "mergeDefaultEvictionSettings",
        Unset::Never,
        Some(false),
        boolean,
    )?;
    let merge_defaults = e.merge_default_eviction_settings;
    c.set(
        &mut e.eviction_hard,
        "evictionHard",
        Unset::Never,
        None,
        |v| {
            let hard = pairs(v, "<")?;
            Ok(if hard.is_empty() && !merge_defaults {
                vec![NO_HARD_EVICTION.to_owned()]
            } else {
                hard
            })
        },
    )?;
    c.set(
        &mut e.eviction_soft,
        "evictionSoft",
        Unset::Never,
        Some(Vec::new()),
        |v| pairs(v, "<"),
    )?;
    c.set(
        &mut e.eviction_soft_grace_period,
        "evictionSoftGracePeriod",
        Unset::Never,
        Some(Vec::new()),
        |v| pairs(v, "="),
    )?;
    c.set(
        &mut e.eviction_minimum_reclaim,
        "evictionMinimumReclaim",
        Unset::Never,
        Some(Vec::new()),
        |v| pairs(v, "="),
    )?;
    c.set(
        &mut e.eviction_pressure_transition_period,
        "evictionPressureTransitionPeriod",
        Unset::Zero,
        Some(s(300)),
        duration,
    )?;
    c.set(
        &mut e.eviction_max_pod_grace_period,
        "evictionMaxPodGracePeriod",
        Unset::Never,
        Some(0),
        int,
    )?;
    // nodelet's default (true) is its own; the file can still turn it off.
    c.set(
        &mut e.kernel_memcg_notification,
        "kernelMemcgNotification",
        Unset::Never,
        None,
        boolean,
    )?;
    c.set(
        &mut args.log_format,
        "logging.format",
        Unset::Zero,
        None,
        |v| match text(v)?.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unsupported value {other:?}: supported values: \"json\", \"text\""
            )),
        },
    )?;
    c.set(&mut args.v, "logging.verbosity", Unset::Zero, None, |v| {
        Ok(verbosity_filter(int(v)?).to_owned())
    })?;
    c.set(
        &mut args.register_node,
        "registerNode",
        Unset::Never,
        Some(true),
        boolean,
    )?;
    c.set(
        &mut args.register_with_taints,
        "registerWithTaints",
        Unset::Never,
        Some(Vec::new()),
        |v| list(v)?.iter().map(taint).collect(),
    )?;
    c.set(
        &mut args.container_runtime_endpoint,
        "containerRuntimeEndpoint",
        Unset::Zero,
        Some("unix:///run/containerd/containerd.sock".into()),
        text,
    )?;
    // nodelet's own field: `--runtime-handlers` entries as a list of strings.
    c.set(
        &mut args.runtime_handlers,
        "nodeletRuntimeHandlers",
        Unset::Never,
        Some(Vec::new()),
        |v| {
            list(v)?
                .iter()
                .map(|h| {
                    let h = text(h)?;
                    nodelet_cri::runtime::handlers::parse_handler(&h).map_err(|e| e.to_string())?;
                    Ok(h)
                })
                .collect()
        },
    )?;
    Ok(())
}

/// The kubelet API's fields, with v1beta1's defaults (webhook authentication and
/// authorization, anonymous off).
fn apply_secure(
    c: &Ctx<'_>,
    s: &mut crate::server::secure::SecureArgs,
) -> Result<(), ConfigFileError> {
    use crate::server::secure::AuthorizationMode;
    let d = Duration::from_secs;
    let opt_path =
        |v: &Value| Ok(Some(PathBuf::from(text(v)?)).filter(|p| !p.as_os_str().is_empty()));
    c.set(&mut s.port, "port", Unset::Zero, Some(10250), port)?;
    c.set(
        &mut s.tls_cert_file,
        "tlsCertFile",
        Unset::Never,
        Some(None),
        opt_path,
    )?;
    c.set(
        &mut s.tls_private_key_file,
        "tlsPrivateKeyFile",
        Unset::Never,
        Some(None),
        opt_path,
    )?;
    c.set(
        &mut s.streaming_connection_idle_timeout,
        "streamingConnectionIdleTimeout",
        Unset::Zero,
        Some(d(4 * 3600)),
        duration,
    )?;
    c.set(
        &mut s.rotate_server_certificates,
        "serverTLSBootstrap",
        Unset::Never,
        Some(false),
        boolean,
    )?;
    c.set(
        &mut s.client_ca_file,
        "authentication.x509.clientCAFile",
        Unset::Never,
        Some(None),
        opt_path,
    )?;
    c.set(
        &mut s.anonymous_auth,
        "authentication.anonymous.enabled",
        Unset::Never,
        Some(false),
        boolean,
    )?;
    c.set(
        &mut s.authentication_token_webhook,
        "authentication.webhook.enabled",
        Unset::Never,
        Some(true),
        boolean,
    )?;
    c.set(
        &mut s.authentication_token_webhook_cache_ttl,
        "authentication.webhook.cacheTTL",
        Unset::Zero,
        Some(d(120)),
        duration,
    )?;
    c.set(
        &mut s.authorization_mode,
        "authorization.mode",
        Unset::Zero,
        Some(AuthorizationMode::Webhook),
        |v| match text(v)?.as_str() {
            "AlwaysAllow" => Ok(AuthorizationMode::AlwaysAllow),
            "Webhook" => Ok(AuthorizationMode::Webhook),
            other => Err(format!(
                "unsupported mode {other:?} (AlwaysAllow or Webhook)"
            )),
        },
    )?;
    c.set(
        &mut s.authorization_webhook_cache_authorized_ttl,
        "authorization.webhook.cacheAuthorizedTTL",
        Unset::Zero,
        Some(d(300)),
        duration,
    )?;
    c.set(
        &mut s.authorization_webhook_cache_unauthorized_ttl,
        "authorization.webhook.cacheUnauthorizedTTL",
        Unset::Zero,
        Some(d(30)),
        duration,
    )?;
    Ok(())
}

/// When a present field counts as unset (upstream's defaulting of non-pointer fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unset {
    /// At its Go zero value (`""`, `0`, `0s`).
    Zero,
    /// Never: a pointer field, or one whose zero value means something.
    Never,
}

struct Ctx<'a> {
    loaded: &'a Loaded,
    explicit: &'a HashSet<String>,
}

impl Ctx<'_> {
    /// The value at a dotted field path, `null` counting as absent.
    fn lookup(&self, field: &str) -> Option<&Value> {
        let mut parts = field.split('.');
        let first = parts.next()?;
        let mut value = self.loaded.doc.get(first)?;
        for part in parts {
            value = value.as_object()?.get(part)?;
        }
        Some(value).filter(|v| !v.is_null())
    }

    /// Sets `target` from `field` unless its flag was given: the converted value when
    /// set, else `default` when there is one and a `--config` file was read (or the
    /// field is set to a zero value that counts as unset).
    fn set<T>(
        &self,
        target: &mut T,
        field: &str,
        unset: Unset,
        default: Option<T>,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<(), ConfigFileError> {
        let arg = FIELD_ARGS
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(field, |(_, arg)| *arg);
        if self.explicit.contains(arg) {
            return Ok(());
        }
        let value = self.lookup(field);
        let zero = value.is_some_and(is_zero) && unset == Unset::Zero;
        match value {
            Some(v) if !zero => {
                *target = convert(v).map_err(|reason| ConfigFileError::Value {
                    path: self.loaded.origin(field),
                    field: field.to_owned(),
                    reason,
                })?;
            }
            _ if zero || self.loaded.from_file => {
                if let Some(d) = default {
                    *target = d;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// `featureGates`: the file's gates, then those of `--feature-gates` (which win per
/// gate, as upstream's `kubeletConfigFlagPrecedence` keeps the file's others).
fn feature_gates(c: &Ctx<'_>, flag: &mut String) -> Result<(), ConfigFileError> {
    let Some(gates) = c.lookup("featureGates").and_then(Value::as_object) else {
        if c.loaded.from_file && !c.explicit.contains("feature_gates") {
            flag.clear();
        }
        return Ok(());
    };
    let mut entries: Vec<String> = gates
        .iter()
        .filter_map(|(k, v)| v.as_bool().map(|b| format!("{k}={b}")))
        .collect();
    if c.explicit.contains("feature_gates") && !flag.is_empty() {
        entries.push(flag.clone());
    }
    *flag = entries.join(",");
    Ok(())
}
