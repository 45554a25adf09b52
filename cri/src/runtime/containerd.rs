//! [`Runtime`] on containerd's native API: pause sandboxes with pinned network
//! namespaces and CNI, app containers that join them, CRI log files through the shim
//! logging driver, and labels on every object so a restarted agent finds them again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::container::Runtime as ContainerRuntimeInfo;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest, ListContainersRequest,
    StartRequest, UpdateContainerRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tracing::{debug, info, warn};

mod tasks;

use super::events::{self, RuntimeEvent};
use super::records::{self, label, pod_labels, pod_of, start_failure_labels};
use super::{
    ContainerConfig, ContainerInfo, PodRef, Runtime, RuntimeError, SandboxConfig, SandboxInfo,
    keys, oom, pod_files, spec, user,
};
use crate::cni::{CniConfig, CniRequest};
use crate::cni_cache::CniCache;
use crate::containerd::Containerd;
use crate::image::ImageInfo;
use crate::logs;
use crate::netns::NetNs;
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
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The image's `StopSignal`, recorded at creation so a stop doesn't need the image.
const STOP_SIGNAL_LABEL: &str = "io.nodelet.stop-signal";

/// Parses a stop signal as images name it: `SIGQUIT`, `QUIT` or `3`.
fn parse_signal(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .and_then(|sig| u32::try_from(sig as i32).ok())
}

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
    /// containerd runtime name (`io.containerd.runc.v2`).
    pub runtime_name: String,
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
    /// The CNI config, parsed once and reloaded when its directory changes.
    cni: Arc<CniCache>,
    /// The built-in pod network (see [`RuntimeConfig::builtin_network`]).
    podnet: Option<Arc<PodNetwork>>,
}

/// containerd's `containerd.runc.v1.Options` (api/types/runc/options/oci.proto),
/// reduced to the one field nodelet sets: containerd-client doesn't generate this
/// type, so the message is declared here with prost.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    /// `bool systemd_cgroup = 9`: runc manages cgroups through systemd.
    #[prost(bool, tag = "9")]
    systemd_cgroup: bool,
}

/// The runc shim options for the systemd cgroup driver (`SystemdCgroup = true` in
/// containerd's CRI runc options).
fn runc_systemd_options() -> prost_types::Any {
    use prost::Message as _;
    prost_types::Any {
        type_url: "containerd.runc.v1.Options".to_owned(),
        value: RuncOptions {
            systemd_cgroup: true,
        }
        .encode_to_vec(),
    }
}

