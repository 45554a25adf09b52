//! The eviction manager as a pure state machine: each [`EvictionManager::synchronize`]
//! takes the time, the signal observations and the active pods, and says which pressure
//! conditions the node has, what node-level reclaim to try, and which pod (at most one)
//! to evict. The agent runs it every `--eviction-monitoring-interval` (and when a memory
//! notifier fires), runs the reclaim and the eviction, and reports the conditions.
//!
//! Ported from upstream `pkg/kubelet/eviction/eviction_manager.go` (`synchronize`,
//! `reclaimNodeLevelResources`, `evictPod`, `Admit`) and `helpers.go`
//! (`UpdateContainerFsThresholds`, `buildSignalToNodeReclaimFuncs`, `nodeConditions`,
//! `nodeConditionsLastObservedAt`, `nodeConditionsObservedSince`, `mergeThresholds`,
//! `byEvictionPriority`). Local-storage limit evictions (emptyDir `sizeLimit`,
//! ephemeral-storage limits) are not part of this step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::config::EvictionConfig;
use super::messages::{REASON, eviction_message, threshold_met_info};
use super::ranking::{PodUsage, Qos, Ranking};
use super::signals::Observations;
use super::thresholds::{
    PressureCondition, Resource, Signal, Threshold, grace_period_met, thresholds_met,
    thresholds_updated_stats,
};

/// The grace period a hard eviction gives the pod (upstream
/// `immediateEvictionGracePeriodSeconds`).
pub const IMMEDIATE_EVICTION_GRACE_PERIOD_SECONDS: i64 = 1;

/// Node-level reclaim to try before evicting pods for disk pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeReclaim {
    /// Delete every dead container (upstream `DeleteAllUnusedContainers`).
    ContainerGc,
    /// Delete every unused image (upstream `DeleteUnusedImages`).
    ImageGc,
}

/// A pod to evict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    /// The pod's UID.
    pub pod_uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The grace period to kill it with: 1s for a hard threshold; for a soft one
    /// `--eviction-max-pod-grace-period`, or the pod's shorter
    /// `terminationGracePeriodSeconds`.
    pub grace_period_override_seconds: i64,
    /// The status message (and `DisruptionTarget` message).
    pub message: String,
    /// The status reason, `Evicted`.
    pub reason: &'static str,
    /// The starved resource.
    pub resource: Resource,
    /// The signal whose threshold was met.
    pub signal: Signal,
    /// Annotations for the eviction event.
    pub annotations: BTreeMap<String, String>,
}

/// What one synchronisation decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncOutcome {
    /// Pressure conditions the node reports now (true within the transition period of
    /// the last time a threshold for them was met).
    pub node_conditions: BTreeSet<PressureCondition>,
    /// The signal the manager is reclaiming, when a threshold is met past its grace
    /// period with fresh stats.
    pub reclaiming: Option<Signal>,
    /// Node-level reclaim to run first. When non-empty, `evict` is `None`: run these,
    /// observe again, and call [`EvictionManager::after_node_reclaim`].
    pub reclaim: Vec<NodeReclaim>,
    /// The pod to evict, if any.
    pub evict: Option<Eviction>,
}

/// Why a pod was not admitted (upstream `PodAdmitResult` with `Admit: false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmitRejection {
    /// `Evicted`.
    pub reason: &'static str,
    /// `The node had condition: [MemoryPressure]. `
    pub message: String,
}

/// Upstream's `Admit` over a set of node conditions (see [`EvictionManager::admit`]),
/// for callers that hold the published conditions rather than the manager.
///
/// # Errors
/// The rejection, with upstream's reason and message.
pub fn admit(
    conditions: &BTreeSet<PressureCondition>,
    qos: Qos,
    is_critical: bool,
    tolerates_memory_pressure_taint: bool,
) -> Result<(), AdmitRejection> {
    if conditions.is_empty() || is_critical {
        return Ok(());
    }
    let only_memory =
        conditions.len() == 1 && conditions.contains(&PressureCondition::MemoryPressure);
    if only_memory && (qos != Qos::BestEffort || tolerates_memory_pressure_taint) {
        return Ok(());
    }
    let conditions: Vec<&str> = conditions.iter().map(|c| c.as_str()).collect();
    Err(AdmitRejection {
        reason: REASON,
        message: format!("The node had condition: [{}]. ", conditions.join(" ")),
    })
}

/// What an eviction decision waits on while node-level reclaim runs.
#[derive(Debug, Clone)]
struct PendingReclaim {
    threshold: usize,
    met: Vec<usize>,
    observations: Observations,
}

/// The eviction manager's state (upstream `managerImpl`).
#[derive(Debug, Clone)]
pub struct EvictionManager {
    config: EvictionConfig,
    /// The configured thresholds plus the containerfs copies.
    thresholds: Vec<Threshold>,
    dedicated_image_fs: bool,
    node_conditions: BTreeSet<PressureCondition>,
    node_conditions_last_observed_at: BTreeMap<PressureCondition, Instant>,
    thresholds_first_observed_at: BTreeMap<usize, Instant>,
    thresholds_met: Vec<usize>,
    last_observations: Observations,
    pending: Option<PendingReclaim>,
}

