//! One pull attempt (one credential) against a registry: the reference split for
//! the registry API, resolved to a manifest digest, and the documents (indexes,
//! manifest, config) fetched and verified.

use std::collections::HashMap;

use oci_spec::image::ImageIndex;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use super::error::{PullError, RequestTarget, Stage};
use super::{DOCKER_CONTENT_DIGEST, MAX_DEPTH, MAX_DOCUMENT, fetch_error};
use crate::image::content::Desc;
use crate::image::registry::{self, Endpoint, Session};
use crate::image::resolve::{INDEX_TYPES, MANIFEST_TYPES, host_platform, select_child};
use crate::image::{ImageError, normalize_reference};

/// A normalized reference split for the registry API.
pub(super) struct Parsed {
    /// The whole normalized reference.
    pub(super) name: String,
    /// The registry host (`docker.io`, `127.0.0.1:5000`).
    pub(super) domain: String,
    /// The repository in that registry (`library/busybox`).
    pub(super) repository: String,
    /// The tag or digest to resolve.
    pub(super) object: String,
    /// Whether `object` is a digest.
    pub(super) by_digest: bool,
}

pub(super) fn parse(reference: &str) -> Result<Parsed, PullError> {
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
pub(super) struct Attempt<'a> {
    pub(super) parsed: &'a Parsed,
    pub(super) session: Session,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) max_downloads: usize,
}

impl Attempt<'_> {
    pub(super) fn err_image(&self, host: &str, source: ImageError) -> PullError {
        PullError::Image {
            reference: self.parsed.name.clone(),
            host: host.to_owned(),
            source: Box::new(source),
        }
    }

    /// Resolves the reference: the endpoint that has it and the target descriptor, as
    /// containerd's resolver does (endpoints in order; 404 moves on; the first other
    /// failure is reported if nobody has it).
    pub(super) async fn resolve(&self) -> Result<(usize, Desc, Option<Vec<u8>>), PullError> {
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
    pub(super) async fn resolve_at(
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
                header(DOCKER_CONTENT_DIGEST).filter(|d| crate::image::reference::valid_digest(d));
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
        let digest = crate::image::oci::sha256_digest(&body);
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

    pub(super) fn body_error(
        &self,
        ep: &Endpoint,
        url: &str,
        e: BodyError,
        stage: Stage,
    ) -> PullError {
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
    pub(super) async fn fetch_document(
        &self,
        ep: &Endpoint,
        desc: &Desc,
    ) -> Result<Vec<u8>, PullError> {
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
        let actual = crate::image::oci::sha256_digest(&body);
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
    pub(super) async fn fetch_documents(
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
pub(super) enum BodyError {
    Network(reqwest::Error),
    TooLarge(u64),
}

pub(super) async fn read_limited(
    mut resp: reqwest::Response,
    max: u64,
) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Network)? {
        out.extend_from_slice(&chunk);
        if out.len() as u64 > max {
            return Err(BodyError::TooLarge(out.len() as u64));
        }
    }
    Ok(out)
}
