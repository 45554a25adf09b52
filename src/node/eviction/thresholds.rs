//! Eviction signals, thresholds and the quantities they compare, with upstream's
//! threshold arithmetic.
//!
//! Ported from upstream `pkg/kubelet/eviction/api/types.go` (signals, `OpForSignal`,
//! `GetThresholdQuantity`) and `pkg/kubelet/eviction/helpers.go` (`signalToResource`,
//! `signalToNodeCondition`, `thresholdsMet`, `thresholdsFirstObservedAt`,
//! `thresholdsMetGracePeriod`, `thresholdsUpdatedStats`, `byEvictionPriority`). The only
//! operator upstream has is `LessThan`, implied by every signal, so it isn't stored.

use std::fmt;
use std::time::{Duration, Instant};

use nodelet_manifests::quantity::{Quantity, QuantityError};

use super::signals::Observations;

/// Nano-units per unit, as `Quantity` counts them.
const NANOS: i128 = 1_000_000_000;

/// A signal an eviction threshold watches (upstream `evictionapi.Signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// `memory.available`: node memory capacity − working set.
    MemoryAvailable,
    /// `allocatableMemory.available`: allocatable memory − the pods' working set.
    AllocatableMemoryAvailable,
    /// `nodefs.available`: bytes free on the kubelet's filesystem.
    NodeFsAvailable,
    /// `nodefs.inodesFree`
    NodeFsInodesFree,
    /// `imagefs.available`: bytes free on the runtime's image filesystem.
    ImageFsAvailable,
    /// `imagefs.inodesFree`
    ImageFsInodesFree,
    /// `containerfs.available`: the writable layers' filesystem (nodefs or imagefs).
    ContainerFsAvailable,
    /// `containerfs.inodesFree`
    ContainerFsInodesFree,
    /// `pid.available`: `pid_max` − running processes.
    PidAvailable,
}

impl Signal {
    /// Every signal upstream can reclaim (`signalToResource`'s keys).
    pub const ALL: [Signal; 9] = [
        Signal::MemoryAvailable,
        Signal::AllocatableMemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::ContainerFsAvailable,
        Signal::ContainerFsInodesFree,
        Signal::PidAvailable,
    ];

    /// The signal's name in flags and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::AllocatableMemoryAvailable => "allocatableMemory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::ContainerFsAvailable => "containerfs.available",
            Signal::ContainerFsInodesFree => "containerfs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    /// The signal named `name` (upstream `validSignal`; `swap.available` has an
    /// operator upstream but no resource, so it is refused there too).
    pub fn parse(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The resource evictions for this signal reclaim (`signalToResource`).
    pub fn resource(self) -> Resource {
        match self {
            Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable => Resource::Memory,
            Signal::NodeFsAvailable | Signal::ImageFsAvailable | Signal::ContainerFsAvailable => {
                Resource::EphemeralStorage
            }
            Signal::NodeFsInodesFree
            | Signal::ImageFsInodesFree
            | Signal::ContainerFsInodesFree => Resource::Inodes,
            Signal::PidAvailable => Resource::Pids,
        }
    }

    /// The node condition a met threshold on this signal reports (`signalToNodeCondition`).
    pub fn condition(self) -> PressureCondition {
        match self.resource() {
            Resource::Memory => PressureCondition::MemoryPressure,
            Resource::EphemeralStorage | Resource::Inodes => PressureCondition::DiskPressure,
            Resource::Pids => PressureCondition::PidPressure,
        }
    }

    /// Whether the signal is a memory signal (ranked first for reclaim).
    pub fn is_memory(self) -> bool {
        self.resource() == Resource::Memory
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource the eviction manager reclaims (upstream's `v1.ResourceName`s plus the
/// module-internal `inodes` and `pids`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `memory`
    Memory,
    /// `ephemeral-storage`
    EphemeralStorage,
    /// `inodes`
    Inodes,
    /// `pids`
    Pids,
}

impl Resource {
    /// The name upstream prints in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::EphemeralStorage => "ephemeral-storage",
            Resource::Inodes => "inodes",
            Resource::Pids => "pids",
        }
    }

    /// Byte-sized resources format as binary SI (`50Mi`), counts as decimal SI.
    #[cfg(test)]
    fn format(self) -> Format {
        match self {
            Resource::Memory | Resource::EphemeralStorage => Format::BinarySi,
            Resource::Inodes | Resource::Pids => Format::DecimalSi,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node pressure condition the eviction manager reports.
// The variants are upstream's condition type names, `Pressure` and all.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PressureCondition {
    /// `MemoryPressure`
    MemoryPressure,
    /// `DiskPressure`
    DiskPressure,
    /// `PIDPressure`
    PidPressure,
}

impl PressureCondition {
    /// All three, in the order upstream's node status lists them.
    pub const ALL: [PressureCondition; 3] = [
        PressureCondition::MemoryPressure,
        PressureCondition::DiskPressure,
        PressureCondition::PidPressure,
    ];

    /// The condition type.
    pub fn as_str(self) -> &'static str {
        match self {
            PressureCondition::MemoryPressure => "MemoryPressure",
            PressureCondition::DiskPressure => "DiskPressure",
            PressureCondition::PidPressure => "PIDPressure",
        }
    }
}

impl fmt::Display for PressureCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How upstream's `resource.Quantity` prints a value: the format it was parsed in
/// (or created with), canonicalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Ki`, `Mi`, ... suffixes.
    BinarySi,
    /// `k`, `M`, ... suffixes (and no suffix).
    DecimalSi,
    /// `e3`-style exponents.
    DecimalExponent,
}

/// A quantity that prints the way upstream's `Quantity.String()` does (`100Mi` stays
/// `100Mi`, 52428800 bytes created as binary SI print `50Mi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    /// The value.
    pub quantity: Quantity,
    /// The format it prints in.
    pub format: Format,
}