impl EvictionManager {
    /// A manager for `config`. `dedicated_image_fs` says whether the runtime's image
    /// filesystem is a different device from the kubelet's (upstream
    /// `HasDedicatedImageFs`); it picks the disk rankings, the node reclaim and what the
    /// `containerfs.*` thresholds copy.
    pub fn new(config: EvictionConfig, dedicated_image_fs: bool) -> EvictionManager {
        let thresholds = container_fs_thresholds(&config.thresholds, dedicated_image_fs);
        EvictionManager {
            config,
            thresholds,
            dedicated_image_fs,
            node_conditions: BTreeSet::new(),
            node_conditions_last_observed_at: BTreeMap::new(),
            thresholds_first_observed_at: BTreeMap::new(),
            thresholds_met: Vec::new(),
            last_observations: Observations::default(),
            pending: None,
        }
    }

    /// The thresholds in force (configured, plus `containerfs.*` copies).
    #[cfg(test)]
    pub fn thresholds(&self) -> &[Threshold] {
        &self.thresholds
    }

    /// The configuration.
    pub fn config(&self) -> &EvictionConfig {
        &self.config
    }

    /// The memory thresholds a kernel notifier should watch (upstream `Start`: every
    /// `memory.available` and `allocatableMemory.available` threshold).
    pub fn memory_thresholds(&self) -> impl Iterator<Item = &Threshold> {
        self.thresholds.iter().filter(|t| t.signal.is_memory())
    }

    /// Whether the node reports `MemoryPressure`.
    #[cfg(test)]
    pub fn is_under_memory_pressure(&self) -> bool {
        self.node_conditions
            .contains(&PressureCondition::MemoryPressure)
    }

    /// Pod admission under pressure (upstream `Admit`): everything is admitted without
    /// pressure, and critical pods always; under memory pressure alone, pods that
    /// aren't best-effort, and best-effort pods tolerating the memory-pressure taint;
    /// under any other pressure, nothing else.
    ///
    /// # Errors
    /// The rejection, with upstream's reason and message.
    #[cfg(test)]
    pub fn admit(
        &self,
        qos: Qos,
        is_critical: bool,
        tolerates_memory_pressure_taint: bool,
    ) -> Result<(), AdmitRejection> {
        admit(
            &self.node_conditions,
            qos,
            is_critical,
            tolerates_memory_pressure_taint,
        )
    }

