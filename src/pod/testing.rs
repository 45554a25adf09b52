//! What the pod core's unit tests share: a worker environment on the fake runtime,
//! a temp-dir root and cgroupfs, tokio's paused clock, pods from JSON, and waiting
//! on conditions in simulated time.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

use crate::image::manager::ImageManager;
use crate::image::pull_limit::PullLimiter;
use crate::pod::fake_runtime::FakeRuntime;
use crate::pod::status_store::StatusStore;
use crate::pod::worker::{Clock, WorkerEnv};

/// A worker environment on the fake runtime. Keep it alive for the test.
pub struct Harness {
    pub rt: Arc<FakeRuntime>,
    pub env: Arc<WorkerEnv<FakeRuntime>>,
    pub store: Arc<StatusStore>,
    _root: tempfile::TempDir,
    _cgroupfs: tempfile::TempDir,
}

/// The wall time the tests' clock starts at.
pub fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

impl Harness {
    /// A fresh environment (call from a `start_paused` tokio test).
    pub fn new() -> Self {
        let clock = Clock::Tokio {
            base: epoch(),
            since: Instant::now(),
        };
        let rt = Arc::new(FakeRuntime::new(clock));
        let root = tempfile::tempdir().expect("tempdir");
        let (cgroupfs, cgroups) = crate::pod::cgroups::testing::fake_pod_cgroups();
        let store = Arc::new(StatusStore::new());
        let images = ImageManager::new(
            Arc::clone(&rt),
            nodelet_cri::image::PullAuth::anonymous(),
            None,
            PullLimiter::new(0, 0).expect("no limit"),
        );
        let env = Arc::new(WorkerEnv {
            runtime: Arc::clone(&rt),
            root_dir: root.path().join("root"),
            pod_logs_dir: root.path().join("logs"),
            container_logs_dir: root.path().join("containers"),
            cgroups: Arc::new(cgroups),
            node_name: "node".into(),
            host_ip: "192.0.2.1".into(),
            capacity: crate::pod::podspec::NodeCapacity {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
            },
            dns: crate::pod::podspec::DnsSettings::default(),
            images: Arc::new(images),
            volumes: Arc::new(crate::volume::VolumeManager::new(
                root.path().join("root/pods"),
                Arc::new(crate::volume::StaticObjects::new()),
            )),
            events: crate::events::EventRecorder::new("node", 1000),
            statuses: Arc::clone(&store),
            agent_start: Instant::now(),
            clock,
        });
        Self {
            rt,
            env,
            store,
            _root: root,
            _cgroupfs: cgroupfs,
        }
    }

    /// Pod `uid`'s phase in the store.
    pub fn phase(&self, uid: &str) -> Option<String> {
        self.store
            .snapshot()
            .get(uid)
            .and_then(|p| p.status.as_ref()?.phase.clone())
    }

    /// The waiting reason and message of container `name` of pod `uid`.
    pub fn waiting(&self, uid: &str, name: &str) -> Option<(String, String)> {
        let snap = self.store.snapshot();
        let pod = snap.get(uid)?;
        let status = pod.status.as_ref()?;
        let cs = status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
            .find(|c| c.name == name)?;
        let w = cs.state.as_ref()?.waiting.as_ref()?;
        Some((
            w.reason.clone().unwrap_or_default(),
            w.message.clone().unwrap_or_default(),
        ))
    }

    /// How many instances of container `name` were created.
    pub fn creates(&self, name: &str) -> usize {
        self.rt
            .call_list()
            .iter()
            .filter(|c| matches!(c, crate::pod::fake_runtime::Call::Create(n, _) if n == name))
            .count()
    }

    /// Whether container `name` has a running instance.
    pub fn running(&self, name: &str) -> bool {
        self.rt
            .containers()
            .iter()
            .any(|c| c.name == name && c.state == nodelet_cri::runtime::ContainerState::Running)
    }
}

/// A pod from JSON, with a UID, name and namespace filled in when missing.
pub fn pod(uid: &str, json: serde_json::Value) -> Pod {
    let mut pod: Pod = serde_json::from_value(json).expect("pod json");
    pod.metadata.uid.get_or_insert_with(|| uid.to_owned());
    pod.metadata
        .name
        .get_or_insert_with(|| format!("pod-{uid}"));
    pod.metadata
        .namespace
        .get_or_insert_with(|| "default".to_owned());
    pod
}

/// A pod with one container `c` running `sleep`.
pub fn simple_pod(uid: &str, restart_policy: &str) -> Pod {
    pod(
        uid,
        serde_json::json!({
            "spec": {
                "restartPolicy": restart_policy,
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1d"]}]
            }
        }),
    )
}

/// Waits (in simulated time, 100 ms steps, at most `limit`) until `cond` holds.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
