//! Unit tests of `values.rs`.

use super::*;
use crate::qos::tests::{container, pod, rl};
use k8s_openapi::api::core::v1::ResourceRequirements;

// helpers_linux_test.go TestMilliCPUToShares / TestMilliCPUToQuota.
#[test]
fn shares_table() {
    for (milli, shares) in [
        (0, 2),
        (1, 2),
        (2, 2),
        (100, 102),
        (500, 512),
        (1000, 1024),
        (1500, 1536),
        (256_000, 262_144),
        (300_000, 262_144),
    ] {
        assert_eq!(milli_cpu_to_shares(milli), shares, "{milli}m");
    }
}

#[test]
fn quota_table() {
    for (milli, period, quota) in [
        (0, 0, 0),
        (5, 100_000, 1000),
        (9, 100_000, 1000),
        (10, 100_000, 1000),
        (200, 100_000, 20_000),
        (500, 100_000, 50_000),
        (1000, 100_000, 100_000),
        (1500, 100_000, 150_000),
        (5, 50_000, 1000),
        (10, 50_000, 1000),
        (20, 50_000, 1000),
        (200, 50_000, 10_000),
        (500, 50_000, 25_000),
        (1000, 50_000, 50_000),
        (1500, 50_000, 75_000),
    ] {
        assert_eq!(
            milli_cpu_to_quota(milli, period),
            quota,
            "{milli}m/{period}"
        );
    }
}

// cgroup_manager_linux_test.go TestCpuSharesToCPUWeight.
#[test]
fn weight_table() {
    for (shares, weight) in [
        (2, 1),
        (3, 1),
        (4, 1),
        (28, 1),
        (29, 2),
        (245, 10),
        (262_144, 10_000),
        (512, 20),
        (1024, 39),
        (102, 4),
    ] {
        assert_eq!(cpu_shares_to_weight(shares), weight, "{shares}");
    }
}

fn rc(shares: u64, quota: Option<i64>, period: Option<u64>, memory: Option<i64>) -> ResourceConfig {
    ResourceConfig {
        cpu_shares: Some(shares),
        cpu_quota: quota,
        cpu_period: period,
        memory,
        ..Default::default()
    }
}

const MI: i64 = 1 << 20;

// helpers_linux_test.go TestResourceConfigForPod.
#[test]
fn pod_resources_table() {
    let p = Some(QUOTA_PERIOD);
    let cases: Vec<(&str, PodSpec, bool, ResourceConfig)> = vec![
        (
            "besteffort",
            pod(vec![container("c", &[], &[])], vec![]),
            true,
            rc(2, None, None, None),
        ),
        (
            "burstable-no-limits",
            pod(
                vec![container("c", &[("cpu", "100m"), ("memory", "100Mi")], &[])],
                vec![],
            ),
            true,
            rc(102, None, None, None),
        ),
        (
            "burstable-with-limits",
            pod(
                vec![container(
                    "c",
                    &[("cpu", "100m"), ("memory", "100Mi")],
                    &[("cpu", "200m"), ("memory", "200Mi")],
                )],
                vec![],
            ),
            true,
            rc(102, Some(20_000), p, Some(200 * MI)),
        ),
        (
            "burstable-with-limits-no-cpu-enforcement",
            pod(
                vec![container(
                    "c",
                    &[("cpu", "100m"), ("memory", "100Mi")],
                    &[("cpu", "200m"), ("memory", "200Mi")],
                )],
                vec![],
            ),
            false,
            rc(102, Some(-1), p, Some(200 * MI)),
        ),
        (
            "burstable-partial-limits",
            pod(
                vec![
                    container(
                        "a",
                        &[("cpu", "100m"), ("memory", "100Mi")],
                        &[("cpu", "200m"), ("memory", "200Mi")],
                    ),
                    container("b", &[("cpu", "100m"), ("memory", "100Mi")], &[]),
                ],
                vec![],
            ),
            true,
            rc(204, None, None, None),
        ),
        (
            "guaranteed",
            pod(
                vec![container(
                    "c",
                    &[("cpu", "100m"), ("memory", "100Mi")],
                    &[("cpu", "100m"), ("memory", "100Mi")],
                )],
                vec![],
            ),
            true,
            rc(102, Some(10_000), p, Some(100 * MI)),
        ),
        (
            "guaranteed-no-cpu-enforcement",
            pod(
                vec![container(
                    "c",
                    &[("cpu", "100m"), ("memory", "100Mi")],
                    &[("cpu", "100m"), ("memory", "100Mi")],
                )],
                vec![],
            ),
            false,
            rc(102, Some(-1), p, Some(100 * MI)),
        ),
        (
            "burstable-init-container-without-limits",
            pod(
                vec![container(
                    "c",
                    &[("cpu", "100m"), ("memory", "100Mi")],
                    &[("cpu", "200m"), ("memory", "200Mi")],
                )],
                vec![container("i", &[("cpu", "50m")], &[])],
            ),
            true,
            rc(102, None, None, None),
        ),
    ];
    for (name, spec, enforce, want) in cases {
        assert_eq!(
            pod_resources(&spec, enforce, QUOTA_PERIOD, false),
            want,
            "{name}"
        );
    }
}