impl Amount {
    /// Parses a quantity, remembering its format as upstream does.
    ///
    /// # Errors
    /// The quantity grammar's error.
    pub fn parse(text: &str) -> Result<Amount, QuantityError> {
        let quantity = Quantity::parse(text)?;
        let t = text.trim();
        let format = if t.ends_with('i') {
            Format::BinarySi
        } else if t.contains(['e', 'E']) {
            Format::DecimalExponent
        } else {
            Format::DecimalSi
        };
        Ok(Amount { quantity, format })
    }

    /// An integer amount (upstream `resource.NewQuantity(v, format)`).
    pub fn int(value: i128, format: Format) -> Amount {
        Amount {
            quantity: Quantity::from_nanos(value.saturating_mul(NANOS)),
            format,
        }
    }

    /// The value in nano-units.
    pub fn nanos(self) -> i128 {
        self.quantity.nanos()
    }

    /// The integer value, rounded up (upstream `Quantity.Value()`).
    pub fn value(self) -> i128 {
        self.quantity.nanos().div_euclid(NANOS)
            + i128::from(self.quantity.nanos().rem_euclid(NANOS) != 0)
    }
}

impl fmt::Display for Amount {
    /// Upstream's canonical form (apimachinery `CanonicalizeBytes`): binary SI uses the
    /// largest power-of-1024 suffix that divides the value exactly, and falls back to
    /// decimal SI for values under 1024 in magnitude or with a fraction; decimal SI uses
    /// the largest power-of-1000 suffix that keeps the mantissa an integer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.quantity.nanos();
        if nanos % NANOS != 0 {
            return write!(f, "{}", self.quantity);
        }
        let value = nanos / NANOS;
        let sign = if value < 0 { "-" } else { "" };
        let mut mag = value.unsigned_abs();
        if self.format == Format::BinarySi && mag >= 1024 {
            const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
            let mut exp = 0;
            while exp < 6 && mag.is_multiple_of(1024) {
                mag /= 1024;
                exp += 1;
            }
            return write!(f, "{sign}{mag}{}", SUFFIXES[exp]);
        }
        let mut exp = 0;
        while exp < 18 && mag != 0 && mag.is_multiple_of(1000) {
            mag /= 1000;
            exp += 3;
        }
        if self.format == Format::DecimalExponent {
            return if exp == 0 {
                write!(f, "{sign}{mag}")
            } else {
                write!(f, "{sign}{mag}e{exp}")
            };
        }
        const SUFFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
        write!(f, "{sign}{mag}{}", SUFFIXES[exp / 3])
    }
}

