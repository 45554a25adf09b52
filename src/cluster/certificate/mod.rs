//! The kubelet's client certificate: TLS bootstrap (`--bootstrap-kubeconfig`) and
//! rotation (`--rotate-certificates`), as upstream's `LoadClientCert` and client-go's
//! certificate manager. One task owns the certificate: without a usable one it files
//! a `node-csr-<digest>` CSR with the bootstrap credentials, waits for approval, stores
//! the pair in `--cert-dir` and writes `--kubeconfig`; with rotation on it then sleeps
//! until a jittered deadline at 70–90 % of the certificate's lifetime and files a
//! `csr-` CSR with the current certificate, retrying with back-off (2 s doubling to
//! 32 s, then every 32 s).
//!
//! The agent's one `kube::Client` ([`Certificates::start`]) sits over a service that
//! forwards each request to the client of the certificate in use, so every clone of
//! it moves to a new certificate the moment it is stored, without being handed a new
//! client; requests made before the first certificate exists wait for it (as requests
//! to an unreachable apiserver would), so pods and static pods start meanwhile.

pub mod csr;
pub mod serving;
pub mod store;
mod swap;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use governor::Quota;
use kube::client::ClientBuilder;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};

use self::store::{FileStore, Leaf, Pair};
use self::swap::Swap;
use super::bootstrap::{self, ClusterStanza};
use super::client::RateLimitLayer;

/// How long a bootstrap CSR may wait for approval before it is filed again
/// (upstream's `requestNodeCertificate`).
const BOOTSTRAP_WAIT: Duration = Duration::from_secs(3600);
/// How long a rotation CSR may wait (client-go's `certificateWaitTimeout`).
const ROTATION_WAIT: Duration = Duration::from_secs(15 * 60);

