//! End-to-end tests of the pod sources (issue 4): the manifest directory reacting to
//! edits, renames and deletes; the manifest URL polled from a local server; pods
//! pushed over HTTP; and `nodelet validate`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{BUSYBOX, World, container_status, phase, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pod_yaml(name: &str, arg: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '{arg}']\n"
    )
}

fn running(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    phase(p) == "Running" && container_status(p, "main").is_some_and(|c| c.ready)
}

/// Files dropped, edited, renamed and deleted in the manifest directory start,
/// replace and stop pods. The rescan is set to an hour, so every change here came
/// through inotify; how fast is the bench's business, not a test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_dir_changes_are_seen_at_once() {
    let mut w = World::new().await;
    w.extra_args = vec!["--file-check-frequency".into(), "1h".into()];
    w.start_agent().await;

    w.write_manifest("a.yaml", &pod_yaml("a", "3600"));
    let first = wait_for("pod a known", Duration::from_secs(5), || {
        let w = &w;
        async move { w.pod("a").await }
    })
    .await;
    let uid1 = first.metadata.uid.clone();
    w.wait_pod("a", "Running", running).await;

    // An edit is a new pod (new UID) replacing the old.
    w.write_manifest("a.yaml", &pod_yaml("a", "3601"));
    wait_for("the edited pod", Duration::from_secs(5), || {
        let (w, uid1) = (&w, uid1.clone());
        async move { w.pod("a").await.filter(|p| p.metadata.uid != uid1) }
    })
    .await;

    // A rename keeps the pod: same content, the UID depends on the path, so it is a
    // new pod with the same name; exactly one pod named a remains.
    // The replaced pods stay listed (Terminating) through their grace period, as
    // upstream lists them; then exactly one remains.
    std::fs::rename(w.manifests.join("a.yaml"), w.manifests.join("b.yaml")).expect("rename");
    wait_for(
        "one running pod a after the rename",
        Duration::from_secs(30),
        || {
            let w = &w;
            async move {
                let pods = w.pods().await;
                (pods.len() == 1
                    && pods[0].metadata.deletion_timestamp.is_none()
                    && running(&pods[0]))
                .then_some(())
            }
        },
    )
    .await;

    // A dotfile is ignored; a delete removes the pod.
    w.write_manifest(".hidden.yaml", &pod_yaml("hidden", "3600"));
    std::fs::remove_file(w.manifests.join("b.yaml")).expect("remove");
    wait_for("pod a gone", Duration::from_secs(10), || {
        let w = &w;
        async move { w.pod("a").await.is_none().then_some(()) }
    })
    .await;
    assert!(w.pod("hidden").await.is_none());
    w.stop_agent();
}

/// A tiny HTTP server serving one manifest with an ETag, answering 304 when it
/// matches, and counting requests.
struct ManifestServer {
    port: u16,
    body: Arc<Mutex<String>>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ManifestServer {
    async fn start(body: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let body = Arc::new(Mutex::new(body.to_owned()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (b, r) = (Arc::clone(&body), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                r.lock().expect("lock").push(req.clone());
                let content = b.lock().expect("lock").clone();
                let etag = format!(
                    "\"{:x}\"",
                    content.len() * 31 + content.bytes().map(usize::from).sum::<usize>()
                );
                let resp = if req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("if-none-match:") && l.contains(&etag)
                }) {
                    format!(
                        "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{content}",
                        content.len()
                    )
                };
                let _ = conn.write_all(resp.as_bytes()).await;
            }
        });
        Self {
            port,
            body,
            requests,
            task,
        }
    }
}

