//! HTTP probes (upstream `pkg/probe/http`): a GET to `scheme://host:port/path`, the
//! host defaulting to the pod IP; a status from 200 to 399 passes. HTTPS certificates
//! are not verified; redirects are followed only to the same host (a redirect
//! elsewhere ends the probe with a pass and a warning), at most 10; at most 10 KiB of
//! the body is read. Messages are Go's (`Get "http://10.0.0.5:8080/healthz": dial tcp
//! 10.0.0.5:8080: connect: connection refused`, `HTTP probe failed with statuscode:
//! 500`).

use std::error::Error as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction};
use reqwest::header::{ACCEPT, CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};

use super::tcp::join_host_port;
use super::{ProbeOutcome, ProbeResult, go_errno, resolve_port};

/// How much of the body a probe reads (upstream's `maxRespBodyLength`).
pub const MAX_BODY: usize = 10 * 1024;
/// Redirects followed before the probe fails, as Go's default client.
const MAX_REDIRECTS: usize = 10;

/// One client for all probes: no connection reuse (upstream disables keep-alives), no
/// proxy, no certificate checks, same-host redirects only. The timeout is per request.
fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .no_proxy()
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    let first = attempt.previous().first().and_then(|u| u.host_str());
                    if attempt.url().host_str() != first {
                        attempt.stop()
                    } else if attempt.previous().len() >= MAX_REDIRECTS {
                        attempt.error("stopped after 10 redirects")
                    } else {
                        attempt.follow()
                    }
                }))
                .build()
                .map_err(|e| format!("http probe client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs an `httpGet` probe of a container whose pod has `pod_ip`.
pub async fn probe(
    action: &HTTPGetAction,
    container: &Container,
    pod_ip: IpAddr,
    timeout: Duration,
) -> ProbeOutcome {
    let port = match resolve_port(&action.port, container) {
        Ok(p) => p,
        Err(e) => return ProbeOutcome::new(ProbeResult::Unknown, e),
    };
    let scheme = match action.scheme.as_deref() {
        None | Some("") => "http".to_owned(),
        Some(s) => s.to_lowercase(),
    };
    let host = match action.host.as_deref() {
        Some(h) if !h.is_empty() => h.to_owned(),
        _ => pod_ip.to_string(),
    };
    let url = format_url(
        &scheme,
        &join_host_port(&host, port),
        action.path.as_deref(),
    );
    let client = match client() {
        Ok(c) => c,
        Err(e) => return ProbeOutcome::new(ProbeResult::Unknown, e),
    };
    let headers = match headers(action) {
        Ok(h) => h,
        Err(reason) => {
            return ProbeOutcome::new(ProbeResult::Failure, format!("Get {url:?}: {reason}"));
        }
    };
    let parsed = match reqwest::Url::parse(&url) {
        Ok(u) => u,
        Err(e) => {
            return ProbeOutcome::new(ProbeResult::Failure, format!("parse {url:?}: {e}"));
        }
    };
    let send = client.get(parsed).headers(headers).timeout(timeout).send();
    let mut response = match send.await {
        Ok(r) => r,
        Err(e) => return ProbeOutcome::new(ProbeResult::Failure, go_error(&url, &e)),
    };
    let mut body = Vec::new();
    // The whole exchange, body included, is bounded by the request's timeout.
    while body.len() < MAX_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            // Upstream returns the read error as the probe's error.
            Err(e) => return ProbeOutcome::new(ProbeResult::Unknown, go_error(&url, &e)),
        }
    }
    body.truncate(MAX_BODY);
    let body = String::from_utf8_lossy(&body).into_owned();
    let status = response.status().as_u16();
    match status {
        200..=299 => ProbeOutcome::new(ProbeResult::Success, body),
        // A redirect not followed (to another host): a pass with upstream's warning.
        300..=399 => ProbeOutcome::new(
            ProbeResult::Success,
            format!("Probe terminated redirects, Response body: {body}"),
        ),
        _ => ProbeOutcome::new(
            ProbeResult::Failure,
            format!("HTTP probe failed with statuscode: {status}"),
        ),
    }
}

/// The URL as upstream's `formatURL` builds and Go prints it: the path may carry a
/// query; a path without a leading `/` gets one; an empty path stays empty.
fn format_url(scheme: &str, host_port: &str, path: Option<&str>) -> String {
    let path = path.unwrap_or_default();
    let sep = if path.is_empty() || path.starts_with('/') {
        ""
    } else {
        "/"
    };
    format!("{scheme}://{host_port}{sep}{path}")
}

