//! Pod sandboxes and containers on containerd: what a pod worker asks of the runtime.
//!
//! The shapes follow the CRI (`RunPodSandbox`, `CreateContainer`, …) trimmed to what
//! nodelet uses, so the kubelet-side logic reads like upstream's. [`Runtime`] is the
//! seam the agent programs against; [`ContainerdRuntime`] is the real implementation.

mod containerd;
mod events;
mod exec;
mod exec_stream;
pub mod handlers;
pub mod oom;
mod oom_kill;
mod pod_files;
mod reclaim;
mod records;
pub mod seccomp;
pub mod spec;
pub mod user;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use thiserror::Error;

pub use self::containerd::{ContainerdRuntime, RuntimeConfig};
pub use self::events::RuntimeEvent;
pub use self::exec::{EXEC_OUTPUT_LIMIT, ExecResult};
pub use self::exec_stream::{ExecControl, ExecSession, ExecStreams};
pub use self::handlers::{RuntimeHandler, RuntimeHandlers};
pub use self::reclaim::Reclaimed;
pub use self::seccomp::SeccompMode;

use crate::cni::CniError;
use crate::containerd::ConnectError;
use crate::image::ImageError;
use crate::netns::NetNsError;

/// Label and annotation keys on containerd objects. The `io.kubernetes.*` keys are
/// the ones upstream's CRI implementations use, so tools that know them work here.
pub mod keys {
    /// Pod UID.
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    /// Pod name.
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    /// Pod namespace.
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    /// Container name within the pod.
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// Restart count of a container, or attempt of a sandbox.
    pub const ATTEMPT: &str = "io.kubernetes.container.restartCount";
    /// `sandbox` or `container`.
    pub const KIND: &str = "io.nodelet.kind";
    /// The sandbox a container belongs to.
    pub const SANDBOX_ID: &str = "io.nodelet.sandbox-id";
    /// The CRI log file of a container.
    pub const LOG_PATH: &str = "io.nodelet.log-path";
    /// When the container's process started (RFC 3339), set after start.
    pub const STARTED_AT: &str = "io.nodelet.started-at";
    /// Why a container's start failed (runc's error); the instance is then dead with
    /// [`START_ERROR_EXIT_CODE`](super::START_ERROR_EXIT_CODE).
    pub const START_ERROR: &str = "io.nodelet.start-error";
    /// When a container's start failed, or its process exited once its task was
    /// deleted (RFC 3339).
    pub const FINISHED_AT: &str = "io.nodelet.finished-at";
    /// An exited container's exit code, recorded before its task is deleted so its
    /// shim can exit (see `ContainerdRuntime::settle_exited`).
    pub const EXIT_CODE: &str = "io.nodelet.exit-code";
    /// Why an exited container ended when the runtime knows it (`OOMKilled`, read
    /// from its cgroup when its exit was recorded).
    pub const REASON: &str = "io.nodelet.reason";
    /// A sandbox's pinned network namespace.
    pub const NETNS: &str = "io.nodelet.netns";
    /// A sandbox's pod IPs, comma separated.
    pub const IPS: &str = "io.nodelet.ips";
    /// Whether a sandbox uses the host network (`true`).
    pub const HOST_NETWORK: &str = "io.nodelet.host-network";
    /// Whether the sandbox's PID namespace is shared by its containers (`true`).
    pub const SHARE_PID: &str = "io.nodelet.share-pid";
    /// A sandbox's cgroup parent.
    pub const CGROUP_PARENT: &str = "io.nodelet.cgroup-parent";
    /// The image ID (config digest) a container was created from.
    pub const IMAGE_ID: &str = "io.nodelet.image-id";
    /// A sandbox's runtime handler (empty: the default), so its containers and an
    /// agent restarted later use the same one.
    pub const RUNTIME_HANDLER: &str = "io.nodelet.runtime-handler";
    /// OCI annotation grouping a pod's containers into one runc shim (containerd's
    /// runc v2 shim reads it from the spec), as the CRI plugin does.
    pub const SHIM_GROUP: &str = "io.containerd.runc.v2.group";
    /// Value of [`KIND`] for sandboxes.
    pub const KIND_SANDBOX: &str = "sandbox";
    /// Value of [`KIND`] for containers.
    pub const KIND_CONTAINER: &str = "container";
}

/// The exit code of an instance whose start failed, as containerd's CRI plugin
/// reports it (`errorStartExitCode`).
pub const START_ERROR_EXIT_CODE: i32 = 128;
/// The reason upstream shows for such an instance (`errorStartReason`).
pub const START_ERROR_REASON: &str = "StartError";

