//! End-to-end against the real kube-apiserver tier (issue 11, TLS bootstrap): the
//! agent with `--bootstrap-kubeconfig` holding a bootstrap token files a
//! `node-csr-…` CSR, keeps running its static pods while it waits, and once the CSR
//! is approved with `kubectl certificate approve` stores `kubelet-client-current.pem`,
//! writes `--kubeconfig` and registers as `system:node:<name>`; a restart reuses the
//! stored certificate. With `--rotate-certificates` and a certificate near its end,
//! the agent files a renewal CSR with that certificate (approved by the
//! controller-manager, as kubeadm's binding allows), and its one shared client
//! switches: the lease keeps being renewed after the old certificate has expired
//! and its file is gone. Needs `NODELET_TEST_KUBECONFIG` and the test containerd.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Api;
use kube::api::PostParams;
use support::cluster::{admin_client, admin_kubeconfig, kubectl, node_cert_pem};
use support::{BUSYBOX, World, phase, wait_for};

/// The apiserver URL (from the admin kubeconfig) and the CA file beside it.
fn server_and_ca(admin: &Path) -> (String, PathBuf) {
    let text = std::fs::read_to_string(admin).expect("admin kubeconfig");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let server = doc["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("server")
        .to_owned();
    let ca = admin.parent().expect("run dir").join("pki/ca.crt");
    assert!(ca.exists(), "{} missing", ca.display());
    (server, ca)
}

/// Removes the test's Node, Lease, CSRs and bootstrap token when dropped (declare
/// it before the World, which stops the agent first).
struct Cleanup {
    kubeconfig: PathBuf,
    node: String,
    csrs: std::sync::Mutex<Vec<String>>,
    token_secret: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let k = &self.kubeconfig;
        let _ = kubectl(
            k,
            &[
                "delete",
                "node",
                &self.node,
                "--ignore-not-found",
                "--wait=false",
            ],
        );
        let _ = kubectl(
            k,
            &[
                "-n",
                "kube-node-lease",
                "delete",
                "lease",
                &self.node,
                "--ignore-not-found",
                "--wait=false",
            ],
        );
        for csr in self.csrs.lock().map(|c| c.clone()).unwrap_or_default() {
            let _ = kubectl(
                k,
                &["delete", "csr", &csr, "--ignore-not-found", "--wait=false"],
            );
        }
        if let Some(secret) = &self.token_secret {
            let _ = kubectl(
                k,
                &[
                    "-n",
                    "kube-system",
                    "delete",
                    "secret",
                    secret,
                    "--ignore-not-found",
                    "--wait=false",
                ],
            );
        }
    }
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The CSRs filed by `username`.
async fn csrs_of(
    csrs: &Api<CertificateSigningRequest>,
    username: &str,
) -> Vec<CertificateSigningRequest> {
    csrs.list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.spec.username.as_deref() == Some(username))
        .collect()
}

fn approved(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Approved"))
}

