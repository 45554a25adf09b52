//! The node's `certificates.k8s.io/v1` CertificateSigningRequest, as upstream's
//! `bootstrap.requestNodeCertificate` and client-go's `util/certificate/csr`: the
//! PKCS#10 request for `O=system:nodes, CN=system:node:<node>`, the signer
//! `kubernetes.io/kube-apiserver-client-kubelet`, the usages `digital signature` and
//! `client auth` (an ECDSA key: no `key encipherment`), the bootstrap name
//! `node-csr-<digest>` (so a restarted agent finds the CSR it filed with the same
//! key), creation that reuses a compatible CSR of that name, and the wait for the
//! certificate through a watch on that one name.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};
use rcgen::PublicKeyData as _;
use tracing::{debug, info};
use x509_parser::prelude::FromDer as _;

use super::CertificateError;

/// The signer of kubelet client certificates.
pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The organization of every node's client certificate.
pub const NODES_GROUP: &str = "system:nodes";
/// How often a pending CSR is mentioned in the log again.
const WAIT_REMINDER: Duration = Duration::from_secs(60);
/// client-go's `DefaultKubeletClientGetUsages` for a non-RSA key.
pub const USAGES: [&str; 2] = ["digital signature", "client auth"];

/// The signer of kubelet serving certificates (`serverTLSBootstrap`).
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// client-go's `DefaultKubeletServingGetUsages` for a non-RSA key.
pub const SERVING_USAGES: [&str; 2] = ["digital signature", "server auth"];

/// The subject CN of `node`'s client certificate.
pub fn common_name(node: &str) -> String {
    format!("system:node:{node}")
}

/// The PEM `CERTIFICATE REQUEST` for `node`, signed by `key`: subject
/// `O=system:nodes, CN=system:node:<node>` (Go's attribute order), no extensions.
///
/// # Errors
/// The crypto library fails.
pub fn request_pem(key: &rcgen::KeyPair, node: &str) -> Result<String, CertificateError> {
    serving_request_pem(key, node, &[], &[])
}

/// The PEM `CERTIFICATE REQUEST` for `node`'s serving certificate: the client
/// request's subject with the DNS names then the IPs as subject alternative names
/// (Go's order), as upstream's server certificate template.
///
/// # Errors
/// The crypto library fails, or a name is not a valid DNS name.
pub fn serving_request_pem(
    key: &rcgen::KeyPair,
    node: &str,
    dns_names: &[String],
    ips: &[std::net::IpAddr],
) -> Result<String, CertificateError> {
    let mut params = rcgen::CertificateParams::default();
    for name in dns_names {
        let name =
            rcgen::string::Ia5String::try_from(name.as_str()).map_err(CertificateError::Csr)?;
        params.subject_alt_names.push(rcgen::SanType::DnsName(name));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, NODES_GROUP);
    dn.push(rcgen::DnType::CommonName, common_name(node));
    params.distinguished_name = dn;
    params
        .serialize_request(key)
        .and_then(|r| r.pem())
        .map_err(CertificateError::Csr)
}

/// Upstream's `digestedName`: `node-csr-` and the unpadded URL-safe base64 of the
/// SHA-512/256 over the public key (DER SubjectPublicKeyInfo), the CN, the
/// organizations and the usages, each written base64-encoded and followed by `|`.
pub fn digested_name(spki_der: &[u8], cn: &str, orgs: &[&str], usages: &[&str]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let encode = |d: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
    let mut hash = sha2::Sha512_256::new();
    let mut write = |d: &[u8]| {
        hash.update(encode(d).as_bytes());
        hash.update(b"|");
    };
    write(spki_der);
    write(cn.as_bytes());
    for o in orgs {
        write(o.as_bytes());
    }
    for u in usages {
        write(u.as_bytes());
    }
    format!("node-csr-{}", encode(&hash.finalize()))
}

/// The bootstrap CSR name for `key` and `node`.
pub fn bootstrap_name(key: &rcgen::KeyPair, node: &str) -> String {
    digested_name(
        &key.subject_public_key_info(),
        &common_name(node),
        &[NODES_GROUP],
        &USAGES,
    )
}

/// The CSR object to create: `name` for a bootstrap request, else `generateName:
/// csr-` as client-go's certificate manager.
pub fn object(
    request_pem: &str,
    name: Option<&str>,
    expiration: Option<Duration>,
) -> CertificateSigningRequest {
    object_for(request_pem, name, expiration, SIGNER, &USAGES)
}

