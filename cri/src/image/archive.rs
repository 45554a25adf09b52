//! Reading image archives without unpacking them: OCI image layouts (`oci-layout`,
//! `index.json`, `blobs/<alg>/<hex>`) and, through [`super::docker_archive`], `docker
//! save` archives (`manifest.json`). One pass over the tar records where each file's
//! bytes start, and blobs are then read from the file at those offsets, so a large
//! layer streams to containerd without being held in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::ImageIndex;

use super::ImageError;

/// Where one file's bytes are in the archive.
#[derive(Clone, Copy, Debug)]
pub(super) struct Span {
    pub offset: u64,
    pub size: u64,
}

/// A scanned OCI image-layout archive.
#[derive(Debug)]
pub(super) struct OciArchive {
    pub path: PathBuf,
    /// Blobs by digest (`sha256:<hex>`).
    pub blobs: HashMap<String, Span>,
    /// Blobs made in memory for the archive (a `docker save` archive's manifests).
    pub extra: HashMap<String, Vec<u8>>,
    pub index: ImageIndex,
}

impl OciArchive {
    /// Scans the archive at `path`. Blocking: call from `spawn_blocking`.
    pub fn scan(path: &Path) -> Result<Self, ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_owned(),
            source,
        };
        let not_layout = |reason| ImageError::NotOciLayout {
            path: path.to_owned(),
            reason,
        };
        let file = File::open(path).map_err(io)?;
        let mut archive = tar::Archive::new(file);
        let mut blobs = HashMap::new();
        let mut files = HashMap::new();
        let mut layout = None;
        let mut index = None;
        let mut docker_manifest = None;
        for entry in archive.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
            let name = name.trim_start_matches("./").trim_start_matches('/');
            files.insert(
                name.to_owned(),
                Span {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
            );
            match name.split('/').collect::<Vec<_>>()[..] {
                ["manifest.json"] => {
                    let mut buf = Vec::new();
                    entry.read_to_end(&mut buf).map_err(io)?;
                    docker_manifest = Some(buf);
                }
                ["oci-layout"] => {
                    let mut buf = Vec::new();
                    entry.read_to_end(&mut buf).map_err(io)?;
                    layout = Some(buf);
                }
                ["index.json"] => {
                    let mut buf = Vec::new();
                    entry.read_to_end(&mut buf).map_err(io)?;
                    index = Some(buf);
                }
                ["blobs", algorithm, hex] => {
                    let span = Span {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    };
                    blobs.insert(format!("{algorithm}:{hex}"), span);
                }
                _ => {}
            }
        }
        let Some(layout) = layout else {
            // Not an OCI layout: a `docker save` archive, if it has a manifest.json.
            let manifest = docker_manifest.ok_or_else(|| not_layout("no oci-layout file"))?;
            let docker = super::docker_archive::convert(path, &files, &manifest)?;
            return Ok(Self {
                path: path.to_owned(),
                blobs: docker.blobs,
                extra: docker.extra,
                index: docker.index,
            });
        };
        let layout: serde_json::Value =
            serde_json::from_slice(&layout).map_err(|_| not_layout("oci-layout is not JSON"))?;
        if layout["imageLayoutVersion"] != "1.0.0" {
            return Err(not_layout("imageLayoutVersion is not 1.0.0"));
        }
        let index = index.ok_or_else(|| not_layout("no index.json"))?;
        let index: ImageIndex =
            serde_json::from_slice(&index).map_err(|source| ImageError::InvalidJson {
                what: "index.json",
                digest: path.join("index.json").display().to_string(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            blobs,
            extra: HashMap::new(),
            index,
        })
    }

    /// Where the blob `digest` is, with its size checked against the descriptor's.
    pub fn span(&self, digest: &str, size: u64) -> Result<Span, ImageError> {
        match self.blobs.get(digest) {
            Some(span) if span.size == size => Ok(*span),
            Some(span) => Err(ImageError::DigestMismatch {
                what: format!("size of blob {digest} in {}", self.path.display()),
                expected: size.to_string(),
                actual: span.size.to_string(),
            }),
            None => Err(ImageError::MissingBlob {
                digest: digest.to_owned(),
                location: self.path.display().to_string(),
            }),
        }
    }

    /// Reads a whole (small) blob. Blocking, but only used for manifests and configs.
    pub fn read(&self, digest: &str, size: u64) -> Result<Vec<u8>, ImageError> {
        if let Some(data) = self.extra.get(digest) {
            return Ok(data.clone());
        }
        let span = self.span(digest, size)?;
        let io = |source| ImageError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(span.offset)).map_err(io)?;
        let mut buf = Vec::new();
        file.take(span.size).read_to_end(&mut buf).map_err(io)?;
        Ok(buf)
    }
}
