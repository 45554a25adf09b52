//! End-to-end against the real kube-apiserver tier (issue 15, RuntimeClass): a pod
//! whose `runtimeClassName` names a RuntimeClass with handler `crun` runs on crun,
//! and a pod whose RuntimeClass is gone by the time the node sees it fails with
//! upstream's `runtimeclass.node.k8s.io "x" not found` while the other keeps running.
//! (The apiserver's RuntimeClass admission refuses a pod naming a missing class at
//! creation, so the class is deleted while the agent is stopped.) Needs
//! `NODELET_TEST_KUBECONFIG` (see `support::cluster`) and the test containerd.

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use support::cluster::{TestNamespace, admin_client, admin_kubeconfig, joined_world, wait_ready};
use support::{BUSYBOX, container_status, crun_handler_args, phase, wait_for};

fn pod(name: &str, node: &str, class: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "runtimeClassName": class,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"]}]
        }
    }))
    .expect("pod")
}

fn runtime_class(name: &str, handler: &str) -> RuntimeClass {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": name}, "handler": handler
    }))
    .expect("runtime class")
}

/// Deletes the test's RuntimeClasses (cluster-scoped) when the test ends.
struct Classes(Api<RuntimeClass>, Vec<String>);

impl Drop for Classes {
    fn drop(&mut self) {
        let (api, names) = (self.0.clone(), std::mem::take(&mut self.1));
        std::thread::scope(|s| {
            s.spawn(|| {
                let Ok(rt) = tokio::runtime::Runtime::new() else {
                    return;
                };
                rt.block_on(async {
                    for n in names {
                        let _ = api.delete(&n, &DeleteParams::default()).await;
                    }
                });
            });
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_class_selects_crun_and_a_missing_one_fails_only_its_pod() {
    let kubeconfig = admin_kubeconfig();
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    w.extra_args.extend(crun_handler_args());
    let client = admin_client(&kubeconfig).await;
    let ns = TestNamespace::new(&client, &kubeconfig, "nlt", &w.id).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    let (fast, gone) = (format!("fast-{}", w.id), format!("gone-{}", w.id));
    let _classes = Classes(classes.clone(), vec![fast.clone(), gone.clone()]);
    classes
        .create(&PostParams::default(), &runtime_class(&fast, "crun"))
        .await
        .expect("create RuntimeClass fast");

    // The apiserver's own admission refuses a class that doesn't exist.
    let refused = pods
        .create(&PostParams::default(), &pod("early", &w.node, &gone))
        .await
        .expect_err("admission refuses a missing RuntimeClass");
    assert!(
        refused
            .to_string()
            .contains(&format!("RuntimeClass \"{gone}\" not found")),
        "{refused}"
    );

    let nodes: Api<Node> = Api::all(client.clone());
    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    pods.create(&PostParams::default(), &pod("fast", &w.node, &fast))
        .await
        .expect("create pod fast");
    let running = wait_for(
        "fast Running in the API",
        Duration::from_secs(60),
        || async {
            let p = pods.get_opt("fast").await.ok()??;
            (phase(&p) == "Running").then_some(p)
        },
    )
    .await;
    let id = container_status(&running, "main")
        .and_then(|s| s.container_id.clone())
        .and_then(|id| id.strip_prefix("containerd://").map(str::to_owned))
        .expect("container ID");
    // crun keeps `status` in the shim's state directory, runc `state.json`.
    let state = Path::new("/run/containerd/runc")
        .join(&w.namespace)
        .join(&id);
    assert!(state.join("status").exists(), "{}", state.display());
    assert!(!state.join("state.json").exists(), "{}", state.display());

    // A class deleted after its pod was admitted: the node finds no RuntimeClass.
    w.stop_agent();
    classes
        .create(&PostParams::default(), &runtime_class(&gone, "crun"))
        .await
        .expect("create RuntimeClass gone");
    pods.create(&PostParams::default(), &pod("stale", &w.node, &gone))
        .await
        .expect("create pod stale");
    classes
        .delete(&gone, &DeleteParams::default())
        .await
        .expect("delete RuntimeClass gone");
    w.start_agent().await;
    let want = format!("runtimeclass.node.k8s.io \"{gone}\" not found");
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let event = wait_for(
        "stale's FailedCreatePodSandBox event in the API",
        Duration::from_secs(60),
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some("stale")
                        && e.reason.as_deref() == Some("FailedCreatePodSandBox")
                })
        },
    )
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.message.as_deref(),
        Some(format!("Failed to create pod sandbox: {want}").as_str())
    );
    let stale = wait_for(
        "stale's waiting message",
        Duration::from_secs(30),
        || async {
            let p = pods.get_opt("stale").await.ok()??;
            let waiting = container_status(&p, "main")?
                .state
                .as_ref()?
                .waiting
                .clone()?;
            waiting
                .message
                .as_deref()
                .is_some_and(|m| m.contains(&want))
                .then_some((p, waiting))
        },
    )
    .await;
    assert_eq!(phase(&stale.0), "Pending");
    assert_eq!(stale.1.reason.as_deref(), Some("ContainerCreating"));
    // The pod on the existing class is still running (adopted across the restart).
    let p = pods.get_opt("fast").await.expect("get").expect("fast");
    assert_eq!(phase(&p), "Running");
    w.stop_agent();
    // The node's own credential may list and watch RuntimeClasses (the agent keeps
    // a watch cache of them, as upstream's informer): its watch never failed.
    let log = std::fs::read_to_string(w.agent_log()).expect("agent log");
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("watch failed") && l.contains("runtimeclass"))
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}
