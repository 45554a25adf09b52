//! End-to-end against the real kube-apiserver tier (issue 11, first slice): the agent
//! with `--kubeconfig` (a `system:node:<node>` credential) registers its Node with
//! labels, taints, addresses, capacity and node info, goes Ready, keeps its Lease
//! renewed, shows in `kubectl get nodes -o wide`, and rides out an apiserver outage
//! without touching its pods. Needs `NODELET_TEST_KUBECONFIG` (the admin kubeconfig
//! in `scripts/apiserver.sh`'s run dir, which `scripts/test.sh` exports) besides the
//! test containerd. The two tests share one apiserver, and one of them stops it, so
//! they take turns.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use nodelet_cri::image::ImageRuntimeConfig;
use support::cluster::{
    ApiserverDown, admin_client, admin_kubeconfig, condition_status, joined_world, kubectl,
    wait_ready,
};
use support::{BUSYBOX, busybox_image, container_status, phase, wait_for};

/// The apiserver is shared: the outage test must not stop it under the other.
static APISERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn renew_time(lease: &Lease) -> Option<jiff::Timestamp> {
    lease.spec.as_ref()?.renew_time.as_ref().map(|t| t.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn node_registers_goes_ready_and_renews_its_lease() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(
        &kubeconfig,
        &[
            "--node-labels",
            "nodelet.test/role=e2e,node.kubernetes.io/pool=blue",
            "--register-with-taints",
            "nodelet.test/dedicated=e2e:NoSchedule",
        ],
    )
    .await;
    let client = admin_client(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");

    let start = Instant::now();
    w.start_agent().await;
    let node = wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    let to_ready = start.elapsed();
    eprintln!("figure: agent start to Node Ready in the API: {to_ready:?}");

    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("kubernetes.io/hostname"), Some(&w.node));
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(
        labels.get("beta.kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert!(labels.contains_key("kubernetes.io/arch"));
    assert_eq!(
        labels.get("nodelet.test/role").map(String::as_str),
        Some("e2e")
    );
    assert_eq!(
        labels.get("node.kubernetes.io/pool").map(String::as_str),
        Some("blue")
    );
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "nodelet.test/dedicated"
            && t.value.as_deref() == Some("e2e")
            && t.effect == "NoSchedule"),
        "taints: {taints:?}"
    );
    let status = node.status.clone().expect("status");
    let addresses: Vec<(String, String)> = status
        .addresses
        .iter()
        .flatten()
        .map(|a| (a.type_.clone(), a.address.clone()))
        .collect();
    assert!(
        addresses.contains(&("InternalIP".to_owned(), "127.0.0.1".to_owned())),
        "{addresses:?}"
    );
    // The overridden hostname, as upstream.
    assert!(
        addresses.contains(&("Hostname".to_owned(), w.node.clone())),
        "{addresses:?}"
    );
    for resources in [&status.capacity, &status.allocatable] {
        let r = resources.clone().unwrap_or_default();
        for key in ["cpu", "memory", "pods", "ephemeral-storage"] {
            assert!(r.contains_key(key), "{key} missing from {r:?}");
        }
    }
    let info = status.node_info.clone().expect("nodeInfo");
    assert!(
        info.container_runtime_version.starts_with("containerd://"),
        "{info:?}"
    );
    assert!(info.kubelet_version.starts_with("v1."), "{info:?}");
    assert_eq!(
        info.machine_id,
        std::fs::read_to_string("/etc/machine-id")
            .unwrap_or_default()
            .trim()
    );
    assert!(
        !info.boot_id.is_empty() && !info.kernel_version.is_empty(),
        "{info:?}"
    );
    assert_eq!(
        status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port),
        Some(i32::from(w.secure_port))
    );
    let types: Vec<String> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| format!("{}={}", c.type_, c.reason.clone().unwrap_or_default()))
        .collect();
    // Pressure is whatever this host has (a full disk shows as DiskPressure): the
    // reasons are upstream's either way.
    for want in [
        [
            "MemoryPressure=KubeletHasSufficientMemory",
            "MemoryPressure=KubeletHasInsufficientMemory",
        ],
        [
            "DiskPressure=KubeletHasNoDiskPressure",
            "DiskPressure=KubeletHasDiskPressure",
        ],
        [
            "PIDPressure=KubeletHasSufficientPID",
            "PIDPressure=KubeletHasInsufficientPID",
        ],
        ["Ready=KubeletReady"; 2],
    ] {
        assert!(
            types.iter().any(|t| want.contains(&t.as_str())),
            "{want:?} not in {types:?}"
        );
    }
    assert!(status.images.is_some_and(|i| !i.is_empty()));

    // The lease: held by the node, 40 s, owned by the Node, renewed every 10 s.
    let lease = wait_for("the node's Lease", Duration::from_secs(30), || async {
        leases.get_opt(&w.node).await.ok()?
    })
    .await;
    let spec = lease.spec.clone().expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some(w.node.as_str()));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let owners = lease.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "Node" && Some(&o.uid) == node.metadata.uid.as_ref()),
        "{owners:?}"
    );
    let first = renew_time(&lease).expect("renewTime");
    wait_for(
        "the Lease to be renewed",
        Duration::from_secs(25),
        || async {
            let l = leases.get_opt(&w.node).await.ok()??;
            (renew_time(&l)? > first).then_some(())
        },
    )
    .await;

    // kubectl shows it as it shows an upstream node.
    let out = kubectl(&kubeconfig, &["get", "nodes", "-o", "wide", "--no-headers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(w.node.as_str()))
        .unwrap_or_else(|| panic!("{} not in kubectl get nodes:\n{text}", w.node));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols.get(1), Some(&"Ready"), "{line}");
    assert!(cols.contains(&"127.0.0.1"), "{line}");
    assert!(line.contains("containerd://"), "{line}");

    // Requests at idle, from the agent's request log, over 30 s.
    let count = || {
        std::fs::read_to_string(w.agent_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("apiserver request"))
            .count()
    };
    let before = count();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let per_minute = (count() - before) * 2;
    eprintln!("figure: API requests per minute at idle: {per_minute}");
    assert!(per_minute <= 20, "{per_minute} requests a minute at idle");
    assert!(w.stop_agent().is_some_and(|s| s.success()));

    // A restarted agent adopts its Node (same UID) and puts back a default label
    // someone changed; labels it does not own stay.
    let patch = serde_json::json!({"metadata": {"labels": {
        "kubernetes.io/os": "plan9", "someone.example/else": "kept"
    }}});
    nodes
        .patch(
            &w.node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("patch the Node's labels");
    w.start_agent().await;
    let adopted = wait_for(
        "the default labels back",
        Duration::from_secs(30),
        || async {
            let n = nodes.get_opt(&w.node).await.ok()??;
            let labels = n.metadata.labels.clone()?;
            (labels.get("kubernetes.io/os")? == "linux").then_some(n)
        },
    )
    .await;
    assert_eq!(adopted.metadata.uid, node.metadata.uid);
    let labels = adopted.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("someone.example/else").map(String::as_str),
        Some("kept")
    );
    wait_ready(&nodes, &w.node, Duration::from_secs(30)).await;
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apiserver_outage_leaves_pods_alone_and_status_catches_up() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    w.write_manifest(
        "sleeper.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: sleeper}}\nspec:\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ),
    );
    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    let pod = w
        .wait_pod("sleeper", "Running", |p| phase(p) == "Running")
        .await;
    let container = |p: &k8s_openapi::api::core::v1::Pod| {
        container_status(p, "main").and_then(|c| c.container_id.clone())
    };
    let before = container(&pod).expect("a container ID");

    let down = ApiserverDown::stop(&kubeconfig);
    let stopped = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        w.agent
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none()),
        "the agent exited during the outage"
    );
    let pod = w.pod("sleeper").await.expect("the pod is still served");
    assert_eq!(phase(&pod), "Running");
    assert_eq!(container(&pod), Some(before.clone()));
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| l.contains("the apiserver is not answering"))
        .count();
    // Once per loop (registration is done; the lease and the status poster remain).
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} outage warnings:\n{log}"
    );
    // A status change during the outage (a new image) must reach the API after it.
    let image = format!("nodelet.local/outage-{}:v1", w.id);
    w.import_image(
        &busybox_image(ImageRuntimeConfig {
            env: vec![format!("OUTAGE={}", w.id)],
            ..Default::default()
        }),
        &image,
    )
    .await;
    drop(down);

    wait_for(
        "the lease and the node status to catch up",
        Duration::from_secs(45),
        || async {
            let l = leases.get_opt(&w.node).await.ok()??;
            let n = nodes.get_opt(&w.node).await.ok()??;
            let images = n.status.as_ref()?.images.clone()?;
            (renew_time(&l)? > stopped
                && condition_status(&n, "Ready")? == "True"
                && images
                    .iter()
                    .any(|i| i.names.iter().flatten().any(|name| *name == image)))
            .then_some(())
        },
    )
    .await;
    let pod = w.pod("sleeper").await.expect("the pod");
    assert_eq!(container(&pod), Some(before));
    assert_eq!(
        container_status(&pod, "main").map(|c| c.restart_count),
        Some(0)
    );
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_started_during_an_outage_registers_when_the_apiserver_returns() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(client);
    w.write_manifest(
        "early.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: early}}\nspec:\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ),
    );
    let down = ApiserverDown::stop(&kubeconfig);
    // Static pods don't wait for the apiserver.
    w.start_agent().await;
    w.wait_pod("early", "Running", |p| phase(p) == "Running")
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| l.contains("node registration: the apiserver is not answering"))
        .count();
    assert_eq!(warnings, 1, "one warning for the outage:\n{log}");
    drop(down);
    // Registration backs off to 7 s between tries.
    wait_ready(&nodes, &w.node, Duration::from_secs(45)).await;
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_register_node_the_agent_posts_status_to_a_node_made_by_someone_else() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &["--register-node=false"]).await;
    let client = admin_client(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(client);
    w.start_agent().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        nodes.get_opt(&w.node).await.expect("get").is_none(),
        "--register-node=false made a Node"
    );
    let made: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": w.node, "labels": {"made-by": "admin"}}
    }))
    .expect("node");
    nodes
        .create(&kube::api::PostParams::default(), &made)
        .await
        .expect("create the Node");
    let node = wait_ready(&nodes, &w.node, Duration::from_secs(30)).await;
    // Its labels are the admin's: the agent registers nothing.
    let labels = node.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("made-by").map(String::as_str), Some("admin"));
    assert!(!labels.contains_key("kubernetes.io/os"), "{labels:?}");
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

