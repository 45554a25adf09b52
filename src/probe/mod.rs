//! Container probes (liveness, readiness, startup), as upstream's kubelet runs them
//! (`pkg/kubelet/prober`, `pkg/probe/*`).
//!
//! [`probe_once`] runs one probe of a container through its handler (exec through
//! the runtime, HTTP GET, TCP connect, gRPC health check) and says what happened in
//! upstream's words; [`worker::ProbeWorker`] runs one probe of one container instance
//! on its period, applies the delay and the thresholds, and reports changes of its
//! result. HTTP, TCP and gRPC probes connect from the node to the pod IP, as upstream.
//!
//! What a result means is the pod worker's business: a liveness failure restarts the
//! container, readiness sets `ready`, a startup success lets the other probes run.

pub mod exec;
pub mod grpc;
pub mod http;
pub mod tcp;
pub mod worker;

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nodelet_cri::runtime::Runtime;

/// The `User-Agent` of HTTP and gRPC probes: `kube-probe/<major>.<minor>` of the
/// Kubernetes version nodelet implements.
pub const USER_AGENT: &str = "kube-probe/1.34";

/// How often a probe that errored (as opposed to failed) is tried again at once, as
/// upstream's `maxProbeRetries`.
const MAX_PROBE_RETRIES: usize = 3;

/// The API default of `timeoutSeconds`.
const DEFAULT_TIMEOUT_SECONDS: i32 = 1;

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeResult {
    /// The container passed.
    Success,
    /// The container failed.
    Failure,
    /// Nothing is known: the probe itself errored (a port name that doesn't exist, a
    /// runtime error), or a startup probe has not run yet. A worker throws an errored
    /// probe's result away, as upstream.
    Unknown,
}

impl ProbeResult {
    /// Upstream's word for it (`success`, `failure`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Success => "success",
            ProbeResult::Failure => "failure",
            ProbeResult::Unknown => "unknown",
        }
    }
}

/// A probe's result with upstream's message: the output of an exec probe, the reason
/// an HTTP, TCP or gRPC probe failed, the error of a probe that errored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The result.
    pub result: ProbeResult,
    /// What upstream would put after `Liveness probe failed: ` in its event.
    pub message: String,
}

impl ProbeOutcome {
    fn new(result: ProbeResult, message: impl Into<String>) -> Self {
        Self {
            result,
            message: message.into(),
        }
    }
}

/// What a probe is pointed at.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The pod's IP: HTTP, TCP and gRPC probes connect to it unless they name a host.
    pub pod_ip: IpAddr,
    /// The runtime's container ID, for exec probes.
    pub container_id: String,
    /// The container's spec: its ports resolve named probe ports, its env expands
    /// `$(VAR)` in exec commands.
    pub container: Container,
}

/// Runs `probe` once against `target` and says what happened, trying again (up to
/// three times in all) while the probe errors rather than fails, as upstream does.
/// HTTPS is not verified; redirects are followed to the same host only.
pub async fn probe_once(
    probe: &Probe,
    target: &ProbeTarget,
    runtime: &impl Runtime,
) -> ProbeOutcome {
    let mut outcome = run_handler(probe, target, runtime).await;
    for _ in 1..MAX_PROBE_RETRIES {
        if outcome.result != ProbeResult::Unknown {
            break;
        }
        outcome = run_handler(probe, target, runtime).await;
    }
    outcome
}

/// The probe's `timeoutSeconds` (API default 1 s, at least 1 s).
pub fn probe_timeout(probe: &Probe) -> Duration {
    let secs = probe
        .timeout_seconds
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
        .max(1);
    Duration::from_secs(u64::try_from(secs).unwrap_or(1))
}

