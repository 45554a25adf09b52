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
mod tests {
    use super::*;
    use crate::node::eviction::config::EvictionArgs;
    use crate::node::eviction::ranking::tests::{MI, pod};
    use crate::node::eviction::signals::{FsStats, MemoryStats, NodeStats, Observation, PidStats};

    const GI: u64 = 1024 * MI;

    fn config(hard: &[&str], soft: &[&str], grace: &[&str], reclaim: &[&str]) -> EvictionConfig {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect();
        EvictionArgs {
            eviction_hard: v(hard),
            eviction_soft: v(soft),
            eviction_soft_grace_period: v(grace),
            eviction_minimum_reclaim: v(reclaim),
            eviction_max_pod_grace_period: 5,
            ..EvictionArgs::default()
        }
        .config(false)
        .expect("config")
    }

    fn memory(available: u64, time: Option<Instant>) -> Observations {
        Observations::from_stats(&NodeStats {
            time,
            memory: Some(MemoryStats {
                capacity_bytes: 2 * GI,
                working_set_bytes: 2 * GI - available,
            }),
            ..NodeStats::default()
        })
    }

    fn disk(available: u64) -> Observations {
        let fs = FsStats {
            capacity_bytes: 16 * GI,
            available_bytes: available,
            inodes: Some(1_000_000),
            inodes_free: Some(900_000),
        };
        Observations::from_stats(&NodeStats {
            node_fs: Some(fs),
            image_fs: Some(fs),
            ..NodeStats::default()
        })
    }

    fn pods() -> Vec<PodUsage> {
        vec![
            pod("guaranteed-low", 0, 1000, Some(900)),
            pod("burstable-over", 0, 100, Some(400)),
            pod("best-effort", 0, 0, Some(300)),
        ]
    }

    /// upstream eviction_manager_test.go `TestMemoryPressure`: a hard threshold evicts
    /// the best-ranked pod immediately with grace 1 and reports MemoryPressure until the
    /// transition period passes.
    #[test]
    fn memory_pressure_hard() {
        let mut m = EvictionManager::new(config(&["memory.available<1Gi"], &[], &[], &[]), false);
        let t0 = Instant::now();
        let pods = pods();
        let out = m.synchronize(t0, &memory(2 * GI, None), &pods);
        assert!(out.node_conditions.is_empty() && out.evict.is_none());
        assert!(m.admit(Qos::BestEffort, false, false).is_ok());

        let out = m.synchronize(t0 + Duration::from_secs(10), &memory(500 * MI, None), &pods);
        assert_eq!(
            out.node_conditions,
            BTreeSet::from([PressureCondition::MemoryPressure])
        );
        assert!(out.reclaim.is_empty());
        assert_eq!(out.reclaiming, Some(Signal::MemoryAvailable));
        let e = out.evict.expect("evicts");
        // burstable-over exceeds its request by 300Mi, best-effort by 300Mi too; the
        // stable order keeps burstable-over (listed first) ahead.
        assert_eq!(e.name, "burstable-over");
        assert_eq!(e.grace_period_override_seconds, 1);
        assert_eq!(e.reason, "Evicted");
        assert_eq!(
            e.message,
            "The node was low on resource: memory. Threshold quantity: 1Gi, available: 500Mi. Container burstable-over was using 400Mi, request is 100Mi, has larger consumption of memory. "
        );
        // Best-effort pods are refused under memory pressure unless they tolerate it.
        let rejected = m
            .admit(Qos::BestEffort, false, false)
            .expect_err("rejected");
        assert_eq!(
            rejected.message,
            "The node had condition: [MemoryPressure]. "
        );
        assert!(m.admit(Qos::BestEffort, false, true).is_ok());
        assert!(m.admit(Qos::Burstable, false, false).is_ok());
        assert!(m.admit(Qos::BestEffort, true, false).is_ok());

        // Relieved: no eviction, but the condition stays for the transition period.
        let out = m.synchronize(t0 + Duration::from_secs(20), &memory(2 * GI, None), &pods);
        assert!(out.evict.is_none());
        assert!(m.is_under_memory_pressure());
        let out = m.synchronize(
            t0 + Duration::from_secs(10 + 300),
            &memory(2 * GI, None),
            &pods,
        );
        assert!(out.node_conditions.is_empty());
        assert!(!m.is_under_memory_pressure());
    }

