//! [`Runtime`] on containerd's native API: pause sandboxes with pinned network
//! namespaces and CNI, app containers that join them, CRI log files through the shim
//! logging driver, and labels on every object so a restarted agent finds them again.
//!
//! This module holds the runtime's handle and the listings; the rest is split by
//! concern: [`sandbox`] (making and tearing down sandboxes), [`container`] (creating,
//! starting, stopping and removing app containers), [`record`] (container records and
//! their labels), [`tasks`] (containerd tasks) and [`exits`] (exited tasks recorded
//! and deleted so their shims exit).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{Container, GetContainerRequest, ListContainersRequest};
use tokio_stream::StreamExt as _;
use tonic::Code;

mod container;
mod created;
mod exits;
mod limit;
mod record;
mod sandbox;
mod tasks;

use super::events::{self, RuntimeEvent};
use super::records::{self};
use super::{
    ContainerConfig, ContainerInfo, Runtime, RuntimeError, SandboxConfig, SandboxInfo, keys, oom,
};
use crate::cni::CniConfig;
use crate::cni_cache::CniCache;
use crate::containerd::Containerd;
use crate::image::ImageInfo;
use crate::logs;
use crate::podnet::{BuiltinNetwork, PodNetwork};

/// The largest containerd reply decoded, above tonic's 4 MiB default. Records are
/// streamed one by one, but containerd's task list has no filter or stream: it is one
/// reply for the whole namespace (about 100 bytes a task), and a node near its pod
/// limit with many containers per pod must not lose every sync to its size.
const MAX_DECODED_REPLY: usize = 64 << 20;
/// How long a killed process gets to go after SIGKILL before the stop is an error.
const KILL_WAIT: Duration = Duration::from_secs(10);
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

/// How to reach containerd and where the runtime keeps its files.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `unix:///run/containerd/containerd.sock`.
    pub endpoint: String,
    /// containerd namespace (`k8s.io`).
    pub namespace: String,
    /// Sandbox files and network namespace pins live here.
    pub state_dir: PathBuf,
    /// The binary the runc shim starts as the CRI log driver (the `nodelet` binary).
    pub log_driver: PathBuf,
    /// Registry transport settings, mirrors and the node's credentials file.
    pub registries: crate::image::RegistryConfig,
    /// The runtime handlers pods can name (see [`crate::runtime::handlers`]); the
    /// default is runc through `io.containerd.runc.v2`.
    pub handlers: crate::runtime::RuntimeHandlers,
    /// CNI configuration.
    pub cni: CniConfig,
    /// The built-in pod network, used when the CNI config directory holds no
    /// configuration; `None` makes a missing CNI config an error.
    pub builtin_network: Option<BuiltinNetwork>,
    /// Where the `<pod>_<namespace>_<container>-<id>.log` symlinks to running
    /// containers' log files go (`/var/log/containers`, upstream's
    /// `legacyContainerLogsDir`).
    pub container_logs_dir: PathBuf,
    /// How the log driver rotates container logs (`containerLogMaxSize`,
    /// `containerLogMaxFiles`).
    pub log_rotation: logs::RotationPolicy,
}

/// The containerd-backed runtime.
#[derive(Debug, Clone)]
pub struct ContainerdRuntime {
    containerd: Containerd,
    config: RuntimeConfig,
    /// The lowest `oom_score_adj` runc can set here (see [`oom`]).
    lowest_oom_score_adj: i32,
    /// The bound on kill and delete calls in flight to each shim (see [`limit`]).
    shim_calls: Arc<limit::ShimLimiter>,
    /// The CNI config, parsed once and reloaded when its directory changes.
    cni: Arc<CniCache>,
    /// The built-in pod network (see [`RuntimeConfig::builtin_network`]).
    podnet: Option<Arc<PodNetwork>>,
    /// Containers created and not yet started by this process (see [`created`]).
    created: Arc<created::Created>,
}

pub(super) fn grpc(op: &'static str, id: &str) -> impl FnOnce(tonic::Status) -> RuntimeError {
    let id = id.to_owned();
    move |status| RuntimeError::Containerd {
        op,
        id,
        status: Box::new(status),
    }
}

/// The shim a record's task runs in, named by its group: a container's sandbox, or a
/// sandbox itself.
pub(super) fn shim_group(c: &Container) -> String {
    c.labels
        .get(super::keys::SANDBOX_ID)
        .unwrap_or(&c.id)
        .clone()
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { path, source }
}

/// A new random ID of `bytes` random bytes in hex: 32 bytes (64 hex digits, the form
/// CRI implementations use) for objects, 16 for exec processes.
pub(super) fn new_id(bytes: usize) -> Result<String, RuntimeError> {
    let mut buf = vec![0u8; bytes];
    let path = Path::new("/dev/urandom");
    std::io::Read::read_exact(
        &mut std::fs::File::open(path).map_err(io_err(path))?,
        &mut buf,
    )
    .map_err(io_err(path))?;
    Ok(hex::encode(buf))
}

impl ContainerdRuntime {
    /// The cached CNI network config.
    pub(crate) fn cni_cache(&self) -> &CniCache {
        &self.cni
    }

    /// The built-in pod network, if configured.
    pub fn builtin_network(&self) -> Option<&PodNetwork> {
        self.podnet.as_deref()
    }

    /// The runtime handler of that name (`""`: the default).
    pub(super) fn runtime_handler(
        &self,
        name: &str,
    ) -> Result<&crate::runtime::RuntimeHandler, RuntimeError> {
        self.config
            .handlers
            .get(name)
            .ok_or_else(|| RuntimeError::NoRuntimeHandler {
                handler: name.to_owned(),
            })
    }

