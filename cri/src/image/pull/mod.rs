//! Pulling images from a registry into containerd, as `ctr images pull` (and the CRI
//! plugin) would leave them: resolve the reference to a digest (HEAD, else GET, of the
//! manifest), follow an index to this machine's manifest, fetch the config and layers
//! into the content store (layers in parallel, bounded; each digest-verified, and
//! resumed from the ingest's offset with a `Range` request when an earlier attempt was
//! cut off), label them for containerd's GC as an import does, create the image record
//! and unpack it.
//!
//! Errors read as containerd's do (`failed to resolve reference "...": pull access
//! denied, repository does not exist or may require authorization: ...`), so the
//! agent's `ErrImagePull` messages match upstream's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::tonic::Code;
use futures::StreamExt as _;
use reqwest::header::{CONTENT_RANGE, HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use super::auth::{Credential, PullAuth};
use super::content::{BlobData, CHUNK, Desc};
use super::registry::{self, Endpoint, RegistryConfig, Session};
use super::resolve::{Source, resolve};
use super::snapshot::chain_ids;
use super::{ImageError, ImageInfo};
use crate::containerd::Containerd;

mod attempt;
mod error;
use attempt::{Attempt, Parsed, parse};
pub use error::{PullError, RequestTarget, Stage};

/// One layer download, boxed so the pull future is provably `Send`.
type LayerFetch<'f> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PullError>> + Send + 'f>>;

/// Manifests, indexes and configs larger than this are refused (as containerd does).
const MAX_DOCUMENT: u64 = 4 << 20;
/// How deep indexes may nest.
const MAX_DEPTH: usize = 8;
/// Blobs downloaded at once when the config says 0 (containerd's default).
const DEFAULT_CONCURRENT_DOWNLOADS: usize = 3;
/// How long a pull lease lives if the agent dies before deleting it.
const PULL_LEASE_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);
/// The response header carrying a manifest's digest.
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

impl Containerd {
    /// Pulls `reference` (normalized first) from its registry into containerd, unpacks
    /// it, and returns it. Credentials are `auth`'s (pull secrets) then the node's
    /// docker config, matched to the image as the kubelet's keyring does; each matching
    /// credential is tried in turn while the registry answers 401, anonymous when none
    /// match. An image whose record already points at the resolved digest is not
    /// fetched again.
    ///
    /// A pull cut off half-way registers no image; the partial blob stays in
    /// containerd's ingest (24 hours) and the next pull continues it.
    ///
    /// # Errors
    /// [`PullError`]: an invalid reference, the registry's refusals (401, 404, other
    /// statuses), network and TLS failures, content that does not match its digest or
    /// size, an image without this platform, a bad registry config, containerd errors.
    pub async fn pull_image(
        &self,
        reference: &str,
        auth: &PullAuth,
        registries: &RegistryConfig,
    ) -> Result<ImageInfo, PullError> {
        let parsed = parse(reference)?;
        let start = std::time::Instant::now();
        let mut result = Err(PullError::NoEndpoint {
            reference: parsed.name.clone(),
            host: parsed.domain.clone(),
        });
        for credential in candidates(auth, registries, &parsed.name) {
            let attempt = self.attempt(&parsed, registries, credential)?;
            result = self.pull_attempt(&attempt).await;
            if !matches!(result, Err(PullError::Unauthorized { .. })) {
                break;
            }
        }
        if let Ok(info) = &result {
            tracing::info!(image = %info.name, digest = %info.repo_digest, size = info.size, elapsed = ?start.elapsed(), "image pulled");
        }
        result
    }

    /// Resolves `reference` to the digest its registry serves now (the manifest or
    /// index digest), without fetching anything else: for `imagePullPolicy: Always`,
    /// which skips the download when that digest is already present.
    ///
    /// # Errors
    /// As [`Containerd::pull_image`]'s resolve step.
    pub async fn resolve_digest(
        &self,
        reference: &str,
        auth: &PullAuth,
        registries: &RegistryConfig,
    ) -> Result<String, PullError> {
        let parsed = parse(reference)?;
        let mut result = Err(PullError::NoEndpoint {
            reference: parsed.name.clone(),
            host: parsed.domain.clone(),
        });
        for credential in candidates(auth, registries, &parsed.name) {
            let attempt = self.attempt(&parsed, registries, credential)?;
            result = attempt.resolve().await.map(|(_, desc, _)| desc.digest);
            if !matches!(result, Err(PullError::Unauthorized { .. })) {
                break;
            }
        }
        result
    }

