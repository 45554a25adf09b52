//! The kubelet API's log endpoints, as upstream's `pkg/kubelet/server/server.go`:
//! `GET /containerLogs/{namespace}/{pod}/{container}` (`follow`, `tailLines`,
//! `limitBytes`, `sinceSeconds`, `sinceTime`, `timestamps`, `previous`; what
//! `kubectl logs` reaches through the apiserver's `pods/log`) and `GET /logs/…`, the
//! node's log directory (upstream's `http.FileServer` on `/var/log/`: listings and
//! files).
//!
//! The container is found as upstream's `validateContainerLogStatus` finds it: the
//! pod's status names the instance (the current one, or `lastState` for
//! `previous`), the runtime gives its log file and whether it still runs. Errors are
//! upstream's, word for word. A follow ends when the container has exited and its
//! file is read, or when the client goes away (the body stream is dropped with the
//! connection; it owns the open file and nothing else).
//!
//! Authentication and authorization (`nodes/log`, `nodes/proxy`) are the secure
//! port's job: this router is mounted behind them.

use std::path::{Component, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use nodelet_cri::logs::read::{ReadOptions, Running, read_logs};
use nodelet_cri::runtime::{ContainerState, Runtime};
use tokio::sync::watch;

use crate::pod::status_store::PodStatuses;

/// The node's log directory `/logs/` serves (upstream's fixed `/var/log/`).
pub const NODE_LOG_DIR: &str = "/var/log";

/// A container instance's log file and whether it still runs.
#[derive(Debug, Clone)]
pub struct InstanceLog {
    /// The CRI log file.
    pub path: PathBuf,
    /// Whether its process runs (a follow waits for more while it does).
    pub running: bool,
}

/// What the log endpoints ask of the runtime.
pub trait LogBackend: Send + Sync + 'static {
    /// The instance `id` of pod `pod_uid`; `None` when the runtime doesn't know it.
    fn instance(&self, pod_uid: &str, id: &str) -> BoxFuture<'_, Option<InstanceLog>>;
}

impl<R: Runtime> LogBackend for R {
    fn instance(&self, pod_uid: &str, id: &str) -> BoxFuture<'_, Option<InstanceLog>> {
        let (pod_uid, id) = (pod_uid.to_owned(), id.to_owned());
        Box::pin(async move {
            let containers = self.list_containers(Some(&pod_uid)).await.ok()?;
            let c = containers.into_iter().find(|c| c.id == id)?;
            Some(InstanceLog {
                path: c.log_path,
                running: c.state == ContainerState::Running,
            })
        })
    }
}

/// The runtime once connected (`None` until then).
pub type BackendCell = watch::Receiver<Option<Arc<dyn LogBackend>>>;

#[derive(Clone)]
struct LogsState {
    pods: watch::Receiver<PodStatuses>,
    backend: BackendCell,
    node_logs: Arc<PathBuf>,
}

/// Builds the log endpoints: container logs of the pods in `pods` through `backend`,
/// and the node's log files under `node_logs` (`/var/log`).
pub fn router(
    pods: watch::Receiver<PodStatuses>,
    backend: BackendCell,
    node_logs: PathBuf,
) -> Router {
    let state = LogsState {
        pods,
        backend,
        node_logs: Arc::new(node_logs),
    };
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/logs", get(|| async { moved("/logs/") }))
        .route("/logs/", get(node_log_root))
        .route("/logs/{*path}", get(node_log))
        .with_state(state)
}

/// Go's `localRedirect`: 301 to `to`.
fn moved(to: &str) -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, to.to_owned())],
    )
        .into_response()
}

/// An error as go-restful's `WriteError` sends it: the status and the message.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

/// The query as upstream decodes it into `v1.PodLogOptions`.
#[derive(Debug, Default, PartialEq, Eq)]
struct LogQuery {
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<i64>,
    limit_bytes: Option<i64>,
    since_seconds: Option<i64>,
    since_time: Option<jiff::Timestamp>,
}

