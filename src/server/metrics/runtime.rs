//! A [`Runtime`] that counts and times every operation the pod workers ask of the
//! wrapped one (`kubelet_runtime_operations_total`, `_duration_seconds`,
//! `_errors_total`, with upstream's CRI operation names as `operation_type`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nodelet_cri::image::{ImageInfo, PullAuth, PullError};
use nodelet_cri::runtime::{
    ContainerConfig, ContainerInfo, ExecResult, Runtime, RuntimeError, SandboxConfig, SandboxInfo,
};

use super::observe_runtime_operation;

/// The wrapped runtime.
pub struct Instrumented<R> {
    inner: Arc<R>,
}

impl<R> Instrumented<R> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<R>) -> Self {
        Self { inner }
    }
}

async fn timed<T, E>(op: &'static str, f: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let started = Instant::now();
    let r = f.await;
    observe_runtime_operation(op, started, r.is_err());
    r
}

impl<R: Runtime> Runtime for Instrumented<R> {
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxInfo, RuntimeError> {
        timed("run_podsandbox", self.inner.run_sandbox(config)).await
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        timed("remove_podsandbox", self.inner.remove_sandbox(id)).await
    }

    async fn list_sandboxes(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<SandboxInfo>, RuntimeError> {
        timed("list_podsandbox", self.inner.list_sandboxes(pod_uid)).await
    }

    async fn pull_image(&self, reference: &str, auth: &PullAuth) -> Result<ImageInfo, PullError> {
        timed("pull_image", self.inner.pull_image(reference, auth)).await
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        timed("image_status", self.inner.image(reference)).await
    }

    async fn create_container(
        &self,
        sandbox: &SandboxInfo,
        config: &ContainerConfig,
        image: &ImageInfo,
    ) -> Result<String, RuntimeError> {
        timed(
            "create_container",
            self.inner.create_container(sandbox, config, image),
        )
        .await
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        timed("start_container", self.inner.start_container(id)).await
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        timed("stop_container", self.inner.stop_container(id, grace)).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        timed("remove_container", self.inner.remove_container(id)).await
    }

    async fn owner_of(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        timed("container_status", self.inner.owner_of(id)).await
    }

    async fn list_containers(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        timed("list_containers", self.inner.list_containers(pod_uid)).await
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        timed("exec_sync", self.inner.exec_sync(id, cmd, timeout)).await
    }
}
