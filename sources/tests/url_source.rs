//! The manifest URL source against a small HTTP server on 127.0.0.1 that
//! serves a manifest with `ETag` and `Last-Modified`, answers conditional
//! requests with 304 and records every request it gets.
//!
//! Each test runs on a current-thread runtime, so the source, the server and
//! the log capture (a thread-local subscriber) share one thread.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use nodelet_manifests::CONFIG_SEEN_ANNOTATION;
use nodelet_sources::{SourceEvent, UrlSource};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PERIOD: Duration = Duration::from_millis(200);
const PATIENCE: Duration = Duration::from_secs(10);

/// The `Last-Modified` of a version of the content.
fn last_modified(version: u32) -> String {
    format!(
        "Wed, 01 May 2024 12:{:02}:{:02} GMT",
        version / 60 % 60,
        version % 60
    )
}

fn manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: {image}\n"
    )
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: Vec<(String, String)>,
    /// The status the server answered with.
    status: u16,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the server serves; shared with the test, which changes it.
#[derive(Debug, Default)]
struct Content {
    body: Vec<u8>,
    /// Bumped on every change; the ETag is `"v<version>"`.
    version: u32,
    /// Whether to send ETag/Last-Modified and honour conditional requests.
    validators: bool,
    /// Answer every request with this status and no body.
    fail_with: Option<u16>,
    requests: Vec<Seen>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Content>>);

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Content) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    fn serve(&self, body: &str) {
        self.with(|c| {
            c.body = body.as_bytes().to_vec();
            c.version += 1;
        });
    }

    fn requests(&self) -> Vec<Seen> {
        self.with(|c| c.requests.clone())
    }

    fn count(&self) -> usize {
        self.with(|c| c.requests.len())
    }
}

struct Server {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(shared: &Shared, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let shared = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = handle(stream, &shared).await;
                });
            }
        });
        Self { addr, cancel, task }
    }

    fn url(&self) -> String {
        format!("http://{}/pods.yaml", self.addr)
    }

    /// Stops accepting and closes the listening socket.
    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

async fn handle(stream: tokio::net::TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await?; // The request line.
    let mut headers = Vec::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let response = shared.with(|c| {
        let etag = format!("\"v{}\"", c.version);
        let modified = last_modified(c.version);
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        // RFC 9110: If-None-Match, when present, decides alone.
        let conditional_hit = c.validators
            && match (header("if-none-match"), header("if-modified-since")) {
                (Some(tag), _) => *tag == etag,
                (None, Some(since)) => *since == modified,
                (None, None) => false,
            };
        let (status, mut head, body) = if let Some(status) = c.fail_with {
            (status, format!("HTTP/1.1 {status} Failing\r\n"), Vec::new())
        } else if conditional_hit {
            (304, "HTTP/1.1 304 Not Modified\r\n".to_owned(), Vec::new())
        } else {
            (200, "HTTP/1.1 200 OK\r\n".to_owned(), c.body.clone())
        };
        if c.validators && status != 500 {
            head.push_str(&format!("ETag: {etag}\r\nLast-Modified: {modified}\r\n"));
        }
        if status != 304 {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        c.requests.push(Seen { headers, status });
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    });
    let stream = stream.get_mut();
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Captures the crate's log lines (a thread-local subscriber).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Self;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Logs {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("nodelet_sources=debug")
            .with_writer(self.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self, level: &str, needle: &str) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains(level) && l.contains(needle))
            .count()
    }
}

/// The source under test, with its channel.
struct Running {
    rx: mpsc::Receiver<SourceEvent>,
    cancel: CancellationToken,
}

impl Running {
    fn start(url: &str, headers: &[(&str, &str)]) -> Self {
        let headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let source = UrlSource::new(url, headers, "Node1", PERIOD).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        tokio::spawn(source.run(tx, cancel.clone()));
        Self { rx, cancel }
    }

    async fn next(&mut self) -> Vec<Pod> {
        let event = tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("a snapshot in time")
            .expect("the source is running");
        let SourceEvent::Snapshot { source, pods } = event else {
            panic!("a snapshot: {event:?}")
        };
        assert_eq!(source, "http");
        pods
    }

