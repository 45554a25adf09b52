//! The systemd cgroup driver's D-Bus side: a client for the `org.freedesktop.systemd1`
//! Manager methods kubelet's cgroup manager uses through runc's libcontainer
//! (`StartTransientUnit`, `SetUnitProperties`, `StopUnit`, `ResetFailedUnit`, the
//! `Version` property and the `JobRemoved` signal), and the unit properties a
//! [`ResourceConfig`] turns into.
//!
//! Ported from opencontainers/cgroups `systemd/common.go` (`startUnit`, `stopUnit`,
//! `setUnitProperties`, `addCpuQuota`, `systemdVersionAtoi`), `systemd/v1.go`
//! (`genV1ResourcesProperties`, `LegacyManager.Apply`) and `systemd/v2.go`
//! (`genV2ResourcesProperties`, `unifiedResToSystemdProps`, `UnifiedManager.Apply`), as
//! driven by upstream `pkg/kubelet/cm/cgroup_manager_linux.go` (`Create` is `Apply(-1)`
//! then `Set`; `libctCgroupConfig` names the unit and its parent slice).
//!
//! The D-Bus protocol is the `zbus` crate's, on a tokio runtime of its own: the cgroup
//! manager is synchronous and is called both from plain threads and from inside the
//! agent's tokio tasks, where blocking on another runtime would panic. So the client
//! owns one thread running a current-thread runtime; each call is spawned there and the
//! caller waits for its answer on a channel.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt as _;
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::layout::CgroupVersion;
use crate::values::{ResourceConfig, cpu_shares_to_weight};

const DESTINATION: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// libcontainer's wait for a job's `JobRemoved` (30 s in `startUnit`/`stopUnit`).
const JOB_TIMEOUT: Duration = Duration::from_secs(30);
/// The reply timeout of each method call.
const CALL_TIMEOUT: Duration = Duration::from_secs(25);
/// The kernel's default CFS period (`defCPUQuotaPeriod`).
const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// What went wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdBusError {
    /// The worker thread or its runtime could not be started.
    #[error("starting the systemd D-Bus client: {0}")]
    Runtime(std::io::Error),
    /// Connecting to the bus failed.
    #[error("connecting to the systemd D-Bus at {address}: {source}")]
    Connect {
        /// The bus (`system` or an address).
        address: String,
        /// The D-Bus error.
        source: Box<zbus::Error>,
    },
    /// A method call failed (the D-Bus error names systemd's reason, e.g.
    /// `org.freedesktop.systemd1.NoSuchUnit`).
    #[error("systemd {method} {unit}: {source}")]
    Call {
        /// The unit.
        unit: String,
        /// The Manager method.
        method: &'static str,
        /// The D-Bus error.
        source: Box<zbus::Error>,
    },
    /// The job finished with a result other than `done`.
    #[error("systemd {method} {unit}: the job finished with {result:?}")]
    Job {
        /// The unit.
        unit: String,
        /// The Manager method.
        method: &'static str,
        /// systemd's job result (`failed`, `canceled`, ...).
        result: String,
    },
    /// No reply, or no `JobRemoved` for the job, in time.
    #[error("systemd {method} {unit}: timed out after {after:?}")]
    Timeout {
        /// The unit.
        unit: String,
        /// The Manager method.
        method: &'static str,
        /// How long was waited.
        after: Duration,
    },
    /// The client's worker thread is gone.
    #[error("systemd {method} {unit}: the D-Bus client stopped")]
    Stopped {
        /// The unit.
        unit: String,
        /// The Manager method.
        method: &'static str,
    },
}

/// A unit property's value, with the D-Bus type systemd expects for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    /// `s`.
    Str(String),
    /// `b`.
    Bool(bool),
    /// `t`.
    U64(u64),
    /// `as`.
    StrList(Vec<String>),
}

impl PropertyValue {
    fn to_value(&self) -> Value<'_> {
        match self {
            PropertyValue::Str(s) => Value::from(s.as_str()),
            PropertyValue::Bool(b) => Value::from(*b),
            PropertyValue::U64(n) => Value::from(*n),
            PropertyValue::StrList(l) => {
                Value::from(l.iter().map(String::as_str).collect::<Vec<_>>())
            }
        }
    }
}

