//! Building OCI images in memory: layers from a list of files, directories and
//! symlinks, written as deterministic uncompressed tars, plus the image config and
//! manifest. Used for the pause image, and by tests for images of their own.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{
    ANNOTATION_REF_NAME, Arch, ConfigBuilder, Descriptor, Digest, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

use super::{ImageError, ImageRuntimeConfig, PAUSE_BINARY};

/// One blob of an image: its media type, digest and bytes.
#[derive(Clone, Debug)]
pub struct Blob {
    /// The media type.
    pub media_type: MediaType,
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    /// The content.
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: MediaType, data: Vec<u8>) -> Self {
        Self {
            media_type,
            digest: sha256_digest(&data),
            data,
        }
    }

    /// An OCI descriptor of the blob.
    ///
    /// # Errors
    /// [`ImageError::InvalidDigest`] never in practice: the digest is computed here.
    pub fn descriptor(&self) -> Result<Descriptor, ImageError> {
        let digest: Digest = self.digest.parse().map_err(|_| ImageError::InvalidDigest {
            digest: self.digest.clone(),
        })?;
        Ok(Descriptor::new(
            self.media_type.clone(),
            self.data.len() as u64,
            digest,
        ))
    }
}

/// The blobs of a built image.
#[derive(Clone, Debug)]
pub struct ImageBlobs {
    /// The image manifest (the image record's target).
    pub manifest: Blob,
    /// The image config.
    pub config: Blob,
    /// The layers, base first. Uncompressed, so each digest is also its diff ID.
    pub layers: Vec<Blob>,
}

#[derive(Clone, Debug)]
enum Entry {
    File { data: Cow<'static, [u8]>, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// One layer: files, directories and symlinks by their path in the image. Parent
/// directories that are not given are added with mode 0755.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    entries: BTreeMap<String, Entry>,
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a regular file at `path` (e.g. `/bin/sh`) with permission bits `mode`.
    #[must_use]
    pub fn file(mut self, path: &str, data: impl Into<Cow<'static, [u8]>>, mode: u32) -> Self {
        let data = data.into();
        self.entries.insert(clean(path), Entry::File { data, mode });
        self
    }

    /// Adds a directory at `path` with permission bits `mode` (e.g. `0o1777`).
    #[must_use]
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.entries.insert(clean(path), Entry::Dir { mode });
        self
    }

    /// Adds a symlink at `path` pointing to `target`.
    #[must_use]
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let target = target.to_owned();
        self.entries.insert(clean(path), Entry::Symlink { target });
        self
    }

    /// The layer as an uncompressed tar: entries sorted by path, parents before
    /// children, owned by 0:0, mtime 0, so the same input always gives the same digest.
    ///
    /// # Errors
    /// [`ImageError::LayerEntry`] for a path or link target the tar format can't hold.
    pub fn to_tar(&self) -> Result<Vec<u8>, ImageError> {
        let mut entries = self.entries.clone();
        for path in self.entries.keys() {
            let mut parent = path.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                entries
                    .entry(p.to_owned())
                    .or_insert(Entry::Dir { mode: 0o755 });
                parent = p;
            }
        }
        entries.remove("");

        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in &entries {
            let err = |source| ImageError::LayerEntry {
                path: format!("/{path}"),
                source,
            };
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match entry {
                Entry::File { data, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder
                        .append_data(&mut header, path, &data[..])
                        .map_err(err)?;
                }
                Entry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, format!("{path}/"), std::io::empty())
                        .map_err(err)?;
                }
                Entry::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, path, target)
                        .map_err(err)?;
                }
            }
        }
        builder
            .into_inner()
            .map_err(|source| ImageError::LayerEntry {
                path: "/".into(),
                source,
            })
    }
}

/// Strips leading `/` and `./`, and a trailing `/`: tar paths are relative.
fn clean(path: &str) -> String {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    p.trim_end_matches('/').to_owned()
}

