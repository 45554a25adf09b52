//! The kubelet API's serving certificate from the cluster (`serverTLSBootstrap`,
//! `--rotate-server-certificates`), as upstream's `NewKubeletServerCertificateManager`
//! over client-go's certificate manager: a `kubernetes.io/kubelet-serving` CSR for
//! `O=system:nodes, CN=system:node:<node>` with the node's addresses as subject
//! alternative names (upstream's `addressesToHostnamesAndIPs`: `Hostname` and the
//! DNS types as DNS names, the IP types as IPs, deduplicated and sorted) and the
//! usages `digital signature`, `server auth` (an ECDSA key), filed with the agent's
//! own client. Upstream's approver does not approve these; an operator (or an
//! approver controller) does, e.g. `kubectl certificate approve`.
//!
//! The pair is stored as upstream's `kubelet-server` file store in `--cert-dir`
//! (`kubelet-server-<stamp>.pem`, `kubelet-server-current.pem` the symlink to it);
//! when there is none, `--tls-cert-file`/`--tls-private-key-file` are the starting
//! pair, as upstream's store falls back to them. [`ServingResolver`] hands the
//! current pair to each TLS handshake, so a rotated certificate serves from the next
//! connection on; without one (not yet approved, or expired) handshakes fail, as
//! upstream's `GetCertificate` answers "no serving certificate available for the
//! kubelet". Rotation is the client certificate's: at a jittered 70–90 % of the
//! lifetime, or at once when the stored certificate does not cover the node's
//! current name and addresses; each CSR waits up to 15 minutes for approval.
//! `/metrics` then carries upstream's `kubelet_certificate_manager_server_ttl_seconds`
//! and `kubelet_server_expiration_renew_errors`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tracing::{info, warn};

use super::store::{self, FileStore, Pair, SERVER_PAIR_PREFIX};
use super::{CertificateError, csr, jiff_time, rotation_deadline};

/// How long a serving CSR may wait (client-go's `certificateWaitTimeout`).
const WAIT: Duration = Duration::from_secs(15 * 60);

/// What the serving certificate is asked for.
#[derive(Debug, Clone)]
pub struct ServingSettings {
    /// `--cert-dir`.
    pub cert_dir: PathBuf,
    /// The node name (`system:node:<name>`).
    pub node_name: String,
    /// The node's addresses, `(type, address)` as in its status.
    pub addresses: Vec<(String, String)>,
    /// `--tls-cert-file` and `--tls-private-key-file`, the fallback pair.
    pub fallback: Option<(PathBuf, PathBuf)>,
}

/// Upstream's `addressesToHostnamesAndIPs`: DNS names and IPs from node addresses,
/// each once, sorted (IPs by their text).
pub fn hostnames_and_ips(addresses: &[(String, String)]) -> (Vec<String>, Vec<IpAddr>) {
    let mut names = std::collections::BTreeSet::new();
    let mut ips = std::collections::BTreeMap::new();
    for (kind, address) in addresses {
        if address.is_empty() {
            continue;
        }
        let ip = address.parse::<IpAddr>().ok();
        match (kind.as_str(), ip) {
            ("Hostname" | "ExternalIP" | "InternalIP", Some(ip)) => {
                ips.insert(ip.to_string(), ip);
            }
            ("Hostname" | "ExternalDNS" | "InternalDNS", _) => {
                names.insert(address.clone());
            }
            _ => {}
        }
    }
    (names.into_iter().collect(), ips.into_values().collect())
}

/// The subject alternative names of a PEM chain's leaf.
fn leaf_sans(certs_pem: &str) -> Option<(Vec<String>, Vec<IpAddr>)> {
    let block = store::blocks(certs_pem)
        .ok()?
        .into_iter()
        .find(|b| b.label == "CERTIFICATE")?;
    let der = store::block_der(&block).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let mut names = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.extend(<[u8; 4]>::try_from(*b).ok().map(IpAddr::from)),
                    16 => ips.extend(<[u8; 16]>::try_from(*b).ok().map(IpAddr::from)),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some((names, ips))
}

/// client-go's `certSatisfiesTemplate` for the serving template: the node's CN, the
/// nodes group, every wanted DNS name and IP present, not expired.
pub fn satisfies(pair: &Pair, node: &str, names: &[String], ips: &[IpAddr]) -> bool {
    if !super::satisfies_template(&pair.leaf, node) || pair.leaf.expired(SystemTime::now()) {
        return false;
    }
    let Some((have_names, have_ips)) = leaf_sans(&pair.certs_pem) else {
        return false;
    };
    names.iter().all(|n| have_names.contains(n)) && ips.iter().all(|i| have_ips.contains(i))
}

