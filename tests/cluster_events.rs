//! End-to-end against the real kube-apiserver tier (issue 11, events): the agent
//! with `--kubeconfig` (a `system:node:<node>` credential, so the Node authorizer
//! and RBAC decide) posts what its recorder records as core/v1 Events: a static
//! pod's `Pulled`/`Created`/`Started` with upstream's fields, a crashing
//! container's `BackOff` as one Event whose `count` goes up (and, deleted, created
//! again under its name by the next occurrence), the Node's `Starting`,
//! pressure, `NodeAllocatableEnforced` and `NodeReady`; events of a pod whose
//! namespace is being deleted are refused by the server and dropped without
//! retries, and the rest keep flowing. Needs `NODELET_TEST_KUBECONFIG` besides the
//! test containerd.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use support::cluster::{admin_client, admin_kubeconfig, joined_world, kubectl, wait_ready};
use support::{BUSYBOX, wait_for};

/// Lets a namespace held in Terminating by a finalizer go, when dropped.
struct ReleaseNamespace {
    kubeconfig: PathBuf,
    namespace: String,
}

impl Drop for ReleaseNamespace {
    fn drop(&mut self) {
        let _ = kubectl(
            &self.kubeconfig,
            &[
                "-n",
                &self.namespace,
                "patch",
                "configmap",
                "hold",
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
        );
        let _ = kubectl(
            &self.kubeconfig,
            &[
                "delete",
                "namespace",
                &self.namespace,
                "--ignore-not-found",
                "--wait=false",
            ],
        );
    }
}

fn field_path(e: &Event) -> &str {
    e.involved_object.field_path.as_deref().unwrap_or_default()
}

async fn list(events: &Api<Event>, selector: &str) -> Vec<Event> {
    events
        .list(&ListParams::default().fields(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_and_node_events_reach_the_apiserver_deduplicated() {
    let kubeconfig = admin_kubeconfig();
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let events: Api<Event> = Api::namespaced(client.clone(), "default");

    // A namespace held in Terminating by a ConfigMap's finalizer.
    let doomed = format!("ev-{}", w.id);
    let _release = ReleaseNamespace {
        kubeconfig: kubeconfig.clone(),
        namespace: doomed.clone(),
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": doomed}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create the namespace");
    let hold: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hold", "finalizers": ["nodelet.test/hold"]}
    }))
    .expect("configmap");
    Api::<ConfigMap>::namespaced(client.clone(), &doomed)
        .create(&PostParams::default(), &hold)
        .await
        .expect("create the held configmap");
    namespaces
        .delete(&doomed, &DeleteParams::default())
        .await
        .expect("delete the namespace");

    w.write_manifest(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  \
             - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n  \
             - name: crash\n    image: {BUSYBOX}\n    command: [sh, -c, 'exit 1']\n"
        ),
    );
    w.write_manifest(
        "doomed.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: doomed, namespace: {doomed}}}\nspec:\n  \
             containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ),
    );
    w.start_agent().await;
    let node = wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    let pod = w.wait_pod("web", "known", |_| true).await;
    let uid = pod.metadata.uid.clone().expect("the static pod's UID");
    let name = format!("web-{}", w.node);
    let of_pod = format!("involvedObject.name={name}");

