//! Upstream's `KubeletConfiguration` (`kubelet.config.k8s.io/v1beta1`, Kubernetes
//! v1.37, `k8s.io/kubelet/config/v1beta1/types.go` and the component-base logging and
//! tracing types it embeds) as a table: every field's JSON name, its Go type as far as
//! decoding cares, and whether nodelet honours it. [`check`] is upstream's strict
//! decoding over a parsed document (unknown fields and type mismatches, with field
//! paths); [`unsupported`] names the set fields nodelet ignores.

use serde_json::Value;

use crate::cli::parse_duration;

/// How a field decodes (Go's `encoding/json` rules as sigs.k8s.io/json applies them).
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// `string`.
    Str,
    /// `bool`.
    Bool,
    /// `int32`.
    I32,
    /// `uint32` (klog's `VerbosityLevel`).
    U32,
    /// `int64`.
    I64,
    /// `float64`.
    F64,
    /// `metav1.Duration`: a Go duration string (`10s`, `1m0s`).
    Duration,
    /// component-base's `TimeOrMetaDuration`: a duration string or nanoseconds.
    TimeOrDuration,
    /// `resource.Quantity`: a string or a number.
    Quantity,
    /// `[]string`.
    StrList,
    /// `[]int32`.
    I32List,
    /// `map[string]string`.
    StrMap,
    /// `map[string][]string`.
    StrListMap,
    /// `map[string]bool`.
    BoolMap,
    /// `map[string]resource.Quantity` (`v1.ResourceList`).
    QuantityMap,
    /// A struct.
    Obj(&'static [Field]),
    /// A slice of structs.
    ObjList(&'static [Field]),
}

/// Whether nodelet honours a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Mapped onto a flag (`super::apply`).
    Yes,
    /// Ignored: warned about when set to anything but its zero value.
    No,
    /// nodelet behaves as if set to this value (JSON text); another value is warned about.
    Fixed(&'static str),
    /// A struct some of whose fields are honoured: each field says.
    Partial,
}

/// One field of a struct.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The JSON name.
    pub name: &'static str,
    /// How it decodes.
    pub ty: Ty,
    /// Whether nodelet honours it.
    pub support: Support,
}

pub(crate) const fn f(name: &'static str, ty: Ty, support: Support) -> Field {
    Field { name, ty, support }
}

use Support::{No, Partial, Yes};
use Ty::{
    Bool, BoolMap, Duration, F64, I32, I32List, I64, Obj, ObjList, Quantity, QuantityMap, Str,
    StrList, StrListMap, StrMap, TimeOrDuration, U32,
};

const X509: &[Field] = &[f("clientCAFile", Str, Yes)];
const AUTHN_WEBHOOK: &[Field] = &[f("enabled", Bool, Yes), f("cacheTTL", Duration, Yes)];
const ANONYMOUS: &[Field] = &[f("enabled", Bool, Yes)];
const AUTHENTICATION: &[Field] = &[
    f("x509", Obj(X509), Partial),
    f("webhook", Obj(AUTHN_WEBHOOK), Partial),
    f("anonymous", Obj(ANONYMOUS), Partial),
];
const AUTHZ_WEBHOOK: &[Field] = &[
    f("cacheAuthorizedTTL", Duration, Yes),
    f("cacheUnauthorizedTTL", Duration, Yes),
];
const AUTHORIZATION: &[Field] = &[
    f("mode", Str, Yes),
    f("webhook", Obj(AUTHZ_WEBHOOK), Partial),
];
const VMODULE: &[Field] = &[f("filePattern", Str, No), f("verbosity", U32, No)];
const OUTPUT_ROUTING: &[Field] = &[
    f("splitStream", Bool, No),
    f("infoBufferSize", Quantity, No),
];
const LOG_OPTIONS: &[Field] = &[
    f("text", Obj(OUTPUT_ROUTING), No),
    f("json", Obj(OUTPUT_ROUTING), No),
];
pub(crate) const LOGGING: &[Field] = &[
    f("format", Str, Yes),
    f("flushFrequency", TimeOrDuration, No),
    f("verbosity", U32, Yes),
    f("vmodule", ObjList(VMODULE), No),
    f("options", Obj(LOG_OPTIONS), No),
];
const SHUTDOWN_BY_PRIORITY: &[Field] = &[
    f("priority", I32, No),
    f("shutdownGracePeriodSeconds", I64, No),
];
const MEMORY_SWAP: &[Field] = &[f("swapBehavior", Str, No)];
const CRASH_LOOP_BACK_OFF: &[Field] = &[f("maxContainerRestartPeriod", Duration, No)];
const MEMORY_RESERVATION: &[Field] = &[f("numaNode", I32, No), f("limits", QuantityMap, No)];
const TAINT: &[Field] = &[
    f("key", Str, Yes),
    f("value", Str, Yes),
    f("effect", Str, Yes),
    f("timeAdded", Str, Yes),
];
const TRACING: &[Field] = &[f("endpoint", Str, No), f("samplingRatePerMillion", I32, No)];
const USER_NAMESPACES: &[Field] = &[f("idsPerPod", I64, No)];

