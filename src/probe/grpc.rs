//! gRPC probes (upstream `pkg/probe/grpc`): `grpc.health.v1.Health/Check` with the
//! probe's `service`, over plaintext HTTP/2 to the pod IP; `SERVING` passes. As
//! upstream's blocking dial, a connection that can't be made is retried until the
//! timeout, so a closed port fails only when the timeout has passed.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::tcp::join_host_port;
use super::{ProbeOutcome, ProbeResult, USER_AGENT, go_duration};

/// First pause between connection attempts (gRPC's connection backoff base).
const BACKOFF: Duration = Duration::from_secs(1);

/// Checks `service` (empty: the server as a whole) at `host:port` within `timeout`.
pub async fn probe(host: IpAddr, service: &str, port: u16, timeout: Duration) -> ProbeOutcome {
    let addr = join_host_port(&host.to_string(), port);
    let deadline = Instant::now() + timeout;
    let channel = match connect(&addr, deadline).await {
        Ok(c) => c,
        Err(reason) => {
            return ProbeOutcome::new(
                ProbeResult::Failure,
                format!(
                    "timeout: failed to connect service {addr:?} within {}: {reason}",
                    go_duration(timeout)
                ),
            );
        }
    };
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    // The server sees the same deadline.
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    let mut client = HealthClient::new(channel);
    let check = client.check(request);
    let response = match tokio::time::timeout_at(deadline, check).await {
        Err(_) => return timed_out(timeout),
        Ok(Err(status)) => {
            let message = match status.code() {
                Code::Unimplemented => format!(
                    "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                    status.message()
                ),
                Code::DeadlineExceeded => return timed_out(timeout),
                code => format!(
                    "error: health rpc probe failed: rpc error: code = {code:?} desc = {}",
                    status.message()
                ),
            };
            return ProbeOutcome::new(ProbeResult::Failure, message);
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    let status = ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown);
    if status == ServingStatus::Serving {
        ProbeOutcome::new(ProbeResult::Success, "service healthy")
    } else {
        ProbeOutcome::new(
            ProbeResult::Failure,
            format!(
                "service unhealthy (responded with {:?})",
                status.as_str_name()
            ),
        )
    }
}

fn timed_out(timeout: Duration) -> ProbeOutcome {
    ProbeOutcome::new(
        ProbeResult::Failure,
        format!(
            "timeout: health rpc did not complete within {}",
            go_duration(timeout)
        ),
    )
}

/// Connects, retrying with back-off until `deadline`; the error is Go's reason.
async fn connect(addr: &str, deadline: Instant) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .user_agent(USER_AGENT)
        .map_err(|e| e.to_string())?;
    let mut backoff = BACKOFF;
    loop {
        match tokio::time::timeout_at(deadline, endpoint.connect()).await {
            Ok(Ok(channel)) => return Ok(channel),
            Ok(Err(_)) => {}
            Err(_) => return Err("context deadline exceeded".to_owned()),
        }
        if tokio::time::timeout_at(deadline, tokio::time::sleep(backoff))
            .await
            .is_err()
        {
            return Err("context deadline exceeded".to_owned());
        }
        backoff = backoff.mul_f64(1.6);
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::server::health_reporter;

    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A health server on 127.0.0.1: the server SERVING, `svc` NOT_SERVING.
    async fn health_server() -> u16 {
        let (reporter, service) = health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("svc", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let incoming = futures::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        });
        tokio::spawn(async move {
            // Keep the reporter alive as long as the server.
            let _reporter = reporter;
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        port
    }

    #[tokio::test]
    async fn serving_and_not_serving() {
        let port = health_server().await;
        let t = Duration::from_secs(1);
        assert_eq!(
            probe(LOCALHOST, "", port, t).await,
            ProbeOutcome::new(ProbeResult::Success, "service healthy")
        );
        assert_eq!(
            probe(LOCALHOST, "svc", port, t).await,
            ProbeOutcome::new(
                ProbeResult::Failure,
                r#"service unhealthy (responded with "NOT_SERVING")"#
            )
        );
        let out = probe(LOCALHOST, "other", port, t).await;
        assert_eq!(out.result, ProbeResult::Failure);
        assert!(
            out.message
                .starts_with("error: health rpc probe failed: rpc error: code = NotFound desc = "),
            "{}",
            out.message
        );
    }

    #[tokio::test]
    async fn closed_port_fails_at_the_timeout() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let start = std::time::Instant::now();
        let out = probe(LOCALHOST, "", port, Duration::from_secs(1)).await;
        assert_eq!(
            out,
            ProbeOutcome::new(
                ProbeResult::Failure,
                format!(
                    "timeout: failed to connect service \"127.0.0.1:{port}\" within 1s: context deadline exceeded"
                )
            )
        );
        assert!(start.elapsed() >= Duration::from_millis(900));
    }

    #[tokio::test]
    async fn a_server_without_the_health_service() {
        // An HTTP/2 server that answers every call with Unimplemented, as a gRPC
        // server without the health service does.
        let (_reporter, health) = health_reporter();
        drop(health);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let incoming = futures::stream::unfold(listener, |l| async move {
            let conn = l.accept().await.map(|(s, _)| s);
            Some((conn, l))
        });
        let router = tonic::service::Routes::default();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_routes(router)
                .serve_with_incoming(incoming)
                .await;
        });
        let out = probe(LOCALHOST, "", port, Duration::from_secs(1)).await;
        assert_eq!(out.result, ProbeResult::Failure);
        assert!(
            out.message.starts_with(
                "error: this server does not implement the grpc health protocol (grpc.health.v1.Health):"
            ),
            "{}",
            out.message
        );
    }
}