/// A unit property: systemd's name (`CPUShares`) and its value.
pub type Property = (String, PropertyValue);

fn prop(name: &str, value: PropertyValue) -> Property {
    (name.to_owned(), value)
}

/// The properties a kubelet slice is started with (libcontainer's `Apply(-1)` for a
/// `.slice` unit): a description, `Wants=` its parent slice, accounting on for every
/// controller (`BlockIOAccounting` on v1, `IOAccounting` on v2) and
/// `DefaultDependencies=false`. Resources are not set here: kubelet's `Create` sets them
/// with `SetUnitProperties` right after.
#[must_use]
pub fn slice_properties(version: CgroupVersion, unit: &str, parent: &str) -> Vec<Property> {
    let io = match version {
        CgroupVersion::V1 => "BlockIOAccounting",
        CgroupVersion::V2 => "IOAccounting",
    };
    vec![
        prop(
            "Description",
            PropertyValue::Str(format!("libcontainer container {unit}")),
        ),
        prop("Wants", PropertyValue::StrList(vec![parent.to_owned()])),
        prop("MemoryAccounting", PropertyValue::Bool(true)),
        prop("CPUAccounting", PropertyValue::Bool(true)),
        prop(io, PropertyValue::Bool(true)),
        prop("TasksAccounting", PropertyValue::Bool(true)),
        prop("DefaultDependencies", PropertyValue::Bool(false)),
    ]
}

/// An `i64` limit as systemd's `u64`, −1 (unlimited) being `u64::MAX` (Go's
/// `uint64(int64)` conversion libcontainer relies on).
fn limit_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// libcontainer `addCpuQuota`: `CPUQuotaPeriodUSec` when a period is set and systemd
/// is v242 or newer; `CPUQuotaPerSecUSec` as quota per second of CPU rounded up to
/// whole percents (systemd keeps `CPUQuota=` as a percentage), or infinity for no quota.
fn add_cpu_quota(out: &mut Vec<Property>, quota: i64, period: u64, systemd_version: Option<u32>) {
    if period != 0 && systemd_version.is_some_and(|v| v >= 242) {
        out.push(prop("CPUQuotaPeriodUSec", PropertyValue::U64(period)));
    }
    if quota != 0 || period != 0 {
        let mut per_sec = u64::MAX;
        if quota > 0 {
            let period = if period == 0 {
                DEFAULT_CPU_PERIOD
            } else {
                period
            };
            per_sec = limit_u64(quota).saturating_mul(1_000_000) / period;
            if per_sec % 10_000 != 0 {
                per_sec = (per_sec / 10_000 + 1) * 10_000;
            }
        }
        out.push(prop("CPUQuotaPerSecUSec", PropertyValue::U64(per_sec)));
    }
}

/// The unit properties of `rc` (libcontainer `genV1ResourcesProperties` /
/// `genV2ResourcesProperties` over kubelet's `toResources`): v1 `MemoryLimit`,
/// `CPUShares`; v2 `MemoryMax`, `CPUWeight` (from the shares, as kubelet converts
/// them) and the unified files systemd has properties for; both `CPUQuotaPerSecUSec`,
/// `CPUQuotaPeriodUSec` (systemd ≥ 242) and `TasksMax`. Huge pages and unified files
/// without a property have none: the manager writes them to the cgroupfs afterwards,
/// as libcontainer's `Set` does.
#[must_use]
pub fn resource_properties(
    version: CgroupVersion,
    rc: &ResourceConfig,
    systemd_version: Option<u32>,
) -> Vec<Property> {
    let mut out = Vec::new();
    if let Some(m) = rc.memory.filter(|m| *m != 0) {
        let name = match version {
            CgroupVersion::V1 => "MemoryLimit",
            CgroupVersion::V2 => "MemoryMax",
        };
        out.push(prop(name, PropertyValue::U64(limit_u64(m))));
    }
    if let Some(shares) = rc.cpu_shares.filter(|s| *s != 0) {
        out.push(match version {
            CgroupVersion::V1 => prop("CPUShares", PropertyValue::U64(shares)),
            CgroupVersion::V2 => prop(
                "CPUWeight",
                PropertyValue::U64(cpu_shares_to_weight(shares)),
            ),
        });
    }
    add_cpu_quota(
        &mut out,
        rc.cpu_quota.unwrap_or(0),
        rc.cpu_period.unwrap_or(0),
        systemd_version,
    );
    if let Some(p) = rc.pids_limit.filter(|p| *p > 0 || *p == -1) {
        out.push(prop("TasksMax", PropertyValue::U64(limit_u64(p))));
    }
    if version == CgroupVersion::V2 {
        for (file, value) in &rc.unified {
            unified_property(&mut out, file, value.trim(), systemd_version);
        }
    }
    out
}