    /// One synchronisation (upstream `synchronize`), at `now`, with this moment's
    /// `observations` and the active pods.
    pub fn synchronize(
        &mut self,
        now: Instant,
        observations: &Observations,
        pods: &[PodUsage],
    ) -> SyncOutcome {
        self.pending = None;
        if self.thresholds.is_empty() {
            return self.outcome();
        }
        // Thresholds met ignoring grace periods, plus those met before whose minimum
        // reclaim isn't satisfied yet.
        let mut met = thresholds_met(
            &self.thresholds,
            0..self.thresholds.len(),
            observations,
            false,
        );
        if !self.thresholds_met.is_empty() {
            let unresolved = thresholds_met(
                &self.thresholds,
                self.thresholds_met.iter().copied(),
                observations,
                true,
            );
            for i in unresolved {
                if !met.contains(&i) {
                    met.push(i);
                }
            }
        }
        let first_observed_at: BTreeMap<usize, Instant> = met
            .iter()
            .map(|&i| {
                let at = self
                    .thresholds_first_observed_at
                    .get(&i)
                    .copied()
                    .unwrap_or(now);
                (i, at)
            })
            .collect();

        // Conditions observed now, and those still within the transition period.
        let mut last_observed_at = self.node_conditions_last_observed_at.clone();
        for &i in &met {
            last_observed_at.insert(self.thresholds[i].signal.condition(), now);
        }
        let period = self.config.pressure_transition_period;
        let node_conditions: BTreeSet<PressureCondition> = last_observed_at
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) < period)
            .map(|(c, _)| *c)
            .collect();

        // Thresholds whose grace periods are met drive eviction.
        let grace_met: Vec<usize> = first_observed_at
            .iter()
            .filter(|(i, at)| grace_period_met(&self.thresholds[**i], **at, now))
            .map(|(i, _)| *i)
            .collect();

        self.node_conditions = node_conditions;
        self.thresholds_first_observed_at = first_observed_at;
        self.node_conditions_last_observed_at = last_observed_at;
        self.thresholds_met = grace_met.clone();
        let mut updated = thresholds_updated_stats(
            &self.thresholds,
            &grace_met,
            observations,
            &self.last_observations,
        );
        self.last_observations = observations.clone();

        if updated.is_empty() {
            return self.outcome();
        }
        // Memory first (upstream `byEvictionPriority`); every signal here has a resource.
        updated.sort_by_key(|&i| !self.thresholds[i].signal.is_memory());
        let threshold = updated[0];
        let signal = self.thresholds[threshold].signal;
        let reclaim = node_reclaim(signal, self.dedicated_image_fs);
        let mut out = self.outcome();
        out.reclaiming = Some(signal);
        if reclaim.is_empty() {
            out.evict = self.select(threshold, &updated, observations, pods);
        } else {
            out.reclaim = reclaim;
            self.pending = Some(PendingReclaim {
                threshold,
                met: updated,
                observations: observations.clone(),
            });
        }
        out
    }

    /// Finishes a synchronisation whose outcome asked for node-level reclaim (upstream
    /// `reclaimNodeLevelResources`), given observations made after the reclaim ran:
    /// when no threshold is met any more counting minimum reclaims, nothing is evicted;
    /// otherwise the pod to evict. `None` as well when there was no pending reclaim.
    pub fn after_node_reclaim(
        &mut self,
        observations: &Observations,
        pods: &[PodUsage],
    ) -> Option<Eviction> {
        let pending = self.pending.take()?;
        let still = thresholds_met(
            &self.thresholds,
            0..self.thresholds.len(),
            observations,
            true,
        );
        if still.is_empty() {
            return None;
        }
        self.select(pending.threshold, &pending.met, &pending.observations, pods)
    }

    fn outcome(&self) -> SyncOutcome {
        SyncOutcome {
            node_conditions: self.node_conditions.clone(),
            ..SyncOutcome::default()
        }
    }

    /// Ranks the pods for the threshold's signal and picks the first that isn't
    /// critical (upstream: at most one pod per synchronisation).
    fn select(
        &self,
        threshold: usize,
        met: &[usize],
        observations: &Observations,
        pods: &[PodUsage],
    ) -> Option<Eviction> {
        let t = &self.thresholds[threshold];
        let resource = t.signal.resource();
        let mut ranked: Vec<&PodUsage> = pods.iter().collect();
        Ranking::for_signal(t.signal, self.dedicated_image_fs).rank(&mut ranked);
        let info = threshold_met_info(resource, &self.thresholds, met, observations);
        let pod = ranked
            .into_iter()
            .find(|p| !p.is_critical(self.config.evict_static_pods))?;
        let grace = if t.is_hard() {
            IMMEDIATE_EVICTION_GRACE_PERIOD_SECONDS
        } else {
            let max = self.config.max_pod_grace_period_seconds;
            pod.termination_grace_period_seconds
                .map_or(max, |own| own.min(max))
        };
        let (message, annotations) = eviction_message(resource, pod, info);
        Some(Eviction {
            pod_uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            grace_period_override_seconds: grace,
            message,
            reason: REASON,
            resource,
            signal: t.signal,
            annotations,
        })
    }
}

/// The reclaim upstream's `buildSignalToNodeReclaimFuncs` tries for `signal`: without a
/// dedicated image filesystem, dead containers then unused images for every disk
/// signal; with one, those for imagefs/containerfs and nothing for nodefs (logs only
/// upstream). Memory and pids have none.
pub fn node_reclaim(signal: Signal, dedicated_image_fs: bool) -> Vec<NodeReclaim> {
    match signal {
        Signal::MemoryAvailable | Signal::AllocatableMemoryAvailable | Signal::PidAvailable => {
            Vec::new()
        }
        Signal::NodeFsAvailable | Signal::NodeFsInodesFree if dedicated_image_fs => Vec::new(),
        _ => vec![NodeReclaim::ContainerGc, NodeReclaim::ImageGc],
    }
}

/// Upstream `UpdateContainerFsThresholds` (no split container/image filesystems): any
/// configured `containerfs.*` threshold is replaced by a copy of the `nodefs.*` one
/// (single filesystem) or the `imagefs.*` one (dedicated image filesystem).
fn container_fs_thresholds(config: &[Threshold], dedicated_image_fs: bool) -> Vec<Threshold> {
    let mut out: Vec<Threshold> = config
        .iter()
        .filter(|t| {
            !matches!(
                t.signal,
                Signal::ContainerFsAvailable | Signal::ContainerFsInodesFree
            )
        })
        .cloned()
        .collect();
    let copies: Vec<Threshold> = out
        .iter()
        .filter_map(|t| {
            let signal = match (t.signal, dedicated_image_fs) {
                (Signal::NodeFsAvailable, false) | (Signal::ImageFsAvailable, true) => {
                    Signal::ContainerFsAvailable
                }
                (Signal::NodeFsInodesFree, false) | (Signal::ImageFsInodesFree, true) => {
                    Signal::ContainerFsInodesFree
                }
                _ => return None,
            };
            Some(Threshold {
                signal,
                ..t.clone()
            })
        })
        .collect();
    out.extend(copies);
    out
}

/// Upstream's `podCleanupTimeout`: after an eviction the loop waits for the pod to be
/// cleaned up, at most this long, instead of sleeping the monitoring interval.
pub const POD_CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