/// A pair as rustls serves it, with its end of validity.
#[derive(Debug, Clone)]
struct Serving {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

fn certified(pair: &Pair) -> Result<Serving, String> {
    let certs = CertificateDer::pem_slice_iter(pair.certs_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = CertifiedKey::from_der(certs, key, &provider).map_err(|e| e.to_string())?;
    Ok(Serving {
        key: Arc::new(key),
        not_after: pair.leaf.not_after,
    })
}

/// Hands each TLS handshake the serving certificate in use; none while there is
/// none or it has expired (the handshake then fails).
#[derive(Debug)]
pub struct ServingResolver {
    current: watch::Receiver<Option<Serving>>,
    _task: Arc<tokio_util::sync::DropGuard>,
}

impl ResolvesServerCert for ServingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.borrow();
        match current.as_ref() {
            Some(s) if SystemTime::now() <= s.not_after => Some(Arc::clone(&s.key)),
            Some(_) => {
                warn!("the kubelet serving certificate is expired");
                None
            }
            None => {
                tracing::debug!("no serving certificate available for the kubelet");
                None
            }
        }
    }
}

/// Loads the starting pair and spawns the task that requests and rotates the
/// serving certificate with `client` (none: standalone, the certificate is never
/// requested, as upstream without an apiserver connection).
///
/// # Errors
/// `--cert-dir` can't be made.
pub fn start(
    settings: ServingSettings,
    client: Option<kube::Client>,
) -> Result<ServingResolver, CertificateError> {
    let store = FileStore::open_prefixed(&settings.cert_dir, SERVER_PAIR_PREFIX)?;
    let initial = match store.current() {
        Ok(Some(p)) => Some(p),
        Ok(None) => fallback(&settings),
        Err(e) => {
            warn!(error = %e, "ignoring the stored serving certificate");
            fallback(&settings)
        }
    };
    crate::server::metrics::register_serving_certificate();
    let (tx, rx) = watch::channel(None);
    let mut manager = Manager {
        settings,
        store,
        current: None,
        tx,
    };
    if let Some(pair) = initial {
        info!(
            subject = %pair.leaf.common_name,
            not_after = %jiff_time(pair.leaf.not_after),
            "using the serving certificate"
        );
        manager.install(pair);
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    match client {
        Some(client) => {
            tokio::spawn(async move {
                tokio::select! {
                    () = manager.run(&client) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
        None => {
            warn!("serving certificate rotation is not enabled, no connection to the apiserver")
        }
    }
    Ok(ServingResolver {
        current: rx,
        _task: Arc::new(cancel.drop_guard()),
    })
}

fn fallback(settings: &ServingSettings) -> Option<Pair> {
    let (crt, key) = settings.fallback.as_ref()?;
    let read = |p: &PathBuf| std::fs::read_to_string(p).ok();
    let pair = store::parse_pair(&read(crt)?, &read(key)?);
    match pair {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(cert = %crt.display(), error = %e, "ignoring --tls-cert-file");
            None
        }
    }
}

struct Manager {
    settings: ServingSettings,
    store: FileStore,
    current: Option<Pair>,
    tx: watch::Sender<Option<Serving>>,
}

impl Manager {
    async fn run(&mut self, client: &kube::Client) {
        let (names, ips) = hostnames_and_ips(&self.settings.addresses);
        if names.is_empty() && ips.is_empty() {
            // Upstream's template is nil without addresses: nothing is requested.
            warn!("the node has no addresses: no serving certificate is requested");
            return;
        }
        info!("serving certificate rotation is enabled");
        loop {
            let now = SystemTime::now();
            let node = &self.settings.node_name;
            let deadline = match &self.current {
                Some(pair) if satisfies(pair, node, &names, &ips) => {
                    let d = rotation_deadline(&pair.leaf, fastrand::f64());
                    info!(
                        expiration = %jiff_time(pair.leaf.not_after),
                        deadline = %jiff_time(d),
                        "serving certificate rotation deadline determined"
                    );
                    d
                }
                _ => now,
            };
            if let Ok(sleep) = deadline.duration_since(now) {
                tokio::time::sleep(sleep).await;
            }
            self.obtain(client, &names, &ips).await;
        }
    }

    /// Requests until one is stored (2 s doubling to 32 s between tries).
    async fn obtain(&mut self, client: &kube::Client, names: &[String], ips: &[IpAddr]) {
        let mut backoff = Duration::from_secs(2);
        let mut tries = 0u32;
        loop {
            match self.attempt(client, names, ips).await {
                Ok(()) => return,
                Err(e) => {
                    tries += 1;
                    crate::server::metrics::observe_serving_renew_error();
                    let wait = backoff.mul_f64(1.0 + 0.1 * fastrand::f64());
                    warn!(error = %e, tries, retry_in = ?wait, "unable to get a serving certificate; retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(32));
                }
            }
        }
    }

    async fn attempt(
        &mut self,
        client: &kube::Client,
        names: &[String],
        ips: &[IpAddr],
    ) -> Result<(), CertificateError> {
        let node = self.settings.node_name.clone();
        let key = store::generate_key()?;
        let request = csr::serving_request_pem(&key, &node, names, ips)?;
        let object = csr::object_for(
            &request,
            None,
            None,
            csr::SERVING_SIGNER,
            &csr::SERVING_USAGES,
        );
        let (name, uid) = csr::create(client, &object, &key).await?;
        info!(csr = %name, "waiting for the serving CSR {name} to be approved (kubectl certificate approve {name})");
        let cert = csr::wait_for_certificate(client, &name, &uid, WAIT).await?;
        let (pair, file) = self.store.update(&cert, &key.serialize_pem())?;
        info!(
            csr = %name,
            file = %file.display(),
            serial = %pair.leaf.serial,
            not_after = %jiff_time(pair.leaf.not_after),
            "stored the new serving certificate; new connections are served with it"
        );
        self.install(pair);
        Ok(())
    }

    fn install(&mut self, pair: Pair) {
        match certified(&pair) {
            Ok(s) => {
                crate::server::metrics::observe_serving_certificate(s.not_after);
                self.tx.send_replace(Some(s));
            }
            Err(e) => warn!(error = %e, "the serving certificate cannot be served"),
        }
        self.current = Some(pair);
    }
}

#[cfg(test)]
mod tests {
    use super::store::testing::cert;
    use super::*;

    fn addr(kind: &str, a: &str) -> (String, String) {
        (kind.to_owned(), a.to_owned())
    }

    #[test]
    fn addresses_become_sorted_unique_names_and_ips_as_upstream() {
        let (names, ips) = hostnames_and_ips(&[
            addr("InternalIP", "10.0.0.5"),
            addr("Hostname", "node-b"),
            addr("ExternalDNS", "a.example.com"),
            addr("InternalIP", "10.0.0.5"),
            addr("ExternalIP", "1.2.3.4"),
            addr("Hostname", "192.168.1.1"),
            addr("InternalDNS", ""),
            addr("InternalIP", "not-an-ip"),
        ]);
        assert_eq!(names, ["a.example.com", "node-b"]);
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["1.2.3.4", "10.0.0.5", "192.168.1.1"]);
    }

    #[test]
    fn the_serving_request_carries_the_names_and_the_csr_the_serving_signer() {
        use x509_parser::prelude::FromDer as _;
        let key = store::generate_key().expect("key");
        let ip: IpAddr = "10.0.0.5".parse().expect("ip");
        let pem =
            csr::serving_request_pem(&key, "n1", &["host1".to_owned()], &[ip]).expect("request");
        let block = store::blocks(&pem).expect("pem").remove(0);
        let der = store::block_der(&block).expect("der");
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .expect("parse");
        assert_eq!(
            req.certification_request_info.subject.to_string(),
            "O=system:nodes, CN=system:node:n1"
        );
        let sans: Vec<String> = req
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
        assert_eq!(sans, ["DNSName(host1)", "IPAddress(0a:00:00:05)"]);
        let obj = csr::object_for(&pem, None, None, csr::SERVING_SIGNER, &csr::SERVING_USAGES);
        assert_eq!(obj.spec.signer_name, "kubernetes.io/kubelet-serving");
        assert_eq!(
            obj.spec.usages.as_deref(),
            Some(&["digital signature".to_owned(), "server auth".to_owned()][..])
        );
        assert_eq!(obj.metadata.generate_name.as_deref(), Some("csr-"));
    }

    #[test]
    fn a_certificate_without_the_nodes_addresses_does_not_satisfy_the_template() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        // The test CA's certificates carry no SANs.
        let (c, k) = cert("system:node:n", &["system:nodes"], now - hour, now + hour);
        let pair = store::parse_pair(&c, &k).expect("pair");
        assert!(satisfies(&pair, "n", &[], &[]));
        assert!(!satisfies(&pair, "n", &["host1".to_owned()], &[]));
        assert!(!satisfies(&pair, "m", &[], &[]));
        let (c, k) = cert(
            "system:node:n",
            &["system:nodes"],
            now - hour,
            now - hour / 2,
        );
        let expired = store::parse_pair(&c, &k).expect("pair");
        assert!(!satisfies(&expired, "n", &[], &[]));
        assert!(certified(&pair).is_ok());
    }
}
