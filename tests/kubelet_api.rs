//! End-to-end against the real apiserver tier (issue 13): the kubelet API's secure
//! port. A client certificate signed by the cluster CA gets `/pods`; no credential,
//! or a token the apiserver's `TokenReview` rejects, gets 401; a user the
//! `SubjectAccessReview` denies gets upstream's 403; the apiserver's node proxy
//! (`kubectl get --raw /api/v1/nodes/<node>/proxy/...`) reaches the agent with its
//! kubelet-client certificate; `/metrics` and `/metrics/resource` parse as Prometheus
//! text (metrics-server's series with values for a running pod); plain HTTP to the
//! TLS port gets Go's 400. Needs `NODELET_TEST_KUBECONFIG` and the test containerd.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use support::cluster::{admin_client, admin_kubeconfig, joined_world, kubectl, wait_ready};
use support::{BUSYBOX, phase, wait_for};

fn run_dir(kubeconfig: &Path) -> &Path {
    kubeconfig.parent().expect("the run dir")
}

/// An HTTPS client that skips the serving certificate check (self-signed), with an
/// optional client identity (PEM cert + key).
fn client(identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut b = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30));
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).expect("cert");
        pem.extend(std::fs::read(key).expect("key"));
        b = b.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    b.build().expect("client")
}

