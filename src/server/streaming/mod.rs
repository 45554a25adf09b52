//! The kubelet API's streaming endpoints: `/exec/{ns}/{pod}[/{uid}]/{container}`,
//! `/attach/…`, `/portForward/{ns}/{pod}[/{uid}]` and `/run/…`, as upstream's
//! kubelet server and CRI streaming server (`pkg/kubelet/cri/streaming`) serve them.
//!
//! Exec, attach and port-forward upgrade the HTTP connection to SPDY/3.1 (the
//! protocol the apiserver's proxy speaks to kubelets, and kubectl up to 1.29
//! end to end): [`spdy`] frames, [`spdy_conn`] streams, [`remotecommand`] the
//! `channel.k8s.io` exec/attach protocols (v2 to v4), [`portforward`] the
//! `portforward.k8s.io` one. A request that is not a valid upgrade gets upstream's
//! 400/403 answer before anything runs; an unknown pod or container a 404.

pub mod portforward;
pub mod remotecommand;
pub mod spdy;
pub mod spdy_conn;
mod spdy_dict;
pub mod websocket;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use nodelet_cri::runtime::{ContainerInfo, ContainerState, ContainerdRuntime, Runtime as _};
use tracing::{debug, warn};

use self::spdy_conn::SpdyConn;
use super::NodeViewCell;

/// `X-Stream-Protocol-Version`: the subprotocols a client offers, and the one chosen.
pub const HEADER_PROTOCOL_VERSION: &str = "x-stream-protocol-version";
/// `X-Accepted-Stream-Protocol-Versions`: ours, on a failed negotiation.
pub const HEADER_ACCEPTED_PROTOCOL_VERSIONS: &str = "x-accepted-stream-protocol-versions";
/// The `Upgrade` token of SPDY.
pub const SPDY_31: &str = "SPDY/3.1";

/// `--streaming-connection-idle-timeout` as the upgrade sees it (zero: none).
#[derive(Debug, Clone, Copy)]
struct IdleTimeout(std::time::Duration);

/// Builds the streaming routes (to merge into the kubelet API's router); SPDY
/// connections idle for `idle` are closed (zero: never).
pub fn router(node: NodeViewCell, idle: std::time::Duration) -> Router {
    Router::new()
        .route("/exec/{ns}/{pod}/{container}", any(exec))
        .route("/exec/{ns}/{pod}/{uid}/{container}", any(exec_uid))
        .route("/attach/{ns}/{pod}/{container}", any(attach))
        .route("/attach/{ns}/{pod}/{uid}/{container}", any(attach_uid))
        .route("/portForward/{ns}/{pod}", any(port_forward))
        .route("/portForward/{ns}/{pod}/{uid}", any(port_forward_uid))
        .route("/run/{ns}/{pod}/{container}", post(run))
        .route("/run/{ns}/{pod}/{uid}/{container}", post(run_uid))
        .with_state(node)
        .layer(axum::Extension(IdleTimeout(idle)))
}

/// A plain-text error answer.
pub(crate) fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    let mut resp = (code, msg.into()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The pod a request names, and the runtime.
pub(crate) struct Target {
    pub runtime: Arc<ContainerdRuntime>,
    pub pod: Arc<Pod>,
    pub uid: String,
}

/// Finds the pod `ns/name` (with `uid`, when given) among the node's pods.
#[allow(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, made once per request"
)]
fn find_pod(
    node: &NodeViewCell,
    ns: &str,
    name: &str,
    uid: Option<&str>,
) -> Result<Target, Response> {
    let view = node.borrow().clone().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is not connected to its container runtime yet",
        )
    })?;
    let pods = view.pods.borrow().clone();
    let found = pods.live().find(|(_, p)| {
        p.metadata.namespace.as_deref().unwrap_or("default") == ns
            && p.metadata.name.as_deref() == Some(name)
    });
    match found {
        Some((pod_uid, pod)) if uid.is_none_or(|u| u == pod_uid) => Ok(Target {
            runtime: Arc::clone(&view.runtime),
            pod: Arc::clone(pod),
            uid: pod_uid.clone(),
        }),
        _ => Err(error(StatusCode::NOT_FOUND, "pod does not exist")),
    }
}

/// The running instance of `container` in the target pod.
async fn find_container(t: &Target, container: &str) -> Result<ContainerInfo, Response> {
    let known = t.pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .map(|c| c.name.as_str())
            .chain(
                s.ephemeral_containers
                    .iter()
                    .flatten()
                    .map(|c| c.name.as_str()),
            )
            .any(|n| n == container)
    });
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            format!("container not found ({container:?})"),
        )
    };
    if !known {
        return Err(not_found());
    }
    let list = t.runtime.list_containers(Some(&t.uid)).await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing the pod's containers: {e}"),
        )
    })?;
    list.into_iter()
        .filter(|c| c.name == container && c.state == ContainerState::Running)
        .max_by_key(|c| c.attempt)
        .ok_or_else(not_found)
}

