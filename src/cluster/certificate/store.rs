//! The client certificate store in `--cert-dir`, as client-go's `certificate.FileStore`
//! with the `kubelet-client` prefix: each issued certificate is written with its key
//! as `kubelet-client-<YYYY-MM-DD-HH-MM-SS>.pem` (certificates first, then the key,
//! mode 0600), and `kubelet-client-current.pem` is a symlink to the one in use, moved
//! by making `kubelet-client-updated.pem` and renaming it over (so a reader sees the
//! old pair or the new one, never neither). Old pairs are kept, as upstream. Also the
//! PEM handling the rest of the module shares: splitting a pair file into its
//! certificates and key, and reading the leaf's validity and subject.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::CertificateError;

/// The pair name prefix of the kubelet's client certificate.
pub const PAIR_PREFIX: &str = "kubelet-client";
/// The pair name prefix of the kubelet's serving certificate (`serverTLSBootstrap`).
pub const SERVER_PAIR_PREFIX: &str = "kubelet-server";
/// Where a bootstrap key waits for its certificate (upstream's `tmpPrivateKeyFile`),
/// so a restart during the wait files the same CSR again.
pub const TMP_KEY_FILE: &str = "kubelet-client.key.tmp";

/// What the agent needs to know about a client certificate: its validity and who it
/// names, and the SHA-256 of its DER (the apiserver's `X509SHA256=` credential id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Subject CN.
    pub common_name: String,
    /// Subject O values.
    pub organizations: Vec<String>,
    /// Serial number, hex with colons as x509-parser prints it.
    pub serial: String,
    /// Lower-case hex SHA-256 of the certificate's DER.
    pub sha256: String,
}

impl Leaf {
    /// Whether the certificate has expired at `now` (upstream: `now.After(NotAfter)`).
    pub fn expired(&self, now: SystemTime) -> bool {
        now > self.not_after
    }

    /// The certificate's total lifetime.
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }
}

/// A certificate chain and its private key, as PEM text, with the leaf parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct Pair {
    /// The CERTIFICATE blocks, leaf first.
    pub certs_pem: String,
    /// The private key block.
    pub key_pem: String,
    /// The first certificate.
    pub leaf: Leaf,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Pair")
            .field("leaf", &self.leaf)
            .finish_non_exhaustive()
    }
}

/// One PEM block: its label and its full text (BEGIN to END line, newline ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// `CERTIFICATE`, `EC PRIVATE KEY`, …
    pub label: String,
    /// The block's text.
    pub text: String,
}

/// The PEM blocks in `text`, in order; text outside blocks is ignored.
///
/// # Errors
/// A BEGIN line without its END line.
pub fn blocks(text: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim_end();
        match &mut current {
            None => {
                if let Some(label) = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"))
                {
                    current = Some((label.to_owned(), format!("{line}\n")));
                }
            }
            Some((label, body)) => {
                body.push_str(line);
                body.push('\n');
                if line == format!("-----END {label}-----") {
                    out.push(Block {
                        label: std::mem::take(label),
                        text: std::mem::take(body),
                    });
                    current = None;
                }
            }
        }
    }
    if let Some((label, _)) = current {
        return Err(format!("PEM block {label:?} has no END line"));
    }
    Ok(out)
}

/// The DER inside a PEM block.
///
/// # Errors
/// Bad base64.
pub fn block_der(block: &Block) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let body: String = block
        .text
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.contains(':'))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| format!("PEM block {:?}: {e}", block.label))
}

