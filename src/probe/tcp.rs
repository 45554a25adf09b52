//! TCP probes: the port accepts a connection within the timeout (upstream
//! `pkg/probe/tcp`). The connection is closed at once; messages are Go's dial errors
//! (`dial tcp 10.0.0.5:80: connect: connection refused`, `... i/o timeout`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpSocket;

use super::{ProbeOutcome, ProbeResult, go_errno};

/// Upstream's probe dialer lingers 1 s on close, so that probes at scale don't pile
/// up sockets in TIME-WAIT (kubernetes issue 89898).
const LINGER: Duration = Duration::from_secs(1);

/// Connects to `host:port` within `timeout`. `host` is an IP or a name (resolved
/// here, within the same timeout).
pub async fn probe(host: &str, port: u16, timeout: Duration) -> ProbeOutcome {
    let addr = join_host_port(host, port);
    match tokio::time::timeout(timeout, dial(host, port)).await {
        Ok(Ok(())) => ProbeOutcome::new(ProbeResult::Success, ""),
        Ok(Err(reason)) => {
            ProbeOutcome::new(ProbeResult::Failure, format!("dial tcp {addr}: {reason}"))
        }
        Err(_) => ProbeOutcome::new(
            ProbeResult::Failure,
            format!("dial tcp {addr}: i/o timeout"),
        ),
    }
}

/// `host:port`, with brackets around an IPv6 address (Go's `net.JoinHostPort`).
pub(super) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Connects once; the error is what Go puts after `dial tcp <addr>: `.
async fn dial(host: &str, port: u16) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("lookup {host}: {e}"))?
            .collect(),
    };
    let mut last = format!("lookup {host}: no such host");
    for addr in addrs {
        let socket = match if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        } {
            Ok(s) => s,
            Err(e) => {
                last = format!("socket: {}", go_errno(&e));
                continue;
            }
        };
        // Best effort, as upstream ignores the setsockopt error too. (Deprecated in
        // tokio because a lingering close blocks: the close happens off the runtime.)
        #[allow(deprecated)]
        let _ = socket.set_linger(Some(LINGER));
        match socket.connect(addr).await {
            Ok(stream) => {
                if let Ok(stream) = stream.into_std() {
                    tokio::task::spawn_blocking(move || drop(stream));
                }
                return Ok(());
            }
            Err(e) => last = format!("connect: {}", go_errno(&e)),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_port_passes_and_closed_port_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let out = probe("127.0.0.1", port, Duration::from_secs(1)).await;
        assert_eq!(out, ProbeOutcome::new(ProbeResult::Success, ""));

        drop(listener);
        let out = probe("127.0.0.1", port, Duration::from_secs(1)).await;
        assert_eq!(
            out,
            ProbeOutcome::new(
                ProbeResult::Failure,
                format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
            )
        );
    }

    #[tokio::test]
    async fn names_resolve_and_v6_is_bracketed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let out = probe("localhost", port, Duration::from_secs(1)).await;
        assert_eq!(out.result, ProbeResult::Success, "{}", out.message);
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(join_host_port("10.0.0.5", 80), "10.0.0.5:80");
    }
}
