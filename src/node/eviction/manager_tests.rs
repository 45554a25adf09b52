//! Unit tests of `manager.rs`.

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
