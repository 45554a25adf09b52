//! The apiserver tier's helpers shared by the proxy's API tests: admin clients (from
//! `NODELET_TEST_KUBECONFIG` or a given kubeconfig, optionally recording every request's
//! method and path), a throwaway namespace deleted on drop, and a control plane of the
//! test's own started with `scripts/apiserver.sh` (its own run dir and ports, so the shared
//! tier is not disturbed) and stopped on drop, and an observer copying the proxier's model
//! after every sync for tests to wait on.

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
    /// The script's environment (`NODELET_APISERVER_RUNTIME_CONFIG`, `NODELET_K8S_VERSION` …).
    env: Vec<(String, String)>,
    started_here: bool,
}

impl OwnControlPlane {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/apiserver.sh")
    }

    fn command(dir: &Path, env: &[(String, String)], arg: &str) -> Command {
        let mut c = Command::new(Self::script());
        c.arg(arg).env("NODELET_APISERVER_DIR", dir);
        c.envs(env.iter().map(|(k, v)| (k, v)));
        if Path::new("/usr/local/go/bin").is_dir() {
            let path = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{path}:/usr/local/go/bin"));
        }
        c
    }

    /// Starts (or finds running) a control plane in `dir` whose apiserver runs with
    /// `--runtime-config=<runtime_config>`.
    pub fn start(dir: &Path, runtime_config: &str) -> Self {
        Self::start_with(dir, &[("NODELET_APISERVER_RUNTIME_CONFIG", runtime_config)])
    }

    /// Starts (or finds running) a control plane in `dir`, `scripts/apiserver.sh` (and the
    /// `scripts/build-apiserver.sh` it calls) run with the environment `env` added.
    pub fn start_with(dir: &Path, env: &[(&str, &str)]) -> Self {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let running = Self::command(dir, &env, "status")
            .output()
            .is_ok_and(|o| o.status.success());
        let out = Self::command(dir, &env, "start")
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
            env,
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
            let _ = Self::command(&self.dir, &self.env, "stop").output();
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

/// Service port (`ns/name:port`) to its endpoints (`ip:port ready|not-ready local|remote`)
/// as of the proxier's last successful sync.
pub type Model = Arc<Mutex<std::collections::BTreeMap<String, Vec<String>>>>;

/// An observer copying the proxier's model into a `Model` after every successful sync.
pub struct ModelSnapshot(pub Model);

impl<N: nodelet_netproxy::nft::exec::Nft> nodelet_netproxy::runner::Observer<N> for ModelSnapshot {
    fn synced(
        &mut self,
        proxier: &nodelet_netproxy::Proxier<N>,
        result: &Result<nodelet_netproxy::SyncReport, nodelet_netproxy::SyncError>,
        _elapsed: std::time::Duration,
    ) {
        if result.is_err() {
            return;
        }
        let (services, endpoints) = proxier.maps();
        let model = services
            .iter()
            .map(|(name, _)| {
                let eps = endpoints
                    .get(name)
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {} {}",
                            e.addr_string(),
                            if e.ready { "ready" } else { "not-ready" },
                            if e.is_local { "local" } else { "remote" }
                        )
                    })
                    .collect();
                (
                    format!("{}/{}:{}", name.namespace, name.name, name.port),
                    eps,
                )
            })
            .collect();
        if let Ok(mut m) = self.0.lock() {
            *m = model;
        }
    }
}

/// Waits (30 s at most) until the model's endpoints of `port` are `want` (sorted).
pub async fn wait_model(model: &Model, port: &str, want: &[&str], what: &str) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = model
            .lock()
            .map(|m| m.get(port).cloned())
            .unwrap_or_default();
        let mut sorted = got.clone().unwrap_or_default();
        sorted.sort();
        if got.is_some() && sorted == want {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{what}: the model's endpoints of {port} are {got:?}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