/// As [`object`], for `signer` with `usages`.
pub fn object_for(
    request_pem: &str,
    name: Option<&str>,
    expiration: Option<Duration>,
    signer: &str,
    usages: &[&str],
) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: name.map(str::to_owned),
            generate_name: name.is_none().then(|| "csr-".to_owned()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request_pem.as_bytes().to_vec()),
            signer_name: signer.to_owned(),
            usages: Some(usages.iter().map(|u| (*u).to_owned()).collect()),
            expiration_seconds: expiration.map(|d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX)),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    }
}

/// Creates the CSR; when one of that name exists already (a bootstrap request filed
/// before a restart), reuses it if it is compatible: same subject and signer, and
/// for the same public key. Returns its name and UID.
///
/// # Errors
/// The apiserver refuses or does not answer, or the existing CSR is not ours.
pub async fn create(
    client: &kube::Client,
    csr: &CertificateSigningRequest,
    key: &rcgen::KeyPair,
) -> Result<(String, String), CertificateError> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let created = tokio::time::timeout(
        crate::cluster::REQUEST_TIMEOUT,
        api.create(&PostParams::default(), csr),
    )
    .await
    .map_err(|_| CertificateError::Timeout {
        what: "create CertificateSigningRequest",
    })?;
    let existing = match (created, &csr.metadata.name) {
        (Ok(c), _) => return name_and_uid(&c),
        (Err(kube::Error::Api(s)), Some(name)) if s.code == 409 => {
            info!(csr = %name, "csr for this node already exists, reusing");
            api.get(name)
                .await
                .map_err(|source| CertificateError::Api {
                    verb: "get",
                    name: name.clone(),
                    source,
                })?
        }
        (Err(source), name) => {
            return Err(CertificateError::Api {
                verb: "create",
                name: name.clone().unwrap_or_else(|| "csr-…".to_owned()),
                source,
            });
        }
    };
    ensure_compatible(&existing, csr, key)?;
    name_and_uid(&existing)
}

fn name_and_uid(csr: &CertificateSigningRequest) -> Result<(String, String), CertificateError> {
    match (&csr.metadata.name, &csr.metadata.uid) {
        (Some(n), Some(u)) => Ok((n.clone(), u.clone())),
        _ => Err(CertificateError::Incompatible(
            "the apiserver returned a CSR without name or uid".to_owned(),
        )),
    }
}

/// client-go's `ensureCompatible`, comparing the request's subject and public key.
fn ensure_compatible(
    existing: &CertificateSigningRequest,
    wanted: &CertificateSigningRequest,
    key: &rcgen::KeyPair,
) -> Result<(), CertificateError> {
    let bad = |m: String| CertificateError::Incompatible(m);
    let parse = |bytes: &[u8]| -> Result<(String, Vec<u8>), CertificateError> {
        let text = std::str::from_utf8(bytes).map_err(|_| bad("request is not PEM".into()))?;
        let block = super::store::blocks(text)
            .map_err(bad)?
            .into_iter()
            .find(|b| b.label == "CERTIFICATE REQUEST")
            .ok_or_else(|| bad("PEM block type must be CERTIFICATE REQUEST".into()))?;
        let der = super::store::block_der(&block).map_err(bad)?;
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .map_err(|e| bad(format!("unable to parse csr: {e}")))?;
        let info = &req.certification_request_info;
        Ok((info.subject.to_string(), info.subject_pki.raw.to_vec()))
    };
    let (old_subject, old_key) = parse(&existing.spec.request.0)?;
    let (new_subject, _) = parse(&wanted.spec.request.0)?;
    if old_subject != new_subject {
        return Err(bad(format!(
            "csr subjects differ: new: {new_subject}, orig: {old_subject}"
        )));
    }
    if existing.spec.signer_name != wanted.spec.signer_name {
        return Err(bad(format!(
            "csr signerNames differ: new {:?}, orig: {:?}",
            wanted.spec.signer_name, existing.spec.signer_name
        )));
    }
    if old_key != key.subject_public_key_info() {
        return Err(bad("the csr was made for another key".into()));
    }
    Ok(())
}

/// What a CSR's status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Neither approved nor denied yet.
    Pending,
    /// Approved, the signer has not issued yet.
    Approved,
    /// The certificate (PEM).
    Issued(String),
}