/// Upstream's query errors: 400 `Unable to decode query.`, 422 `Invalid request.`.
fn parse_query(raw: Option<&str>) -> Result<LogQuery, Box<Response>> {
    let decode = || {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            r#"{"message": "Unable to decode query."}"#,
        ))
    };
    let mut q = LogQuery::default();
    let mut tail: Option<String> = None;
    let mut tail_lines: Option<String> = None;
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(decode)?;
        // Go's `Convert_Slice_string_To_bool`: "0", "f", "false" are false.
        let flag = !(v == "0" || v.eq_ignore_ascii_case("f") || v.eq_ignore_ascii_case("false"));
        let int = |v: &str| v.parse::<i64>().map_err(|_| decode());
        match k {
            "follow" => q.follow = flag,
            "previous" => q.previous = flag,
            "timestamps" => q.timestamps = flag,
            "tailLines" => tail_lines = Some(v),
            // The old `tail` parameter; `all` is no limit.
            "tail" => tail = Some(v),
            "limitBytes" => q.limit_bytes = Some(int(&v)?),
            "sinceSeconds" => q.since_seconds = Some(int(&v)?),
            "sinceTime" => q.since_time = Some(v.parse().map_err(|_| decode())?),
            _ => {}
        }
    }
    match tail.filter(|t| !t.is_empty()) {
        Some(t) if t == "all" => {}
        Some(t) => q.tail_lines = Some(t.parse().map_err(|_| decode())?),
        None => {
            if let Some(t) = tail_lines {
                q.tail_lines = Some(t.parse().map_err(|_| decode())?);
            }
        }
    }
    // Upstream's ValidatePodLogOptions.
    let invalid = q.tail_lines.is_some_and(|n| n < 0)
        || q.limit_bytes.is_some_and(|n| n < 1)
        || q.since_seconds.is_some_and(|n| n < 1)
        || (q.since_seconds.is_some() && q.since_time.is_some());
    if invalid {
        return Err(Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"message": "Invalid request."}"#,
        )));
    }
    Ok(q)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

impl LogQuery {
    /// Upstream's `NewLogOptions`: the later of `sinceSeconds` and `sinceTime`.
    fn read_options(&self, now: jiff::Timestamp) -> ReadOptions {
        let since_seconds = self
            .since_seconds
            .and_then(|s| now.checked_sub(jiff::SignedDuration::from_secs(s)).ok());
        let since = match (since_seconds, self.since_time) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        ReadOptions {
            follow: self.follow,
            tail_lines: self.tail_lines.and_then(|n| u64::try_from(n).ok()),
            limit_bytes: self.limit_bytes.and_then(|n| u64::try_from(n).ok()),
            since,
            timestamps: self.timestamps,
        }
    }
}

async fn container_logs(
    State(state): State<LogsState>,
    Path((namespace, pod_name, container)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = match parse_query(raw.as_deref()) {
        Ok(q) => q,
        Err(resp) => return *resp,
    };
    let pod = {
        let pods = state.pods.borrow();
        pods.values()
            .find(|p| {
                p.metadata.namespace.as_deref().unwrap_or("default") == namespace
                    && p.metadata.name.as_deref() == Some(pod_name.as_str())
            })
            .cloned()
    };
    let Some(pod) = pod else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pod {pod_name:?} does not exist"),
        );
    };
    if !has_container(&pod, &container) {
        return error(
            StatusCode::NOT_FOUND,
            format!("container {container:?} not found in pod {pod_name:?}"),
        );
    }
    let id = match container_id(&pod, &pod_name, &container, query.previous) {
        Ok(id) => id,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let Some(backend) = state.backend.borrow().clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is not connected to its container runtime yet",
        );
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let cid = id.strip_prefix("containerd://").unwrap_or(&id).to_owned();
    let Some(instance) = backend.instance(&uid, &cid).await else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unable to retrieve container logs for {id}"),
        );
    };
    let running: Running = {
        let backend = Arc::clone(&backend);
        Arc::new(move || {
            let (backend, uid, cid) = (Arc::clone(&backend), uid.clone(), cid.clone());
            Box::pin(async move {
                backend
                    .instance(&uid, &cid)
                    .await
                    .is_some_and(|i| i.running)
            })
        })
    };
    let opts = query.read_options(jiff::Timestamp::now());
    match read_logs(instance.path.clone(), opts, running).await {
        Ok(stream) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::from_stream(stream),
        )
            .into_response(),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "failed to open log file {:?}: {e}",
                instance.path.display().to_string()
            ),
        ),
    }
}

fn has_container(pod: &Pod, name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers.iter().any(|c| c.name == name)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == name)
}

