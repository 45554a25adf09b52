//! Unit tests of `summary.rs`.

use super::*;
use nodelet_cgroups::FsStats as Vfs;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

/// A `/stats/summary` answer in upstream's shape (a kubelet 1.30 node, trimmed to
/// one system container, one pod with one container and one emptyDir).
const UPSTREAM: &str = r#"{
  "node": {
    "nodeName": "node-1",
    "systemContainers": [
      {
        "name": "kubelet",
        "startTime": "2024-05-01T10:00:00Z",
        "cpu": {"time": "2024-05-01T12:00:00Z", "usageNanoCores": 21000000, "usageCoreNanoSeconds": 123456789000},
        "memory": {"time": "2024-05-01T12:00:00Z", "usageBytes": 60000000, "workingSetBytes": 50000000, "rssBytes": 40000000, "pageFaults": 100, "majorPageFaults": 1}
      }
    ],
    "startTime": "2024-05-01T09:59:00Z",
    "cpu": {"time": "2024-05-01T12:00:00Z", "usageNanoCores": 250000000, "usageCoreNanoSeconds": 987654321000},
    "memory": {"time": "2024-05-01T12:00:00Z", "availableBytes": 6000000000, "usageBytes": 3000000000, "workingSetBytes": 2000000000, "rssBytes": 1000000000, "pageFaults": 5000, "majorPageFaults": 50},
    "fs": {"time": "2024-05-01T12:00:00Z", "availableBytes": 40000000000, "capacityBytes": 100000000000, "usedBytes": 55000000000, "inodesFree": 6000000, "inodes": 6500000, "inodesUsed": 500000},
    "runtime": {
      "imageFs": {"time": "2024-05-01T12:00:00Z", "availableBytes": 40000000000, "capacityBytes": 100000000000, "usedBytes": 3000000000, "inodesFree": 6000000, "inodes": 6500000, "inodesUsed": 40000},
      "containerFs": {"time": "2024-05-01T12:00:00Z", "availableBytes": 40000000000, "capacityBytes": 100000000000, "usedBytes": 3000000000, "inodesFree": 6000000, "inodes": 6500000, "inodesUsed": 40000}
    },
    "rlimit": {"time": "2024-05-01T12:00:00Z", "maxpid": 4194304, "curproc": 312}
  },
  "pods": [
    {
      "podRef": {"name": "web", "namespace": "default", "uid": "0b7e6c5a-1111-4222-8333-944445555666"},
      "startTime": "2024-05-01T11:00:00Z",
      "containers": [
        {
          "name": "nginx",
          "startTime": "2024-05-01T11:00:05Z",
          "cpu": {"time": "2024-05-01T12:00:00Z", "usageNanoCores": 1000000, "usageCoreNanoSeconds": 5000000000},
          "memory": {"time": "2024-05-01T12:00:00Z", "availableBytes": 124000000, "usageBytes": 10000000, "workingSetBytes": 4000000, "rssBytes": 3000000, "pageFaults": 900, "majorPageFaults": 2},
          "rootfs": {"time": "2024-05-01T12:00:00Z", "availableBytes": 40000000000, "capacityBytes": 100000000000, "usedBytes": 12288, "inodesFree": 6000000, "inodes": 6500000, "inodesUsed": 3},
          "logs": {"time": "2024-05-01T12:00:00Z", "availableBytes": 40000000000, "capacityBytes": 100000000000, "usedBytes": 8192, "inodesFree": 6000000, "inodes": 6500000, "inodesUsed": 2}
        }
      ],
      "cpu": {"time": "2024-05-01T12:00:00Z", "usageNanoCores": 1200000, "usageCoreNanoSeconds": 5100000000},
      "memory": {"time": "2024-05-01T12:00:00Z", "usageBytes": 11000000, "workingSetBytes": 5000000, "rssBytes": 3100000, "pageFaults": 950, "majorPageFaults": 2},
      "volume": [
        {"time": "2024-05-01T12:00:00Z", "availableBytes": 40000000000, "capacityBytes": 100000000000, "usedBytes": 4096, "inodesFree": 6000000, "inodes": 6500000, "inodesUsed": 1, "name": "cache"}
      ],
      "ephemeral-storage": {"time": "2024-05-01T12:00:00Z", "availableBytes": 40000000000, "capacityBytes": 100000000000, "usedBytes": 24576, "inodesFree": 6000000, "inodes": 6500000, "inodesUsed": 6},
      "process_stats": {"process_count": 2}
    }
  ]
}"#;