#[test]
fn pod_resources_custom_period() {
    let spec = pod(
        vec![container(
            "c",
            &[("cpu", "100m"), ("memory", "100Mi")],
            &[("cpu", "100m"), ("memory", "100Mi")],
        )],
        vec![],
    );
    assert_eq!(
        pod_resources(&spec, true, 50_000, false),
        rc(102, Some(5000), Some(50_000), Some(100 * MI))
    );
}

#[test]
fn init_containers_and_sidecars() {
    // app 100m; init 500m; sidecar 200m started before a 300m init container.
    let mut sidecar = container("sidecar", &[("cpu", "200m")], &[]);
    sidecar.restart_policy = Some("Always".to_owned());
    let spec = pod(
        vec![container("app", &[("cpu", "100m")], &[])],
        vec![
            container("init1", &[("cpu", "500m")], &[]),
            sidecar,
            container("init2", &[("cpu", "400m")], &[]),
        ],
    );
    // max(app+sidecar = 300m, init1 500m, sidecar+init2 600m) = 600m.
    assert_eq!(
        pod_requests(&spec).get("cpu").copied(),
        Some(Quantity::parse("600m").expect("q"))
    );
    assert_eq!(
        pod_resources(&spec, true, QUOTA_PERIOD, false).cpu_shares,
        Some(614)
    );
}

#[test]
fn overhead_and_hugepages_and_memory_min() {
    let mut spec = pod(
        vec![container(
            "c",
            &[
                ("cpu", "100m"),
                ("memory", "100Mi"),
                ("hugepages-2Mi", "4Mi"),
            ],
            &[
                ("cpu", "100m"),
                ("memory", "100Mi"),
                ("hugepages-2Mi", "4Mi"),
            ],
        )],
        vec![],
    );
    spec.overhead = rl(&[("cpu", "10m"), ("memory", "10Mi")]);
    let got = pod_resources(&spec, true, QUOTA_PERIOD, true);
    assert_eq!(got.cpu_shares, Some(112));
    assert_eq!(got.cpu_quota, Some(11_000));
    assert_eq!(got.memory, Some(110 * MI));
    assert_eq!(
        got.hugepage_limit,
        BTreeMap::from([(2 * 1024 * 1024, 4 * MI)])
    );
    assert_eq!(
        got.unified.get(CGROUP2_MEMORY_MIN).map(String::as_str),
        Some("115343360")
    );
}

#[test]
fn pod_level_limits_declare() {
    let mut spec = pod(vec![container("c", &[("cpu", "100m")], &[])], vec![]);
    spec.resources = Some(ResourceRequirements {
        requests: rl(&[("cpu", "200m")]),
        limits: rl(&[("cpu", "500m")]),
        ..Default::default()
    });
    let got = pod_resources(&spec, true, QUOTA_PERIOD, false);
    assert_eq!(got.cpu_shares, Some(204));
    assert_eq!(got.cpu_quota, Some(50_000));
    assert_eq!(got.memory, None);
}