/// What can go wrong getting or keeping a client certificate.
#[derive(Debug, Error)]
pub enum CertificateError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file where the store's symlink belongs.
    #[error("expected {0} to be a symlink but it is a file")]
    NotSymlink(PathBuf),
    /// PEM that holds no usable certificate and key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Key generation failed.
    #[error("unable to generate a new private key: {0}")]
    Key(#[source] rcgen::Error),
    /// The PKCS#10 request could not be built.
    #[error("unable to generate certificate request: {0}")]
    Csr(#[source] rcgen::Error),
    /// A kubeconfig that can't be read or resolved.
    #[error("unable to load kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The bootstrap kubeconfig's current context names no usable cluster.
    #[error("bootstrap kubeconfig {path}: {reason}")]
    BootstrapCluster {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The client certificate named by `--kubeconfig` can't be used.
    #[error("--kubeconfig {path}: client certificate: {reason}")]
    KubeconfigCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// kube-rs refused to build a client (TLS set-up).
    #[error("cannot build the apiserver client: {0}")]
    Client(#[source] kube::Error),
    /// A request about a CSR failed.
    #[error("{verb} CertificateSigningRequest {name}: {source}")]
    Api {
        /// `create`, `get`.
        verb: &'static str,
        /// The CSR.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A request with no answer in time.
    #[error("{what}: no answer from the apiserver within {limit:?}", limit = super::REQUEST_TIMEOUT)]
    Timeout {
        /// What was asked.
        what: &'static str,
    },
    /// A CSR of the bootstrap name exists but is not for this key and node.
    #[error("retrieved csr is not compatible: {0}")]
    Incompatible(String),
    /// Someone denied the CSR.
    #[error("certificate signing request {name} is denied, reason: {reason}, message: {message}")]
    Denied {
        /// The CSR.
        name: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// The signer failed.
    #[error("certificate signing request {name} failed, reason: {reason}, message: {message}")]
    Failed {
        /// The CSR.
        name: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// The CSR was replaced by another of the same name.
    #[error("csr {0} changed UIDs")]
    UidChanged(String),
    /// The CSR was deleted while waiting.
    #[error("csr {0} was deleted")]
    Deleted(String),
    /// No certificate within the wait.
    #[error("csr {name}: no certificate issued within {limit:?}")]
    NotIssued {
        /// The CSR.
        name: String,
        /// The wait.
        limit: Duration,
    },
    /// Neither a valid certificate nor other credentials to file a CSR with.
    #[error("no valid client certificate and no bootstrap credentials to request one")]
    NoCredentials,
}

/// What the flags say about the client certificate.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--kubeconfig`: read, and written after a bootstrap.
    pub kubeconfig: PathBuf,
    /// `--bootstrap-kubeconfig`.
    pub bootstrap: Option<PathBuf>,
    /// `--cert-dir`.
    pub cert_dir: PathBuf,
    /// `--rotate-certificates`.
    pub rotate: bool,
    /// The node name (the certificate's `system:node:<name>`).
    pub node_name: String,
}

/// When to rotate `leaf`: `notBefore` plus 70–90 % of its lifetime, `jitter` in
/// [0, 1) picking the point (client-go's `jitteryDuration`, spreading nodes added
/// together).
pub fn rotation_deadline(leaf: &Leaf, jitter: f64) -> SystemTime {
    let fraction = 0.7 + 0.2 * jitter.clamp(0.0, 1.0);
    leaf.not_before + leaf.lifetime().mul_f64(fraction)
}

/// Whether `leaf` is the certificate `node` would ask for now (client-go's
/// `certSatisfiesTemplate`: same CN, every requested organization present).
pub fn satisfies_template(leaf: &Leaf, node: &str) -> bool {
    leaf.common_name == csr::common_name(node)
        && leaf.organizations.iter().any(|o| o == csr::NODES_GROUP)
}

/// The certificate in use and the client that presents it.
#[derive(Clone)]
pub(crate) struct Installed {
    client: kube::Client,
    leaf: Option<Leaf>,
}

/// A handle on the certificate task. The task stops when the last handle and the
/// last clone of the client it serves are gone.
#[derive(Clone)]
pub struct Certificates {
    current: watch::Receiver<Option<Installed>>,
    _stop: Arc<DropGuard>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

/// Where the agent's credentials come from, decided at start.
struct Plan {
    /// Server, CA and timeouts of the agent's client; its auth is the certificate.
    base: kube::Config,
    /// Credentials that file a CSR when there is no valid certificate.
    requester: Option<kube::Config>,
    /// The cluster to write into `--kubeconfig` after a bootstrap.
    bootstrap_cluster: Option<ClusterStanza>,
    /// The certificate to start with.
    initial: Option<Pair>,
}

impl Certificates {
    /// Works out the starting certificate, builds the agent's client over it and
    /// spawns the task that bootstraps and rotates. Returns at once, also when a
    /// certificate is still to be requested.
    ///
    /// # Errors
    /// An unreadable bootstrap kubeconfig, or `--kubeconfig` when there is nothing
    /// to bootstrap from; a `--cert-dir` that can't be made.
    pub async fn start(
        settings: Settings,
        quota: Quota,
    ) -> Result<(kube::Client, Certificates), CertificateError> {
        super::client::install_crypto_provider();
        let store = FileStore::open(&settings.cert_dir)?;
        let plan = plan(&settings, &store).await?;
        let (tx, rx) = watch::channel(None);
        let mut manager = Manager {
            settings,
            store,
            base: plan.base.clone(),
            requester: plan.requester,
            bootstrap_cluster: plan.bootstrap_cluster,
            current: None,
            tx,
        };
        if let Some(pair) = plan.initial {
            info!(
                subject = %pair.leaf.common_name,
                not_after = %jiff_time(pair.leaf.not_after),
                "using the client certificate"
            );
            manager.install(pair)?;
        }
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let guard = Arc::new(cancel.drop_guard());
        let swap = Swap {
            current: rx.clone(),
            _stop: Arc::clone(&guard),
        };
        let client = ClientBuilder::new(swap, plan.base.default_namespace)
            .with_layer(&RateLimitLayer::new(quota))
            .build();
        tokio::spawn(async move {
            tokio::select! {
                () = manager.run() => {}
                () = stop.cancelled() => {}
            }
        });
        Ok((
            client,
            Certificates {
                current: rx,
                _stop: guard,
            },
        ))
    }

    /// Waits until there is a client certificate.
    pub async fn ready(&self) {
        let mut rx = self.current.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// The certificate in use, if any.
    pub fn current(&self) -> Option<Leaf> {
        self.current.borrow().as_ref().and_then(|i| i.leaf.clone())
    }
}

fn jiff_time(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t).map_or_else(|_| format!("{t:?}"), |t| t.to_string())
}

/// A usable pair: not expired (and, for the store, naming this node).
fn usable(pair: Option<Pair>, node: &str) -> Option<Pair> {
    pair.filter(|p| {
        !bootstrap::any_expired(p, SystemTime::now()) && satisfies_template(&p.leaf, node)
    })
}

async fn plan(settings: &Settings, store: &FileStore) -> Result<Plan, CertificateError> {
    let stored = match store.current() {
        Ok(p) => usable(p, &settings.node_name),
        Err(e) => {
            warn!(error = %e, "ignoring the stored client certificate");
            None
        }
    };
    let Some(bootstrap_path) = &settings.bootstrap else {
        // Rotation only: the kubeconfig is the credential; a newer pair in the store
        // (from an earlier rotation) wins, as client-go's store prefers `-current.pem`.
        let (_, config) = bootstrap::load(&settings.kubeconfig).await?;
        let own = bootstrap::client_pair(&config).map_err(|reason| {
            CertificateError::KubeconfigCertificate {
                path: settings.kubeconfig.clone(),
                reason,
            }
        })?;
        let initial =
            stored.or_else(|| own.filter(|p| !bootstrap::any_expired(p, SystemTime::now())));
        return Ok(Plan {
            base: config.clone(),
            requester: Some(config),
            bootstrap_cluster: None,
            initial,
        });
    };
    if let Some((config, pair)) = bootstrap::still_valid(&settings.kubeconfig).await {
        info!(path = %settings.kubeconfig.display(), "kubeconfig exists and is valid, skipping bootstrap");
        let requester = match bootstrap::load(bootstrap_path).await {
            Ok((_, c)) => Some(c),
            Err(_) => None,
        };
        let initial = if settings.rotate {
            stored.or(Some(pair))
        } else {
            Some(pair)
        };
        return Ok(Plan {
            base: config,
            requester,
            bootstrap_cluster: None,
            initial,
        });
    }
    let (file, requester) = bootstrap::load(bootstrap_path).await?;
    let cluster = bootstrap::current_cluster(&file, bootstrap_path)?;
    let mut base = requester.clone();
    base.auth_info = kube::config::AuthInfo::default();
    if stored.is_some() {
        // A certificate from an earlier bootstrap is still good: point the
        // kubeconfig at it rather than asking again (upstream's LoadClientConfig).
        bootstrap::write_kubeconfig(&settings.kubeconfig, &cluster, &store.current_path())?;
        info!(path = %settings.kubeconfig.display(), "wrote the kubeconfig for the stored client certificate");
    } else {
        info!(
            bootstrap = %bootstrap_path.display(),
            "no valid client certificate: requesting one with the bootstrap kubeconfig"
        );
    }
    Ok(Plan {
        base,
        requester: Some(requester),
        bootstrap_cluster: Some(cluster),
        initial: stored,
    })
}

/// A client over `base` presenting `pair` (kube-rs's own stack: TLS, timeouts).
fn client_for(base: &kube::Config, pair: Option<&Pair>) -> Result<kube::Client, CertificateError> {
    use base64::Engine as _;
    let mut config = base.clone();
    if let Some(pair) = pair {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        config.auth_info = kube::config::AuthInfo {
            client_certificate_data: Some(b64(&pair.certs_pem)),
            client_key_data: Some(secrecy::SecretString::from(b64(&pair.key_pem))),
            ..kube::config::AuthInfo::default()
        };
    }
    ClientBuilder::try_from(config)
        .map(ClientBuilder::build)
        .map_err(CertificateError::Client)
}

/// Why a certificate is being requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bootstrap,
    Rotation,
}

/// The task that owns the certificate.
struct Manager {
    settings: Settings,
    store: FileStore,
    base: kube::Config,
    requester: Option<kube::Config>,
    bootstrap_cluster: Option<ClusterStanza>,
    current: Option<(Pair, kube::Client)>,
    tx: watch::Sender<Option<Installed>>,
}

impl Manager {
    async fn run(&mut self) {
        if self.current.is_none() {
            self.obtain(Kind::Bootstrap).await;
        }
        if !self.settings.rotate {
            return;
        }
        info!("certificate rotation is enabled");
        loop {
            let now = SystemTime::now();
            let deadline = match &self.current {
                Some((pair, _)) if satisfies_template(&pair.leaf, &self.settings.node_name) => {
                    let d = rotation_deadline(&pair.leaf, fastrand::f64());
                    info!(
                        expiration = %jiff_time(pair.leaf.not_after),
                        deadline = %jiff_time(d),
                        "certificate rotation deadline determined"
                    );
                    d
                }
                _ => now,
            };
            if let Ok(sleep) = deadline.duration_since(now) {
                tokio::time::sleep(sleep).await;
            }
            self.obtain(Kind::Rotation).await;
        }
    }

    /// Requests a certificate until one is stored, backing off as client-go's
    /// manager: 2 s doubling for five tries, then every 32 s.
    async fn obtain(&mut self, kind: Kind) {
        let mut backoff = Duration::from_secs(2);
        let mut tries = 0u32;
        loop {
            match self.attempt(kind).await {
                Ok(()) => return,
                Err(e) => {
                    tries += 1;
                    let wait = backoff.mul_f64(1.0 + 0.1 * fastrand::f64());
                    warn!(error = %e, tries, retry_in = ?wait, "unable to get a client certificate; retrying (pods keep running)");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(32));
                }
            }
        }
    }

    /// The client that files CSRs: the current certificate's while it is valid,
    /// else the bootstrap (or kubeconfig) credentials.
    fn requesting_client(&self) -> Result<kube::Client, CertificateError> {
        if let Some((pair, client)) = &self.current
            && !pair.leaf.expired(SystemTime::now())
        {
            return Ok(client.clone());
        }
        let requester = self
            .requester
            .as_ref()
            .ok_or(CertificateError::NoCredentials)?;
        client_for(requester, None)
    }

    async fn attempt(&mut self, kind: Kind) -> Result<(), CertificateError> {
        let node = self.settings.node_name.clone();
        let (key, name) = match kind {
            Kind::Bootstrap => {
                let key = self.store.load_or_generate_key()?;
                let name = csr::bootstrap_name(&key, &node);
                (key, Some(name))
            }
            Kind::Rotation => (store::generate_key()?, None),
        };
        let request = csr::request_pem(&key, &node)?;
        let client = self.requesting_client()?;
        let object = csr::object(&request, name.as_deref(), None);
        let (name, uid) = csr::create(&client, &object, &key).await?;
        info!(csr = %name, "waiting for the CSR {name} to be approved (kubectl certificate approve {name})");
        let limit = match kind {
            Kind::Bootstrap => BOOTSTRAP_WAIT,
            Kind::Rotation => ROTATION_WAIT,
        };
        let cert = csr::wait_for_certificate(&client, &name, &uid, limit).await?;
        let (pair, file) = self.store.update(&cert, &key.serialize_pem())?;
        if kind == Kind::Bootstrap {
            self.store.remove_tmp_key();
        }
        if let Some(cluster) = &self.bootstrap_cluster {
            bootstrap::write_kubeconfig(
                &self.settings.kubeconfig,
                cluster,
                &self.store.current_path(),
            )?;
        }
        info!(
            csr = %name,
            file = %file.display(),
            serial = %pair.leaf.serial,
            not_after = %jiff_time(pair.leaf.not_after),
            "stored the new client certificate; the apiserver client uses it from now on"
        );
        self.install(pair)
    }

    /// Makes `pair` the certificate every holder of the agent's client presents.
    fn install(&mut self, pair: Pair) -> Result<(), CertificateError> {
        let client = client_for(&self.base, Some(&pair))?;
        self.tx.send_replace(Some(Installed {
            client: client.clone(),
            leaf: Some(pair.leaf.clone()),
        }));
        self.current = Some((pair, client));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::store::testing::cert;
    use super::*;

    fn leaf(not_before: SystemTime, lifetime: Duration) -> Leaf {
        Leaf {
            not_before,
            not_after: not_before + lifetime,
            common_name: "system:node:n".into(),
            organizations: vec!["system:nodes".into()],
            serial: "01".into(),
            sha256: String::new(),
        }
    }

    #[test]
    fn the_deadline_falls_between_70_and_90_percent_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let l = leaf(start, Duration::from_secs(1000));
        assert_eq!(rotation_deadline(&l, 0.0), start + Duration::from_secs(700));
        assert_eq!(rotation_deadline(&l, 0.5), start + Duration::from_secs(800));
        assert_eq!(rotation_deadline(&l, 1.0), start + Duration::from_secs(900));
        for _ in 0..1000 {
            let d = rotation_deadline(&l, fastrand::f64());
            assert!(d >= start + Duration::from_secs(700) && d < start + Duration::from_secs(900));
        }
        // Out-of-range jitter is clamped, never past 90 %.
        assert_eq!(rotation_deadline(&l, 7.0), start + Duration::from_secs(900));
    }

    #[test]
    fn flags_parse_with_upstream_defaults() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(["nodelet", "--root-dir", "/r"]).expect("parses");
        assert!(!cli.agent.rotate_certificates);
        assert_eq!(cli.agent.bootstrap_kubeconfig, None);
        assert_eq!(cli.agent.cert_dir(), PathBuf::from("/r/pki"));
        let cli = crate::cli::Cli::try_parse_from([
            "nodelet",
            "--bootstrap-kubeconfig",
            "/etc/kubernetes/bootstrap-kubelet.conf",
            "--cert-dir",
            "/var/lib/kubelet/pki",
            "--rotate-certificates",
        ])
        .expect("parses");
        assert!(cli.agent.rotate_certificates);
        assert_eq!(
            cli.agent.bootstrap_kubeconfig,
            Some(PathBuf::from("/etc/kubernetes/bootstrap-kubelet.conf"))
        );
        assert_eq!(cli.agent.cert_dir(), PathBuf::from("/var/lib/kubelet/pki"));
        let off = crate::cli::Cli::try_parse_from(["nodelet", "--rotate-certificates=false"])
            .expect("parses");
        assert!(!off.agent.rotate_certificates);
    }

    #[test]
    fn a_certificate_for_another_node_or_group_does_not_satisfy_the_template() {
        let l = leaf(SystemTime::now(), Duration::from_secs(10));
        assert!(satisfies_template(&l, "n"));
        assert!(!satisfies_template(&l, "m"));
        let mut other = l.clone();
        other.organizations = vec!["system:masters".into()];
        assert!(!satisfies_template(&other, "n"));
    }

    #[tokio::test]
    async fn a_stored_pair_is_used_and_the_kubeconfig_written_without_a_request() {
        let dir = tempfile::tempdir().expect("tmp");
        let bootstrap_path = dir.path().join("bootstrap.kubeconfig");
        std::fs::write(
            &bootstrap_path,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\nusers:\n- name: u\n  user: {token: abcdef.0123456789abcdef}\n",
        )
        .expect("write");
        let store = FileStore::open(&dir.path().join("pki")).expect("store");
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let (c, k) = cert("system:node:n", &["system:nodes"], now - hour, now + hour);
        store.update(&c, &k).expect("update");
        let settings = Settings {
            kubeconfig: dir.path().join("kubelet.kubeconfig"),
            bootstrap: Some(bootstrap_path),
            cert_dir: store.dir().to_owned(),
            rotate: false,
            node_name: "n".into(),
        };
        let quota = super::super::client::quota(5, 10).expect("quota");
        let (_client, certs) = Certificates::start(settings.clone(), quota)
            .await
            .expect("start");
        assert_eq!(
            certs.current().map(|l| l.common_name),
            Some("system:node:n".into())
        );
        let (_, pair) = bootstrap::still_valid(&settings.kubeconfig)
            .await
            .expect("kubeconfig written");
        assert_eq!(pair.leaf.common_name, "system:node:n");

        // A stored certificate for another node is not used: nothing is installed
        // until the (unreachable) apiserver issues one.
        let other = Settings {
            node_name: "m".into(),
            kubeconfig: dir.path().join("m.kubeconfig"),
            ..settings
        };
        let (_client, certs) = Certificates::start(other, quota).await.expect("start");
        assert!(certs.current().is_none());
        assert!(
            tokio::time::timeout(Duration::from_millis(200), certs.ready())
                .await
                .is_err()
        );
    }
}