/// Reads a CSR's conditions as client-go's `WaitForCertificate` does.
///
/// # Errors
/// Denied, Failed, or a different UID (the CSR was replaced).
pub fn progress(csr: &CertificateSigningRequest, uid: &str) -> Result<Progress, CertificateError> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    if csr.metadata.uid.as_deref() != Some(uid) {
        return Err(CertificateError::UidChanged(name));
    }
    let status = csr.status.as_ref();
    let mut approved = false;
    for c in status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        let reason = c.reason.clone().unwrap_or_default();
        let message = c.message.clone().unwrap_or_default();
        match c.type_.as_str() {
            "Denied" => {
                return Err(CertificateError::Denied {
                    name,
                    reason,
                    message,
                });
            }
            "Failed" => {
                return Err(CertificateError::Failed {
                    name,
                    reason,
                    message,
                });
            }
            "Approved" => approved = true,
            _ => {}
        }
    }
    let issued = status
        .and_then(|s| s.certificate.as_ref())
        .filter(|c| !c.0.is_empty());
    Ok(match (approved, issued) {
        (true, Some(cert)) => Progress::Issued(String::from_utf8_lossy(&cert.0).into_owned()),
        (true, None) => Progress::Approved,
        (false, _) => Progress::Pending,
    })
}

/// Waits, up to `limit`, for the certificate of the CSR `name` (UID `uid`): a list
/// then a watch on that name, listed again whenever the watch ends or fails.
///
/// # Errors
/// Denied, Failed, deleted or replaced, or `limit` passed.
pub async fn wait_for_certificate(
    client: &kube::Client,
    name: &str,
    uid: &str,
    limit: Duration,
) -> Result<String, CertificateError> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let waiting = async {
        let mut said_approved = false;
        let mut check =
            |csr: &CertificateSigningRequest| -> Result<Option<String>, CertificateError> {
                match progress(csr, uid)? {
                    Progress::Issued(cert) => {
                        info!(csr = %name, "certificate signing request is issued");
                        Ok(Some(cert))
                    }
                    Progress::Approved => {
                        if !said_approved {
                            said_approved = true;
                            info!(csr = %name, "certificate signing request is approved, waiting to be issued");
                        }
                        Ok(None)
                    }
                    Progress::Pending => Ok(None),
                }
            };
        let fields = format!("metadata.name={name}");
        loop {
            let list = match api.list(&ListParams::default().fields(&fields)).await {
                Ok(l) => l,
                Err(e) => {
                    debug!(csr = %name, error = %e, "listing the csr failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(csr) = list.items.first() else {
                return Err(CertificateError::Deleted(name.to_owned()));
            };
            if let Some(cert) = check(csr)? {
                return Ok(cert);
            }
            let rv = list.metadata.resource_version.unwrap_or_default();
            let params = WatchParams::default().fields(&fields).timeout(290);
            let stream = match api.watch(&params, &rv).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(csr = %name, error = %e, "watching the csr failed; listing again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut stream = stream.boxed();
            while let Ok(Some(event)) = stream.try_next().await {
                match event {
                    WatchEvent::Added(csr) | WatchEvent::Modified(csr) => {
                        if let Some(cert) = check(&csr)? {
                            return Ok(cert);
                        }
                    }
                    WatchEvent::Deleted(_) => {
                        return Err(CertificateError::Deleted(name.to_owned()));
                    }
                    WatchEvent::Bookmark(_) => {}
                    // 410 Gone and the like: list again.
                    WatchEvent::Error(e) => {
                        debug!(csr = %name, error = %e.message, "csr watch error; listing again");
                        break;
                    }
                }
            }
        }
    };
    // A reminder while nobody has approved, so the wait is visible in the log.
    let reminder = async {
        let mut tick = tokio::time::interval(WAIT_REMINDER);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Ok(Some(csr)) = api.get_opt(name).await
                && progress(&csr, uid).is_ok_and(|p| p == Progress::Pending)
            {
                info!(csr = %name, "still waiting for the CSR {name} to be approved (kubectl certificate approve {name})");
            }
        }
    };
    let waiting = async {
        tokio::select! {
            r = waiting => r,
            () = reminder => Err(CertificateError::NotIssued { name: name.to_owned(), limit }),
        }
    };
    tokio::time::timeout(limit, waiting)
        .await
        .map_err(|_| CertificateError::NotIssued {
            name: name.to_owned(),
            limit,
        })?
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestStatus,
    };

    use super::*;

    #[test]
    fn the_request_names_the_node_as_upstream() {
        let key = super::super::store::generate_key().expect("key");
        let pem = request_pem(&key, "node-1").expect("csr");
        let block = super::super::store::blocks(&pem).expect("pem").remove(0);
        assert_eq!(block.label, "CERTIFICATE REQUEST");
        let der = super::super::store::block_der(&block).expect("der");
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .expect("parse");
        let info = &req.certification_request_info;
        // Go's pkix order: O before CN.
        assert_eq!(
            info.subject.to_string(),
            "O=system:nodes, CN=system:node:node-1"
        );
        assert_eq!(
            info.subject_pki.raw,
            key.subject_public_key_info().as_slice()
        );
        assert!(
            req.requested_extensions()
                .is_none_or(|mut e| e.next().is_none())
        );
        let obj = object(&pem, None, None);
        assert_eq!(obj.metadata.generate_name.as_deref(), Some("csr-"));
        assert_eq!(obj.spec.signer_name, SIGNER);
        assert_eq!(
            obj.spec.usages.as_deref(),
            Some(&["digital signature".to_owned(), "client auth".to_owned()][..])
        );
        let named = object(&pem, Some("node-csr-x"), Some(Duration::from_secs(600)));
        assert_eq!(named.metadata.name.as_deref(), Some("node-csr-x"));
        assert_eq!(named.metadata.generate_name, None);
        assert_eq!(named.spec.expiration_seconds, Some(600));
    }

    #[test]
    fn the_digested_name_matches_upstreams() {
        // Go: digestedName over these inputs prints this (the hash of
        // "AQID|c3lzdGVtOm5vZGU6bjE|c3lzdGVtOm5vZGVz|ZGlnaXRhbCBzaWduYXR1cmU|Y2xpZW50IGF1dGg|"
        // under SHA-512/256, URL-safe base64 without padding).
        let name = digested_name(&[1, 2, 3], "system:node:n1", &["system:nodes"], &USAGES);
        use sha2::Digest as _;
        let stream =
            "AQID|c3lzdGVtOm5vZGU6bjE|c3lzdGVtOm5vZGVz|ZGlnaXRhbCBzaWduYXR1cmU|Y2xpZW50IGF1dGg|";
        use base64::Engine as _;
        let want = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha512_256::digest(stream.as_bytes()));
        assert_eq!(name, format!("node-csr-{want}"));
        assert_eq!(name.len(), "node-csr-".len() + 43);
        // A different key or node gives a different name; the same, the same.
        let key = super::super::store::generate_key().expect("key");
        assert_eq!(bootstrap_name(&key, "a"), bootstrap_name(&key, "a"));
        assert_ne!(bootstrap_name(&key, "a"), bootstrap_name(&key, "b"));
    }

    fn with_conditions(uid: &str, conds: &[&str], cert: Option<&str>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            metadata: ObjectMeta {
                name: Some("node-csr-x".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            spec: CertificateSigningRequestSpec::default(),
            status: Some(CertificateSigningRequestStatus {
                conditions: Some(
                    conds
                        .iter()
                        .map(|t| CertificateSigningRequestCondition {
                            type_: (*t).to_owned(),
                            reason: Some("R".into()),
                            message: Some("M".into()),
                            status: "True".into(),
                            ..CertificateSigningRequestCondition::default()
                        })
                        .collect(),
                ),
                certificate: cert.map(|c| ByteString(c.as_bytes().to_vec())),
            }),
        }
    }

    #[test]
    fn progress_reads_conditions_as_client_go() {
        let p = |c: &CertificateSigningRequest| progress(c, "u1");
        assert_eq!(
            p(&with_conditions("u1", &[], None)).expect("ok"),
            Progress::Pending
        );
        assert_eq!(
            p(&with_conditions("u1", &["Approved"], None)).expect("ok"),
            Progress::Approved
        );
        assert_eq!(
            p(&with_conditions("u1", &["Approved"], Some("PEM"))).expect("ok"),
            Progress::Issued("PEM".into())
        );
        let denied = p(&with_conditions("u1", &["Denied"], None)).expect_err("denied");
        assert_eq!(
            denied.to_string(),
            "certificate signing request node-csr-x is denied, reason: R, message: M"
        );
        assert!(matches!(
            p(&with_conditions("u1", &["Approved", "Failed"], Some("PEM"))),
            Err(CertificateError::Failed { .. })
        ));
        assert!(matches!(
            p(&with_conditions("u2", &["Approved"], Some("PEM"))),
            Err(CertificateError::UidChanged(_))
        ));
    }

    #[test]
    fn an_existing_csr_is_reused_only_for_the_same_key_and_subject() {
        let key = super::super::store::generate_key().expect("key");
        let other = super::super::store::generate_key().expect("key");
        let mine = object(&request_pem(&key, "a").expect("csr"), Some("n"), None);
        ensure_compatible(&mine, &mine, &key).expect("same");
        let theirs = object(&request_pem(&other, "a").expect("csr"), Some("n"), None);
        assert!(ensure_compatible(&theirs, &mine, &key).is_err());
        let other_node = object(&request_pem(&key, "b").expect("csr"), Some("n"), None);
        assert!(ensure_compatible(&other_node, &mine, &key).is_err());
    }
}