/// The instance whose log is read, as upstream's `validateContainerLogStatus`.
fn container_id(pod: &Pod, pod_name: &str, name: &str, previous: bool) -> Result<String, String> {
    let status = pod.status.as_ref();
    let find = |list: Option<&Vec<ContainerStatus>>| {
        list.and_then(|l| l.iter().find(|s| s.name == name))
            .cloned()
    };
    let Some(cs) = find(status.and_then(|s| s.container_statuses.as_ref()))
        .or_else(|| find(status.and_then(|s| s.init_container_statuses.as_ref())))
        .or_else(|| find(status.and_then(|s| s.ephemeral_container_statuses.as_ref())))
    else {
        return Err(format!(
            "container {name:?} in pod {pod_name:?} is not available"
        ));
    };
    let state = cs.state.unwrap_or_default();
    let last = cs.last_state.and_then(|l| l.terminated);
    let last_id = last
        .as_ref()
        .and_then(|t| t.container_id.clone())
        .filter(|id| !id.is_empty());
    let terminated_msg = || format!("container {name:?} in pod {pod_name:?} is terminated");
    if previous {
        return last_id.ok_or_else(|| {
            format!("previous terminated container {name:?} in pod {pod_name:?} not found")
        });
    }
    if state.running.is_some() {
        return cs
            .container_id
            .filter(|id| !id.is_empty())
            .ok_or_else(terminated_msg);
    }
    if let Some(t) = state.terminated {
        return match t.container_id.filter(|id| !id.is_empty()) {
            Some(id) => Ok(id),
            None => last_id.ok_or_else(terminated_msg),
        };
    }
    if last.is_some() {
        return last_id.ok_or_else(terminated_msg);
    }
    if let Some(w) = state.waiting {
        let reason = w.reason.unwrap_or_default();
        return Err(match reason.as_str() {
            "ErrImagePull" => format!(
                "container {name:?} in pod {pod_name:?} is waiting to start: image can't be pulled"
            ),
            "ImagePullBackOff" => format!(
                "container {name:?} in pod {pod_name:?} is waiting to start: trying and failing to pull image"
            ),
            _ => format!("container {name:?} in pod {pod_name:?} is waiting to start: {reason}"),
        });
    }
    Err(format!(
        "container {name:?} in pod {pod_name:?} is waiting to start - no logs yet"
    ))
}

async fn node_log_root(State(state): State<LogsState>) -> Response {
    serve_node_log(&state.node_logs, "").await
}

async fn node_log(State(state): State<LogsState>, Path(path): Path<String>) -> Response {
    serve_node_log(&state.node_logs, &path).await
}

/// Go's `http.FileServer` on the node's log directory: a directory is an HTML list
/// (a trailing `/` required, else a redirect), a file its bytes. `..` is refused
/// (400, as Go); a symlink is followed only while it stays under the directory.
async fn serve_node_log(root: &std::path::Path, rel: &str) -> Response {
    let rel_path = std::path::Path::new(rel);
    if rel_path.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    }) {
        return error(StatusCode::BAD_REQUEST, "invalid URL path");
    }
    let not_found = || error(StatusCode::NOT_FOUND, "404 page not found");
    let Ok(root) = tokio::fs::canonicalize(root).await else {
        return not_found();
    };
    let Ok(full) = tokio::fs::canonicalize(root.join(rel_path)).await else {
        return not_found();
    };
    if !full.starts_with(&root) {
        return not_found();
    }
    let Ok(meta) = tokio::fs::metadata(&full).await else {
        return not_found();
    };
    let name = rel.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    if meta.is_dir() {
        if !rel.is_empty() && !rel.ends_with('/') {
            return moved(&format!("{name}/"));
        }
        return match dir_listing(&full).await {
            Ok(html) => {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
            }
            Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "Error reading directory"),
        };
    }
    if rel.ends_with('/') {
        return moved(&format!("../{name}"));
    }
    let Ok(file) = tokio::fs::File::open(&full).await else {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    let content_type = match full.extension().and_then(|e| e.to_str()) {
        Some("gz") => "application/gzip",
        Some("json") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let body = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_LENGTH, meta.len().to_string()),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Go's `dirList`: names sorted, directories with a trailing `/`.
async fn dir_listing(dir: &std::path::Path) -> std::io::Result<String> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut names = Vec::new();
    while let Some(e) = entries.next_entry().await? {
        let mut name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().await.is_ok_and(|t| t.is_dir()) {
            name.push('/');
        }
        names.push(name);
    }
    names.sort();
    let mut html = String::from(
        "<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n",
    );
    for n in names {
        html.push_str(&format!(
            "<a href=\"{}\">{}</a>\n",
            html_escape(&url_escape(&n)),
            html_escape(&n)
        ));
    }
    html.push_str("</pre>\n");
    Ok(html)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[path = "logs_tests.rs"]
mod tests;