    fn attempt<'a>(
        &self,
        parsed: &'a Parsed,
        registries: &RegistryConfig,
        credential: Credential,
    ) -> Result<Attempt<'a>, PullError> {
        Ok(Attempt {
            parsed,
            session: Session::new(&parsed.name, &parsed.repository, credential),
            endpoints: registry::endpoints(&parsed.domain, registries, &parsed.name)?,
            max_downloads: match registries.max_concurrent_downloads {
                0 => DEFAULT_CONCURRENT_DOWNLOADS,
                n => n,
            },
        })
    }

    async fn pull_attempt(&self, a: &Attempt<'_>) -> Result<ImageInfo, PullError> {
        let name = a.parsed.name.clone();
        let (ep_index, target, body) = a.resolve().await?;
        let ep = &a.endpoints[ep_index];
        let err_image = |source| a.err_image(&ep.host, source);

        // Already here (imagePullPolicy Always on an unchanged tag): no download.
        if let Some(record) = self.image_record(&name).await.map_err(err_image)?
            && record.target.as_ref().map(Desc::from_containerd).as_ref() == Some(&target)
            && let Some(info) = self.get_image(&name).await.map_err(err_image)?
        {
            tracing::debug!(image = %name, digest = %target.digest, "image up to date");
            return Ok(info);
        }

        let docs = a.fetch_documents(ep, &target, body).await?;
        let resolved = resolve(Source::Fetched(&docs), &target, &name)
            .await
            .map_err(|e| match e {
                ImageError::NoMatchingPlatform { platform, .. } => PullError::NoMatchingPlatform {
                    reference: name.clone(),
                    host: ep.host.clone(),
                    platform,
                },
                other => err_image(other),
            })?;

        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let lease = format!("nodelet-pull-{nanos}");
        self.create_lease(&lease, PULL_LEASE_EXPIRY)
            .await
            .map_err(err_image)?;
        let result = self.pull_leased(a, ep, &lease, &docs, &resolved).await;
        let deleted = self.delete_lease(&lease).await;
        let info = result?;
        deleted.map_err(err_image)?;
        Ok(info)
    }

    async fn pull_leased(
        &self,
        a: &Attempt<'_>,
        ep: &Endpoint,
        lease: &str,
        docs: &HashMap<String, Vec<u8>>,
        resolved: &super::resolve::Resolved,
    ) -> Result<ImageInfo, PullError> {
        let name = a.parsed.name.clone();
        let err_image = |source| a.err_image(&ep.host, source);
        // Layers first, in parallel; then the documents, children before parents.
        let mut seen = HashSet::new();
        let layers: Vec<&(Desc, BTreeMap<String, String>)> = resolved
            .blobs
            .iter()
            .filter(|(d, _)| !docs.contains_key(&d.digest) && seen.insert(d.digest.clone()))
            .collect();
        // Boxed as `Send` futures in a plain loop: with a closure over borrowed layers
        // the compiler can't prove the whole pull `Send` (rust-lang/rust#102211),
        // which the `Runtime` trait's futures must be.
        let mut pending: Vec<LayerFetch<'_>> = Vec::with_capacity(layers.len());
        for (desc, labels) in layers {
            pending.push(Box::pin(self.fetch_layer(a, ep, lease, desc, labels)));
        }
        let mut fetches = futures::stream::iter(pending).buffer_unordered(a.max_downloads);
        let mut first_error = None;
        while let Some(r) = fetches.next().await {
            if let Err(e) = r {
                // Let the other downloads finish what they can: resumable next time.
                first_error.get_or_insert(e);
            }
        }
        drop(fetches);
        if let Some(e) = first_error {
            return Err(e);
        }
        for (desc, labels) in &resolved.blobs {
            if let Some(data) = docs.get(&desc.digest) {
                self.ensure_blob(lease, desc, BlobData::Memory(data), labels)
                    .await
                    .map_err(err_image)?;
            }
        }

        self.put_image_record(&name, &resolved.target)
            .await
            .map_err(err_image)?;
        let chain_id = self
            .unpack(lease, &resolved.layers, &resolved.diff_ids)
            .await
            .map_err(err_image)?;
        self.label_unpacked(&resolved.config.digest, &chain_id)
            .await
            .map_err(err_image)?;
        debug_assert_eq!(
            chain_ids(&resolved.diff_ids)
                .last()
                .cloned()
                .unwrap_or_default(),
            chain_id
        );
        Ok(super::store::info(name, resolved, chain_id))
    }

    /// Downloads one layer into the content store, continuing a partial ingest.
    async fn fetch_layer(
        &self,
        a: &Attempt<'_>,
        ep: &Endpoint,
        lease: &str,
        desc: &Desc,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), PullError> {
        let p = a.parsed;
        let err_image = |source| a.err_image(&ep.host, source);
        let stage = Stage::Fetch {
            digest: desc.digest.clone(),
        };
        // Held before looking, so a blob found present stays present.
        self.lease_add(lease, &desc.digest, "content")
            .await
            .map_err(err_image)?;
        if let Some(info) = self.content_info(&desc.digest).await.map_err(err_image)? {
            return self
                .content_set_labels(&desc.digest, &info.labels, labels)
                .await
                .map_err(err_image);
        }
        let ingest_ref = format!("nodelet-pull-{}", desc.digest);
        let mut ingest = match self.open_ingest(&ingest_ref, desc).await {
            Ok(i) => i,
            // Committed by a concurrent pull while we waited for its lock.
            Err(s) if s.code() == Code::AlreadyExists => {
                let info = self.content_info(&desc.digest).await.map_err(err_image)?;
                let current = info.map(|i| i.labels).unwrap_or_default();
                return self
                    .content_set_labels(&desc.digest, &current, labels)
                    .await
                    .map_err(err_image);
            }
            Err(s) => {
                return Err(err_image(ImageError::containerd(
                    "content write",
                    &desc.digest,
                    s,
                )));
            }
        };
        let containerd_err =
            |s| err_image(ImageError::containerd("content write", &desc.digest, s));

        if ingest.offset() < desc.size {
            let resumed = ingest.offset();
            let mut headers = HeaderMap::new();
            if resumed > 0
                && let Ok(v) = HeaderValue::from_str(&format!("bytes={resumed}-"))
            {
                headers.insert(RANGE, v);
            }
            let path = format!("/v2/{}/blobs/{}", p.repository, desc.digest);
            let mut resp = a
                .session
                .send(ep, Method::GET, &path, headers)
                .await
                .map_err(|e| e.in_stage(stage.clone()))?;
            let url = resp.url().to_string();
            match resp.status() {
                StatusCode::PARTIAL_CONTENT if range_start(&resp) == Some(resumed) => {
                    tracing::debug!(digest = %desc.digest, offset = resumed, "resuming blob download");
                }
                StatusCode::OK | StatusCode::PARTIAL_CONTENT => ingest.restart(),
                status => return Err(fetch_error(&p.name, &ep.host, stage, url, status)),
            }
            // From the start, the digest is checked here too, to name what came.
            let mut hasher = (ingest.offset() == 0).then(Sha256::new);
            let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
            let mut received = ingest.offset();
            loop {
                let chunk = match resp.chunk().await {
                    Ok(c) => c,
                    Err(source) => {
                        // Keep what arrived: the next attempt resumes after it.
                        if !buf.is_empty()
                            && let Err(status) = ingest.write(std::mem::take(&mut buf)).await
                        {
                            tracing::debug!(digest = %desc.digest, %status, "cannot keep the partial blob");
                        }
                        return Err(PullError::Network {
                            reference: p.name.clone(),
                            host: ep.host.clone(),
                            stage: stage.clone(),
                            url: url.clone(),
                            source,
                        });
                    }
                };
                let Some(chunk) = chunk else { break };
                received += chunk.len() as u64;
                if received > desc.size {
                    drop(ingest);
                    self.abort_ingest_retrying(&ingest_ref).await;
                    return Err(PullError::SizeMismatch {
                        reference: p.name.clone(),
                        host: ep.host.clone(),
                        digest: desc.digest.clone(),
                        expected: desc.size,
                        actual: received,
                    });
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                buf.extend_from_slice(&chunk);
                if buf.len() >= CHUNK {
                    ingest
                        .write(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)))
                        .await
                        .map_err(containerd_err)?;
                }
            }
            if !buf.is_empty() {
                ingest.write(buf).await.map_err(containerd_err)?;
            }
            if received != desc.size {
                return Err(PullError::SizeMismatch {
                    reference: p.name.clone(),
                    host: ep.host.clone(),
                    digest: desc.digest.clone(),
                    expected: desc.size,
                    actual: received,
                });
            }
            if let Some(h) = hasher {
                let actual = format!("sha256:{}", hex::encode(h.finalize()));
                if desc.digest.starts_with("sha256:") && actual != desc.digest {
                    drop(ingest);
                    self.abort_ingest_retrying(&ingest_ref).await;
                    return Err(PullError::DigestMismatch {
                        reference: p.name.clone(),
                        host: ep.host.clone(),
                        digest: desc.digest.clone(),
                        actual: Some(actual),
                    });
                }
            }
        }
        match ingest.commit(labels).await {
            Ok(()) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let info = self.content_info(&desc.digest).await.map_err(err_image)?;
                let current = info.map(|i| i.labels).unwrap_or_default();
                self.content_set_labels(&desc.digest, &current, labels)
                    .await
                    .map_err(err_image)
            }
            // containerd re-hashes resumed data: a mismatch means the earlier part was
            // bad too. Start over next time.
            Err(s) if s.code() == Code::FailedPrecondition || s.code() == Code::DataLoss => {
                tracing::warn!(digest = %desc.digest, status = %s, "blob failed verification; ingest aborted");
                self.abort_ingest_retrying(&ingest_ref).await;
                Err(PullError::DigestMismatch {
                    reference: p.name.clone(),
                    host: ep.host.clone(),
                    digest: desc.digest.clone(),
                    actual: None,
                })
            }
            Err(s) => Err(containerd_err(s)),
        }
    }

    /// Aborts an ingest whose write stream was just dropped: containerd may not have
    /// released its lock yet.
    async fn abort_ingest_retrying(&self, reference: &str) {
        for _ in 0..20 {
            match self.abort_ingest(reference).await {
                Ok(()) => return,
                Err(e) if e.grpc_code() == Some(Code::Unavailable) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => {
                    tracing::warn!(ingest = reference, %error, "cannot abort ingest");
                    return;
                }
            }
        }
    }
}