fn node_fs() -> Vfs {
    Vfs {
        capacity: 100_000_000_000,
        available: 40_000_000_000,
        used: 55_000_000_000,
        inodes: 6_500_000,
        inodes_free: 6_000_000,
        inodes_used: 500_000,
    }
}

fn inputs() -> (NodeInput, Vec<PodInput>) {
    let image_fs = FsInput {
        filesystem: Some(node_fs()),
        used_bytes: Some(3_000_000_000),
        inodes_used: Some(40_000),
    };
    let node = NodeInput {
        node_name: "node-1".into(),
        start_time: ts("2024-05-01T09:59:00Z"),
        root: Some(CgroupUsage {
            stats: CgroupStats {
                cpu_usage_nanos: Some(987_654_321_000),
                ..CgroupStats::default()
            },
            cpu_nano_cores: Some(250_000_000),
        }),
        memory: Some(NodeMemory {
            capacity: 8_000_000_000,
            usage: 3_000_000_000,
            working_set: 2_000_000_000,
            available: 6_000_000_000,
            rss: Some(1_000_000_000),
            page_faults: Some(5000),
            major_page_faults: Some(50),
        }),
        system_containers: vec![ContainerInput {
            name: "kubelet".into(),
            start_time: ts("2024-05-01T10:00:00Z"),
            usage: Some(CgroupUsage {
                stats: CgroupStats {
                    cpu_usage_nanos: Some(123_456_789_000),
                    memory_usage: Some(60_000_000),
                    memory_working_set: Some(50_000_000),
                    memory_rss: Some(40_000_000),
                    page_faults: Some(100),
                    major_page_faults: Some(1),
                    ..CgroupStats::default()
                },
                cpu_nano_cores: Some(21_000_000),
            }),
            rootfs: None,
            logs: None,
        }],
        network: None,
        fs: Some(node_fs()),
        image_fs: Some(image_fs),
        container_fs: Some(image_fs),
        rlimit: Some((4_194_304, 312)),
    };
    let pod = PodInput {
        pod_ref: PodReference {
            name: "web".into(),
            namespace: "default".into(),
            uid: "0b7e6c5a-1111-4222-8333-944445555666".into(),
        },
        start_time: ts("2024-05-01T11:00:00Z"),
        usage: Some(CgroupUsage {
            stats: CgroupStats {
                cpu_usage_nanos: Some(5_100_000_000),
                memory_usage: Some(11_000_000),
                memory_working_set: Some(5_000_000),
                memory_rss: Some(3_100_000),
                page_faults: Some(950),
                major_page_faults: Some(2),
                memory_limit: None,
                oom_kills: Some(0),
                pids: Some(2),
            },
            cpu_nano_cores: Some(1_200_000),
        }),
        containers: vec![ContainerInput {
            name: "nginx".into(),
            start_time: ts("2024-05-01T11:00:05Z"),
            usage: Some(CgroupUsage {
                stats: CgroupStats {
                    cpu_usage_nanos: Some(5_000_000_000),
                    memory_usage: Some(10_000_000),
                    memory_working_set: Some(4_000_000),
                    memory_rss: Some(3_000_000),
                    page_faults: Some(900),
                    major_page_faults: Some(2),
                    memory_limit: Some(128_000_000),
                    oom_kills: Some(0),
                    pids: Some(1),
                },
                cpu_nano_cores: Some(1_000_000),
            }),
            rootfs: Some(FsInput {
                filesystem: Some(node_fs()),
                used_bytes: Some(12_288),
                inodes_used: Some(3),
            }),
            logs: Some(FsInput::dir(
                Some(node_fs()),
                DirUsage {
                    bytes: 8192,
                    inodes: 2,
                    truncated: false,
                },
            )),
        }],
        volumes: vec![VolumeInput {
            name: "cache".into(),
            fs: FsInput::dir(
                Some(node_fs()),
                DirUsage {
                    bytes: 4096,
                    inodes: 1,
                    truncated: false,
                },
            ),
            ephemeral: true,
        }],
        network: None,
        ephemeral_fs: Some(node_fs()),
        pod_logs: None,
    };
    (node, vec![pod])
}

#[test]
fn the_json_is_upstreams_shape() {
    let (node, pods) = inputs();
    let summary = build_summary(node, pods, ts("2024-05-01T12:00:00.123456789Z"));
    let got = serde_json::to_value(&summary).expect("serialize");
    let want: serde_json::Value = serde_json::from_str(UPSTREAM).expect("literal");
    assert_eq!(got, want);
    // And upstream's JSON reads back and writes out unchanged.
    let parsed: Summary = serde_json::from_str(UPSTREAM).expect("parse upstream");
    assert_eq!(serde_json::to_value(&parsed).expect("serialize"), want);
}