/// Parses a certificate's DER into a [`Leaf`].
///
/// # Errors
/// Not an X.509 certificate.
pub fn parse_leaf(der: &[u8]) -> Result<Leaf, String> {
    use sha2::Digest as _;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        }
    };
    let validity = cert.validity();
    let subject = cert.subject();
    Ok(Leaf {
        not_before: time(validity.not_before),
        not_after: time(validity.not_after),
        common_name: subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_owned(),
        organizations: subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect(),
        serial: cert.raw_serial_as_string(),
        sha256: sha2::Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

/// Splits certificates and key out of `certs` and `key` text (the same text for a
/// pair file, as `tls.LoadX509KeyPair(f, f)`): every CERTIFICATE block of `certs`,
/// the first private key block of `key`.
///
/// # Errors
/// No certificate, no key, or a leaf that does not parse.
pub fn parse_pair(certs: &str, key: &str) -> Result<Pair, String> {
    let cert_blocks: Vec<Block> = blocks(certs)?
        .into_iter()
        .filter(|b| b.label == "CERTIFICATE")
        .collect();
    let first = cert_blocks.first().ok_or("no CERTIFICATE block")?;
    let leaf = parse_leaf(&block_der(first)?)?;
    let key = blocks(key)?
        .into_iter()
        .find(|b| b.label.ends_with("PRIVATE KEY"))
        .ok_or("no PRIVATE KEY block")?;
    Ok(Pair {
        certs_pem: cert_blocks.iter().map(|b| b.text.as_str()).collect(),
        key_pem: key.text,
        leaf,
    })
}

/// The `kubelet-client` pairs in one directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    prefix: &'static str,
}

impl FileStore {
    /// The store in `dir` (made if missing, mode 0755 as upstream), finishing a
    /// symlink move a crash interrupted (`-updated` left, `-current` missing).
    ///
    /// # Errors
    /// The directory can't be made, or `-updated` is not a symlink.
    pub fn open(dir: &Path) -> Result<Self, CertificateError> {
        Self::open_prefixed(dir, PAIR_PREFIX)
    }

    /// As [`FileStore::open`], for the pairs named `<prefix>-…` (`kubelet-server`).
    ///
    /// # Errors
    /// As [`FileStore::open`].
    pub fn open_prefixed(dir: &Path, prefix: &'static str) -> Result<Self, CertificateError> {
        std::fs::create_dir_all(dir).map_err(|source| CertificateError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let store = Self {
            dir: dir.to_owned(),
            prefix,
        };
        let current = store.current_path();
        let updated = store.file("updated");
        if std::fs::symlink_metadata(&current).is_err()
            && let Ok(meta) = std::fs::symlink_metadata(&updated)
        {
            if !meta.file_type().is_symlink() {
                return Err(CertificateError::NotSymlink(updated));
            }
            std::fs::rename(&updated, &current).map_err(|source| CertificateError::Io {
                path: current.clone(),
                source,
            })?;
        }
        Ok(store)
    }

    /// The directory.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, qualifier: &str) -> PathBuf {
        self.dir.join(format!("{}-{qualifier}.pem", self.prefix))
    }

    /// `<dir>/kubelet-client-current.pem`.
    pub fn current_path(&self) -> PathBuf {
        self.file("current")
    }

    /// The pair `-current.pem` names, or `None` when there is none.
    ///
    /// # Errors
    /// The file exists but can't be read or holds no usable pair.
    pub fn current(&self) -> Result<Option<Pair>, CertificateError> {
        let path = self.current_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_pair(&text, &text)
                .map(Some)
                .map_err(|reason| CertificateError::Pem { path, reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CertificateError::Io { path, source }),
        }
    }

    /// Writes `certs` (PEM, leaf first) and `key` as a new timestamped pair file and
    /// points `-current.pem` at it; returns the pair and its file.
    ///
    /// # Errors
    /// Bad PEM, or a write, symlink or rename that fails; `-current.pem` being a
    /// regular file (someone else's, left alone).
    pub fn update(&self, certs: &str, key: &str) -> Result<(Pair, PathBuf), CertificateError> {
        let stamp = jiff::Zoned::now().strftime("%Y-%m-%d-%H-%M-%S").to_string();
        let path = self.file(&stamp);
        let pair = parse_pair(certs, key).map_err(|reason| CertificateError::Pem {
            path: path.clone(),
            reason,
        })?;
        let io = |source| CertificateError::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.write_all(pair.certs_pem.as_bytes()).map_err(io)?;
        f.write_all(pair.key_pem.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        self.point_current_at(&path)?;
        Ok((pair, path))
    }

    fn point_current_at(&self, target: &Path) -> Result<(), CertificateError> {
        let current = self.current_path();
        if let Ok(meta) = std::fs::symlink_metadata(&current)
            && !meta.file_type().is_symlink()
        {
            return Err(CertificateError::NotSymlink(current));
        }
        let updated = self.file("updated");
        if let Ok(meta) = std::fs::symlink_metadata(&updated) {
            if !meta.file_type().is_symlink() {
                return Err(CertificateError::NotSymlink(updated));
            }
            std::fs::remove_file(&updated).map_err(|source| CertificateError::Io {
                path: updated.clone(),
                source,
            })?;
        }
        let target = std::path::absolute(target).map_err(|source| CertificateError::Io {
            path: target.to_owned(),
            source,
        })?;
        std::os::unix::fs::symlink(&target, &updated).map_err(|source| CertificateError::Io {
            path: updated.clone(),
            source,
        })?;
        // rename(2) replaces the old symlink atomically.
        std::fs::rename(&updated, &current).map_err(|source| CertificateError::Io {
            path: current,
            source,
        })
    }

    /// The key waiting for a bootstrap certificate: the one in `kubelet-client.key.tmp`
    /// if it parses, else a new ECDSA P-256 key written there (mode 0600), as
    /// upstream's `keyutil.LoadOrGenerateKeyFile`.
    ///
    /// # Errors
    /// Key generation or the write fails.
    pub fn load_or_generate_key(&self) -> Result<rcgen::KeyPair, CertificateError> {
        let path = self.dir.join(TMP_KEY_FILE);
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(key) = rcgen::KeyPair::from_pem(&text)
        {
            return Ok(key);
        }
        let key = generate_key()?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| CertificateError::Io {
                path: path.clone(),
                source,
            })?;
        f.write_all(key.serialize_pem().as_bytes())
            .map_err(|source| CertificateError::Io { path, source })?;
        Ok(key)
    }

    /// Removes the bootstrap key once its certificate is stored.
    pub fn remove_tmp_key(&self) {
        let path = self.dir.join(TMP_KEY_FILE);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(path = %path.display(), error = %e, "cannot remove the bootstrap key");
        }
    }
}

