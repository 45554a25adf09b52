//! Container lifecycle hooks (`postStart`, `preStop`) with the `exec`, `httpGet` and
//! `sleep` handlers, as upstream's `pkg/kubelet/lifecycle/handlers.go` runs them. The
//! exec and HTTP handlers are the probes' own: a hook is a probe whose failure stops
//! something.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};
use nodelet_cri::runtime::Runtime;

use crate::probe::{self, ProbeResult};

/// Runs `handler` for a container, bounded by `timeout`.
///
/// # Errors
/// Upstream's message for the failed hook (it goes in events and the waiting state).
pub async fn run(
    handler: &LifecycleHandler,
    runtime: &impl Runtime,
    container: &Container,
    container_id: &str,
    pod_ip: IpAddr,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        let outcome = probe::exec::probe(runtime, container_id, &command, timeout).await;
        return match outcome.result {
            ProbeResult::Success => Ok(()),
            _ => Err(format!(
                "Exec lifecycle hook ({command:?}) for Container {:?} failed - error: {}",
                container.name, outcome.message
            )),
        };
    }
    if let Some(get) = &handler.http_get {
        let outcome = probe::http::probe(get, container, pod_ip, timeout).await;
        return match outcome.result {
            ProbeResult::Success => Ok(()),
            _ => Err(format!(
                "HTTP lifecycle hook ({}) for Container {:?} failed - error: {}",
                get.path.as_deref().unwrap_or("/"),
                container.name,
                outcome.message
            )),
        };
    }
    if let Some(sleep) = &handler.sleep {
        let secs = u64::try_from(sleep.seconds).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(secs).min(timeout)).await;
        return Ok(());
    }
    if handler.tcp_socket.is_some() {
        return Err(format!(
            "tcpSocket lifecycle hook for Container {:?} is not supported (upstream deprecated it)",
            container.name
        ));
    }
    Err(format!(
        "lifecycle hook for Container {:?} has no handler",
        container.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::testing::FakeRuntime;
    use k8s_openapi::api::core::v1::{ExecAction, SleepAction};

    fn container() -> Container {
        Container {
            name: "app".into(),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_hook_waits_at_most_the_timeout() {
        let handler = LifecycleHandler {
            sleep: Some(SleepAction { seconds: 30 }),
            ..Default::default()
        };
        let rt = FakeRuntime::default();
        let start = tokio::time::Instant::now();
        let r = run(
            &handler,
            &rt,
            &container(),
            "id",
            [127, 0, 0, 1].into(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(r, Ok(()));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn handlerless_hook_is_an_error() {
        let rt = FakeRuntime::default();
        let r = run(
            &LifecycleHandler::default(),
            &rt,
            &container(),
            "id",
            [127, 0, 0, 1].into(),
            Duration::from_secs(1),
        )
        .await;
        assert!(r.is_err());
        let exec = LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            ..Default::default()
        };
        let rt = FakeRuntime::answering(vec![
            Ok(nodelet_cri::runtime::ExecResult {
                exit_code: 0,
                stdout: vec![],
                stderr: vec![],
            }),
            Ok(nodelet_cri::runtime::ExecResult {
                exit_code: 1,
                stdout: b"no".to_vec(),
                stderr: vec![],
            }),
        ]);
        let c = container();
        let ip: IpAddr = [127, 0, 0, 1].into();
        let timeout = Duration::from_secs(1);
        assert_eq!(run(&exec, &rt, &c, "id", ip, timeout).await, Ok(()));
        let err = run(&exec, &rt, &c, "id", ip, timeout)
            .await
            .expect_err("exit 1 fails the hook");
        assert!(
            err.starts_with("Exec lifecycle hook ([\"true\"]) for Container \"app\" failed"),
            "{err}"
        );
    }
}