impl Drop for ManifestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `--manifest-url`: the served pod runs; unchanged content costs 304s; a change is
/// picked up; custom headers are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_url_source() {
    let server = ManifestServer::start(&pod_yaml("fromurl", "3600")).await;
    let mut w = World::new().await;
    w.extra_args = vec![
        "--manifest-url".into(),
        format!("http://127.0.0.1:{}/pods.yaml", server.port),
        "--manifest-url-header".into(),
        "X-Test:yes".into(),
        "--http-check-frequency".into(),
        "200ms".into(),
    ];
    w.start_agent().await;
    let pod = w.wait_pod("fromurl", "Running", running).await;
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("kubernetes.io/config.source")
            .map(String::as_str),
        Some("http")
    );
    wait_for(
        "conditional requests answered 304",
        Duration::from_secs(10),
        || {
            let reqs = server.requests.lock().expect("lock").clone();
            async move {
                (reqs
                    .iter()
                    .filter(|r| r.to_ascii_lowercase().contains("if-none-match"))
                    .count()
                    >= 2)
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        server
            .requests
            .lock()
            .expect("lock")
            .iter()
            .all(|r| r.contains("X-Test: yes") || r.contains("x-test: yes"))
    );

    *server.body.lock().expect("lock") = pod_yaml("replaced", "3600");
    w.wait_pod("replaced", "Running", running).await;
    wait_for("the old pod gone", Duration::from_secs(10), || {
        let w = &w;
        async move { w.pod("fromurl").await.is_none().then_some(()) }
    })
    .await;
    w.stop_agent();
}

/// `--enable-pod-push`: a valid pod POSTed runs (201); an invalid one gets a 422
/// `v1.Status` with field paths; DELETE removes the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_pods() {
    let mut w = World::new().await;
    let push_port = TcpPort::free();
    w.extra_args = vec![
        "--enable-pod-push".into(),
        "--pod-push-port".into(),
        push_port.to_string(),
    ];
    w.start_agent().await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{push_port}/pods");
    let resp = http
        .post(&url)
        .header("Content-Type", "application/yaml")
        .body(pod_yaml("pushed", "3600"))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 201);
    w.wait_pod("pushed", "Running", running).await;

    let resp = http
        .post(&url)
        .header("Content-Type", "application/yaml")
        .body("apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers:\n  - name: main\n")
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 422);
    let status: serde_json::Value = resp.json().await.expect("a Status");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.containers[0].image"
    );

    let resp = http
        .delete(format!("{url}/default/pushed"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status().as_u16(), 200);
    wait_for("the pushed pod gone", Duration::from_secs(15), || {
        let w = &w;
        async move { w.pod("pushed").await.is_none().then_some(()) }
    })
    .await;
    let resp = http
        .delete(format!("{url}/default/pushed"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status().as_u16(), 404);
    w.stop_agent();
}

struct TcpPort;
impl TcpPort {
    fn free() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }
}

/// `nodelet validate`: exit 0 for valid manifests, 1 with every error (file,
/// document, field path) for invalid ones; `--output yaml` prints the defaulted pod.
#[test]
fn validate_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, pod_yaml("good", "1")).expect("write");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec:\n  containers:\n  - name: c\n  - name: c\n    image: x\n",
    )
    .expect("write");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nodelet"))
            .arg("validate")
            .args(args)
            .output()
            .expect("run nodelet validate")
    };
    let ok = run(&[good.to_str().expect("utf-8"), "--node-name", "n1"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let out = run(&[bad.to_str().expect("utf-8"), "--node-name", "n1"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "document 0: metadata.name: Invalid value: \"Bad_Name-n1\"",
        "document 0: spec.containers[0].image: Required value",
        "document 0: spec.containers[1].name: Duplicate value: \"c\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        text.lines()
            .all(|l| l.starts_with(bad.to_str().expect("utf-8"))),
        "{text}"
    );

    let yaml = run(&[
        good.to_str().expect("utf-8"),
        "--node-name",
        "n1",
        "--output",
        "yaml",
    ]);
    assert_eq!(yaml.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&yaml.stdout);
    for want in [
        "name: good-n1",
        "restartPolicy: Always",
        "imagePullPolicy: IfNotPresent",
        "terminationMessagePath: /dev/termination-log",
    ] {
        assert!(printed.contains(want), "missing {want:?} in:\n{printed}");
    }
}
