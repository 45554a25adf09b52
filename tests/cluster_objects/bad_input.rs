//! Bad input around ConfigMap and Secret volumes (issue 12), against the real
//! apiserver: keys that aren't valid file names and objects over 1 MiB are refused
//! by the apiserver with the very message nodelet's own validation gives standalone
//! documents; an object deleted under a running pod leaves the volume's last
//! contents (upstream's kubelet only fails the next set-up, with `FailedMount`); a Secret changed while
//! its pod terminates neither crashes the agent nor writes into the torn-down
//! volume; once the pod is gone no tmpfs is mounted under its directory and the
//! directory is gone.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};

use super::support::cluster::{
    TestNamespace, admin_client, admin_kubeconfig, joined_world, wait_ready,
};
use super::support::{BUSYBOX, phase, wait_for};
use super::{APISERVER, container_id, from_json, sh, wait_running};

/// The message nodelet gives a standalone ConfigMap document (pushed, as its push
/// API words errors like the apiserver).
fn nodelet_message(object: serde_json::Value) -> String {
    let yaml = serde_json::to_string(&object).expect("json");
    let mut store = nodelet_sources::PushStore::new("n");
    store
        .apply(yaml.as_bytes(), Some("application/json"))
        .expect_err("nodelet refuses it")
        .to_string()
}

/// The apiserver's message for creating `object`.
async fn apiserver_message(client: &kube::Client, ns: &str, object: &serde_json::Value) -> String {
    let pp = PostParams::default();
    let result = if object["kind"] == "Secret" {
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&pp, &from_json(object.clone()))
            .await
            .map(|_| ())
    } else {
        Api::<ConfigMap>::namespaced(client.clone(), ns)
            .create(&pp, &from_json(object.clone()))
            .await
            .map(|_| ())
    };
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        other => panic!("the apiserver took {object}: {other:?}"),
    }
}

/// Mount points in this mount namespace (the agent's) whose path contains `part`.
fn mounts_with(part: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.contains(part))
        .map(str::to_owned)
        .collect()
}

pub(super) async fn run() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let ns = TestNamespace::new(&client, &kubeconfig, "nlb", &w.id).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();

    // Keys that aren't file names, and too much data: the apiserver refuses them, and
    // nodelet refuses the same standalone documents with the same words.
    let big = "x".repeat(nodelet_manifests::objects::MAX_OBJECT_DATA + 1);
    let mut objects: Vec<serde_json::Value> = ["a/b", "..data", "..", ".", "a b", ""]
        .iter()
        .enumerate()
        .flat_map(|(i, key)| {
            [
                serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("key{i}")}, "data": {*key: "1"}}),
                serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("key{i}")}, "stringData": {*key: "1"}}),
            ]
        })
        .collect();
    objects.push(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"k": big}}));
    objects.push(serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "big"}, "stringData": {"k": big}}));
    // One bad thing per object: the apiserver walks keys in Go's map order.
    let mut differ = Vec::new();
    for object in objects {
        let theirs = apiserver_message(&client, &ns.name, &object).await;
        let ours = nodelet_message(object.clone());
        if ours != theirs {
            differ.push(format!(
                "{} {}:\n  apiserver: {theirs}\n  nodelet:   {ours}",
                object["kind"], object["metadata"]["name"]
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    // A pod's item path that climbs out of the volume never reaches a node.
    let climbing: Pod = from_json(serde_json::json!({
        "metadata": {"name": "climb"},
        "spec": {
            "nodeName": w.node,
            "volumes": [{"name": "v", "configMap": {"name": "c", "items": [{"key": "k", "path": "../x"}]}}],
            "containers": [{"name": "main", "image": BUSYBOX}]
        }
    }));
    match pods.create(&pp, &climbing).await {
        Err(kube::Error::Api(status)) => assert!(
            status
                .message
                .contains("spec.volumes[0].configMap.items[0].path"),
            "{status:?}"
        ),
        other => panic!("the apiserver took the pod: {other:?}"),
    }

    config_maps
        .create(
            &pp,
            &from_json(serde_json::json!({"metadata": {"name": "doomed"}, "data": {"v": "last"}})),
        )
        .await
        .expect("configmap");
    secrets
        .create(
            &pp,
            &from_json(
                serde_json::json!({"metadata": {"name": "moving"}, "stringData": {"v": "0"}}),
            ),
        )
        .await
        .expect("secret");
    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    let pod: Pod = from_json(serde_json::json!({
        "metadata": {"name": "holder"},
        "spec": {
            "nodeName": w.node, "terminationGracePeriodSeconds": 10,
            "volumes": [
                {"name": "doomed", "configMap": {"name": "doomed"}},
                {"name": "moving", "secret": {"secretName": "moving"}}
            ],
            "containers": [{
                "name": "main", "image": BUSYBOX,
                // Takes 4 s to stop: the Secret changes meanwhile.
                "command": ["sh", "-c", "trap 'sleep 4; exit 0' TERM; sleep 3600 & wait; wait"],
                "volumeMounts": [
                    {"name": "doomed", "mountPath": "/doomed"},
                    {"name": "moving", "mountPath": "/moving"}
                ]
            }]
        }
    }));
    pods.create(&pp, &pod).await.expect("pod");
    let running = wait_running(&pods, "holder", Duration::from_secs(60)).await;
    let uid = running.metadata.uid.clone().expect("uid");
    let id = container_id(&running).expect("id");
    let pod_dir = w.root.join("pods").join(&uid);
    assert!(pod_dir.join("volumes").is_dir());
    let tmpfs = mounts_with(&uid);
    assert!(
        tmpfs.iter().any(|m| m.ends_with("/moving")),
        "the secret's tmpfs: {tmpfs:?}"
    );

    // Deleted under the running pod: the volume keeps what it had, past a resync.
    config_maps
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    // Upstream's kubelet fails the volume's next set-up with FailedMount, and the
    // files stay.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let want = "MountVolume.SetUp failed for volume \"doomed\" : configmap \"doomed\" not found";
    wait_for("the FailedMount event", Duration::from_secs(60), || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=holder"))
            .await
            .ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("FailedMount") && e.message.as_deref() == Some(want)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sh(&w, &id, "cat /doomed/v").await, "last");
    let now = pods.get("holder").await.expect("pod");
    assert_eq!(phase(&now), "Running");
    assert_eq!(container_id(&now).as_deref(), Some(id.as_str()));

    // The Secret keeps changing while the pod terminates.
    pods.delete("holder", &DeleteParams::default())
        .await
        .expect("delete the pod");
    for n in 1..=8 {
        secrets
            .patch(
                "moving",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"stringData": {"v": n.to_string()}})),
            )
            .await
            .expect("edit the secret");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_for(
        "the pod gone from the API",
        Duration::from_secs(60),
        || async { pods.get_opt("holder").await.ok()?.is_none().then_some(()) },
    )
    .await;
    wait_for(
        "no mount and no directory left of the pod",
        Duration::from_secs(30),
        || async { (mounts_with(&uid).is_empty() && !pod_dir.exists()).then_some(()) },
    )
    .await;
    // Later changes write nothing back.
    secrets
        .patch(
            "moving",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"stringData": {"v": "after"}})),
        )
        .await
        .expect("edit the secret");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(mounts_with(&uid).is_empty(), "{:?}", mounts_with(&uid));
    assert!(!pod_dir.exists(), "{} came back", pod_dir.display());
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    assert!(!log.contains("panicked"), "the agent panicked");
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}
