//! The cgroup manager on a temp-dir "fake cgroupfs": the QoS hierarchy and pod cgroups
//! for each QoS class, with the exact files and values written for cgroup v1, v2 and
//! the systemd driver's naming. No root needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use nodelet_cgroups::allocatable::{NodeCapacity, Reserved, kubepods_resources};
use nodelet_cgroups::manager::{CgroupManager, pod_cgroup_name};
use nodelet_cgroups::values::{QUOTA_PERIOD, pod_resources, qos_level_resources};
use nodelet_cgroups::{CgroupDriver, CgroupVersion, Layout, QosClass, qos_class};

const MI: i64 = 1 << 20;
const GI: i64 = 1 << 30;
const UID: &str = "1234-abcd";

fn list(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
            .collect()
    })
}

fn pod(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> PodSpec {
    PodSpec {
        containers: vec![Container {
            name: "c".to_owned(),
            resources: Some(ResourceRequirements {
                requests: list(requests),
                limits: list(limits),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn guaranteed() -> PodSpec {
    pod(&[], &[("cpu", "500m"), ("memory", "64Mi")])
}

fn capacity() -> NodeCapacity {
    NodeCapacity {
        cpu_milli: 2000,
        memory: 4 * GI,
        ephemeral_storage: 0,
        pids: 32768,
        hugepages: BTreeMap::new(),
    }
}

fn write(path: &Path, s: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, s).expect("write");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids", "name=systemd"];

fn v1_tree(root: &Path, controllers: &[&str]) -> Layout {
    for c in controllers {
        std::fs::create_dir_all(root.join(c)).expect("mkdir");
    }
    write(&root.join("cpuset/cpuset.cpus"), "0-1\n");
    write(&root.join("cpuset/cpuset.mems"), "0\n");
    Layout::v1_at(root, controllers)
}

fn v2_tree(root: &Path) -> Layout {
    write(
        &root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids\n",
    );
    Layout::v2_at(root)
}

/// Sets up the QoS hierarchy under `/` for `pods`, then the pod cgroup of `spec`;
/// returns the pod's cgroup name.
fn setup(mgr: &CgroupManager, pods: &[&PodSpec], spec: &PodSpec, memory_qos: bool) -> String {
    let version = mgr.layout().version();
    let kubepods = kubepods_resources(
        &capacity(),
        &Reserved::parse("cpu=100m,memory=100Mi").expect("reserved"),
        &Reserved::default(),
        true,
    );
    let qos = qos_level_resources(pods, version, memory_qos, &[]);
    mgr.ensure_qos_hierarchy("/", &kubepods, &qos)
        .expect("qos hierarchy");
    let name = pod_cgroup_name("/", qos_class(spec), UID);
    mgr.create(
        &name,
        &pod_resources(
            spec,
            true,
            QUOTA_PERIOD,
            memory_qos && version == CgroupVersion::V2,
        ),
    )
    .expect("pod cgroup");
    name
}

/// Removes the regular files a test wrote, as the kernel's rmdir would for interface
/// files, so `destroy` sees directories only.
fn drop_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("readdir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            drop_files(&p);
        } else {
            std::fs::remove_file(&p).expect("rm");
        }
    }
}

#[test]
fn v1_guaranteed_pod() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mgr = CgroupManager::new(v1_tree(tmp.path(), V1_CONTROLLERS));
    let spec = guaranteed();
    let name = setup(&mgr, &[&spec], &spec, false);
    assert_eq!(name, format!("/kubepods/pod{UID}"));
    let d = |c: &str, rel: &str| tmp.path().join(c).join(rel);

    // kubepods: allocatable = 1900m, 4Gi - 100Mi, pids 32768.
    assert_eq!(read(&d("cpu", "kubepods/cpu.shares")), "1945");
    assert_eq!(
        read(&d("memory", "kubepods/memory.limit_in_bytes")),
        (4 * GI - 100 * MI).to_string()
    );
    assert_eq!(read(&d("pids", "kubepods/pids.max")), "32768");
    assert!(!d("cpu", "kubepods/cpu.cfs_quota_us").exists());
    assert_eq!(read(&d("cpu", "kubepods/besteffort/cpu.shares")), "2");
    assert_eq!(read(&d("cpu", "kubepods/burstable/cpu.shares")), "2");

    let pod = format!("kubepods/pod{UID}");
    assert_eq!(read(&d("cpu", &format!("{pod}/cpu.shares"))), "512");
    assert_eq!(
        read(&d("cpu", &format!("{pod}/cpu.cfs_period_us"))),
        "100000"
    );
    assert_eq!(read(&d("cpu", &format!("{pod}/cpu.cfs_quota_us"))), "50000");
    assert_eq!(
        read(&d("memory", &format!("{pod}/memory.limit_in_bytes"))),
        "67108864"
    );
    assert!(!d("pids", &format!("{pod}/pids.max")).exists());
    // A directory in every hierarchy, cpuset copied from the parent at each level.
    for c in V1_CONTROLLERS {
        assert!(d(c, &pod).is_dir(), "{c}");
    }
    assert_eq!(read(&d("cpuset", "kubepods/cpuset.cpus")), "0-1");
    assert_eq!(read(&d("cpuset", &format!("{pod}/cpuset.cpus"))), "0-1");
    assert_eq!(read(&d("cpuset", &format!("{pod}/cpuset.mems"))), "0");
    assert!(mgr.exists(&name));
    assert!(!mgr.exists("/kubepods/podother"));

    // Processes are found in any hierarchy, descendants included.
    write(&d("cpu", &format!("{pod}/cgroup.procs")), "42\n7\n");
    write(&d("memory", &format!("{pod}/ctr/cgroup.procs")), "42\n99\n");
    assert_eq!(mgr.pids(&name), vec![7, 42, 99]);

    drop_files(tmp.path());
    mgr.destroy("/kubepods").expect("destroy");
    for c in V1_CONTROLLERS {
        assert!(!d(c, "kubepods").exists(), "{c}");
        assert!(tmp.path().join(c).is_dir(), "the mount stays");
    }
    assert!(!mgr.exists(&name));
    mgr.destroy("/kubepods").expect("missing is fine");
}

#[test]
fn v1_burstable_and_besteffort_pods() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mgr = CgroupManager::new(v1_tree(tmp.path(), V1_CONTROLLERS));
    let burstable = pod(&[("cpu", "100m"), ("memory", "32Mi")], &[]);
    let limited = pod(&[("cpu", "250m")], &[("cpu", "500m"), ("memory", "128Mi")]);
    let besteffort = pod(&[], &[]);
    let all = [&burstable, &limited, &besteffort];

    let name = setup(&mgr, &all, &burstable, false);
    assert_eq!(name, format!("/kubepods/burstable/pod{UID}"));
    let dir = |c: &str| tmp.path().join(c).join(name.trim_start_matches('/'));
    // Burstable QoS cgroup: shares of 100m + 250m.
    assert_eq!(
        read(&tmp.path().join("cpu/kubepods/burstable/cpu.shares")),
        "358"
    );
    // No limits: shares only.
    assert_eq!(read(&dir("cpu").join("cpu.shares")), "102");
    assert!(!dir("cpu").join("cpu.cfs_quota_us").exists());
    assert!(!dir("cpu").join("cpu.cfs_period_us").exists());
    assert!(!dir("memory").join("memory.limit_in_bytes").exists());

    // Burstable with limits on every container: quota and memory too.
    let name = pod_cgroup_name("/", QosClass::Burstable, "limited");
    mgr.create(&name, &pod_resources(&limited, true, QUOTA_PERIOD, false))
        .expect("create");
    let dir = tmp.path().join("cpu/kubepods/burstable/podlimited");
    assert_eq!(read(&dir.join("cpu.shares")), "256");
    assert_eq!(read(&dir.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(
        read(
            &tmp.path()
                .join("memory/kubepods/burstable/podlimited/memory.limit_in_bytes")
        ),
        (128 * MI).to_string()
    );
    // Without --cpu-cfs-quota the quota is -1.
    mgr.update(&name, &pod_resources(&limited, false, QUOTA_PERIOD, false))
        .expect("update");
    assert_eq!(read(&dir.join("cpu.cfs_quota_us")), "-1");

    let name = pod_cgroup_name("/", QosClass::BestEffort, "be");
    assert_eq!(name, "/kubepods/besteffort/podbe");
    mgr.create(
        &name,
        &pod_resources(&besteffort, true, QUOTA_PERIOD, false),
    )
    .expect("create");
    let dir = tmp.path().join("cpu/kubepods/besteffort/podbe");
    assert_eq!(read(&dir.join("cpu.shares")), "2");
    assert!(!dir.join("cpu.cfs_quota_us").exists());
    assert!(
        !tmp.path()
            .join("memory/kubepods/besteffort/podbe/memory.limit_in_bytes")
            .exists()
    );
}

#[test]
fn v1_hugetlb_when_mounted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut controllers = V1_CONTROLLERS.to_vec();
    controllers.push("hugetlb");
    let mgr = CgroupManager::new(v1_tree(tmp.path(), &controllers))
        .with_hugepage_sizes(vec![2 << 20, 1 << 30]);
    let spec = pod(
        &[],
        &[("cpu", "1"), ("memory", "64Mi"), ("hugepages-2Mi", "8Mi")],
    );
    let name = pod_cgroup_name("/", qos_class(&spec), UID);
    mgr.create(&name, &pod_resources(&spec, true, QUOTA_PERIOD, false))
        .expect("create");
    let dir = tmp.path().join(format!("hugetlb/kubepods/pod{UID}"));
    assert_eq!(
        read(&dir.join("hugetlb.2MB.limit_in_bytes")),
        (8 * MI).to_string()
    );
    assert_eq!(read(&dir.join("hugetlb.1GB.limit_in_bytes")), "0");

    // Not mounted (as on this project's CI host): skipped, not an error.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mgr =
        CgroupManager::new(v1_tree(tmp.path(), V1_CONTROLLERS)).with_hugepage_sizes(vec![2 << 20]);
    mgr.create(&name, &pod_resources(&spec, true, QUOTA_PERIOD, false))
        .expect("create without hugetlb");
    assert!(!tmp.path().join("hugetlb").exists());
}

#[test]
fn v2_guaranteed_pod() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mgr = CgroupManager::new(v2_tree(tmp.path()));
    let spec = guaranteed();
    let name = setup(&mgr, &[&spec], &spec, false);
    let pod = tmp.path().join(format!("kubepods/pod{UID}"));
    assert_eq!(read(&pod.join("cpu.max")), "50000 100000");
    assert_eq!(read(&pod.join("cpu.weight")), "20");
    assert_eq!(read(&pod.join("memory.max")), "67108864");
    assert!(
        !pod.join("cgroup.subtree_control").exists(),
        "the leaf enables nothing"
    );
    let all = "+cpuset +cpu +io +memory +hugetlb +pids";
    assert_eq!(read(&tmp.path().join("cgroup.subtree_control")), all);
    assert_eq!(
        read(&tmp.path().join("kubepods/cgroup.subtree_control")),
        all
    );

    let kubepods = tmp.path().join("kubepods");
    assert_eq!(read(&kubepods.join("cpu.weight")), "75"); // 1945 shares
    assert_eq!(
        read(&kubepods.join("memory.max")),
        (4 * GI - 100 * MI).to_string()
    );
    assert_eq!(read(&kubepods.join("pids.max")), "32768");
    assert!(!kubepods.join("cpu.max").exists());
    assert_eq!(read(&kubepods.join("besteffort/cpu.weight")), "1");
    assert_eq!(read(&kubepods.join("burstable/cpu.weight")), "1");
    assert!(mgr.exists(&name));

    drop_files(tmp.path());
    mgr.destroy("/kubepods").expect("destroy");
    assert!(!kubepods.exists());
}

#[test]
fn v2_unlimited_quota_and_memory_qos() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mgr = CgroupManager::new(v2_tree(tmp.path()));
    let burstable = pod(
        &[("cpu", "250m"), ("memory", "32Mi")],
        &[("cpu", "1"), ("memory", "64Mi")],
    );
    let g = guaranteed();
    let name = setup(&mgr, &[&burstable, &g], &burstable, true);
    let dir = tmp.path().join(name.trim_start_matches('/'));
    assert_eq!(read(&dir.join("cpu.max")), "100000 100000");
    assert_eq!(read(&dir.join("cpu.weight")), "10"); // 256 shares
    assert_eq!(read(&dir.join("memory.max")), (64 * MI).to_string());
    assert_eq!(read(&dir.join("memory.min")), (32 * MI).to_string());
    // QoS-level memory.min: burstable sum, and guaranteed + burstable on kubepods.
    assert_eq!(
        read(&tmp.path().join("kubepods/burstable/memory.min")),
        (32 * MI).to_string()
    );
    assert_eq!(
        read(&tmp.path().join("kubepods/memory.min")),
        (96 * MI).to_string()
    );

    // Quota disabled: "max <period>".
    mgr.update(
        &name,
        &pod_resources(&burstable, false, QUOTA_PERIOD, false),
    )
    .expect("update");
    assert_eq!(read(&dir.join("cpu.max")), "max 100000");
}

#[test]
fn v2_hugetlb_only_when_offered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("cgroup.controllers"), "cpu memory pids\n");
    let mgr = CgroupManager::new(Layout::v2_at(tmp.path())).with_hugepage_sizes(vec![2 << 20]);
    let spec = pod(
        &[],
        &[("cpu", "1"), ("memory", "64Mi"), ("hugepages-2Mi", "4Mi")],
    );
    mgr.create(
        "/kubepods/podx",
        &pod_resources(&spec, true, QUOTA_PERIOD, false),
    )
    .expect("create");
    assert_eq!(
        read(&tmp.path().join("cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert!(!tmp.path().join("kubepods/podx/hugetlb.2MB.max").exists());

    let tmp = tempfile::tempdir().expect("tempdir");
    let mgr = CgroupManager::new(v2_tree(tmp.path())).with_hugepage_sizes(vec![2 << 20, 1 << 30]);
    mgr.create(
        "/kubepods/podx",
        &pod_resources(&spec, true, QUOTA_PERIOD, false),
    )
    .expect("create");
    let dir = tmp.path().join("kubepods/podx");
    assert_eq!(read(&dir.join("hugetlb.2MB.max")), (4 * MI).to_string());
    assert_eq!(read(&dir.join("hugetlb.1GB.max")), "0");
}

fn systemd_dir(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}

#[test]
fn systemd_layout_v1_and_v2() {
    let uid = "1234-abcd";
    let spec = pod(
        &[("cpu", "100m"), ("memory", "32Mi")],
        &[("memory", "64Mi")],
    );
    let slice = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_abcd.slice";

    let tmp = tempfile::tempdir().expect("tempdir");
    let mgr =
        CgroupManager::new(v1_tree(tmp.path(), V1_CONTROLLERS)).with_driver(CgroupDriver::Systemd);
    let name = setup(&mgr, &[&spec], &spec, false);
    assert_eq!(name, format!("/kubepods/burstable/pod{uid}"));
    assert_eq!(mgr.path(&name), format!("/{slice}"));
    let cpu = systemd_dir(&tmp.path().join("cpu"), slice);
    assert_eq!(read(&cpu.join("cpu.shares")), "102");
    assert!(!cpu.join("cpu.cfs_quota_us").exists());
    assert_eq!(
        read(&systemd_dir(&tmp.path().join("memory"), slice).join("memory.limit_in_bytes")),
        (64 * MI).to_string()
    );
    assert_eq!(
        read(
            &tmp.path()
                .join("cpu/kubepods.slice/kubepods-burstable.slice/cpu.shares")
        ),
        "102"
    );
    assert_eq!(
        read(
            &tmp.path()
                .join("cpu/kubepods.slice/kubepods-besteffort.slice/cpu.shares")
        ),
        "2"
    );
    assert!(!tmp.path().join("cpu/kubepods").exists());
    assert!(mgr.exists(&name));
    drop_files(tmp.path());
    mgr.destroy("/kubepods").expect("destroy");
    assert!(!tmp.path().join("cpu/kubepods.slice").exists());

    let tmp = tempfile::tempdir().expect("tempdir");
    let mgr = CgroupManager::new(v2_tree(tmp.path())).with_driver(CgroupDriver::Systemd);
    setup(&mgr, &[&spec], &spec, false);
    let dir = tmp.path().join(slice);
    assert_eq!(read(&dir.join("cpu.weight")), "4");
    assert_eq!(read(&dir.join("memory.max")), (64 * MI).to_string());
    assert!(!dir.join("cpu.max").exists());
    assert_eq!(
        read(
            &tmp.path()
                .join("kubepods.slice/kubepods-burstable.slice/cgroup.subtree_control")
        ),
        "+cpuset +cpu +io +memory +hugetlb +pids"
    );
}

#[test]
fn update_of_missing_cgroup_names_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mgr = CgroupManager::new(v2_tree(tmp.path()));
    let err = mgr
        .update(
            "/kubepods/nothere",
            &pod_resources(&guaranteed(), true, QUOTA_PERIOD, false),
        )
        .expect_err("missing");
    let msg = err.to_string();
    assert!(
        msg.contains("kubepods/nothere/cpu.weight") && msg.contains("\"20\""),
        "{msg}"
    );
}