/// Errors from the runtime, each naming the object it concerns.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// containerd could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A containerd call failed.
    #[error("containerd {op} {id}: {status}")]
    Containerd {
        /// The operation (`create container`, `start task`, …).
        op: &'static str,
        /// The container or sandbox ID.
        id: String,
        /// The gRPC status.
        #[source]
        status: Box<tonic::Status>,
    },
    /// A container's process could not be made or started: runc's reason as
    /// containerd reports it, worded as the CRI plugin words it
    /// (`failed to create containerd task: … runc create failed: …`).
    #[error("failed to {step} containerd task: {message}")]
    Start {
        /// The container ID.
        id: String,
        /// `create` or `start`.
        step: &'static str,
        /// containerd's message.
        message: String,
    },
    /// An image operation failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Pod networking failed.
    #[error("pod network for sandbox {id}: {source}")]
    Network {
        /// The sandbox ID.
        id: String,
        /// Why.
        #[source]
        source: Box<CniError>,
    },
    /// The built-in pod network failed (e.g. its address range is exhausted).
    #[error("pod network for sandbox {id}: {source}")]
    BuiltinNetwork {
        /// The sandbox ID (empty for a bad configuration).
        id: String,
        /// Why.
        #[source]
        source: Box<crate::podnet::PodNetError>,
    },
    /// The network namespace could not be made or removed.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// A host file the pod needs could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image's user names could not be resolved in the container's rootfs.
    #[error("container {name}: {source}")]
    User {
        /// The container name.
        name: String,
        /// Why.
        #[source]
        source: user::UserError,
    },
    /// The OCI runtime spec could not be built from the configuration.
    #[error("container {name}: {reason}")]
    Spec {
        /// The container name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The sandbox is not running, so containers can't join it.
    #[error("sandbox {id} is not running")]
    SandboxNotRunning {
        /// The sandbox ID.
        id: String,
    },
    /// A command run in a container did not end within its timeout; it was killed.
    #[error("container {id}: command {command:?} timed out after {timeout:?}")]
    ExecTimeout {
        /// The container ID.
        id: String,
        /// The command, its words joined by spaces.
        command: String,
        /// The timeout it ran past.
        timeout: Duration,
    },
    /// The pod's runtime handler is not configured on this node; worded as the
    /// kubelet shows containerd's CRI plugin's answer (a gRPC status of code Unknown).
    #[error(
        "rpc error: code = Unknown desc = failed to get sandbox runtime: no runtime for {handler:?} is configured"
    )]
    NoRuntimeHandler {
        /// The handler asked for.
        handler: String,
    },
    /// Several errors during a teardown that kept going.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<RuntimeError>),
}

/// Identity of the pod an object belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// Pod UID.
    pub uid: String,
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
}

/// DNS settings written to a pod's `resolv.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// `nameserver` lines.
    pub servers: Vec<String>,
    /// The `search` line.
    pub searches: Vec<String>,
    /// The `options` line.
    pub options: Vec<String>,
}

/// What a pod sandbox needs (CRI `PodSandboxConfig`).
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The pod.
    pub pod: PodRef,
    /// How many sandboxes this pod had before.
    pub attempt: u32,
    /// The pod's hostname (UTS namespace and `/etc/hostname`).
    pub hostname: String,
    /// Use the host's network (and UTS) namespace.
    pub host_network: bool,
    /// Use the host's IPC namespace.
    pub host_ipc: bool,
    /// Use the host's PID namespace.
    pub host_pid: bool,
    /// Containers share the sandbox's PID namespace (`shareProcessNamespace`).
    pub share_process_namespace: bool,
    /// Where the pod's container logs go (`/var/log/pods/<ns>_<name>_<uid>`).
    pub log_directory: PathBuf,
    /// The pod's cgroup (absolute path within each hierarchy), if any.
    pub cgroup_parent: Option<String>,
    /// `resolv.conf` contents; `None` copies the host's (dnsPolicy `Default`).
    pub dns: Option<DnsConfig>,
    /// Extra `/etc/hosts` entries: IP and its hostnames (`hostAliases`).
    pub host_aliases: Vec<(String, Vec<String>)>,
    /// The pod's fully qualified name when it has a `subdomain`
    /// (`<hostname>.<subdomain>.<namespace>.svc.<domain>`), listed in `/etc/hosts`.
    pub fqdn: Option<String>,
    /// Namespaced sysctls for the pod (`securityContext.sysctls`), set on the sandbox.
    pub sysctls: Vec<(String, String)>,
    /// The pause container's `oom_score_adj`; `None` gives containerd's -998. The
    /// runtime raises it to what the host allows.
    pub oom_score_adj: Option<i32>,
    /// The pod's hostPorts (CRI `port_mappings` with a host port), which the built-in
    /// network maps to the pod.
    pub port_mappings: Vec<crate::podnet::PortMapping>,
    /// The runtime handler (CRI `RunPodSandboxRequest.runtime_handler`): the pod's
    /// RuntimeClass `handler`; empty for the default.
    pub runtime_handler: String,
}