/// The subprotocols a client offers (comma-separated, possibly in several headers).
fn client_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(HEADER_PROTOCOL_VERSION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Upstream's `httpstream.Handshake` plus the SPDY upgrader's checks: the chosen
/// subprotocol, or the error answer (400 for a missing header or a request that is
/// no SPDY upgrade, 403 with our protocols when none is shared).
#[allow(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, made once per request"
)]
fn spdy_handshake(headers: &HeaderMap, ours: &[&'static str]) -> Result<String, Response> {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains(&token.to_ascii_lowercase()))
    };
    let offered = client_protocols(headers);
    if offered.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required",
        ));
    }
    let Some(chosen) = offered.iter().find(|p| ours.contains(&p.as_str())) else {
        let mut resp = error(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {ours:?}"
            ),
        );
        for p in ours {
            resp.headers_mut().append(
                HEADER_ACCEPTED_PROTOCOL_VERSIONS,
                HeaderValue::from_static(p),
            );
        }
        return Err(resp);
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, SPDY_31) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        ));
    }
    Ok(chosen.clone())
}

/// Answers 101 and runs `serve` on the upgraded connection.
fn upgrade<F, Fut>(mut req: Request, protocol: String, serve: F) -> Response
where
    F: FnOnce(SpdyConn) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let idle = req.extensions().get::<IdleTimeout>().map(|i| i.0);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "stream upgrade failed");
                return;
            }
        };
        match SpdyConn::start(TokioIo::new(upgraded), idle) {
            Ok(conn) => serve(conn).await,
            Err(e) => warn!(error = %e, "spdy connection not started"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(SPDY_31));
    if let Ok(v) = HeaderValue::from_str(&protocol) {
        h.insert(HEADER_PROTOCOL_VERSION, v);
    }
    resp
}

/// The query's values of `key`, in order.
pub(crate) fn query_values(req: &Request, key: &str) -> Vec<String> {
    form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

async fn exec(
    State(node): State<NodeViewCell>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    remote_command(node, ns, pod, None, container, true, req).await
}

async fn exec_uid(
    State(node): State<NodeViewCell>,
    Path((ns, pod, uid, container)): Path<(String, String, String, String)>,
    req: Request,
) -> Response {
    remote_command(node, ns, pod, Some(uid), container, true, req).await
}

async fn attach(
    State(node): State<NodeViewCell>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    remote_command(node, ns, pod, None, container, false, req).await
}

async fn attach_uid(
    State(node): State<NodeViewCell>,
    Path((ns, pod, uid, container)): Path<(String, String, String, String)>,
    req: Request,
) -> Response {
    remote_command(node, ns, pod, Some(uid), container, false, req).await
}

async fn remote_command(
    node: NodeViewCell,
    ns: String,
    pod: String,
    uid: Option<String>,
    container: String,
    is_exec: bool,
    req: Request,
) -> Response {
    if !matches!(*req.method(), http::Method::GET | http::Method::POST) {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let opts = match remotecommand::Options::from_query(&req) {
        Ok(o) => o,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let command = query_values(&req, "command");
    if is_exec && command.is_empty() {
        return error(StatusCode::BAD_REQUEST, "missing command in exec request");
    }
    let target = match find_pod(&node, &ns, &pod, uid.as_deref()) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let found = match find_container(&target, &container).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let what = if is_exec {
        remotecommand::What::Exec(command)
    } else {
        remotecommand::What::Attach
    };
    if websocket::is_websocket(req.headers()) {
        let hs = match websocket::handshake(req.headers(), websocket::REMOTECOMMAND_PROTOCOLS) {
            Ok(h) => h,
            Err(resp) => return resp,
        };
        // v5 and v4 carry a metav1.Status on the error channel; older ones text.
        let version = if hs.protocol.starts_with("v5.") || hs.protocol.starts_with("v4.") {
            remotecommand::Version::V4
        } else {
            remotecommand::Version::V3
        };
        let session = remotecommand::Session {
            runtime: target.runtime,
            container_id: found.id,
            pod_uid: target.uid,
            log_path: found.log_path,
            opts,
            version,
        };
        let (channels, initial) = websocket::remotecommand_channels(&opts);
        return upgrade_websocket(req, hs, channels, initial, move |conn| {
            session.serve(conn, what)
        });
    }
    let protocol = match spdy_handshake(req.headers(), remotecommand::PROTOCOLS) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let session = remotecommand::Session {
        runtime: target.runtime,
        container_id: found.id,
        pod_uid: target.uid,
        log_path: found.log_path,
        opts,
        version: remotecommand::Version::from_name(&protocol),
    };
    upgrade(req, protocol, move |conn| session.serve(conn, what))
}

/// Answers 101 to a WebSocket and runs `serve` on its channels.
fn upgrade_websocket<F, Fut>(
    mut req: Request,
    hs: websocket::Handshake,
    channels: Vec<websocket::Channel>,
    initial: Vec<(u8, Vec<u8>)>,
    serve: F,
) -> Response
where
    F: FnOnce(SpdyConn) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let idle = req.extensions().get::<IdleTimeout>().map(|i| i.0);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let framing = websocket::Framing::for_protocol(&hs.protocol);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let conn =
            SpdyConn::start_websocket(TokioIo::new(upgraded), framing, channels, initial, idle);
        serve(conn).await;
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&hs.accept) {
        h.insert("sec-websocket-accept", v);
    }
    if !hs.protocol.is_empty()
        && let Ok(v) = HeaderValue::from_str(&hs.protocol)
    {
        h.insert("sec-websocket-protocol", v);
    }
    resp
}

async fn port_forward(
    State(node): State<NodeViewCell>,
    Path((ns, pod)): Path<(String, String)>,
    req: Request,
) -> Response {
    port_forward_inner(node, ns, pod, None, req).await
}

async fn port_forward_uid(
    State(node): State<NodeViewCell>,
    Path((ns, pod, uid)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    port_forward_inner(node, ns, pod, Some(uid), req).await
}

async fn port_forward_inner(
    node: NodeViewCell,
    ns: String,
    pod: String,
    uid: Option<String>,
    req: Request,
) -> Response {
    if !matches!(*req.method(), http::Method::GET | http::Method::POST) {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let target = match find_pod(&node, &ns, &pod, uid.as_deref()) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let ws = websocket::is_websocket(req.headers());
    let ports: Vec<u16> = if ws {
        let mut ports = Vec::new();
        for p in query_values(&req, "port") {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("unable to parse {p:?} as a port: invalid port"),
                    );
                }
            }
        }
        if ports.is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                "query parameter \"port\" is required",
            );
        }
        ports
    } else {
        Vec::new()
    };
    let netns = match portforward::pod_netns(&target).await {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    if ws {
        let hs = match websocket::handshake(req.headers(), websocket::PORTFORWARD_PROTOCOLS) {
            Ok(h) => h,
            Err(resp) => return resp,
        };
        let (channels, initial) = websocket::portforward_channels(&ports);
        let name = format!("{ns}/{pod}");
        return upgrade_websocket(req, hs, channels, initial, move |conn| {
            portforward::serve(conn, netns, name)
        });
    }
    let protocol = match spdy_handshake(req.headers(), portforward::PROTOCOLS) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let name = format!("{ns}/{pod}");
    upgrade(req, protocol, move |conn| {
        portforward::serve(conn, netns, name)
    })
}

