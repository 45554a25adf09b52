//! End-to-end against the real kube-apiserver tier (issue 11, pods): pods bound to
//! the node run and their status appears in the API; the scheduler's pods land and
//! run; a deleted pod is terminated gracefully and removed from the API; pods deleted
//! while the agent was down are cleaned up at start; a static pod gets a mirror pod
//! that comes back when deleted, follows the manifest and goes with it. Needs
//! `NODELET_TEST_KUBECONFIG` (see `support::cluster`) and the test containerd.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use support::cluster::{
    ApiserverDown, TestNamespace, admin_client, admin_kubeconfig, joined_world, kubectl, wait_ready,
};
use support::{BUSYBOX, World, phase, wait_for};

/// The tests share the apiserver's scheduler: one at a time keeps their figures apart.
static APISERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What every test here starts from: its turn at the apiserver, a joined World (the
/// second value, dropped first so the agent stops before its Node is removed), an
/// admin client and a namespace of its own.
struct Setup {
    kubeconfig: std::path::PathBuf,
    client: kube::Client,
    pods: Api<Pod>,
    _ns: TestNamespace,
    _cleanup: support::cluster::NodeCleanup,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

async fn setup() -> (Setup, World) {
    let kubeconfig = admin_kubeconfig();
    let turn = APISERVER.lock().await;
    let (cleanup, w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let ns = TestNamespace::new(&client, &kubeconfig, "nlt", &w.id).await;
    let pods = Api::namespaced(client.clone(), &ns.name);
    let setup = Setup {
        kubeconfig,
        client,
        pods,
        _ns: ns,
        _cleanup: cleanup,
        _turn: turn,
    };
    (setup, w)
}

/// A pod running `sh` that exits on SIGTERM, bound to `node` (or left to the
/// scheduler, pinned to `node` by its hostname label).
fn sleeper(name: &str, node: &str, bind: bool) -> Pod {
    let mut spec = serde_json::json!({
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "main", "image": BUSYBOX,
            "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
        }]
    });
    if bind {
        spec["nodeName"] = node.into();
    } else {
        spec["nodeSelector"] = serde_json::json!({"kubernetes.io/hostname": node});
        spec["tolerations"] = serde_json::json!([{"operator": "Exists"}]);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec
    }))
    .expect("pod")
}

fn container_id(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .clone()
}

fn ready(p: &Pod) -> bool {
    support::condition(p, "Ready").as_deref() == Some("True")
}

async fn wait_running(pods: &Api<Pod>, name: &str, limit: Duration) -> Pod {
    wait_for(
        &format!("{name} Running and Ready in the API"),
        limit,
        || async {
            let p = pods.get_opt(name).await.ok()??;
            (phase(&p) == "Running" && ready(&p) && container_id(&p).is_some()).then_some(p)
        },
    )
    .await
}