/// The probe's headers, then upstream's defaults: `User-Agent: kube-probe/1.34` and
/// `Accept: */*` unless given, `Connection: close`. Upstream drops an `Accept` given
/// empty; reqwest would put its own `*/*` in its place, so it goes out empty.
fn headers(action: &HTTPGetAction) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for h in action.http_headers.iter().flatten() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("net/http: invalid header field name {:?}", h.name))?;
        let value = HeaderValue::from_str(&h.value)
            .map_err(|_| format!("net/http: invalid header field value for {:?}", h.name))?;
        map.append(name, value);
    }
    if !map.contains_key(USER_AGENT) {
        map.insert(USER_AGENT, HeaderValue::from_static(super::USER_AGENT));
    }
    if !map.contains_key(ACCEPT) {
        map.insert(ACCEPT, HeaderValue::from_static("*/*"));
    }
    if map.get(HOST).is_some_and(HeaderValue::is_empty) {
        map.remove(HOST);
    }
    map.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(map)
}

/// A request error as Go's client words it: `Get "<url>": <reason>`.
fn go_error(url: &str, e: &reqwest::Error) -> String {
    // After a redirect the failing request is another URL, as in Go's message.
    let url = e.url().map_or_else(|| url.to_owned(), |u| go_url(u, url));
    if e.is_timeout() {
        return format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        );
    }
    if e.is_redirect() {
        return format!("Get {url:?}: stopped after {MAX_REDIRECTS} redirects");
    }
    if e.is_connect() {
        let addr = e
            .url()
            .and_then(|u| {
                Some(join_host_port(
                    u.host_str()?.trim_matches(['[', ']']),
                    u.port_or_known_default()?,
                ))
            })
            .unwrap_or_default();
        if let Some(io) = io_source(e) {
            return format!("Get {url:?}: dial tcp {addr}: connect: {}", go_errno(io));
        }
    }
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    format!("Get {url:?}: {reason}")
}

/// `u` as printed in messages: the original spelling when it is the URL we built
/// (the parsed form adds a `/` to an empty path).
fn go_url(u: &reqwest::Url, original: &str) -> String {
    match reqwest::Url::parse(original) {
        Ok(parsed) if &parsed == u => original.to_owned(),
        _ => u.to_string(),
    }
}