    /// upstream `TestMemoryPressure`'s soft part: the condition is reported at once,
    /// the eviction only after the grace period, with min(max-pod-grace, pod's grace).
    #[test]
    fn soft_threshold_waits_for_grace_period() {
        let mut m = EvictionManager::new(
            config(
                &["memory.available<100Mi"],
                &["memory.available<1Gi"],
                &["memory.available=2m"],
                &[],
            ),
            false,
        );
        let t0 = Instant::now();
        let mut pods = pods();
        let out = m.synchronize(t0, &memory(500 * MI, None), &pods);
        assert_eq!(
            out.node_conditions,
            BTreeSet::from([PressureCondition::MemoryPressure])
        );
        assert!(out.evict.is_none());
        let out = m.synchronize(t0 + Duration::from_secs(60), &memory(500 * MI, None), &pods);
        assert!(out.evict.is_none());
        let out = m.synchronize(
            t0 + Duration::from_secs(120),
            &memory(500 * MI, None),
            &pods,
        );
        let e = out.evict.expect("evicts after the grace period");
        assert_eq!(e.grace_period_override_seconds, 5);
        // The pod's own shorter grace period wins.
        pods[1].termination_grace_period_seconds = Some(2);
        let out = m.synchronize(
            t0 + Duration::from_secs(130),
            &memory(500 * MI, None),
            &pods,
        );
        assert_eq!(out.evict.expect("evicts").grace_period_override_seconds, 2);
        // Relieved before the grace period: the clock restarts.
        let out = m.synchronize(t0 + Duration::from_secs(140), &memory(2 * GI, None), &pods);
        assert!(out.evict.is_none());
        let out = m.synchronize(
            t0 + Duration::from_secs(150),
            &memory(500 * MI, None),
            &pods,
        );
        assert!(out.evict.is_none());
    }

    /// upstream `TestMinReclaim`: once met, a threshold stays met until available is
    /// above threshold + minimum reclaim.
    #[test]
    fn minimum_reclaim_keeps_threshold_met() {
        let mut m = EvictionManager::new(
            config(
                &["memory.available<1Gi"],
                &[],
                &[],
                &["memory.available=500Mi"],
            ),
            false,
        );
        let t0 = Instant::now();
        let pods = pods();
        assert!(
            m.synchronize(t0, &memory(500 * MI, None), &pods)
                .evict
                .is_some()
        );
        // 1.2Gi available: above the threshold, below threshold + 500Mi.
        let out = m.synchronize(
            t0 + Duration::from_secs(10),
            &memory(1228 * MI, None),
            &pods,
        );
        assert!(out.evict.is_some());
        // 2Gi: reclaimed enough.
        let out = m.synchronize(t0 + Duration::from_secs(20), &memory(2 * GI, None), &pods);
        assert!(out.evict.is_none());
        let out = m.synchronize(
            t0 + Duration::from_secs(30),
            &memory(1228 * MI, None),
            &pods,
        );
        assert!(out.evict.is_none(), "not met again without min reclaim");
    }

    /// upstream `TestNodeReclaimFuncs`: disk pressure first asks for container and image
    /// GC; eviction only if that didn't reclaim enough.
    #[test]
    fn disk_pressure_reclaims_node_first() {
        let mut m = EvictionManager::new(
            config(
                &["nodefs.available<1Gi"],
                &[],
                &[],
                &["nodefs.available=500Mi"],
            ),
            false,
        );
        assert_eq!(
            m.thresholds()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["nodefs.available<1Gi", "containerfs.available<1Gi"]
        );
        let t0 = Instant::now();
        let pods = pods();
        let out = m.synchronize(t0, &disk(512 * MI), &pods);
        assert_eq!(
            out.node_conditions,
            BTreeSet::from([PressureCondition::DiskPressure])
        );
        assert_eq!(
            out.reclaim,
            [NodeReclaim::ContainerGc, NodeReclaim::ImageGc]
        );
        assert!(out.evict.is_none());
        // GC freed enough (past the minimum reclaim): nobody is evicted.
        assert!(m.after_node_reclaim(&disk(2 * GI), &pods).is_none());
        assert!(
            m.after_node_reclaim(&disk(2 * GI), &pods).is_none(),
            "once only"
        );
        // GC freed too little: a pod goes.
        let out = m.synchronize(t0 + Duration::from_secs(10), &disk(512 * MI), &pods);
        assert!(!out.reclaim.is_empty());
        let e = m
            .after_node_reclaim(&disk(1200 * MI), &pods)
            .expect("evicts");
        assert_eq!(e.resource, Resource::EphemeralStorage);
        assert!(e.message.starts_with(
            "The node was low on resource: ephemeral-storage. Threshold quantity: 1Gi, available: 512Mi. "
        ));
        // With a dedicated image filesystem nodefs pressure has no node reclaim.
        let mut m = EvictionManager::new(config(&["nodefs.available<1Gi"], &[], &[], &[]), true);
        let out = m.synchronize(t0, &disk(512 * MI), &pods);
        assert!(out.reclaim.is_empty());
        assert!(out.evict.is_some());
    }