/// A client certificate for `cn` (no groups) signed by the cluster CA.
fn user_cert(run: &Path, dir: &Path, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join(format!("{cn}.key"));
    let csr = dir.join(format!("{cn}.csr"));
    let crt = dir.join(format!("{cn}.crt"));
    let ok = |c: &mut Command| {
        let out = c.output().expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args(["-subj", &format!("/CN={cn}")]));
    let ext = dir.join("client.ext");
    std::fs::write(&ext, "extendedKeyUsage=clientAuth\n").expect("ext");
    ok(Command::new("openssl")
        .args(["x509", "-req", "-days", "1"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(run.join("pki/ca.crt"))
        .arg("-CAkey")
        .arg(run.join("pki/ca.key"))
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&crt));
    (crt, key)
}

/// The address of the default route's interface (what the agent would pick).
fn host_ip() -> String {
    let out = Command::new("ip")
        .args(["-4", "route", "get", "1.1.1.1"])
        .output()
        .expect("ip route get");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "src")
        .and_then(|_| words.next())
        .expect("a source address for the default route")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn secure_port_authn_authz_proxy_and_metrics() {
    let kubeconfig = admin_kubeconfig();
    let run = run_dir(&kubeconfig).to_owned();
    let ca = run.join("pki/ca.crt");
    let (_cleanup, mut w) = joined_world(
        &kubeconfig,
        &[
            "--client-ca-file",
            ca.to_str().expect("utf-8"),
            "--authentication-token-webhook",
            "--authorization-mode",
            "Webhook",
        ],
    )
    .await;
    // The apiserver proxies to no loopback address: the node advertises the host's
    // address, and the ports listen on every address for the test's duration.
    w.node_ip = host_ip();
    w.address = "0.0.0.0".into();
    w.write_manifest(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sh, -c, 'while true; do echo x >/dev/null; sleep 0.2; done']\n"
        ),
    );
    w.start_agent().await;
    let admin = admin_client(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(admin.clone());
    let node = wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    assert_eq!(
        node.status
            .and_then(|s| s.daemon_endpoints)
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port),
        Some(i32::from(w.secure_port))
    );
    w.wait_pod("web", "Running", |p| phase(p) == "Running")
        .await;
    let base = format!("https://127.0.0.1:{}", w.secure_port);

    // A client certificate signed by the CA (the admin's, O=system:masters).
    let admin_http = client(Some((
        &run.join("pki/admin.crt"),
        &run.join("pki/admin.key"),
    )));
    let resp = admin_http
        .get(format!("{base}/pods"))
        .send()
        .await
        .expect("GET /pods");
    assert_eq!(resp.status(), 200);
    let pods: k8s_openapi::List<Pod> = resp.json().await.expect("a PodList");
    assert!(
        pods.items
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(&format!("web-{}", w.node))),
        "{:?}",
        pods.items
            .iter()
            .map(|p| &p.metadata.name)
            .collect::<Vec<_>>()
    );
    let running = admin_http
        .get(format!("{base}/runningpods/"))
        .send()
        .await
        .expect("runningpods");
    assert_eq!(running.status(), 200);
    assert!(running.text().await.expect("body").contains("\"main\""));
    let healthz = admin_http
        .get(format!("{base}/healthz/syncloop"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(healthz.text().await.expect("body"), "ok");
    let configz: serde_json::Value = admin_http
        .get(format!("{base}/configz"))
        .send()
        .await
        .expect("configz")
        .json()
        .await
        .expect("json");
    assert_eq!(configz["kubeletconfig"]["authorization"]["mode"], "Webhook");

    // No credential: 401, upstream's body.
    let anon = client(None);
    let resp = anon
        .get(format!("{base}/pods"))
        .send()
        .await
        .expect("anonymous");
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.text().await.expect("body"), "Unauthorized");
    // A token the apiserver's TokenReview rejects: 401.
    let resp = anon
        .get(format!("{base}/pods"))
        .bearer_auth("not-a-real-token")
        .send()
        .await
        .expect("bad token");
    assert_eq!(resp.status(), 401);

    // A valid service account token with no RBAC grant: authenticated, then denied.
    let sa = format!("kapi-{}", w.id);
    let out = kubectl(
        &kubeconfig,
        &["-n", "default", "create", "serviceaccount", &sa],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubectl(&kubeconfig, &["-n", "default", "create", "token", &sa]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let resp = anon
        .get(format!("{base}/pods"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sa token");
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.text().await.expect("body"),
        format!(
            "Forbidden (user=system:serviceaccount:default:{sa}, verb=get, resource=nodes, subresource(s)=[pods proxy])\n"
        )
    );
    let _ = kubectl(
        &kubeconfig,
        &[
            "-n",
            "default",
            "delete",
            "serviceaccount",
            &sa,
            "--wait=false",
        ],
    );
    // A client certificate for a user without grants: 403 on stats.
    let (crt, key) = user_cert(&run, w.dir.path(), "alice");
    let alice = client(Some((&crt, &key)));
    let resp = alice
        .get(format!("{base}/stats/summary"))
        .send()
        .await
        .expect("alice");
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.text().await.expect("body"),
        "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[stats])\n"
    );

    // The apiserver's node proxy, with its kubelet-client certificate.
    let out = kubectl(
        &kubeconfig,
        &[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{}/proxy/pods", w.node),
        ],
    );
    assert!(
        out.status.success(),
        "proxy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: k8s_openapi::List<Pod> = serde_json::from_slice(&out.stdout).expect("a PodList");
    assert!(!list.items.is_empty());

    // /metrics through the proxy, parsed as Prometheus text.
    let out = kubectl(
        &kubeconfig,
        &[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{}/proxy/metrics", w.node),
        ],
    );
    assert!(
        out.status.success(),
        "proxy metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert!(
        value("kubelet_running_pods").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "kubelet_running_containers"
                && s.labels.get("container_state") == Some("running")),
        "{text}"
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("kubelet_pod_start_duration_seconds")),
        "{text}"
    );
    for op in ["run_podsandbox", "create_container", "start_container"] {
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "kubelet_runtime_operations_total"
                    && s.labels.get("operation_type") == Some(op)),
            "{op}: {text}"
        );
    }
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric.starts_with("kubelet_pod_worker_duration_seconds")),
        "{text}"
    );

    // /metrics/resource as metrics-server reads it: CPU and memory per container of
    // the running pod, with values and timestamps.
    let pod_name = format!("web-{}", w.node);
    let resource = wait_for(
        "container series in /metrics/resource",
        Duration::from_secs(60),
        || {
            let (http, url, pod_name) = (
                admin_http.clone(),
                format!("{base}/metrics/resource"),
                pod_name.clone(),
            );
            async move {
                let text = http.get(url).send().await.ok()?.text().await.ok()?;
                let scrape =
                    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
                let has = |name: &str| {
                    scrape.samples.iter().any(|s| {
                        s.metric == name
                            && s.labels.get("pod") == Some(pod_name.as_str())
                            && s.labels.get("container") == Some("main")
                    })
                };
                (has("container_cpu_usage_seconds_total")
                    && has("container_memory_working_set_bytes"))
                .then_some(scrape)
            }
        },
    )
    .await;
    for s in &resource.samples {
        if s.labels.get("pod") == Some(pod_name.as_str())
            && s.metric == "container_memory_working_set_bytes"
        {
            assert!(
                matches!(s.value, prometheus_parse::Value::Gauge(v) if v > 0.0),
                "{s:?}"
            );
        }
    }
    assert!(
        resource
            .samples
            .iter()
            .any(|s| s.metric == "node_cpu_usage_seconds_total")
    );
    assert!(
        resource
            .samples
            .iter()
            .any(|s| s.metric == "node_memory_working_set_bytes")
    );
    assert!(
        resource
            .samples
            .iter()
            .any(|s| s.metric == "resource_scrape_error")
    );
    let cadvisor = admin_http
        .get(format!("{base}/metrics/cadvisor"))
        .send()
        .await
        .expect("cadvisor")
        .text()
        .await
        .expect("body");
    let scrape = prometheus_parse::Scrape::parse(cadvisor.lines().map(|l| Ok(l.to_owned())))
        .expect("cadvisor text");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "container_cpu_usage_seconds_total"
                && s.labels.get("container") == Some("main")
                && s.labels.get("image").is_some_and(|i| !i.is_empty()))
    );
    // The node filesystem, with the device cAdvisor names it by.
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "container_fs_usage_bytes"
                && s.labels.get("id") == Some("/")
                && s.labels.get("device").is_some_and(|d| !d.is_empty())),
        "{cadvisor}"
    );

    // Plain HTTP to the TLS port: Go's answer, the connection closed.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", w.secure_port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.write_all(b"GET /pods HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.0 400 Bad Request"), "{answer:?}");
    // Garbage inside TLS: a 400 from the HTTP parser, and the agent still serves.
    let resp = admin_http
        .get(format!("{base}/nope"))
        .send()
        .await
        .expect("404");
    assert_eq!(resp.status(), 404);
    let resp = admin_http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
    w.stop_agent();
}