fn settings() -> ContainerSettings {
    ContainerSettings::new(1000 * MI, CgroupVersion::V1)
}

#[test]
fn container_resources_v1() {
    let c = container("c", &[], &[("cpu", "500m"), ("memory", "64Mi")]);
    let spec = pod(vec![c.clone()], vec![]);
    let got = container_resources(&spec, &c, &settings());
    assert_eq!(
        got,
        ContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit: 64 * MI,
            oom_score_adj: -997,
            ..Default::default()
        }
    );
    // No limit: quota 0 with the period still set, shares from the request.
    let c = container("c", &[("cpu", "250m")], &[]);
    let spec = pod(vec![c.clone()], vec![]);
    let got = container_resources(&spec, &c, &settings());
    assert_eq!(
        (got.cpu_shares, got.cpu_quota, got.cpu_period),
        (256, 0, 100_000)
    );
    let mut s = settings();
    s.enforce_cpu_limits = false;
    let got = container_resources(&spec, &c, &s);
    assert_eq!((got.cpu_quota, got.cpu_period), (0, 0));
}

// kuberuntime_container_linux_test.go TestGenerateContainerConfigWithMemoryQoSEnforced.
#[test]
fn container_resources_memory_qos() {
    let mut s = settings();
    s.cgroup_version = CgroupVersion::V2;
    s.memory_qos = true;
    s.allocatable_memory = 1000 * MI;
    let c = container("c", &[("memory", "128Mi")], &[("memory", "256Mi")]);
    let spec = pod(vec![c.clone()], vec![]);
    let got = container_resources(&spec, &c, &s);
    // floor((128Mi + 0.9 * 128Mi) / 4096) * 4096
    let high = ((128.0 * MI as f64 + 0.9 * 128.0 * MI as f64) / 4096.0).floor() as i64 * 4096;
    assert_eq!(
        got.unified,
        BTreeMap::from([
            ("memory.high".to_owned(), high.to_string()),
            ("memory.min".to_owned(), (128 * MI).to_string()),
            ("memory.oom.group".to_owned(), "1".to_owned()),
        ])
    );
    // No limit: node allocatable is the ceiling.
    let c = container("c", &[("memory", "128Mi")], &[]);
    let spec = pod(vec![c.clone()], vec![]);
    let got = container_resources(&spec, &c, &s);
    let high =
        ((128.0 * MI as f64 + 0.9 * (1000.0 - 128.0) * MI as f64) / 4096.0).floor() as i64 * 4096;
    assert_eq!(got.unified.get("memory.high"), Some(&high.to_string()));
    // Guaranteed memory: no memory.high.
    let c = container("c", &[], &[("memory", "128Mi"), ("cpu", "1")]);
    let spec = pod(vec![c.clone()], vec![]);
    let got = container_resources(&spec, &c, &s);
    assert_eq!(got.unified.get("memory.high"), None);
}

#[test]
fn container_hugepages_default_to_zero() {
    let mut s = settings();
    s.hugepage_sizes = vec![2 << 20, 1 << 30];
    let c = container(
        "c",
        &[("hugepages-2Mi", "6Mi")],
        &[("hugepages-2Mi", "6Mi")],
    );
    let spec = pod(vec![c.clone()], vec![]);
    let got = container_resources(&spec, &c, &s);
    assert_eq!(
        got.hugepage_limits,
        BTreeMap::from([(2 << 20, 6 * MI), (1 << 30, 0)])
    );
}

