//! The secure port's TLS: the serving certificate from `--tls-cert-file` and
//! `--tls-private-key-file`, or upstream's self-signed pair under the cert dir
//! (`kubelet.crt`, `kubelet.key`, made once and reused); client certificates verified
//! against `--client-ca-file` when given (asked for, not required: a request without
//! one goes on to the token and anonymous authenticators, as upstream's
//! `VerifyClientCertIfGiven`). The identity of a verified client certificate is
//! user = CN, groups = O, as upstream's x509 authenticator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::authn::UserInfo;

/// Why the TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// Which flag or file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The self-signed pair could not be made or written.
    #[error("self-signed serving certificate in {dir}: {reason}")]
    SelfSigned {
        /// The cert dir.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// rustls refused the combination.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA verifier could not be built.
    #[error("--client-ca-file {path}: {reason}")]
    ClientCa {
        /// The CA bundle.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

fn pem_err(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// The file is unreadable or holds no certificate.
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(what, path, e))?;
    if certs.is_empty() {
        return Err(pem_err(what, path, "no certificate in the file"));
    }
    Ok(certs)
}

fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_err(what, path, e))
}

/// The serving pair's files: the flags', or the self-signed pair in `cert_dir`
/// (made when missing, as upstream's `kubelet.crt`/`kubelet.key`).
///
/// # Errors
/// Only one of the flags given, or the self-signed pair cannot be written.
pub fn serving_files(
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
    cert_dir: &Path,
    node_name: &str,
    ips: &[std::net::IpAddr],
) -> Result<(PathBuf, PathBuf), TlsError> {
    match (cert_file, key_file) {
        (Some(c), Some(k)) => return Ok((c.to_owned(), k.to_owned())),
        (Some(c), None) => {
            return Err(pem_err(
                "--tls-cert-file",
                c,
                "--tls-private-key-file must be given too",
            ));
        }
        (None, Some(k)) => {
            return Err(pem_err(
                "--tls-private-key-file",
                k,
                "--tls-cert-file must be given too",
            ));
        }
        (None, None) => {}
    }
    let crt = cert_dir.join("kubelet.crt");
    let key = cert_dir.join("kubelet.key");
    if read_certs("kubelet.crt", &crt).is_ok() && read_key("kubelet.key", &key).is_ok() {
        return Ok((crt, key));
    }
    let bad = |reason: String| TlsError::SelfSigned {
        dir: cert_dir.to_owned(),
        reason,
    };
    let (cert_pem, key_pem) = self_signed(node_name, ips).map_err(|e| bad(e.to_string()))?;
    std::fs::create_dir_all(cert_dir).map_err(|e| bad(e.to_string()))?;
    write_private(&key, key_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    std::fs::write(&crt, cert_pem).map_err(|e| bad(e.to_string()))?;
    tracing::info!(cert = %crt.display(), "wrote a self-signed serving certificate");
    Ok((crt, key))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// A self-signed serving pair for `node_name` (CN `<node>@<unix time>`, SANs the node
/// name, `localhost` and the node's IPs), valid a year as upstream's.
fn self_signed(
    node_name: &str,
    ips: &[std::net::IpAddr],
) -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut names = vec![node_name.to_owned(), "localhost".to_owned()];
    names.extend(ips.iter().map(ToString::to_string));
    names.push("127.0.0.1".to_owned());
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names)?;
    let now = jiff::Timestamp::now();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{node_name}@{}", now.as_second()),
    );
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let ymd = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(
            i32::from(d.year()),
            u8::try_from(d.month()).unwrap_or(1),
            u8::try_from(d.day()).unwrap_or(1),
        )
    };
    params.not_before = ymd(today.yesterday().unwrap_or(today));
    params.not_after = ymd(today.saturating_add(jiff::Span::new().years(1)));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The rustls server configuration: the serving pair, HTTP/1.1 by ALPN, and client
/// certificates verified against `client_ca` when given.
///
/// # Errors
/// Unreadable files, a key not matching the certificate, a bad CA bundle.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let certs = read_certs("--tls-cert-file", cert_file)?;
    let key = read_key("--tls-private-key-file", key_file)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = rustls::sign::CertifiedKey::from_der(certs, key, &provider)?;
    let fixed = rustls::sign::SingleCertAndKey::from(key);
    config_with(Arc::new(fixed), client_ca)
}

/// As [`server_config`], with the serving certificate chosen per handshake by
/// `certs` (the cluster-issued serving certificate, which rotates).
///
/// # Errors
/// A bad CA bundle.
pub fn config_with(
    certs: Arc<dyn rustls::server::ResolvesServerCert>,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("--client-ca-file", ca)? {
                roots.add(c).map_err(|e| TlsError::ClientCa {
                    path: ca.to_owned(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.to_owned(),
                    reason: e.to_string(),
                })?;
            builder
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(certs)
        }
        None => builder.with_no_client_auth().with_cert_resolver(certs),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The user a verified client certificate names: CN the name, each O a group.
pub fn cert_user(cert: &CertificateDer<'_>) -> Option<UserInfo> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(UserInfo {
        name,
        groups,
        ..UserInfo::default()
    })
}
