//! The resource flags: the cgroup hierarchy (`--cgroups-per-qos`, `--cgroup-driver`),
//! CPU quota, node allocatable (`--kube-reserved`, `--system-reserved`,
//! `--enforce-node-allocatable`), `--pod-max-pids`, `--max-pods` and the `MemoryQoS`
//! feature gate, with upstream's names, defaults and validation messages.

use std::path::Path;
use std::time::Duration;

use clap::Args;
use nodelet_cgroups::CgroupDriver;
use thiserror::Error;

use crate::cli::parse_duration;

/// The flags.
#[derive(Debug, Clone, Args)]
pub struct ResourceArgs {
    /// Create the QoS cgroup hierarchy (`kubepods`, `burstable`, `besteffort`) and a
    /// cgroup per pod.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cgroups_per_qos: bool,
    /// The cgroup driver: `cgroupfs`, or `systemd` (slices created through systemd's
    /// D-Bus API; needs systemd as init and containerd's runc with `SystemdCgroup`).
    #[arg(long, default_value = "cgroupfs")]
    pub cgroup_driver: String,
    /// Enforce CPU limits with CFS quota.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cpu_cfs_quota: bool,
    /// The CFS quota period.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub cpu_cfs_quota_period: Duration,
    /// What node allocatable is enforced on: `pods` (limit the `kubepods` cgroup) or
    /// `none`. Comma-separated, as upstream.
    #[arg(long, default_value = "pods")]
    pub enforce_node_allocatable: String,
    /// Resources reserved for Kubernetes system daemons
    /// (`cpu=100m,memory=100Mi,ephemeral-storage=1Gi,pid=1000`).
    #[arg(long, default_value = "")]
    pub kube_reserved: String,
    /// Resources reserved for the OS's daemons, in the same form.
    #[arg(long, default_value = "")]
    pub system_reserved: String,
    /// The maximum number of processes per pod; -1 for no limit.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub pod_max_pids: i64,
    /// The number of pods this node can run (its `pods` capacity).
    #[arg(long, default_value_t = 110)]
    pub max_pods: i64,
    /// Feature gates, `Name=bool` comma-separated. nodelet knows `MemoryQoS`.
    #[arg(long, default_value = "")]
    pub feature_gates: String,
}

/// Bad resource flags.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ResourceArgsError {
    /// An unknown cgroup driver.
    #[error(
        "invalid configuration: cgroupDriver (--cgroup-driver) {0:?}: must be \"cgroupfs\" or \"systemd\""
    )]
    Driver(String),
    /// The systemd driver on a host not booted with systemd.
    #[error("the systemd cgroup driver needs systemd: {} is missing", .0.display())]
    SystemdMissing(std::path::PathBuf),
    /// An unknown enforcement key.
    #[error(
        "invalid configuration: option {0:?} specified for enforceNodeAllocatable (--enforce-node-allocatable). Valid options are \"pods\", \"system-reserved\", \"kube-reserved\", or \"none\""
    )]
    EnforceKey(String),
    /// `none` with other keys.
    #[error(
        "invalid configuration: enforceNodeAllocatable (--enforce-node-allocatable) may not contain additional enforcements when \"none\" is specified"
    )]
    EnforceNoneWithOthers,
    /// Enforcing on the reserved cgroups, not built yet.
    #[error(
        "enforcing node allocatable on {0:?} is not supported yet; use --enforce-node-allocatable=pods or none"
    )]
    EnforceReserved(String),
    /// `--cgroups-per-qos=false` with `pods` enforcement.
    #[error(
        "invalid configuration: enforceNodeAllocatable (--enforce-node-allocatable) contains \"pods\" while cgroupsPerQOS (--cgroups-per-qos) is false"
    )]
    EnforceWithoutQos,
    /// A CFS period outside upstream's bounds.
    #[error(
        "invalid configuration: cpuCFSQuotaPeriod (--cpu-cfs-quota-period) {0:?} must be between 1ms and 1sec, inclusive"
    )]
    CfsPeriod(Duration),
    /// A pids limit below -1.
    #[error("invalid configuration: podPidsLimit (--pod-max-pids) {0} must be -1 or greater")]
    PidsLimit(i64),
    /// A bad feature gate entry.
    #[error("invalid feature gate {0:?}: {1}")]
    FeatureGate(String, &'static str),
}

/// Where systemd keeps its runtime state when it is init (`sd_booted`).
const RUN_SYSTEMD: &str = "/run/systemd/system";

/// The validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSettings {
    /// `--cgroup-driver`.
    pub cgroup_driver: CgroupDriver,
    /// `--cgroups-per-qos`.
    pub cgroups_per_qos: bool,
    /// `--cpu-cfs-quota`.
    pub cpu_cfs_quota: bool,
    /// The CFS period in microseconds.
    pub cpu_period_us: u64,
    /// Whether `pods` is enforced.
    pub enforce_pods: bool,
    /// `--pod-max-pids` (None: unlimited).
    pub pod_pids_limit: Option<i64>,
    /// `--max-pods`.
    pub max_pods: i64,
    /// The `MemoryQoS` feature gate.
    pub memory_qos: bool,
    /// `--kube-reserved`, unparsed (the allocatable code parses it).
    pub kube_reserved: String,
    /// `--system-reserved`, unparsed.
    pub system_reserved: String,
}

impl ResourceArgs {
    /// Validates the flags.
    ///
    /// # Errors
    /// The first bad flag, worded as upstream's configuration validation.
    pub fn settings(&self) -> Result<ResourceSettings, ResourceArgsError> {
        self.settings_with(Path::new(RUN_SYSTEMD))
    }