/// libcontainer `unifiedResToSystemdProps` for the files kubelet sets (`memory.*`,
/// `pids.max`, `cpu.weight`, `cpu.max`). Others (and values that don't parse) get no
/// property and are still written to the cgroupfs.
fn unified_property(out: &mut Vec<Property>, file: &str, value: &str, version: Option<u32>) {
    let num = |v: &str| {
        if v == "max" {
            Some(u64::MAX)
        } else {
            v.parse::<u64>().ok()
        }
    };
    let name = match file {
        "memory.high" => "MemoryHigh",
        "memory.low" => "MemoryLow",
        "memory.min" => "MemoryMin",
        "memory.max" => "MemoryMax",
        "memory.swap.max" => "MemorySwapMax",
        "pids.max" => "TasksMax",
        "cpu.weight" => {
            if let Ok(w) = value.parse::<u64>() {
                out.push(prop("CPUWeight", PropertyValue::U64(w)));
            }
            return;
        }
        "cpu.max" => {
            let fields: Vec<&str> = value.split_whitespace().collect();
            let quota = match fields.first() {
                Some(&"max") => Some(0),
                Some(q) => q.parse::<i64>().ok(),
                None => None,
            };
            let period = match fields.get(1) {
                Some(p) => p.parse::<u64>().ok(),
                None => Some(DEFAULT_CPU_PERIOD),
            };
            if let (Some(q), Some(p), true) = (quota, period, fields.len() <= 2) {
                add_cpu_quota(out, q, p, version);
            }
            return;
        }
        _ => return,
    };
    if let Some(n) = num(value) {
        out.push(prop(name, PropertyValue::U64(n)));
    }
}

