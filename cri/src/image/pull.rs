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
use oci_spec::image::ImageIndex;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::auth::{Credential, PullAuth};
use super::content::{BlobData, CHUNK, Desc};
use super::registry::{self, Endpoint, RegistryConfig, Session};
use super::resolve::{INDEX_TYPES, MANIFEST_TYPES, Source, host_platform, resolve, select_child};
use super::snapshot::chain_ids;
use super::{ImageError, ImageInfo, normalize_reference};
use crate::containerd::Containerd;

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

/// A request a registry answered badly: method and URL, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestTarget {
    /// `HEAD`, `GET`, `POST`.
    pub method: String,
    /// The URL.
    pub url: String,
}

/// Which step of a pull failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Resolving the reference to a manifest digest.
    Resolve,
    /// Fetching a manifest, config or layer.
    Fetch {
        /// The blob.
        digest: String,
    },
}

/// Errors from pulling an image. Each names the reference and the registry host; the
/// messages follow containerd's wording.
#[derive(Debug, Error)]
pub enum PullError {
    /// The reference is not a valid image name (upstream's `InvalidImageName`).
    #[error("failed to pull and unpack image {reference:?}: {source}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why.
        #[source]
        source: Box<ImageError>,
    },
    /// The registry (or its token server) refused the credentials, or the repository
    /// does not exist for them: HTTP 401.
    #[error(
        "failed to pull and unpack image \"{reference}\": {}: {}",
        stage_prefix(stage, reference),
        unauthorized_detail(request, server_message.as_deref())
    )]
    Unauthorized {
        /// The normalized reference.
        reference: String,
        /// The registry (or mirror) host.
        host: String,
        /// Where it happened.
        stage: Stage,
        /// The refused request.
        request: Box<RequestTarget>,
        /// The `error` of the final challenge, e.g. `insufficient_scope`.
        server_message: Option<String>,
    },
    /// No endpoint has the manifest (`MANIFEST_UNKNOWN`, `NAME_UNKNOWN`) or the blob.
    #[error(
        "failed to pull and unpack image \"{reference}\": {}: {}: not found",
        stage_prefix(stage, reference),
        not_found_object(stage, reference)
    )]
    NotFound {
        /// The normalized reference.
        reference: String,
        /// The registry host.
        host: String,
        /// Where it happened.
        stage: Stage,
    },
    /// The registry answered with an unexpected status.
    #[error(
        "failed to pull and unpack image \"{reference}\": {}: unexpected status from {} request to {}: {}",
        stage_prefix(stage, reference),
        request.method,
        request.url,
        status_text(*status)
    )]
    UnexpectedStatus {
        /// The normalized reference.
        reference: String,
        /// The registry host.
        host: String,
        /// Where it happened.
        stage: Stage,
        /// The request.
        request: Box<RequestTarget>,
        /// The HTTP status.
        status: u16,
    },
    /// The connection failed: refused, reset, timed out, TLS handshake or certificate
    /// errors, a body cut off.
    #[error(
        "failed to pull and unpack image \"{reference}\": {}: failed to do request to {url}: {}",
        stage_prefix(stage, reference),
        error_chain(source)
    )]
    Network {
        /// The normalized reference.
        reference: String,
        /// The registry host.
        host: String,
        /// Where it happened.
        stage: Stage,
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The token realm answered without a usable token.
    #[error(
        "failed to pull and unpack image \"{reference}\": failed to fetch oauth token from {realm}: no token in the response"
    )]
    TokenResponse {
        /// The normalized reference.
        reference: String,
        /// The registry host.
        host: String,
        /// The token realm.
        realm: String,
        /// The JSON error, when it was not JSON.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// Content did not hash to its digest.
    #[error(
        "failed to pull and unpack image \"{reference}\": failed to copy {digest}: digest mismatch{}",
        actual.as_ref().map(|a| format!(": got {a}")).unwrap_or_default()
    )]
    DigestMismatch {
        /// The normalized reference.
        reference: String,
        /// The registry host.
        host: String,
        /// The expected digest.
        digest: String,
        /// The digest of what came, when known.
        actual: Option<String>,
    },
    /// A blob's body was longer or shorter than its descriptor says.
    #[error(
        "failed to pull and unpack image \"{reference}\": failed to copy {digest}: expected {expected} bytes, got {actual}"
    )]
    SizeMismatch {
        /// The normalized reference.
        reference: String,
        /// The registry host.
        host: String,
        /// The blob.
        digest: String,
        /// Bytes expected.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// Nothing in the image for this machine.
    #[error(
        "failed to pull and unpack image \"{reference}\": no match for platform in manifest: not found (want {platform})"
    )]
    NoMatchingPlatform {
        /// The normalized reference.
        reference: String,
        /// The registry host.
        host: String,
        /// The platform wanted, e.g. `linux/amd64`.
        platform: String,
    },
    /// A mirror in the registry config is not a host or http(s) URL.
    #[error("invalid mirror {mirror:?} for registry {host} (pulling {reference})")]
    InvalidMirror {
        /// The normalized reference.
        reference: String,
        /// The registry the mirror is configured for.
        host: String,
        /// The mirror as configured.
        mirror: String,
    },
    /// A registry's CA file could not be read.
    #[error("CA file {path} of registry {host} (pulling {reference}): {source}")]
    CaFile {
        /// The normalized reference.
        reference: String,
        /// The registry host.
        host: String,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built (e.g. a CA file without certificates).
    #[error("TLS configuration of registry {host} (pulling {reference}): {source}")]
    TlsConfig {
        /// The normalized reference.
        reference: String,
        /// The registry host.
        host: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// No scheme is allowed for an endpoint (never with a valid config).
    #[error("no usable scheme for registry endpoint {host} (pulling {reference})")]
    NoEndpoint {
        /// The normalized reference.
        reference: String,
        /// The endpoint host.
        host: String,
    },
    /// containerd refused a step, or a manifest, index or config is not valid.
    #[error("failed to pull and unpack image \"{reference}\": {source}")]
    Image {
        /// The normalized reference.
        reference: String,
        /// The registry host.
        host: String,
        /// Why.
        #[source]
        source: Box<ImageError>,
    },
}

fn stage_prefix(stage: &Stage, reference: &str) -> String {
    match stage {
        Stage::Resolve => format!("failed to resolve reference \"{reference}\""),
        Stage::Fetch { digest } => format!("failed to copy {digest}"),
    }
}

fn not_found_object(stage: &Stage, reference: &str) -> String {
    match stage {
        Stage::Resolve => reference.to_owned(),
        Stage::Fetch { digest } => digest.clone(),
    }
}

fn unauthorized_detail(request: &RequestTarget, server_message: Option<&str>) -> String {
    match server_message {
        Some(m) => format!(
            "pull access denied, repository does not exist or may require authorization: server message: {m}: authorization failed"
        ),
        None => format!(
            "unexpected status from {} request to {}: 401 Unauthorized",
            request.method, request.url
        ),
    }
}

fn status_text(status: u16) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{status} {reason}").trim_end().to_owned()
}

