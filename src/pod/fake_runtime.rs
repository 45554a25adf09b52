//! A recording fake of the runtime for the pod core's unit tests: sandboxes and
//! containers kept in memory, every call recorded with the (tokio) time it came,
//! container exits and runtime errors injected by the test.
//!
//! Stopping a container honours its grace period in tokio time: a container the
//! test marked as ignoring SIGTERM is killed only when the grace period ends, so
//! tests running on paused time see exact grace periods.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use nodelet_cri::image::{ImageInfo, ImageRuntimeConfig, PullAuth, PullError};
use nodelet_cri::runtime::{
    ContainerConfig, ContainerInfo, ContainerState, ExecResult, PodRef, Runtime, RuntimeError,
    SandboxConfig, SandboxInfo,
};
use tokio::time::Instant;

use crate::pod::worker::Clock;

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `run_sandbox` for pod `uid`.
    RunSandbox(String),
    /// `remove_sandbox`.
    RemoveSandbox(String),
    /// `create_container` of container `name`, instance `attempt`.
    Create(String, u32),
    /// `start_container` of container `name`.
    Start(String),
    /// `stop_container` of container `name` with its grace period.
    Stop(String, Duration),
    /// `remove_container` of container `name`.
    Remove(String),
    /// `exec_sync` in container `name`.
    Exec(String, Vec<String>),
}

#[derive(Debug, Default)]
struct State {
    sandboxes: BTreeMap<String, SandboxInfo>,
    containers: BTreeMap<String, ContainerInfo>,
    next_id: u64,
    /// Containers (by name) that ignore their stop signal until SIGKILL.
    stubborn: HashSet<String>,
    /// Errors the next calls of an operation return, by operation.
    failures: BTreeMap<&'static str, VecDeque<String>>,
    /// Containers (by name) whose creation panics (a bug in the caller's stead).
    panics: HashSet<String>,
}

/// The fake runtime.
#[derive(Debug)]
pub struct FakeRuntime {
    clock: Clock,
    state: Mutex<State>,
    calls: Mutex<Vec<(Instant, Call)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn injected(op: &'static str, id: &str, message: String) -> RuntimeError {
    RuntimeError::Containerd {
        op,
        id: id.to_owned(),
        status: Box::new(tonic::Status::internal(message)),
    }
}

impl FakeRuntime {
    /// An empty runtime whose timestamps come from `clock`.
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            state: Mutex::default(),
            calls: Mutex::default(),
        }
    }

    /// Every call so far, with when it came.
    pub fn calls(&self) -> Vec<(Instant, Call)> {
        lock(&self.calls).clone()
    }

    /// Just the calls.
    pub fn call_list(&self) -> Vec<Call> {
        self.calls().into_iter().map(|(_, c)| c).collect()
    }

    fn record(&self, call: Call) {
        lock(&self.calls).push((Instant::now(), call));
    }

    fn fail(&self, op: &'static str, id: &str) -> Result<(), RuntimeError> {
        match lock(&self.state)
            .failures
            .get_mut(op)
            .and_then(VecDeque::pop_front)
        {
            Some(message) => Err(injected(op, id, message)),
            None => Ok(()),
        }
    }

    /// The next call of `op` (`run sandbox`, `create container`, `start container`)
    /// fails with `message`.
    pub fn fail_next(&self, op: &'static str, message: &str) {
        lock(&self.state)
            .failures
            .entry(op)
            .or_default()
            .push_back(message.to_owned());
    }

    /// Creating container `name` panics, standing in for a bug in a pod worker.
    pub fn panic_on_create(&self, name: &str) {
        lock(&self.state).panics.insert(name.to_owned());
    }

    /// Container `name` ignores its stop signal: only the grace period's end kills it.
    pub fn stubborn(&self, name: &str) {
        lock(&self.state).stubborn.insert(name.to_owned());
    }

    /// The running instance of container `name` exits with `code`.
    pub fn exit(&self, name: &str, code: i32) {
        let now = self.clock.now();
        let mut st = lock(&self.state);
        if let Some(c) = st
            .containers
            .values_mut()
            .filter(|c| c.name == name && c.state == ContainerState::Running)
            .max_by_key(|c| c.attempt)
        {
            c.state = ContainerState::Exited;
            c.exit_code = Some(code);
            c.finished_at = Some(now);
        }
    }

    /// The containers as the runtime has them.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        lock(&self.state).containers.values().cloned().collect()
    }

    /// The sandboxes as the runtime has them.
    pub fn sandboxes(&self) -> Vec<SandboxInfo> {
        lock(&self.state).sandboxes.values().cloned().collect()
    }

    fn name_of(&self, id: &str) -> String {
        lock(&self.state)
            .containers
            .get(id)
            .map(|c| c.name.clone())
            .unwrap_or_else(|| id.to_owned())
    }

    fn new_id(&self, prefix: &str) -> String {
        let mut st = lock(&self.state);
        st.next_id += 1;
        format!("{prefix}{}", st.next_id)
    }
}

