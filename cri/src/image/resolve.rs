//! Following an image from its target (an index or a manifest) down to the manifest
//! for this machine, its config and its layers, wherever the blobs are: in containerd,
//! in an OCI archive, or in an image built in memory.

use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{Arch, ImageConfiguration, ImageIndex, ImageManifest, Os};

use super::archive::OciArchive;
use super::content::{BlobData, Desc, check_digest, gc};
use super::oci::ImageBlobs;
use super::{ImageError, ImageRuntimeConfig};
use crate::containerd::Containerd;

/// Manifests, indexes and configs larger than this are refused (as containerd does).
const MAX_DOCUMENT: u64 = 4 << 20;
/// How deep indexes may nest.
const MAX_DEPTH: usize = 8;

pub(super) const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
pub(super) const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Where an image's blobs are read from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    Containerd(&'a Containerd),
    Archive(&'a OciArchive),
    Memory(&'a ImageBlobs),
    /// Documents fetched from a registry, by digest (layers are streamed separately).
    Fetched(&'a HashMap<String, Vec<u8>>),
}

impl Source<'_> {
    async fn read(&self, desc: &Desc, what: &'static str) -> Result<Vec<u8>, ImageError> {
        let data = match self {
            Self::Containerd(c) => return c.read_blob(desc, what, MAX_DOCUMENT).await,
            Self::Archive(a) => {
                if desc.size > MAX_DOCUMENT {
                    return Err(ImageError::BlobTooLarge {
                        what,
                        digest: desc.digest.clone(),
                        size: desc.size,
                    });
                }
                a.read(&desc.digest, desc.size)?
            }
            Self::Memory(blobs) => memory_blob(blobs, desc)?.to_vec(),
            Self::Fetched(docs) => fetched(docs, desc)?.to_vec(),
        };
        check_digest(what, &desc.digest, &data)?;
        Ok(data)
    }

    /// The bytes of a blob to write to containerd.
    pub fn data(&self, desc: &Desc) -> Result<BlobData<'_>, ImageError> {
        match self {
            Self::Archive(a) => {
                if let Some(data) = a.extra.get(&desc.digest) {
                    return Ok(BlobData::Memory(data));
                }
                let span = a.span(&desc.digest, desc.size)?;
                Ok(BlobData::File {
                    path: &a.path,
                    offset: span.offset,
                    size: span.size,
                })
            }
            Self::Memory(blobs) => memory_blob(blobs, desc).map(BlobData::Memory),
            Self::Fetched(docs) => fetched(docs, desc).map(BlobData::Memory),
            Self::Containerd(_) => Err(ImageError::MissingBlob {
                digest: desc.digest.clone(),
                location: "a source to import from (blobs are already in containerd)".to_owned(),
            }),
        }
    }
}

fn fetched<'a>(docs: &'a HashMap<String, Vec<u8>>, desc: &Desc) -> Result<&'a [u8], ImageError> {
    docs.get(&desc.digest)
        .map(Vec::as_slice)
        .ok_or_else(|| ImageError::MissingBlob {
            digest: desc.digest.clone(),
            location: "the documents fetched from the registry".to_owned(),
        })
}

fn memory_blob<'a>(blobs: &'a ImageBlobs, desc: &Desc) -> Result<&'a [u8], ImageError> {
    blobs
        .layers
        .iter()
        .chain([&blobs.config, &blobs.manifest])
        .find(|b| b.digest == desc.digest)
        .map(|b| b.data.as_slice())
        .ok_or_else(|| ImageError::MissingBlob {
            digest: desc.digest.clone(),
            location: "the image built in memory".to_owned(),
        })
}

/// An image followed down to this machine's manifest.
#[derive(Clone, Debug)]
pub(super) struct Resolved {
    /// The image record's target.
    pub target: Desc,
    pub config: Desc,
    pub runtime: ImageRuntimeConfig,
    pub layers: Vec<Desc>,
    pub diff_ids: Vec<String>,
    /// Every blob on the way, children before parents, with the GC labels that tie a
    /// parent to its children.
    pub blobs: Vec<(Desc, BTreeMap<String, String>)>,
}

impl Resolved {
    /// Size of the content, as containerd's `image.Size` counts it.
    pub fn size(&self) -> u64 {
        self.blobs.iter().map(|(d, _)| d.size).sum()
    }
}

/// Images already followed down from their target, by the target's digest. Blobs are
/// content-addressed, so what a digest resolves to never changes: a lookup of an image
/// found here costs its record and a snapshot stat, not the reads of its index,
/// manifest and config (three or four round trips to containerd per container start).
/// Emptied when an image is removed, and when it holds more than [`CACHED_IMAGES`].
#[derive(Debug, Default)]
pub(crate) struct ResolvedCache(std::sync::Mutex<HashMap<String, Resolved>>);