pub(super) fn grpc(op: &'static str, id: &str) -> impl FnOnce(tonic::Status) -> RuntimeError {
    let id = id.to_owned();
    move |status| RuntimeError::Containerd {
        op,
        id,
        status: Box::new(status),
    }
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

    fn containers(&self) -> ContainersClient<tonic::transport::Channel> {
        ContainersClient::new(self.containerd.channel())
            .max_decoding_message_size(MAX_DECODED_REPLY)
    }

    fn tasks(&self) -> TasksClient<tonic::transport::Channel> {
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

    /// Sends `signal` to a task; `Ok(false)` when there is no live process to signal.
    async fn kill(&self, id: &str, signal: u32) -> Result<bool, RuntimeError> {
        let req = self.containerd.request(KillRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal,
            all: false,
        });
        match self.tasks().kill(req).await {
            Ok(_) => Ok(true),
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(false),
            Err(s) => Err(grpc("kill task", id)(s)),
        }
    }

    /// Waits for a task's exit; `Ok(false)` if `timeout` passed first.
    async fn wait(&self, id: &str, timeout: Duration) -> Result<bool, RuntimeError> {
        // The local timeout decides; the request's own deadline only backs it up
        // (containerd reports an expired deadline as `Unknown`, not DeadlineExceeded).
        let req = self.containerd.request_with_timeout(
            WaitRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            },
            timeout + Duration::from_secs(30),
        );
        match tokio::time::timeout(timeout, self.tasks().wait(req)).await {
            Err(_) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(s)) if s.code() == Code::NotFound => Ok(true),
            Ok(Err(s)) => Err(grpc("wait task", id)(s)),
        }
    }

    async fn delete_task(&self, id: &str) -> Result<(), RuntimeError> {
        let req = self.containerd.request(DeleteTaskRequest {
            container_id: id.to_owned(),
        });
        match self.tasks().delete(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(grpc("delete task", id)(s)),
        }
    }

    /// The status of a container's task, `None` when it has none.
    async fn task_status(&self, id: &str) -> Result<Option<TaskStatus>, RuntimeError> {
        let req = self.containerd.request(GetRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        });
        match self.tasks().get(req).await {
            Ok(resp) => Ok(resp
                .into_inner()
                .process
                .map(|p| TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown))),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(grpc("get task", id)(s)),
        }
    }

    /// Records a container's start (the time label) and links its log, as upstream's
    /// startContainer: a missing link is logged, not an error.
    async fn record_started(&self, c: Container, log_path: &Path) -> Result<(), RuntimeError> {
        let id = c.id.clone();
        let link = self.log_symlink(&c);
        self.set_labels(
            c,
            vec![(
                keys::STARTED_AT.to_owned(),
                jiff::Timestamp::now().to_string(),
            )],
        )
        .await?;
        if let Err(e) = logs::create_log_symlink(&link, log_path) {
            warn!(id, error = %e, "cannot make the container's log symlink");
        }
        Ok(())
    }

    /// Sets labels on a container record.
    async fn set_labels(
        &self,
        mut c: Container,
        labels: Vec<(String, String)>,
    ) -> Result<(), RuntimeError> {
        let id = c.id.clone();
        let paths = labels.iter().map(|(k, _)| format!("labels.{k}")).collect();
        c.labels.extend(labels);
        let req = self.containerd.request(UpdateContainerRequest {
            container: Some(c),
            update_mask: Some(prost_types::FieldMask { paths }),
        });
        self.containers()
            .update(req)
            .await
            .map_err(grpc("update container", &id))?;
        Ok(())
    }

    /// The container's `/var/log/containers` symlink, named from its labels.
    fn log_symlink(&self, c: &Container) -> PathBuf {
        let l = &c.labels;
        logs::log_symlink_path(
            &self.config.container_logs_dir,
            &label(l, keys::POD_NAME),
            &label(l, keys::POD_NAMESPACE),
            &label(l, keys::CONTAINER_NAME),
            &c.id,
        )
    }

    async fn delete_container_record(&self, id: &str) -> Result<(), RuntimeError> {
        let req = self
            .containerd
            .request(DeleteContainerRequest { id: id.to_owned() });
        match self.containers().delete(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(grpc("delete container", id)(s)),
        }
    }

    async fn create_record(
        &self,
        id: &str,
        image: &str,
        spec: &oci_spec::runtime::Spec,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let value = serde_json::to_vec(spec).map_err(|e| RuntimeError::Spec {
            name: id.to_owned(),
            reason: e.to_string(),
        })?;
        // A systemd cgroupsPath needs runc's systemd driver: containerd hands the
        // container's runtime options to the shim when the task has none.
        let systemd = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .is_some_and(|p| spec::is_systemd_cgroups_path(&p.to_string_lossy()));
        let container = Container {
            id: id.to_owned(),
            labels,
            image: image.to_owned(),
            runtime: Some(ContainerRuntimeInfo {
                name: self.config.runtime_name.clone(),
                options: systemd.then(runc_systemd_options),
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_owned(),
                value,
            }),
            snapshotter: self.containerd.snapshotter().to_owned(),
            snapshot_key: id.to_owned(),
            ..Default::default()
        };
        let req = self.containerd.request(CreateContainerRequest {
            container: Some(container),
        });
        self.containers()
            .create(req)
            .await
            .map_err(grpc("create container", id))?;
        Ok(())
    }

    /// Creates and starts the task. `log_file`, when given, is created between the
    /// two: once `runc create` succeeded and before the process runs, which opens
    /// the log driver's gate (see [`logs`]), so runc's create errors stay out of it.
    async fn create_and_start_task(
        &self,
        id: &str,
        rootfs: Vec<containerd_client::types::Mount>,
        stdio: &str,
        log_file: Option<&Path>,
    ) -> Result<u32, RuntimeError> {
        let req = self.containerd.request(CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs,
            stdout: stdio.to_owned(),
            stderr: stdio.to_owned(),
            ..Default::default()
        });
        let pid = self
            .tasks()
            .create(req)
            .await
            .map_err(grpc("create task", id))?
            .into_inner()
            .pid;
        crate::failpoint::hit(if log_file.is_some() {
            "container-after-task-create"
        } else {
            "sandbox-after-task-create"
        });
        if let Some(path) = log_file
            && let Err(e) = logs::create_log_file(path)
        {
            let _ = self.delete_task(id).await;
            return Err(io_err(path)(e));
        }
        let req = self.containerd.request(StartRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        });
        if let Err(status) = self.tasks().start(req).await {
            // Leave no half-made task behind: the caller sees the start error.
            let _ = self.delete_task(id).await;
            return Err(grpc("start task", id)(status));
        }
        Ok(pid)
    }

    /// Removes everything of a sandbox that exists, continuing past failures.
    async fn teardown_sandbox(
        &self,
        id: &str,
        pod: &PodRef,
        netns: Option<&Path>,
    ) -> Result<(), RuntimeError> {
        let mut errors = Vec::new();
        if self.kill(id, SIGKILL).await.unwrap_or(false) {
            let _ = self.wait(id, KILL_WAIT).await;
        }
        if let Err(e) = self.delete_task(id).await {
            errors.push(e);
        }
        let builtin = self
            .podnet
            .as_deref()
            .filter(|p| p.holds(id).unwrap_or(false));
        if let (Some(podnet), Some(_)) = (builtin, netns)
            && let Err(source) = podnet.teardown(id).await
        {
            errors.push(RuntimeError::BuiltinNetwork {
                id: id.to_owned(),
                source: Box::new(source),
            });
        }
        if let Some(netns) = netns {
            match self.cni.get() {
                Ok(_) if builtin.is_some() => {}
                Ok(cni) => {
                    let req = CniRequest {
                        container_id: id,
                        netns,
                        ifname: "eth0",
                        pod_namespace: &pod.namespace,
                        pod_name: &pod.name,
                        pod_uid: &pod.uid,
                    };
                    if let Err(source) = cni.teardown(&req).await {
                        errors.push(RuntimeError::Network {
                            id: id.to_owned(),
                            source: Box::new(source),
                        });
                    }
                }
                Err(source) => errors.push(RuntimeError::Network {
                    id: id.to_owned(),
                    source: Box::new(source),
                }),
            }
            if let Err(e) = NetNs::remove(netns) {
                errors.push(e.into());
            }
        }
        if let Err(e) = self.delete_container_record(id).await {
            errors.push(e);
        }
        if let Err(e) = self.containerd.remove_snapshot(id).await {
            errors.push(e.into());
        }
        let files = self.files_dir(id);
        match std::fs::remove_dir_all(&files) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => errors.push(RuntimeError::Io {
                path: files,
                source: e,
            }),
            _ => {}
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(RuntimeError::Teardown(errors)),
        }
    }
}

