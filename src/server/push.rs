//! The pod push API (`--enable-pod-push`): `POST /pods` with a Pod or a List (YAML or
//! JSON; ConfigMap and Secret documents beside the pods too) and
//! `DELETE /pods/{namespace}/{name}` (`/configmaps/…`, `/secrets/…`), answering like
//! the apiserver (the created object, a `List` of several, or a `v1.Status` with field
//! paths and upstream's codes). One task owns the pushed pods and objects and sends
//! the pod manager the objects (when they changed) and then a snapshot after every
//! change, so changes reach the pods in order; the HTTP handlers talk to it over a
//! channel.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use k8s_openapi::api::core::v1::Pod;
use nodelet_manifests::ApiObject;
use nodelet_manifests::SourceEvent;
use nodelet_sources::{PushError, PushStore, Pushed};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The largest body accepted, as the apiserver's limit for one object.
const MAX_BODY: usize = nodelet_sources::MAX_MANIFEST_BYTES + 1;

enum Request {
    Apply {
        body: Bytes,
        content_type: Option<String>,
        reply: oneshot::Sender<Result<Pushed, PushError>>,
    },
    Delete {
        namespace: String,
        name: String,
        reply: oneshot::Sender<Result<Pod, PushError>>,
    },
    DeleteObject {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        namespace: String,
        name: String,
        reply: oneshot::Sender<Result<ApiObject, PushError>>,
    },
}

/// A handle the HTTP handlers use to reach the store's task.
#[derive(Clone)]
pub struct PushApi {
    tx: mpsc::Sender<Request>,
}

/// Starts the task owning the pushed pods; it sends an (empty) first snapshot at
/// once, so the manager counts the source as having reported.
pub fn start(
    node_name: &str,
    sources: mpsc::Sender<SourceEvent>,
    cancel: CancellationToken,
) -> (PushApi, impl std::future::Future<Output = ()> + use<>) {
    let (tx, mut rx) = mpsc::channel::<Request>(16);
    let mut store = PushStore::new(node_name);
    let task = async move {
        if sources.send(store.snapshot()).await.is_err() {
            return;
        }
        loop {
            let req = tokio::select! {
                () = cancel.cancelled() => return,
                req = rx.recv() => match req { Some(r) => r, None => return },
            };
            let objects_before = store.objects();
            let changed = match req {
                Request::Apply {
                    body,
                    content_type,
                    reply,
                } => {
                    let result = store.apply(&body, content_type.as_deref());
                    let ok = result.is_ok();
                    let _ = reply.send(result);
                    ok
                }
                Request::DeleteObject {
                    kind,
                    namespace,
                    name,
                    reply,
                } => {
                    let result = store.delete_object(kind, &namespace, &name);
                    let ok = result.is_ok();
                    let _ = reply.send(result);
                    ok
                }
                Request::Delete {
                    namespace,
                    name,
                    reply,
                } => {
                    let result = store.delete(&namespace, &name);
                    let ok = result.is_ok();
                    let _ = reply.send(result);
                    ok
                }
            };
            if !changed {
                continue;
            }
            // The objects first, so pods that use them find them.
            if store.objects() != objects_before
                && sources.send(store.objects_event()).await.is_err()
            {
                return;
            }
            if sources.send(store.snapshot()).await.is_err() {
                return;
            }
        }
    };
    (PushApi { tx }, task)
}

/// The push API's routes.
pub fn router(api: PushApi) -> Router {
    Router::new()
        .route("/pods", post(apply))
        .route("/pods/", post(apply))
        .route("/pods/{namespace}/{name}", delete(remove))
        .route(
            "/configmaps/{namespace}/{name}",
            delete(
                |state: State<PushApi>, path: Path<(String, String)>| async move {
                    remove_object(state, "ConfigMap", path).await
                },
            ),
        )
        .route(
            "/secrets/{namespace}/{name}",
            delete(
                |state: State<PushApi>, path: Path<(String, String)>| async move {
                    remove_object(state, "Secret", path).await
                },
            ),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

fn json(code: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn failure(e: &PushError) -> Response {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::BAD_REQUEST);
    json(code, &e.status())
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the agent is shutting down",
    )
        .into_response()
}

async fn apply(State(api): State<PushApi>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (reply, answer) = oneshot::channel();
    let req = Request::Apply {
        body,
        content_type,
        reply,
    };
    if api.tx.send(req).await.is_err() {
        return unavailable();
    }
    match answer.await {
        Ok(Ok(Pushed { mut pods, objects })) if pods.len() == 1 && objects.is_empty() => {
            json(StatusCode::CREATED, &pods.remove(0))
        }
        Ok(Ok(Pushed { pods, objects })) if pods.is_empty() && objects.len() == 1 => {
            json(StatusCode::CREATED, &object_json(&objects[0]))
        }
        Ok(Ok(Pushed { pods, objects })) if objects.is_empty() => json(
            StatusCode::CREATED,
            &k8s_openapi::List {
                items: pods,
                metadata: Default::default(),
            },
        ),
        Ok(Ok(Pushed { pods, objects })) => {
            let items: Vec<serde_json::Value> = pods
                .iter()
                .map(|p| serde_json::to_value(p).unwrap_or_default())
                .chain(objects.iter().map(object_json))
                .collect();
            json(
                StatusCode::CREATED,
                &serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
            )
        }
        Ok(Err(e)) => failure(&e),
        Err(_) => unavailable(),
    }
}

/// A ConfigMap or Secret as the apiserver shows it (with `apiVersion` and `kind`).
fn object_json(object: &ApiObject) -> serde_json::Value {
    match object {
        ApiObject::ConfigMap(c) => serde_json::to_value(c),
        ApiObject::Secret(s) => serde_json::to_value(s),
    }
    .unwrap_or_default()
}

async fn remove_object(
    State(api): State<PushApi>,
    kind: &'static str,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let (reply, answer) = oneshot::channel();
    let req = Request::DeleteObject {
        kind,
        namespace,
        name,
        reply,
    };
    if api.tx.send(req).await.is_err() {
        return unavailable();
    }
    match answer.await {
        Ok(Ok(object)) => json(StatusCode::OK, &object_json(&object)),
        Ok(Err(e)) => failure(&e),
        Err(_) => unavailable(),
    }
}

async fn remove(
    State(api): State<PushApi>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let (reply, answer) = oneshot::channel();
    if api
        .tx
        .send(Request::Delete {
            namespace,
            name,
            reply,
        })
        .await
        .is_err()
    {
        return unavailable();
    }
    match answer.await {
        Ok(Ok(pod)) => json(StatusCode::OK, &pod),
        Ok(Err(e)) => failure(&e),
        Err(_) => unavailable(),
    }
}
