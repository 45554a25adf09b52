//! The kubeconfig side of TLS bootstrap, as upstream's
//! `pkg/kubelet/certificate/bootstrap`: whether the `--kubeconfig` file still holds a
//! usable client certificate (`isClientConfigStillValid`: it loads, names a
//! certificate and key, and no certificate in it has expired), and writing the
//! kubeconfig a bootstrapped node uses (`writeKubeconfigFromBootstrapping`): the
//! server and CA of the bootstrap kubeconfig's current context, and
//! `kubelet-client-current.pem` as both client certificate and key.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kube::config::{KubeConfigOptions, Kubeconfig};
use secrecy::ExposeSecret as _;
use tracing::{debug, warn};

use super::certificate::CertificateError;
use super::certificate::store::{self, Pair};

/// Reads `path` and resolves its current context into a client config.
///
/// # Errors
/// Unreadable, not a kubeconfig, or its current context is incomplete.
pub async fn load(path: &Path) -> Result<(Kubeconfig, kube::Config), CertificateError> {
    let kc = |source| CertificateError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let file = Kubeconfig::read_from(path).map_err(kc)?;
    let config = kube::Config::from_custom_kubeconfig(file.clone(), &KubeConfigOptions::default())
        .await
        .map_err(kc)?;
    Ok((file, config))
}

/// The client certificate and key `config` names (as files or inline data), if any.
///
/// # Errors
/// A named file that can't be read, bad base64, or PEM without a usable pair.
pub fn client_pair(config: &kube::Config) -> Result<Option<Pair>, String> {
    use base64::Engine as _;
    let auth = &config.auth_info;
    let read = |data: Option<&str>, file: Option<&String>| -> Result<Option<String>, String> {
        if let Some(data) = data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| format!("bad base64: {e}"))?;
            return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
        }
        match file {
            Some(f) => std::fs::read_to_string(f)
                .map(Some)
                .map_err(|e| format!("{f}: {e}")),
            None => Ok(None),
        }
    };
    let cert = read(
        auth.client_certificate_data.as_deref(),
        auth.client_certificate.as_ref(),
    )?;
    let key = read(
        auth.client_key_data.as_ref().map(|k| k.expose_secret()),
        auth.client_key.as_ref(),
    )?;
    match (cert, key) {
        (Some(cert), Some(key)) => store::parse_pair(&cert, &key).map(Some),
        (None, None) => Ok(None),
        _ => Err("a client certificate without its key, or a key without its certificate".into()),
    }
}

/// `isClientConfigStillValid`: the kubeconfig at `path` and its pair when it exists,
/// loads, and holds a client certificate none of whose certificates has expired.
/// Anything less is logged and means "bootstrap".
pub async fn still_valid(path: &Path) -> Option<(kube::Config, Pair)> {
    if !path.exists() {
        debug!(path = %path.display(), "no kubeconfig yet: bootstrapping");
        return None;
    }
    let config = match load(path).await {
        Ok((_, c)) => c,
        Err(e) => {
            warn!(error = %e, "unable to read the existing kubeconfig; bootstrapping");
            return None;
        }
    };
    let pair = match client_pair(&config) {
        Ok(Some(p)) => p,
        Ok(None) => {
            warn!(path = %path.display(), "the existing kubeconfig has no client certificate; bootstrapping");
            return None;
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "unable to load the client certificate of the existing kubeconfig; bootstrapping");
            return None;
        }
    };
    if any_expired(&pair, SystemTime::now()) {
        warn!(path = %path.display(), not_after = ?pair.leaf.not_after, "part of the existing client certificate is expired; bootstrapping");
        return None;
    }
    Some((config, pair))
}

/// Whether any certificate of `pair` has expired at `now` (upstream checks each).
pub fn any_expired(pair: &Pair, now: SystemTime) -> bool {
    let Ok(blocks) = store::blocks(&pair.certs_pem) else {
        return true;
    };
    blocks.iter().any(|b| {
        store::block_der(b)
            .and_then(|der| store::parse_leaf(&der))
            .map_or(true, |leaf| leaf.expired(now))
    })
}

/// The cluster stanza of a kubeconfig's current context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStanza {
    /// `server`.
    pub server: String,
    /// `certificate-authority` (absolute).
    pub ca_file: Option<String>,
    /// `certificate-authority-data`, when there is no file.
    pub ca_data: Option<String>,
    /// `insecure-skip-tls-verify`.
    pub insecure: bool,
}

/// The cluster the current context of `file` uses.
///
/// # Errors
/// No current context, or it names no cluster with a server.
pub fn current_cluster(file: &Kubeconfig, path: &Path) -> Result<ClusterStanza, CertificateError> {
    let missing = |what: &str| CertificateError::BootstrapCluster {
        path: path.to_owned(),
        reason: what.to_owned(),
    };
    let context_name = file
        .current_context
        .as_deref()
        .ok_or_else(|| missing("no current-context"))?;
    let cluster_name = file
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| missing("the current context is not defined"))?;
    let cluster = file
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| missing("the current context's cluster is not defined"))?;
    let server = cluster
        .server
        .ok_or_else(|| missing("the current context's cluster has no server"))?;
    let ca_file = cluster.certificate_authority;
    Ok(ClusterStanza {
        server,
        ca_data: if ca_file.is_none() {
            cluster.certificate_authority_data
        } else {
            None
        },
        ca_file,
        insecure: cluster.insecure_skip_tls_verify.unwrap_or(false),
    })
}

