//! Figures, not a test: pods from the apiserver. For 1, 10 and 30 pods created at
//! once in the API (bound to the node, each with the service account token volume
//! the apiserver adds): time from creation to `Running` and Ready *in the API* (p50,
//! p99, max), API requests the agent made per pod start, deletion to gone from the
//! API, and the agent's RSS with 30 pods. Runs the `nodelet` binary against the real
//! apiserver tier and real containerd.
//!
//! `NODELET_TEST_CONTAINERD=$(scripts/containerd-private.sh start)
//!  NODELET_TEST_KUBECONFIG=<run dir>/admin.kubeconfig cargo bench --bench api_pod_start`

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use support::cluster::{admin_client, admin_kubeconfig, joined_world, kubectl, wait_ready};
use support::{BUSYBOX, phase, wait_for};

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "api"}},
        "spec": {
            "nodeName": node, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": BUSYBOX,
                            "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]}]
        }
    }))
    .expect("pod")
}

fn running(p: &Pod) -> bool {
    phase(p) == "Running" && support::condition(p, "Ready").as_deref() == Some("True")
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let kubeconfig = admin_kubeconfig();
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let ns_name = format!("bench-{}", w.id);
    let ns: Namespace = serde_json::from_value(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_name}}),
    )
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create the namespace");
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns_name);
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || async { accounts.get_opt("default").await.ok()? },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns_name);
    let nodes: Api<Node> = Api::all(client.clone());
    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    let requests = || {
        std::fs::read_to_string(w.agent_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("apiserver request"))
            .count()
    };
    println!("pods created in the API at once → Running and Ready in the API (one run)");
    for n in [1usize, 10, 30] {
        let before = requests();
        let mut created = BTreeMap::new();
        for i in 0..n {
            let name = format!("p{n}-{i}");
            created.insert(name.clone(), Instant::now());
            pods.create(&PostParams::default(), &pod(&name, &w.node))
                .await
                .expect("create");
        }
        let mut done: BTreeMap<String, Duration> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60 + 6 * n as u64);
        while done.len() < n && Instant::now() < deadline {
            let list = pods
                .list(&ListParams::default().labels("bench=api"))
                .await
                .expect("list");
            for p in list.items.iter().filter(|p| running(p)) {
                let name = p.metadata.name.clone().unwrap_or_default();
                if let Some(at) = created.get(&name) {
                    done.entry(name).or_insert_with(|| at.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut times: Vec<Duration> = done.values().copied().collect();
        times.sort();
        let made = requests().saturating_sub(before);
        println!(
            "  {n:>3} pods: p50 {:.2}s  p99 {:.2}s  max {:.2}s  ({}/{n} running)  agent API requests per pod start {:.1}",
            percentile(&times, 0.5).as_secs_f64(),
            percentile(&times, 0.99).as_secs_f64(),
            times.last().copied().unwrap_or_default().as_secs_f64(),
            times.len(),
            made as f64 / n as f64
        );
        if n == 30 {
            let pid = w.agent.as_ref().map_or(0, std::process::Child::id);
            tokio::time::sleep(Duration::from_secs(3)).await;
            println!("  agent RSS with 30 pods: {:.1} MiB", rss_mib(pid));
        }
        let deleting = Instant::now();
        pods.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("bench=api"),
        )
        .await
        .expect("delete");
        wait_for("the pods gone", Duration::from_secs(120), || async {
            pods.list(&ListParams::default().labels("bench=api"))
                .await
                .ok()
                .filter(|l| l.items.is_empty())
        })
        .await;
        println!(
            "  {n:>3} pods: deleted in the API → all gone from the API in {:.2}s",
            deleting.elapsed().as_secs_f64()
        );
    }
    let _ = w.stop_agent();
    let _ = kubectl(
        &kubeconfig,
        &["delete", "namespace", &ns_name, "--wait=false"],
    );
}
