//! End-to-end tests of what a restart and a replaced sandbox leave behind (issue 17):
//! the agent SIGKILLed three times while pods are being created keeps every sandbox
//! that ran (none replaced) and leaves no shim, netns pin, IP, veth or snapshot that
//! belongs to no live sandbox; a sandbox replaced after its pause process died leaves
//! no shim behind, while the pod's status (restart count, last state, exit code)
//! reads as before, also after a restart.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nodelet_cri::runtime::{ContainerState, Runtime as _};
use support::{BUSYBOX, Leftovers, World, container_status, phase, wait_for};

fn pod_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
    )
}

fn running(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    phase(p) == "Running" && container_status(p, "main").is_some_and(|c| c.ready)
}

/// The ready sandboxes, by pod UID.
async fn ready_sandboxes(w: &World) -> BTreeMap<String, String> {
    w.runtime()
        .await
        .list_sandboxes(None)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.ready)
        .map(|s| (s.pod.uid, s.id))
        .collect()
}

/// What the host should hold for the runtime's current objects: one pin, IP, veth,
/// CNI entry (or, with the built-in network, its nft table) and state directory per
/// sandbox, one snapshot per record.
async fn expected(w: &World) -> Leftovers {
    let rt = w.runtime().await;
    let sandboxes = rt.list_sandboxes(None).await.expect("list sandboxes").len();
    let containers = rt
        .list_containers(None)
        .await
        .expect("list containers")
        .len();
    w.expected_leftovers(sandboxes, containers)
}

