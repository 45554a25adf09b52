//! The proxy end to end against the real apiserver tier (`NODELET_TEST_KUBECONFIG`, see
//! tests/README.md): a selector-less Service and an EndpointSlice created through the
//! API are watched, programmed into nft in a throwaway network namespace and reached
//! through the ClusterIP the apiserver allocated; an endpoint removed through the API
//! stops receiving connections. Discovery finds `discovery.k8s.io/v1`, and a
//! health-check node port follows a LoadBalancer service with a local endpoint. Needs root.
//! A server that serves slices is never asked for core Endpoints (nor `v1beta1` slices).
//! (The fallback to core Endpoints: `apiserver_endpoints.rs`, a control plane of its own.)

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use nodelet_netproxy::Proxier;
use nodelet_netproxy::model::IpFamily;
use nodelet_netproxy::nft::RenderConfig;
use nodelet_netproxy::nft::exec::NftCommand;
use nodelet_netproxy::testing::{Ep, slice};
use serde_json::json;
use support::World;
use support::cluster::{
    NsGuard, client, create_web_service, node_a, recording_client, shared_kubeconfig, spawn_proxy,
    test_slice,
};

/// Connects until `ok` holds for the answer or `timeout` passes.
fn wait_for(
    w: &World,
    ip: &str,
    timeout: Duration,
    ok: impl Fn(&std::io::Result<String>) -> bool,
) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if ok(&w.connect(ip, 80)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_from_the_apiserver_are_programmed() {
    let client = client().await;
    let guard = NsGuard::create(&client, &format!("proxytest-{}", std::process::id())).await;
    let ns = guard.name().to_string();

    let mut w = World::new();
    w.route_services("10.96.0.0/16");
    w.endpoint("10.180.0.21", 8080);
    w.endpoint("10.180.0.22", 8080);

    let vip = create_web_service(&client, &ns).await;

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let eps = |ips: &[&'static str]| -> EndpointSlice {
        let eps: Vec<Ep<'_>> = ips
            .iter()
            .map(|ip| Ep {
                ip,
                node: "node-a",
                ready: true,
                terminating: false,
            })
            .collect();
        let mut s = slice(&ns, "web", "web-1", "http", 8080, &eps);
        s.metadata.labels.get_or_insert_default().insert(
            "endpointslice.kubernetes.io/managed-by".into(),
            "nodelet-test".into(),
        );
        s
    };
    slices
        .create(
            &PostParams::default(),
            &eps(&["10.180.0.21", "10.180.0.22"]),
        )
        .await
        .expect("create slice");

    let mut cfg = RenderConfig::new(IpFamily::V4);
    cfg.cluster_cidrs = vec!["10.180.0.0/16".parse().expect("cidr")];
    let proxier = Proxier::new(NftCommand::new().in_netns(&w.node), cfg, node_a());
    let proxy = spawn_proxy(client.clone(), proxier, |_: &Result<_, _>| {});

    let vip2 = vip.clone();
    let w = tokio::task::spawn_blocking(move || {
        assert!(
            wait_for(&w, &vip2, Duration::from_secs(20), |r| r.is_ok()),
            "the ClusterIP {vip2} never answered:\n{}",
            w.table()
        );
        let counts = w.spread(&vip2, 80, 30);
        assert_eq!(counts.len(), 2, "{counts:?}");
        w
    })
    .await
    .expect("client");

    // Remove one endpoint through the API.
    let mut current = slices.get("web-1").await.expect("get slice");
    current
        .endpoints
        .retain(|e| e.addresses.first().map(String::as_str) == Some("10.180.0.21"));
    slices
        .replace("web-1", &PostParams::default(), &current)
        .await
        .expect("replace slice");
    let vip2 = vip.clone();
    let w = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        // Until the change is programmed, then every connection reaches the one left.
        let mut streak = 0;
        while streak < 20 {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "the removed endpoint kept receiving:\n{}",
                w.table()
            );
            match w.connect(&vip2, 80) {
                Ok(who) if who == "10.180.0.21" => streak += 1,
                _ => streak = 0,
            }
        }
        w
    })
    .await
    .expect("client");

    // Delete the service: its rules go.
    Api::<Service>::namespaced(client.clone(), &ns)
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete service");
    let vip2 = vip.clone();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        while w.table().contains(&vip2) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "rules of the deleted service stayed:\n{}",
                w.table()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("client");
    proxy.abort();
}