/// A bind mount into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The path inside the container.
    pub container_path: String,
    /// The host file or directory.
    pub host_path: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
}

/// Security settings of a container (CRI `LinuxContainerSecurityContext`, trimmed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityConfig {
    /// `runAsUser`.
    pub run_as_user: Option<u32>,
    /// `runAsGroup`.
    pub run_as_group: Option<u32>,
    /// Supplemental group IDs.
    pub supplemental_groups: Vec<u32>,
    /// `privileged`.
    pub privileged: bool,
    /// Capabilities to add (`NET_ADMIN` or `CAP_NET_ADMIN`; `ALL`).
    pub add_capabilities: Vec<String>,
    /// Capabilities to drop (`ALL` drops every default).
    pub drop_capabilities: Vec<String>,
    /// `readOnlyRootFilesystem`.
    pub readonly_rootfs: bool,
    /// `!allowPrivilegeEscalation`.
    pub no_new_privileges: bool,
    /// `procMount: Unmasked`: no masked or read-only /proc paths.
    pub unmasked_proc: bool,
    /// `seccompProfile`; ignored for privileged containers (as upstream).
    pub seccomp: SeccompMode,
}

/// What a container needs (CRI `ContainerConfig`).
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// The container name in the pod spec.
    pub name: String,
    /// The restart count this instance gets.
    pub attempt: u32,
    /// The image reference (normalized).
    pub image: String,
    /// Overrides the image's entrypoint (`command`).
    pub command: Vec<String>,
    /// Overrides the image's cmd (`args`).
    pub args: Vec<String>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// Environment, in order, already expanded.
    pub env: Vec<(String, String)>,
    /// Volume and file mounts.
    pub mounts: Vec<Mount>,
    /// Log file, relative to the sandbox's log directory (`<name>/<attempt>.log`).
    pub log_path: PathBuf,
    /// Security settings.
    pub security: SecurityConfig,
    /// Cgroup limits and the OOM score (CRI `LinuxContainerResources`).
    pub resources: ContainerResources,
}

/// A container's cgroup limits and OOM score adjustment (CRI `LinuxContainerResources`),
/// computed by the agent from the pod's requests and limits. `None` leaves a value to
/// the runtime's default (unlimited, or the parent's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerResources {
    /// CFS period in microseconds (`cpu.cfs_period_us`).
    pub cpu_period: Option<u64>,
    /// CFS quota in microseconds per period (`cpu.cfs_quota_us`).
    pub cpu_quota: Option<i64>,
    /// CPU shares (v1 `cpu.shares`; runc converts to `cpu.weight` on v2).
    pub cpu_shares: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// The container's `oom_score_adj`. The runtime raises a value the host doesn't
    /// allow (no `CAP_SYS_RESOURCE`) to the lowest it does, as containerd's
    /// `restrict_oom_score_adj` does.
    pub oom_score_adj: Option<i32>,
    /// Hugepage limits: page size in bytes and the limit in bytes.
    pub hugepage_limits: Vec<(u64, u64)>,
    /// cgroup v2 files to write as they are (e.g. `memory.high`, `memory.min`).
    pub unified: Vec<(String, String)>,
}

/// A running or dead sandbox.
#[derive(Debug, Clone)]
pub struct SandboxInfo {
    /// containerd container ID of the pause container.
    pub id: String,
    /// The pod.
    pub pod: PodRef,
    /// The attempt.
    pub attempt: u32,
    /// Whether the pause process runs.
    pub ready: bool,
    /// The pause process.
    pub pid: u32,
    /// Pod IPs from CNI, IPv4 first; empty with host networking.
    pub ips: Vec<IpAddr>,
    /// The pinned network namespace, if the pod has its own.
    pub netns: Option<PathBuf>,
    /// Host network.
    pub host_network: bool,
    /// Shared PID namespace.
    pub share_pid: bool,
    /// The pod's cgroup parent.
    pub cgroup_parent: Option<String>,
    /// Where the pod's files (`hosts`, `resolv.conf`, `hostname`) live.
    pub files_dir: PathBuf,
    /// The pod log directory.
    pub log_directory: PathBuf,
    /// Creation time.
    pub created_at: SystemTime,
    /// The runtime handler the sandbox runs on (empty: the default); its containers
    /// use the same.
    pub runtime_handler: String,
}