/// libcontainer `systemdVersionAtoi`: `252`, `v245.4-1.fc32`, `"248-rc1"` → the
/// leading number.
#[must_use]
pub fn parse_systemd_version(s: &str) -> Option<u32> {
    let s = s.trim_start_matches(['"', 'v']);
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// The parent slice kubelet gives a slice (`libctCgroupConfig`): the unit one level up,
/// `-.slice` (the root slice) for a top-level one.
#[must_use]
pub fn parent_slice(unit: &str) -> String {
    match unit.strip_suffix(".slice").and_then(|n| n.rsplit_once('-')) {
        Some((parent, _)) if !parent.is_empty() => format!("{parent}.slice"),
        _ => "-.slice".to_owned(),
    }
}

/// A connection to systemd's Manager on a D-Bus bus.
#[derive(Debug)]
pub struct SystemdBus {
    /// Always `Some` but in `drop`, which drops it inside the worker's runtime
    /// context (zbus spawns a task to remove its signal match when a proxy goes).
    proxy: Option<zbus::Proxy<'static>>,
    handle: tokio::runtime::Handle,
    version: OnceLock<Option<u32>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl SystemdBus {
    /// Connects to systemd on the system bus.
    ///
    /// # Errors
    /// The worker thread can't start, or the bus can't be reached.
    pub fn system() -> Result<Self, SystemdBusError> {
        Self::open("system", None)
    }

    /// Connects to a Manager served on the bus at `address` (`unix:path=...`).
    ///
    /// # Errors
    /// The worker thread can't start, or the bus can't be reached.
    pub fn connect(address: &str) -> Result<Self, SystemdBusError> {
        Self::open(address, Some(address.to_owned()))
    }

    fn open(label: &str, address: Option<String>) -> Result<Self, SystemdBusError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SystemdBusError::Runtime)?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("systemd-dbus".to_owned())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(SystemdBusError::Runtime)?;
        let connect_err = |source| SystemdBusError::Connect {
            address: label.to_owned(),
            source: Box::new(source),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let _ = tx.send(connect(address).await);
        });
        let proxy = rx
            .recv()
            .map_err(|_| connect_err(zbus::Error::Failure("worker stopped".to_owned())))?
            .map_err(connect_err)?;
        Ok(SystemdBus {
            proxy: Some(proxy),
            handle,
            version: OnceLock::new(),
            _stop: stop,
        })
    }

    fn proxy(
        &self,
        unit: &str,
        method: &'static str,
    ) -> Result<zbus::Proxy<'static>, SystemdBusError> {
        self.proxy.clone().ok_or_else(|| SystemdBusError::Stopped {
            unit: unit.to_owned(),
            method,
        })
    }

    /// Runs `fut` on the worker and waits for it.
    fn run<T: Send + 'static>(
        &self,
        unit: &str,
        method: &'static str,
        fut: impl Future<Output = Result<T, SystemdBusError>> + Send + 'static,
    ) -> Result<T, SystemdBusError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| SystemdBusError::Stopped {
            unit: unit.to_owned(),
            method,
        })?
    }

    /// systemd's version (the Manager's `Version` property), read once; `None` when
    /// it can't be read or parsed (then version-gated properties are left out, as
    /// libcontainer does with version −1).
    pub fn version(&self) -> Option<u32> {
        *self.version.get_or_init(|| {
            let Ok(proxy) = self.proxy("", "Get Version") else {
                return None;
            };
            let got = self.run("", "Get Version", async move {
                let v: Result<String, _> =
                    tokio::time::timeout(CALL_TIMEOUT, proxy.get_property::<String>("Version"))
                        .await
                        .unwrap_or_else(|_| Err(zbus::Error::Failure("timed out".to_owned())));
                Ok(v.ok())
            });
            let v = got
                .ok()
                .flatten()
                .as_deref()
                .and_then(parse_systemd_version);
            if v.is_none() {
                tracing::warn!("unable to get the systemd version");
            }
            v
        })
    }

    /// `StartTransientUnit(unit, "replace", properties, [])` and the wait for its job
    /// (libcontainer `startUnit` with `ignoreExist`, as kubelet creates slices: a unit
    /// that already exists is fine).
    ///
    /// # Errors
    /// The call fails (other than `UnitExists`), the job ends other than `done`, or
    /// no `JobRemoved` comes within 30 s.
    pub fn start_transient_unit(
        &self,
        unit: &str,
        properties: &[Property],
    ) -> Result<(), SystemdBusError> {
        const METHOD: &str = "StartTransientUnit";
        let proxy = self.proxy(unit, METHOD)?;
        let owned_unit = unit.to_owned();
        let props = properties.to_vec();
        self.run(unit, METHOD, async move {
            let body_props: Vec<(&str, Value<'_>)> = props
                .iter()
                .map(|(n, v)| (n.as_str(), v.to_value()))
                .collect();
            let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
            let body = (owned_unit.as_str(), "replace", body_props, aux);
            let call = proxy.call::<_, _, OwnedObjectPath>(METHOD, &body);
            match with_job(&proxy, &owned_unit, METHOD, call).await {
                Err(SystemdBusError::Call { source, .. }) if is_error(&source, "UnitExists") => {
                    Ok(())
                }
                other => other,
            }
        })
    }

    /// `SetUnitProperties(unit, true, properties)` (runtime properties, as
    /// libcontainer's `setUnitProperties`).
    ///
    /// # Errors
    /// The call fails or times out.
    pub fn set_unit_properties(
        &self,
        unit: &str,
        properties: &[Property],
    ) -> Result<(), SystemdBusError> {
        const METHOD: &str = "SetUnitProperties";
        if properties.is_empty() {
            return Ok(());
        }
        let proxy = self.proxy(unit, METHOD)?;
        let owned_unit = unit.to_owned();
        let props = properties.to_vec();
        self.run(unit, METHOD, async move {
            let body_props: Vec<(&str, Value<'_>)> = props
                .iter()
                .map(|(n, v)| (n.as_str(), v.to_value()))
                .collect();
            let body = (owned_unit.as_str(), true, body_props);
            let call = proxy.call::<_, _, ()>(METHOD, &body);
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(source)) => Err(SystemdBusError::Call {
                    unit: owned_unit,
                    method: METHOD,
                    source: Box::new(source),
                }),
                Err(_) => Err(SystemdBusError::Timeout {
                    unit: owned_unit,
                    method: METHOD,
                    after: CALL_TIMEOUT,
                }),
            }
        })
    }

    /// `StopUnit(unit, "replace")`, the wait for its job, then `ResetFailedUnit` (its
    /// error ignored), as libcontainer's `stopUnit`. A unit systemd doesn't know
    /// (`NoSuchUnit`) is already stopped; a job ending other than `done` is logged.
    ///
    /// # Errors
    /// The call fails otherwise, or no `JobRemoved` comes within 30 s.
    pub fn stop_unit(&self, unit: &str) -> Result<(), SystemdBusError> {
        const METHOD: &str = "StopUnit";
        let proxy = self.proxy(unit, METHOD)?;
        let owned_unit = unit.to_owned();
        self.run(unit, METHOD, async move {
            let body = (owned_unit.as_str(), "replace");
            let call = proxy.call::<_, _, OwnedObjectPath>(METHOD, &body);
            let res = match with_job(&proxy, &owned_unit, METHOD, call).await {
                Err(SystemdBusError::Call { source, .. }) if is_error(&source, "NoSuchUnit") => {
                    Ok(())
                }
                Err(SystemdBusError::Job { result, .. }) => {
                    tracing::warn!(unit = %owned_unit, %result, "error removing unit, continuing");
                    Ok(())
                }
                other => other,
            };
            if res.is_ok() {
                let body = (owned_unit.as_str(),);
                let reset = proxy.call::<_, _, ()>("ResetFailedUnit", &body);
                let _ = tokio::time::timeout(CALL_TIMEOUT, reset).await;
            }
            res
        })
    }
}

