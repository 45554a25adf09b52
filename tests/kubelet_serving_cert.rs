//! End-to-end against the real apiserver tier (issue 13, `serverTLSBootstrap`): with
//! `serverTLSBootstrap: true` in the config file the agent files a
//! `kubernetes.io/kubelet-serving` CSR (`O=system:nodes, CN=system:node:<node>`, the
//! node's hostname and IP as SANs, `digital signature` and `server auth`), serves no
//! certificate until it is approved (handshakes fail), and once an operator approves
//! it with `kubectl certificate approve` and the controller-manager signs it with the
//! cluster CA, stores `<root-dir>/pki/kubelet-server-current.pem` and serves it: a
//! client verifying against the cluster CA for the node's name gets `/healthz`. With
//! `--rotate-server-certificates` and a stored certificate near its end, the agent
//! serves that one, files a renewal CSR, and after approval serves the new
//! certificate without a restart. Needs `NODELET_TEST_KUBECONFIG` and the test
//! containerd.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use support::cluster::{
    admin_client, admin_kubeconfig, joined_world, kubectl, node_cert_pem, wait_ready,
};
use support::wait_for;
use x509_parser::prelude::FromDer as _;

const SIGNER: &str = "kubernetes.io/kubelet-serving";

fn run_dir(kubeconfig: &Path) -> PathBuf {
    kubeconfig.parent().expect("the run dir").to_owned()
}

/// Deletes the CSRs the test's node filed.
struct CsrCleanup {
    kubeconfig: PathBuf,
    names: std::sync::Mutex<Vec<String>>,
}

impl Drop for CsrCleanup {
    fn drop(&mut self) {
        for n in self.names.lock().map(|n| n.clone()).unwrap_or_default() {
            let _ = kubectl(
                &self.kubeconfig,
                &["delete", "csr", &n, "--ignore-not-found", "--wait=false"],
            );
        }
    }
}

/// The serving CSRs `node` filed, oldest first.
async fn serving_csrs(
    api: &Api<CertificateSigningRequest>,
    node: &str,
    cleanup: &CsrCleanup,
) -> Vec<CertificateSigningRequest> {
    let user = format!("system:node:{node}");
    let mut found: Vec<_> = api
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.spec.username.as_deref() == Some(&user) && c.spec.signer_name == SIGNER)
        .collect();
    found.sort_by_key(|c| c.metadata.creation_timestamp.clone().map(|t| t.0));
    if let Ok(mut names) = cleanup.names.lock() {
        for c in &found {
            if let Some(n) = &c.metadata.name
                && !names.contains(n)
            {
                names.push(n.clone());
            }
        }
    }
    found
}