impl Runtime for ContainerdRuntime {
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxInfo, RuntimeError> {
        let pause = self.containerd.ensure_pause_image().await?;
        let id = new_id(32)?;
        let netns = (!config.host_network).then(|| self.netns_path(&id));
        // The intent comes before any side effect: a crash from here on is reclaimed
        // at the next start (see `reclaim`).
        self.write_intent(&id, &config.pod, netns.as_deref())?;
        crate::failpoint::hit("sandbox-after-intent");
        let result = self
            .make_sandbox(config, &id, netns.as_deref(), &pause)
            .await;
        if result.is_err()
            && let Err(e) = self
                .teardown_sandbox(&id, &config.pod, netns.as_deref())
                .await
        {
            warn!(sandbox = %id, error = %e, "cleanup of a failed sandbox");
        }
        result
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(c) = self.get_container(id).await? else {
            // The record may be gone while the pin is left from a crash mid-teardown.
            let pin = self.netns_path(id);
            let netns = pin.exists().then_some(pin);
            let pod = PodRef {
                uid: String::new(),
                name: String::new(),
                namespace: String::new(),
            };
            return self.teardown_sandbox(id, &pod, netns.as_deref()).await;
        };
        let l = &c.labels;
        let netns = l.get(keys::NETNS).map(PathBuf::from);
        self.teardown_sandbox(id, &pod_of(l), netns.as_deref())
            .await
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
        let id = new_id(32)?;
        let mut config = config.clone();
        config.resources.oom_score_adj = config
            .resources
            .oom_score_adj
            .map(|adj| oom::restrict(adj, self.lowest_oom_score_adj));
        let config = &config;
        let log_path = sandbox.log_directory.join(&config.log_path);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        // The snapshot first: user names in the image are resolved from its files.
        let mounts = self.containerd.prepare_snapshot(image, &id).await?;
        crate::failpoint::hit("container-after-snapshot");
        let spec = match build_spec(sandbox, config, image, &id, &mounts).await {
            Ok(spec) => spec,
            Err(e) => {
                let _ = self.containerd.remove_snapshot(&id).await;
                return Err(e);
            }
        };
        let mut labels = pod_labels(&sandbox.pod, keys::KIND_CONTAINER);
        labels.extend([
            (keys::CONTAINER_NAME.to_owned(), config.name.clone()),
            (keys::ATTEMPT.to_owned(), config.attempt.to_string()),
            (keys::SANDBOX_ID.to_owned(), sandbox.id.clone()),
            (keys::IMAGE_ID.to_owned(), image.id.clone()),
            (
                STOP_SIGNAL_LABEL.to_owned(),
                image.config.stop_signal.clone().unwrap_or_default(),
            ),
            (
                keys::LOG_PATH.to_owned(),
                log_path.to_string_lossy().into_owned(),
            ),
        ]);
        if let Err(e) = self.create_record(&id, &config.image, &spec, labels).await {
            let _ = self.containerd.remove_snapshot(&id).await;
            return Err(e);
        }
        debug!(container = %config.name, id = %id, "container created");
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let c = self.get_container(id).await?.ok_or_else(|| {
            grpc("start container", id)(tonic::Status::not_found("no such container"))
        })?;
        let log_path = PathBuf::from(label(&c.labels, keys::LOG_PATH));
        // An agent killed half-way through a start left a task: one never started is
        // made again (its process never ran, and creating it again would only say
        // `already exists`); one that runs or ran is recorded as started.
        match self.task_status(id).await? {
            None => {}
            Some(TaskStatus::Created) => {
                info!(id, "recreating a task an interrupted start left created");
                self.delete_task(id).await?;
            }
            Some(_) => {
                info!(
                    id,
                    "recording the start of a task an interrupted start left running"
                );
                return self.record_started(c, &log_path).await;
            }
        }
        let mut snapshots = SnapshotsClient::new(self.containerd.channel());
        let req = self.containerd.request(MountsRequest {
            snapshotter: c.snapshotter.clone(),
            key: c.snapshot_key.clone(),
        });
        let rootfs = snapshots
            .mounts(req)
            .await
            .map_err(grpc("snapshot mounts", id))?
            .into_inner()
            .mounts;
        let stdio = logs::driver_uri(&self.config.log_driver, &log_path, self.config.log_rotation);
        if let Err(e) = self
            .create_and_start_task(id, rootfs, &stdio, Some(&log_path))
            .await
        {
            let e = match e {
                RuntimeError::Containerd { op, id, status }
                    if op == "create task" || op == "start task" =>
                {
                    RuntimeError::Start {
                        id,
                        step: if op == "create task" {
                            "create"
                        } else {
                            "start"
                        },
                        message: status.message().to_owned(),
                    }
                }
                e => e,
            };
            // The instance stays, dead with the reason (as the CRI plugin keeps it):
            // its next attempt is a new instance, and `remove_container` takes it.
            let message = e.to_string();
            if let Err(le) = self
                .set_labels(c, start_failure_labels(&message, jiff::Timestamp::now()))
                .await
            {
                warn!(id, error = %le, "cannot record the start failure");
            }
            return Err(e);
        }
        self.record_started(c, &log_path).await
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        // The image's StopSignal, else SIGTERM, as the CRI plugin does.
        let signal = self
            .get_container(id)
            .await?
            .and_then(|c| {
                c.labels
                    .get(STOP_SIGNAL_LABEL)
                    .and_then(|s| parse_signal(s))
            })
            .unwrap_or(SIGTERM);
        if grace.is_zero() {
            // No grace: straight to SIGKILL.
            if self.kill(id, SIGKILL).await? && !self.wait(id, KILL_WAIT).await? {
                return Err(grpc("stop container", id)(
                    tonic::Status::deadline_exceeded("process did not exit after SIGKILL"),
                ));
            }
            return Ok(());
        }
        if !self.kill(id, signal).await? {
            return Ok(());
        }
        if self.wait(id, grace).await? {
            return Ok(());
        }
        debug!(id, "grace period over, killing");
        self.kill(id, SIGKILL).await?;
        if self.wait(id, KILL_WAIT).await? {
            Ok(())
        } else {
            Err(grpc("stop container", id)(
                tonic::Status::deadline_exceeded("process did not exit after SIGKILL"),
            ))
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let record = self.get_container(id).await?;
        let link = record.as_ref().map(|c| self.log_symlink(c));
        let log = record
            .as_ref()
            .map(|c| PathBuf::from(label(&c.labels, keys::LOG_PATH)))
            .filter(|p| p.is_absolute());
        if self.kill(id, SIGKILL).await? {
            self.wait(id, KILL_WAIT).await?;
        }
        self.delete_task(id).await?;
        if let Some(link) = link {
            logs::remove_log_symlink(&link).map_err(|e| RuntimeError::Io {
                path: e.path,
                source: e.source,
            })?;
        }
        // The instance's log and its rotated files go with it, as upstream's
        // removeContainerLog (the container log manager's Clean).
        if let Some(log) = log {
            logs::remove_container_logs(&log).map_err(|e| RuntimeError::Io {
                path: e.path,
                source: e.source,
            })?;
        }
        self.delete_container_record(id).await?;
        self.containerd.remove_snapshot(id).await?;
        Ok(())
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
        let records = self
            .list_raw(Some(Self::kind_filter(keys::KIND_CONTAINER, pod_uid)))
            .await?;
        let tasks = self.tasks_of(&records).await?;
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

impl ContainerdRuntime {
    async fn make_sandbox(
        &self,
        config: &SandboxConfig,
        id: &str,
        netns: Option<&Path>,
        pause: &ImageInfo,
    ) -> Result<SandboxInfo, RuntimeError> {
        let mut ips = Vec::new();
        if let Some(netns) = netns {
            // A mount and a namespace switch on a thread of its own: blocking work
            // stays off the async threads.
            let path = netns.to_path_buf();
            tokio::task::spawn_blocking(move || NetNs::create(&path))
                .await
                .map_err(|e| RuntimeError::Io {
                    path: netns.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })??;
            crate::failpoint::hit("sandbox-after-netns");
            if let Some(podnet) = self.builtin_for_setup(id)? {
                ips = podnet.setup(id, netns).await.map_err(|source| {
                    RuntimeError::BuiltinNetwork {
                        id: id.to_owned(),
                        source: Box::new(source),
                    }
                })?;
                crate::failpoint::hit("sandbox-after-cni");
            }
        }
        if let Some(netns) = netns.filter(|_| ips.is_empty()) {
            let cni = self.cni.get().map_err(|source| RuntimeError::Network {
                id: id.to_owned(),
                source: Box::new(source),
            })?;
            let req = CniRequest {
                container_id: id,
                netns,
                ifname: "eth0",
                pod_namespace: &config.pod.namespace,
                pod_name: &config.pod.name,
                pod_uid: &config.pod.uid,
            };
            ips = cni
                .setup(&req)
                .await
                .map_err(|source| RuntimeError::Network {
                    id: id.to_owned(),
                    source: Box::new(source),
                })?
                .ips;
            crate::failpoint::hit("sandbox-after-cni");
        }
        let files_dir = self.files_dir(id);
        pod_files::write(&files_dir, config, &ips)?;
        std::fs::create_dir_all(&config.log_directory).map_err(io_err(&config.log_directory))?;

        let mut config = config.clone();
        config.oom_score_adj = Some(oom::restrict(
            config.oom_score_adj.unwrap_or(spec::PAUSE_OOM_SCORE_ADJ),
            self.lowest_oom_score_adj,
        ));
        let config = &config;
        let spec = spec::sandbox_spec(config, id, netns, &pause.config)?;
        let rootfs = self.containerd.prepare_snapshot(pause, id).await?;
        crate::failpoint::hit("sandbox-after-snapshot");
        let mut labels = pod_labels(&config.pod, keys::KIND_SANDBOX);
        labels.extend([
            (keys::ATTEMPT.to_owned(), config.attempt.to_string()),
            (
                keys::HOST_NETWORK.to_owned(),
                config.host_network.to_string(),
            ),
            (
                keys::SHARE_PID.to_owned(),
                (config.share_process_namespace || config.host_pid).to_string(),
            ),
            (
                keys::LOG_PATH.to_owned(),
                config.log_directory.to_string_lossy().into_owned(),
            ),
            (
                keys::IPS.to_owned(),
                ips.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]);
        if let Some(netns) = netns {
            labels.insert(keys::NETNS.to_owned(), netns.to_string_lossy().into_owned());
        }
        if let Some(parent) = &config.cgroup_parent {
            labels.insert(keys::CGROUP_PARENT.to_owned(), parent.clone());
        }
        self.create_record(id, &pause.name, &spec, labels).await?;
        crate::failpoint::hit("sandbox-after-record");
        let pid = self.create_and_start_task(id, rootfs, "", None).await?;
        debug!(pod = %config.pod.name, sandbox = %id, pid, ?ips, "sandbox running");
        Ok(SandboxInfo {
            id: id.to_owned(),
            pod: config.pod.clone(),
            attempt: config.attempt,
            ready: true,
            pid,
            ips,
            netns: netns.map(Path::to_path_buf),
            host_network: config.host_network,
            share_pid: config.share_process_namespace || config.host_pid,
            cgroup_parent: config.cgroup_parent.clone(),
            files_dir,
            log_directory: config.log_directory.clone(),
            created_at: SystemTime::now(),
        })
    }
}

/// The container's OCI spec. An image user with names (`USER nginx`) is first
/// resolved to numbers from the rootfs that `mounts` make, as containerd's CRI does.
async fn build_spec(
    sandbox: &SandboxInfo,
    config: &ContainerConfig,
    image: &ImageInfo,
    id: &str,
    mounts: &[containerd_client::types::Mount],
) -> Result<oci_spec::runtime::Spec, RuntimeError> {
    let security = &config.security;
    if !user::needs_lookup(
        &image.config.user,
        security.run_as_user.is_some(),
        security.run_as_group.is_some(),
    ) {
        return spec::container_spec(sandbox, config, &image.config, id);
    }
    let (uid, gid) = user::resolve_in_rootfs(&image.config.user, mounts)
        .await
        .map_err(|source| RuntimeError::User {
            name: config.name.clone(),
            source,
        })?;
    debug!(container = %config.name, user = %image.config.user, uid, gid, "image user resolved");
    let mut resolved = image.config.clone();
    resolved.user = format!("{uid}:{gid}");
    spec::container_spec(sandbox, config, &resolved, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    // What `ctr run --runc-systemd-cgroup` stores: field 9 (varint) = 1.
    #[test]
    fn runc_systemd_options_encoding() {
        let any = runc_systemd_options();
        assert_eq!(any.type_url, "containerd.runc.v1.Options");
        assert_eq!(any.value, vec![0x48, 0x01]);
    }

    #[test]
    fn stop_signals_as_images_name_them() {
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("quit"), Some(3));
        assert!(parse_signal("SIGRTMIN+3").is_none());
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("NOPE"), None);
    }
}
