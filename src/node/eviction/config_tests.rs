//! Unit tests of `config.rs`.

use super::*;
use clap::Parser;

#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    eviction: EvictionArgs,
}

fn args(argv: &[&str]) -> EvictionArgs {
    let mut full = vec!["nodelet"];
    full.extend_from_slice(argv);
    Flags::try_parse_from(full).expect("flags parse").eviction
}

fn q(s: &str) -> ThresholdValue {
    ThresholdValue::Quantity(Amount::parse(s).expect("quantity"))
}

fn hard(signal: Signal, value: ThresholdValue) -> Threshold {
    Threshold {
        signal,
        value,
        grace_period: Duration::ZERO,
        min_reclaim: None,
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn defaults_are_upstreams() {
    let a = args(&[]);
    assert_eq!(format!("{a:?}"), format!("{:?}", EvictionArgs::default()));
    let c = a.config(false).expect("config");
    assert_eq!(c.pressure_transition_period, Duration::from_secs(300));
    assert_eq!(c.monitoring_interval, Duration::from_secs(10));
    assert!(c.kernel_memcg_notification);
    assert!(!c.evict_static_pods);
    assert_eq!(c.max_pod_grace_period_seconds, 0);
    let got: Vec<String> = c.thresholds.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "imagefs.available<15%",
            "imagefs.inodesFree<5%",
            "memory.available<100Mi",
            "nodefs.available<10%",
            "nodefs.inodesFree<5%"
        ]
    );
    assert!(c.thresholds.iter().all(Threshold::is_hard));
    // With node allocatable enforced on pods, memory.available is copied.
    let c = a.config(true).expect("config");
    assert_eq!(
        c.thresholds.last(),
        Some(&hard(Signal::AllocatableMemoryAvailable, q("100Mi")))
    );
}

#[test]
fn eviction_hard_replaces_or_merges_defaults() {
    let c = args(&["--eviction-hard", "memory.available<1Gi"])
        .config(false)
        .expect("config");
    assert_eq!(c.thresholds, [hard(Signal::MemoryAvailable, q("1Gi"))]);
    let c = args(&[
        "--eviction-hard",
        "memory.available<1Gi",
        "--merge-default-eviction-settings",
    ])
    .config(false)
    .expect("config");
    assert_eq!(c.thresholds.len(), 5);
    assert!(
        c.thresholds
            .contains(&hard(Signal::MemoryAvailable, q("1Gi")))
    );
    assert!(c.thresholds.contains(&hard(
        Signal::NodeFsAvailable,
        ThresholdValue::Percentage(0.1)
    )));
    // Repeated flags and comma lists add up.
    let c = args(&[
        "--eviction-hard",
        "pid.available<10%,nodefs.available<1Gi",
        "--eviction-hard",
        "memory.available<150Mi",
        "--kernel-memcg-notification=false",
        "--evict-static-pods",
    ])
    .config(false)
    .expect("config");
    assert_eq!(c.thresholds.len(), 3);
    assert!(!c.kernel_memcg_notification);
    assert!(c.evict_static_pods);
    // A bare boolean flag means true, as Go's flags.
    assert!(args(&["--kernel-memcg-notification"]).kernel_memcg_notification);
}