/// A threshold's value: a quantity or a fraction of capacity (upstream
/// `ThresholdValue`; the percentage is a `float32` fraction there too).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    /// An absolute quantity.
    Quantity(Amount),
    /// A fraction of the signal's capacity (`0.1` for `10%`).
    Percentage(f32),
}

impl ThresholdValue {
    /// The quantity this value stands for against `capacity` (upstream
    /// `GetThresholdQuantity`: percentages truncate `capacity × fraction` to an integer
    /// and print as binary SI).
    pub fn quantity(self, capacity: i64) -> Amount {
        match self {
            ThresholdValue::Quantity(a) => a,
            ThresholdValue::Percentage(p) => {
                // Upstream: int64(float64(capacity.Value()) * float64(percentage)).
                #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
                let v = (capacity as f64 * f64::from(p)) as i64;
                Amount::int(i128::from(v), Format::BinarySi)
            }
        }
    }
}

impl fmt::Display for ThresholdValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThresholdValue::Quantity(a) => write!(f, "{a}"),
            ThresholdValue::Percentage(p) => {
                // The float32 fraction isn't exact (0.15 → 15.000001%): print 4 decimals.
                let pct = (f64::from(*p) * 100.0 * 10_000.0).round() / 10_000.0;
                write!(f, "{pct}%")
            }
        }
    }
}

/// One eviction threshold (upstream `evictionapi.Threshold`; operator `LessThan`).
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// What is measured.
    pub signal: Signal,
    /// Met when the signal's available amount is below this.
    pub value: ThresholdValue,
    /// How long it must be met before evicting; zero for a hard threshold.
    pub grace_period: Duration,
    /// How much beyond the threshold to reclaim once it was met.
    pub min_reclaim: Option<ThresholdValue>,
}

impl Threshold {
    /// A hard threshold (upstream `isHardEvictionThreshold`: no grace period).
    pub fn is_hard(&self) -> bool {
        self.grace_period.is_zero()
    }

