//! End-to-end on the kubelet API's secure port (issue 13), standalone with anonymous
//! access: `/metrics/probes` counts probe runs as upstream's `prober_probe_total`
//! (its six labels, `successful` and `failed`); `POST /run/{ns}/{pod}/{container}`
//! answers the command's output; `/runningpods/` lists the pod as containerd runs it;
//! a port-forward client that sends no `requestID`
//! (clients older than kubectl 1.4) gets its streams paired by stream id (error `n`,
//! data `n+2`), twice on one connection; bytes that are not HTTP inside a TLS
//! connection get a 400 and the port keeps serving; after a PID-pressure eviction,
//! `kubelet_evictions{eviction_signal="pid.available"}` counts it.
//! `--streaming-connection-idle-timeout` closes an exec connection with no frames for
//! that long, and not one whose command keeps writing. A WebSocket client
//! (tokio-tungstenite) runs exec over `v5.channel.k8s.io` (stdin closed by the v5
//! close message) and `v4.base64.channel.k8s.io` (stderr, exit code), is refused an
//! unknown subprotocol with 403, and port-forwards over `v4.channel.k8s.io`. Needs
//! the test containerd.

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{BUSYBOX, World, phase, wait_for};
use tokio::io::AsyncWriteExt as _;

#[path = "../src/server/streaming/spdy.rs"]
#[allow(dead_code)]
mod spdy;
#[path = "../src/server/streaming/spdy_dict.rs"]
#[allow(dead_code)]
mod spdy_dict;

use spdy::{FLAG_FIN, Frame, HeaderDecoder, HeaderEncoder, encode_frame, read_frame};

fn https() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .http1_only()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// The samples of `name` in a Prometheus text body, as (labels, value).
fn samples(body: &str, name: &str) -> Vec<(std::collections::HashMap<String, String>, f64)> {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("prometheus text");
    scrape
        .samples
        .into_iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (labels, v)
        })
        .collect()
}

