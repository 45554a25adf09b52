//! The eviction flags (upstream kubelet's names and defaults) and their parsing into a
//! validated [`EvictionConfig`].
//!
//! Ported from upstream `pkg/kubelet/eviction/helpers.go` (`ParseThresholdConfig`,
//! `parseThresholdStatement`, `parseGracePeriods`, `parseMinimumReclaims`,
//! `addAllocatableThresholds`), `defaults_linux.go` (`DefaultEvictionHard`) and the
//! `mergeDefaultEvictionSettings` rule of `pkg/kubelet/apis/config/types.go`. Error
//! messages are upstream's.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

use super::thresholds::{Amount, Signal, Threshold, ThresholdValue};
use crate::cli::parse_duration;

/// Upstream's `DefaultEvictionHard` on Linux. It has no `pid.available` threshold.
pub const DEFAULT_EVICTION_HARD: [(&str, &str); 5] = [
    ("memory.available", "100Mi"),
    ("nodefs.available", "10%"),
    ("nodefs.inodesFree", "5%"),
    ("imagefs.available", "15%"),
    ("imagefs.inodesFree", "5%"),
];

/// Upstream's `evictionMonitoringPeriod` (a constant there, a flag here).
pub const DEFAULT_MONITORING_INTERVAL: Duration = Duration::from_secs(10);

/// The eviction flags, to be flattened into the agent's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct EvictionArgs {
    /// Hard eviction thresholds, `signal<quantity|percent` (comma separated or repeated),
    /// e.g. `memory.available<100Mi,nodefs.available<10%`. Default:
    /// memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%.
    /// Giving any replaces all the defaults unless `--merge-default-eviction-settings`.
    #[arg(long, value_delimiter = ',')]
    pub eviction_hard: Vec<String>,
    /// Soft eviction thresholds, `signal<quantity|percent`; each needs a grace period.
    #[arg(long, value_delimiter = ',')]
    pub eviction_soft: Vec<String>,
    /// Grace periods of the soft thresholds, `signal=duration` (e.g. `memory.available=1m30s`).
    #[arg(long, value_delimiter = ',')]
    pub eviction_soft_grace_period: Vec<String>,
    /// Longest grace period (seconds) given to pods evicted for a soft threshold; a
    /// pod's own shorter `terminationGracePeriodSeconds` wins.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub eviction_max_pod_grace_period: i32,
    /// Minimum reclaims, `signal=quantity|percent`: how far past a met threshold to
    /// reclaim before the pressure counts as relieved.
    #[arg(long, value_delimiter = ',')]
    pub eviction_minimum_reclaim: Vec<String>,
    /// How long a pressure condition stays true after its threshold was last met.
    #[arg(long, default_value = "5m0s", value_parser = parse_duration)]
    pub eviction_pressure_transition_period: Duration,
    /// How often the eviction manager synchronises (upstream's fixed 10s
    /// `evictionMonitoringPeriod`; no upstream flag).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub eviction_monitoring_interval: Duration,
    /// Also synchronise when the kernel reports a memory threshold crossed (memcg
    /// `cgroup.event_control` on v1, PSI on v2) instead of only polling. Default true
    /// here, beyond upstream's false: the notification costs nothing and shortens
    /// reaction time to memory pressure.
    #[arg(
        long,
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub kernel_memcg_notification: bool,
    /// Keep the default hard thresholds for signals `--eviction-hard` doesn't name
    /// (upstream's `mergeDefaultEvictionSettings` configuration field).
    #[arg(
        long,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = false,
        default_missing_value = "true"
    )]
    pub merge_default_eviction_settings: bool,
    /// Evict static pods too (nodelet only; upstream never evicts them), unless their
    /// priority class is system-node-critical or system-cluster-critical or their
    /// priority is at least 2000000000.
    #[arg(
        long,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = false,
        default_missing_value = "true"
    )]
    pub evict_static_pods: bool,
}

impl Default for EvictionArgs {
    fn default() -> Self {
        EvictionArgs {
            eviction_hard: Vec::new(),
            eviction_soft: Vec::new(),
            eviction_soft_grace_period: Vec::new(),
            eviction_max_pod_grace_period: 0,
            eviction_minimum_reclaim: Vec::new(),
            eviction_pressure_transition_period: Duration::from_secs(300),
            eviction_monitoring_interval: DEFAULT_MONITORING_INTERVAL,
            kernel_memcg_notification: true,
            merge_default_eviction_settings: false,
            evict_static_pods: false,
        }
    }
}

/// A validated eviction configuration (upstream `eviction.Config`).
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    /// Hard thresholds first, then soft ones, then `allocatableMemory.available` copies
    /// of the hard `memory.available` thresholds (when node allocatable is enforced).
    pub thresholds: Vec<Threshold>,
    /// `--eviction-pressure-transition-period`.
    pub pressure_transition_period: Duration,
    /// `--eviction-max-pod-grace-period`, seconds.
    pub max_pod_grace_period_seconds: i64,
    /// `--eviction-monitoring-interval`.
    pub monitoring_interval: Duration,
    /// `--kernel-memcg-notification`.
    pub kernel_memcg_notification: bool,
    /// `--evict-static-pods`.
    pub evict_static_pods: bool,
}

