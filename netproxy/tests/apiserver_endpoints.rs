//! The proxy against an apiserver without EndpointSlices: v1.37.2 started with
//! `--runtime-config=discovery.k8s.io/v1=false` serves neither `v1` nor `v1beta1` slices
//! (the latter was removed in 1.25), as the 1.20-era servers the issue names. This test
//! starts such a control plane of its own (`scripts/apiserver.sh` with
//! `NODELET_APISERVER_RUNTIME_CONFIG`, run dir `$NODELET_TEST_NOSLICES_APISERVER_DIR`,
//! default `target/nodelet-apiserver-noslices`, ports chosen free by the script, so the
//! shared tier is not disturbed) and stops it at the end unless it was already running.
//!
//! Discovery finds no slices; a selector-less Service and its core `v1` Endpoints created
//! through the API reach the proxier's model and its nft script through the fallback,
//! an Endpoints update and deletion follow, and the proxy never asked for a slice. No
//! kernel state is touched (a recording `nft`); no root needed.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Endpoints;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use nodelet_netproxy::Proxier;
use nodelet_netproxy::legacy::{EndpointsSource, discover};
use nodelet_netproxy::model::IpFamily;
use nodelet_netproxy::nft::RenderConfig;
use nodelet_netproxy::nft::exec::RecordingNft;
use serde_json::json;
use support::cluster::{
    Model, ModelSnapshot, NsGuard, OwnControlPlane, create_web_service, node_a, recording_client,
    spawn_proxy, wait_model,
};

fn run_dir() -> PathBuf {
    std::env::var_os("NODELET_TEST_NOSLICES_APISERVER_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/nodelet-apiserver-noslices"),
        PathBuf::from,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_endpoints_reach_the_proxier_when_the_server_lacks_slices() {
    let cp = OwnControlPlane::start(&run_dir(), "discovery.k8s.io/v1=false");
    let (client, log) = recording_client(&cp.kubeconfig()).await;
    assert_eq!(
        discover(&client).await,
        EndpointsSource::CoreEndpoints,
        "a server without discovery.k8s.io"
    );
    let ns_guard = NsGuard::create(&client, &format!("proxyeps-{}", std::process::id())).await;
    let ns = ns_guard.name().to_string();

    let vip = create_web_service(&client, &ns).await;
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    let eps = |ready: &[(&str, &str)], not_ready: &[&str]| -> Endpoints {
        let addresses: Vec<_> = ready
            .iter()
            .map(|(ip, node)| json!({"ip": ip, "nodeName": node}))
            .collect();
        let not_ready: Vec<_> = not_ready.iter().map(|ip| json!({"ip": ip})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "subsets": [{"addresses": addresses, "notReadyAddresses": not_ready,
                         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]
        }))
        .expect("endpoints")
    };
    endpoints
        .create(
            &PostParams::default(),
            &eps(
                &[("10.180.0.41", "node-a"), ("10.180.0.42", "node-b")],
                &["10.180.0.43"],
            ),
        )
        .await
        .expect("create endpoints");

    let nft = RecordingNft::default();
    let proxier = Proxier::new(nft.clone(), RenderConfig::new(IpFamily::V4), node_a());
    let model = Model::default();
    let observer = ModelSnapshot(model.clone());
    let proxy = spawn_proxy(client.clone(), proxier, observer);

    let port = format!("{ns}/web:http");
    wait_model(
        &model,
        &port,
        &[
            "10.180.0.41:8080 ready local",
            "10.180.0.42:8080 ready remote",
            "10.180.0.43:8080 not-ready remote",
        ],
        "created",
    )
    .await;
    let scripts = nft.scripts().concat();
    for needle in [vip.as_str(), "10.180.0.41", "10.180.0.42"] {
        assert!(
            scripts.contains(needle),
            "{needle} not programmed:\n{scripts}"
        );
    }

    // An update through the API: the old addresses go, the new one comes.
    let mut current = endpoints.get("web").await.expect("get endpoints");
    current.subsets = eps(&[("10.180.0.44", "node-a")], &[]).subsets;
    endpoints
        .replace("web", &PostParams::default(), &current)
        .await
        .expect("replace endpoints");
    wait_model(&model, &port, &["10.180.0.44:8080 ready local"], "updated").await;
    let last = nft.scripts().concat();
    assert!(last.contains("10.180.0.44"), "{last}");

    // The Endpoints deleted: the port has no endpoint left.
    endpoints
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete endpoints");
    wait_model(&model, &port, &[], "deleted").await;
    proxy.abort();

    let requests = log.requests();
    assert!(
        log.has_path("/api/v1/endpoints"),
        "core Endpoints were watched: {requests:#?}"
    );
    assert!(
        !requests.iter().any(|r| r.contains("endpointslices")),
        "no slice was asked for: {requests:#?}"
    );
}