impl Drop for SystemdBus {
    fn drop(&mut self) {
        let _in_runtime = self.handle.enter();
        drop(self.proxy.take());
    }
}

async fn connect(address: Option<String>) -> zbus::Result<zbus::Proxy<'static>> {
    let builder = match address {
        Some(a) => zbus::conn::Builder::address(a.as_str())?,
        None => zbus::conn::Builder::system()?,
    };
    let conn = builder.method_timeout(CALL_TIMEOUT).build().await?;
    zbus::proxy::Builder::new(&conn)
        .destination(DESTINATION)?
        .path(PATH)?
        .interface(MANAGER)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// Whether `e` is systemd's D-Bus error `org.freedesktop.systemd1.<name>`.
fn is_error(e: &zbus::Error, name: &str) -> bool {
    matches!(e, zbus::Error::MethodError(n, _, _)
        if n.as_str().strip_prefix("org.freedesktop.systemd1.") == Some(name))
}

/// Makes the call returning a job and waits for that job's `JobRemoved`, listening
/// before the call so the signal can't be missed (go-systemd's job listener).
async fn with_job(
    proxy: &zbus::Proxy<'static>,
    unit: &str,
    method: &'static str,
    call: impl Future<Output = zbus::Result<OwnedObjectPath>>,
) -> Result<(), SystemdBusError> {
    let call_err = |source| SystemdBusError::Call {
        unit: unit.to_owned(),
        method,
        source: Box::new(source),
    };
    let timeout = |after| SystemdBusError::Timeout {
        unit: unit.to_owned(),
        method,
        after,
    };
    let mut removed = proxy.receive_signal("JobRemoved").await.map_err(call_err)?;
    let job = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| timeout(CALL_TIMEOUT))?
        .map_err(call_err)?;
    let wait = async {
        while let Some(msg) = removed.next().await {
            let Ok((_id, path, _unit, result)) = msg
                .body()
                .deserialize::<(u32, OwnedObjectPath, String, String)>()
            else {
                continue;
            };
            if path == job {
                return Some(result);
            }
        }
        None
    };
    match tokio::time::timeout(JOB_TIMEOUT, wait).await {
        Ok(Some(result)) if result == "done" => Ok(()),
        Ok(Some(result)) => Err(SystemdBusError::Job {
            unit: unit.to_owned(),
            method,
            result,
        }),
        Ok(None) => Err(call_err(zbus::Error::Failure(
            "the bus closed before the job finished".to_owned(),
        ))),
        Err(_) => Err(timeout(JOB_TIMEOUT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(props: &'a [Property], name: &str) -> Option<&'a PropertyValue> {
        props.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    #[test]
    fn guaranteed_half_cpu_64mi() {
        let rc = ResourceConfig {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory: Some(64 << 20),
            pids_limit: Some(-1),
            ..Default::default()
        };
        let v1 = resource_properties(CgroupVersion::V1, &rc, Some(252));
        assert_eq!(get(&v1, "CPUShares"), Some(&PropertyValue::U64(512)));
        assert_eq!(
            get(&v1, "MemoryLimit"),
            Some(&PropertyValue::U64(67_108_864))
        );
        assert_eq!(
            get(&v1, "CPUQuotaPerSecUSec"),
            Some(&PropertyValue::U64(500_000))
        );
        assert_eq!(
            get(&v1, "CPUQuotaPeriodUSec"),
            Some(&PropertyValue::U64(100_000))
        );
        assert_eq!(get(&v1, "TasksMax"), Some(&PropertyValue::U64(u64::MAX)));
        let v2 = resource_properties(CgroupVersion::V2, &rc, Some(241));
        assert_eq!(get(&v2, "CPUWeight"), Some(&PropertyValue::U64(20)));
        assert_eq!(get(&v2, "MemoryMax"), Some(&PropertyValue::U64(67_108_864)));
        assert_eq!(get(&v2, "CPUQuotaPeriodUSec"), None, "needs systemd 242");
        assert!(get(&v2, "CPUShares").is_none() && get(&v2, "MemoryLimit").is_none());
    }

    // libcontainer TestAddCPUQuota-style cases: rounding up to whole percents.
    #[test]
    fn cpu_quota_rounding() {
        let per_sec = |quota, period| {
            let mut out = Vec::new();
            add_cpu_quota(&mut out, quota, period, None);
            get(&out, "CPUQuotaPerSecUSec").cloned()
        };
        assert_eq!(per_sec(0, 0), None);
        assert_eq!(per_sec(-1, 100_000), Some(PropertyValue::U64(u64::MAX)));
        assert_eq!(per_sec(1_000, 100_000), Some(PropertyValue::U64(10_000)));
        assert_eq!(per_sec(1_001, 100_000), Some(PropertyValue::U64(20_000)));
        assert_eq!(per_sec(50_000, 0), Some(PropertyValue::U64(500_000)));
    }

    #[test]
    fn unified_files() {
        let mut rc = ResourceConfig::default();
        rc.unified.insert("memory.min".into(), "1048576".into());
        rc.unified.insert("memory.high".into(), "max".into());
        rc.unified.insert("io.weight".into(), "100".into());
        let p = resource_properties(CgroupVersion::V2, &rc, None);
        assert_eq!(get(&p, "MemoryMin"), Some(&PropertyValue::U64(1_048_576)));
        assert_eq!(get(&p, "MemoryHigh"), Some(&PropertyValue::U64(u64::MAX)));
        assert_eq!(p.len(), 2);
        assert!(resource_properties(CgroupVersion::V1, &rc, None).is_empty());
    }

    #[test]
    fn versions_and_parents() {
        assert_eq!(parse_systemd_version("252.22-1~deb12u1"), Some(252));
        assert_eq!(parse_systemd_version("\"v245.4-1.fc32\""), Some(245));
        assert_eq!(parse_systemd_version("x"), None);
        assert_eq!(parent_slice("kubepods.slice"), "-.slice");
        assert_eq!(parent_slice("kubepods-burstable.slice"), "kubepods.slice");
        assert_eq!(
            parent_slice("kubepods-burstable-pod1_2.slice"),
            "kubepods-burstable.slice"
        );
        let s = slice_properties(CgroupVersion::V2, "kubepods.slice", "-.slice");
        assert_eq!(
            get(&s, "Wants"),
            Some(&PropertyValue::StrList(vec!["-.slice".into()]))
        );
        assert_eq!(get(&s, "IOAccounting"), Some(&PropertyValue::Bool(true)));
        assert_eq!(
            get(&s, "DefaultDependencies"),
            Some(&PropertyValue::Bool(false))
        );
    }
}