/// The request's subject and its SANs as x509-parser prints them.
fn request_subject_and_sans(csr: &CertificateSigningRequest) -> (String, Vec<String>) {
    let text = String::from_utf8(csr.spec.request.0.clone()).expect("PEM");
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .expect("PKCS#10");
    let sans = req
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|e| match e {
            x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => Some(
                s.general_names
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    (req.certification_request_info.subject.to_string(), sans)
}

/// The serial of the certificate the secure port presents (`openssl s_client`), or
/// `None` when the handshake fails.
fn served_serial(port: u16, name: &str) -> Option<String> {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            name,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut pem = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().expect("stdout"), &mut pem).expect("read");
    let _ = child.wait();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(c.stdin.as_mut().expect("stdin"), &pem)?;
            c.wait_with_output()
        })
        .expect("openssl x509");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn file_serial(file: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(file)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An HTTPS client that verifies the kubelet against the cluster CA for the node's
/// name (resolved to loopback), presenting the admin's certificate.
fn verifying_client(run: &Path, node: &str, port: u16) -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(run.join("pki/ca.crt")).expect("ca"))
        .expect("ca pem");
    let mut id = std::fs::read(run.join("pki/admin.crt")).expect("admin.crt");
    id.extend(std::fs::read(run.join("pki/admin.key")).expect("admin.key"));
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&id).expect("identity"))
        .resolve(node, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

fn approve(kubeconfig: &Path, name: &str) {
    let out = kubectl(kubeconfig, &["certificate", "approve", name]);
    assert!(
        out.status.success(),
        "kubectl certificate approve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn issued(c: &CertificateSigningRequest) -> bool {
    c.status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty())
}

#[tokio::test(flavor = "multi_thread")]
async fn server_tls_bootstrap_serves_the_approved_kubelet_serving_certificate() {
    let kubeconfig = admin_kubeconfig();
    let run = run_dir(&kubeconfig);
    let ca = run.join("pki/ca.crt");
    let (_node_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let config = w.dir.path().join("kubelet-config.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nserverTLSBootstrap: true\nauthentication:\n  x509: {{clientCAFile: '{}'}}\n",
            ca.display()
        ),
    )
    .expect("config");
    w.extra_args
        .extend(["--config".to_owned(), config.display().to_string()]);
    let cleanup = CsrCleanup {
        kubeconfig: kubeconfig.clone(),
        names: std::sync::Mutex::new(Vec::new()),
    };
    w.start_agent().await;
    let admin = admin_client(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(admin.clone());
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    assert!(
        !log.contains("serverTLSBootstrap"),
        "the field is reported unsupported: {log}"
    );

    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let csr = wait_for("the serving CSR", Duration::from_secs(30), || async {
        serving_csrs(&csrs, &w.node, &cleanup)
            .await
            .into_iter()
            .next()
    })
    .await;
    let name = csr.metadata.name.clone().expect("name");
    assert!(name.starts_with("csr-"), "{name}");
    assert_eq!(
        csr.spec.usages.clone().unwrap_or_default(),
        ["digital signature", "server auth"]
    );
    let (subject, sans) = request_subject_and_sans(&csr);
    assert_eq!(
        subject,
        format!("O=system:nodes, CN=system:node:{}", w.node)
    );
    assert_eq!(
        sans,
        [
            format!("DNSName({})", w.node),
            format!(
                "IPAddress({})",
                w.node_ip
                    .split('.')
                    .map(|o| format!("{:02x}", o.parse::<u8>().expect("IPv4")))
                    .collect::<Vec<_>>()
                    .join(":")
            )
        ]
    );
    // Upstream does not auto-approve serving CSRs, and nothing is served meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pending = csrs.get(&name).await.expect("csr");
    assert!(
        pending
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_none_or(Vec::is_empty),
        "{pending:?}"
    );
    assert_eq!(served_serial(w.secure_port, &w.node), None);
    let current = w.root.join("pki/kubelet-server-current.pem");
    assert!(!current.exists());
    assert!(
        !w.root.join("pki/kubelet.crt").exists(),
        "a self-signed pair was made"
    );

    approve(&kubeconfig, &name);
    wait_for(
        "kubelet-server-current.pem",
        Duration::from_secs(30),
        || async { current.exists().then_some(()) },
    )
    .await;
    assert!(
        std::fs::symlink_metadata(&current)
            .expect("meta")
            .file_type()
            .is_symlink()
    );
    let serial = file_serial(&current);
    let served = wait_for(
        "the new certificate served",
        Duration::from_secs(10),
        || {
            let (port, node) = (w.secure_port, w.node.clone());
            async move { served_serial(port, &node) }
        },
    )
    .await;
    assert_eq!(served, serial);
    // A client that checks the node's name against the cluster CA accepts it.
    let https = verifying_client(&run, &w.node, w.secure_port);
    let resp = https
        .get(format!("https://{}:{}/healthz", w.node, w.secure_port))
        .send()
        .await
        .expect("verified TLS to the kubelet");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "ok");
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    assert!(log.contains("stored the new serving certificate"), "{log}");
    drop(w);
    drop(cleanup);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_serving_certificate_near_its_end_is_rotated_without_a_restart() {
    let kubeconfig = admin_kubeconfig();
    let run = run_dir(&kubeconfig);
    let ca = run.join("pki/ca.crt");
    let (_node_cleanup, mut w) = joined_world(
        &kubeconfig,
        &[
            "--rotate-server-certificates",
            "--client-ca-file",
            ca.to_str().expect("utf-8"),
        ],
    )
    .await;
    // 400 s of life of which 340 s have passed: the deadline (70–90 %) is at most
    // 20 s away.
    let now = SystemTime::now();
    let pki = w.root.join("pki");
    std::fs::create_dir_all(&pki).expect("pki");
    let old = pki.join("kubelet-server-2000-01-01-00-00-00.pem");
    std::fs::write(
        &old,
        node_cert_pem(
            &run,
            &w.node,
            Some(&w.node_ip),
            now - Duration::from_secs(340),
            now + Duration::from_secs(60),
        ),
    )
    .expect("write the old pair");
    let current = pki.join("kubelet-server-current.pem");
    std::os::unix::fs::symlink(&old, &current).expect("symlink");
    let cleanup = CsrCleanup {
        kubeconfig: kubeconfig.clone(),
        names: std::sync::Mutex::new(Vec::new()),
    };
    w.start_agent().await;
    let old_serial = file_serial(&old);
    assert_eq!(
        served_serial(w.secure_port, &w.node).as_deref(),
        Some(old_serial.as_str()),
        "the stored certificate is served at start"
    );
    let admin = admin_client(&kubeconfig).await;
    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let csr = wait_for("the renewal CSR", Duration::from_secs(60), || async {
        serving_csrs(&csrs, &w.node, &cleanup)
            .await
            .into_iter()
            .next()
    })
    .await;
    let name = csr.metadata.name.clone().expect("name");
    approve(&kubeconfig, &name);
    wait_for("the CSR to be issued", Duration::from_secs(30), || async {
        csrs.get(&name).await.ok().filter(issued)
    })
    .await;
    let new_serial = wait_for(
        "a new certificate behind kubelet-server-current.pem",
        Duration::from_secs(30),
        || async {
            let s = file_serial(&current);
            (s != old_serial).then_some(s)
        },
    )
    .await;
    let served = wait_for(
        "the new certificate served",
        Duration::from_secs(10),
        || {
            let (port, node, want) = (w.secure_port, w.node.clone(), new_serial.clone());
            async move { served_serial(port, &node).filter(|s| *s == want) }
        },
    )
    .await;
    assert_eq!(served, new_serial);
    // The signer's lifetime, not the old minutes.
    let check = Command::new("openssl")
        .args(["x509", "-noout", "-checkend", "86400", "-in"])
        .arg(&current)
        .status()
        .expect("openssl");
    assert!(check.success(), "the new certificate expires within a day");
    let https = verifying_client(&run, &w.node, w.secure_port);
    let resp = https
        .get(format!("https://{}:{}/healthz", w.node, w.secure_port))
        .send()
        .await
        .expect("verified TLS to the kubelet");
    assert_eq!(resp.status(), 200);
    // Upstream's TTL gauge follows the new certificate (more than a day left).
    let metrics = https
        .get(format!("https://{}:{}/metrics", w.node, w.secure_port))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    let ttl: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubelet_certificate_manager_server_ttl_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no serving TTL in {metrics}"));
    assert!(ttl > 86_400.0 && ttl.is_finite(), "ttl {ttl}");
    assert!(
        metrics.contains("kubelet_server_expiration_renew_errors 0"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    assert!(
        log.contains("serving certificate rotation deadline determined"),
        "{log}"
    );
    assert!(
        w.agent
            .as_mut()
            .expect("agent")
            .try_wait()
            .expect("wait")
            .is_none()
    );
    drop(w);
    drop(cleanup);
}