    /// upstream `TestCriticalPodsAreNotEvicted` and the nodelet `--evict-static-pods`.
    #[test]
    fn critical_and_static_pods() {
        let t0 = Instant::now();
        let mut static_pod = pod("static", 0, 0, Some(900));
        static_pod.is_static = true;
        let mut critical = pod("critical", 2_000_000_000, 0, Some(900));
        critical.priority_class_name = Some("system-cluster-critical".into());
        let pods = vec![static_pod.clone(), critical.clone()];
        let mut m = EvictionManager::new(config(&["memory.available<1Gi"], &[], &[], &[]), false);
        let out = m.synchronize(t0, &memory(500 * MI, None), &pods);
        assert!(out.evict.is_none(), "neither is evictable upstream");
        assert!(m.is_under_memory_pressure());

        let mut cfg = config(&["memory.available<1Gi"], &[], &[], &[]);
        cfg.evict_static_pods = true;
        let mut m = EvictionManager::new(cfg, false);
        let out = m.synchronize(t0, &memory(500 * MI, None), &pods);
        assert_eq!(out.evict.expect("static evicted").name, "static");
        let mut node_critical = static_pod;
        node_critical.priority_class_name = Some("system-node-critical".into());
        let out = m.synchronize(
            t0 + Duration::from_secs(10),
            &memory(500 * MI, None),
            &[node_critical, critical],
        );
        assert!(out.evict.is_none());
    }

    /// upstream `TestPIDPressure`.
    #[test]
    fn pid_pressure() {
        let mut m = EvictionManager::new(config(&["pid.available<10%"], &[], &[], &[]), false);
        let obs = |running| {
            Observations::from_stats(&NodeStats {
                pids: Some(PidStats { max: 1000, running }),
                ..NodeStats::default()
            })
        };
        let mut a = pod("few", 0, 0, Some(1));
        let mut b = pod("many", 0, 0, Some(1));
        a.stats.as_mut().expect("stats").process_count = Some(5);
        b.stats.as_mut().expect("stats").process_count = Some(800);
        let pods = vec![a, b];
        let t0 = Instant::now();
        assert!(m.synchronize(t0, &obs(850), &pods).evict.is_none());
        let out = m.synchronize(t0 + Duration::from_secs(1), &obs(950), &pods);
        assert_eq!(
            out.node_conditions,
            BTreeSet::from([PressureCondition::PidPressure])
        );
        let e = out.evict.expect("evicts");
        assert_eq!(e.name, "many");
        assert_eq!(
            e.message,
            "The node was low on resource: pids. Threshold quantity: 100, available: 50. "
        );
    }

    /// upstream `TestUpdateMemcgThreshold`'s companion `thresholdsUpdatedStats`: stale
    /// stats (same time as last sync) don't evict a second pod.
    #[test]
    fn stale_stats_do_not_evict_again() {
        let mut m = EvictionManager::new(config(&["memory.available<1Gi"], &[], &[], &[]), false);
        let t0 = Instant::now();
        let pods = pods();
        let stamp = Some(t0);
        assert!(
            m.synchronize(t0, &memory(500 * MI, stamp), &pods)
                .evict
                .is_some()
        );
        let out = m.synchronize(
            t0 + Duration::from_secs(10),
            &memory(500 * MI, stamp),
            &pods,
        );
        assert!(out.evict.is_none());
        assert!(
            out.node_conditions
                .contains(&PressureCondition::MemoryPressure)
        );
        let later = Some(t0 + Duration::from_secs(10));
        let out = m.synchronize(
            t0 + Duration::from_secs(20),
            &memory(500 * MI, later),
            &pods,
        );
        assert!(out.evict.is_some());
    }

    /// upstream `TestAllocatableMemoryPressure`, and memory ranked before disk.
    #[test]
    fn allocatable_memory_and_priority_of_signals() {
        let cfg = EvictionArgs {
            eviction_hard: vec![
                "memory.available<100Mi".into(),
                "nodefs.available<1Gi".into(),
            ],
            ..EvictionArgs::default()
        }
        .config(true)
        .expect("config");
        let mut m = EvictionManager::new(cfg, false);
        assert_eq!(m.memory_thresholds().count(), 2);
        let mut obs = disk(512 * MI);
        obs.insert(
            Signal::AllocatableMemoryAvailable,
            Observation {
                available: 50 * 1024 * 1024,
                capacity: 1024 * 1024 * 1024,
                time: None,
            },
        );
        let out = m.synchronize(Instant::now(), &obs, &pods());
        assert_eq!(
            out.node_conditions,
            BTreeSet::from([
                PressureCondition::MemoryPressure,
                PressureCondition::DiskPressure
            ])
        );
        assert_eq!(out.reclaiming, Some(Signal::AllocatableMemoryAvailable));
        assert!(out.reclaim.is_empty());
        let e = out.evict.expect("evicts");
        assert_eq!(e.resource, Resource::Memory);
        assert!(
            e.message
                .contains("Threshold quantity: 100Mi, available: 50Mi. ")
        );
        let rejected = m
            .admit(Qos::Burstable, false, false)
            .expect_err("disk pressure");
        assert_eq!(
            rejected.message,
            "The node had condition: [MemoryPressure DiskPressure]. "
        );
    }
}
