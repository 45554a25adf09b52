//! `docker save` archives: `manifest.json` (a list of `{"Config", "RepoTags",
//! "Layers"}`), the config JSON and one tar per layer, turned into what an OCI layout
//! would hold, so the import path is the same: blobs by digest (the archive's files,
//! hashed here), an OCI manifest per image made in memory, and an index naming each of
//! its `RepoTags` (normalized, as containerd's importer names docker images).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use oci_spec::image::ImageIndex;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::archive::Span;
use super::{ImageError, normalize_reference};

/// The annotation the index names images by (containerd's).
const IMAGE_NAME: &str = "io.containerd.image.name";

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A docker archive as an OCI layout.
pub(super) struct Converted {
    pub blobs: HashMap<String, Span>,
    pub extra: HashMap<String, Vec<u8>>,
    pub index: ImageIndex,
}

/// Converts a scanned docker archive at `path` (its `files` and `manifest.json`).
/// Blocking: reads and hashes every layer.
pub(super) fn convert(
    path: &Path,
    files: &HashMap<String, Span>,
    manifest: &[u8],
) -> Result<Converted, ImageError> {
    let bad = |reason, file: Option<&str>| ImageError::NotDockerArchive {
        path: path.to_owned(),
        reason,
        file: file.map(str::to_owned),
    };
    let entries: Vec<Entry> =
        serde_json::from_slice(manifest).map_err(|source| ImageError::InvalidJson {
            what: "manifest.json",
            digest: path.join("manifest.json").display().to_string(),
            source,
        })?;
    if entries.is_empty() {
        return Err(bad("manifest.json lists no images", None));
    }
    let mut file = File::open(path).map_err(|source| ImageError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut blobs = HashMap::new();
    let mut extra = HashMap::new();
    let mut index_entries = Vec::new();
    let mut hashed: HashMap<String, (String, [u8; 4])> = HashMap::new();
    for entry in entries {
        let span_of = |name: &str| {
            let name = name.trim_start_matches("./").trim_start_matches('/');
            files
                .get(name)
                .copied()
                .ok_or_else(|| bad("a file named in manifest.json is missing", Some(name)))
        };
        let config_span = span_of(&entry.config)?;
        let config = read_span(path, &mut file, config_span, 4 << 20)?;
        let config_digest = super::oci::sha256_digest(&config);
        let diff_ids: Vec<String> = serde_json::from_slice::<serde_json::Value>(&config)
            .ok()
            .and_then(|v| {
                v["rootfs"]["diff_ids"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .ok_or_else(|| bad("config has no rootfs.diff_ids", Some(&entry.config)))?;
        if diff_ids.len() != entry.layers.len() {
            return Err(ImageError::LayerCount {
                image: config_digest,
                layers: entry.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        blobs.insert(config_digest.clone(), config_span);

        let mut layers = Vec::new();
        for layer in &entry.layers {
            let span = span_of(layer)?;
            let (digest, magic) = match hashed.get(layer) {
                Some(h) => h.clone(),
                None => {
                    let h = hash_span(path, &mut file, span)?;
                    hashed.insert(layer.clone(), h.clone());
                    h
                }
            };
            // Layers are plain tars from `docker save`, but compressed ones are valid
            // too: the media type tells containerd's differ how to read them.
            let media_type = match magic {
                [0x1f, 0x8b, ..] => "application/vnd.oci.image.layer.v1.tar+gzip",
                [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
                _ => "application/vnd.oci.image.layer.v1.tar",
            };
            blobs.insert(digest.clone(), span);
            layers.push(serde_json::json!({
                "mediaType": media_type, "digest": digest, "size": span.size,
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_span.size,
            },
            "layers": layers,
        });
        let manifest = serde_json::to_vec(&manifest).map_err(|source| ImageError::InvalidJson {
            what: "manifest",
            digest: "(being built)".to_owned(),
            source,
        })?;
        let manifest_digest = super::oci::sha256_digest(&manifest);
        let size = manifest.len();
        extra.insert(manifest_digest.clone(), manifest);

        let tags = entry.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            return Err(ImageError::UnnamedImage {
                path: path.to_owned(),
                digest: manifest_digest,
            });
        }
        for tag in tags {
            index_entries.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": size,
                "annotations": { IMAGE_NAME: normalize_reference(&tag)? },
            }));
        }
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": index_entries,
    });
    let index: ImageIndex =
        serde_json::from_value(index).map_err(|source| ImageError::InvalidJson {
            what: "index",
            digest: "(being built)".to_owned(),
            source,
        })?;
    Ok(Converted {
        blobs,
        extra,
        index,
    })
}

fn read_span(path: &Path, file: &mut File, span: Span, max: u64) -> Result<Vec<u8>, ImageError> {
    if span.size > max {
        return Err(ImageError::BlobTooLarge {
            what: "config",
            digest: path.display().to_string(),
            size: span.size,
        });
    }
    let io = |source| ImageError::Io {
        path: path.to_owned(),
        source,
    };
    file.seek(SeekFrom::Start(span.offset)).map_err(io)?;
    let mut buf = Vec::new();
    file.take(span.size).read_to_end(&mut buf).map_err(io)?;
    Ok(buf)
}

/// The sha256 digest of a file in the archive, and its first four bytes.
fn hash_span(path: &Path, file: &mut File, span: Span) -> Result<(String, [u8; 4]), ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_owned(),
        source,
    };
    file.seek(SeekFrom::Start(span.offset)).map_err(io)?;
    let mut reader = (&mut *file).take(span.size);
    let mut hasher = Sha256::new();
    let mut magic = [0u8; 4];
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        let n = reader.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if total + i < 4 {
                magic[total + i] = *b;
            } else {
                break;
            }
        }
        total += n;
        hasher.update(&buf[..n]);
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), magic))
}
