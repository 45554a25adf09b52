//! The kubelet's own endpoints on the secure port: `/healthz` (with `/healthz/ping`,
//! `/healthz/log`, `/healthz/syncloop`, as upstream's healthz checks), `/pods` (the
//! pods with live status), `/runningpods/` (the pods with running containers, as
//! upstream's runtime-cache view: name, namespace, UID, container names and images),
//! `/configz` (`{"kubeletconfig": …}`, the effective configuration) and
//! `/stats/summary`; and the metrics endpoints of [`crate::server::metrics`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::watch;

use crate::pod::status_store::PodStatuses;
use crate::server::{NodeViewCell, json};

/// What the kubelet's own endpoints read.
#[derive(Clone)]
pub struct OwnState {
    /// The pods with live status.
    pub pods: watch::Receiver<PodStatuses>,
    /// The node view (stats).
    pub node: NodeViewCell,
    /// `/configz`'s body.
    pub configz: Arc<serde_json::Value>,
    /// The devices of the node's filesystems (`/metrics/cadvisor`).
    pub fs_devices: Arc<crate::server::metrics::cadvisor_fs::FsDevices>,
}

/// The kubelet's own routes, state applied.
pub fn own_router(state: OwnState) -> Router {
    let summary = Router::new()
        .route("/stats/summary", get(crate::server::get_summary))
        .route("/stats/summary/", get(crate::server::get_summary))
        .with_state(state.node.clone());
    let pods = Router::new()
        .route("/pods", get(crate::server::list_pods))
        .route("/pods/", get(crate::server::list_pods))
        .with_state(state.pods.clone());
    let running = Router::new()
        .route("/runningpods/", get(running_pods))
        .with_state(state.node.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/healthz/ping", get(ok))
        .route("/healthz/log", get(ok))
        .route("/healthz/syncloop", get(syncloop))
        .route("/configz", get(configz))
        .with_state(state.clone())
        .merge(summary)
        .merge(pods)
        .merge(running)
        .merge(crate::server::metrics::router(
            crate::server::metrics::MetricsState {
                pods: state.pods,
                node: state.node,
                fs_devices: state.fs_devices,
            },
        ))
}

async fn ok() -> &'static str {
    "ok"
}

fn text_500(body: String) -> Response {
    (
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            ),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Upstream's `/healthz/syncloop`: `ok`, or 500 once the pod manager's loop has not
/// run for longer than allowed.
async fn syncloop() -> Response {
    match crate::pod::sync_loop::check() {
        Ok(()) => "ok".into_response(),
        Err(e) => text_500(format!("internal server error: {e}\n")),
    }
}

/// Upstream's root healthz over the checks `ping`, `log`, `syncloop`: `ok` (with
/// `?verbose`, each check and `healthz check passed`), or 500 naming the failed
/// check with its reason withheld.
async fn healthz(axum::extract::RawQuery(query): axum::extract::RawQuery) -> Response {
    root_healthz(
        crate::pod::sync_loop::check().is_ok(),
        query
            .as_deref()
            .is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some("verbose"))),
    )
}

fn root_healthz(syncloop_ok: bool, verbose: bool) -> Response {
    let mut out = String::from("[+]ping ok\n[+]log ok\n");
    if syncloop_ok {
        out.push_str("[+]syncloop ok\n");
    } else {
        out.push_str("[-]syncloop failed: reason withheld\n");
        return text_500(format!("{out}healthz check failed\n"));
    }
    if !verbose {
        return "ok".into_response();
    }
    out.push_str("healthz check passed\n");
    out.into_response()
}

async fn configz(State(state): State<OwnState>) -> Response {
    json(&*state.configz)
}

/// Upstream's `GetRunningPods` over the runtime's listing (`GetPods(all=false)` then
/// `ToAPIPod`): each pod with a ready sandbox or a running container, as UID, name
/// and namespace with its running containers' names and images, sorted by namespace
/// and name.
pub fn running(
    sandboxes: &[nodelet_cri::runtime::SandboxInfo],
    containers: &[nodelet_cri::runtime::ContainerInfo],
) -> Vec<Pod> {
    use std::collections::BTreeMap;
    let refs: BTreeMap<&str, &nodelet_cri::runtime::PodRef> = sandboxes
        .iter()
        .map(|s| (s.pod.uid.as_str(), &s.pod))
        .collect();
    let mut pods: BTreeMap<&str, Vec<Container>> = sandboxes
        .iter()
        .filter(|s| s.ready)
        .map(|s| (s.pod.uid.as_str(), Vec::new()))
        .collect();
    for c in containers
        .iter()
        .filter(|c| c.state == nodelet_cri::runtime::ContainerState::Running)
    {
        pods.entry(c.pod_uid.as_str()).or_default().push(Container {
            name: c.name.clone(),
            image: Some(c.image.clone()),
            ..Container::default()
        });
    }
    let mut out: Vec<Pod> = pods
        .into_iter()
        .map(|(uid, containers)| {
            let r = refs.get(uid);
            Pod {
                metadata: ObjectMeta {
                    name: r.map(|r| r.name.clone()),
                    namespace: r.map(|r| r.namespace.clone()),
                    uid: Some(uid.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(PodSpec {
                    containers,
                    ..PodSpec::default()
                }),
                status: None,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    out
}

async fn running_pods(State(node): State<NodeViewCell>) -> Response {
    use nodelet_cri::runtime::Runtime as _;
    let view = node.borrow().clone();
    let Some(view) = view else {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the container runtime is not connected yet",
        )
            .into_response();
    };
    let listed = tokio::try_join!(
        view.runtime.list_sandboxes(None),
        view.runtime.list_containers(None)
    );
    match listed {
        Ok((sandboxes, containers)) => json(&k8s_openapi::List {
            items: running(&sandboxes, &containers),
            metadata: Default::default(),
        }),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub use super::configz::configz_body;

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Response) -> (u16, String) {
        let status = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn root_healthz_answers_as_upstreams() {
        assert_eq!(body(root_healthz(true, false)).await, (200, "ok".into()));
        assert_eq!(
            body(root_healthz(true, true)).await,
            (
                200,
                "[+]ping ok\n[+]log ok\n[+]syncloop ok\nhealthz check passed\n".into()
            )
        );
        assert_eq!(
            body(root_healthz(false, false)).await,
            (
                500,
                "[+]ping ok\n[+]log ok\n[-]syncloop failed: reason withheld\nhealthz check failed\n"
                    .into()
            )
        );
    }
}
