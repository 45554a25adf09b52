//! `nodelet proxy --config`: upstream kube-proxy's `KubeProxyConfiguration` file
//! (`kubeproxy.config.k8s.io/v1alpha1`, YAML or JSON) folded into `ProxyArgs`.
//!
//! Decoding is strict as the agent's `KubeletConfiguration` loader (`config_file`): a
//! field upstream's v1alpha1 type lacks is an error with its field path, a mistyped
//! value too; fields upstream has and nodelet ignores (IPVS, iptables, Windows settings,
//! …) are returned to be warned about once. As upstream, flags
//! given on the command line win over the file's values; the file's values win over
//! flag defaults.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::config_file::schema::{self, Field, Support, Ty, f};
use super::{ProxyArgs, parse_duration};

/// The `apiVersion` a file must have.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The `kind` a file must have.
pub const KIND: &str = "KubeProxyConfiguration";

/// A `KubeProxyConfiguration` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error("kube-proxy config file {}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kube-proxy config file {}: cannot parse: {source}", path.display())]
    Syntax {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("kube-proxy config file {}: want apiVersion {API_VERSION:?} and kind {KIND:?}, got {api_version:?} {kind:?}", path.display())]
    TypeMeta {
        path: PathBuf,
        api_version: String,
        kind: String,
    },
    #[error("kube-proxy config file {}: strict decoding error: {}", path.display(), problems.join(", "))]
    Strict {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("kube-proxy config file {}: {field}: {reason}", path.display())]
    Value {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

use Support::{No, Partial, Yes};
use Ty::{Bool, BoolMap, Duration, F64, I32, Obj, Str, StrList};

const CLIENT_CONNECTION: &[Field] = &[
    f("kubeconfig", Str, Yes),
    f("acceptContentTypes", Str, No),
    f("contentType", Str, No),
    f("qps", F64, No),
    f("burst", I32, No),
];
const IPTABLES: &[Field] = &[
    f("masqueradeAll", Bool, No),
    f("masqueradeBit", I32, No),
    f("localhostNodePorts", Bool, No),
    f("syncPeriod", Duration, No),
    f("minSyncPeriod", Duration, No),
];
const IPVS: &[Field] = &[
    f("syncPeriod", Duration, No),
    f("minSyncPeriod", Duration, No),
    f("scheduler", Str, No),
    f("excludeCIDRs", StrList, No),
    f("strictARP", Bool, No),
    f("tcpTimeout", Duration, No),
    f("tcpFinTimeout", Duration, No),
    f("udpTimeout", Duration, No),
];
const NFTABLES: &[Field] = &[
    f("masqueradeAll", Bool, Yes),
    f("masqueradeBit", I32, No),
    f("syncPeriod", Duration, Yes),
    f("minSyncPeriod", Duration, Yes),
];
const WINKERNEL: &[Field] = &[
    f("networkName", Str, No),
    f("sourceVip", Str, No),
    f("enableDSR", Bool, No),
    f("rootHnsEndpointName", Str, No),
    f("forwardHealthCheckVip", Bool, No),
];
const DETECT_LOCAL: &[Field] = &[
    f("bridgeInterface", Str, No),
    f("interfaceNamePrefix", Str, No),
];
const CONNTRACK: &[Field] = &[
    f("maxPerCore", I32, Yes),
    f("min", I32, Yes),
    f("tcpEstablishedTimeout", Duration, Yes),
    f("tcpCloseWaitTimeout", Duration, Yes),
    f("tcpBeLiberal", Bool, Yes),
    f("udpTimeout", Duration, Yes),
    f("udpStreamTimeout", Duration, Yes),
];

/// Upstream's v1alpha1 `KubeProxyConfiguration` (v1.37).
pub const KUBE_PROXY_CONFIGURATION: &[Field] = &[
    f("featureGates", BoolMap, No),
    f("clientConnection", Obj(CLIENT_CONNECTION), Partial),
    f("logging", Obj(schema::LOGGING), No),
    f("hostnameOverride", Str, Yes),
    f("bindAddress", Str, Yes),
    f("healthzBindAddress", Str, Yes),
    f("metricsBindAddress", Str, Yes),
    f("bindAddressHardFail", Bool, No),
    f("enableProfiling", Bool, No),
    f("showHiddenMetricsForVersion", Str, No),
    f("mode", Str, Yes),
    f("iptables", Obj(IPTABLES), No),
    f("ipvs", Obj(IPVS), No),
    f("nftables", Obj(NFTABLES), Partial),
    f("winkernel", Obj(WINKERNEL), No),
    f("detectLocalMode", Str, Support::Fixed("\"ClusterCIDR\"")),
    f("detectLocal", Obj(DETECT_LOCAL), No),
    f("clusterCIDR", Str, Yes),
    f("nodePortAddresses", StrList, Yes),
    f("oomScoreAdj", I32, No),
    f("conntrack", Obj(CONNTRACK), Yes),
    f("configSyncPeriod", Duration, No),
    f("portRange", Str, No),
    f("windowsRunAsService", Bool, No),
];

/// Reads and strictly checks a file; returns the document and the ignored fields.
///
/// # Errors
/// The file cannot be read or parsed, has the wrong type meta, or fails strict decoding.
pub fn load(path: &Path) -> Result<(Map<String, Value>, Vec<String>), ProxyConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProxyConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let doc: Value = serde_yaml::from_str(&text).map_err(|source| ProxyConfigError::Syntax {
        path: path.to_path_buf(),
        source,
    })?;
    let Value::Object(doc) = doc else {
        return Err(ProxyConfigError::TypeMeta {
            path: path.to_path_buf(),
            api_version: String::new(),
            kind: String::new(),
        });
    };
    let meta = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    if meta("apiVersion") != API_VERSION || meta("kind") != KIND {
        return Err(ProxyConfigError::TypeMeta {
            path: path.to_path_buf(),
            api_version: meta("apiVersion"),
            kind: meta("kind"),
        });
    }
    let (problems, unsupported) = schema::check_with(&doc, KUBE_PROXY_CONFIGURATION);
    if !problems.is_empty() {
        return Err(ProxyConfigError::Strict {
            path: path.to_path_buf(),
            problems: problems.iter().map(ToString::to_string).collect(),
        });
    }
    Ok((doc, unsupported))
}