/// upstream helpers_test.go `TestParseThresholdConfig`, the cases that apply.
#[test]
fn parse_threshold_config_table() {
    let soft_mem = |grace: u64, min: Option<ThresholdValue>| Threshold {
        signal: Signal::MemoryAvailable,
        value: q("300Mi"),
        grace_period: Duration::from_secs(grace),
        min_reclaim: min,
    };
    type Case<'a> = (
        &'a str,
        bool,
        Vec<(&'a str, &'a str)>,
        Vec<(&'a str, &'a str)>,
        Vec<(&'a str, &'a str)>,
        Vec<(&'a str, &'a str)>,
        Result<Vec<Threshold>, &'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "no values",
            false,
            vec![],
            vec![],
            vec![],
            vec![],
            Ok(vec![]),
        ),
        (
            "all memory eviction values",
            false,
            vec![("memory.available", "150Mi")],
            vec![("memory.available", "300Mi")],
            vec![("memory.available", "30s")],
            vec![("memory.available", "0")],
            Ok(vec![
                Threshold {
                    min_reclaim: Some(q("0")),
                    ..hard(Signal::MemoryAvailable, q("150Mi"))
                },
                soft_mem(30, Some(q("0"))),
            ]),
        ),
        (
            "allocatable memory eviction values",
            true,
            vec![("memory.available", "150Mi")],
            vec![],
            vec![],
            vec![("memory.available", "0")],
            Ok(vec![
                Threshold {
                    min_reclaim: Some(q("0")),
                    ..hard(Signal::MemoryAvailable, q("150Mi"))
                },
                Threshold {
                    min_reclaim: Some(q("0")),
                    ..hard(Signal::AllocatableMemoryAvailable, q("150Mi"))
                },
            ]),
        ),
        (
            "disk eviction values",
            false,
            vec![
                ("imagefs.available", "150Mi"),
                ("nodefs.available", "100Mi"),
            ],
            vec![],
            vec![],
            vec![("imagefs.available", "2Gi"), ("nodefs.available", "1Gi")],
            Ok(vec![
                Threshold {
                    min_reclaim: Some(q("2Gi")),
                    ..hard(Signal::ImageFsAvailable, q("150Mi"))
                },
                Threshold {
                    min_reclaim: Some(q("1Gi")),
                    ..hard(Signal::NodeFsAvailable, q("100Mi"))
                },
            ]),
        ),
        (
            "ignore 0% and 100%",
            false,
            vec![("imagefs.available", "0%"), ("nodefs.available", "100%")],
            vec![],
            vec![],
            vec![],
            Ok(vec![]),
        ),
        (
            "invalid-signal",
            false,
            vec![("mem.available", "150Mi")],
            vec![],
            vec![],
            vec![],
            Err("unsupported eviction signal mem.available"),
        ),
        (
            "hard-signal-negative",
            false,
            vec![("memory.available", "-150Mi")],
            vec![],
            vec![],
            vec![],
            Err("eviction threshold memory.available must be positive: -150Mi"),
        ),
        (
            "hard-signal-zero",
            false,
            vec![("memory.available", "0")],
            vec![],
            vec![],
            vec![],
            Err("eviction threshold memory.available must be positive: 0"),
        ),
        (
            "hard-signal-negative-percentage",
            false,
            vec![("memory.available", "-15%")],
            vec![],
            vec![],
            vec![],
            Err("eviction percentage threshold memory.available must be >= 0%: -15%"),
        ),
        (
            "hard-signal-over-100-percentage",
            false,
            vec![("memory.available", "150%")],
            vec![],
            vec![],
            vec![],
            Err("eviction percentage threshold memory.available must be <= 100%: 150%"),
        ),
        (
            "soft-no-grace-period",
            false,
            vec![],
            vec![("memory.available", "150Mi")],
            vec![],
            vec![],
            Err("grace period must be specified for the soft eviction threshold memory.available"),
        ),
        (
            "soft-negative-grace-period",
            false,
            vec![],
            vec![("memory.available", "150Mi")],
            vec![("memory.available", "-30s")],
            vec![],
            Err("invalid eviction grace period specified: -30s, must be a positive value"),
        ),
        (
            "bad grace period",
            false,
            vec![],
            vec![("memory.available", "150Mi")],
            vec![("memory.available", "thirty")],
            vec![],
            Err("time: invalid duration \"thirty\""),
        ),
        (
            "negative-reclaim",
            false,
            vec![],
            vec![],
            vec![],
            vec![("memory.available", "-300Mi")],
            Err("negative eviction minimum reclaim specified for memory.available"),
        ),
        (
            "zero percentage reclaim",
            false,
            vec![],
            vec![],
            vec![],
            vec![("memory.available", "0%")],
            Err("eviction percentage minimum reclaim memory.available must be positive: 0%"),
        ),
        (
            "bad quantity",
            false,
            vec![("memory.available", "lots")],
            vec![],
            vec![],
            vec![],
            Err(nodelet_manifests::quantity::QUANTITY_FORMAT_MESSAGE),
        ),
        (
            "bad percentage",
            false,
            vec![("memory.available", "x%")],
            vec![],
            vec![],
            vec![],
            Err("strconv.ParseFloat: parsing \"x\": invalid syntax"),
        ),
        (
            "percentage reclaim",
            false,
            vec![("pid.available", "10%")],
            vec![],
            vec![],
            vec![("pid.available", "5%")],
            Ok(vec![Threshold {
                min_reclaim: Some(ThresholdValue::Percentage(0.05)),
                ..hard(Signal::PidAvailable, ThresholdValue::Percentage(0.1))
            }]),
        ),
    ];
    for (name, alloc, h, s, g, r, want) in cases {
        let got = parse_threshold_config(alloc, &map(&h), &map(&s), &map(&g), &map(&r));
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
            (Err(e), Err(want)) => assert_eq!(e.to_string(), want, "{name}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn malformed_flag_pairs() {
    let e = args(&["--eviction-hard", "memory.available=1Gi"])
        .config(false)
        .expect_err("malformed");
    assert_eq!(
        e.to_string(),
        "invalid argument \"memory.available=1Gi\" for \"--eviction-hard\" flag: malformed pair, expect string<string"
    );
    let e = args(&[
        "--eviction-soft",
        "memory.available<1Gi",
        "--eviction-soft-grace-period",
        "memory.available<1m",
    ])
    .config(false)
    .expect_err("malformed");
    assert!(e.to_string().ends_with("expect string=string"), "{e}");
    let c = args(&[
        "--eviction-soft",
        "memory.available<1Gi",
        "--eviction-soft-grace-period",
        "memory.available=1m30s",
    ])
    .config(false)
    .expect("config");
    let soft = c.thresholds.iter().find(|t| !t.is_hard()).expect("soft");
    assert_eq!(soft.grace_period, Duration::from_secs(90));
}
