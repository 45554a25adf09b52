//! In-process tests of the log endpoints: a status store with pods, a backend that
//! maps instance IDs to files in a temp dir, requests through the router (and through
//! a real socket for the follow whose client goes away).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::to_bytes;
use axum::http::Request;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use super::*;
use crate::pod::status_store::StatusStore;

#[derive(Default)]
struct FakeBackend {
    instances: Mutex<HashMap<String, InstanceLog>>,
}

impl LogBackend for FakeBackend {
    fn instance(&self, _pod_uid: &str, id: &str) -> BoxFuture<'_, Option<InstanceLog>> {
        let found = self
            .instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned();
        Box::pin(async move { found })
    }
}

impl FakeBackend {
    fn set(&self, id: &str, path: PathBuf, running: bool) {
        self.instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned(), InstanceLog { path, running });
    }
}

fn status(name: &str, state: ContainerState, last: Option<&str>) -> ContainerStatus {
    ContainerStatus {
        name: name.to_owned(),
        container_id: state
            .running
            .as_ref()
            .map(|_| format!("containerd://{name}-cur")),
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: last.map(|id| ContainerStateTerminated {
                container_id: Some(format!("containerd://{id}")),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn running() -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning::default()),
        ..Default::default()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    logs: PathBuf,
    node_logs: PathBuf,
    backend: Arc<FakeBackend>,
    router: Router,
    _store: StatusStore,
}

fn line(ts: &str, text: &str) -> String {
    format!("{ts} stdout F {text}\n")
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path().join("pods");
    let node_logs = dir.path().join("varlog");
    std::fs::create_dir_all(&logs).expect("mkdir");
    std::fs::create_dir_all(node_logs.join("sub")).expect("mkdir");
    std::fs::write(node_logs.join("syslog"), "node log\n").expect("write");
    std::fs::write(node_logs.join("sub/a b.log"), "a\n").expect("write");
    std::fs::write(dir.path().join("secret"), "secret\n").expect("write");
    std::os::unix::fs::symlink(dir.path().join("secret"), node_logs.join("escape"))
        .expect("symlink");
    let store = StatusStore::new();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("default".into()),
            uid: Some("u1".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: ["app", "fresh", "pulling", "done"]
                .iter()
                .map(|n| Container {
                    name: (*n).to_owned(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let waiting = |reason: &str| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let done = ContainerState {
        terminated: Some(ContainerStateTerminated {
            container_id: Some("containerd://done-cur".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    store.set(
        &pod,
        PodStatus {
            container_statuses: Some(vec![
                status("app", running(), Some("app-prev")),
                status("fresh", running(), None),
                status("pulling", waiting("ImagePullBackOff"), None),
                status("done", done, None),
            ]),
            ..Default::default()
        },
    );
    let backend = Arc::new(FakeBackend::default());
    let cur = logs.join("app-cur.log");
    let prev = logs.join("app-prev.log");
    std::fs::write(
        &cur,
        [
            line("2026-12-04T10:00:00Z", "one"),
            "2026-12-04T10:00:01Z stdout P tw\n".into(),
            line("2026-12-04T10:00:01Z", "o"),
            line("2026-12-04T10:00:02Z", "three"),
        ]
        .concat(),
    )
    .expect("write");
    std::fs::write(&prev, line("2026-12-04T09:00:00Z", "before the restart")).expect("write");
    backend.set("app-cur", cur, false);
    backend.set("app-prev", prev, false);
    backend.set("done-cur", logs.join("missing.log"), false);
    let cell: Arc<dyn LogBackend> = backend.clone();
    let (_tx, rx) = watch::channel(Some(cell));
    let router = router(store.subscribe(), rx, node_logs.clone());
    Fixture {
        _dir: dir,
        logs,
        node_logs,
        backend,
        router,
        _store: store,
    }
}

async fn get(router: &Router, uri: &str) -> (StatusCode, String) {
    let resp = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let body = to_bytes(resp.into_body(), usize::MAX).await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn errors_are_upstreams() {
    let f = fixture();
    let r = &f.router;
    let cases = [
        (
            "/containerLogs/default/nope/app",
            404,
            "pod \"nope\" does not exist",
        ),
        (
            "/containerLogs/other/web/app",
            404,
            "pod \"web\" does not exist",
        ),
        (
            "/containerLogs/default/web/nope",
            404,
            "container \"nope\" not found in pod \"web\"",
        ),
        (
            "/containerLogs/default/web/fresh?previous=true",
            400,
            "previous terminated container \"fresh\" in pod \"web\" not found",
        ),
        (
            "/containerLogs/default/web/pulling",
            400,
            "container \"pulling\" in pod \"web\" is waiting to start: trying and failing to pull image",
        ),
        (
            "/containerLogs/default/web/fresh",
            400,
            "unable to retrieve container logs for containerd://fresh-cur",
        ),
        (
            "/containerLogs/default/web/app?tailLines=-1",
            422,
            r#"{"message": "Invalid request."}"#,
        ),
        (
            "/containerLogs/default/web/app?sinceSeconds=1&sinceTime=2026-12-04T10:00:00Z",
            422,
            r#"{"message": "Invalid request."}"#,
        ),
        (
            "/containerLogs/default/web/app?limitBytes=x",
            400,
            r#"{"message": "Unable to decode query."}"#,
        ),
    ];
    for (uri, code, body) in cases {
        let (status, text) = get(r, uri).await;
        assert_eq!((status.as_u16(), text.as_str()), (code, body), "{uri}");
    }
    let (status, text) = get(r, "/containerLogs/default/web/done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.starts_with("failed to open log file"), "{text}");
}

#[tokio::test]
async fn parameters_as_upstream() {
    let f = fixture();
    let r = &f.router;
    let base = "/containerLogs/default/web/app";
    let cases = [
        ("", "one\ntwo\nthree\n"),
        ("?tailLines=1", "three\n"),
        ("?tail=2", "two\nthree\n"),
        ("?tail=all", "one\ntwo\nthree\n"),
        ("?limitBytes=5", "one\nt"),
        (
            "?timestamps=true&sinceTime=2026-12-04T10%3A00%3A01Z",
            "2026-12-04T10:00:01Z two\n2026-12-04T10:00:02Z three\n",
        ),
        ("?sinceSeconds=60", ""),
        ("?previous=true", "before the restart\n"),
        ("?previous=false&follow=false", "one\ntwo\nthree\n"),
    ];
    for (q, want) in cases {
        let (status, text) = get(r, &format!("{base}{q}")).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, want), "{q}");
    }
}

/// Open descriptors of this process that point at `path`.
fn fds_on(path: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == path))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_new_lines_and_ends_when_the_client_goes() {
    let f = fixture();
    let log = f.logs.join("follow.log");
    std::fs::write(&log, line("2026-12-04T10:00:00Z", "first")).expect("write");
    f.backend.set("app-cur", log.clone(), true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let metrics = tokio::runtime::Handle::current().metrics();
    let server = tokio::spawn(axum::serve(listener, f.router.clone()).into_future());
    let baseline = metrics.num_alive_tasks();
    for round in 0..3 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(
            b"GET /containerLogs/default/web/app?follow=true HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .expect("send");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let want = format!("round {round}");
        let mut appended = false;
        while !String::from_utf8_lossy(&seen).contains(&want) {
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
                .await
                .expect("a line within 10 s")
                .expect("read");
            assert!(n > 0, "the stream ended early");
            seen.extend_from_slice(&buf[..n]);
            if !appended && String::from_utf8_lossy(&seen).contains("first") {
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("open");
                file.write_all(line("2026-12-04T10:00:05Z", &want).as_bytes())
                    .expect("append");
                appended = true;
            }
        }
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200 OK"));
        assert_eq!(fds_on(&log), 1, "the follower holds the file");
        drop(conn);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fds_on(&log) > 0 || metrics.num_alive_tasks() > baseline {
            assert!(
                std::time::Instant::now() < deadline,
                "after the client left: {} fds on the log, {} tasks (baseline {baseline})",
                fds_on(&log),
                metrics.num_alive_tasks()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    server.abort();
}

#[tokio::test]
async fn node_logs_are_listed_and_served_without_escapes() {
    let f = fixture();
    let r = &f.router;
    let (status, listing) = get(r, "/logs/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(listing.contains("<a href=\"sub/\">sub/</a>"), "{listing}");
    assert!(
        listing.contains("<a href=\"syslog\">syslog</a>"),
        "{listing}"
    );
    let (status, sub) = get(r, "/logs/sub/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(sub.contains("<a href=\"a%20b.log\">a b.log</a>"), "{sub}");
    assert_eq!(
        get(r, "/logs/syslog").await,
        (StatusCode::OK, "node log\n".into())
    );
    assert_eq!(get(r, "/logs/sub/a%20b.log").await.1, "a\n");
    assert_eq!(get(r, "/logs/sub").await.0, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(get(r, "/logs").await.0, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(get(r, "/logs/../secret").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        get(r, "/logs/sub/..%2F..%2Fsecret").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(get(r, "/logs/escape").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(r, "/logs/missing").await.0, StatusCode::NOT_FOUND);
    assert!(f.node_logs.join("syslog").exists());
}
