//! Unit tests of `status.rs`.

use super::*;
use std::collections::BTreeMap;

fn info(state: RtState, attempt: u32, exit: Option<i32>) -> ContainerInfo {
    ContainerInfo {
        id: format!("id{attempt}"),
        pod_uid: "u".into(),
        name: "c".into(),
        attempt,
        sandbox_id: "s".into(),
        image: "img".into(),
        image_id: "sha256:x".into(),
        state,
        pid: 1,
        created_at: SystemTime::UNIX_EPOCH,
        started_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(10)),
        finished_at: exit.map(|_| SystemTime::UNIX_EPOCH + Duration::from_secs(20)),
        exit_code: exit,
        log_path: "/l".into(),
        labels: BTreeMap::new(),
    }
}

fn view(current: Option<ContainerInfo>, w: Option<&str>) -> ContainerView {
    ContainerView {
        name: "c".into(),
        image: "img".into(),
        current,
        previous: None,
        waiting: w.map(|r| Waiting {
            reason: r.into(),
            message: None,
        }),
        ..Default::default()
    }
}

fn named(name: &str, mut s: ContainerStatus) -> ContainerStatus {
    s.name = name.into();
    s
}

fn init_spec(policy: &str, inits: &[&str]) -> k8s_openapi::api::core::v1::PodSpec {
    k8s_openapi::api::core::v1::PodSpec {
        restart_policy: Some(policy.into()),
        init_containers: Some(
            inits
                .iter()
                .map(|n| k8s_openapi::api::core::v1::Container {
                    name: (*n).into(),
                    ..Default::default()
                })
                .collect(),
        ),
        containers: vec![k8s_openapi::api::core::v1::Container {
            name: "c".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn phases_with_init_containers() {
    let running = container_status(&view(Some(info(RtState::Running, 0, None)), None));
    let ok = container_status(&view(Some(info(RtState::Exited, 0, Some(0))), None));
    let failed = container_status(&view(Some(info(RtState::Exited, 0, Some(1))), None));
    let backoff = container_status(&view(
        Some(info(RtState::Exited, 1, Some(1))),
        Some("CrashLoopBackOff"),
    ));
    let initializing = container_status(&view(None, Some("PodInitializing")));
    let spec = init_spec("Always", &["a", "b"]);
    let cases: Vec<(&str, Vec<ContainerStatus>, ContainerStatus, &str)> = vec![
        (
            "Always",
            vec![named("a", running.clone())],
            initializing.clone(),
            "Pending",
        ),
        (
            "Always",
            vec![named("a", ok.clone()), named("b", running.clone())],
            initializing.clone(),
            "Pending",
        ),
        (
            "Always",
            vec![named("a", ok.clone()), named("b", ok.clone())],
            running.clone(),
            "Running",
        ),
        (
            "Always",
            vec![named("a", backoff.clone())],
            initializing.clone(),
            "Pending",
        ),
        (
            "Never",
            vec![named("a", failed.clone())],
            initializing.clone(),
            "Failed",
        ),
        (
            "OnFailure",
            vec![named("a", failed.clone())],
            initializing.clone(),
            "Pending",
        ),
    ];
    for (policy, init, app, want) in cases {
        let mut spec = spec.clone();
        spec.restart_policy = Some(policy.into());
        assert_eq!(pod_phase(&spec, &init, &[app]), want, "{policy} {init:?}");
    }
}

#[test]
fn init_status_column_like_kubectl() {
    let mk = |init: Vec<ContainerStatus>| {
        let mut pod = pod_with(
            vec![container_status(&view(None, Some("PodInitializing")))],
            "Pending",
        );
        pod.spec = Some(init_spec("Always", &["a", "b"]));
        if let Some(s) = pod.status.as_mut() {
            s.init_container_statuses = Some(init);
        }
        pod
    };
    let running = container_status(&view(Some(info(RtState::Running, 0, None)), None));
    let ok = container_status(&view(Some(info(RtState::Exited, 0, Some(0))), None));
    let failed = container_status(&view(Some(info(RtState::Exited, 0, Some(1))), None));
    let backoff = container_status(&view(
        Some(info(RtState::Exited, 1, Some(1))),
        Some("CrashLoopBackOff"),
    ));
    let cases = [
        (vec![named("a", running.clone())], "Init:0/2"),
        (
            vec![named("a", ok.clone()), named("b", running.clone())],
            "Init:1/2",
        ),
        (vec![named("a", failed)], "Init:Error"),
        (vec![named("a", backoff)], "Init:CrashLoopBackOff"),
        (
            vec![named("a", ok.clone()), named("b", ok)],
            "PodInitializing",
        ),
    ];
    for (init, want) in cases {
        assert_eq!(status_column(&mk(init)), want);
    }
}

#[test]
fn phases_follow_get_phase() {
    let running = container_status(&view(Some(info(RtState::Running, 0, None)), None));
    let ok = container_status(&view(Some(info(RtState::Exited, 0, Some(0))), None));
    let failed = container_status(&view(Some(info(RtState::Exited, 0, Some(3))), None));
    let creating = container_status(&view(None, None));
    let backoff = container_status(&view(
        Some(info(RtState::Exited, 1, Some(1))),
        Some("CrashLoopBackOff"),
    ));
    let cases: &[(&str, Vec<ContainerStatus>, &str)] = &[
        ("Always", vec![running.clone()], "Running"),
        ("Always", vec![creating.clone()], "Pending"),
        ("Always", vec![running.clone(), creating.clone()], "Pending"),
        ("Never", vec![ok.clone()], "Succeeded"),
        ("Never", vec![failed.clone()], "Failed"),
        ("Never", vec![ok.clone(), failed.clone()], "Failed"),
        ("Never", vec![ok.clone(), running.clone()], "Running"),
        ("OnFailure", vec![ok.clone()], "Succeeded"),
        ("OnFailure", vec![failed.clone()], "Running"),
        ("Always", vec![ok.clone()], "Running"),
        ("Always", vec![backoff.clone()], "Running"),
    ];
    for (policy, statuses, want) in cases {
        assert_eq!(phase(policy, statuses), *want, "{policy} {statuses:?}");
    }
}

#[test]
fn terminated_reasons_and_last_state() {
    let s = container_status(&view(Some(info(RtState::Exited, 0, Some(3))), None));
    let t = s.state.and_then(|s| s.terminated).expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
    assert_eq!(t.container_id.as_deref(), Some("containerd://id0"));

    let s = container_status(&view(
        Some(info(RtState::Exited, 2, Some(1))),
        Some("CrashLoopBackOff"),
    ));
    assert_eq!(s.restart_count, 2);
    assert_eq!(
        s.state
            .and_then(|s| s.waiting)
            .and_then(|w| w.reason)
            .as_deref(),
        Some("CrashLoopBackOff")
    );
    assert_eq!(
        s.last_state.and_then(|l| l.terminated).map(|t| t.exit_code),
        Some(1)
    );
}

fn pod_with(statuses: Vec<ContainerStatus>, phase: &str) -> Pod {
    Pod {
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            containers: statuses
                .iter()
                .map(|s| k8s_openapi::api::core::v1::Container {
                    name: s.name.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: Some(statuses),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn status_column_like_kubectl() {
    let running = container_status(&view(Some(info(RtState::Running, 0, None)), None));
    let ok = container_status(&view(Some(info(RtState::Exited, 0, Some(0))), None));
    let backoff = container_status(&view(
        Some(info(RtState::Exited, 1, Some(1))),
        Some("CrashLoopBackOff"),
    ));
    let pull = container_status(&view(None, Some("ErrImagePull")));
    let cases = [
        (pod_with(vec![running.clone()], "Running"), "Running", "1/1"),
        (pod_with(vec![ok.clone()], "Succeeded"), "Completed", "0/1"),
        (
            pod_with(vec![backoff], "Running"),
            "CrashLoopBackOff",
            "0/1",
        ),
        (pod_with(vec![pull], "Pending"), "ErrImagePull", "0/1"),
        (pod_with(vec![ok, running], "Running"), "Running", "1/2"),
    ];
    for (pod, status, ready) in cases {
        assert_eq!(status_column(&pod), status);
        assert_eq!(ready_column(&pod), ready);
    }
}

#[test]
fn human_durations() {
    for (secs, want) in [
        (5, "5s"),
        (119, "119s"),
        (200, "3m20s"),
        (720, "12m"),
        (4 * 3600 + 60, "4h1m"),
        (9 * 3600, "9h"),
        (3 * 86400 + 3600, "3d1h"),
    ] {
        assert_eq!(human_duration(Duration::from_secs(secs)), want);
    }
}

#[test]
fn transition_time_kept_while_status_unchanged() {
    let pod = pod_with(vec![], "Running");
    let facts = PodFacts {
        sandbox_ready: true,
        pod_ips: vec!["10.0.0.2".into()],
        host_ip: "192.0.2.1".into(),
        start_time: SystemTime::UNIX_EPOCH,
        failure: None,
        init_required: true,
    };
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
    let first = pod_status(&pod, &[], &[], &facts, None, t0);
    let later = pod_status(
        &pod,
        &[],
        &[],
        &facts,
        Some(&first),
        t0 + Duration::from_secs(50),
    );
    assert_eq!(first.conditions, later.conditions);
    assert_eq!(later.pod_ip.as_deref(), Some("10.0.0.2"));
}

#[test]
fn pod_ips_put_the_node_ips_family_first_as_upstream() {
    let dual = ["fd00::5", "10.0.0.5"];
    assert_eq!(sort_pod_ips(&dual, "192.168.1.2"), ["10.0.0.5", "fd00::5"]);
    assert_eq!(sort_pod_ips(&dual, "2001:db8::2"), ["fd00::5", "10.0.0.5"]);
    // No node IP to go by: IPv4 first.
    assert_eq!(sort_pod_ips(&dual, ""), ["10.0.0.5", "fd00::5"]);
    // One of each family at most, the runtime's first; what does not parse is dropped.
    assert_eq!(
        sort_pod_ips(&["10.0.0.5", "junk", "10.0.0.6", "fd00::6"], "::1"),
        ["fd00::6", "10.0.0.5"]
    );
    // Single-stack pods keep their one IP whatever the node's family.
    assert_eq!(sort_pod_ips(&["fd00::5"], "192.168.1.2"), ["fd00::5"]);
    assert!(sort_pod_ips::<&str>(&[], "192.168.1.2").is_empty());
}