/// Every field of `KubeletConfiguration` besides `apiVersion` and `kind`, in
/// upstream's order.
pub const KUBELET_CONFIGURATION: &[Field] = &[
    // `false` closes the read-only port, which upstream serves only with the server.
    f("enableServer", Bool, Yes),
    f("staticPodPath", Str, Yes),
    f("podLogsDir", Str, Yes),
    f("syncFrequency", Duration, No),
    f("fileCheckFrequency", Duration, Yes),
    f("httpCheckFrequency", Duration, Yes),
    f("staticPodURL", Str, Yes),
    f("staticPodURLHeader", StrListMap, Yes),
    f("address", Str, Yes),
    f("port", I32, Yes),
    f("readOnlyPort", I32, Yes),
    f("tlsCertFile", Str, Yes),
    f("tlsPrivateKeyFile", Str, Yes),
    f("tlsCipherSuites", StrList, No),
    f("tlsCurvePreferences", I32List, No),
    f("tlsMinVersion", Str, No),
    f("rotateCertificates", Bool, No),
    f("serverTLSBootstrap", Bool, Yes),
    f("authentication", Obj(AUTHENTICATION), Partial),
    f("authorization", Obj(AUTHORIZATION), Partial),
    f("registryPullQPS", I32, Yes),
    f("registryBurst", I32, Yes),
    f("imagePullCredentialsVerificationPolicy", Str, No),
    f("preloadedImagesVerificationAllowlist", StrList, No),
    f("eventRecordQPS", I32, No),
    f("eventBurst", I32, No),
    f("enableDebuggingHandlers", Bool, No),
    f("enableContentionProfiling", Bool, No),
    f("healthzPort", I32, Yes),
    f("healthzBindAddress", Str, Yes),
    f("oomScoreAdj", I32, No),
    f("clusterDomain", Str, Yes),
    f("clusterDNS", StrList, Yes),
    f("streamingConnectionIdleTimeout", Duration, Yes),
    f(
        "nodeStatusUpdateFrequency",
        Duration,
        Support::Fixed("\"10s\""),
    ),
    f(
        "nodeStatusReportFrequency",
        Duration,
        Support::Fixed("\"5m0s\""),
    ),
    f("nodeLeaseDurationSeconds", I32, Support::Fixed("40")),
    f("imageMinimumGCAge", Duration, Yes),
    f("imageMaximumGCAge", Duration, Yes),
    f("imageGCHighThresholdPercent", I32, Yes),
    f("imageGCLowThresholdPercent", I32, Yes),
    f("volumeStatsAggPeriod", Duration, No),
    f("kubeletCgroups", Str, No),
    f("systemCgroups", Str, No),
    f("cgroupRoot", Str, Yes),
    f("cgroupsPerQOS", Bool, Yes),
    f("cgroupDriver", Str, Yes),
    f("cpuManagerPolicy", Str, No),
    f("singleProcessOOMKill", Bool, No),
    f("cpuManagerPolicyOptions", StrMap, No),
    f("cpuManagerReconcilePeriod", Duration, No),
    f("memoryManagerPolicy", Str, No),
    f("topologyManagerPolicy", Str, No),
    f("topologyManagerScope", Str, No),
    f("topologyManagerPolicyOptions", StrMap, No),
    f("qosReserved", StrMap, No),
    f("runtimeRequestTimeout", Duration, No),
    f("hairpinMode", Str, No),
    f("maxPods", I32, Yes),
    f("podCIDR", Str, Yes),
    f("podPidsLimit", I64, Yes),
    f("resolvConf", Str, Yes),
    f("runOnce", Bool, No),
    f("cpuCFSQuota", Bool, Yes),
    f("cpuCFSQuotaPeriod", Duration, Yes),
    f("nodeStatusMaxImages", I32, Support::Fixed("50")),
    f("maxOpenFiles", I64, No),
    f("contentType", Str, No),
    f("kubeAPIQPS", I32, Yes),
    f("kubeAPIBurst", I32, Yes),
    f("serializeImagePulls", Bool, Yes),
    f("maxParallelImagePulls", I32, Yes),
    f("evictionHard", StrMap, Yes),
    f("evictionSoft", StrMap, Yes),
    f("evictionSoftGracePeriod", StrMap, Yes),
    f("evictionPressureTransitionPeriod", Duration, Yes),
    f("evictionMaxPodGracePeriod", I32, Yes),
    f("evictionMinimumReclaim", StrMap, Yes),
    f("mergeDefaultEvictionSettings", Bool, Yes),
    f("podsPerCore", I32, No),
    f("enableControllerAttachDetach", Bool, No),
    f("protectKernelDefaults", Bool, No),
    f("makeIPTablesUtilChains", Bool, No),
    f("iptablesMasqueradeBit", I32, No),
    f("iptablesDropBit", I32, No),
    f("featureGates", BoolMap, Yes),
    f("failSwapOn", Bool, No),
    f("memorySwap", Obj(MEMORY_SWAP), No),
    f("containerLogMaxSize", Str, Yes),
    f("containerLogMaxFiles", I32, Yes),
    f("containerLogMaxWorkers", I32, No),
    f("containerLogMonitorInterval", Duration, No),
    f("configMapAndSecretChangeDetectionStrategy", Str, No),
    f("systemReserved", StrMap, Yes),
    f("kubeReserved", StrMap, Yes),
    f("reservedSystemCPUs", Str, No),
    f("showHiddenMetricsForVersion", Str, No),
    f("systemReservedCgroup", Str, No),
    f("kubeReservedCgroup", Str, No),
    f("enforceNodeAllocatable", StrList, Yes),
    f("allowedUnsafeSysctls", StrList, No),
    f("defaultPodSysctls", StrMap, No),
    f("volumePluginDir", Str, No),
    f("providerID", Str, No),
    f("kernelMemcgNotification", Bool, Yes),
    f("logging", Obj(LOGGING), Partial),
    f("enableSystemLogHandler", Bool, No),
    f("enableSystemLogQuery", Bool, No),
    f("shutdownGracePeriod", Duration, No),
    f("shutdownGracePeriodCriticalPods", Duration, No),
    f(
        "shutdownGracePeriodByPodPriority",
        ObjList(SHUTDOWN_BY_PRIORITY),
        No,
    ),
    f("crashLoopBackOff", Obj(CRASH_LOOP_BACK_OFF), No),
    f("reservedMemory", ObjList(MEMORY_RESERVATION), No),
    f("enableProfilingHandler", Bool, No),
    f("enableDebugFlagsHandler", Bool, No),
    f("seccompDefault", Bool, No),
    f("memoryThrottlingFactor", F64, No),
    f("memoryReservationPolicy", Str, No),
    f("registerWithTaints", ObjList(TAINT), Yes),
    f("registerNode", Bool, Yes),
    f("tracing", Obj(TRACING), No),
    f("localStorageCapacityIsolation", Bool, No),
    f("containerRuntimeEndpoint", Str, Yes),
    f("imageServiceEndpoint", Str, No),
    f("failCgroupV1", Bool, No),
    f("userNamespaces", Obj(USER_NAMESPACES), No),
    // Not upstream's: nodelet's runtime handlers (containerd's CRI plugin config
    // holds them for the upstream kubelet).
    f("nodeletRuntimeHandlers", StrList, Yes),
];