#[test]
fn unknown_fields_are_omitted_not_null() {
    let now = ts("2024-05-01T12:00:00Z");
    let node = NodeInput {
        node_name: "n".into(),
        start_time: now,
        root: None,
        memory: None,
        system_containers: vec![],
        network: None,
        fs: None,
        image_fs: None,
        container_fs: None,
        rlimit: None,
    };
    let pod = PodInput {
        pod_ref: PodReference {
            name: "p".into(),
            namespace: "ns".into(),
            uid: "u".into(),
        },
        start_time: now,
        usage: Some(CgroupUsage {
            stats: CgroupStats {
                memory_usage: Some(10),
                memory_working_set: Some(5),
                ..CgroupStats::default()
            },
            cpu_nano_cores: None,
        }),
        containers: vec![],
        volumes: vec![],
        network: None,
        ephemeral_fs: None,
        pod_logs: None,
    };
    let json = serde_json::to_value(build_summary(node, vec![pod], now)).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "node": {"nodeName": "n", "startTime": "2024-05-01T12:00:00Z"},
            "pods": [{
                "podRef": {"name": "p", "namespace": "ns", "uid": "u"},
                "startTime": "2024-05-01T12:00:00Z",
                "containers": [],
                "memory": {"time": "2024-05-01T12:00:00Z", "usageBytes": 10, "workingSetBytes": 5}
            }]
        })
    );
}

#[test]
fn ephemeral_storage_counts_the_pod_log_dir_instead_of_container_logs() {
    let (_, mut pods) = inputs();
    pods[0].pod_logs = Some(DirUsage {
        bytes: 100_000,
        inodes: 10,
        truncated: false,
    });
    pods[0].volumes.push(VolumeInput {
        name: "data".into(),
        fs: FsInput::dir(
            None,
            DirUsage {
                bytes: 1 << 30,
                inodes: 1,
                truncated: false,
            },
        ),
        ephemeral: false,
    });
    let e = ephemeral_storage(&pods[0], Time(ts("2024-05-01T12:00:00Z"))).expect("fs");
    assert_eq!(e.used_bytes, Some(12_288 + 4096 + 100_000));
    assert_eq!(e.inodes_used, Some(3 + 1 + 10));
}

#[test]
fn cpu_rate_from_successive_samples() {
    let t0 = ts("2024-05-01T12:00:00Z");
    let t10 = ts("2024-05-01T12:00:10Z");
    let t20 = ts("2024-05-01T12:00:20Z");
    let mut r = CpuRateTracker::new();
    assert_eq!(r.observe("/kubepods/pod1", 1_000_000_000, t0), None);
    r.end_round();
    // 5 s of CPU in 10 s: half a core.
    assert_eq!(
        r.observe("/kubepods/pod1", 6_000_000_000, t10),
        Some(500_000_000)
    );
    // Same instant again: no rate.
    assert_eq!(r.observe("/kubepods/pod1", 6_000_000_000, t10), None);
    // A recreated cgroup (counter went back): no rate, then rates from the new base.
    assert_eq!(r.observe("/kubepods/pod1", 10, t20), None);
    assert_eq!(
        r.observe("/kubepods/pod1", 2_000_000_010, ts("2024-05-01T12:00:22Z")),
        Some(1_000_000_000)
    );
}

#[test]
fn keys_not_seen_in_a_round_are_forgotten() {
    let t0 = ts("2024-05-01T12:00:00Z");
    let t1 = ts("2024-05-01T12:00:01Z");
    let mut r = CpuRateTracker::new();
    r.observe("a", 1, t0);
    r.observe("b", 1, t0);
    r.end_round();
    assert_eq!(r.len(), 2);
    r.observe("a", 2, t1);
    r.end_round();
    assert_eq!(r.len(), 1);
    // b comes back as new: no rate from its old sample.
    assert_eq!(r.observe("b", 1_000_000_001, t1), None);
    let u = r.usage(
        "a",
        CgroupStats {
            cpu_usage_nanos: Some(500_000_002),
            ..CgroupStats::default()
        },
        ts("2024-05-01T12:00:02Z"),
    );
    assert_eq!(u.cpu_nano_cores, Some(500_000_000));
}