async fn run_handler(probe: &Probe, target: &ProbeTarget, runtime: &impl Runtime) -> ProbeOutcome {
    let timeout = probe_timeout(probe);
    if let Some(action) = &probe.exec {
        let command = exec::expand_command(
            action.command.as_deref().unwrap_or_default(),
            &target.container,
        );
        exec::probe(runtime, &target.container_id, &command, timeout).await
    } else if let Some(action) = &probe.http_get {
        http::probe(action, &target.container, target.pod_ip, timeout).await
    } else if let Some(action) = &probe.tcp_socket {
        let port = match resolve_port(&action.port, &target.container) {
            Ok(port) => port,
            Err(e) => return ProbeOutcome::new(ProbeResult::Unknown, e),
        };
        let host = match action.host.as_deref() {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => target.pod_ip.to_string(),
        };
        tcp::probe(&host, port, timeout).await
    } else if let Some(action) = &probe.grpc {
        let Some(port) = u16::try_from(action.port).ok().filter(|p| *p > 0) else {
            return ProbeOutcome::new(
                ProbeResult::Unknown,
                format!("invalid port number: {}", action.port),
            );
        };
        let service = action.service.as_deref().unwrap_or_default();
        grpc::probe(target.pod_ip, service, port, timeout).await
    } else {
        ProbeOutcome::new(
            ProbeResult::Unknown,
            format!(
                "missing probe handler for container {}",
                target.container.name
            ),
        )
    }
}

/// A probe's port: a number, or the name of one of the container's ports (upstream's
/// `ResolveContainerPort`, with its messages).
///
/// # Errors
/// `port "<name>" not found` for a name the container doesn't have, `invalid port
/// number: <n>` for a number outside 1–65535.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("port {name:?} not found"))?,
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