/// The type-meta fields every document carries.
pub const TYPE_META: [&str; 2] = ["apiVersion", "kind"];

/// What strict decoding found wrong with one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A field upstream's type does not have (upstream: `unknown field "a.b"`).
    Unknown(String),
    /// A value of the wrong JSON type, or a duration Go would not parse.
    Type {
        /// The field path (`registerWithTaints[0].key`).
        field: String,
        /// What the field takes.
        want: &'static str,
        /// What the document has.
        got: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Unknown(field) => write!(f, "unknown field {field:?}"),
            Problem::Type { field, want, got } => {
                write!(f, "field {field:?}: want {want}, got {got}")
            }
        }
    }
}

/// Checks a document's fields (besides `apiVersion`/`kind`) against the table:
/// every unknown field and every mistyped value, in field order. `null` is accepted
/// anywhere (Go leaves the zero value).
pub fn check(doc: &serde_json::Map<String, Value>) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_obj(doc, KUBELET_CONFIGURATION, "", &TYPE_META, &mut problems);
    problems
}

/// [`check`] and [`unsupported`] over another component's field table (the proxy's
/// `KubeProxyConfiguration`).
pub fn check_with(
    doc: &serde_json::Map<String, Value>,
    fields: &[Field],
) -> (Vec<Problem>, Vec<String>) {
    let mut problems = Vec::new();
    check_obj(doc, fields, "", &TYPE_META, &mut problems);
    let mut unsupported = Vec::new();
    unsupported_in(doc, fields, "", &mut unsupported);
    (problems, unsupported)
}