/// A bad eviction flag, worded as upstream's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvictionConfigError {
    /// A map entry without its separator.
    #[error(
        "invalid argument {pair:?} for \"{flag}\" flag: malformed pair, expect string{sep}string"
    )]
    MalformedPair {
        /// The flag.
        flag: &'static str,
        /// The entry.
        pair: String,
        /// `<` or `=`.
        sep: char,
    },
    /// A signal upstream doesn't know.
    #[error("unsupported eviction signal {0}")]
    UnsupportedSignal(String),
    /// A malformed quantity.
    #[error("{source}")]
    Quantity {
        /// The value given.
        value: String,
        /// Why it isn't a quantity.
        source: nodelet_manifests::quantity::QuantityError,
    },
    /// A malformed percentage (Go's `strconv.ParseFloat` message).
    #[error("strconv.ParseFloat: parsing {0:?}: invalid syntax")]
    Percentage(String),
    /// A negative percentage threshold.
    #[error("eviction percentage threshold {signal} must be >= 0%: {value}")]
    PercentageNegative {
        /// The signal.
        signal: Signal,
        /// The value given.
        value: String,
    },
    /// A percentage threshold above 100%.
    #[error("eviction percentage threshold {signal} must be <= 100%: {value}")]
    PercentageOver {
        /// The signal.
        signal: Signal,
        /// The value given.
        value: String,
    },
    /// A zero or negative quantity threshold.
    #[error("eviction threshold {signal} must be positive: {value}")]
    NotPositive {
        /// The signal.
        signal: Signal,
        /// The quantity, printed as upstream does.
        value: String,
    },
    /// A malformed duration (Go's `time.ParseDuration` message).
    #[error("time: invalid duration {0:?}")]
    Duration(String),
    /// A negative grace period.
    #[error("invalid eviction grace period specified: {0}, must be a positive value")]
    NegativeGracePeriod(String),
    /// A soft threshold without a grace period.
    #[error("grace period must be specified for the soft eviction threshold {0}")]
    MissingGracePeriod(Signal),
    /// A zero or negative percentage minimum reclaim.
    #[error("eviction percentage minimum reclaim {signal} must be positive: {value}")]
    MinReclaimPercentage {
        /// The signal.
        signal: Signal,
        /// The value given.
        value: String,
    },
    /// A negative quantity minimum reclaim.
    #[error("negative eviction minimum reclaim specified for {0}")]
    MinReclaimNegative(Signal),
}

impl EvictionArgs {
    /// Parses and validates the flags (upstream `ParseThresholdConfig`).
    /// `enforce_pods_allocatable` is true when node allocatable is enforced on the pods
    /// cgroup (upstream's `enforce-node-allocatable` containing `pods`, its default):
    /// each hard `memory.available` threshold is then copied to
    /// `allocatableMemory.available`.
    ///
    /// # Errors
    /// The first [`EvictionConfigError`] found.
    pub fn config(
        &self,
        enforce_pods_allocatable: bool,
    ) -> Result<EvictionConfig, EvictionConfigError> {
        let mut hard = parse_map("--eviction-hard", &self.eviction_hard, '<')?;
        if hard.is_empty() {
            hard = default_hard();
        } else if self.merge_default_eviction_settings {
            for (k, v) in default_hard() {
                hard.entry(k).or_insert(v);
            }
        }
        let soft = parse_map("--eviction-soft", &self.eviction_soft, '<')?;
        let grace = parse_map(
            "--eviction-soft-grace-period",
            &self.eviction_soft_grace_period,
            '=',
        )?;
        let reclaim = parse_map(
            "--eviction-minimum-reclaim",
            &self.eviction_minimum_reclaim,
            '=',
        )?;
        let thresholds =
            parse_threshold_config(enforce_pods_allocatable, &hard, &soft, &grace, &reclaim)?;
        Ok(EvictionConfig {
            thresholds,
            pressure_transition_period: self.eviction_pressure_transition_period,
            max_pod_grace_period_seconds: i64::from(self.eviction_max_pod_grace_period),
            monitoring_interval: self.eviction_monitoring_interval,
            kernel_memcg_notification: self.kernel_memcg_notification,
            evict_static_pods: self.evict_static_pods,
        })
    }
}