/// The kubeconfig upstream writes after bootstrapping (`default-cluster`,
/// `default-auth`, `default-context` with namespace `default`).
pub fn kubeconfig_yaml(cluster: &ClusterStanza, pem: &Path) -> String {
    let mut stanza = serde_json::Map::new();
    stanza.insert("server".into(), cluster.server.clone().into());
    if let Some(f) = &cluster.ca_file {
        stanza.insert("certificate-authority".into(), f.clone().into());
    }
    if let Some(d) = &cluster.ca_data {
        stanza.insert("certificate-authority-data".into(), d.clone().into());
    }
    if cluster.insecure {
        stanza.insert("insecure-skip-tls-verify".into(), true.into());
    }
    let pem = pem.to_string_lossy();
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "default-cluster", "cluster": stanza}],
        "contexts": [{"name": "default-context", "context": {
            "cluster": "default-cluster", "namespace": "default", "user": "default-auth"}}],
        "current-context": "default-context",
        "preferences": {},
        "users": [{"name": "default-auth", "user": {
            "client-certificate": pem, "client-key": pem}}],
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

/// Writes [`kubeconfig_yaml`] to `path` (mode 0600, through a temporary file renamed
/// over, so a reader never sees half a file).
///
/// # Errors
/// The write or rename fails.
pub fn write_kubeconfig(
    path: &Path,
    cluster: &ClusterStanza,
    pem: &Path,
) -> Result<(), CertificateError> {
    let io = |path: PathBuf| move |source| CertificateError::Io { path, source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir.to_owned()))?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(tmp.clone()))?;
    f.write_all(kubeconfig_yaml(cluster, pem).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(tmp.clone()))?;
    std::fs::rename(&tmp, path).map_err(io(path.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::certificate::store::testing::cert;

    const BOOTSTRAP: &str = "apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: pki/ca.crt
contexts:
- name: tls-bootstrap-token-user@kubernetes
  context: {cluster: kubernetes, user: tls-bootstrap-token-user}
current-context: tls-bootstrap-token-user@kubernetes
users:
- name: tls-bootstrap-token-user
  user: {token: abcdef.0123456789abcdef}
";

    #[tokio::test]
    async fn the_written_kubeconfig_points_at_the_current_pem() {
        let dir = tempfile::tempdir().expect("tmp");
        let bootstrap = dir.path().join("bootstrap.kubeconfig");
        std::fs::write(&bootstrap, BOOTSTRAP).expect("write");
        let file = Kubeconfig::read_from(&bootstrap).expect("read");
        let cluster = current_cluster(&file, &bootstrap).expect("cluster");
        let ca = dir.path().join("pki/ca.crt");
        assert_eq!(
            cluster,
            ClusterStanza {
                server: "https://127.0.0.1:6443".into(),
                ca_file: Some(ca.to_string_lossy().into_owned()),
                ca_data: None,
                insecure: false,
            }
        );

        let pki = dir.path().join("pki");
        let store = store::FileStore::open(&pki).expect("store");
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let (c, k) = cert("system:node:n", &["system:nodes"], now - day, now + day);
        store.update(&c, &k).expect("update");
        // Any certificate does as the CA file kube-rs reads.
        std::fs::write(&ca, &c).expect("write ca");
        let kubeconfig = dir.path().join("etc/kubelet.kubeconfig");
        write_kubeconfig(&kubeconfig, &cluster, &store.current_path()).expect("write");
        let mode = std::fs::metadata(&kubeconfig).expect("meta").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let written: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&kubeconfig).expect("read"))
                .expect("yaml");
        let user = &written["users"][0];
        assert_eq!(user["name"], "default-auth");
        let pem = store.current_path().to_string_lossy().into_owned();
        assert_eq!(
            user["user"]["client-certificate"].as_str(),
            Some(pem.as_str())
        );
        assert_eq!(user["user"]["client-key"].as_str(), Some(pem.as_str()));
        assert_eq!(written["current-context"], "default-context");
        assert_eq!(written["contexts"][0]["context"]["namespace"], "default");
        assert_eq!(
            written["clusters"][0]["cluster"]["certificate-authority"].as_str(),
            Some(ca.to_str().expect("utf-8"))
        );

        // kube-rs reads it back, and it counts as still valid.
        let (config, pair) = still_valid(&kubeconfig).await.expect("valid");
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
        assert_eq!(pair.leaf.common_name, "system:node:n");
    }

    #[tokio::test]
    async fn missing_expired_or_certless_kubeconfigs_mean_bootstrap() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(still_valid(&dir.path().join("none")).await.is_none());

        let token_only = dir.path().join("token.kubeconfig");
        std::fs::write(&token_only, BOOTSTRAP).expect("write");
        assert!(still_valid(&token_only).await.is_none());

        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let (c, k) = cert("system:node:n", &["system:nodes"], now - 2 * day, now - day);
        let pem = dir.path().join("old.pem");
        std::fs::write(&pem, format!("{c}{k}")).expect("write");
        let cluster = ClusterStanza {
            server: "https://127.0.0.1:6443".into(),
            ca_file: None,
            ca_data: None,
            insecure: true,
        };
        let expired = dir.path().join("expired.kubeconfig");
        write_kubeconfig(&expired, &cluster, &pem).expect("write");
        assert!(still_valid(&expired).await.is_none());

        std::fs::write(&expired, "{not yaml").expect("write");
        assert!(still_valid(&expired).await.is_none());
    }
}
