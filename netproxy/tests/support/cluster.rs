//! The apiserver tier's helpers shared by the proxy's API tests: admin clients (from
//! `NODELET_TEST_KUBECONFIG` or a given kubeconfig, optionally recording every request's
//! method and path), a throwaway namespace deleted on drop, and a control plane of the
//! test's own started with `scripts/apiserver.sh` (its own run dir and ports, so the shared
//! tier is not disturbed) and stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

async fn config(path: &Path) -> Config {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kc = Kubeconfig::read_from(path).expect("read kubeconfig");
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig")
}

/// The shared tier's admin kubeconfig (`NODELET_TEST_KUBECONFIG`).
pub fn shared_kubeconfig() -> PathBuf {
    std::env::var_os("NODELET_TEST_KUBECONFIG")
        .expect(
            "NODELET_TEST_KUBECONFIG must name the real apiserver tier's admin kubeconfig (scripts/apiserver.sh start)",
        )
        .into()
}

/// An admin client of the shared tier.
pub async fn client() -> Client {
    client_from(&shared_kubeconfig()).await
}

/// A client from the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> Client {
    Client::try_from(config(path).await).expect("client")
}

/// The requests a recording client sent, as `METHOD /path?query`.
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Mutex<Vec<String>>>);

impl RequestLog {
    pub fn requests(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether a request's path (without the query) is exactly `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.requests().iter().any(|r| {
            r.split_once(' ')
                .map(|(_, p)| p.split('?').next() == Some(path))
                .unwrap_or(false)
        })
    }
}

/// A client from the kubeconfig at `path` that records every request it sends.
pub async fn recording_client(path: &Path) -> (Client, RequestLog) {
    let log = RequestLog::default();
    let l = log.0.clone();
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let pq = req
            .uri()
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default();
        if let Ok(mut l) = l.lock() {
            l.push(format!("{} {pq}", req.method()));
        }
        req
    });
    let client = kube::client::ClientBuilder::try_from(config(path).await)
        .expect("client builder")
        .with_layer(&layer)
        .build();
    (client, log)
}

/// A namespace created for the test, deleted when dropped (best effort, on a fresh
/// runtime thread).
pub struct NsGuard(Client, String);

impl NsGuard {
    /// Creates namespace `name`.
    pub async fn create(client: &Client, name: &str) -> Self {
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns"),
            )
            .await
            .expect("create namespace");
        Self(client.clone(), name.to_string())
    }

    pub fn name(&self) -> &str {
        &self.1
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let (client, name) = (self.0.clone(), self.1.clone());
        block_on_thread(async move {
            let _ = Api::<Namespace>::all(client)
                .delete(&name, &DeleteParams::default())
                .await;
        });
    }
}

/// Runs `fut` to its end on a fresh thread and runtime (for clean-up in `Drop`, which
/// may run inside or outside a runtime).
pub fn block_on_thread(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt")
            .block_on(fut);
    })
    .join();
}

/// An EndpointSlice of service `svc` (port `http` 8080) with one ready endpoint `ip` on
/// `node-a`, labelled as managed by the test so the EndpointSlice controllers leave it.
pub fn test_slice(ns: &str, svc: &str, name: &str, ip: &str) -> EndpointSlice {
    let eps = [nodelet_netproxy::testing::ep(ip, "node-a")];
    let mut s = nodelet_netproxy::testing::slice(ns, svc, name, "http", 8080, &eps);
    s.metadata.labels.get_or_insert_default().insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        "nodelet-test".into(),
    );
    s
}

/// A control plane of the test's own (`scripts/apiserver.sh` in run dir `dir`, ports of
/// its own), stopped on drop when this started it.
pub struct OwnControlPlane {
    dir: PathBuf,
    runtime_config: String,
    started_here: bool,
}

impl OwnControlPlane {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/apiserver.sh")
    }

    fn command(dir: &Path, runtime_config: &str, arg: &str) -> Command {
        let mut c = Command::new(Self::script());
        c.arg(arg)
            .env("NODELET_APISERVER_DIR", dir)
            .env("NODELET_APISERVER_RUNTIME_CONFIG", runtime_config);
        if Path::new("/usr/local/go/bin").is_dir() {
            let path = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{path}:/usr/local/go/bin"));
        }
        c
    }

    /// Starts (or finds running) a control plane in `dir` whose apiserver runs with
    /// `--runtime-config=<runtime_config>`.
    pub fn start(dir: &Path, runtime_config: &str) -> Self {
        let running = Self::command(dir, runtime_config, "status")
            .output()
            .is_ok_and(|o| o.status.success());
        let out = Self::command(dir, runtime_config, "start")
            .output()
            .expect("run scripts/apiserver.sh start");
        assert!(
            out.status.success(),
            "scripts/apiserver.sh start (run dir {}) failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_path_buf(),
            runtime_config: runtime_config.to_string(),
            started_here: !running,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }
}

impl Drop for OwnControlPlane {
    fn drop(&mut self) {
        if self.started_here {
            let _ = Self::command(&self.dir, &self.runtime_config, "stop").output();
        }
    }
}

/// The node the API tests' proxiers run as.
pub fn node_a() -> nodelet_netproxy::model::NodeTopology {
    nodelet_netproxy::model::NodeTopology {
        node_name: "node-a".into(),
        zone: None,
    }
}

/// Creates the selector-less Service `web` (port `http` 80 → 8080) in `ns`; its ClusterIP.
pub async fn create_web_service(client: &Client, ns: &str) -> String {
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .expect("service");
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("allocated ClusterIP")
}

/// Runs `proxier` against the apiserver through `client` on a task (`minSyncPeriod`
/// 100 ms, `syncPeriod` 30 s), `observer` seeing its events and syncs.
pub fn spawn_proxy<N, O>(
    client: Client,
    mut proxier: nodelet_netproxy::Proxier<N>,
    observer: O,
) -> tokio::task::JoinHandle<Result<(), nodelet_netproxy::watch::WatchError>>
where
    N: nodelet_netproxy::nft::exec::Nft + Send + 'static,
    O: nodelet_netproxy::runner::Observer<N> + Send + 'static,
    nodelet_netproxy::Proxier<N>: Send,
{
    tokio::spawn(async move {
        let periods = nodelet_netproxy::runner::Periods {
            min_sync_period: std::time::Duration::from_millis(100),
            sync_period: std::time::Duration::from_secs(30),
        };
        nodelet_netproxy::watch::run_proxy(client, &mut proxier, periods, observer).await
    })
}