    /// The threshold as an integer amount against `capacity` (bytes for memory): what
    /// the v1 memory notifier subtracts from capacity
    /// (`nodelet_cgroups::notify::usage_threshold`).
    pub fn amount_against(&self, capacity: u64) -> u64 {
        let cap = i64::try_from(capacity).unwrap_or(i64::MAX);
        u64::try_from(self.value.quantity(cap).value().max(0)).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Threshold {
    /// `memory.available<100Mi` (with `, grace 1m30s` for soft thresholds).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}<{}", self.signal, self.value)?;
        if !self.is_hard() {
            write!(f, " (grace period {:?})", self.grace_period)?;
        }
        Ok(())
    }
}

/// The indices of `thresholds` met by `observations`, ignoring grace periods
/// (upstream `thresholdsMet`). With `enforce_min_reclaim`, a threshold stays met until
/// the available amount is above threshold + minimum reclaim. A threshold whose signal
/// has no observation is not met.
pub fn thresholds_met(
    thresholds: &[Threshold],
    candidates: impl IntoIterator<Item = usize>,
    observations: &Observations,
    enforce_min_reclaim: bool,
) -> Vec<usize> {
    candidates
        .into_iter()
        .filter(|&i| {
            let t = &thresholds[i];
            let Some(observed) = observations.get(t.signal) else {
                return false;
            };
            let mut quantity = t.value.quantity(observed.capacity).nanos();
            if enforce_min_reclaim && let Some(min) = t.min_reclaim {
                quantity += min.quantity(observed.capacity).nanos();
            }
            quantity > i128::from(observed.available) * NANOS
        })
        .collect()
}

/// The thresholds among `met` whose observation is newer than the last sync's
/// (upstream `thresholdsUpdatedStats`): an observation without a time always counts.
pub fn thresholds_updated_stats(
    thresholds: &[Threshold],
    met: &[usize],
    observations: &Observations,
    last: &Observations,
) -> Vec<usize> {
    met.iter()
        .copied()
        .filter(|&i| {
            let signal = thresholds[i].signal;
            let Some(observed) = observations.get(signal) else {
                return false;
            };
            match (last.get(signal), observed.time) {
                (None, _) | (_, None) => true,
                (Some(prev), Some(t)) => prev.time.is_none_or(|p| t > p),
            }
        })
        .collect()
}

/// Whether `now − first_observed` has reached the threshold's grace period (upstream
/// `thresholdsMetGracePeriod`).
pub fn grace_period_met(threshold: &Threshold, first_observed: Instant, now: Instant) -> bool {
    now.saturating_duration_since(first_observed) >= threshold.grace_period
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(s: &str) -> Amount {
        Amount::parse(s).expect("quantity")
    }

    #[test]
    fn amounts_print_as_upstream() {
        let cases = [
            (amount("100Mi"), "100Mi"),
            (amount("1024Mi"), "1Gi"),
            (amount("1Gi"), "1Gi"),
            (amount("500M"), "500M"),
            (amount("1500"), "1500"),
            (amount("0"), "0"),
            (Amount::int(52_428_800, Format::BinarySi), "50Mi"),
            (Amount::int(-52_428_800, Format::BinarySi), "-50Mi"),
            (Amount::int(1000, Format::BinarySi), "1k"),
            (Amount::int(1536, Format::BinarySi), "1536"),
            (Amount::int(314_572_800, Format::BinarySi), "300Mi"),
            (Amount::int(0, Format::BinarySi), "0"),
            (Amount::int(5000, Format::DecimalSi), "5k"),
            (amount("1e3"), "1e3"),
        ];
        for (a, want) in cases {
            assert_eq!(a.to_string(), want, "{a:?}");
        }
    }

    #[test]
    fn percentage_quantity_truncates_like_go() {
        // float32(0.1) is slightly above 0.1: 1000 × 0.10000000149 = 100.0000001 → 100.
        let v = ThresholdValue::Percentage(10.0_f32 / 100.0);
        assert_eq!(v.quantity(1000).to_string(), "100");
        // float32(0.05) is 0.0500000007: 10Gi × that truncates to 536870920, not 512Mi,
        // in Go too.
        assert_eq!(
            ThresholdValue::Percentage(0.05).quantity(10 * 1024 * 1024 * 1024),
            Amount::int(536_870_920, Format::BinarySi)
        );
        assert_eq!(ThresholdValue::Percentage(0.15).to_string(), "15%");
        let t = Threshold {
            signal: Signal::MemoryAvailable,
            value: ThresholdValue::Quantity(amount("100Mi")),
            grace_period: Duration::ZERO,
            min_reclaim: None,
        };
        assert_eq!(t.amount_against(1 << 30), 100 * 1024 * 1024);
        let t = Threshold {
            value: ThresholdValue::Percentage(0.5),
            ..t
        };
        assert_eq!(t.amount_against(1000), 500);
    }

    #[test]
    fn signals_map_to_resources_and_conditions() {
        assert_eq!(
            Signal::parse("nodefs.inodesFree"),
            Some(Signal::NodeFsInodesFree)
        );
        assert_eq!(Signal::parse("swap.available"), None);
        assert_eq!(Signal::parse("memory.Available"), None);
        assert_eq!(
            Signal::PidAvailable.condition(),
            PressureCondition::PidPressure
        );
        assert_eq!(
            Signal::ContainerFsInodesFree.condition(),
            PressureCondition::DiskPressure
        );
        assert_eq!(
            Signal::AllocatableMemoryAvailable.resource().as_str(),
            "memory"
        );
        assert_eq!(
            Signal::ImageFsAvailable.resource().as_str(),
            "ephemeral-storage"
        );
        assert_eq!(Resource::Pids.format(), Format::DecimalSi);
    }
}