/// In a cluster the Node's `spec.podCIDRs` win over `--pod-cidr` (upstream's kubelet
/// takes its pod CIDR from the Node): a Node made with a dual-stack pair before the
/// agent starts gives the built-in network's pod an address from each.
#[tokio::test(flavor = "multi_thread")]
async fn the_nodes_dual_stack_pod_cidrs_feed_the_built_in_network() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let _forwarding = support::RestoreSysctl::new(support::IPV6_FORWARDING);
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    // The built-in network: no CNI config.
    let _ = std::fs::remove_file(w.cni_conf.join("10-test.conflist"));
    w.pod_net = support::PodNet::Builtin;
    w.pod_cidr = format!("10.99.{}.128/25", w.subnet);
    let (v4, v6) = (
        format!("10.99.{}.0/25", w.subnet),
        format!("fd99:{:x}::/64", w.subnet),
    );
    let nodes: Api<Node> = Api::all(admin_client(&kubeconfig).await);
    let made: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": w.node},
        "spec": {"podCIDR": v4, "podCIDRs": [v4, v6]}
    }))
    .expect("node");
    nodes
        .create(&kube::api::PostParams::default(), &made)
        .await
        .expect("create the Node");
    w.start_agent().await;
    w.write_manifest(
        "dual.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: dual}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ),
    );
    let pod = w
        .wait_pod("dual", "running", |p| {
            phase(p) == "Running" && container_status(p, "main").is_some_and(|c| c.ready)
        })
        .await;
    let ips: Vec<String> = pod
        .status
        .and_then(|s| s.pod_ips)
        .into_iter()
        .flatten()
        .map(|p| p.ip)
        .collect();
    assert_eq!(
        ips,
        [
            format!("10.99.{}.2", w.subnet),
            format!("fd99:{:x}::2", w.subnet)
        ],
        "from the Node's podCIDRs, not --pod-cidr {}",
        w.pod_cidr
    );
    std::fs::remove_file(w.manifests.join("dual.yaml")).expect("remove manifest");
    wait_for("the pod gone", Duration::from_secs(60), || async {
        (w.pod("dual").await.is_none() && !w.has_nft_table()).then_some(())
    })
    .await;
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