/// The OS error under a connect error, if any.
fn io_source(e: &reqwest::Error) -> Option<&std::io::Error> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::Path;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPHeader};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Serves `router` on 127.0.0.1; returns the port.
    async fn serve(router: Router) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        port
    }

    fn action(port: u16, path: &str) -> HTTPGetAction {
        HTTPGetAction {
            port: IntOrString::Int(i32::from(port)),
            path: Some(path.to_owned()),
            ..Default::default()
        }
    }

    async fn run(action: &HTTPGetAction) -> ProbeOutcome {
        probe(
            action,
            &Container::default(),
            LOCALHOST,
            Duration::from_secs(1),
        )
        .await
    }

    fn redirect(to: String) -> impl IntoResponse {
        (StatusCode::FOUND, [(header::LOCATION, to)], "moved")
    }

    #[tokio::test]
    async fn status_codes_decide() {
        let port = serve(
            Router::new()
                .route("/ok", get(|| async { "healthy" }))
                .route("/created", get(|| async { (StatusCode::CREATED, "") }))
                .route(
                    "/fail",
                    get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
                )
                .route("/nope", get(|| async { StatusCode::NOT_FOUND })),
        )
        .await;
        assert_eq!(
            run(&action(port, "/ok")).await,
            ProbeOutcome::new(ProbeResult::Success, "healthy")
        );
        assert_eq!(
            run(&action(port, "/created")).await.result,
            ProbeResult::Success
        );
        assert_eq!(
            run(&action(port, "/fail")).await,
            ProbeOutcome::new(
                ProbeResult::Failure,
                "HTTP probe failed with statuscode: 500"
            )
        );
        assert_eq!(
            run(&action(port, "/nope")).await,
            ProbeOutcome::new(
                ProbeResult::Failure,
                "HTTP probe failed with statuscode: 404"
            )
        );
    }

    #[tokio::test]
    async fn redirects_followed_to_the_same_host_only() {
        let port_cell = Arc::new(Mutex::new(0u16));
        let p = port_cell.clone();
        let p2 = port_cell.clone();
        let port = serve(
            Router::new()
                .route("/ok", get(|| async { "landed" }))
                .route(
                    "/same",
                    get(move || {
                        let port = *p.lock().expect("lock");
                        async move { redirect(format!("http://127.0.0.1:{port}/ok")) }
                    }),
                )
                .route(
                    "/other",
                    get(move || {
                        // Another host name for the same server: upstream stops there.
                        let port = *p2.lock().expect("lock");
                        async move { redirect(format!("http://localhost:{port}/ok")) }
                    }),
                )
                .route(
                    "/loop/{n}",
                    get(|Path(n): Path<u32>| async move { redirect(format!("/loop/{}", n + 1)) }),
                ),
        )
        .await;
        *port_cell.lock().expect("lock") = port;
        assert_eq!(
            run(&action(port, "/same")).await,
            ProbeOutcome::new(ProbeResult::Success, "landed")
        );
        assert_eq!(
            run(&action(port, "/other")).await,
            ProbeOutcome::new(
                ProbeResult::Success,
                "Probe terminated redirects, Response body: moved"
            )
        );
        assert_eq!(
            run(&action(port, "/loop/0")).await,
            ProbeOutcome::new(
                ProbeResult::Failure,
                format!("Get \"http://127.0.0.1:{port}/loop/9\": stopped after 10 redirects")
            )
        );
    }

    #[tokio::test]
    async fn headers_user_agent_and_host() {
        let seen: Arc<Mutex<Vec<AxumHeaders>>> = Arc::default();
        let s = seen.clone();
        let port = serve(Router::new().route(
            "/h",
            get(move |h: AxumHeaders| {
                s.lock().expect("lock").push(h);
                async { "" }
            }),
        ))
        .await;
        let mut a = action(port, "/h");
        assert_eq!(run(&a).await.result, ProbeResult::Success);
        a.http_headers = Some(vec![
            HTTPHeader {
                name: "X-Custom".into(),
                value: "1".into(),
            },
            HTTPHeader {
                name: "X-Custom".into(),
                value: "2".into(),
            },
            HTTPHeader {
                name: "Host".into(),
                value: "example.test".into(),
            },
            HTTPHeader {
                name: "Accept".into(),
                value: String::new(),
            },
            HTTPHeader {
                name: "User-Agent".into(),
                value: "mine".into(),
            },
        ]);
        assert_eq!(run(&a).await.result, ProbeResult::Success);
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0]["user-agent"], "kube-probe/1.34");
        assert_eq!(seen[0]["accept"], "*/*");
        assert_eq!(seen[0]["host"], format!("127.0.0.1:{port}"));
        let custom: Vec<_> = seen[1].get_all("x-custom").iter().collect();
        assert_eq!(custom, ["1", "2"]);
        assert_eq!(seen[1]["host"], "example.test");
        assert_eq!(seen[1]["user-agent"], "mine");
        assert_eq!(seen[1]["accept"], "");
    }

    #[tokio::test]
    async fn named_port_and_unknown_name() {
        let port = serve(Router::new().route("/", get(|| async { "root" }))).await;
        let container = Container {
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: i32::from(port),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let mut a = HTTPGetAction {
            port: IntOrString::String("http".into()),
            ..Default::default()
        };
        let out = probe(&a, &container, LOCALHOST, Duration::from_secs(1)).await;
        assert_eq!(out, ProbeOutcome::new(ProbeResult::Success, "root"));
        a.port = IntOrString::String("metrics".into());
        let out = probe(&a, &container, LOCALHOST, Duration::from_secs(1)).await;
        assert_eq!(
            out,
            ProbeOutcome::new(ProbeResult::Unknown, r#"port "metrics" not found"#)
        );
    }

    #[tokio::test]
    async fn refused_slow_and_large() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        assert_eq!(
            run(&action(closed, "/healthz")).await,
            ProbeOutcome::new(
                ProbeResult::Failure,
                format!(
                    "Get \"http://127.0.0.1:{closed}/healthz\": dial tcp 127.0.0.1:{closed}: connect: connection refused"
                )
            )
        );
        let port = serve(
            Router::new()
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        "late"
                    }),
                )
                .route("/big", get(|| async { "y".repeat(100_000) })),
        )
        .await;
        let start = std::time::Instant::now();
        assert_eq!(
            run(&action(port, "/slow")).await,
            ProbeOutcome::new(
                ProbeResult::Failure,
                format!(
                    "Get \"http://127.0.0.1:{port}/slow\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )
            )
        );
        assert!(start.elapsed() < Duration::from_secs(3));
        let out = run(&action(port, "/big")).await;
        assert_eq!(out.result, ProbeResult::Success);
        assert_eq!(out.message.len(), MAX_BODY);
    }

    /// `openssl s_server` on 127.0.0.1 with a self-signed certificate, killed (by its
    /// PID) on drop.
    struct TlsServer(std::process::Child);

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn https_does_not_verify_the_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=nodelet-probe-test", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success());
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let _server = TlsServer(
            std::process::Command::new("openssl")
                .args(["s_server", "-www", "-quiet", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start openssl s_server"),
        );
        let start = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(start.elapsed() < Duration::from_secs(10), "s_server up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut a = action(port, "/");
        a.scheme = Some("HTTPS".into());
        let out = run(&a).await;
        assert_eq!(out.result, ProbeResult::Success, "{}", out.message);
    }

    #[test]
    fn urls_as_upstream_formats_them() {
        assert_eq!(
            format_url("http", "10.0.0.5:80", Some("/healthz")),
            "http://10.0.0.5:80/healthz"
        );
        assert_eq!(
            format_url("http", "10.0.0.5:80", Some("healthz")),
            "http://10.0.0.5:80/healthz"
        );
        assert_eq!(format_url("https", "[::1]:443", None), "https://[::1]:443");
        assert_eq!(
            format_url("http", "h:1", Some("/a?b=c")),
            "http://h:1/a?b=c"
        );
    }
}