    /// [`ResourceArgs::settings`] with systemd's runtime directory at `run_systemd`.
    fn settings_with(&self, run_systemd: &Path) -> Result<ResourceSettings, ResourceArgsError> {
        let cgroup_driver = match self.cgroup_driver.as_str() {
            "cgroupfs" => CgroupDriver::Cgroupfs,
            // libcontainer's IsRunningSystemd (sd_booted): the directory exists.
            "systemd" if run_systemd.is_dir() => CgroupDriver::Systemd,
            "systemd" => return Err(ResourceArgsError::SystemdMissing(run_systemd.to_owned())),
            other => return Err(ResourceArgsError::Driver(other.to_owned())),
        };
        let keys: Vec<&str> = self
            .enforce_node_allocatable
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        for k in &keys {
            match *k {
                "pods" | "none" => {}
                "system-reserved" | "kube-reserved" => {
                    return Err(ResourceArgsError::EnforceReserved((*k).to_owned()));
                }
                other => return Err(ResourceArgsError::EnforceKey(other.to_owned())),
            }
        }
        if keys.contains(&"none") && keys.len() > 1 {
            return Err(ResourceArgsError::EnforceNoneWithOthers);
        }
        let enforce_pods = keys.contains(&"pods");
        if enforce_pods && !self.cgroups_per_qos {
            return Err(ResourceArgsError::EnforceWithoutQos);
        }
        let period = self.cpu_cfs_quota_period;
        if period < Duration::from_millis(1) || period > Duration::from_secs(1) {
            return Err(ResourceArgsError::CfsPeriod(period));
        }
        if self.pod_max_pids < -1 {
            return Err(ResourceArgsError::PidsLimit(self.pod_max_pids));
        }
        let mut memory_qos = false;
        for gate in self.feature_gates.split(',').map(str::trim) {
            if gate.is_empty() {
                continue;
            }
            let (name, value) = gate.split_once('=').ok_or_else(|| {
                ResourceArgsError::FeatureGate(gate.to_owned(), "missing bool value")
            })?;
            let value: bool = value.trim().parse().map_err(|_| {
                ResourceArgsError::FeatureGate(gate.to_owned(), "the value must be true or false")
            })?;
            match name.trim() {
                "MemoryQoS" => memory_qos = value,
                _ => {
                    return Err(ResourceArgsError::FeatureGate(
                        gate.to_owned(),
                        "unrecognized feature gate",
                    ));
                }
            }
        }
        Ok(ResourceSettings {
            cgroup_driver,
            cgroups_per_qos: self.cgroups_per_qos,
            cpu_cfs_quota: self.cpu_cfs_quota,
            cpu_period_us: u64::try_from(period.as_micros()).unwrap_or(100_000),
            enforce_pods,
            pod_pids_limit: (self.pod_max_pids >= 0).then_some(self.pod_max_pids),
            max_pods: self.max_pods,
            memory_qos,
            kube_reserved: self.kube_reserved.clone(),
            system_reserved: self.system_reserved.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        r: ResourceArgs,
    }

    fn parse(args: &[&str]) -> Result<ResourceSettings, ResourceArgsError> {
        let cli = Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .expect("flags parse");
        cli.r.settings()
    }

    #[test]
    fn defaults_are_upstreams() {
        let s = parse(&[]).expect("defaults");
        assert!(s.cgroups_per_qos && s.cpu_cfs_quota && s.enforce_pods && !s.memory_qos);
        assert_eq!(s.cpu_period_us, 100_000);
        assert_eq!(s.pod_pids_limit, None);
        assert_eq!(s.max_pods, 110);
    }

    #[test]
    fn bad_flags_get_upstreams_messages() {
        let err = |a: &[&str]| parse(a).expect_err("invalid").to_string();
        assert!(err(&["--cgroup-driver", "foo"]).contains("cgroupDriver"));
        assert!(err(&["--enforce-node-allocatable", "pods,bogus"]).contains("\"bogus\""));
        assert!(err(&["--enforce-node-allocatable", "none,pods"]).contains("\"none\""));
        assert!(err(&["--cgroups-per-qos", "false"]).contains("cgroupsPerQOS"));
        assert!(err(&["--cpu-cfs-quota-period", "2s"]).contains("cpuCFSQuotaPeriod"));
        assert!(err(&["--pod-max-pids", "-2"]).contains("podPidsLimit"));
        assert!(err(&["--feature-gates", "Foo=true"]).contains("unrecognized"));
        assert!(err(&["--feature-gates", "MemoryQoS"]).contains("missing bool"));
    }

    #[test]
    fn systemd_driver_needs_systemd() {
        let cli = Cli::try_parse_from(["t", "--cgroup-driver=systemd"]).expect("flags parse");
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("run/systemd/system");
        assert_eq!(
            cli.r
                .settings_with(&missing)
                .expect_err("no systemd")
                .to_string(),
            format!(
                "the systemd cgroup driver needs systemd: {} is missing",
                missing.display()
            )
        );
        std::fs::create_dir_all(&missing).expect("mkdir");
        let s = cli.r.settings_with(&missing).expect("systemd booted");
        assert_eq!(s.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(
            parse(&[]).expect("default").cgroup_driver,
            CgroupDriver::Cgroupfs
        );
    }

    #[test]
    fn settings_follow_the_flags() {
        let s = parse(&[
            "--cgroups-per-qos=false",
            "--enforce-node-allocatable=none",
            "--pod-max-pids=64",
            "--feature-gates=MemoryQoS=true",
            "--cpu-cfs-quota-period=50ms",
        ])
        .expect("valid");
        assert!(!s.cgroups_per_qos && !s.enforce_pods && s.memory_qos);
        assert_eq!(s.pod_pids_limit, Some(64));
        assert_eq!(s.cpu_period_us, 50_000);
    }
}