async fn run(
    State(node): State<NodeViewCell>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    run_inner(node, ns, pod, None, container, req).await
}

async fn run_uid(
    State(node): State<NodeViewCell>,
    Path((ns, pod, uid, container)): Path<(String, String, String, String)>,
    req: Request,
) -> Response {
    run_inner(node, ns, pod, Some(uid), container, req).await
}

/// Upstream's `/run`: runs `cmd` (split on spaces) and answers its combined output.
async fn run_inner(
    node: NodeViewCell,
    ns: String,
    pod: String,
    uid: Option<String>,
    container: String,
    req: Request,
) -> Response {
    let cmd: Vec<String> = query_values(&req, "cmd")
        .first()
        .map(|c| c.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if cmd.is_empty() {
        return error(StatusCode::BAD_REQUEST, "missing cmd in run request");
    }
    let target = match find_pod(&node, &ns, &pod, uid.as_deref()) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let id = match find_container(&target, &container).await {
        Ok(c) => c.id,
        Err(resp) => return resp,
    };
    match target
        .runtime
        .exec_sync(&id, &cmd, std::time::Duration::from_secs(60 * 60))
        .await
    {
        Ok(out) => {
            let mut body = out.stdout;
            body.extend(out.stderr);
            (StatusCode::OK, body).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn handshake_picks_the_clients_first_shared_protocol() {
        let h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v5.channel.k8s.io"),
            (
                "x-stream-protocol-version",
                "v4.channel.k8s.io, v3.channel.k8s.io",
            ),
        ]);
        assert_eq!(
            spdy_handshake(&h, remotecommand::PROTOCOLS).expect("ok"),
            "v4.channel.k8s.io"
        );
    }

    #[test]
    fn handshake_errors_are_upstreams() {
        let missing = headers(&[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]);
        let resp = spdy_handshake(&missing, remotecommand::PROTOCOLS).expect_err("missing");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

        let foreign = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v9.channel.k8s.io"),
        ]);
        let resp = spdy_handshake(&foreign, remotecommand::PROTOCOLS).expect_err("foreign");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let accepted: Vec<_> = resp
            .headers()
            .get_all(HEADER_ACCEPTED_PROTOCOL_VERSIONS)
            .iter()
            .collect();
        assert_eq!(accepted.len(), remotecommand::PROTOCOLS.len());

        let no_upgrade = headers(&[("x-stream-protocol-version", "v4.channel.k8s.io")]);
        let resp = spdy_handshake(&no_upgrade, remotecommand::PROTOCOLS).expect_err("plain");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
}