/// The image every reference resolves to.
pub fn image(reference: &str) -> ImageInfo {
    ImageInfo {
        name: reference.to_owned(),
        id: "sha256:feed".to_owned(),
        repo_digest: "sha256:beef".to_owned(),
        chain_id: "sha256:cafe".to_owned(),
        size: 1,
        config: ImageRuntimeConfig::default(),
    }
}

impl Runtime for FakeRuntime {
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxInfo, RuntimeError> {
        self.record(Call::RunSandbox(config.pod.uid.clone()));
        self.fail("run sandbox", &config.pod.uid)?;
        let id = self.new_id("sb");
        let sb = SandboxInfo {
            id: id.clone(),
            pod: PodRef {
                uid: config.pod.uid.clone(),
                name: config.pod.name.clone(),
                namespace: config.pod.namespace.clone(),
            },
            attempt: config.attempt,
            ready: true,
            pid: 1,
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 88, 0, 2))],
            netns: None,
            host_network: config.host_network,
            share_pid: config.share_process_namespace,
            cgroup_parent: config.cgroup_parent.clone(),
            files_dir: PathBuf::from("/nonexistent"),
            log_directory: config.log_directory.clone(),
            created_at: self.clock.now(),
            runtime_handler: config.runtime_handler.clone(),
        };
        lock(&self.state).sandboxes.insert(id, sb.clone());
        Ok(sb)
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(Call::RemoveSandbox(id.to_owned()));
        lock(&self.state).sandboxes.remove(id);
        Ok(())
    }

    async fn list_sandboxes(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<SandboxInfo>, RuntimeError> {
        Ok(self
            .sandboxes()
            .into_iter()
            .filter(|s| pod_uid.is_none_or(|u| s.pod.uid == u))
            .collect())
    }

    async fn pull_image(&self, reference: &str, _: &PullAuth) -> Result<ImageInfo, PullError> {
        Ok(image(reference))
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        Ok(Some(image(reference)))
    }

    async fn create_container(
        &self,
        sandbox: &SandboxInfo,
        config: &ContainerConfig,
        image: &ImageInfo,
    ) -> Result<String, RuntimeError> {
        self.record(Call::Create(config.name.clone(), config.attempt));
        // A real create takes a while; let others in (tests interleave with a start).
        tokio::task::yield_now().await;
        let panics = lock(&self.state).panics.contains(&config.name);
        assert!(!panics, "injected panic creating {}", config.name);
        self.fail("create container", &config.name)?;
        let id = self.new_id("c");
        let info = ContainerInfo {
            id: id.clone(),
            pod_uid: sandbox.pod.uid.clone(),
            name: config.name.clone(),
            attempt: config.attempt,
            sandbox_id: sandbox.id.clone(),
            image: image.name.clone(),
            image_id: image.id.clone(),
            state: ContainerState::Created,
            pid: 0,
            created_at: self.clock.now(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            log_path: sandbox.log_directory.join(&config.log_path),
            labels: BTreeMap::new(),
        };
        lock(&self.state).containers.insert(id.clone(), info);
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(Call::Start(self.name_of(id)));
        self.fail("start container", id)?;
        let now = self.clock.now();
        if let Some(c) = lock(&self.state).containers.get_mut(id) {
            c.state = ContainerState::Running;
            c.pid = 100;
            c.started_at = Some(now);
        }
        Ok(())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let name = self.name_of(id);
        self.record(Call::Stop(name.clone(), grace));
        let (running, stubborn) = {
            let st = lock(&self.state);
            (
                st.containers
                    .get(id)
                    .is_some_and(|c| c.state == ContainerState::Running),
                st.stubborn.contains(&name),
            )
        };
        if !running {
            return Ok(());
        }
        let code = if stubborn {
            tokio::time::sleep(grace).await;
            137
        } else {
            143
        };
        let now = self.clock.now();
        if let Some(c) = lock(&self.state).containers.get_mut(id)
            && c.state == ContainerState::Running
        {
            c.state = ContainerState::Exited;
            c.exit_code = Some(code);
            c.finished_at = Some(now);
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.record(Call::Remove(self.name_of(id)));
        lock(&self.state).containers.remove(id);
        Ok(())
    }

    async fn owner_of(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        let st = lock(&self.state);
        Ok(st
            .containers
            .get(id)
            .map(|c| c.pod_uid.clone())
            .or_else(|| st.sandboxes.get(id).map(|s| s.pod.uid.clone())))
    }

    async fn list_containers(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(self
            .containers()
            .into_iter()
            .filter(|c| pod_uid.is_none_or(|u| c.pod_uid == u))
            .collect())
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        _: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        self.record(Call::Exec(self.name_of(id), cmd.to_vec()));
        Ok(ExecResult {
            exit_code: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }
}