    fn assert_quiet(&mut self) {
        match self.rx.try_recv() {
            Err(mpsc::error::TryRecvError::Empty) => {}
            other => panic!("expected no snapshot, got {other:?}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the server has seen two more requests than now: the source
/// polls one request at a time and sends any snapshot before the next
/// request, so by then everything the first of them caused has been sent.
async fn two_more_polls(shared: &Shared) {
    let target = shared.count() + 2;
    wait_for("two more polls", || shared.count() >= target).await;
}

fn served(validators: bool, body: &str) -> Shared {
    let shared = Shared::default();
    shared.with(|c| c.validators = validators);
    shared.serve(body);
    shared
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn changes_are_picked_up_and_unchanged_content_costs_a_304() {
    let shared = served(true, &manifest("web", "busybox:1"));
    let server = Server::start(&shared, any_port()).await;
    let mut source = Running::start(
        &server.url(),
        &[("X-Token", "secret"), ("X-Multi", "a"), ("X-Multi", "b")],
    );

    let first = source.next().await;
    assert_eq!(names(&first), ["web-node1"]);
    let annotations = first[0].metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["kubernetes.io/config.source"], "http");

    wait_for("four requests", || shared.count() >= 4).await;
    let requests = shared.requests();
    assert_eq!(requests[0].status, 200);
    assert_eq!(requests[0].header("if-none-match"), Vec::<&str>::new());
    for request in &requests[1..] {
        assert_eq!(request.status, 304, "{request:?}");
        assert_eq!(request.header("if-none-match"), ["\"v1\""]);
        assert_eq!(request.header("if-modified-since"), [last_modified(1)]);
    }
    for request in &requests {
        assert_eq!(request.header("x-token"), ["secret"]);
        assert_eq!(request.header("x-multi"), ["a", "b"]);
    }
    source.assert_quiet();

    shared.serve(&manifest("web", "busybox:2"));
    let changed_at = Instant::now();
    let second = source.next().await;
    // Due at the next poll, within one period; the slack is for a loaded
    // machine, and is still far below anything a missed change would cost.
    assert!(
        changed_at.elapsed() < PERIOD * 10,
        "the change took {:?}",
        changed_at.elapsed()
    );
    assert_eq!(names(&second), ["web-node1"]);
    assert_ne!(second[0].metadata.uid, first[0].metadata.uid);
    let image = |pods: &[Pod]| pods[0].spec.as_ref().unwrap().containers[0].image.clone();
    assert_eq!(image(&second).as_deref(), Some("busybox:2"));

    two_more_polls(&shared).await;
    source.assert_quiet();
    server.stop().await;
}

#[tokio::test]
async fn identical_bytes_without_validators_are_not_reparsed() {
    let shared = served(false, &manifest("web", "busybox:1"));
    let server = Server::start(&shared, any_port()).await;
    let mut source = Running::start(&server.url(), &[]);
    let first = source.next().await;
    wait_for("three requests", || shared.count() >= 3).await;
    assert!(shared.requests().iter().all(|r| r.status == 200));
    assert!(
        shared
            .requests()
            .iter()
            .all(|r| r.header("if-none-match").is_empty())
    );
    source.assert_quiet();

    // Same pod, other bytes: parsed again, but config.seen is carried over, so
    // nothing is sent.
    shared.serve(&format!("# reformatted\n{}", manifest("web", "busybox:1")));
    two_more_polls(&shared).await;
    source.assert_quiet();

    shared.serve(&manifest("web", "busybox:3"));
    let changed = source.next().await;
    assert_ne!(changed[0].metadata.uid, first[0].metadata.uid);
    server.stop().await;
}

#[tokio::test]
async fn broken_bodies_keep_the_last_good_pods_and_are_logged_once() {
    let logs = Logs::default();
    let _guard = logs.install();
    let shared = served(true, &manifest("web", "busybox:1"));
    let server = Server::start(&shared, any_port()).await;
    let url = server.url();
    let mut source = Running::start(&url, &[]);
    let good = source.next().await;
    assert_eq!(names(&good), ["web-node1"]);

    // Valid YAML, invalid pod: the URL, document index and field path are logged.
    let invalid = format!(
        "{}---\n{}",
        manifest("db", "postgres:16"),
        manifest("web", "''")
    );
    shared.serve(&invalid);
    let precise = format!(
        "{url}: document 1: invalid pod \"web-node1\": spec.containers[0].image: Required value"
    );
    wait_for("the invalid pod to be logged", || {
        logs.lines("WARN", &precise) == 1
    })
    .await;
    two_more_polls(&shared).await;
    source.assert_quiet();
    assert_eq!(logs.lines("WARN", &precise), 1, "logged once");

    // Broken YAML: the position is logged.
    shared.serve("apiVersion: v1\nkind: Pod\nmetadata: [\n");
    let syntax = format!("{url}: document 0: invalid YAML");
    wait_for("the YAML error to be logged", || {
        logs.lines("WARN", &syntax) == 1
    })
    .await;
    two_more_polls(&shared).await;
    source.assert_quiet();
    assert_eq!(logs.lines("WARN", "line 4 column 1"), 1);

    // Fixed: the new pods replace the old ones.
    shared.serve(&format!(
        "{}---\n{}",
        manifest("db", "postgres:16"),
        manifest("web", "busybox:2")
    ));
    let fixed = source.next().await;
    assert_eq!(names(&fixed), ["db-node1", "web-node1"]);
    assert_eq!(logs.lines("INFO", "read pods from manifest URL again"), 1);
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_url_keeps_the_last_good_pods_until_it_is_back() {
    let logs = Logs::default();
    let _guard = logs.install();
    let shared = served(true, &manifest("web", "busybox:1"));
    let server = Server::start(&shared, any_port()).await;
    let addr = server.addr;
    let mut source = Running::start(&server.url(), &[]);
    let good = source.next().await;
    assert_eq!(names(&good), ["web-node1"]);

    server.stop().await;
    let failure = "cannot read pods from manifest URL";
    wait_for("three failed attempts", || {
        logs.lines("DEBUG", failure) >= 2
    })
    .await;
    assert_eq!(
        logs.lines("WARN", failure),
        1,
        "one warning per distinct error"
    );
    assert_eq!(
        logs.lines("WARN", &format!("GET http://{addr}/pods.yaml")),
        1
    );
    source.assert_quiet();

    // A 5xx keeps the pods too, and is a new problem worth a warning.
    shared.with(|c| c.fail_with = Some(500));
    let server = Server::start(&shared, addr).await;
    wait_for("the 500 to be logged", || {
        logs.lines("WARN", "500 Internal Server Error") == 1
    })
    .await;
    two_more_polls(&shared).await;
    source.assert_quiet();

    // Back, with a change.
    shared.with(|c| c.fail_with = None);
    shared.serve(&manifest("web", "busybox:2"));
    let back = source.next().await;
    assert_eq!(names(&back), ["web-node1"]);
    assert_ne!(back[0].metadata.uid, good[0].metadata.uid);
    server.stop().await;
}

#[tokio::test]
async fn lists_multi_document_bodies_and_an_empty_body() {
    let list = "apiVersion: v1\nkind: PodList\nitems:\n- metadata: {name: a}\n  spec: {containers: [{name: c, image: i}]}\n- metadata: {name: b, namespace: kube-system}\n  spec: {containers: [{name: c, image: i}]}\n";
    let shared = served(true, list);
    let server = Server::start(&shared, any_port()).await;
    let mut source = Running::start(&server.url(), &[]);
    assert_eq!(names(&source.next().await), ["a-node1", "b-node1"]);

    // A Service among the pods is skipped, as in a manifest directory.
    shared.serve(&format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: x}}\n---\n{}",
        manifest("c", "i"),
        manifest("d", "i")
    ));
    assert_eq!(names(&source.next().await), ["c-node1", "d-node1"]);

    // As upstream: an empty body means no pods.
    shared.serve("");
    assert_eq!(source.next().await, []);
    server.stop().await;
}

#[tokio::test]
async fn the_first_snapshot_is_sent_even_when_the_first_attempt_fails() {
    // A port nothing listens on: bind, note it, close.
    let addr = TcpListener::bind(any_port())
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut source = Running::start(&format!("http://{addr}/pods.yaml"), &[]);
    assert_eq!(source.next().await, []);

    // A 5xx on the first attempt: the same.
    let shared = served(true, &manifest("web", "i"));
    shared.with(|c| c.fail_with = Some(503));
    let server = Server::start(&shared, any_port()).await;
    let mut failing = Running::start(&server.url(), &[]);
    assert_eq!(failing.next().await, []);
    two_more_polls(&shared).await;
    failing.assert_quiet();

    shared.with(|c| c.fail_with = None);
    let pods = failing.next().await;
    assert_eq!(names(&pods), ["web-node1"]);
    assert!(
        pods[0]
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(CONFIG_SEEN_ANNOTATION)
    );
    server.stop().await;
}

#[tokio::test]
async fn bodies_past_the_manifest_limits_keep_the_last_good_pods() {
    let logs = Logs::default();
    let _guard = logs.install();
    let shared = served(false, &manifest("web", "busybox:1"));
    let server = Server::start(&shared, any_port()).await;
    let mut source = Running::start(&server.url(), &[]);
    let good = source.next().await;
    assert_eq!(names(&good), ["web-node1"]);

    // Larger than 3 MiB: refused while it is read.
    let mut big = manifest("web", "busybox:2");
    big.push_str(&format!(
        "# {}\n",
        "x".repeat(nodelet_manifests::MAX_MANIFEST_BYTES)
    ));
    shared.serve(&big);
    wait_for("the too-large warning", || {
        logs.lines("WARN", "the body is larger than 3145728 bytes") == 1
    })
    .await;
    // Nested 100,000 deep: refused by the pre-scan, naming the URL and the limit.
    shared.serve(&"[".repeat(100_000));
    wait_for("the nesting warning", || {
        logs.lines("WARN", "document 0: nested deeper than 100 levels") == 1
    })
    .await;
    two_more_polls(&shared).await;
    source.assert_quiet();
    server.stop().await;
}

#[tokio::test]
async fn config_map_documents_in_the_body_go_before_the_pods() {
    let body = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cfg}}\ndata: {{k: v}}\n---\n{}",
        manifest("web", "busybox:1")
    );
    let shared = served(true, &body);
    let server = Server::start(&shared, any_port()).await;
    let mut source = Running::start(&server.url(), &[]);
    let first = tokio::time::timeout(PATIENCE, source.rx.recv())
        .await
        .expect("an event in time")
        .expect("the source is running");
    let SourceEvent::Objects {
        source: from,
        objects,
    } = first
    else {
        panic!("the objects first: {first:?}")
    };
    assert_eq!(from, "http");
    let [nodelet_manifests::ApiObject::ConfigMap(cm)] = objects.as_slice() else {
        panic!("one ConfigMap: {objects:?}")
    };
    assert_eq!(cm.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(names(&source.next().await), ["web-node1"]);
    server.stop().await;
}
