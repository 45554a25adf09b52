//! Images: references, building OCI images in memory, importing them (OCI image-layout
//! and `docker save` archives) into containerd, pulling them from registries, unpacking
//! their layers into snapshots, preparing a container's writable root filesystem on top
//! of them, removing them, and planning image garbage collection.
//!
//! Everything written to containerd follows containerd's own conventions, so that
//! `ctr` and containerd's garbage collector see the same thing they would after a
//! `ctr images import` or `ctr images pull`: blobs carry the `containerd.io/gc.ref.*`
//! labels that keep an image's manifest, config, layers and snapshots alive while the
//! image record exists, every import and pull runs under a lease so that nothing is
//! collected half-way, and layers are unpacked into committed snapshots named by their
//! chain ID.
//!
//! # The API the agent uses
//!
//! ```text
//! // Registry pulls (pull.rs, registry.rs, auth.rs)
//! Containerd::pull_image(&self, reference: &str, auth: &PullAuth, registries: &RegistryConfig)
//!     -> Result<ImageInfo, PullError>
//! Containerd::resolve_digest(&self, reference: &str, auth: &PullAuth, registries: &RegistryConfig)
//!     -> Result<String, PullError>                      // imagePullPolicy: Always
//! PullAuth::anonymous() / add_dockerconfigjson(&[u8]) / add_dockercfg(&[u8])
//!     / add_docker_config_file(&Path) / lookup(image) -> Vec<Credential>
//! RegistryConfig { hosts: BTreeMap<host, RegistryHostConfig { insecure, ca_file, mirrors }>,
//!                  docker_config: Option<PathBuf>, max_concurrent_downloads }
//!
//! // Local images (store.rs, archive.rs, docker_archive.rs)
//! Containerd::import_oci_archive(&self, path) -> Result<Vec<String>, ImageError>  // OCI layout or docker save
//! Containerd::get_image(&self, reference) -> Result<Option<ImageInfo>, ImageError>
//! Containerd::list_images(&self) -> Result<Vec<ImageInfo>, ImageError>
//! Containerd::remove_image(&self, name_or_id) -> Result<(), ImageError>
//! Containerd::ensure_pause_image(&self) -> Result<ImageInfo, ImageError>
//!
//! // Image GC (gc.rs): pure; the agent tracks first-detected/last-used times
//! plan_image_gc(&GcPolicy, &[GcImage], FsUsage, now, began_gc) -> Result<GcPlan, GcError>
//! plan_delete_unused(&GcPolicy, &[GcImage], now) -> Vec<String>
//! ```
//!
//! [`PullError`]'s messages are containerd's (`failed to pull and unpack image "...":
//! failed to resolve reference "...": ...`), for the agent's `ErrImagePull` events;
//! [`PullError::InvalidReference`] is upstream's `InvalidImageName`.

mod archive;
mod auth;
mod content;
mod docker_archive;
mod gc;
mod oci;
mod pull;
mod reference;
mod registry;
mod resolve;
mod snapshot;
mod store;

use std::path::PathBuf;

use containerd_client::tonic;
use thiserror::Error;

pub use auth::{AuthError, Credential, PullAuth};
pub use gc::{FsUsage, GcError, GcImage, GcPlan, GcPolicy, plan_delete_unused, plan_image_gc};
pub use oci::{Blob, ImageBlobs, Layer, OciImage, pause_image};
pub use pull::{PullError, RequestTarget, Stage};
pub use reference::normalize_reference;
pub use registry::{RegistryConfig, RegistryHostConfig};
pub(crate) use resolve::ResolvedCache;

/// The name the agent gives the pause image it builds and imports itself.
pub const PAUSE_IMAGE: &str = "nodelet.local/pause:3.10";

/// The statically linked pause binary (built from `cri/pause/pause.rs` by `build.rs`).
pub static PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));

/// What the container runtime needs from an image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageRuntimeConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value`.
    pub env: Vec<String>,
    /// `WorkingDir`; empty when unset.
    pub working_dir: String,
    /// `User` (`uid`, `uid:gid`, or names); empty when unset.
    pub user: String,
    /// `StopSignal`, e.g. `SIGQUIT`.
    pub stop_signal: Option<String>,
}

/// An image present (and unpacked) in containerd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The normalized reference the image is stored under.
    pub name: String,
    /// The image ID: the config digest (`sha256:...`), as the CRI reports it.
    pub id: String,
    /// The digest of the image record's target (manifest or index).
    pub repo_digest: String,
    /// The chain ID of the top layer: the committed snapshot containers are made from.
    pub chain_id: String,
    /// Size in bytes of the content (manifest, config and layers as stored).
    pub size: u64,
    /// The config the runtime applies to containers.
    pub config: ImageRuntimeConfig,
}