/// A duration as Go's `time.Duration` prints it, for messages upstream formats with
/// `%v` (`1s`, `1.5s`, `500ms`).
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// An OS error as Go prints it: `connection refused`, `no route to host`.
fn go_errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => e.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A runtime for probe tests that answers `exec_sync` from a script and refuses
    //! everything else.

    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use nodelet_cri::image::ImageInfo;
    use nodelet_cri::runtime::{
        ContainerConfig, ContainerInfo, ExecResult, Runtime, RuntimeError, SandboxConfig,
        SandboxInfo,
    };

    /// One recorded `exec_sync` call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ExecCall {
        pub id: String,
        pub cmd: Vec<String>,
        pub timeout: Duration,
    }

    #[derive(Default)]
    pub struct FakeRuntime {
        pub answers: Mutex<VecDeque<Result<ExecResult, RuntimeError>>>,
        pub calls: Mutex<Vec<ExecCall>>,
    }

    impl FakeRuntime {
        pub fn answering(answers: Vec<Result<ExecResult, RuntimeError>>) -> Self {
            Self {
                answers: Mutex::new(answers.into()),
                calls: Mutex::default(),
            }
        }
    }

    fn refused(op: &'static str) -> RuntimeError {
        RuntimeError::Containerd {
            op,
            id: String::new(),
            status: Box::new(tonic::Status::unimplemented("fake runtime")),
        }
    }

    impl Runtime for FakeRuntime {
        async fn run_sandbox(&self, _: &SandboxConfig) -> Result<SandboxInfo, RuntimeError> {
            Err(refused("run sandbox"))
        }
        async fn remove_sandbox(&self, _: &str) -> Result<(), RuntimeError> {
            Err(refused("remove sandbox"))
        }
        async fn list_sandboxes(&self, _: Option<&str>) -> Result<Vec<SandboxInfo>, RuntimeError> {
            Err(refused("list sandboxes"))
        }
        async fn pull_image(
            &self,
            reference: &str,
            _: &nodelet_cri::image::PullAuth,
        ) -> Result<ImageInfo, nodelet_cri::image::PullError> {
            Err(nodelet_cri::image::PullError::InvalidReference {
                reference: reference.to_owned(),
                source: Box::new(nodelet_cri::image::ImageError::InvalidReference {
                    reference: reference.to_owned(),
                    reason: "the fake runtime pulls nothing",
                }),
            })
        }
        async fn image(&self, _: &str) -> Result<Option<ImageInfo>, RuntimeError> {
            Err(refused("image"))
        }
        async fn create_container(
            &self,
            _: &SandboxInfo,
            _: &ContainerConfig,
            _: &ImageInfo,
        ) -> Result<String, RuntimeError> {
            Err(refused("create container"))
        }
        async fn start_container(&self, _: &str) -> Result<(), RuntimeError> {
            Err(refused("start container"))
        }
        async fn stop_container(&self, _: &str, _: Duration) -> Result<(), RuntimeError> {
            Err(refused("stop container"))
        }
        async fn remove_container(&self, _: &str) -> Result<(), RuntimeError> {
            Err(refused("remove container"))
        }
        async fn owner_of(&self, _: &str) -> Result<Option<String>, RuntimeError> {
            Err(refused("owner of"))
        }
        async fn list_containers(
            &self,
            _: Option<&str>,
        ) -> Result<Vec<ContainerInfo>, RuntimeError> {
            Err(refused("list containers"))
        }
        async fn exec_sync(
            &self,
            id: &str,
            cmd: &[String],
            timeout: Duration,
        ) -> Result<ExecResult, RuntimeError> {
            self.calls.lock().expect("lock").push(ExecCall {
                id: id.to_owned(),
                cmd: cmd.to_vec(),
                timeout,
            });
            self.answers
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or_else(|| Err(refused("exec")))
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, GRPCAction, TCPSocketAction};

    use super::testing::FakeRuntime;
    use super::*;

    fn container_with_ports() -> Container {
        Container {
            name: "web".into(),
            ports: Some(vec![
                ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..Default::default()
                },
                ContainerPort {
                    container_port: 9090,
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
    }

    fn target(container: Container) -> ProbeTarget {
        ProbeTarget {
            pod_ip: IpAddr::from([127, 0, 0, 1]),
            container_id: "cid".into(),
            container,
        }
    }

    #[test]
    fn ports_resolve_by_number_and_name() {
        let c = container_with_ports();
        assert_eq!(resolve_port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("nope".into()), &c),
            Err(r#"port "nope" not found"#.to_owned())
        );
        // A number in a string is a name, as upstream (no Atoi fallback any more).
        assert_eq!(
            resolve_port(&IntOrString::String("8080".into()), &c),
            Err(r#"port "8080" not found"#.to_owned())
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(0), &c),
            Err("invalid port number: 0".to_owned())
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(65536), &c),
            Err("invalid port number: 65536".to_owned())
        );
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn timeout_defaults_to_one_second() {
        assert_eq!(probe_timeout(&Probe::default()), Duration::from_secs(1));
        let p = Probe {
            timeout_seconds: Some(0),
            ..Default::default()
        };
        assert_eq!(probe_timeout(&p), Duration::from_secs(1));
        let p = Probe {
            timeout_seconds: Some(7),
            ..Default::default()
        };
        assert_eq!(probe_timeout(&p), Duration::from_secs(7));
    }

    #[tokio::test]
    async fn unknown_port_name_errors_and_is_retried() {
        let probe = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("nope".into()),
                host: None,
            }),
            ..Default::default()
        };
        let out = probe_once(
            &probe,
            &target(container_with_ports()),
            &FakeRuntime::default(),
        )
        .await;
        assert_eq!(
            out,
            ProbeOutcome::new(ProbeResult::Unknown, r#"port "nope" not found"#)
        );
    }

    #[tokio::test]
    async fn errored_exec_is_retried_up_to_three_times() {
        let rt = FakeRuntime::default(); // every exec errors
        let probe = Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        };
        let out = probe_once(&probe, &target(Container::default()), &rt).await;
        assert_eq!(out.result, ProbeResult::Unknown);
        assert_eq!(rt.calls.lock().expect("lock").len(), 3);
    }

    #[tokio::test]
    async fn missing_handler_and_bad_grpc_port() {
        let t = target(Container {
            name: "app".into(),
            ..Default::default()
        });
        let rt = FakeRuntime::default();
        assert_eq!(
            probe_once(&Probe::default(), &t, &rt).await,
            ProbeOutcome::new(
                ProbeResult::Unknown,
                "missing probe handler for container app"
            )
        );
        let probe = Probe {
            grpc: Some(GRPCAction {
                port: 70000,
                service: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            probe_once(&probe, &t, &rt).await,
            ProbeOutcome::new(ProbeResult::Unknown, "invalid port number: 70000")
        );
    }
}