/// A new ECDSA P-256 key (upstream's choice for kubelet client keys).
///
/// # Errors
/// The crypto library fails.
pub fn generate_key() -> Result<rcgen::KeyPair, CertificateError> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CertificateError::Key)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Certificates signed by a throwaway CA, for the module's tests.

    use std::time::{Duration, SystemTime};

    /// A PEM certificate for `cn`/`orgs` with the given validity, and its key PEM.
    pub fn cert(
        cn: &str,
        orgs: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (String, String) {
        let ca_key = super::generate_key().expect("ca key");
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = super::generate_key().expect("key");
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        for o in orgs {
            dn.push(rcgen::DnType::OrganizationName, *o);
        }
        dn.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    fn offset(t: SystemTime) -> time::OffsetDateTime {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).expect("secs")).expect("time")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::cert;
    use super::*;

    fn hours(h: u64) -> Duration {
        Duration::from_secs(h * 3600)
    }

    #[test]
    fn pairs_split_and_leaf_fields_read() {
        let now = SystemTime::now();
        let (c, k) = cert(
            "system:node:n1",
            &["system:nodes"],
            now - hours(1),
            now + hours(9),
        );
        let both = format!("{c}{k}");
        let pair = parse_pair(&both, &both).expect("pair");
        assert_eq!(pair.leaf.common_name, "system:node:n1");
        assert_eq!(pair.leaf.organizations, ["system:nodes"]);
        assert_eq!(pair.leaf.lifetime().as_secs() / 3600, 10);
        assert!(!pair.leaf.expired(now));
        assert!(pair.leaf.expired(now + hours(10)));
        assert_eq!(pair.certs_pem.trim(), c.trim());
        assert!(pair.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(pair.leaf.sha256.len(), 64);
        assert!(parse_pair(&k, &k).is_err(), "no certificate");
        assert!(parse_pair(&c, &c).is_err(), "no key");
        assert!(blocks("-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
    }

    #[test]
    fn update_writes_a_pair_file_and_moves_the_current_symlink() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = FileStore::open(&dir.path().join("pki")).expect("store");
        assert!(store.current().expect("read").is_none());
        let now = SystemTime::now();
        let (c1, k1) = cert("system:node:a", &["system:nodes"], now, now + hours(1));
        let (p1, f1) = store.update(&c1, &k1).expect("update");
        let name = f1.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(
            name.starts_with("kubelet-client-20") && name.ends_with(".pem"),
            "{name}"
        );
        let mode = std::fs::metadata(&f1).expect("meta").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_link(store.current_path()).expect("link"), f1);
        assert_eq!(store.current().expect("read"), Some(p1));

        // A second pair in the same second overwrites that file, as upstream; a
        // later one gets its own. Either way -current names the new pair.
        let (c2, k2) = cert("system:node:a", &["system:nodes"], now, now + hours(2));
        let (p2, _) = store.update(&c2, &k2).expect("update");
        assert_eq!(store.current().expect("read"), Some(p2));
        assert!(!store.dir().join("kubelet-client-updated.pem").exists());

        // A regular file where the symlink belongs is not ours to replace.
        let other = FileStore::open(&dir.path().join("other")).expect("store");
        std::fs::write(other.current_path(), "x").expect("write");
        assert!(matches!(
            other.update(&c2, &k2),
            Err(CertificateError::NotSymlink(_))
        ));
    }

    #[test]
    fn an_interrupted_move_is_finished_on_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let target = dir.path().join("kubelet-client-2026-01-01-00-00-00.pem");
        let now = SystemTime::now();
        let (c, k) = cert("system:node:a", &["system:nodes"], now, now + hours(1));
        std::fs::write(&target, format!("{c}{k}")).expect("write");
        std::os::unix::fs::symlink(&target, dir.path().join("kubelet-client-updated.pem"))
            .expect("link");
        let store = FileStore::open(dir.path()).expect("store");
        assert_eq!(
            std::fs::read_link(store.current_path()).expect("link"),
            target
        );
    }

    #[test]
    fn the_bootstrap_key_is_reused_until_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = FileStore::open(dir.path()).expect("store");
        let k1 = store.load_or_generate_key().expect("key");
        let k2 = store.load_or_generate_key().expect("key");
        assert_eq!(k1.serialize_der(), k2.serialize_der());
        store.remove_tmp_key();
        let k3 = store.load_or_generate_key().expect("key");
        assert_ne!(k1.serialize_der(), k3.serialize_der());
    }
}