    /// The built-in network when it applies: configured, and no CNI config file present.
    fn builtin_for_setup(&self, id: &str) -> Result<Option<&PodNetwork>, RuntimeError> {
        let Some(podnet) = self.podnet.as_deref() else {
            return Ok(None);
        };
        let has_cni = self
            .cni
            .has_config()
            .map_err(|source| RuntimeError::Network {
                id: id.to_owned(),
                source: Box::new(source),
            })?;
        Ok((!has_cni).then_some(podnet))
    }

    /// Connects to containerd.
    ///
    /// # Errors
    /// [`RuntimeError::Connect`] when containerd can't be reached.
    pub async fn connect(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let containerd = Containerd::connect(&config.endpoint, &config.namespace).await?;
        let podnet = match &config.builtin_network {
            Some(net) => Some(Arc::new(PodNetwork::new(net.clone()).map_err(
                |source| RuntimeError::BuiltinNetwork {
                    id: String::new(),
                    source: Box::new(source),
                },
            )?)),
            None => None,
        };
        Ok(Self {
            containerd,
            podnet,
            cni: Arc::new(CniCache::new(config.cni.clone())),
            config,
            lowest_oom_score_adj: oom::lowest_allowed(),
            shim_calls: Arc::default(),
            created: Arc::default(),
        })
    }

    /// The containerd handle (images, namespace).
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// The runtime configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Follows containerd's task events, forwarding them to `tx` until it closes.
    pub async fn follow_events(&self, tx: tokio::sync::mpsc::Sender<RuntimeEvent>) {
        events::follow(self.containerd.clone(), tx).await;
    }

    fn containers(&self) -> ContainersClient<crate::containerd::CountedChannel> {
        ContainersClient::new(self.containerd.channel())
            .max_decoding_message_size(MAX_DECODED_REPLY)
    }

    fn tasks(&self) -> TasksClient<crate::containerd::CountedChannel> {
        TasksClient::new(self.containerd.channel()).max_decoding_message_size(MAX_DECODED_REPLY)
    }

    fn netns_path(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("netns").join(id)
    }

    fn files_dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("sandboxes").join(id)
    }

    async fn get_container(&self, id: &str) -> Result<Option<Container>, RuntimeError> {
        let req = self
            .containerd
            .request(GetContainerRequest { id: id.to_owned() });
        match self.containers().get(req).await {
            Ok(resp) => Ok(resp.into_inner().container),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(grpc("get container", id)(s)),
        }
    }

    /// The container records matching `filter` (all with `None`), streamed one per
    /// message (`ListStream`): a record carries its OCI spec (about 4.5 KB), so a
    /// single `List` reply of a pod with a thousand containers passes gRPC's 4 MiB.
    pub(super) async fn list_raw(
        &self,
        filter: Option<String>,
    ) -> Result<Vec<Container>, RuntimeError> {
        let req = self.containerd.request(ListContainersRequest {
            filters: filter.into_iter().collect(),
        });
        let mut stream = self
            .containers()
            .list_stream(req)
            .await
            .map_err(grpc("list containers", ""))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(msg) = stream.next().await {
            out.extend(msg.map_err(grpc("list containers", ""))?.container);
        }
        Ok(out)
    }

    fn kind_filter(kind: &str, pod_uid: Option<&str>) -> String {
        let mut f = format!("labels.{:?}=={kind:?}", keys::KIND);
        if let Some(uid) = pod_uid {
            f.push_str(&format!(",labels.{:?}=={uid:?}", keys::POD_UID));
        }
        f
    }
}

impl Runtime for ContainerdRuntime {
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxInfo, RuntimeError> {
        self.sandbox_run(config).await
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.sandbox_remove(id).await
    }

    async fn list_sandboxes(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<SandboxInfo>, RuntimeError> {
        let records = self
            .list_raw(Some(Self::kind_filter(keys::KIND_SANDBOX, pod_uid)))
            .await?;
        let tasks = self.tasks_of(&records).await?;
        if pod_uid.is_some() {
            // A pod's worker decides from this whether to replace its sandbox.
            tasks::require_known_states(&records, &tasks)?;
        }
        Ok(records
            .iter()
            .map(|c| records::sandbox_info(c, tasks.get(&c.id), self.files_dir(&c.id)))
            .collect())
    }

    async fn pull_image(
        &self,
        reference: &str,
        auth: &crate::image::PullAuth,
    ) -> Result<ImageInfo, crate::image::PullError> {
        self.containerd
            .pull_image(reference, auth, &self.config.registries)
            .await
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        Ok(self.containerd.get_image(reference).await?)
    }

    async fn create_container(
        &self,
        sandbox: &SandboxInfo,
        config: &ContainerConfig,
        image: &ImageInfo,
    ) -> Result<String, RuntimeError> {
        self.container_create(sandbox, config, image).await
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.container_start(id).await
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.container_stop(id, grace).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.container_remove(id).await
    }

    async fn owner_of(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self
            .get_container(id)
            .await?
            .and_then(|c| c.labels.get(keys::POD_UID).cloned()))
    }

    async fn list_containers(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut records = self
            .list_raw(Some(Self::kind_filter(keys::KIND_CONTAINER, pod_uid)))
            .await?;
        let tasks = self.tasks_of(&records).await?;
        self.reread_taskless(&mut records, &tasks).await?;
        self.settle_exited(&mut records, &tasks).await;
        Ok(records
            .iter()
            .map(|c| records::container_info(c, tasks.get(&c.id)))
            .collect())
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<super::ExecResult, RuntimeError> {
        // The inherent method (runtime/exec.rs), not this one.
        ContainerdRuntime::exec_sync(self, id, cmd, timeout).await
    }
}
