//! `nodelet-agnhost`: a small test-workload binary, after upstream's `agnhost` image
//! (`test/images/agnhost`), for what Debian's busybox can't do. Packaged by the
//! end-to-end tests as the image `nodelet.local/agnhost:test`.
//!
//! Subcommands:
//! - `grpc-health-checking --port N [--service S] [--status-file F]`: serves
//!   `grpc.health.v1.Health` (tonic-health) on `0.0.0.0:N`. The server (`""`) and `S`
//!   report `SERVING`, or `NOT_SERVING` while `F` exists and holds `NOT_SERVING`; `F`
//!   is read every 100 ms, so a test flips the status by writing the file (through a
//!   hostPath volume or `exec`). Other services answer `NOT_FOUND`, as upstream's.
//!
//! Exits 0 on SIGTERM or SIGINT: as PID 1 of a container it must handle them itself.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, health_reporter};

const USAGE: &str =
    "usage: nodelet-agnhost grpc-health-checking --port N [--service S] [--status-file F]";

/// The flags of `grpc-health-checking`.
#[derive(Debug, PartialEq, Eq)]
struct GrpcHealthArgs {
    port: u16,
    service: String,
    status_file: Option<PathBuf>,
}

/// Parses `--flag value` and `--flag=value` pairs; hand-written because three flags
/// don't warrant a dependency the test support would otherwise not need.
fn parse_grpc_health(args: &[String]) -> Result<GrpcHealthArgs, String> {
    let mut port = None;
    let mut service = String::new();
    let mut status_file = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("flag needs a value: {flag}"))
        };
        match flag {
            "--port" => {
                let v = value()?;
                port = Some(v.parse().map_err(|_| format!("invalid --port: {v:?}"))?);
            }
            "--service" => service = value()?,
            "--status-file" => status_file = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown flag: {other}")),
        }
    }
    Ok(GrpcHealthArgs {
        port: port.ok_or("--port is required")?,
        service,
        status_file,
    })
}

/// The status `file` asks for: `NOT_SERVING` only when it exists and says so.
fn wanted_status(file: Option<&Path>) -> ServingStatus {
    match file.map(std::fs::read_to_string) {
        Some(Ok(s)) if s.trim() == "NOT_SERVING" => ServingStatus::NotServing,
        _ => ServingStatus::Serving,
    }
}

async fn set_all(reporter: &HealthReporter, service: &str, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    if !service.is_empty() {
        reporter.set_service_status(service, status).await;
    }
}

async fn grpc_health_checking(args: GrpcHealthArgs) -> Result<(), String> {
    let (reporter, health) = health_reporter();
    let mut current = wanted_status(args.status_file.as_deref());
    set_all(&reporter, &args.service, current).await;
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listen on {addr}: {e}"))?;
    eprintln!(
        "serving grpc.health.v1 on {addr}, service {:?}: {:?}",
        args.service, current
    );
    let incoming = futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    });
    let watch = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let wanted = wanted_status(args.status_file.as_deref());
            if wanted != current {
                eprintln!("status now {wanted:?}");
                set_all(&reporter, &args.service, wanted).await;
                current = wanted;
            }
        }
    };
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("sigterm: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("sigint: {e}"))?;
    let server = tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(incoming);
    // A signal ends the process at once: a graceful drain would wait for the idle
    // connections probers keep open.
    tokio::select! {
        r = server => r.map_err(|e| format!("serve: {e}")),
        () = watch => Ok(()),
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("grpc-health-checking") => parse_grpc_health(&args[1..]).and_then(|a| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?
                .block_on(grpc_health_checking(a))
        }),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodelet-agnhost: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|&s| s.to_owned()).collect()
    }

    #[test]
    fn flags() {
        assert_eq!(
            parse_grpc_health(&strings(&["--port", "5000", "--service=svc"])),
            Ok(GrpcHealthArgs {
                port: 5000,
                service: "svc".into(),
                status_file: None
            })
        );
        assert!(parse_grpc_health(&strings(&["--service", "x"])).is_err());
        assert!(parse_grpc_health(&strings(&["--port", "x"])).is_err());
        assert!(parse_grpc_health(&strings(&["--bogus", "1"])).is_err());
    }

    #[test]
    fn status_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("status");
        assert_eq!(wanted_status(Some(&f)), ServingStatus::Serving);
        std::fs::write(&f, "NOT_SERVING\n").expect("write");
        assert_eq!(wanted_status(Some(&f)), ServingStatus::NotServing);
        std::fs::write(&f, "SERVING").expect("write");
        assert_eq!(wanted_status(Some(&f)), ServingStatus::Serving);
        assert_eq!(wanted_status(None), ServingStatus::Serving);
    }
}