/// A port-forward over SPDY with no `requestID` headers: for each of `rounds`, an
/// error stream and a data stream with consecutive odd ids, an HTTP/1.0 request on
/// the data stream, and the answer read to the stream's end.
async fn legacy_port_forward(url: &str, port: u16, rounds: u32) -> Vec<String> {
    let resp = https()
        .post(url)
        .header("Connection", "Upgrade")
        .header("Upgrade", "SPDY/3.1")
        .header("X-Stream-Protocol-Version", "portforward.k8s.io")
        .send()
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    let io = resp.upgrade().await.expect("upgraded");
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut enc = HeaderEncoder::new().expect("encoder");
    let mut dec = HeaderDecoder::default();
    let mut answers = Vec::new();
    for round in 0..rounds {
        let error_id = 1 + 4 * round;
        let data_id = error_id + 2;
        for (id, kind) in [(error_id, "error"), (data_id, "data")] {
            let f = Frame::SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: vec![
                    ("streamType".into(), kind.into()),
                    ("port".into(), port.to_string()),
                ],
            };
            wr.write_all(&encode_frame(&f, &mut enc).expect("encode"))
                .await
                .expect("syn");
        }
        let req = Frame::Data {
            stream_id: data_id,
            flags: 0,
            data: b"GET /index.html HTTP/1.0\r\n\r\n".to_vec(),
        };
        wr.write_all(&encode_frame(&req, &mut enc).expect("encode"))
            .await
            .expect("data");
        let mut body = Vec::new();
        let read = async {
            while let Ok(Some(f)) = read_frame(&mut rd, &mut dec).await {
                match f {
                    Frame::Data {
                        stream_id,
                        data,
                        flags,
                    } if stream_id == data_id => {
                        body.extend(data);
                        if flags & FLAG_FIN != 0 {
                            break;
                        }
                    }
                    Frame::Data {
                        stream_id, data, ..
                    } if stream_id == error_id && !data.is_empty() => {
                        panic!(
                            "port-forward error stream: {}",
                            String::from_utf8_lossy(&data)
                        );
                    }
                    Frame::RstStream { stream_id, status } if stream_id == data_id => {
                        panic!("data stream {stream_id} reset ({status})")
                    }
                    Frame::GoAway { .. } => break,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the forwarded answer in time");
        answers.push(String::from_utf8_lossy(&body).into_owned());
    }
    answers
}

/// Sends `bytes` inside a TLS connection to the port and returns what came back.
fn tls_raw(port: u16, bytes: &[u8]) -> String {
    let mut child = Command::new("timeout")
        .args([
            "20",
            "openssl",
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(bytes).expect("write");
    // s_client -quiet keeps reading after stdin's end; the server's close ends it.
    let out = child.wait_with_output().expect("s_client output");
    drop(stdin);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kernel.pid_max` and the machine's tasks (`/proc/loadavg`'s total), what the
/// agent's `pid.available` is made of.
fn pid_counts() -> (u64, u64) {
    let max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .expect("pid_max")
        .trim()
        .parse()
        .expect("number");
    let loadavg = std::fs::read_to_string("/proc/loadavg").expect("loadavg");
    let tasks = loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split('/').nth(1)?.parse().ok())
        .expect("tasks");
    (max, tasks)
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_metrics_run_legacy_port_forward_malformed_tls_and_evictions() {
    let mut w = World::new().await;
    w.extra_args = vec!["--anonymous-auth".into()];
    w.write_manifest(
        "web.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, 'mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www']
    readinessProbe:
      exec: {{command: ['true']}}
      periodSeconds: 1
  - name: sad
    image: {BUSYBOX}
    command: [sleep, '3600']
    readinessProbe:
      exec: {{command: ['false']}}
      periodSeconds: 1
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("web", "Running", |p| phase(p) == "Running")
        .await;
    let name = pod.metadata.name.clone().expect("name");
    let uid = pod.metadata.uid.clone().expect("uid");
    let base = format!("https://127.0.0.1:{}", w.secure_port);
    let http = https();

    // prober_probe_total with upstream's labels, both results.
    let counts = wait_for("probe counts", Duration::from_secs(30), || async {
        let body = http
            .get(format!("{base}/metrics/probes"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let s = samples(&body, "prober_probe_total");
        let find = |container: &str, result: &str| {
            s.iter()
                .find(|(l, _)| {
                    l.get("container").map(String::as_str) == Some(container)
                        && l.get("result").map(String::as_str) == Some(result)
                })
                .cloned()
        };
        let ok = find("main", "successful").filter(|(_, v)| *v >= 2.0)?;
        let bad = find("sad", "failed").filter(|(_, v)| *v >= 2.0)?;
        Some((ok, bad))
    })
    .await;
    for (labels, _) in [&counts.0, &counts.1] {
        let mut keys: Vec<&str> = labels.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "container",
                "namespace",
                "pod",
                "pod_uid",
                "probe_type",
                "result"
            ]
        );
        assert_eq!(labels["probe_type"], "Readiness");
        assert_eq!(labels["pod"], name);
        assert_eq!(labels["namespace"], "default");
        assert_eq!(labels["pod_uid"], uid);
    }

    // /runningpods/: the pod as the runtime lists it.
    let running: serde_json::Value = http
        .get(format!("{base}/runningpods/"))
        .send()
        .await
        .expect("runningpods")
        .json()
        .await
        .expect("json");
    let item = running["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["metadata"]["uid"] == uid.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("{running}"));
    assert_eq!(item["metadata"]["name"], name.as_str());
    assert_eq!(item["metadata"]["namespace"], "default");
    let mut containers: Vec<(String, String)> = item["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["image"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    containers.sort();
    assert_eq!(
        containers,
        [
            ("main".to_owned(), BUSYBOX.to_owned()),
            ("sad".to_owned(), BUSYBOX.to_owned())
        ]
    );

    // /run: the command's output.
    let run = http
        .post(format!(
            "{base}/run/default/{name}/main?cmd=echo%20hello%20from%20run"
        ))
        .send()
        .await
        .expect("run");
    assert_eq!(run.status(), 200);
    assert_eq!(run.text().await.expect("body"), "hello from run\n");
    let missing = http
        .post(format!("{base}/run/default/{name}/nope?cmd=true"))
        .send()
        .await
        .expect("run");
    assert_eq!(missing.status(), 404);

    // Port-forward without requestID headers, two pairs on one connection.
    let answers = legacy_port_forward(&format!("{base}/portForward/default/{name}"), 8080, 2).await;
    for a in &answers {
        assert!(a.contains("hello-from-pod"), "{answers:?}");
    }

    // Not HTTP inside TLS: a 400, and the port keeps serving.
    let answer = tls_raw(w.secure_port, b"\x01\x02 NOT HTTP AT ALL\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer:?}");
    let ok = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz after the bad request");
    assert_eq!(ok.status(), 200);

    // An eviction: a pid.available threshold 400 tasks below what the machine
    // runs now, crossed once the hog's 800 sleeps run (a restart with the threshold,
    // so the hog is admitted before it forks).
    w.stop_agent();
    std::fs::remove_file(w.manifests.join("web.yaml")).expect("remove web.yaml");
    let (pid_max, tasks) = pid_counts();
    w.extra_args = vec![
        "--anonymous-auth".into(),
        format!("--eviction-hard=pid.available<{}", pid_max - tasks - 400),
        "--evict-static-pods=true".into(),
    ];
    w.start_agent().await;
    w.write_manifest(
        "hog.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: hog
    image: {BUSYBOX}
    command: [sh, -c, 'i=0; while [ $i -lt 800 ]; do sleep 3600 & i=$((i+1)); done; wait']
"#
        ),
    );
    let evicted = wait_for("kubelet_evictions", Duration::from_secs(90), || async {
        let body = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        samples(&body, "kubelet_evictions")
            .into_iter()
            .find(|(l, v)| {
                l.get("eviction_signal").map(String::as_str) == Some("pid.available") && *v >= 1.0
            })
    })
    .await;
    assert_eq!(evicted.0.len(), 1, "{:?}", evicted.0);
    let pod = w.wait_pod("hog", "evicted", |p| phase(p) == "Failed").await;
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("Evicted")
    );
}

/// Runs `cmd` by SPDY exec (v4, stdout), reading until the connection ends or
/// `limit` passes; returns the stdout bytes, whether it ended, and when.
async fn exec_until_end(url: &str, limit: Duration) -> (Vec<u8>, bool, Duration) {
    let resp = https()
        .post(url)
        .header("Connection", "Upgrade")
        .header("Upgrade", "SPDY/3.1")
        .header("X-Stream-Protocol-Version", "v4.channel.k8s.io")
        .send()
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    let io = resp.upgrade().await.expect("upgraded");
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut enc = HeaderEncoder::new().expect("encoder");
    for (id, kind) in [(1u32, "error"), (3, "stdout")] {
        let f = Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamType".into(), kind.into())],
        };
        wr.write_all(&encode_frame(&f, &mut enc).expect("encode"))
            .await
            .expect("syn");
    }
    let start = std::time::Instant::now();
    let mut dec = HeaderDecoder::default();
    let mut out = Vec::new();
    let read = async {
        loop {
            match read_frame(&mut rd, &mut dec).await {
                Ok(Some(Frame::Data {
                    stream_id: 3, data, ..
                })) => out.extend(data),
                Ok(Some(Frame::GoAway { .. }) | None) | Err(_) => return,
                Ok(Some(_)) => {}
            }
        }
    };
    let ended = tokio::time::timeout(limit, read).await.is_ok();
    (out, ended, start.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_streaming_connection_is_closed_after_the_idle_timeout() {
    let mut w = World::new().await;
    w.extra_args = vec![
        "--anonymous-auth".into(),
        "--streaming-connection-idle-timeout=3s".into(),
    ];
    w.write_manifest(
        "box.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: box}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("box", "Running", |p| phase(p) == "Running")
        .await;
    let name = pod.metadata.name.clone().expect("name");
    let base = format!(
        "https://127.0.0.1:{}/exec/default/{name}/main",
        w.secure_port
    );
    // Silent for 30 s: closed after about 3 s.
    let (_, ended, after) = exec_until_end(
        &format!("{base}?command=sleep&command=30&output=1"),
        Duration::from_secs(20),
    )
    .await;
    assert!(ended, "the idle connection was not closed");
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_secs(15),
        "closed after {after:?}"
    );
    // Output every half second keeps the connection busy past the timeout.
    let (out, ended, after) = exec_until_end(
        &format!(
            "{base}?command=sh&command=-c&command=for%20i%20in%201%202%203%204%205%206%207%208%203%204%205%206%207%208%3B%20do%20echo%20$i%3B%20sleep%200.5%3B%20done&output=1"
        ),
        Duration::from_secs(30),
    )
    .await;
    assert!(ended, "the busy exec did not finish");
    assert!(after >= Duration::from_secs(6), "ended after {after:?}");
    assert_eq!(String::from_utf8_lossy(&out).lines().count(), 14, "{out:?}");
}

mod ws {
    //! A WebSocket client over reqwest's upgrade: the handshake by hand (the accept
    //! key as RFC 6455 computes it), the frames by tokio-tungstenite.

    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    pub type Ws = tokio_tungstenite::WebSocketStream<reqwest::Upgraded>;

    fn derive_accept_key(key: &[u8]) -> String {
        use base64::Engine as _;
        use sha1::Digest as _;
        let mut sha = sha1::Sha1::new();
        sha.update(key);
        sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        base64::engine::general_purpose::STANDARD.encode(sha.finalize())
    }

    /// Opens a WebSocket offering `protocol`; the HTTP status when not upgraded.
    pub async fn open(url: &str, protocol: &str) -> Result<Ws, u16> {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let resp = super::https()
            .get(url)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", key)
            .header("Sec-WebSocket-Protocol", protocol)
            .send()
            .await
            .expect("request");
        if resp.status() != 101 {
            return Err(resp.status().as_u16());
        }
        let h = resp.headers();
        assert_eq!(
            h.get("sec-websocket-accept").and_then(|v| v.to_str().ok()),
            Some(derive_accept_key(key.as_bytes()).as_str())
        );
        assert_eq!(
            h.get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol)
        );
        let io = resp.upgrade().await.expect("upgraded");
        Ok(Ws::from_raw_socket(io, Role::Client, None).await)
    }

    pub async fn send(ws: &mut Ws, channel: u8, data: &[u8]) {
        let mut m = vec![channel];
        m.extend_from_slice(data);
        ws.send(Message::Binary(m.into())).await.expect("send");
    }

    /// Every message until the close, as (channel, data), base64 text decoded.
    pub async fn read_all(ws: &mut Ws) -> Vec<(u8, Vec<u8>)> {
        use base64::Engine as _;
        let mut out = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) => {
                    if let Some((ch, rest)) = b.split_first() {
                        out.push((*ch, rest.to_vec()));
                    }
                }
                Message::Text(t) => {
                    let t = t.as_str();
                    let ch = t.as_bytes().first().copied().unwrap_or(b'?') - b'0';
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(&t[1..])
                        .expect("base64");
                    out.push((ch, data));
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        out
    }

    /// Reads binary messages until one on `channel` contains `needle`.
    pub async fn read_until(ws: &mut Ws, channel: u8, needle: &str) -> Vec<(u8, Vec<u8>)> {
        let mut seen = Vec::new();
        let mut text = String::new();
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m
                && let Some((ch, rest)) = b.split_first()
            {
                seen.push((*ch, rest.to_vec()));
                if *ch == channel {
                    text.push_str(&String::from_utf8_lossy(rest));
                    if text.contains(needle) {
                        break;
                    }
                }
            }
        }
        seen
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_port_forward_over_websockets() {
    let mut w = World::new().await;
    w.extra_args = vec!["--anonymous-auth".into()];
    w.write_manifest(
        "web.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, 'mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www']
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("web", "Running", |p| phase(p) == "Running")
        .await;
    let name = pod.metadata.name.clone().expect("name");
    let base = format!("https://127.0.0.1:{}", w.secure_port);
    let exec = |q: &str| format!("{base}/exec/default/{name}/main?{q}");

    // v5: stdin in, the client closes stdin, stdout back, a Success status.
    let mut s = ws::open(&exec("command=cat&input=1&output=1"), "v5.channel.k8s.io")
        .await
        .expect("upgrade");
    ws::send(&mut s, 0, b"hello over websocket\n").await;
    ws::send(&mut s, 255, &[0]).await;
    let got = tokio::time::timeout(Duration::from_secs(30), ws::read_all(&mut s))
        .await
        .expect("the exec ends");
    assert_eq!(got.first(), Some(&(1, Vec::new())), "the opening message");
    let stdout: Vec<u8> = got
        .iter()
        .filter(|(c, _)| *c == 1)
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert_eq!(String::from_utf8_lossy(&stdout), "hello over websocket\n");
    let status: serde_json::Value = got
        .iter()
        .find(|(c, d)| *c == 3 && !d.is_empty())
        .map(|(_, d)| serde_json::from_slice(d).expect("status json"))
        .expect("a status");
    assert_eq!(status["status"], "Success");

    // v4 base64: stderr and the exit code.
    let mut s = ws::open(
        &exec("command=sh&command=-c&command=echo%20oops%20%3E%262%3B%20exit%203&output=1&error=1"),
        "v4.base64.channel.k8s.io",
    )
    .await
    .expect("upgrade");
    let got = tokio::time::timeout(Duration::from_secs(30), ws::read_all(&mut s))
        .await
        .expect("the exec ends");
    let stderr: Vec<u8> = got
        .iter()
        .filter(|(c, _)| *c == 2)
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert_eq!(String::from_utf8_lossy(&stderr), "oops\n");
    let status: serde_json::Value = got
        .iter()
        .find(|(c, d)| *c == 3 && !d.is_empty())
        .map(|(_, d)| serde_json::from_slice(d).expect("status json"))
        .expect("a status");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    // A subprotocol we don't speak: 403.
    assert_eq!(
        ws::open(&exec("command=true&output=1"), "v9.channel.k8s.io")
            .await
            .map(|_| ())
            .expect_err("refused"),
        403
    );

    // Port-forward: the port announced on both channels, then the page.
    let mut s = ws::open(
        &format!("{base}/portForward/default/{name}?port=8080"),
        "v4.channel.k8s.io",
    )
    .await
    .expect("upgrade");
    ws::send(&mut s, 0, b"GET /index.html HTTP/1.0\r\n\r\n").await;
    let got = tokio::time::timeout(
        Duration::from_secs(30),
        ws::read_until(&mut s, 0, "hello-from-pod"),
    )
    .await
    .expect("the page in time");
    let port = 8080u16.to_le_bytes().to_vec();
    assert_eq!(got.first(), Some(&(0, port.clone())), "{got:?}");
    assert!(got.contains(&(1, port)), "{got:?}");
}
