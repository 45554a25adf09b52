//! `nodelet-agnhost` as a process: its gRPC health server answers for the server and
//! the named service, follows the status file, and exits 0 on SIGTERM.
//!
//! Being an integration test of this crate also makes `cargo test --workspace` build
//! the binary (into `target/<profile>/nodelet-agnhost`), where the end-to-end tests'
//! agnhost image takes it from.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn check(port: u16, service: &str) -> Result<ServingStatus, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// Polls `check` until it gives `want`; panics after 10 s.
async fn wait_status(port: u16, service: &str, want: ServingStatus) {
    let start = Instant::now();
    loop {
        match check(port, service).await {
            Ok(s) if s == want => return,
            other => assert!(
                start.elapsed() < Duration::from_secs(10),
                "{service:?}: want {want:?}, last {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn grpc_health_checking_follows_the_status_file() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let status = dir.path().join("status");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodelet-agnhost"))
        .args(["grpc-health-checking", "--port", &port.to_string()])
        .args(["--service", "svc", "--status-file"])
        .arg(&status)
        .stderr(Stdio::null())
        .spawn()
        .expect("start nodelet-agnhost");

    wait_status(port, "", ServingStatus::Serving).await;
    wait_status(port, "svc", ServingStatus::Serving).await;
    let unknown = check(port, "other").await.expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);

    std::fs::write(&status, "NOT_SERVING\n").expect("write status");
    wait_status(port, "svc", ServingStatus::NotServing).await;
    wait_status(port, "", ServingStatus::NotServing).await;
    std::fs::write(&status, "SERVING").expect("write status");
    wait_status(port, "svc", ServingStatus::Serving).await;

    terminate(child.id());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "exits 0 on SIGTERM: {exit}");
}

fn terminate(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}