/// Folds `--config` into `args`; `explicit` are the ids of the flags given on the
/// command line. Returns the ignored fields to warn about.
///
/// # Errors
/// The file cannot be used, or a value is not valid (mode other than nftables, a bad
/// address or duration).
pub fn configure(
    args: &mut ProxyArgs,
    explicit: &HashSet<String>,
) -> Result<Vec<String>, super::config_file::ConfigFileError> {
    let Some(path) = args.config.clone() else {
        return Ok(Vec::new());
    };
    let (doc, unsupported) = load(&path)?;
    apply(&doc, &path, args, explicit)?;
    Ok(unsupported)
}

fn get<'a>(doc: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut obj = doc;
    for p in parents {
        obj = obj.get(*p)?.as_object()?;
    }
    obj.get(*last).filter(|v| !v.is_null())
}

fn str_at<'a>(doc: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    get(doc, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Applies the document's supported fields to the flags not given explicitly.
///
/// # Errors
/// A value that is not valid.
pub fn apply(
    doc: &Map<String, Value>,
    path: &Path,
    args: &mut ProxyArgs,
    explicit: &HashSet<String>,
) -> Result<(), ProxyConfigError> {
    let bad = |field: &'static str, reason: String| ProxyConfigError::Value {
        path: path.to_path_buf(),
        field,
        reason,
    };
    let free = |id: &str| !explicit.contains(id);
    if let Some(mode) = str_at(doc, &["mode"])
        && mode != "nftables"
    {
        return Err(bad(
            "mode",
            format!("{mode:?} is not supported (nodelet's proxy runs nftables)"),
        ));
    }
    if free("kubeconfig")
        && let Some(k) = str_at(doc, &["clientConnection", "kubeconfig"])
    {
        args.kubeconfig = Some(PathBuf::from(k));
    }
    if free("hostname_override")
        && let Some(h) = str_at(doc, &["hostnameOverride"])
    {
        args.hostname_override = Some(h.to_owned());
    }
    if free("bind_address")
        && let Some(b) = str_at(doc, &["bindAddress"])
    {
        args.bind_address = b
            .parse()
            .map_err(|e| bad("bindAddress", format!("{b:?}: {e}")))?;
    }
    // As upstream's defaulting: empty means the default address, a bare IP gets the
    // default port (resolved with the flags in `cmd::proxy`).
    if free("healthz_bind_address")
        && let Some(v) = str_at(doc, &["healthzBindAddress"])
    {
        args.healthz_bind_address = Some(v.to_owned());
    }
    if free("metrics_bind_address")
        && let Some(v) = str_at(doc, &["metricsBindAddress"])
    {
        args.metrics_bind_address = Some(v.to_owned());
    }
    if free("cluster_cidr")
        && let Some(c) = str_at(doc, &["clusterCIDR"])
    {
        args.cluster_cidr = c.split(',').map(|s| s.trim().to_owned()).collect();
    }
    if free("nodeport_addresses")
        && let Some(list) = get(doc, &["nodePortAddresses"]).and_then(Value::as_array)
    {
        args.nodeport_addresses = list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
    }
    if free("masquerade_all")
        && let Some(m) = get(doc, &["nftables", "masqueradeAll"]).and_then(Value::as_bool)
    {
        args.masquerade_all = m;
    }
    for (id, field, name) in [
        (
            "conntrack_max_per_core",
            "maxPerCore",
            "conntrack.maxPerCore",
        ),
        ("conntrack_min", "min", "conntrack.min"),
    ] {
        if free(id)
            && let Some(v) = get(doc, &["conntrack", field]).and_then(Value::as_i64)
        {
            let v = u64::try_from(v).map_err(|_| bad(name, format!("{v} is negative")))?;
            if id == "conntrack_max_per_core" {
                args.conntrack_max_per_core = v;
            } else {
                args.conntrack_min = v;
            }
        }
    }
    if free("conntrack_tcp_be_liberal")
        && let Some(b) = get(doc, &["conntrack", "tcpBeLiberal"]).and_then(Value::as_bool)
    {
        args.conntrack_tcp_be_liberal = b;
    }
    for (id, field, name) in [
        (
            "conntrack_tcp_timeout_established",
            "tcpEstablishedTimeout",
            "conntrack.tcpEstablishedTimeout",
        ),
        (
            "conntrack_tcp_timeout_close_wait",
            "tcpCloseWaitTimeout",
            "conntrack.tcpCloseWaitTimeout",
        ),
        (
            "conntrack_udp_timeout",
            "udpTimeout",
            "conntrack.udpTimeout",
        ),
        (
            "conntrack_udp_timeout_stream",
            "udpStreamTimeout",
            "conntrack.udpStreamTimeout",
        ),
    ] {
        if !free(id) {
            continue;
        }
        if let Some(s) = str_at(doc, &["conntrack", field]) {
            let d = parse_duration(s).map_err(|e| bad(name, e))?;
            match id {
                "conntrack_tcp_timeout_established" => args.conntrack_tcp_timeout_established = d,
                "conntrack_tcp_timeout_close_wait" => args.conntrack_tcp_timeout_close_wait = d,
                "conntrack_udp_timeout" => args.conntrack_udp_timeout = d,
                _ => args.conntrack_udp_timeout_stream = d,
            }
        }
    }
    for (id, field, name) in [
        ("sync_period", "syncPeriod", "nftables.syncPeriod"),
        ("min_sync_period", "minSyncPeriod", "nftables.minSyncPeriod"),
    ] {
        if !free(id) {
            continue;
        }
        if let Some(s) = str_at(doc, &["nftables", field]) {
            let d = parse_duration(s).map_err(|e| bad(name, e))?;
            if id == "sync_period" {
                args.sync_period = d;
            } else {
                args.min_sync_period = d;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