/// An image built in memory: layers and the runtime config.
#[derive(Clone, Debug, Default)]
pub struct OciImage {
    layers: Vec<Layer>,
    config: ImageRuntimeConfig,
}

impl OciImage {
    /// An image with no layers and an empty config.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a layer on top of the others.
    #[must_use]
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Sets the config's `Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User` and
    /// `StopSignal` (empty values are left out of the config).
    #[must_use]
    pub fn config(mut self, config: ImageRuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// The runtime config the image will carry.
    pub fn runtime_config(&self) -> &ImageRuntimeConfig {
        &self.config
    }

    /// Builds the layer tars, the config (this machine's architecture, os `linux`) and
    /// the manifest.
    ///
    /// # Errors
    /// [`ImageError::LayerEntry`] for an entry tar can't hold, [`ImageError::Spec`] if
    /// `oci-spec` rejects a document.
    pub fn build(&self) -> Result<ImageBlobs, ImageError> {
        let layers = self
            .layers
            .iter()
            .map(|l| Ok(Blob::new(MediaType::ImageLayer, l.to_tar()?)))
            .collect::<Result<Vec<_>, ImageError>>()?;

        let c = &self.config;
        let mut runtime = ConfigBuilder::default();
        if !c.entrypoint.is_empty() {
            runtime = runtime.entrypoint(c.entrypoint.clone());
        }
        if !c.cmd.is_empty() {
            runtime = runtime.cmd(c.cmd.clone());
        }
        if !c.env.is_empty() {
            runtime = runtime.env(c.env.clone());
        }
        if !c.working_dir.is_empty() {
            runtime = runtime.working_dir(c.working_dir.clone());
        }
        if !c.user.is_empty() {
            runtime = runtime.user(c.user.clone());
        }
        if let Some(signal) = &c.stop_signal {
            runtime = runtime.stop_signal(signal.clone());
        }
        let spec = |what| move |source| ImageError::Spec { what, source };
        let rootfs = RootFsBuilder::default()
            .typ("layers")
            .diff_ids(layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>())
            .build()
            .map_err(spec("config"))?;
        let config = ImageConfigurationBuilder::default()
            .architecture(Arch::default())
            .os(Os::Linux)
            .config(runtime.build().map_err(spec("config"))?)
            .rootfs(rootfs)
            .build()
            .map_err(spec("config"))?;
        let config = Blob::new(MediaType::ImageConfig, to_json(&config, "config")?);

        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config.descriptor()?)
            .layers(
                layers
                    .iter()
                    .map(Blob::descriptor)
                    .collect::<Result<Vec<_>, _>>()?,
            )
            .build()
            .map_err(spec("manifest"))?;
        let manifest = Blob::new(MediaType::ImageManifest, to_json(&manifest, "manifest")?);
        Ok(ImageBlobs {
            manifest,
            config,
            layers,
        })
    }

    /// The image as an OCI image-layout tar (`oci-layout`, `index.json`,
    /// `blobs/sha256/...`), its index entry named `name` by the
    /// `org.opencontainers.image.ref.name` annotation: what
    /// [`Containerd::import_oci_archive`](crate::containerd::Containerd::import_oci_archive)
    /// and `ctr images import` read.
    ///
    /// # Errors
    /// As [`OciImage::build`].
    pub fn to_oci_archive(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let blobs = self.build()?;
        let mut entry = blobs.manifest.descriptor()?;
        entry.set_annotations(Some(HashMap::from([(
            ANNOTATION_REF_NAME.to_owned(),
            name.to_owned(),
        )])));
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![entry])
            .build()
            .map_err(|source| ImageError::Spec {
                what: "index",
                source,
            })?;
        let index = to_json(&index, "index")?;

