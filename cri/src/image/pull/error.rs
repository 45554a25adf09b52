//! Why a pull failed, in containerd's words: [`PullError`] and the request and
//! stage it names, so `ErrImagePull` messages read as upstream's.

use reqwest::StatusCode;
use thiserror::Error;

use crate::image::ImageError;

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
    pub(super) fn in_stage(mut self, new: Stage) -> Self {
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