/// reqwest's error with its causes, which carry the useful part (the TLS or socket
/// error).
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

impl PullError {
    /// The reference the pull was for.
    pub fn reference(&self) -> &str {
        match self {
            Self::InvalidReference { reference, .. }
            | Self::Unauthorized { reference, .. }
            | Self::NotFound { reference, .. }
            | Self::UnexpectedStatus { reference, .. }
            | Self::Network { reference, .. }
            | Self::TokenResponse { reference, .. }
            | Self::DigestMismatch { reference, .. }
            | Self::SizeMismatch { reference, .. }
            | Self::NoMatchingPlatform { reference, .. }
            | Self::InvalidMirror { reference, .. }
            | Self::CaFile { reference, .. }
            | Self::TlsConfig { reference, .. }
            | Self::NoEndpoint { reference, .. }
            | Self::Image { reference, .. } => reference,
        }
    }

    /// Sets where a transport error happened.
    fn in_stage(mut self, new: Stage) -> Self {
        match &mut self {
            Self::Unauthorized { stage, .. }
            | Self::NotFound { stage, .. }
            | Self::UnexpectedStatus { stage, .. }
            | Self::Network { stage, .. } => *stage = new,
            _ => {}
        }
        self
    }
}

/// A normalized reference split for the registry API.
struct Parsed {
    /// The whole normalized reference.
    name: String,
    /// The registry host (`docker.io`, `127.0.0.1:5000`).
    domain: String,
    /// The repository in that registry (`library/busybox`).
    repository: String,
    /// The tag or digest to resolve.
    object: String,
    /// Whether `object` is a digest.
    by_digest: bool,
}