/// The first byte of a 206's `Content-Range: bytes <start>-<end>/<total>`.
fn range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

/// The credentials to try in order; one anonymous attempt when none match.
fn candidates(auth: &PullAuth, config: &RegistryConfig, reference: &str) -> Vec<Credential> {
    let found = registry::credentials(auth, config, reference);
    if found.is_empty() {
        vec![Credential::default()]
    } else {
        found
    }
}

/// The error for a GET of content that answered `status` instead: `NotFound` for 404,
/// else `UnexpectedStatus` with the request.
fn fetch_error(
    reference: &str,
    host: &str,
    stage: Stage,
    url: String,
    status: StatusCode,
) -> PullError {
    if status == StatusCode::NOT_FOUND {
        return PullError::NotFound {
            reference: reference.to_owned(),
            host: host.to_owned(),
            stage,
        };
    }
    PullError::UnexpectedStatus {
        reference: reference.to_owned(),
        host: host.to_owned(),
        stage,
        request: Box::new(RequestTarget {
            method: "GET".to_owned(),
            url,
        }),
        status: status.as_u16(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_for_the_api() {
        let p = parse("busybox").expect("parse");
        assert_eq!(
            (p.domain.as_str(), p.repository.as_str(), p.object.as_str()),
            ("docker.io", "library/busybox", "latest")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let p = parse(&format!("127.0.0.1:5000/a/b:1@{d}")).expect("parse");
        assert_eq!(p.domain, "127.0.0.1:5000");
        assert_eq!(p.repository, "a/b");
        assert_eq!(p.object, d);
        assert!(p.by_digest);
        let p = parse("localhost:5000/x:v2").expect("parse");
        assert_eq!((p.repository.as_str(), p.object.as_str()), ("x", "v2"));
        assert!(matches!(
            parse("Bad/Name"),
            Err(PullError::InvalidReference { .. })
        ));
    }

    #[test]
    fn messages_match_containerd() {
        let r = "docker.io/library/agentx:latest".to_owned();
        let e = PullError::Unauthorized {
            reference: r.clone(),
            host: "registry-1.docker.io".to_owned(),
            stage: Stage::Resolve,
            request: Box::new(RequestTarget {
                method: "HEAD".to_owned(),
                url: "https://registry-1.docker.io/v2/library/agentx/manifests/latest".to_owned(),
            }),
            server_message: Some("insufficient_scope".to_owned()),
        };
        assert_eq!(
            e.to_string(),
            "failed to pull and unpack image \"docker.io/library/agentx:latest\": failed to resolve reference \"docker.io/library/agentx:latest\": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed"
        );
        let e = PullError::NotFound {
            reference: r.clone(),
            host: "h".to_owned(),
            stage: Stage::Resolve,
        };
        assert_eq!(
            e.to_string(),
            format!(
                "failed to pull and unpack image \"{r}\": failed to resolve reference \"{r}\": {r}: not found"
            )
        );
        let e = PullError::UnexpectedStatus {
            reference: r.clone(),
            host: "h".to_owned(),
            stage: Stage::Resolve,
            request: Box::new(RequestTarget {
                method: "HEAD".to_owned(),
                url: "http://h/v2/x/manifests/y".to_owned(),
            }),
            status: 500,
        };
        assert!(
            e.to_string()
                .ends_with("unexpected status from HEAD request to http://h/v2/x/manifests/y: 500 Internal Server Error"),
            "{e}"
        );
    }
}