async fn wait_gone(pods: &Api<Pod>, name: &str, limit: Duration) {
    wait_for(&format!("{name} gone from the API"), limit, || async {
        pods.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// The containers of `w`'s containerd namespace.
fn containers(w: &World) -> String {
    String::from_utf8_lossy(&w.ctr(&["containers", "list", "-q"]).stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn bound_and_scheduled_pods_run_report_status_and_are_deleted_gracefully() {
    let (t, mut w) = setup().await;
    let (client, pods) = (&t.client, &t.pods);
    let nodes: Api<Node> = Api::all(client.clone());
    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;

    let created = Instant::now();
    pods.create(&PostParams::default(), &sleeper("web", &w.node, true))
        .await
        .expect("create the pod");
    let pod = wait_running(pods, "web", Duration::from_secs(60)).await;
    eprintln!(
        "figure: pod created in the API to Running and Ready in the API: {:?}",
        created.elapsed()
    );
    let status = pod.status.clone().expect("status");
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(
        status
            .pod_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.99.")),
        "{status:?}"
    );
    assert_eq!(
        status.pod_ips.as_ref().map(|ips| ips[0].ip.clone()),
        status.pod_ip.clone()
    );
    assert_eq!(status.qos_class.as_deref(), Some("BestEffort"));
    assert!(status.start_time.is_some());
    let c = &status
        .container_statuses
        .as_ref()
        .expect("container statuses")[0];
    assert!(
        c.container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("containerd://"))
    );
    assert!(!c.image_id.is_empty(), "{c:?}");
    assert!(c.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    for cond in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(
            support::condition(&pod, cond).as_deref(),
            Some("True"),
            "{cond}: {:?}",
            status.conditions
        );
    }
    // The agent's view and the API's agree.
    let local = w
        .pods()
        .await
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some("web"))
        .expect("the pod on the node");
    assert_eq!(container_id(&local), container_id(&pod));

    // A condition another controller sets survives the agent's patches.
    let custom = serde_json::json!({"status": {"conditions": [
        {"type": "example.com/Gate", "status": "True"}
    ]}});
    pods.patch_status(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&custom),
    )
    .await
    .expect("set a custom condition");

    // Through the scheduler.
    let created = Instant::now();
    pods.create(
        &PostParams::default(),
        &sleeper("scheduled", &w.node, false),
    )
    .await
    .expect("create the scheduled pod");
    let scheduled = wait_running(pods, "scheduled", Duration::from_secs(60)).await;
    eprintln!(
        "figure: scheduled pod created to Running in the API: {:?}",
        created.elapsed()
    );
    assert_eq!(
        scheduled.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(w.node.as_str())
    );
    let web = pods.get("web").await.expect("web");
    assert_eq!(
        support::condition(&web, "example.com/Gate").as_deref(),
        Some("True")
    );

    // Graceful deletion: terminated with the pod's grace period, then removed.
    let web_container = container_id(&web).expect("container");
    let web_id = web_container.trim_start_matches("containerd://").to_owned();
    let deleted = Instant::now();
    pods.delete("web", &DeleteParams::default())
        .await
        .expect("delete the pod");
    wait_gone(pods, "web", Duration::from_secs(30)).await;
    eprintln!(
        "figure: pod deleted in the API to gone from the API: {:?}",
        deleted.elapsed()
    );
    assert!(
        !containers(&w).contains(&web_id),
        "the container outlived the pod: {}",
        containers(&w)
    );
    assert!(
        !w.pods()
            .await
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some("web"))
    );
    // The other pod is untouched.
    let still = pods.get("scheduled").await.expect("scheduled");
    assert_eq!(container_id(&still), container_id(&scheduled));
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_deleted_while_the_agent_was_down_are_cleaned_up_at_start() {
    let (t, mut w) = setup().await;
    let pods = &t.pods;
    w.start_agent().await;
    for name in ["graceful", "forced", "kept"] {
        pods.create(&PostParams::default(), &sleeper(name, &w.node, true))
            .await
            .expect("create");
    }
    let mut ids = std::collections::BTreeMap::new();
    for name in ["graceful", "forced", "kept"] {
        let p = wait_running(pods, name, Duration::from_secs(60)).await;
        ids.insert(name, container_id(&p).expect("id"));
    }
    assert!(w.stop_agent().is_some_and(|s| s.success()));

    // Graceful: waits in the API for the node to confirm. Forced: gone at once.
    pods.delete("graceful", &DeleteParams::default())
        .await
        .expect("delete");
    pods.delete("forced", &DeleteParams::default().grace_period(0))
        .await
        .expect("force delete");
    assert!(pods.get_opt("graceful").await.expect("get").is_some());

    w.start_agent().await;
    wait_gone(pods, "graceful", Duration::from_secs(30)).await;
    for gone in ["graceful", "forced"] {
        let id = ids[gone].trim_start_matches("containerd://").to_owned();
        wait_for(
            &format!("{gone}'s container removed"),
            Duration::from_secs(30),
            || {
                let id = id.clone();
                let w = &w;
                async move { (!containers(w).contains(&id)).then_some(()) }
            },
        )
        .await;
    }
    // The pod nobody deleted was adopted, not restarted.
    let kept = wait_running(pods, "kept", Duration::from_secs(30)).await;
    assert_eq!(container_id(&kept).as_ref(), Some(&ids["kept"]));
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

fn static_manifest(command: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: mirrored, labels: {{app: mirrored}}}}\nspec:\n  terminationGracePeriodSeconds: 2\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sh, -c, '{command}']\n"
    )
}