fn pods_per_kill() -> usize {
    std::env::var("NODELET_TEST_CRASH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Issue 17's scenario: SIGKILL while pods are being created (0.3 s, 0.7 s and
/// 1.5 s after their manifests appear), then a restart, three times, each time with
/// new pods beside those already running (5 a round by default,
/// `NODELET_TEST_CRASH_PODS`, so 15 at the end).
#[tokio::test(flavor = "multi_thread")]
async fn killed_three_times_while_pods_start_keeps_running_sandboxes_and_leaks_nothing() {
    let per = pods_per_kill();
    let mut w = World::new().await;
    let mut names = Vec::new();
    for (round, delay_ms) in [300u64, 700, 1500].into_iter().enumerate() {
        w.start_agent().await;
        let before = ready_sandboxes(&w).await;
        for i in 0..per {
            let name = format!("r{round}p{i}");
            w.write_manifest(&format!("{name}.yaml"), &pod_yaml(&name));
            names.push(name);
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        // What ran just before the kill must run on after it.
        let ran = ready_sandboxes(&w).await;
        w.kill_agent();
        eprintln!(
            "round {round}: killed {delay_ms} ms after {per} manifests; {} sandboxes ran ({} before the round)",
            ran.len(),
            before.len()
        );

        w.start_agent().await;
        for name in &names {
            w.wait_pod(name, "running after the restart", running).await;
        }
        let now = ready_sandboxes(&w).await;
        for (uid, id) in &ran {
            assert_eq!(
                now.get(uid),
                Some(id),
                "round {round}: the running sandbox {id} of pod {uid} was replaced"
            );
        }
        assert_eq!(now.len(), names.len(), "one sandbox a pod: {now:?}");
        // Every shim serves a live sandbox (a pod's containers share its sandbox's
        // shim), and every leftover of a sandbox made when the agent died is gone.
        let live: BTreeSet<&String> = now.values().collect();
        wait_for(
            &format!("round {round}: one shim per live sandbox"),
            Duration::from_secs(30),
            || async {
                let s = w.shims();
                (s.keys().collect::<BTreeSet<_>>() == live).then_some(())
            },
        )
        .await;
        let want = expected(&w).await;
        assert_eq!(
            want.netns_pins,
            names.len(),
            "round {round}: one sandbox a pod"
        );
        let start = std::time::Instant::now();
        loop {
            let now = w.leftovers();
            if now == want {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let cached: Vec<String> = std::fs::read_dir(w.root.join("cni/cache/results"))
                    .map(|d| {
                        d.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
                let strays: Vec<&str> = cached
                    .iter()
                    .filter_map(|c| c.split('-').nth(1))
                    .filter(|id| !live.iter().any(|l| l.as_str() == *id))
                    .collect();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| strays.iter().any(|id| l.contains(id)))
                    .collect();
                panic!(
                    "round {round}: held {now:?}, but the live sandboxes account for {want:?}; cache {cached:?}, live {live:?}; agent log of the strays:\n{}",
                    lines.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        w.kill_agent();
    }

    w.start_agent().await;
    for name in &names {
        std::fs::remove_file(w.manifests.join(format!("{name}.yaml"))).expect("remove");
    }
    wait_for("every pod gone", Duration::from_secs(120), || async {
        let rt = w.runtime().await;
        let empty = rt.list_sandboxes(None).await.ok()?.is_empty()
            && rt.list_containers(None).await.ok()?.is_empty();
        empty.then_some(())
    })
    .await;
    wait_for(
        "no shim and nothing held",
        Duration::from_secs(30),
        || async { (w.shims().is_empty() && w.leftovers() == Leftovers::default()).then_some(()) },
    )
    .await;
    assert!(w.stop_agent().is_some());
}

/// A sandbox whose pause process died is replaced; the old sandbox's exited
/// container keeps its exit code and time in its record, and its task goes, so no
/// shim serves the dead sandbox. The pod's status reads the same as while the task
/// was kept, and again after the agent restarts.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_sandbox_leaves_no_shim_and_the_status_reads_the_same() {
    let mut w = World::new().await;
    w.start_agent().await;
    w.write_manifest("p.yaml", &pod_yaml("replaced"));
    let pod = w.wait_pod("replaced", "running", running).await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let rt = w.runtime().await;
    let old = rt
        .list_sandboxes(Some(&uid))
        .await
        .expect("list sandboxes")
        .into_iter()
        .find(|s| s.ready)
        .expect("a ready sandbox");
    assert_eq!(
        w.shims().keys().collect::<Vec<_>>(),
        vec![&old.id],
        "one shim, the sandbox's"
    );
    // The pod's own pause process, made by this test's agent.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(old.pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the pause process");

    let pod = w
        .wait_pod("replaced", "running in a new sandbox", |p| {
            running(p) && container_status(p, "main").is_some_and(|c| c.restart_count == 1)
        })
        .await;
    let status = container_status(&pod, "main").expect("status").clone();
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("a terminated last state");
    eprintln!("last state after the replacement: {last:?}");
    // `sleep` as PID 1 ignores SIGTERM: the grace period ends with SIGKILL.
    assert_eq!(last.exit_code, 137, "{last:?}");
    assert_eq!(last.reason.as_deref(), Some("Error"), "{last:?}");
    assert!(last.finished_at.is_some() && last.started_at.is_some());

    let new = ready_sandboxes(&w).await;
    let new_id = new.get(&uid).expect("the new sandbox").clone();
    assert_ne!(new_id, old.id);
    wait_for(
        "the old sandbox's shim to exit",
        Duration::from_secs(30),
        || async { (w.shims().keys().collect::<Vec<_>>() == vec![&new_id]).then_some(()) },
    )
    .await;
    // The old instance is kept, exited with its code, without a task.
    let containers = rt.list_containers(Some(&uid)).await.expect("list");
    let dead: Vec<_> = containers
        .iter()
        .filter(|c| c.state == ContainerState::Exited)
        .collect();
    assert_eq!(dead.len(), 1, "{containers:?}");
    assert_eq!(dead[0].exit_code, Some(137));
    let tasks = String::from_utf8_lossy(&w.ctr(&["tasks", "ls"]).stdout).into_owned();
    assert!(!tasks.contains(&dead[0].id), "its task is kept:\n{tasks}");

    // A restarted agent reads the same status from the records.
    w.stop_agent();
    w.start_agent().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = w
        .wait_pod("replaced", "running after the restart", running)
        .await;
    let again = container_status(&pod, "main").expect("status");
    assert_eq!(again.restart_count, 1);
    assert_eq!(again.container_id, status.container_id);
    assert_eq!(
        again.last_state.as_ref().and_then(|s| s.terminated.clone()),
        Some(last)
    );
    std::fs::remove_file(w.manifests.join("p.yaml")).expect("remove manifest");
    wait_for("the pod to go", Duration::from_secs(60), || async {
        (w.shims().is_empty() && w.pod("replaced").await.is_none()).then_some(())
    })
    .await;
}