/// Errors from image operations.
#[derive(Debug, Error)]
pub enum ImageError {
    /// A reference that is not a valid image name.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A containerd request failed.
    #[error("containerd {op} of {object}: {status}")]
    Containerd {
        /// The operation, e.g. `content write`, `snapshot prepare`.
        op: &'static str,
        /// What it was about: an image reference, a digest, a snapshot key.
        object: String,
        /// The status containerd answered with.
        #[source]
        status: Box<tonic::Status>,
    },
    /// Reading a file (an archive) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An archive is not an OCI image layout.
    #[error("{path} is not an OCI image-layout archive: {reason}")]
    NotOciLayout {
        /// The archive.
        path: PathBuf,
        /// What is missing or wrong.
        reason: &'static str,
    },
    /// A `docker save` archive's `manifest.json` is not what `docker save` writes.
    #[error("{path} is not a docker save archive: {reason}{}", file.as_ref().map(|f| format!(" ({f})")).unwrap_or_default())]
    NotDockerArchive {
        /// The archive.
        path: PathBuf,
        /// What is missing or wrong.
        reason: &'static str,
        /// The file in the archive it is about, if one.
        file: Option<String>,
    },
    /// An archive's index names an image by a bare tag, which says nothing about the
    /// repository it belongs to.
    #[error(
        "{path}: index entry {digest} is named {tag:?}, a bare tag; name it with a full reference such as example.local/image:{tag}"
    )]
    BareTagName {
        /// The archive.
        path: PathBuf,
        /// The manifest the entry points to.
        digest: String,
        /// The annotation's value.
        tag: String,
    },
    /// An archive's index entry has no image name at all.
    #[error("{path}: index entry {digest} has no org.opencontainers.image.ref.name annotation")]
    UnnamedImage {
        /// The archive.
        path: PathBuf,
        /// The manifest the entry points to.
        digest: String,
    },
    /// A blob referenced by a manifest or index is not where it should be.
    #[error("blob {digest} is missing from {location}")]
    MissingBlob {
        /// The blob.
        digest: String,
        /// Where it was looked for (an archive path, or containerd).
        location: String,
    },
    /// A manifest, index or config is not valid JSON of its kind.
    #[error("{what} {digest} is not valid: {source}")]
    InvalidJson {
        /// `manifest`, `index`, `config`.
        what: &'static str,
        /// The blob.
        digest: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A descriptor's media type is not one this code can follow.
    #[error("{digest} has unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The blob.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// A digest that is not `sha256:<64 hex>` (or another valid algorithm).
    #[error("invalid digest {digest:?}")]
    InvalidDigest {
        /// The digest.
        digest: String,
    },
    /// Content did not hash to what it was expected to.
    #[error("{what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked, e.g. `diff ID of layer sha256:...`.
        what: String,
        /// The expected digest.
        expected: String,
        /// The digest found.
        actual: String,
    },
    /// A manifest and its config disagree on the number of layers.
    #[error("image {image}: manifest has {layers} layers but config has {diff_ids} diff IDs")]
    LayerCount {
        /// The manifest digest.
        image: String,
        /// Layers in the manifest.
        layers: usize,
        /// `rootfs.diff_ids` in the config.
        diff_ids: usize,
    },
    /// No manifest for this machine's platform.
    #[error("image {image} has no manifest for {platform}")]
    NoMatchingPlatform {
        /// The image reference or digest.
        image: String,
        /// The platform wanted, e.g. `linux/amd64`.
        platform: String,
    },
    /// A manifest, index or config larger than any sane one.
    #[error("{digest} is {size} bytes, too large for a {what}")]
    BlobTooLarge {
        /// `manifest`, `index`, `config`.
        what: &'static str,
        /// The blob.
        digest: String,
        /// Its size.
        size: u64,
    },
    /// Building an image's layer tar failed.
    #[error("cannot add {path} to a layer: {source}")]
    LayerEntry {
        /// The path in the image.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Building an OCI document with `oci-spec` failed.
    #[error("cannot build the image {what}: {source}")]
    Spec {
        /// `config`, `manifest`, `index`.
        what: &'static str,
        /// Why.
        #[source]
        source: oci_spec::OciSpecError,
    },
}

impl ImageError {
    pub(crate) fn containerd(
        op: &'static str,
        object: impl Into<String>,
        status: tonic::Status,
    ) -> Self {
        Self::Containerd {
            op,
            object: object.into(),
            status: Box::new(status),
        }
    }

    /// The gRPC code, when containerd answered with an error.
    pub fn grpc_code(&self) -> Option<tonic::Code> {
        match self {
            Self::Containerd { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}
