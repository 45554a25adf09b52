//! The real apiserver tier for end-to-end tests: the admin kubeconfig
//! (`NODELET_TEST_KUBECONFIG`), `scripts/apiserver.sh` on its run dir, kubectl, an
//! admin client, and a [`World`] whose agent joins the cluster as its own node
//! (with a `system:node:<node>` credential), its Node and Lease removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use super::{World, wait_for};

/// The admin kubeconfig of the test apiserver.
pub fn admin_kubeconfig() -> PathBuf {
    let path = std::env::var_os("NODELET_TEST_KUBECONFIG").unwrap_or_else(|| {
        panic!(
            "NODELET_TEST_KUBECONFIG is not set: start the test apiserver \
             (NODELET_APISERVER_DIR=<dir> scripts/apiserver.sh start) and export \
             NODELET_TEST_KUBECONFIG=<dir>/admin.kubeconfig, or run scripts/test.sh"
        )
    });
    PathBuf::from(path)
}

/// `scripts/apiserver.sh` on the run dir holding `kubeconfig`.
pub fn apiserver_sh(kubeconfig: &Path, args: &[&str]) -> String {
    let dir = kubeconfig.parent().expect("the run dir");
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/apiserver.sh"))
        .args(args)
        .env("NODELET_APISERVER_DIR", dir)
        .output()
        .expect("run scripts/apiserver.sh");
    assert!(
        out.status.success(),
        "apiserver.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl with `kubeconfig`.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl")
}

/// Deletes the test's Node and Lease when dropped (after the World, which stops the
/// agent first: declare it before the World).
pub struct NodeCleanup {
    kubeconfig: PathBuf,
    node: String,
}

impl Drop for NodeCleanup {
    fn drop(&mut self) {
        let _ = kubectl(
            &self.kubeconfig,
            &[
                "delete",
                "node",
                &self.node,
                "--ignore-not-found",
                "--wait=false",
            ],
        );
        let _ = kubectl(
            &self.kubeconfig,
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
    }
}

/// A client with the admin kubeconfig.
pub async fn admin_client(kubeconfig: &Path) -> kube::Client {
    // More than one rustls provider is compiled in; pick the agent's.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let file = kube::config::Kubeconfig::read_from(kubeconfig).expect("admin kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .expect("admin config");
    kube::Client::try_from(config).expect("admin client")
}

/// A World whose agent joins the cluster as its own node, with `extra` flags
/// (`--proxy-mode none` unless `extra` names a proxy mode).
pub async fn joined_world(kubeconfig: &Path, extra: &[&str]) -> (NodeCleanup, World) {
    let mut w = World::new().await;
    let cleanup = NodeCleanup {
        kubeconfig: kubeconfig.to_owned(),
        node: w.node.clone(),
    };
    let node_config = w.dir.path().join("node.kubeconfig");
    apiserver_sh(
        kubeconfig,
        &[
            "node-kubeconfig",
            &w.node,
            node_config.to_str().expect("utf-8 path"),
        ],
    );
    // The in-agent proxy (on by default with a kubeconfig) would program the host's
    // nftables and bind 10256/10249 there: off unless `extra` asks for a mode (the
    // proxy's own e2e runs the agent inside a network namespace of its own).
    let proxy_off: &[&str] = if extra.contains(&"--proxy-mode") {
        &[]
    } else {
        &["--proxy-mode", "none"]
    };
    w.extra_args = ["--kubeconfig", node_config.to_str().expect("utf-8 path")]
        .iter()
        .chain(proxy_off)
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect();
    (cleanup, w)
}

/// The status of condition `type_` of `node`.
pub fn condition_status(node: &Node, type_: &str) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// Waits up to `limit` for Node `name` to be Ready.
pub async fn wait_ready(nodes: &Api<Node>, name: &str, limit: Duration) -> Node {
    wait_for("the Node to be Ready", limit, || async {
        let n = nodes.get_opt(name).await.ok()??;
        (condition_status(&n, "Ready").as_deref() == Some("True")).then_some(n)
    })
    .await
}

/// Stops the apiserver; dropping it starts it again, also when the test panics, so
/// the tests after it find one.
pub struct ApiserverDown {
    kubeconfig: PathBuf,
}

impl ApiserverDown {
    /// Stops the apiserver of `kubeconfig`'s run dir.
    pub fn stop(kubeconfig: &Path) -> Self {
        apiserver_sh(kubeconfig, &["stop", "kube-apiserver"]);
        Self {
            kubeconfig: kubeconfig.to_owned(),
        }
    }
}

impl Drop for ApiserverDown {
    fn drop(&mut self) {
        // No panic in a drop: a start that fails shows as the wait after it timing out.
        let _ = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/apiserver.sh"))
            .arg("start")
            .env(
                "NODELET_APISERVER_DIR",
                self.kubeconfig.parent().unwrap_or(Path::new(".")),
            )
            .output();
    }
}

/// A namespace of the test's own (`<prefix>-<id>`), deleted (without waiting) when
/// dropped.
pub struct TestNamespace {
    kubeconfig: PathBuf,
    pub name: String,
}

impl TestNamespace {
    /// Creates it and waits for its `default` ServiceAccount: the apiserver refuses
    /// pods until the controller-manager has made it (upstream's e2e framework waits
    /// too).
    pub async fn new(client: &kube::Client, kubeconfig: &Path, prefix: &str, id: &str) -> Self {
        let name = format!("{prefix}-{id}");
        let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .expect("namespace");
        Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .create(&kube::api::PostParams::default(), &ns)
            .await
            .expect("create the test namespace");
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        wait_for(
            "the namespace's default ServiceAccount",
            Duration::from_secs(60),
            || async { accounts.get_opt("default").await.ok()? },
        )
        .await;
        Self {
            kubeconfig: kubeconfig.to_owned(),
            name,
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(
            &self.kubeconfig,
            &["delete", "namespace", &self.name, "--wait=false"],
        );
    }
}

/// A certificate for `node` (subject `O=system:nodes, CN=system:node:<node>`, as a
/// kubelet's) signed by the test cluster's CA under `run_dir/pki`, valid from
/// `not_before` to `not_after`, PEM certificate then key. `serving` makes it a serving
/// certificate for the node name and `ip`; otherwise it is a client certificate.
pub fn node_cert_pem(
    run_dir: &Path,
    node: &str,
    serving: Option<&str>,
    not_before: std::time::SystemTime,
    not_after: std::time::SystemTime,
) -> String {
    let ca_pem = std::fs::read_to_string(run_dir.join("pki/ca.crt")).expect("ca.crt");
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(run_dir.join("pki/ca.key")).expect("ca.key"),
    )
    .expect("ca key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = match serving {
        Some(ip) => {
            let mut p = rcgen::CertificateParams::new(vec![node.to_owned()]).expect("params");
            p.subject_alt_names
                .push(rcgen::SanType::IpAddress(ip.parse().expect("ip")));
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            p
        }
        None => {
            let mut p = rcgen::CertificateParams::default();
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            p
        }
    };
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let at = |t: std::time::SystemTime| {
        let secs = t
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).expect("secs")).expect("time")
    };
    params.not_before = at(not_before);
    params.not_after = at(not_after);
    let cert = params.signed_by(&key, &issuer).expect("sign");
    format!("{}{}", cert.pem(), key.serialize_pem())
}