fn annotation(p: &Pod, key: &str) -> Option<String> {
    p.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_pod_has_a_mirror_pod_that_comes_back_follows_and_goes() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let pods: &Api<Pod> = &Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client.clone());
    w.write_manifest("mirrored.yaml", &static_manifest("sleep 3600"));
    w.start_agent().await;
    let node = wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    let name = format!("mirrored-{}", w.node);

    let mirror = wait_running(pods, &name, Duration::from_secs(60)).await;
    let local = w.pod("mirrored").await.expect("the static pod");
    assert_eq!(
        annotation(&mirror, "kubernetes.io/config.mirror"),
        local.metadata.uid.clone()
    );
    assert_eq!(
        annotation(&mirror, "kubernetes.io/config.source").as_deref(),
        Some("file")
    );
    assert_ne!(mirror.metadata.uid, local.metadata.uid);
    let owner = &mirror.metadata.owner_references.clone().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Node", w.node.as_str())
    );
    assert_eq!(Some(&owner.uid), node.metadata.uid.as_ref());
    assert_eq!(container_id(&mirror), container_id(&local));
    let out = kubectl(
        &kubeconfig,
        &["get", "pods", "-n", "default", "-o", "wide", "--no-headers"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} not in kubectl get pods:\n{text}"));
    assert!(line.contains("Running") && line.contains(&w.node), "{line}");

    // Deleted: comes back (a new UID), the static pod untouched.
    let first_uid = mirror.metadata.uid.clone();
    pods.delete(&name, &DeleteParams::default())
        .await
        .expect("delete the mirror pod");
    let back = wait_for("the mirror pod back", Duration::from_secs(30), || async {
        let p = pods.get_opt(&name).await.ok()??;
        (p.metadata.uid != first_uid && p.metadata.deletion_timestamp.is_none()).then_some(p)
    })
    .await
    .metadata
    .uid;
    wait_running(pods, &name, Duration::from_secs(30)).await;
    let local_now = w.pod("mirrored").await.expect("the static pod");
    assert_eq!(container_id(&local_now), container_id(&local));

    // The manifest changes: the static pod is replaced, and so is its mirror.
    w.write_manifest("mirrored.yaml", &static_manifest("sleep 3601"));
    let replaced = wait_for(
        "the mirror pod of the new static pod",
        Duration::from_secs(60),
        || async {
            let p = pods.get_opt(&name).await.ok()??;
            let local = w.pod("mirrored").await?;
            (p.metadata.uid != back
                && annotation(&p, "kubernetes.io/config.mirror") == local.metadata.uid
                && phase(&p) == "Running")
                .then_some(p)
        },
    )
    .await;
    assert_ne!(replaced.metadata.uid, back);

    // The manifest goes: so does the mirror pod.
    std::fs::remove_file(w.manifests.join("mirrored.yaml")).expect("remove the manifest");
    wait_gone(pods, &name, Duration::from_secs(60)).await;
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_the_node_cannot_take_are_rejected_with_upstream_reasons() {
    let (t, mut w) = setup().await;
    let (client, pods) = (&t.client, &t.pods);
    let nodes: Api<Node> = Api::all(client.clone());
    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;

    let mut greedy = sleeper("greedy", &w.node, true);
    let spec = greedy.spec.as_mut().expect("spec");
    spec.containers[0].resources = Some(
        serde_json::from_value(serde_json::json!({"requests": {"cpu": "1000"}}))
            .expect("resources"),
    );
    let mut elsewhere = sleeper("elsewhere", &w.node, true);
    elsewhere.spec.as_mut().expect("spec").node_selector = Some(
        [("nodelet.test/zone".to_owned(), "mars".to_owned())]
            .into_iter()
            .collect(),
    );
    for p in [&greedy, &elsewhere] {
        pods.create(&PostParams::default(), p)
            .await
            .expect("create");
    }
    for (name, reason, message) in [
        (
            "greedy",
            "OutOfcpu",
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 1000000, used: 0, capacity: ",
        ),
        (
            "elsewhere",
            "NodeAffinity",
            "Pod was rejected: Predicate NodeAffinity failed",
        ),
    ] {
        let p = wait_for(
            &format!("{name} Failed in the API"),
            Duration::from_secs(30),
            || async {
                let p = pods.get_opt(name).await.ok()??;
                (phase(&p) == "Failed").then_some(p)
            },
        )
        .await;
        let status = p.status.expect("status");
        assert_eq!(status.reason.as_deref(), Some(reason), "{name}");
        assert!(
            status
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with(message)),
            "{name}: {:?}",
            status.message
        );
    }
    // Rejected pods hold nothing: a pod that fits still runs.
    pods.create(&PostParams::default(), &sleeper("fits", &w.node, true))
        .await
        .expect("create");
    wait_running(pods, "fits", Duration::from_secs(60)).await;
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

fn restarts(p: &Pod) -> Option<i32> {
    Some(
        p.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .restart_count,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apiserver_outage_keeps_api_pods_running_and_their_status_catches_up() {
    let (t, mut w) = setup().await;
    let (kubeconfig, pods) = (&t.kubeconfig, &t.pods);
    w.start_agent().await;
    for name in ["steady", "crashy"] {
        pods.create(&PostParams::default(), &sleeper(name, &w.node, true))
            .await
            .expect("create");
    }
    let steady = wait_running(pods, "steady", Duration::from_secs(60)).await;
    let crashy = wait_running(pods, "crashy", Duration::from_secs(60)).await;

    let down = ApiserverDown::stop(kubeconfig);
    // A container dies during the outage: the agent restarts it on its own.
    let id = container_id(&crashy).expect("id");
    let id = id.trim_start_matches("containerd://");
    let out = w.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "crashy restarted on the node",
        Duration::from_secs(30),
        || async {
            let p = w
                .pods()
                .await
                .into_iter()
                .find(|p| p.metadata.name.as_deref() == Some("crashy"))?;
            (restarts(&p) == Some(1) && phase(&p) == "Running").then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        w.agent
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none()),
        "the agent exited during the outage"
    );
    drop(down);

    let caught_up = wait_for(
        "crashy's restart in the API",
        Duration::from_secs(60),
        || async {
            let p = pods.get_opt("crashy").await.ok()??;
            (restarts(&p) == Some(1) && running(&p)).then_some(p)
        },
    )
    .await;
    assert_ne!(container_id(&caught_up), container_id(&crashy));
    let steady_after = pods.get("steady").await.expect("steady");
    assert_eq!(container_id(&steady_after), container_id(&steady));
    assert_eq!(restarts(&steady_after), Some(0));
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

fn running(p: &Pod) -> bool {
    phase(p) == "Running" && ready(p)
}
