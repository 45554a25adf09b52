//! What the runtime-level integration tests (`exec.rs`, `user.rs`) share: a
//! `ContainerdRuntime` in a containerd namespace of the test's own, with a state dir
//! and a cgroup parent of its own, and a host-network sandbox (no CNI) in it. Drop
//! removes the namespace and the cgroup parent, also when the test fails.

#![allow(clippy::unwrap_used, dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nodelet_cri::cni::CniConfig;
use nodelet_cri::runtime::{
    ContainerdRuntime, PodRef, Runtime, RuntimeConfig, SandboxConfig, SandboxInfo,
};

/// One test's runtime, namespace, state directory and cgroup parent.
pub struct TestRuntime {
    /// The containerd socket.
    pub socket: String,
    /// The test's containerd namespace, `nodelet-test-<id>`.
    pub ns: String,
    /// A unique id for this test's objects.
    pub id: String,
    /// The cgroup parent sandboxes go under, `/nodelet-test-<name>-<id>`.
    pub cgroup_parent: String,
    /// State, pod logs (`logs/`) and container log symlinks (`containers/`).
    pub dir: tempfile::TempDir,
    /// The runtime under test.
    pub runtime: ContainerdRuntime,
}

impl TestRuntime {
    /// Connects to the test containerd (`NODELET_TEST_CONTAINERD`) in a new namespace;
    /// `name` tells this test's directories and cgroup apart.
    pub async fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let socket = nodelet_testkit::containerd_socket();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id = format!(
            "{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns = format!("nodelet-test-{id}");
        let dir = tempfile::Builder::new()
            .prefix(&format!("nodelet-{name}-"))
            .tempdir()
            .unwrap();
        let config = RuntimeConfig {
            endpoint: socket.clone(),
            namespace: ns.clone(),
            state_dir: dir.path().join("runtime"),
            // The real CRI log driver (this crate's `nodelet-cri-log` binary).
            log_driver: env!("CARGO_BIN_EXE_nodelet-cri-log").into(),
            container_logs_dir: dir.path().join("containers"),
            log_rotation: nodelet_cri::logs::RotationPolicy::default(),
            registries: Default::default(),
            handlers: nodelet_cri::runtime::RuntimeHandlers::default(),
            cni: CniConfig {
                conf_dir: dir.path().join("cni"),
                cache_dir: dir.path().join("cni-cache"),
                ..CniConfig::default()
            },
            builtin_network: None,
        };
        let runtime = match ContainerdRuntime::connect(config).await {
            Ok(r) => r,
            Err(e) => panic!(
                "cannot reach containerd at {socket} ({e}); start a private one with \
                 `scripts/containerd-private.sh start` and set NODELET_TEST_CONTAINERD to \
                 the socket it prints"
            ),
        };
        TestRuntime {
            cgroup_parent: format!("/nodelet-test-{name}-{id}"),
            socket,
            ns,
            id,
            dir,
            runtime,
        }
    }

    /// A running host-network sandbox for pod `name`.
    pub async fn host_network_sandbox(&self, name: &str) -> SandboxInfo {
        self.runtime
            .run_sandbox(&SandboxConfig {
                pod: PodRef {
                    uid: format!("uid-{}", self.id),
                    name: name.into(),
                    namespace: "default".into(),
                },
                attempt: 0,
                hostname: name.into(),
                host_network: true,
                host_ipc: false,
                host_pid: false,
                share_process_namespace: false,
                log_directory: self.dir.path().join("logs"),
                cgroup_parent: Some(self.cgroup_parent.clone()),
                dns: None,
                host_aliases: vec![],
                fqdn: None,
                sysctls: vec![],
                oom_score_adj: None,
                runtime_handler: String::new(),
            })
            .await
            .expect("run sandbox")
    }

    /// Removes everything in the namespace, then the namespace and the cgroup parent;
    /// returns what failed.
    pub fn cleanup(&self) -> Vec<String> {
        let mut errors = nodelet_testkit::purge_namespace(&self.socket, &self.ns);
        if let Err((path, e)) = nodelet_testkit::remove_cgroup(&self.cgroup_parent) {
            errors.push(format!("cgroup {}: {e}", path.display()));
        }
        errors
    }
}

impl Drop for TestRuntime {
    fn drop(&mut self) {
        let errors = self.cleanup();
        if !errors.is_empty() {
            if std::thread::panicking() {
                eprintln!("cleanup of namespace {} failed: {errors:#?}", self.ns);
            } else {
                panic!("cleanup of namespace {} failed: {errors:#?}", self.ns);
            }
        }
    }
}