// policy_test.go TestGetContainerOOMScoreAdjust, memory capacity 4000000000.
#[test]
fn oom_score_table() {
    const CAP: i64 = 4_000_000_000;
    let be = container("c", &[], &[]);
    let spec = pod(vec![be.clone()], vec![]);
    assert_eq!(oom_score_adj(&spec, &be, CAP), 1000);

    let g = container("c", &[], &[("cpu", "1"), ("memory", "2000000000")]);
    let spec = pod(vec![g.clone()], vec![]);
    assert_eq!(oom_score_adj(&spec, &g, CAP), -997);

    // Burstable: request 1/2 of capacity → 500; request 99.99% → clamped to 3.
    let b = container("c", &[("memory", "2000000000")], &[]);
    let spec = pod(vec![b.clone()], vec![]);
    assert_eq!(oom_score_adj(&spec, &b, CAP), 500);
    let b = container("c", &[("memory", "3999999999")], &[]);
    let spec = pod(vec![b.clone()], vec![]);
    assert_eq!(oom_score_adj(&spec, &b, CAP), 3);
    // Burstable with only a cpu request: 1000 → 999.
    let b = container("c", &[("cpu", "100m")], &[]);
    let spec = pod(vec![b.clone()], vec![]);
    assert_eq!(oom_score_adj(&spec, &b, CAP), 999);

    // Node critical BestEffort pod: −997.
    let mut spec = pod(vec![be.clone()], vec![]);
    spec.priority_class_name = Some("system-node-critical".to_owned());
    spec.priority = Some(2_000_001_000);
    assert_eq!(oom_score_adj(&spec, &be, CAP), -997);
    spec.priority = Some(100);
    assert_eq!(oom_score_adj(&spec, &be, CAP), 1000);
}

#[test]
fn sidecar_oom_score_not_above_regular() {
    const CAP: i64 = 4_000_000_000;
    let mut sidecar = container("sidecar", &[("memory", "1000000000")], &[]);
    sidecar.restart_policy = Some("Always".to_owned());
    let app = container("app", &[("memory", "2000000000")], &[]);
    let spec = pod(vec![app.clone()], vec![sidecar.clone()]);
    assert_eq!(oom_score_adj(&spec, &app, CAP), 500);
    assert_eq!(oom_score_adj(&spec, &sidecar, CAP), 500);
}

#[test]
fn pod_level_memory_request_shared_in_oom_score() {
    const CAP: i64 = 4_000_000_000;
    let a = container("a", &[("memory", "1000000000")], &[]);
    let b = container("b", &[], &[]);
    let mut spec = pod(vec![a.clone(), b.clone()], vec![]);
    spec.resources = Some(ResourceRequirements {
        requests: rl(&[("memory", "2000000000")]),
        ..Default::default()
    });
    // 1e9 unclaimed, 5e8 each: a = 1000 - 1000*1.5e9/4e9 = 625, b = 875.
    assert_eq!(oom_score_adj(&spec, &a, CAP), 625);
    assert_eq!(oom_score_adj(&spec, &b, CAP), 875);
}

#[test]
fn qos_level() {
    let g = pod(
        vec![container("c", &[], &[("cpu", "1"), ("memory", "100Mi")])],
        vec![],
    );
    let b1 = pod(
        vec![container("c", &[("cpu", "100m"), ("memory", "10Mi")], &[])],
        vec![],
    );
    let b2 = pod(
        vec![container("c", &[("cpu", "250m")], &[("memory", "20Mi")])],
        vec![],
    );
    let be = pod(vec![container("c", &[], &[])], vec![]);
    let got = qos_level_resources(&[&g, &b1, &b2, &be], CgroupVersion::V1, true, &[]);
    assert_eq!(got.besteffort.cpu_shares, Some(2));
    assert_eq!(got.burstable.cpu_shares, Some(358));
    assert!(got.burstable.unified.is_empty(), "memory.min is v2 only");

    let got = qos_level_resources(&[&g, &b1, &b2, &be], CgroupVersion::V2, true, &[2 << 20]);
    assert_eq!(
        got.burstable.unified.get(CGROUP2_MEMORY_MIN),
        Some(&(30 * MI).to_string())
    );
    assert_eq!(
        got.guaranteed.unified.get(CGROUP2_MEMORY_MIN),
        Some(&(130 * MI).to_string())
    );
    assert_eq!(
        got.besteffort.hugepage_limit,
        BTreeMap::from([(2 << 20, UNBOUNDED_HUGEPAGE_LIMIT)])
    );
    let none = qos_level_resources(&[], CgroupVersion::V2, true, &[]);
    assert_eq!(none.burstable.cpu_shares, Some(2));
}