/// `openssl x509 -noout <what>` of the first certificate in `file`.
fn openssl_x509(file: &Path, what: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(file)
        .args(what)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Prints how long the test has run at each phase (the machine is shared: slow
/// phases show here, not as a silent timeout).
fn phase_at(start: std::time::Instant, what: &str) {
    eprintln!("phase: {what} at {:?}", start.elapsed());
}

fn agent_log(w: &World) -> String {
    std::fs::read_to_string(w.agent_log()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_bootstrap_gets_a_client_certificate_through_an_approved_csr() {
    let admin = admin_kubeconfig();
    let t0 = std::time::Instant::now();
    let client = admin_client(&admin).await;
    let mut w = World::new().await;
    // A bootstrap token as kubeadm makes them.
    let token_id = format!("{:06x}", fastrand::u32(..0x0100_0000));
    let token_secret = "0123456789abcdef";
    let cleanup = Cleanup {
        kubeconfig: admin.clone(),
        node: w.node.clone(),
        csrs: std::sync::Mutex::new(Vec::new()),
        token_secret: Some(format!("bootstrap-token-{token_id}")),
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{token_id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "token-id": token_id, "token-secret": token_secret,
            "usage-bootstrap-authentication": "true",
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
        }
    }))
    .expect("secret");
    let (server, ca) = server_and_ca(&admin);
    let bootstrap = w.dir.path().join("bootstrap-kubelet.conf");
    std::fs::write(
        &bootstrap,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubernetes\n  cluster:\n    server: {server}\n    certificate-authority: {}\ncontexts:\n- name: tls-bootstrap-token-user@kubernetes\n  context: {{cluster: kubernetes, user: tls-bootstrap-token-user}}\ncurrent-context: tls-bootstrap-token-user@kubernetes\nusers:\n- name: tls-bootstrap-token-user\n  user: {{token: {token_id}.{token_secret}}}\n",
            ca.display()
        ),
    )
    .expect("write the bootstrap kubeconfig");
    let kubeconfig = w.dir.path().join("kubelet.conf");
    // --cert-dir left to its default, <root-dir>/pki.
    let pki = w.root.join("pki");
    // The in-agent proxy would program the host's nftables: off here.
    w.extra_args = vec![
        "--proxy-mode".into(),
        "none".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--bootstrap-kubeconfig".into(),
        bootstrap.display().to_string(),
    ];
    w.write_manifest(
        "early.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: early}}\nspec:\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ),
    );
    phase_at(t0, "world made, agent starting");
    w.start_agent().await;
    // The token does not exist yet: the apiserver refuses, the agent retries.
    wait_for(
        "a refused first request",
        Duration::from_secs(20),
        || async {
            agent_log(&w)
                .contains("unable to get a client certificate; retrying")
                .then_some(())
        },
    )
    .await;
    assert!(
        w.agent
            .as_mut()
            .expect("agent")
            .try_wait()
            .expect("wait")
            .is_none(),
        "the agent exited:\n{}",
        agent_log(&w)
    );
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the token");

    // The CSR, filed with the token: upstream's name, signer, usages and subject.
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let username = format!("system:bootstrap:{token_id}");
    phase_at(t0, "agent started, token created");
    let csr = wait_for("the bootstrap CSR", Duration::from_secs(60), || async {
        csrs_of(&csrs, &username).await.into_iter().next()
    })
    .await;
    let name = csr.metadata.name.clone().expect("name");
    cleanup.csrs.lock().expect("lock").push(name.clone());
    assert!(
        name.starts_with("node-csr-") && name.len() == "node-csr-".len() + 43,
        "{name}"
    );
    assert_eq!(
        csr.spec.signer_name,
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(
        csr.spec.usages.clone().unwrap_or_default(),
        ["digital signature", "client auth"]
    );
    let groups = csr.spec.groups.clone().unwrap_or_default();
    assert!(
        groups
            .iter()
            .any(|g| g == "system:bootstrappers:kubeadm:default-node-token"),
        "{groups:?}"
    );
    let request = w.dir.path().join("request.pem");
    std::fs::write(&request, &csr.spec.request.0).expect("write");
    let out = Command::new("openssl")
        .args(["req", "-noout", "-subject", "-in"])
        .arg(&request)
        .output()
        .expect("openssl req");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("subject=O = system:nodes, CN = system:node:{}", w.node)
    );
    assert!(!approved(&csr));

    // While it waits: the agent runs, says what it waits for, and starts static pods.
    w.wait_pod("early", "Running", |p| phase(p) == "Running")
        .await;
    let waiting = format!("waiting for the CSR {name} to be approved");
    wait_for(
        "the agent's waiting line",
        Duration::from_secs(10),
        || async { agent_log(&w).contains(&waiting).then_some(()) },
    )
    .await;
    assert!(!kubeconfig.exists(), "kubeconfig written before approval");
    let nodes: Api<Node> = Api::all(client.clone());
    assert!(nodes.get_opt(&w.node).await.expect("get node").is_none());
    assert!(
        w.agent
            .as_mut()
            .expect("agent")
            .try_wait()
            .expect("wait")
            .is_none(),
        "the agent exited while waiting:\n{}",
        agent_log(&w)
    );

    phase_at(t0, "csr checked, static pod ran");
    let out = kubectl(&admin, &["certificate", "approve", &name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = std::time::Instant::now();
    let node = wait_for("the Node to be Ready", Duration::from_secs(60), || async {
        nodes.get_opt(&w.node).await.ok().flatten().filter(ready)
    })
    .await;
    eprintln!("figure: CSR approval to Node Ready: {:?}", start.elapsed());
    assert!(node.metadata.uid.is_some());

    // The files, as upstream lays them out.
    let current = pki.join("kubelet-client-current.pem");
    let target = std::fs::read_link(&current).expect("kubelet-client-current.pem is a symlink");
    let file_name = target
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_owned();
    assert!(
        file_name.starts_with("kubelet-client-20") && file_name.ends_with(".pem"),
        "{file_name}"
    );
    assert_eq!(target.parent(), Some(pki.as_path()));
    assert_eq!(
        openssl_x509(&current, &["-subject"]),
        format!("subject=O = system:nodes, CN = system:node:{}", w.node)
    );
    let pem = std::fs::read_to_string(&current).expect("read pem");
    assert!(pem.contains("-----BEGIN CERTIFICATE-----") && pem.contains("PRIVATE KEY-----"));
    assert!(!pki.join("kubelet-client.key.tmp").exists());
    let written: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&kubeconfig).expect("kubeconfig written"))
            .expect("yaml");
    let user = &written["users"][0]["user"];
    assert_eq!(user["client-certificate"].as_str(), current.to_str());
    assert_eq!(user["client-key"].as_str(), current.to_str());
    assert_eq!(
        written["clusters"][0]["cluster"]["server"].as_str(),
        Some(server.as_str())
    );
    assert_eq!(
        written["clusters"][0]["cluster"]["certificate-authority"].as_str(),
        ca.to_str()
    );
    // kubectl with that kubeconfig is the node.
    let out = kubectl(
        &kubeconfig,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("system:node:{}", w.node)
    );

    // A restart uses the stored certificate: no new CSR.
    phase_at(t0, "ready, files checked; restarting");
    w.stop_agent();
    w.start_agent().await;
    phase_at(t0, "restarted");
    wait_for("the skip line", Duration::from_secs(20), || async {
        agent_log(&w)
            .contains("kubeconfig exists and is valid, skipping bootstrap")
            .then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed = |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0)
    };
    let restarted = jiff::Timestamp::now();
    wait_for(
        "a lease renewal after the restart",
        Duration::from_secs(30),
        || async {
            leases
                .get_opt(&w.node)
                .await
                .ok()
                .flatten()
                .and_then(|l| renewed(&l))
                .filter(|t| *t > restarted)
        },
    )
    .await;
    assert_eq!(csrs_of(&csrs, &username).await.len(), 1);
    phase_at(t0, "restart checked");
    drop(w);
    drop(cleanup);
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_moves_the_running_client_to_the_new_certificate() {
    let admin = admin_kubeconfig();
    let t0 = std::time::Instant::now();
    let client = admin_client(&admin).await;
    let mut w = World::new().await;
    let cleanup = Cleanup {
        kubeconfig: admin.clone(),
        node: w.node.clone(),
        csrs: std::sync::Mutex::new(Vec::new()),
        token_secret: None,
    };
    // 400 s of life of which 340 s have passed: the deadline (70–90 %, 280–360 s)
    // is at most 20 s away and the certificate expires in 60 s.
    let now = SystemTime::now();
    let expires = now + Duration::from_secs(60);
    let old = w.dir.path().join("node-old.pem");
    std::fs::write(
        &old,
        node_cert_pem(
            admin.parent().expect("run dir"),
            &w.node,
            None,
            now - Duration::from_secs(340),
            expires,
        ),
    )
    .expect("write the old pair");
    let (server, ca) = server_and_ca(&admin);
    let kubeconfig = w.dir.path().join("kubelet.conf");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{server}', certificate-authority: '{}'}}\ncontexts:\n- name: n\n  context: {{cluster: c, user: node}}\ncurrent-context: n\nusers:\n- name: node\n  user: {{client-certificate: '{p}', client-key: '{p}'}}\n",
            ca.display(),
            p = old.display()
        ),
    )
    .expect("write the kubeconfig");
    let pki = w.dir.path().join("pki");
    w.extra_args = vec![
        "--proxy-mode".into(),
        "none".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--rotate-certificates".into(),
        "--cert-dir".into(),
        pki.display().to_string(),
    ];
    phase_at(t0, "world made, agent starting");
    w.start_agent().await;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("the Node to be Ready", Duration::from_secs(60), || async {
        nodes.get_opt(&w.node).await.ok().flatten().filter(ready)
    })
    .await;

    // The renewal CSR, filed by the node itself with its current certificate and
    // approved by the controller-manager.
    let csrs: Api<CertificateSigningRequest> = Api::all(client.clone());
    let username = format!("system:node:{}", w.node);
    phase_at(t0, "node ready");
    let csr = wait_for(
        "the renewal CSR to be issued",
        Duration::from_secs(60),
        || async {
            let found = csrs_of(&csrs, &username).await;
            if let Some(c) = found.first().and_then(|c| c.metadata.name.clone())
                && let Ok(mut l) = cleanup.csrs.lock()
                && !l.contains(&c)
            {
                l.push(c);
            }
            found.into_iter().find(|c| {
                approved(c)
                    && c.status
                        .as_ref()
                        .and_then(|s| s.certificate.as_ref())
                        .is_some()
            })
        },
    )
    .await;
    let name = csr.metadata.name.clone().expect("name");
    assert!(name.starts_with("csr-"), "{name}");
    assert_eq!(
        csr.spec.usages.clone().unwrap_or_default(),
        ["digital signature", "client auth"]
    );

    let current = pki.join("kubelet-client-current.pem");
    wait_for(
        "kubelet-client-current.pem",
        Duration::from_secs(10),
        || async { current.exists().then_some(()) },
    )
    .await;
    assert_eq!(
        openssl_x509(&current, &["-subject"]),
        format!("subject=O = system:nodes, CN = system:node:{}", w.node)
    );
    assert_ne!(
        openssl_x509(&current, &["-serial"]),
        openssl_x509(&old, &["-serial"])
    );
    // The new certificate lives the signer's year, not the old one's minutes.
    let check = Command::new("openssl")
        .args(["x509", "-noout", "-checkend", "86400", "-in"])
        .arg(&current)
        .status()
        .expect("openssl");
    assert!(check.success(), "the new certificate expires within a day");

    // The old certificate goes away entirely: expired, and its file removed. The
    // lease still renews, so the agent's one client presents the new certificate.
    std::fs::remove_file(&old).expect("remove the old pair");
    let wait = expires
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        + Duration::from_secs(1);
    phase_at(t0, "rotated; waiting for the old certificate to expire");
    tokio::time::sleep(wait).await;
    let expired_at = jiff::Timestamp::now();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed = |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0)
    };
    wait_for(
        "a lease renewal after the old certificate expired",
        Duration::from_secs(30),
        || async {
            leases
                .get_opt(&w.node)
                .await
                .ok()
                .flatten()
                .and_then(|l| renewed(&l))
                .filter(|t| *t > expired_at)
        },
    )
    .await;
    let node = nodes.get(&w.node).await.expect("node");
    assert!(ready(&node), "the Node is no longer Ready");
    let log = agent_log(&w);
    assert!(
        log.contains("certificate rotation deadline determined"),
        "{log}"
    );
    assert!(log.contains("stored the new client certificate"), "{log}");
    phase_at(t0, "lease renewed after expiry");
    drop(w);
    drop(cleanup);
}
