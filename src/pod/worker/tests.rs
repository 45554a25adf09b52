//! The pod worker on the fake runtime, in paused tokio time: updates in order,
//! crash-loop back-off, termination order and grace periods, deletion.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Outcome, PodWorker};
use crate::pod::fake_runtime::Call;
use crate::pod::mailbox::{Mailbox, Terminate, TerminateReason};
use crate::pod::testing::{Harness, pod, simple_pod, wait_until};

const LONG: Duration = Duration::from_secs(3600);

struct Running {
    mailbox: Mailbox,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Outcome>,
}

fn start(h: &Harness, p: k8s_openapi::api::core::v1::Pod) -> Running {
    let mailbox = Mailbox::new();
    let stop = CancellationToken::new();
    let worker = PodWorker::new(std::sync::Arc::clone(&h.env), p, mailbox.clone());
    let task = tokio::spawn(worker.run(stop.clone()));
    Running {
        mailbox,
        stop,
        task,
    }
}

fn stops(h: &Harness) -> Vec<(Instant, String, Duration)> {
    h.rt.calls()
        .into_iter()
        .filter_map(|(at, c)| match c {
            Call::Stop(name, grace) => Some((at, name, grace)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn updates_arrive_in_order_and_the_newest_wins() {
    let h = Harness::new();
    let mut p = simple_pod("u1", "Always");
    let w = start(&h, p.clone());
    wait_until(LONG, "running", || h.running("c")).await;
    for v in 1..=20 {
        p.metadata.labels = Some([("v".to_owned(), v.to_string())].into());
        w.mailbox.update(p.clone());
    }
    w.mailbox.sync();
    wait_until(LONG, "label v=20", || {
        h.store
            .snapshot()
            .get("u1")
            .and_then(|p| p.metadata.labels.as_ref()?.get("v").cloned())
            .as_deref()
            == Some("20")
    })
    .await;
    // A label change restarts nothing.
    assert_eq!(h.creates("c"), 1);
    w.stop.cancel();
    assert_eq!(w.task.await.expect("join"), Outcome::Shutdown);
    assert!(h.running("c"), "the agent stopping leaves the pod running");
}

#[tokio::test(start_paused = true)]
async fn crash_backoff_doubles_to_five_minutes_and_resets_after_ten_minutes() {
    let h = Harness::new();
    let w = start(&h, simple_pod("u1", "Always"));
    wait_until(LONG, "first start", || h.running("c")).await;
    let mut gaps = Vec::new();
    for n in 1..=8 {
        h.rt.exit("c", 1);
        let exited = Instant::now();
        w.mailbox.sync();
        if n >= 2 {
            wait_until(LONG, "CrashLoopBackOff", || {
                h.waiting("u1", "c")
                    .is_some_and(|(reason, _)| reason == "CrashLoopBackOff")
            })
            .await;
        }
        wait_until(LONG, "restart", || {
            h.creates("c") == n + 1 && h.running("c")
        })
        .await;
        gaps.push(exited.elapsed().as_secs());
    }
    // The first restart is immediate; then 10 s doubling, capped at 300 s.
    assert_eq!(gaps, vec![0, 10, 20, 40, 80, 160, 300, 300]);

    // Ten minutes of running resets it: the next restart is immediate again.
    tokio::time::sleep(Duration::from_secs(601)).await;
    h.rt.exit("c", 1);
    let exited = Instant::now();
    w.mailbox.sync();
    wait_until(LONG, "restart after reset", || h.creates("c") == 10).await;
    assert_eq!(exited.elapsed().as_secs(), 0);
    h.rt.exit("c", 1);
    w.mailbox.sync();
    wait_until(LONG, "back-off after reset", || {
        h.waiting("u1", "c").is_some_and(|(r, m)| {
            r == "CrashLoopBackOff" && m.starts_with("back-off 10s restarting failed container=c")
        })
    })
    .await;
    w.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn termination_runs_prestop_then_apps_then_sidecars_last_to_first() {
    let h = Harness::new();
    let p = pod(
        "u1",
        serde_json::json!({
            "spec": {
                "terminationGracePeriodSeconds": 30,
                "initContainers": [
                    {"name": "s1", "image": "busybox", "restartPolicy": "Always",
                     "lifecycle": {"preStop": {"exec": {"command": ["s1-hook"]}}}},
                    {"name": "s2", "image": "busybox", "restartPolicy": "Always"}
                ],
                "containers": [
                    {"name": "a", "image": "busybox",
                     "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}},
                    {"name": "b", "image": "busybox"}
                ]
            }
        }),
    );
    let w = start(&h, p);
    wait_until(LONG, "all running", || {
        ["s1", "s2", "a", "b"].iter().all(|n| h.running(n))
    })
    .await;
    let t0 = Instant::now();
    w.mailbox.terminate(Terminate {
        reason: TerminateReason::Removed,
        grace: None,
    });
    assert_eq!(w.task.await.expect("join"), Outcome::Removed);
    let stops = stops(&h);
    let order: Vec<&str> = stops.iter().map(|(_, n, _)| n.as_str()).collect();
    let secs = |name: &str| {
        stops
            .iter()
            .find(|(_, n, _)| n == name)
            .map(|(at, _, g)| (at.duration_since(t0).as_secs(), g.as_secs()))
    };
    // b is signalled at once with the whole grace period; a after its 3 s hook with
    // what is left; the sidecars only once a has stopped, s2 (declared last) before
    // s1, with what is left.
    assert_eq!(secs("b"), Some((0, 30)));
    assert_eq!(secs("a"), Some((3, 27)));
    assert_eq!(order[2..], ["s2", "s1"]);
    assert_eq!(secs("s2"), Some((3, 27)));
    assert_eq!(secs("s1"), Some((3, 27)));
    // s1's preStop hook ran at the start, before any signal.
    let calls = h.rt.call_list();
    let hook = calls
        .iter()
        .position(|c| matches!(c, Call::Exec(n, _) if n == "s1"))
        .expect("s1 hook");
    let first_stop = calls
        .iter()
        .position(|c| matches!(c, Call::Stop(..)))
        .expect("stops");
    assert!(hook < first_stop);
    // Everything is gone, and so is the pod's status.
    assert!(h.rt.containers().is_empty());
    assert!(h.rt.sandboxes().is_empty());
    assert!(h.store.snapshot().get("u1").is_none());
}

#[tokio::test(start_paused = true)]
async fn deletion_uses_the_sources_grace_period_and_zero_means_one_second() {
    for (deletion_grace, expect) in [(5, 5), (0, 1)] {
        let h = Harness::new();
        let mut p = simple_pod("u1", "Always");
        let w = start(&h, p.clone());
        wait_until(LONG, "running", || h.running("c")).await;
        h.rt.stubborn("c");
        p.metadata.deletion_timestamp = crate::pod::status::k8s_time(crate::pod::testing::epoch());
        p.metadata.deletion_grace_period_seconds = Some(deletion_grace);
        let t0 = Instant::now();
        w.mailbox.update(p);
        w.mailbox.terminate(Terminate {
            reason: TerminateReason::Deleted,
            grace: Some(Duration::from_secs(deletion_grace.unsigned_abs())),
        });
        assert_eq!(w.task.await.expect("join"), Outcome::Removed);
        let s = stops(&h);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].2, Duration::from_secs(expect));
        assert_eq!(t0.elapsed().as_secs(), expect);
    }
}

#[tokio::test(start_paused = true)]
async fn a_shorter_grace_period_while_terminating_restarts_the_stop() {
    let h = Harness::new();
    let mut p = simple_pod("u1", "Always");
    let w = start(&h, p.clone());
    wait_until(LONG, "running", || h.running("c")).await;
    h.rt.stubborn("c");
    let t0 = Instant::now();
    w.mailbox.terminate(Terminate {
        reason: TerminateReason::Removed,
        grace: None,
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.metadata.deletion_timestamp = crate::pod::status::k8s_time(crate::pod::testing::epoch());
    p.metadata.deletion_grace_period_seconds = Some(3);
    w.mailbox.update(p.clone());
    // A longer one afterwards changes nothing: grace periods only shorten.
    p.metadata.deletion_grace_period_seconds = Some(20);
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.mailbox.update(p);
    assert_eq!(w.task.await.expect("join"), Outcome::Removed);
    let graces: Vec<u64> = stops(&h).iter().map(|(_, _, g)| g.as_secs()).collect();
    assert_eq!(graces, vec![30, 3]);
    assert_eq!(t0.elapsed().as_secs(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_finished_pod_is_terminated_and_never_restarted() {
    let h = Harness::new();
    let mut p = simple_pod("u1", "Never");
    let spec = p.spec.as_mut().expect("spec");
    spec.volumes = Some(vec![k8s_openapi::api::core::v1::Volume {
        name: "scratch".into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    }]);
    let w = start(&h, p);
    wait_until(LONG, "running", || h.running("c")).await;
    let volumes = h.env.root_dir.join("pods/u1/volumes");
    assert!(volumes.join("kubernetes.io~empty-dir/scratch").is_dir());
    h.rt.exit("c", 0);
    w.mailbox.sync();
    wait_until(LONG, "Succeeded", || {
        h.phase("u1").as_deref() == Some("Succeeded")
    })
    .await;
    wait_until(LONG, "sandbox gone", || h.rt.sandboxes().is_empty()).await;
    // Its volumes are given back; the pod's directory stays until it is removed.
    wait_until(LONG, "volumes torn down", || !volumes.exists()).await;
    assert!(h.env.root_dir.join("pods/u1").is_dir());
    // Updates and syncs start nothing again; the dead container is kept.
    let mut p = simple_pod("u1", "Never");
    p.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
    w.mailbox.update(p);
    w.mailbox.sync();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.creates("c"), 1);
    assert_eq!(h.rt.containers().len(), 1);
    assert_eq!(h.phase("u1").as_deref(), Some("Succeeded"));
    // Removal from the source then removes it.
    w.mailbox.terminate(Terminate {
        reason: TerminateReason::Removed,
        grace: None,
    });
    assert_eq!(w.task.await.expect("join"), Outcome::Removed);
    assert!(h.rt.containers().is_empty());
    assert!(!h.env.root_dir.join("pods/u1").exists());
}

#[tokio::test(start_paused = true)]
async fn a_termination_interrupts_a_long_start() {
    let h = Harness::new();
    let containers: Vec<serde_json::Value> = (0..50)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "image": "busybox"}))
        .collect();
    let p = pod(
        "u1",
        serde_json::json!({"spec": {"containers": containers}}),
    );
    let w = start(&h, p);
    let creates = || {
        h.rt.call_list()
            .iter()
            .filter(|c| matches!(c, Call::Create(..)))
            .count()
    };
    // The fake yields in each create: the test gets in while the pod starts.
    while creates() < 5 {
        tokio::task::yield_now().await;
    }
    w.mailbox.terminate(Terminate {
        reason: TerminateReason::Removed,
        grace: None,
    });
    assert_eq!(w.task.await.expect("join"), Outcome::Removed);
    assert!(h.rt.containers().is_empty());
    let created =
        h.rt.call_list()
            .iter()
            .filter(|c| matches!(c, Call::Create(..)))
            .count();
    assert!(
        created < 50,
        "{created} containers created for a removed pod"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_sandbox_shows_container_creating_and_is_retried() {
    let h = Harness::new();
    h.rt.fail_next("run sandbox", "cni: no IP addresses available");
    let t0 = Instant::now();
    let w = start(&h, simple_pod("u1", "Always"));
    wait_until(LONG, "ContainerCreating", || {
        h.waiting("u1", "c").is_some_and(|(r, m)| {
            r == "ContainerCreating" && m.contains("no IP addresses available")
        })
    })
    .await;
    assert_eq!(h.phase("u1").as_deref(), Some("Pending"));
    wait_until(LONG, "running", || h.running("c")).await;
    // Upstream's first sandbox back-off.
    assert_eq!(t0.elapsed().as_secs(), 10);
    let events = h.env.events.list(None).items;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox")),
        "{events:?}"
    );
    w.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_oom_kill_reported_after_the_exit_still_shows() {
    let h = Harness::new();
    let w = start(&h, simple_pod("u1", "Never"));
    wait_until(LONG, "running", || h.running("c")).await;
    let id = h.rt.containers()[0].id.clone();
    h.rt.exit("c", 137);
    w.mailbox.sync();
    wait_until(LONG, "Failed", || {
        h.phase("u1").as_deref() == Some("Failed")
    })
    .await;
    let reason = || {
        h.store.snapshot().get("u1").and_then(|p| {
            p.status.as_ref()?.container_statuses.as_ref()?[0]
                .state
                .as_ref()?
                .terminated
                .as_ref()?
                .reason
                .clone()
        })
    };
    assert_eq!(reason().as_deref(), Some("Error"));
    // containerd's OOM event came late (its lookup raced the exit).
    w.mailbox.oom(id);
    wait_until(LONG, "OOMKilled", || {
        reason().as_deref() == Some("OOMKilled")
    })
    .await;
    w.stop.cancel();
}

#[tokio::test]
async fn a_waiting_worker_holds_little() {
    // A pod's task lives as long as the pod; a sync's state machine (runtime calls,
    // volumes, images) is boxed while the step runs instead of being part of it.
    let h = Harness::new();
    let mut w = PodWorker::new(
        std::sync::Arc::clone(&h.env),
        simple_pod("u1", "Always"),
        Mailbox::new(),
    );
    let stop = CancellationToken::new();
    let step = std::mem::size_of_val(&w.step(&stop));
    let run = std::mem::size_of_val(&w.run(stop));
    assert!(
        run < 8 * 1024 && run < step,
        "the worker's task is {run} bytes, a step {step}"
    );
}
