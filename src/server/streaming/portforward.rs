//! Port forwarding over SPDY: the `portforward.k8s.io` protocol (upstream's
//! `pkg/kubelet/cri/streaming/portforward/httpstream.go`).
//!
//! For each forwarded connection the client opens two streams with the same
//! `requestID` and `port` headers: `streamType: error` and `streamType: data`.
//! Once both are there we connect to `127.0.0.1:port` inside the pod's network
//! namespace (as containerd's CRI plugin does) and copy both ways; a failure is
//! written as text on the error stream. Both streams are closed when the pod side
//! ends; the connection carries any number of such pairs until the client leaves.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use nodelet_cri::runtime::Runtime as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tracing::debug;

use super::spdy_conn::{SpdyConn, SpdyStream};
use super::{Target, error};

/// The subprotocols we speak.
pub const PROTOCOLS: &[&str] = &["portforward.k8s.io"];
/// How long a connection to the pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first stream of a pair waits for its partner (upstream's
/// `streamCreationTimeout`).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// The pod's network namespace (`None` with host networking).
///
/// # Errors
/// A 500 answer when the runtime can't list the pod's sandboxes, 404 when it has no
/// ready one.
pub(crate) async fn pod_netns(t: &Target) -> Result<Option<PathBuf>, Response> {
    let sandboxes = t.runtime.list_sandboxes(Some(&t.uid)).await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing the pod's sandboxes: {e}"),
        )
    })?;
    let sandbox = sandboxes
        .into_iter()
        .filter(|s| s.ready)
        .max_by_key(|s| s.attempt)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "the pod has no running sandbox"))?;
    Ok(if sandbox.host_network {
        None
    } else {
        sandbox.netns
    })
}

/// Connects to `127.0.0.1:port` from inside `netns` (the host's with `None`).
///
/// A fresh thread enters the namespace and ends after the connect, so no thread of
/// the runtime's pool ever changes namespace; the socket keeps the namespace it was
/// made in.
///
/// # Errors
/// The namespace can't be entered or the connection fails.
pub async fn connect(netns: Option<PathBuf>, port: u16) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let std_stream = tokio::task::spawn_blocking(move || -> std::io::Result<StdTcpStream> {
        if let Some(path) = netns {
            // spawn_blocking threads are reused: enter the namespace on a thread of
            // our own.
            return std::thread::spawn(move || {
                let ns = std::fs::File::open(&path)?;
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                StdTcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            })
            .join()
            .map_err(|_| std::io::Error::other("netns thread panicked"))?;
        }
        StdTcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
    })
    .await
    .map_err(std::io::Error::other)??;
    std_stream.set_nonblocking(true)?;
    TcpStream::from_std(std_stream)
}

/// A half-received pair.
#[derive(Default)]
struct Pair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
}

/// Serves port-forward streams on an upgraded connection until the client leaves.
pub async fn serve(mut conn: SpdyConn, netns: Option<PathBuf>, pod: String) {
    let mut pairs: HashMap<String, (Pair, tokio::time::Instant)> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            s = conn.accept() => match s { Some(s) => s, None => break },
            _ = sweep.tick() => {
                // A pair whose partner never came: reset what there is.
                let now = tokio::time::Instant::now();
                let stale: Vec<String> = pairs
                    .iter()
                    .filter(|(_, (_, since))| now.duration_since(*since) > PAIR_TIMEOUT)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in stale {
                    if let Some((p, _)) = pairs.remove(&k) {
                        for s in [p.error, p.data].into_iter().flatten() {
                            let _ = s.writer().reset().await;
                        }
                    }
                }
                continue;
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        let port = stream
            .header("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0);
        let Some(port) = port else {
            debug!(pod, port = ?stream.header("port"), "port-forward stream without a valid port");
            let _ = stream.writer().reset().await;
            continue;
        };
        // Old clients sent no requestID: streams pair by arrival (error then data).
        let request_id = stream
            .header("requestid")
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let id = if stream.header("streamtype") == Some("data") {
                    stream.id.saturating_sub(2)
                } else {
                    stream.id
                };
                id.to_string()
            });
        let (pair, _) = pairs
            .entry(request_id.clone())
            .or_insert_with(|| (Pair::default(), tokio::time::Instant::now()));
        match stream.header("streamtype") {
            Some("error") => pair.error = Some(stream),
            Some("data") => pair.data = Some(stream),
            other => {
                debug!(pod, stream_type = ?other, "unexpected port-forward stream type");
                let _ = stream.writer().reset().await;
                continue;
            }
        }
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some((
                Pair {
                    error: Some(e),
                    data: Some(d),
                },
                _,
            )) = pairs.remove(&request_id)
        {
            forwards.spawn(forward(e, d, netns.clone(), port, pod.clone()));
        }
    }
    forwards.abort_all();
    conn.close().await;
}

async fn forward(
    error: SpdyStream,
    data: SpdyStream,
    netns: Option<PathBuf>,
    port: u16,
    pod: String,
) {
    let err_w = error.writer();
    // The client never writes on the error stream; dropping its receiver lets the
    // connection drop anything it does send.
    drop(error);
    let tcp = match connect(netns, port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            debug!("{msg}");
            let _ = err_w.write(msg.as_bytes()).await;
            let _ = err_w.close().await;
            let _ = data.writer().close().await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let (mut rx, data_w) = data.split();
    let to_pod = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if data_w
                    .write(buf.get(..n).unwrap_or_default())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(e) => {
                let msg = format!("error forwarding port {port} to pod {pod}: {e}");
                let _ = err_w.write(msg.as_bytes()).await;
                break;
            }
        }
    }
    to_pod.abort();
    let _ = data_w.close().await;
    let _ = err_w.close().await;
}