        let mut files: BTreeMap<String, &[u8]> = BTreeMap::new();
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        files.insert("oci-layout".into(), layout);
        files.insert("index.json".into(), &index);
        for blob in blobs.layers.iter().chain([&blobs.config, &blobs.manifest]) {
            let hex = blob.digest.trim_start_matches("sha256:");
            files.insert(format!("blobs/sha256/{hex}"), &blob.data);
        }
        let mut layer = Layer::new();
        for (path, data) in files {
            layer = layer.file(&path, data.to_vec(), 0o644);
        }
        layer.to_tar()
    }
}

/// The pause image: `/pause`, the embedded static binary, as its only file and
/// entrypoint, run as 65535:65535 as upstream's image is.
pub fn pause_image() -> OciImage {
    OciImage::new()
        .layer(Layer::new().file("/pause", PAUSE_BINARY, 0o755))
        .config(ImageRuntimeConfig {
            entrypoint: vec!["/pause".to_owned()],
            user: "65535:65535".to_owned(),
            ..ImageRuntimeConfig::default()
        })
}

fn to_json<T: serde::Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|source| ImageError::InvalidJson {
        what,
        digest: "(being built)".to_owned(),
        source,
    })
}

/// `sha256:<hex>` of `data`.
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_tar_is_deterministic_and_sorted() {
        let a = Layer::new()
            .file("/b/x", b"x".as_slice(), 0o644)
            .symlink("/a", "b/x")
            .dir("/tmp", 0o1777);
        let b = Layer::new().dir("tmp/", 0o1777).symlink("a", "b/x").file(
            "b/x",
            b"x".as_slice(),
            0o644,
        );
        let ta = a.to_tar().expect("tar");
        assert_eq!(ta, b.to_tar().expect("tar"));

        let mut archive = tar::Archive::new(&ta[..]);
        let entries: Vec<(String, u32, u64, u64)> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    e.path().expect("path").display().to_string(),
                    h.mode().expect("mode"),
                    h.mtime().expect("mtime"),
                    h.uid().expect("uid"),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("a".into(), 0o777, 0, 0),
                ("b/".into(), 0o755, 0, 0),
                ("b/x".into(), 0o644, 0, 0),
                ("tmp/".into(), 0o1777, 0, 0),
            ]
        );
    }

    #[test]
    fn pause_image_config_and_manifest() {
        let blobs = pause_image().build().expect("build");
        assert_eq!(blobs.layers.len(), 1);
        let config: serde_json::Value = serde_json::from_slice(&blobs.config.data).expect("json");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], Arch::default().to_string());
        assert_eq!(config["config"]["Entrypoint"][0], "/pause");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            blobs.layers[0].digest.as_str()
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&blobs.manifest.data).expect("json");
        assert_eq!(manifest["config"]["digest"], blobs.config.digest.as_str());
        let padded = (PAUSE_BINARY.len() as u64).div_ceil(512) * 512;
        // One header, the padded data, the two zero blocks that end an archive.
        assert_eq!(manifest["layers"][0]["size"], 512 + padded + 1024);
        // Building twice gives the same image.
        let again = pause_image().build().expect("build");
        assert_eq!(again.manifest.digest, blobs.manifest.digest);
    }

    #[test]
    fn pause_binary_is_static_elf() {
        let elf = PAUSE_BINARY;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELF64");
        let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
        let mut phoff = [0u8; 8];
        phoff.copy_from_slice(&elf[0x20..0x28]);
        let phoff = usize::try_from(u64::from_le_bytes(phoff)).expect("offset");
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        const PT_INTERP: u32 = 3;
        const PT_DYNAMIC: u32 = 2;
        for i in 0..phnum {
            let o = phoff + i * phentsize;
            let p_type = u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]]);
            assert!(
                p_type != PT_INTERP && p_type != PT_DYNAMIC,
                "pause must be statically linked (program header {i} is type {p_type})"
            );
        }
        assert!(elf.len() < 2 << 20, "pause is {} bytes", elf.len());
    }
}