fn parse(reference: &str) -> Result<Parsed, PullError> {
    let name = normalize_reference(reference).map_err(|source| PullError::InvalidReference {
        reference: reference.to_owned(),
        source: Box::new(source),
    })?;
    let (repo, object, by_digest) = match name.split_once('@') {
        Some((repo, digest)) => (repo, digest, true),
        None => match name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag, false),
            _ => (name.as_str(), "latest", false),
        },
    };
    let (domain, repository) = repo.split_once('/').unwrap_or(("docker.io", repo));
    Ok(Parsed {
        domain: domain.to_owned(),
        repository: repository.to_owned(),
        object: object.to_owned(),
        by_digest,
        name: name.clone(),
    })
}

/// Everything one pull attempt (one credential) works with.
struct Attempt<'a> {
    parsed: &'a Parsed,
    session: Session,
    endpoints: Vec<Endpoint>,
    max_downloads: usize,
}

impl Attempt<'_> {
    fn err_image(&self, host: &str, source: ImageError) -> PullError {
        PullError::Image {
            reference: self.parsed.name.clone(),
            host: host.to_owned(),
            source: Box::new(source),
        }
    }

    /// Resolves the reference: the endpoint that has it and the target descriptor, as
    /// containerd's resolver does (endpoints in order; 404 moves on; the first other
    /// failure is reported if nobody has it).
    async fn resolve(&self) -> Result<(usize, Desc, Option<Vec<u8>>), PullError> {
        let p = self.parsed;
        let path = format!("/v2/{}/manifests/{}", p.repository, p.object);
        let mut first_error = None;
        for (i, ep) in self.endpoints.iter().enumerate() {
            match self.resolve_at(ep, &path).await {
                Ok(Some((desc, body))) => return Ok((i, desc, body)),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(reference = %p.name, host = %ep.host, error = %e, "resolve failed on endpoint");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| PullError::NotFound {
            reference: p.name.clone(),
            host: self
                .endpoints
                .last()
                .map(|e| e.host.clone())
                .unwrap_or_default(),
            stage: Stage::Resolve,
        }))
    }

    /// `Ok(None)` when this endpoint does not have the manifest.
    async fn resolve_at(
        &self,
        ep: &Endpoint,
        path: &str,
    ) -> Result<Option<(Desc, Option<Vec<u8>>)>, PullError> {
        let p = self.parsed;
        let head = self
            .session
            .send(ep, Method::HEAD, path, registry::manifest_accept())
            .await?;
        let status = head.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let header = |name| {
            head.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned())
        };
        if status.is_success() {
            let media_type = header(CONTENT_TYPE.as_str());
            let size = header(CONTENT_LENGTH.as_str()).and_then(|s| s.parse::<u64>().ok());
            let digest =
                header(DOCKER_CONTENT_DIGEST).filter(|d| super::reference::valid_digest(d));
            let digest = if p.by_digest {
                Some(p.object.clone())
            } else {
                digest
            };
            if let (Some(media_type), Some(size), Some(digest)) = (media_type, size, digest)
                && (INDEX_TYPES.contains(&media_type.as_str())
                    || MANIFEST_TYPES.contains(&media_type.as_str()))
            {
                return Ok(Some((
                    Desc {
                        media_type,
                        digest,
                        size,
                    },
                    None,
                )));
            }
        }
        // HEAD said too little (or was refused): GET the manifest and hash it.
        let resp = self
            .session
            .send(ep, Method::GET, path, registry::manifest_accept())
            .await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(PullError::UnexpectedStatus {
                reference: p.name.clone(),
                host: ep.host.clone(),
                stage: Stage::Resolve,
                request: Box::new(RequestTarget {
                    method: "GET".to_owned(),
                    url: resp.url().to_string(),
                }),
                status: status.as_u16(),
            });
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_owned());
        let url = resp.url().to_string();
        let body = read_limited(resp, MAX_DOCUMENT)
            .await
            .map_err(|e| self.body_error(ep, &url, e, Stage::Resolve))?;
        let digest = super::oci::sha256_digest(&body);
        if p.by_digest && digest != p.object {
            return Err(PullError::DigestMismatch {
                reference: p.name.clone(),
                host: ep.host.clone(),
                digest: p.object.clone(),
                actual: Some(digest),
            });
        }
        let media_type = content_type
            .filter(|t| INDEX_TYPES.contains(&t.as_str()) || MANIFEST_TYPES.contains(&t.as_str()))
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
            })
            .unwrap_or_default();
        Ok(Some((
            Desc {
                media_type,
                digest,
                size: body.len() as u64,
            },
            Some(body),
        )))
    }

    fn body_error(&self, ep: &Endpoint, url: &str, e: BodyError, stage: Stage) -> PullError {
        match e {
            BodyError::Network(source) => PullError::Network {
                reference: self.parsed.name.clone(),
                host: ep.host.clone(),
                stage,
                url: url.to_owned(),
                source,
            },
            BodyError::TooLarge(size) => self.err_image(
                &ep.host,
                ImageError::BlobTooLarge {
                    what: "manifest",
                    digest: match stage {
                        Stage::Fetch { digest } => digest,
                        Stage::Resolve => self.parsed.name.clone(),
                    },
                    size,
                },
            ),
        }
    }

    /// GETs a manifest/index (`/manifests/`) or config (`/blobs/`) and checks its digest.
    async fn fetch_document(&self, ep: &Endpoint, desc: &Desc) -> Result<Vec<u8>, PullError> {
        let p = self.parsed;
        let stage = Stage::Fetch {
            digest: desc.digest.clone(),
        };
        if desc.size > MAX_DOCUMENT {
            return Err(self.err_image(
                &ep.host,
                ImageError::BlobTooLarge {
                    what: "document",
                    digest: desc.digest.clone(),
                    size: desc.size,
                },
            ));
        }
        let is_manifest = INDEX_TYPES.contains(&desc.media_type.as_str())
            || MANIFEST_TYPES.contains(&desc.media_type.as_str());
        let (path, headers) = if is_manifest {
            (
                format!("/v2/{}/manifests/{}", p.repository, desc.digest),
                registry::manifest_accept(),
            )
        } else {
            (
                format!("/v2/{}/blobs/{}", p.repository, desc.digest),
                HeaderMap::new(),
            )
        };
        let resp = self
            .session
            .send(ep, Method::GET, &path, headers)
            .await
            .map_err(|e| e.in_stage(stage.clone()))?;
        let status = resp.status();
        let url = resp.url().to_string();
        if !status.is_success() {
            return Err(fetch_error(&p.name, &ep.host, stage, url, status));
        }
        let body = read_limited(resp, desc.size.max(1))
            .await
            .map_err(|e| self.body_error(ep, &url, e, stage))?;
        let actual = super::oci::sha256_digest(&body);
        if desc.digest.starts_with("sha256:") && actual != desc.digest {
            return Err(PullError::DigestMismatch {
                reference: p.name.clone(),
                host: ep.host.clone(),
                digest: desc.digest.clone(),
                actual: Some(actual),
            });
        }
        Ok(body)
    }

    /// Fetches `target`'s documents down to this machine's manifest and its config.
    async fn fetch_documents(
        &self,
        ep: &Endpoint,
        target: &Desc,
        first: Option<Vec<u8>>,
    ) -> Result<HashMap<String, Vec<u8>>, PullError> {
        let mut docs = HashMap::new();
        let mut current = target.clone();
        let mut body = first;
        for _ in 0..MAX_DEPTH {
            let data = match body.take() {
                Some(b) => b,
                None => self.fetch_document(ep, &current).await?,
            };
            if !INDEX_TYPES.contains(&current.media_type.as_str()) {
                if MANIFEST_TYPES.contains(&current.media_type.as_str()) {
                    let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(&data)
                        .map_err(|source| {
                            self.err_image(
                                &ep.host,
                                ImageError::InvalidJson {
                                    what: "manifest",
                                    digest: current.digest.clone(),
                                    source,
                                },
                            )
                        })?;
                    let config = Desc::from_oci(manifest.config());
                    let config_data = self.fetch_document(ep, &config).await?;
                    docs.insert(config.digest, config_data);
                }
                docs.insert(current.digest.clone(), data);
                return Ok(docs);
            }
            let index: ImageIndex = serde_json::from_slice(&data).map_err(|source| {
                self.err_image(
                    &ep.host,
                    ImageError::InvalidJson {
                        what: "index",
                        digest: current.digest.clone(),
                        source,
                    },
                )
            })?;
            let child = select_child(&index).ok_or_else(|| PullError::NoMatchingPlatform {
                reference: self.parsed.name.clone(),
                host: ep.host.clone(),
                platform: host_platform(),
            })?;
            docs.insert(current.digest.clone(), data);
            current = Desc::from_oci(child);
        }
        Ok(docs)
    }
}

/// Why reading a body failed.
enum BodyError {
    Network(reqwest::Error),
    TooLarge(u64),
}

async fn read_limited(mut resp: reqwest::Response, max: u64) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Network)? {
        out.extend_from_slice(&chunk);
        if out.len() as u64 > max {
            return Err(BodyError::TooLarge(out.len() as u64));
        }
    }
    Ok(out)
}

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
