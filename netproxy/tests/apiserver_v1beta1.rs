//! The proxy against an apiserver that serves EndpointSlices only as
//! `discovery.k8s.io/v1beta1`: a real v1.24 kube-apiserver (the newest release with
//! v1beta1, removed in 1.25) started with `--runtime-config=discovery.k8s.io/v1=false`,
//! as 1.20 serves them. The control plane is the test's own: `scripts/apiserver.sh` with
//! `NODELET_K8S_VERSION` (default v1.24.17, or `$NODELET_TEST_V1BETA1_K8S_VERSION`, any of
//! 1.21–1.24), `NODELET_K8S_PROGRAMS=kube-apiserver` (etcd and kube-apiserver only) and
//! `NODELET_APISERVER_RUNTIME_CONFIG`, run dir `$NODELET_TEST_V1BETA1_APISERVER_DIR` (default
//! `target/nodelet-apiserver-v1beta1`), stopped at the end unless it was already running.
//!
//! The old release is not built by CI (about 15 min with `scripts/build-apiserver.sh`), so
//! the test is ignored; with the binaries built it runs with
//! `cargo test -p nodelet-netproxy --test apiserver_v1beta1 -- --ignored`.
//!
//! Discovery picks v1beta1; a selector-less Service and a v1beta1 slice (nodes given by the
//! `topology` map and by `nodeName`) created through the API reach the proxier's model and
//! its nft script, a slice update and deletion follow, and the proxy never asked for core
//! Endpoints nor v1 slices. No kernel state is touched (a recording `nft`); no root needed.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use nodelet_netproxy::Proxier;
use nodelet_netproxy::legacy::{EndpointsSource, discover};
use nodelet_netproxy::model::IpFamily;
use nodelet_netproxy::nft::RenderConfig;
use nodelet_netproxy::nft::exec::RecordingNft;
use serde_json::{Value, json};
use support::cluster::{
    Model, ModelSnapshot, NsGuard, OwnControlPlane, client_from, create_web_service, node_a,
    recording_client, spawn_proxy, wait_model,
};

/// The release the test runs against: the newest that serves `discovery.k8s.io/v1beta1`.
const DEFAULT_VERSION: &str = "v1.24.17";

fn version() -> String {
    std::env::var("NODELET_TEST_V1BETA1_K8S_VERSION").unwrap_or_else(|_| DEFAULT_VERSION.into())
}

fn run_dir() -> PathBuf {
    std::env::var_os("NODELET_TEST_V1BETA1_APISERVER_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/nodelet-apiserver-v1beta1"),
        PathBuf::from,
    )
}

/// The built kube-apiserver of `version`, where `scripts/build-apiserver.sh` puts it; the
/// test fails at once (rather than start a quarter-hour build) when it is not there.
fn require_build(version: &str) {
    let cache = std::env::var_os("NODELET_APISERVER_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/nodelet-test"), PathBuf::from);
    let bin = cache.join(format!("k8s-{version}/bin"));
    for program in ["kube-apiserver", "etcd"] {
        assert!(
            bin.join(program).is_file(),
            "{} missing: build it first with \
             NODELET_K8S_VERSION={version} NODELET_K8S_PROGRAMS=kube-apiserver scripts/build-apiserver.sh \
             (about 15 min)",
            bin.join(program).display()
        );
    }
}