/// A container's lifecycle state as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Its process runs.
    Running,
    /// Its process ended.
    Exited,
    /// containerd doesn't know (no task, or the task is in an odd state).
    Unknown,
}

/// A container as the runtime sees it.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    /// containerd container ID.
    pub id: String,
    /// The pod UID.
    pub pod_uid: String,
    /// The container name in the pod spec.
    pub name: String,
    /// Restart count of this instance.
    pub attempt: u32,
    /// The sandbox it runs in.
    pub sandbox_id: String,
    /// Image reference.
    pub image: String,
    /// Image ID (config digest).
    pub image_id: String,
    /// State.
    pub state: ContainerState,
    /// Main process PID, 0 if none.
    pub pid: u32,
    /// When created.
    pub created_at: SystemTime,
    /// When its process started.
    pub started_at: Option<SystemTime>,
    /// When its process ended.
    pub finished_at: Option<SystemTime>,
    /// Exit code, once exited.
    pub exit_code: Option<i32>,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// All labels.
    pub labels: BTreeMap<String, String>,
}

impl ContainerInfo {
    /// Why this instance's start failed, if it did: it is then [`ContainerState::Exited`]
    /// with exit code [`START_ERROR_EXIT_CODE`] (reason [`START_ERROR_REASON`]).
    pub fn start_error(&self) -> Option<&str> {
        self.labels.get(keys::START_ERROR).map(String::as_str)
    }
}

/// The runtime operations pod workers use.
pub trait Runtime: Send + Sync + 'static {
    /// Creates and starts a pod sandbox: network namespace, CNI, pod files, pause.
    fn run_sandbox(
        &self,
        config: &SandboxConfig,
    ) -> impl Future<Output = Result<SandboxInfo, RuntimeError>> + Send;

    /// Stops and removes a sandbox and everything of its network. Idempotent.
    fn remove_sandbox(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The sandboxes of one pod (or all, with `None`).
    fn list_sandboxes(
        &self,
        pod_uid: Option<&str>,
    ) -> impl Future<Output = Result<Vec<SandboxInfo>, RuntimeError>> + Send;

    /// Pulls an image from its registry (a pull of an image already present
    /// re-resolves the reference and fetches only what changed).
    fn pull_image(
        &self,
        reference: &str,
        auth: &crate::image::PullAuth,
    ) -> impl Future<Output = Result<crate::image::ImageInfo, crate::image::PullError>> + Send;

    /// Looks up an image; `None` when it is not present.
    fn image(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<crate::image::ImageInfo>, RuntimeError>> + Send;

    /// Creates a container in a sandbox (not started).
    fn create_container(
        &self,
        sandbox: &SandboxInfo,
        config: &ContainerConfig,
        image: &crate::image::ImageInfo,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Starts a created container and links its log into the container logs
    /// directory. When the start fails the error carries the runtime's message and
    /// the instance stays, dead (exit code [`START_ERROR_EXIT_CODE`], the message in
    /// [`ContainerInfo::start_error`]), with nothing of runc's in its log: a retry is
    /// a new instance; [`remove_container`](Self::remove_container) removes it.
    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Sends `signal` (SIGTERM when `None`), waits up to `grace`, then SIGKILL.
    fn stop_container(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes a stopped container (or one whose start failed), its root filesystem
    /// and its log symlink. Idempotent.
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The UID of the pod a container or sandbox belongs to, from its labels; `None`
    /// when there is no such container or it isn't a pod's.
    fn owner_of(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<String>, RuntimeError>> + Send;

    /// The containers of one pod (or all, with `None`), sandboxes excluded.
    fn list_containers(
        &self,
        pod_uid: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;

    /// Runs `cmd` in a running container and waits for it, at most `timeout` (the
    /// CRI's `ExecSync`); past it the command is killed and the result is
    /// [`RuntimeError::ExecTimeout`].
    fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecResult, RuntimeError>> + Send;
}