fn check_obj(
    obj: &serde_json::Map<String, Value>,
    fields: &[Field],
    prefix: &str,
    extra: &[&str],
    problems: &mut Vec<Problem>,
) {
    for (name, value) in obj {
        let path = join(prefix, name);
        match fields.iter().find(|f| f.name == name) {
            Some(field) => check_value(value, field.ty, &path, problems),
            None if extra.contains(&name.as_str()) => {}
            None => problems.push(Problem::Unknown(path)),
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn check_value(value: &Value, ty: Ty, path: &str, problems: &mut Vec<Problem>) {
    if value.is_null() {
        return;
    }
    let mut bad = |want: &'static str| {
        problems.push(Problem::Type {
            field: path.to_owned(),
            want,
            got: describe(value),
        });
    };
    match ty {
        Str if !value.is_string() => bad("a string"),
        Bool if !value.is_boolean() => bad("a boolean"),
        I32 if !in_range(value, i64::from(i32::MIN), i64::from(i32::MAX)) => {
            bad("a 32-bit integer");
        }
        U32 if !in_range(value, 0, i64::from(u32::MAX)) => bad("an unsigned 32-bit integer"),
        I64 if value.as_i64().is_none() => bad("an integer"),
        F64 if !value.is_number() => bad("a number"),
        Duration => match value.as_str() {
            Some(s) if parse_duration(s).is_ok() => {}
            _ => bad("a duration such as \"10s\" or \"1m30s\""),
        },
        TimeOrDuration => match value {
            Value::String(s) if parse_duration(s).is_ok() => {}
            Value::Number(n) if n.is_i64() => {}
            _ => bad("a duration such as \"5s\" or nanoseconds"),
        },
        Quantity if !(value.is_string() || value.is_number()) => bad("a quantity"),
        StrList | I32List | ObjList(_) => {
            let Some(items) = value.as_array() else {
                bad("a list");
                return;
            };
            let item_ty = match ty {
                StrList => Str,
                I32List => I32,
                ObjList(fields) => Obj(fields),
                _ => return,
            };
            for (i, item) in items.iter().enumerate() {
                check_value(item, item_ty, &format!("{path}[{i}]"), problems);
            }
        }
        StrMap | StrListMap | BoolMap | QuantityMap => {
            let Some(map) = value.as_object() else {
                bad("a map");
                return;
            };
            let value_ty = match ty {
                StrMap => Str,
                StrListMap => StrList,
                BoolMap => Bool,
                _ => Quantity,
            };
            for (k, v) in map {
                check_value(v, value_ty, &format!("{path}[{k}]"), problems);
            }
        }
        Obj(fields) => match value.as_object() {
            Some(obj) => check_obj(obj, fields, path, &[], problems),
            None => bad("an object"),
        },
        _ => {}
    }
}

fn in_range(value: &Value, min: i64, max: i64) -> bool {
    value.as_i64().is_some_and(|n| (min..=max).contains(&n))
}

/// A value as an error message shows it: its JSON type and, for scalars, itself.
fn describe(value: &Value) -> String {
    match value {
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
        Value::String(s) => format!("string {s:?}"),
        other => other.to_string(),
    }
}

/// The fields set in `doc` that nodelet does not honour, as field paths: those with
/// [`Support::No`] set to anything but Go's zero value (which upstream treats as
/// unset), those with [`Support::Fixed`] set to another value, and the same inside
/// [`Support::Partial`] structs.
pub fn unsupported(doc: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    unsupported_in(doc, KUBELET_CONFIGURATION, "", &mut out);
    out
}

fn unsupported_in(
    obj: &serde_json::Map<String, Value>,
    fields: &[Field],
    prefix: &str,
    out: &mut Vec<String>,
) {
    for field in fields {
        let Some(value) = obj.get(field.name) else {
            continue;
        };
        let path = join(prefix, field.name);
        match (field.support, field.ty) {
            (Yes, _) => {}
            (No, ty) if !is_zero(value, ty) => out.push(path),
            (Support::Fixed(fixed), ty) if !is_zero(value, ty) && !same(value, fixed, ty) => {
                out.push(path);
            }
            (Partial, Obj(inner)) => {
                if let Some(obj) = value.as_object() {
                    unsupported_in(obj, inner, &path, out);
                }
            }
            _ => {}
        }
    }
}

/// Go's zero value of the type, or `null`, or (for structs) every field zero.
fn is_zero(value: &Value, ty: Ty) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => match ty {
            Duration | TimeOrDuration => parse_duration(s).is_ok_and(|d| d.is_zero()),
            Quantity => s == "0",
            _ => s.is_empty(),
        },
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => match ty {
            Obj(fields) => map.iter().all(|(k, v)| {
                fields
                    .iter()
                    .find(|f| f.name == k)
                    .is_none_or(|f| is_zero(v, f.ty))
            }),
            _ => map.is_empty(),
        },
    }
}

/// Whether `value` equals the JSON text `fixed` (durations compared by length).
fn same(value: &Value, fixed: &str, ty: Ty) -> bool {
    let Ok(fixed) = serde_json::from_str::<Value>(fixed) else {
        return false;
    };
    match (ty, value.as_str(), fixed.as_str()) {
        (Duration, Some(a), Some(b)) => parse_duration(a).ok() == parse_duration(b).ok(),
        _ => *value == fixed,
    }
}