/// A v1beta1 EndpointSlice `web-beta` of Service `web`, port `http` 8080, with `endpoints`.
fn beta_slice(endpoints: &Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-beta",
            "labels": {
                "kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": "nodelet-test",
            },
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
    .expect("v1beta1 slice")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kube-apiserver v1.24 built by NODELET_K8S_VERSION=v1.24.17 NODELET_K8S_PROGRAMS=kube-apiserver scripts/build-apiserver.sh (about 15 min)"]
async fn v1beta1_slices_reach_the_proxier_when_the_server_lacks_v1() {
    let version = version();
    require_build(&version);
    let cp = OwnControlPlane::start_with(
        &run_dir(),
        &[
            ("NODELET_K8S_VERSION", version.as_str()),
            ("NODELET_K8S_PROGRAMS", "kube-apiserver"),
            (
                "NODELET_APISERVER_RUNTIME_CONFIG",
                "discovery.k8s.io/v1=false",
            ),
        ],
    );
    // The test's own requests go through a plain client; the recording one is the proxy's.
    let client = client_from(&cp.kubeconfig()).await;
    let (proxy_client, log) = recording_client(&cp.kubeconfig()).await;
    let info = client.apiserver_version().await.expect("server version");
    assert_eq!(info.git_version, version, "the server is the old release");
    assert_eq!(
        discover(&proxy_client).await,
        EndpointsSource::V1Beta1,
        "a server with only discovery.k8s.io/v1beta1"
    );

    let ns_guard = NsGuard::create(&client, &format!("proxybeta-{}", std::process::id())).await;
    let ns = ns_guard.name().to_string();
    let vip = create_web_service(&client, &ns).await;

    let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
    let slices: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::from_gvk(&gvk));
    // The node of .51 and .53 only in v1beta1's `topology` map, that of .52 in `nodeName`.
    slices
        .create(
            &PostParams::default(),
            &beta_slice(&json!([
                {"addresses": ["10.180.0.51"], "conditions": {"ready": true},
                 "topology": {"kubernetes.io/hostname": "node-a",
                              "topology.kubernetes.io/zone": "zone-a"}},
                {"addresses": ["10.180.0.52"], "conditions": {"ready": true},
                 "nodeName": "node-b"},
                {"addresses": ["10.180.0.53"], "conditions": {"ready": false},
                 "topology": {"kubernetes.io/hostname": "node-b"}},
            ])),
        )
        .await
        .expect("create v1beta1 slice");

    let nft = RecordingNft::default();
    let proxier = Proxier::new(nft.clone(), RenderConfig::new(IpFamily::V4), node_a());
    let model = Model::default();
    let proxy = spawn_proxy(proxy_client, proxier, ModelSnapshot(model.clone()));

    let port = format!("{ns}/web:http");
    wait_model(
        &model,
        &port,
        &[
            "10.180.0.51:8080 ready local",
            "10.180.0.52:8080 ready remote",
            "10.180.0.53:8080 not-ready remote",
        ],
        "created",
    )
    .await;
    let scripts = nft.scripts().concat();
    for needle in [vip.as_str(), "10.180.0.51", "10.180.0.52"] {
        assert!(
            scripts.contains(needle),
            "{needle} not programmed:\n{scripts}"
        );
    }

    // An update through the API: the old endpoints go, the new one comes.
    let mut current = slices.get("web-beta").await.expect("get slice");
    current.data["endpoints"] = json!([
        {"addresses": ["10.180.0.54"], "conditions": {"ready": true},
         "topology": {"kubernetes.io/hostname": "node-a"}},
    ]);
    slices
        .replace("web-beta", &PostParams::default(), &current)
        .await
        .expect("replace slice");
    wait_model(&model, &port, &["10.180.0.54:8080 ready local"], "updated").await;
    let last = nft.scripts().concat();
    assert!(last.contains("10.180.0.54"), "{last}");

    // The slice deleted: the port has no endpoint left.
    slices
        .delete("web-beta", &DeleteParams::default())
        .await
        .expect("delete slice");
    wait_model(&model, &port, &[], "deleted").await;
    proxy.abort();

    let requests = log.requests();
    let paths: Vec<&str> = requests
        .iter()
        .filter_map(|r| {
            r.split_once(' ')
                .map(|(_, p)| p.split('?').next().unwrap_or(p))
        })
        .collect();
    assert!(
        log.has_path("/apis/discovery.k8s.io/v1beta1/endpointslices"),
        "v1beta1 slices were watched: {requests:#?}"
    );
    assert!(
        !paths.iter().any(|p| p.ends_with("/endpoints")),
        "no core Endpoints were asked for: {requests:#?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("/apis/discovery.k8s.io/v1/")),
        "no v1 slice was asked for: {requests:#?}"
    );
}
