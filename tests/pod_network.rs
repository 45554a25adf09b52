//! End-to-end tests only the agent's built-in pod network has (issue 15): an exhausted
//! address range fails just the pod that found it full, with upstream's
//! `FailedCreatePodSandBox` event and a `ContainerCreating` status naming the range, and
//! the pod starts once an address is free; a pod's hostPort reaches it through the
//! agent's own nft table and goes with the pod; a dual-stack `--pod-cidr` gives a pod
//! both addresses in its status's `podIPs`.
//!
//! The hostPort is bound to the world's own bridge address (`hostIP`), so its DNAT
//! matches only traffic to that address, which only the test sends: nothing else on the
//! node is redirected. (Reachability from another namespace, localhost and hairpin is in
//! `cri/tests/podnet.rs`, inside a private node namespace.)

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use support::events::wait_event;
use support::{
    BUSYBOX, IPV6_FORWARDING, PodNet, RestoreSysctl, World, container_status, phase, wait_for,
};

fn sleeper(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
    )
}

fn running(p: &Pod) -> bool {
    phase(p) == "Running" && container_status(p, "main").is_some_and(|c| c.ready)
}

fn waiting(p: &Pod) -> Option<(String, String)> {
    let w = container_status(p, "main")?
        .state
        .as_ref()?
        .waiting
        .as_ref()?;
    Some((w.reason.clone()?, w.message.clone().unwrap_or_default()))
}

/// A /30 holds the gateway and one pod: the second pod stays `ContainerCreating` with
/// the allocator's message and a `FailedCreatePodSandBox` event, the first runs on,
/// nothing of the failed attempts is left, and the second starts once the first goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_range_fails_only_that_pod_with_upstreams_status_and_event() {
    let mut w = World::with_pod_net(PodNet::Builtin).await;
    w.pod_cidr = format!("10.99.{}.0/30", w.subnet);
    w.start_agent().await;
    w.write_manifest("first.yaml", &sleeper("first"));
    let first = w.wait_pod("first", "running", running).await;
    let ip = first
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");
    assert_eq!(ip, format!("10.99.{}.2", w.subnet), "the only pod address");

    w.write_manifest("second.yaml", &sleeper("second"));
    let want = format!("no IP addresses available in range set: {}", w.pod_cidr);
    let pod = w
        .wait_pod("second", "ContainerCreating on the full range", |p| {
            waiting(p).is_some_and(|(r, m)| r == "ContainerCreating" && m.contains(&want))
        })
        .await;
    assert_eq!(phase(&pod), "Pending");
    let (_, message) = waiting(&pod).expect("waiting");
    eprintln!("status message: {message}");
    let event = wait_event(&w, "second", "FailedCreatePodSandBox", |_| true).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let text = event.message.clone().unwrap_or_default();
    eprintln!("event message: {text}");
    assert!(
        text.starts_with("Failed to create pod sandbox: ") && text.contains(&want),
        "{text}"
    );
    assert!(w.pod("first").await.is_some_and(|p| running(&p)));
    // The failed attempts left nothing: one pod's worth, the first's.
    assert_eq!(w.leftovers(), w.expected_leftovers(1, 1));

    std::fs::remove_file(w.manifests.join("first.yaml")).expect("remove manifest");
    let second = w
        .wait_pod_for(
            "second",
            "running once the address is free",
            Duration::from_secs(90),
            running,
        )
        .await;
    assert_eq!(
        second.status.as_ref().and_then(|s| s.pod_ip.clone()),
        Some(ip)
    );
    w.stop_agent();
}

/// A hostPort on the world's bridge address reaches the pod's `httpd` from the node,
/// through the rule in the agent's table; the rule goes with the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_port_reaches_the_pod_and_goes_with_it() {
    let mut w = World::with_pod_net(PodNet::Builtin).await;
    let gateway = format!("10.99.{}.1", w.subnet);
    let host_port = 20000 + u16::from(w.subnet);
    w.start_agent().await;
    w.write_manifest(
        "web.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, 'mkdir -p /www && echo hello-through-hostport > /www/index.html && exec httpd -f -p 8080 -h /www']
    ports:
    - containerPort: 8080
      hostPort: {host_port}
      hostIP: {gateway}
"#
        ),
    );
    let pod = w.wait_pod("web", "running", running).await;
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");
    let rules = std::process::Command::new("nft")
        .args(["list", "table", "ip", &w.nft_table()])
        .output()
        .expect("nft");
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    assert!(
        rules.contains(&format!(
            "ip daddr {gateway} tcp dport {host_port} dnat to {ip}:8080"
        )),
        "{rules}"
    );
    let url = format!("http://{gateway}:{host_port}/");
    let body = wait_for(
        "the pod through its hostPort",
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let r = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .ok()?
                    .get(&url)
                    .send()
                    .await
                    .ok()?;
                r.text().await.ok()
            }
        },
    )
    .await;
    assert_eq!(body.trim(), "hello-through-hostport");

    std::fs::remove_file(w.manifests.join("web.yaml")).expect("remove manifest");
    wait_for(
        "the pod and its table gone",
        Duration::from_secs(60),
        || async { (w.pod("web").await.is_none() && !w.has_nft_table()).then_some(()) },
    )
    .await;
    w.stop_agent();
}

/// A dual-stack `--pod-cidr` (IPv6 first): the pod's status has both addresses in
/// `podIPs`, the node IP's family (IPv4) first and as `podIP` whatever the flag's order
/// (upstream's `sortPodIPs`), both from the world's ranges, and both are given back (and
/// the `ip`/`ip6` tables removed) when the pod goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_pod_cidr_gives_the_pod_both_ips() {
    let _forwarding = RestoreSysctl::new(IPV6_FORWARDING);

    let mut w = World::with_pod_net(PodNet::Builtin).await;
    let v4 = format!("10.99.{}.0/24", w.subnet);
    let v6 = format!("fd99:{:x}::/64", w.subnet);
    w.pod_cidr = format!("{v6},{v4}");
    w.start_agent().await;
    w.write_manifest("dual.yaml", &sleeper("dual"));
    let pod = w.wait_pod("dual", "running", running).await;
    let status = pod.status.clone().expect("status");
    let ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .collect();
    eprintln!("podIPs: {ips:?}");
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert_eq!(ips[0], format!("10.99.{}.2", w.subnet));
    assert_eq!(ips[1], format!("fd99:{:x}::2", w.subnet));
    assert_eq!(status.pod_ip.as_deref(), Some(ips[0].as_str()));
    let ipam = w.root.join("network/ipam").join(&w.bridge);
    for ip in &ips {
        assert!(
            ipam.join(ip).is_file(),
            "{ip} allocated under {}",
            ipam.display()
        );
    }
    let table6 = |w: &World| {
        std::process::Command::new("nft")
            .args(["list", "table", "ip6", &w.nft_table()])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(w.has_nft_table() && table6(&w), "ip and ip6 tables");

    std::fs::remove_file(w.manifests.join("dual.yaml")).expect("remove manifest");
    wait_for(
        "the pod, its addresses and tables gone",
        Duration::from_secs(60),
        || async {
            (w.pod("dual").await.is_none()
                && ips.iter().all(|ip| !ipam.join(ip).exists())
                && !w.has_nft_table()
                && !table6(&w))
            .then_some(())
        },
    )
    .await;
    w.stop_agent();
}