/// Upstream's `updatePodCIDR`: a Node that gets its pod CIDR after the agent started
/// (made later, as the controller manager assigns one after registration; `podCIDR` is
/// immutable once set, so the test makes the Node with it, in the world's own range
/// rather than the controller manager's shared 10.244.0.0/16) switches the built-in
/// network for new pods; the pod started on `--pod-cidr` keeps its address.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_cidr_given_to_the_node_later_applies_to_new_pods() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &["--register-node=false"]).await;
    let _ = std::fs::remove_file(w.cni_conf.join("10-test.conflist"));
    w.pod_net = support::PodNet::Builtin;
    w.pod_cidr = format!("10.99.{}.128/25", w.subnet);
    let assigned = format!("10.99.{}.0/25", w.subnet);
    let pod = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        )
    };
    let running = |p: &k8s_openapi::api::core::v1::Pod| {
        phase(p) == "Running" && container_status(p, "main").is_some_and(|c| c.ready)
    };
    let ips = |p: k8s_openapi::api::core::v1::Pod| -> Vec<String> {
        p.status
            .and_then(|s| s.pod_ips)
            .into_iter()
            .flatten()
            .map(|p| p.ip)
            .collect()
    };
    w.start_agent().await;
    w.write_manifest("before.yaml", &pod("before"));
    let before = ips(w.wait_pod("before", "running", running).await);
    assert_eq!(
        before,
        [format!("10.99.{}.130", w.subnet)],
        "from --pod-cidr"
    );

    let nodes: Api<Node> = Api::all(admin_client(&kubeconfig).await);
    let made: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": w.node},
        "spec": {"podCIDR": assigned, "podCIDRs": [assigned]}
    }))
    .expect("node");
    nodes
        .create(&kube::api::PostParams::default(), &made)
        .await
        .expect("create the Node");
    let shown = kubectl(
        &kubeconfig,
        &["get", "node", &w.node, "-o", "jsonpath={.spec.podCIDRs}"],
    );
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&assigned), "{shown}");
    let log = w.agent_log();
    wait_for(
        "the agent to take the Node's pod CIDR",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            async move { log.contains("Updating Pod CIDR").then_some(()) }
        },
    )
    .await;

    // The node view (the read-only `/node`) shows the pod CIDR in use.
    let url = format!("http://127.0.0.1:{}/node", w.port);
    let view: Node = reqwest::get(&url)
        .await
        .expect("GET /node")
        .json()
        .await
        .expect("a Node");
    let spec = view.spec.expect("spec");
    assert_eq!(spec.pod_cidr.as_deref(), Some(assigned.as_str()));
    assert_eq!(spec.pod_cidrs, Some(vec![assigned.clone()]));

    w.write_manifest("after.yaml", &pod("after"));
    let after = ips(w.wait_pod("after", "running", running).await);
    assert_eq!(
        after,
        [format!("10.99.{}.2", w.subnet)],
        "from the Node's podCIDRs"
    );
    let still = ips(w.pod("before").await.expect("before"));
    assert_eq!(still, before, "a running pod keeps its address");

    for name in ["before", "after"] {
        std::fs::remove_file(w.manifests.join(format!("{name}.yaml"))).expect("remove manifest");
    }
    wait_for("the pods gone", Duration::from_secs(60), || async {
        (w.pod("before").await.is_none() && w.pod("after").await.is_none() && !w.has_nft_table())
            .then_some(())
    })
    .await;
    assert!(w.allocated_ips().is_empty(), "{:?}", w.allocated_ips());
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}