/// `GET /` over HTTP/1.0: the status code and body.
async fn http_get(port: u16) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_v1_and_health_check_node_ports_follow_the_api() {
    use nodelet_netproxy::health::ProxyHealth;
    use nodelet_netproxy::health::observer::HealthObserver;
    use nodelet_netproxy::health::service::ServiceHealthServer;
    use nodelet_netproxy::legacy::{EndpointsSource, discover};
    use nodelet_netproxy::nft::exec::RecordingNft;

    let client = client().await;
    assert_eq!(discover(&client).await, EndpointsSource::V1);
    let guard = NsGuard::create(&client, &format!("proxyhc-{}", std::process::id())).await;
    let ns = guard.name().to_string();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .expect("service");
    let svc = Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    let hcnp = svc
        .spec
        .and_then(|s| s.health_check_node_port)
        .expect("the apiserver allocates a healthCheckNodePort");
    let hcnp = u16::try_from(hcnp).expect("port");
    Api::<EndpointSlice>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &test_slice(&ns, "lb", "lb-1", "10.180.0.31"),
        )
        .await
        .expect("create slice");

    let health = ProxyHealth::new(Duration::from_secs(60));
    let observer = HealthObserver::new(
        health.clone(),
        IpFamily::V4,
        Some(ServiceHealthServer::new(
            health.clone(),
            IpFamily::V4,
            vec!["127.0.0.1".parse().expect("ip")],
        )),
    );
    let proxier = Proxier::new(
        RecordingNft::default(),
        RenderConfig::new(IpFamily::V4),
        node_a(),
    );
    let proxy = spawn_proxy(client.clone(), proxier, observer);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let r = tokio::time::timeout(Duration::from_secs(2), http_get(hcnp)).await;
        match r.unwrap_or_else(|_| Err(std::io::Error::other("timed out"))) {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "port {hcnp} never served: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"localEndpoints\": 1"), "{body}");
    let metrics = health.metrics.render();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("kubeproxy_sync_proxy_rules_endpoint_changes_total ")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    // The Local service has its local endpoint: nothing dropped for want of one.
    for policy in ["internal", "external"] {
        let series = format!(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{{ip_family=\"IPv4\",traffic_policy=\"{policy}\"}} 0"
        );
        assert!(metrics.lines().any(|l| l == series), "{series}:\n{metrics}");
    }
    proxy.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_slices_is_never_asked_for_endpoints() {
    use nodelet_netproxy::legacy::{EndpointsSource, discover};
    use nodelet_netproxy::nft::exec::RecordingNft;

    let (client, log) = recording_client(&shared_kubeconfig()).await;
    assert_eq!(discover(&client).await, EndpointsSource::V1);
    let guard = NsGuard::create(&client, &format!("proxynoeps-{}", std::process::id())).await;
    let ns = guard.name().to_string();
    create_web_service(&client, &ns).await;
    Api::<EndpointSlice>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &test_slice(&ns, "web", "web-1", "10.180.0.51"),
        )
        .await
        .expect("create slice");

    let nft = RecordingNft::default();
    let proxier = Proxier::new(nft.clone(), RenderConfig::new(IpFamily::V4), node_a());
    let proxy = spawn_proxy(client.clone(), proxier, |_: &Result<_, _>| {});
    let end = Instant::now() + Duration::from_secs(20);
    while !nft.scripts().concat().contains("10.180.0.51") {
        assert!(
            Instant::now() < end,
            "the slice's endpoint was never programmed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.abort();
    let requests = log.requests();
    assert!(
        log.has_path("/apis/discovery.k8s.io/v1/endpointslices"),
        "{requests:#?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.contains("/api/v1/endpoints") || r.contains("v1beta1")),
        "Endpoints or v1beta1 slices asked for: {requests:#?}"
    );
}
