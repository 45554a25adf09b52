//! The agent's HTTP endpoints: the read-only port (`GET /pods`, a `v1.PodList` with
//! live status, as upstream's read-only port serves; `GET /events` and
//! `GET /api/v1/namespaces/{ns}/events`, the recorded events as a `v1.EventList`, a
//! nodelet addition while there is no apiserver to post them to; `GET /stats/summary`,
//! upstream's stats summary; `GET /node`, the Node object this agent would post, a
//! nodelet addition) and the healthz port; the kubelet API's secure port is in
//! [`secure`], its metrics endpoints in [`metrics`], the pod push API in [`push`].

pub mod debug;
pub mod logs;
pub mod metrics;
pub mod push;
pub mod secure;
pub mod streaming;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use k8s_openapi::List;
use k8s_openapi::api::core::v1::Pod;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::EventRecorder;
use crate::node::view::NodeView;
use crate::pod::status_store::PodStatuses;

/// The node's view once the runtime is connected (`None` until then).
pub type NodeViewCell = watch::Receiver<Option<Arc<NodeView>>>;

/// Builds the read-only API.
pub fn read_only_router(
    pods: watch::Receiver<PodStatuses>,
    events: EventRecorder,
    node: NodeViewCell,
) -> Router {
    let node = Router::new()
        .route("/node", get(get_node))
        .route("/stats/summary", get(get_summary))
        .with_state(node);
    let events = Router::new()
        .route("/events", get(list_all_events))
        .route("/api/v1/events", get(list_all_events))
        .route("/api/v1/namespaces/{namespace}/events", get(list_events))
        .with_state(events);
    Router::new()
        .route("/pods", get(list_pods))
        .route("/pods/", get(list_pods))
        .route("/healthz", get(healthz))
        .with_state(pods)
        .merge(events)
        .merge(node)
        .merge(debug::router())
}

fn not_ready() -> axum::response::Response {
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "the agent is not connected to its container runtime yet",
    )
        .into_response()
}

async fn get_node(State(node): State<NodeViewCell>) -> axum::response::Response {
    let view = node.borrow().clone();
    match view {
        Some(view) => json(&view.node().await),
        None => not_ready(),
    }
}

pub(crate) async fn get_summary(State(node): State<NodeViewCell>) -> axum::response::Response {
    let view = node.borrow().clone();
    match view {
        // Reading cgroup files and walking log dirs blocks: off the async workers.
        Some(view) => match tokio::task::spawn_blocking(move || view.summary()).await {
            Ok(summary) => json(&summary),
            Err(_) => not_ready(),
        },
        None => not_ready(),
    }
}

pub(crate) fn json(body: &impl serde::Serialize) -> axum::response::Response {
    let body = serde_json::to_vec(body).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn list_all_events(State(events): State<EventRecorder>) -> impl IntoResponse {
    json(&events.list(None))
}

async fn list_events(
    State(events): State<EventRecorder>,
    Path(namespace): Path<String>,
) -> impl IntoResponse {
    json(&events.list(Some(&namespace)))
}

/// Builds the healthz endpoint.
pub fn healthz_router() -> Router {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz() -> &'static str {
    "ok"
}

/// The pods as a `v1.PodList`, sorted by namespace and name.
pub fn pod_list(pods: &PodStatuses) -> List<Pod> {
    let mut items: Vec<Pod> = pods.values().map(|p| Pod::clone(p)).collect();
    items.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    List {
        items,
        metadata: Default::default(),
    }
}

pub(crate) async fn list_pods(
    State(pods): State<watch::Receiver<PodStatuses>>,
) -> impl IntoResponse {
    let list = pod_list(&pods.borrow());
    let body = serde_json::to_vec(&list).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Binds `addr` (so a taken port fails start-up) and returns the server future.
///
/// # Errors
/// The bind error, naming the address.
pub async fn bind(
    addr: SocketAddr,
    router: Router,
    cancel: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    Ok(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(cancel.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::warn!(%addr, error = %e, "http server stopped");
        }
    })
}