    // Pulled, Created, Started of the container that runs, with upstream's fields.
    let wanted = [
        (
            "Pulled",
            format!("Container image \"{BUSYBOX}\" already present on machine"),
        ),
        ("Created", "Container created".to_owned()),
        ("Started", "Container started".to_owned()),
    ];
    let found = wait_for(
        "Pulled, Created and Started of main in the API",
        Duration::from_secs(60),
        || async {
            let got = list(&events, &of_pod).await;
            let found: Vec<Event> = wanted
                .iter()
                .filter_map(|(reason, message)| {
                    got.iter()
                        .find(|e| {
                            e.reason.as_deref() == Some(reason)
                                && e.message.as_deref() == Some(message)
                                && field_path(e) == "spec.containers{main}"
                        })
                        .cloned()
                })
                .collect();
            (found.len() == wanted.len()).then_some(found)
        },
    )
    .await;
    for e in &found {
        let o = &e.involved_object;
        assert_eq!(o.kind.as_deref(), Some("Pod"), "{e:?}");
        assert_eq!(o.api_version.as_deref(), Some("v1"), "{e:?}");
        assert_eq!(o.namespace.as_deref(), Some("default"), "{e:?}");
        assert_eq!(o.uid.as_deref(), Some(uid.as_str()), "{e:?}");
        assert_eq!(e.type_.as_deref(), Some("Normal"), "{e:?}");
        let source = e.source.clone().unwrap_or_default();
        assert_eq!(source.component.as_deref(), Some("kubelet"));
        assert_eq!(source.host.as_deref(), Some(w.node.as_str()));
        assert_eq!(e.reporting_component.as_deref(), Some("kubelet"));
        assert_eq!(e.reporting_instance.as_deref(), Some(w.node.as_str()));
        assert!(
            e.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&format!("{name}."))),
            "{e:?}"
        );
        assert_eq!(e.count, Some(1), "{e:?}");
    }

    // The crashing container's back-off: one Event, counted up.
    let backoff = wait_for(
        "a BackOff event of crash with count > 1",
        Duration::from_secs(120),
        || async {
            list(&events, &of_pod).await.into_iter().find(|e| {
                e.reason.as_deref() == Some("BackOff")
                    && field_path(e) == "spec.containers{crash}"
                    && e.count.unwrap_or(0) > 1
            })
        },
    )
    .await;
    assert_eq!(backoff.type_.as_deref(), Some("Warning"));
    assert_eq!(
        backoff.message.as_deref(),
        Some(
            format!("Back-off restarting failed container crash in pod {name}_default({uid})")
                .as_str()
        )
    );
    assert!(
        backoff.last_timestamp > backoff.first_timestamp,
        "{backoff:?}"
    );
    let backoffs: Vec<Event> = list(&events, &of_pod)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("BackOff"))
        .collect();
    assert_eq!(backoffs.len(), 1, "one Event, deduplicated: {backoffs:?}");
    eprintln!(
        "figure: BackOff occurrences in one Event: {:?}",
        backoff.count
    );

    // Deleted (as the apiserver's TTL would), the Event comes back under the same
    // name on the next occurrence: the patch finds nothing, a create follows.
    let backoff_name = backoff.metadata.name.clone().expect("a name");
    events
        .delete(&backoff_name, &DeleteParams::default())
        .await
        .expect("delete the BackOff event");
    let again = wait_for(
        "the BackOff event created again",
        Duration::from_secs(150),
        || async { events.get_opt(&backoff_name).await.ok()? },
    )
    .await;
    assert!(again.count > backoff.count, "{again:?}");
    assert_eq!(again.first_timestamp, backoff.first_timestamp);

    // The Node's events: Starting, the pressure conditions, NodeAllocatableEnforced,
    // NodeReady (with the Node's UID).
    let of_node = format!("involvedObject.kind=Node,involvedObject.name={}", w.node);
    let node_events = wait_for("the Node's events", Duration::from_secs(30), || async {
        let got = list(&events, &of_node).await;
        let has = |r: &str| got.iter().any(|e| e.reason.as_deref() == Some(r));
        (has("Starting") && has("NodeReady") && has("NodeAllocatableEnforced")).then_some(got)
    })
    .await;
    let reason = |r: &str| {
        node_events
            .iter()
            .find(|e| e.reason.as_deref() == Some(r))
            .unwrap_or_else(|| panic!("no {r} in {node_events:?}"))
    };
    assert_eq!(
        reason("Starting").message.as_deref(),
        Some("Starting kubelet.")
    );
    assert_eq!(reason("Starting").involved_object.uid, node.metadata.uid);
    let ready = reason("NodeReady");
    assert_eq!(
        ready.message,
        Some(format!("Node {} status is now: NodeReady", w.node))
    );
    assert_eq!(ready.involved_object.uid, node.metadata.uid);
    assert_eq!(ready.involved_object.api_version.as_deref(), Some("v1"));
    assert_eq!(ready.metadata.namespace.as_deref(), Some("default"));
    for pair in [
        ["NodeHasSufficientMemory", "NodeHasInsufficientMemory"],
        ["NodeHasNoDiskPressure", "NodeHasDiskPressure"],
        ["NodeHasSufficientPID", "NodeHasInsufficientPID"],
    ] {
        assert!(
            node_events
                .iter()
                .any(|e| pair.contains(&e.reason.as_deref().unwrap_or_default())),
            "{pair:?} not in {node_events:?}"
        );
    }
    assert_eq!(
        reason("NodeAllocatableEnforced").message.as_deref(),
        Some("Updated Node Allocatable limit across pods")
    );
    // Upstream's node events are Normal; the one Warning, `EvictionThresholdMet`,
    // shows only when this host is short of memory or disk while the test runs.
    assert!(
        node_events
            .iter()
            .filter(|e| e.reason.as_deref() != Some("EvictionThresholdMet"))
            .all(|e| e.type_.as_deref() == Some("Normal")),
        "{node_events:?}"
    );
    let out = kubectl(
        &kubeconfig,
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &of_node,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NodeReady") && text.contains("Starting kubelet."),
        "kubectl get events:\n{text}"
    );
    // kubectl describe node finds them by the Node's UID.
    let out = kubectl(&kubeconfig, &["describe", "node", &w.node]);
    let text = String::from_utf8_lossy(&out.stdout);
    let shown = text.split("Events:").nth(1).unwrap_or_default();
    for want in [
        "Starting kubelet.",
        "status is now: NodeReady",
        "status is now: NodeHas",
    ] {
        assert!(
            shown.contains(want),
            "{want} not in kubectl describe node:\n{text}"
        );
    }

    // The terminating namespace refused its pod's events; they were dropped, not
    // retried, and nothing was written there.
    let there: Api<Event> = Api::namespaced(client.clone(), &doomed);
    assert!(
        there
            .list(&ListParams::default())
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(true)
    );
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("refused an event") && l.contains("NamespaceTerminating")),
        "no refusal logged:\n{log}"
    );
    assert!(
        !log.contains("events: the apiserver is not answering"),
        "a retry:\n{log}"
    );

    // The read-only API's ring keeps working beside it.
    let ring: k8s_openapi::List<Event> = reqwest::get(format!(
        "http://127.0.0.1:{}/api/v1/namespaces/default/events",
        w.port
    ))
    .await
    .expect("read-only events")
    .json()
    .await
    .expect("an EventList");
    assert!(
        ring.items
            .iter()
            .any(|e| { e.reason.as_deref() == Some("BackOff") && e.count.unwrap_or(0) > 1 })
    );
    assert!(w.stop_agent().is_some_and(|s| s.success()));
    // The namespace goes once released (the guard), and the held ConfigMap with it.
    let _ = Api::<ConfigMap>::namespaced(client, &doomed)
        .patch(
            "hold",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await;
}
