//! End-to-end: RuntimeClass handlers (issue 15) standalone, where a pod's
//! `runtimeClassName` names the handler. A pod on `crun` runs, and crun (not runc)
//! made its pause and app containers: the runc shim keeps each container's runtime
//! state under `/run/containerd/runc/<namespace>/<id>`, where runc writes
//! `state.json` and crun writes `status`. A pod naming a handler the node doesn't
//! have fails with containerd's message while a pod beside it runs.

mod support;

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use support::events::wait_event;
use support::{BUSYBOX, World, container_status, crun_handler_args, phase};

/// Where the runc shim (default `Root`) keeps the OCI runtime's state of a container.
fn state_dir(w: &World, id: &str) -> PathBuf {
    Path::new("/run/containerd/runc")
        .join(&w.namespace)
        .join(id)
}

/// Which OCI runtime made the container, from what it left in its state directory.
fn made_by(w: &World, id: &str) -> &'static str {
    let dir = state_dir(w, id);
    match (dir.join("status").exists(), dir.join("state.json").exists()) {
        (true, false) => "crun",
        (false, true) => "runc",
        _ => "unknown",
    }
}

fn sleeper(name: &str, class: Option<&str>) -> String {
    let class = class.map_or(String::new(), |c| format!("  runtimeClassName: {c}\n"));
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{class}  \
         terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    \
         command: [sleep, \"3600\"]\n"
    )
}

fn container_id(pod: &Pod) -> String {
    container_status(pod, "main")
        .and_then(|s| s.container_id.clone())
        .and_then(|id| id.strip_prefix("containerd://").map(str::to_owned))
        .expect("a container ID")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_runs_its_pod_and_an_unknown_handler_fails_only_that_pod() {
    let mut w = World::new().await;
    w.extra_args.extend(crun_handler_args());
    w.write_manifest("on-crun.yaml", &sleeper("on-crun", Some("crun")));
    w.write_manifest("on-runc.yaml", &sleeper("on-runc", None));
    w.write_manifest("nowhere.yaml", &sleeper("nowhere", Some("nope")));
    w.start_agent().await;

    let crun = w
        .wait_pod("on-crun", "Running", |p| phase(p) == "Running")
        .await;
    let runc = w
        .wait_pod("on-runc", "Running", |p| phase(p) == "Running")
        .await;
    // The status shows the class as given.
    assert_eq!(
        crun.spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.as_deref()),
        Some("crun")
    );

    // crun made the app container and the pause container of its pod; runc made
    // those of the pod beside it (so the check tells the two apart).
    let rt = w.runtime().await;
    let sandboxes = nodelet_cri::runtime::Runtime::list_sandboxes(&rt, None)
        .await
        .expect("list sandboxes");
    let sandbox_of = |name: &str| {
        sandboxes
            .iter()
            .find(|s| s.pod.name.starts_with(name))
            .unwrap_or_else(|| panic!("{name}'s sandbox in {sandboxes:?}"))
            .clone()
    };
    let (crun_sb, runc_sb) = (sandbox_of("on-crun"), sandbox_of("on-runc"));
    assert_eq!(crun_sb.runtime_handler, "crun");
    assert_eq!(runc_sb.runtime_handler, "");
    assert_eq!(made_by(&w, &container_id(&crun)), "crun");
    assert_eq!(made_by(&w, &crun_sb.id), "crun");
    assert_eq!(made_by(&w, &container_id(&runc)), "runc");
    assert_eq!(made_by(&w, &runc_sb.id), "runc");
    // The container record carries the handler's options for the shim.
    let info = w.ctr(&["containers", "info", &container_id(&crun)]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("containerd.runc.v1.Options"), "{info}");

    // The unknown handler: that pod waits in ContainerCreating with containerd's
    // message and a FailedCreatePodSandBox event; nothing of it reached containerd.
    // Upstream's text: containerd's CRI answer as the kubelet's gRPC client shows it.
    let want = "rpc error: code = Unknown desc = failed to get sandbox runtime: no runtime for \"nope\" is configured";
    let nowhere = w
        .wait_pod("nowhere", "the handler's error", |p| {
            container_status(p, "main")
                .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.message.clone())
                .is_some_and(|m| m.contains(want))
        })
        .await;
    assert_eq!(phase(&nowhere), "Pending");
    let waiting = container_status(&nowhere, "main")
        .and_then(|s| s.state.as_ref()?.waiting.clone())
        .expect("waiting");
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    assert_eq!(
        waiting.message.as_deref(),
        Some(format!("failed to create pod sandbox: {want}").as_str())
    );
    let event = wait_event(&w, "nowhere", "FailedCreatePodSandBox", |_| true).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.message.as_deref(),
        Some(format!("Failed to create pod sandbox: {want}").as_str())
    );
    let sandboxes = nodelet_cri::runtime::Runtime::list_sandboxes(&rt, None)
        .await
        .expect("list sandboxes");
    assert!(
        !sandboxes.iter().any(|s| s.pod.name.starts_with("nowhere")),
        "{sandboxes:?}"
    );
    // The others kept running through it.
    for name in ["on-crun", "on-runc"] {
        let p = w.pod(name).await.expect("pod");
        assert_eq!(phase(&p), "Running", "{name}");
    }
}