fn default_hard() -> BTreeMap<String, String> {
    DEFAULT_EVICTION_HARD
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `key<value` / `key=value` entries into a map; a later key wins, as in upstream's
/// flag maps. Keys and values are trimmed.
fn parse_map(
    flag: &'static str,
    entries: &[String],
    sep: char,
) -> Result<BTreeMap<String, String>, EvictionConfigError> {
    let mut map = BTreeMap::new();
    for entry in entries {
        if entry.trim().is_empty() {
            continue;
        }
        let (k, v) = entry
            .split_once(sep)
            .ok_or_else(|| EvictionConfigError::MalformedPair {
                flag,
                pair: entry.clone(),
                sep,
            })?;
        map.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(map)
}

/// Upstream `ParseThresholdConfig` over already-split maps (signal → value).
///
/// # Errors
/// The first [`EvictionConfigError`] found.
pub fn parse_threshold_config(
    enforce_pods_allocatable: bool,
    hard: &BTreeMap<String, String>,
    soft: &BTreeMap<String, String>,
    soft_grace_period: &BTreeMap<String, String>,
    minimum_reclaim: &BTreeMap<String, String>,
) -> Result<Vec<Threshold>, EvictionConfigError> {
    let mut results = parse_statements(hard)?;
    let mut softs = parse_statements(soft)?;
    let grace = parse_grace_periods(soft_grace_period)?;
    let reclaims = parse_minimum_reclaims(minimum_reclaim)?;
    for t in &mut softs {
        t.grace_period = *grace
            .get(&t.signal)
            .ok_or(EvictionConfigError::MissingGracePeriod(t.signal))?;
    }
    results.extend(softs);
    for t in &mut results {
        if let Some(r) = reclaims.get(&t.signal) {
            t.min_reclaim = Some(*r);
        }
    }
    if enforce_pods_allocatable {
        let extra: Vec<Threshold> = results
            .iter()
            .filter(|t| t.signal == Signal::MemoryAvailable && t.is_hard())
            .map(|t| Threshold {
                signal: Signal::AllocatableMemoryAvailable,
                value: t.value,
                grace_period: Duration::ZERO,
                min_reclaim: t.min_reclaim,
            })
            .collect();
        results.extend(extra);
    }
    Ok(results)
}

fn signal(name: &str) -> Result<Signal, EvictionConfigError> {
    Signal::parse(name).ok_or_else(|| EvictionConfigError::UnsupportedSignal(name.to_owned()))
}

fn parse_statements(map: &BTreeMap<String, String>) -> Result<Vec<Threshold>, EvictionConfigError> {
    let mut out = Vec::new();
    for (name, value) in map {
        if let Some(t) = parse_statement(signal(name)?, value)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// One threshold statement (upstream `parseThresholdStatement`); `0%` and `100%`
/// are ignored.
fn parse_statement(signal: Signal, value: &str) -> Result<Option<Threshold>, EvictionConfigError> {
    let value_of = if value.ends_with('%') {
        if value == "0%" || value == "100%" {
            return Ok(None);
        }
        let p = parse_percentage(value)?;
        if p < 0.0 {
            return Err(EvictionConfigError::PercentageNegative {
                signal,
                value: value.to_owned(),
            });
        }
        if p > 1.0 {
            return Err(EvictionConfigError::PercentageOver {
                signal,
                value: value.to_owned(),
            });
        }
        ThresholdValue::Percentage(p)
    } else {
        let a = parse_amount(value)?;
        if a.nanos() <= 0 {
            return Err(EvictionConfigError::NotPositive {
                signal,
                value: a.to_string(),
            });
        }
        ThresholdValue::Quantity(a)
    };
    Ok(Some(Threshold {
        signal,
        value: value_of,
        grace_period: Duration::ZERO,
        min_reclaim: None,
    }))
}

fn parse_amount(value: &str) -> Result<Amount, EvictionConfigError> {
    Amount::parse(value).map_err(|source| EvictionConfigError::Quantity {
        value: value.to_owned(),
        source,
    })
}

/// `10%` → 0.1 as upstream: parsed as a float32, then divided by 100 in float32.
fn parse_percentage(value: &str) -> Result<f32, EvictionConfigError> {
    let number = value.trim_end_matches('%');
    let v: f64 = number
        .parse()
        .map_err(|_| EvictionConfigError::Percentage(number.to_owned()))?;
    #[allow(clippy::cast_possible_truncation)]
    let v = v as f32;
    Ok(v / 100.0)
}

fn parse_grace_periods(
    map: &BTreeMap<String, String>,
) -> Result<BTreeMap<Signal, Duration>, EvictionConfigError> {
    let mut out = BTreeMap::new();
    for (name, value) in map {
        let s = signal(name)?;
        let d = match value.strip_prefix('-') {
            Some(rest) if parse_duration(rest).is_ok() && rest != "0" => {
                return Err(EvictionConfigError::NegativeGracePeriod(value.clone()));
            }
            _ => parse_duration(value).map_err(|_| EvictionConfigError::Duration(value.clone()))?,
        };
        out.insert(s, d);
    }
    Ok(out)
}

fn parse_minimum_reclaims(
    map: &BTreeMap<String, String>,
) -> Result<BTreeMap<Signal, ThresholdValue>, EvictionConfigError> {
    let mut out = BTreeMap::new();
    for (name, value) in map {
        let s = signal(name)?;
        let v = if value.ends_with('%') {
            let p = parse_percentage(value)?;
            if p <= 0.0 {
                return Err(EvictionConfigError::MinReclaimPercentage {
                    signal: s,
                    value: value.clone(),
                });
            }
            ThresholdValue::Percentage(p)
        } else {
            let a = parse_amount(value)?;
            if a.nanos() < 0 {
                return Err(EvictionConfigError::MinReclaimNegative(s));
            }
            ThresholdValue::Quantity(a)
        };
        out.insert(s, v);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