/// The most images [`ResolvedCache`] holds (a few hundred bytes each).
const CACHED_IMAGES: usize = 256;

impl ResolvedCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resolved>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn get(&self, target: &Desc) -> Option<Resolved> {
        self.lock()
            .get(&target.digest)
            .filter(|r| r.target == *target)
            .cloned()
    }

    pub(super) fn put(&self, resolved: &Resolved) {
        let mut map = self.lock();
        if map.len() >= CACHED_IMAGES {
            map.clear();
        }
        map.insert(resolved.target.digest.clone(), resolved.clone());
    }

    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

/// This machine's platform as OCI names it, e.g. `linux/amd64`.
pub(super) fn host_platform() -> String {
    format!("linux/{}", Arch::default())
}

fn is_host_platform(os: &Os, arch: &Arch) -> bool {
    *os == Os::Linux && *arch == Arch::default()
}

/// The entry of `index` for this machine: the first manifest (or nested index) whose
/// platform is linux and this architecture, or that names no platform.
pub(super) fn select_child(index: &ImageIndex) -> Option<&oci_spec::image::Descriptor> {
    index.manifests().iter().find(|m| {
        let kind = m.media_type().to_string();
        (MANIFEST_TYPES.contains(&kind.as_str()) || INDEX_TYPES.contains(&kind.as_str()))
            && m.platform()
                .as_ref()
                .is_none_or(|p| is_host_platform(p.os(), p.architecture()))
    })
}

/// Follows `target` (named `image` in errors) down to the manifest for this machine.
pub(super) async fn resolve(
    source: Source<'_>,
    target: &Desc,
    image: &str,
) -> Result<Resolved, ImageError> {
    let mut indexes: Vec<(Desc, BTreeMap<String, String>)> = Vec::new();
    let mut current = target.clone();
    let no_platform = || ImageError::NoMatchingPlatform {
        image: image.to_owned(),
        platform: host_platform(),
    };
    for _ in 0..MAX_DEPTH {
        if !INDEX_TYPES.contains(&current.media_type.as_str()) {
            break;
        }
        let data = source.read(&current, "index").await?;
        let index: ImageIndex = parse(&data, "index", &current.digest)?;
        let child = select_child(&index).ok_or_else(no_platform)?;
        let child = Desc::from_oci(child);
        let labels = BTreeMap::from([(
            format!("{}0", gc::REF_MANIFEST_PREFIX),
            child.digest.clone(),
        )]);
        indexes.push((current, labels));
        current = child;
    }
    if !MANIFEST_TYPES.contains(&current.media_type.as_str()) {
        return Err(ImageError::UnsupportedMediaType {
            digest: current.digest.clone(),
            media_type: current.media_type.clone(),
        });
    }

    let data = source.read(&current, "manifest").await?;
    let manifest: ImageManifest = parse(&data, "manifest", &current.digest)?;
    let config = Desc::from_oci(manifest.config());
    let layers: Vec<Desc> = manifest.layers().iter().map(Desc::from_oci).collect();
    let data = source.read(&config, "config").await?;
    let image_config: ImageConfiguration = parse(&data, "config", &config.digest)?;
    if !is_host_platform(image_config.os(), image_config.architecture()) {
        return Err(no_platform());
    }
    let diff_ids = image_config.rootfs().diff_ids().clone();
    if diff_ids.len() != layers.len() {
        return Err(ImageError::LayerCount {
            image: current.digest.clone(),
            layers: layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    if let Some(bad) = diff_ids.iter().find(|d| !super::reference::valid_digest(d)) {
        return Err(ImageError::InvalidDigest {
            digest: bad.clone(),
        });
    }

    let mut blobs = Vec::new();
    let mut manifest_labels = BTreeMap::from([(gc::REF_CONFIG.to_owned(), config.digest.clone())]);
    for (i, (layer, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        manifest_labels.insert(format!("{}{i}", gc::REF_LAYER_PREFIX), layer.digest.clone());
        let labels = BTreeMap::from([(gc::UNCOMPRESSED.to_owned(), diff_id.clone())]);
        blobs.push((layer.clone(), labels));
    }
    blobs.push((config.clone(), BTreeMap::new()));
    blobs.push((current, manifest_labels));
    blobs.extend(indexes.into_iter().rev());

    Ok(Resolved {
        target: target.clone(),
        config,
        runtime: runtime_config(&image_config),
        layers,
        diff_ids,
        blobs,
    })
}

fn runtime_config(config: &ImageConfiguration) -> ImageRuntimeConfig {
    let Some(c) = config.config() else {
        return ImageRuntimeConfig::default();
    };
    ImageRuntimeConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
        stop_signal: c.stop_signal().clone().filter(|s| !s.is_empty()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    data: &[u8],
    what: &'static str,
    digest: &str,
) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|source| ImageError::InvalidJson {
        what,
        digest: digest.to_owned(),
        source,
    })
}
