//! The image API on [`Containerd`]: importing images (built in memory or from OCI
//! archives), looking them up, and the pause image.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest,
    UpdateImageRequest,
};
use containerd_client::tonic::Code;
use oci_spec::image::ANNOTATION_REF_NAME;

use super::archive::OciArchive;
use super::content::Desc;
use super::oci::{ImageBlobs, OciImage, pause_image};
use super::resolve::{Resolved, Source, resolve};
use super::snapshot::chain_ids;
use super::{ImageError, ImageInfo, PAUSE_IMAGE, normalize_reference};
use crate::containerd::{Containerd, labels};

/// The annotation containerd's exporter names images with (preferred over
/// `org.opencontainers.image.ref.name`, as containerd's importer does).
const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// How long an import lease lives if the agent dies before deleting it.
const IMPORT_LEASE_EXPIRY: Duration = Duration::from_secs(24 * 60 * 60);

impl Containerd {
    /// Imports an image built in memory under the name `name` (normalized), unpacks
    /// it, and returns it. Importing the same image again is cheap: blobs and
    /// snapshots that exist are not written again.
    ///
    /// # Errors
    /// [`ImageError::InvalidReference`] for a bad name, the errors of
    /// [`OciImage::build`], and [`ImageError::Containerd`] when containerd refuses a
    /// write, the image record or an unpack step.
    pub async fn import_image(
        &self,
        image: &OciImage,
        name: &str,
    ) -> Result<ImageInfo, ImageError> {
        let name = normalize_reference(name)?;
        let blobs = image.build()?;
        self.import_blobs(&blobs, name).await
    }

    async fn import_blobs(
        &self,
        blobs: &ImageBlobs,
        name: String,
    ) -> Result<ImageInfo, ImageError> {
        let target = Desc {
            media_type: blobs.manifest.media_type.to_string(),
            digest: blobs.manifest.digest.clone(),
            size: blobs.manifest.data.len() as u64,
        };
        let mut infos = self
            .import(Source::Memory(blobs), vec![(name.clone(), target)])
            .await?;
        infos.pop().ok_or(ImageError::MissingBlob {
            digest: blobs.manifest.digest.clone(),
            location: name,
        })
    }

    /// Imports the images of an OCI image-layout archive (an uncompressed tar of
    /// `oci-layout`, `index.json` and `blobs/`), unpacks them, and returns their names.
    ///
    /// Each entry of `index.json` is named by its `io.containerd.image.name`
    /// annotation, else by its `org.opencontainers.image.ref.name` annotation, which
    /// must then be a full reference (`example.local/app:1.0`): a bare tag like `1.0`
    /// does not say which repository it belongs to. Only the blobs of this machine's
    /// platform are imported.
    ///
    /// # Errors
    /// [`ImageError::Io`] and [`ImageError::NotOciLayout`] for an unreadable archive,
    /// [`ImageError::UnnamedImage`] and [`ImageError::BareTagName`] for entries
    /// without a usable name, [`ImageError::MissingBlob`] and the like for a broken
    /// layout, [`ImageError::Containerd`] when containerd refuses.
    pub async fn import_oci_archive(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        let owned = path.to_owned();
        let archive = tokio::task::spawn_blocking(move || OciArchive::scan(&owned))
            .await
            .map_err(|e| ImageError::Io {
                path: path.to_owned(),
                source: std::io::Error::other(e),
            })??;

        let mut images = Vec::new();
        for entry in archive.index.manifests() {
            let digest = entry.digest().to_string();
            let annotations = entry.annotations().clone().unwrap_or_default();
            let name = if let Some(name) = annotations.get(CONTAINERD_IMAGE_NAME) {
                normalize_reference(name)?
            } else if let Some(name) = annotations.get(ANNOTATION_REF_NAME) {
                if !name.contains(['/', ':', '@']) {
                    return Err(ImageError::BareTagName {
                        path: path.to_owned(),
                        digest,
                        tag: name.clone(),
                    });
                }
                normalize_reference(name)?
            } else {
                return Err(ImageError::UnnamedImage {
                    path: path.to_owned(),
                    digest,
                });
            };
            images.push((name, Desc::from_oci(entry)));
        }
        let infos = self.import(Source::Archive(&archive), images).await?;
        let mut seen = HashSet::new();
        Ok(infos
            .into_iter()
            .map(|i| i.name)
            .filter(|n| seen.insert(n.clone()))
            .collect())
    }

    /// Imports `images` (name, target) from `source` under one lease: every blob, then
    /// the image records, then the unpacked snapshots.
    async fn import(
        &self,
        source: Source<'_>,
        images: Vec<(String, Desc)>,
    ) -> Result<Vec<ImageInfo>, ImageError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let lease = format!("nodelet-import-{nanos}");
        self.create_lease(&lease, IMPORT_LEASE_EXPIRY).await?;
        let result = self.import_leased(&lease, source, images).await;
        let deleted = self.delete_lease(&lease).await;
        let infos = result?;
        deleted?;
        Ok(infos)
    }

    async fn import_leased(
        &self,
        lease: &str,
        source: Source<'_>,
        images: Vec<(String, Desc)>,
    ) -> Result<Vec<ImageInfo>, ImageError> {
        let mut resolved = Vec::new();
        let mut written = HashSet::new();
        for (name, target) in images {
            let image = resolve(source, &target, &name).await?;
            for (desc, labels) in &image.blobs {
                if written.insert(desc.digest.clone()) {
                    self.ensure_blob(lease, desc, source.data(desc)?, labels)
                        .await?;
                }
            }
            tracing::debug!(image = %name, digest = %target.digest, "image content imported");
            resolved.push((name, image));
        }
        let mut infos = Vec::new();
        for (name, image) in resolved {
            self.put_image_record(&name, &image.target).await?;
            let chain_id = self.unpack(lease, &image.layers, &image.diff_ids).await?;
            self.label_unpacked(&image.config.digest, &chain_id).await?;
            tracing::info!(image = %name, chain_id = %chain_id, "image imported");
            infos.push(info(name, &image, chain_id));
        }
        Ok(infos)
    }

    /// Creates the image record `name` → `target`, or points an existing one there.
    pub(super) async fn put_image_record(
        &self,
        name: &str,
        target: &Desc,
    ) -> Result<(), ImageError> {
        let image = Image {
            name: name.to_owned(),
            labels: [(
                labels::MANAGED_BY.to_owned(),
                labels::MANAGED_BY_VALUE.to_owned(),
            )]
            .into(),
            target: Some(target.to_containerd()),
            created_at: None,
            updated_at: None,
        };
        let mut client = ImagesClient::new(self.channel());
        let create = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match client.create(self.request(create)).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(ImageError::containerd("image create", name, s)),
        }
        if let Some(existing) = self.image_record(name).await?
            && existing.target.as_ref().map(Desc::from_containerd).as_ref() == Some(target)
        {
            return Ok(());
        }
        let update = UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["target".to_owned()],
            }),
            source_date_epoch: None,
        };
        client
            .update(self.request(update))
            .await
            .map_err(|s| ImageError::containerd("image update", name, s))?;
        Ok(())
    }

    pub(super) async fn image_record(&self, name: &str) -> Result<Option<Image>, ImageError> {
        let req = GetImageRequest {
            name: name.to_owned(),
        };
        match ImagesClient::new(self.channel())
            .get(self.request(req))
            .await
        {
            Ok(resp) => Ok(resp.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(ImageError::containerd("image get", name, s)),
        }
    }

    /// Looks up an image by reference (normalized first); `None` when containerd has
    /// no image of that name. A found image is unpacked if it is not yet (cheap when
    /// its snapshots exist).
    ///
    /// # Errors
    /// [`ImageError::InvalidReference`] for a bad reference, [`ImageError::Containerd`]
    /// when containerd fails, [`ImageError::NoMatchingPlatform`] when the image has
    /// nothing for this machine, and content errors for a broken image.
    pub async fn get_image(&self, reference: &str) -> Result<Option<ImageInfo>, ImageError> {
        let name = normalize_reference(reference)?;
        let Some(record) = self.image_record(&name).await? else {
            return Ok(None);
        };
        let image = self.resolve_record(&record).await?;
        let chain_id = chain_ids(&image.diff_ids).pop().unwrap_or_default();
        if !chain_id.is_empty() && !self.snapshot_exists(&chain_id).await? {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let lease = format!("nodelet-unpack-{nanos}");
            self.create_lease(&lease, IMPORT_LEASE_EXPIRY).await?;
            let result = async {
                let chain = self.unpack(&lease, &image.layers, &image.diff_ids).await?;
                self.label_unpacked(&image.config.digest, &chain).await
            }
            .await;
            let deleted = self.delete_lease(&lease).await;
            result?;
            deleted?;
            tracing::info!(image = %name, chain_id = %chain_id, "image unpacked");
        }
        Ok(Some(info(name, &image, chain_id)))
    }

    async fn resolve_record(&self, record: &Image) -> Result<Resolved, ImageError> {
        let target = record
            .target
            .as_ref()
            .map(Desc::from_containerd)
            .ok_or_else(|| ImageError::MissingBlob {
                digest: "(no target)".to_owned(),
                location: format!("image record {}", record.name),
            })?;
        if let Some(resolved) = self.resolved.get(&target) {
            return Ok(resolved);
        }
        let resolved = resolve(Source::Containerd(self), &target, &record.name).await?;
        self.resolved.put(&resolved);
        Ok(resolved)
    }

    /// Makes sure the pause image ([`PAUSE_IMAGE`]) is present: imports the one built
    /// from the embedded pause binary when it is missing or differs (a new agent
    /// version), and returns it.
    ///
    /// What was found is kept (shared by this handle's clones) and returned without a
    /// call to containerd until [`Containerd::forget_pause_image`]: removing an image
    /// of that name or ID through this handle forgets it, as does a sandbox whose
    /// making failed (the image may have been removed behind the agent's back; the next
    /// sandbox looks again). Image GC never collects the pause image (it is pinned).
    /// Concurrent callers with nothing kept wait for one lookup.
    ///
    /// # Errors
    /// As [`Containerd::import_image`] and [`Containerd::get_image`].
    pub async fn ensure_pause_image(&self) -> Result<ImageInfo, ImageError> {
        let mut kept = self.pause.lock().await;
        if let Some(info) = kept.as_ref() {
            return Ok(info.clone());
        }
        let digest = pause_manifest_digest()?;
        let info = match self.get_image(PAUSE_IMAGE).await? {
            Some(info) if info.repo_digest == digest => info,
            _ => {
                self.import_blobs(&pause_image().build()?, PAUSE_IMAGE.to_owned())
                    .await?
            }
        };
        *kept = Some(info.clone());
        Ok(info)
    }

    /// Forgets the pause image [`Containerd::ensure_pause_image`] kept: the next call
    /// looks it up in containerd again.
    pub async fn forget_pause_image(&self) {
        *self.pause.lock().await = None;
    }

    /// Removes an image: `name` is a reference (normalized first) or an image ID (the
    /// config digest, `sha256:...`, as image GC names images). Every image record of
    /// that image goes, as the CRI's `RemoveImage` does, the last one synchronously so
    /// that containerd's GC has freed its content and snapshots on return. An image
    /// that is not there is not an error. Snapshots still used by containers stay (the
    /// GC keeps them).
    ///
    /// # Errors
    /// [`ImageError::InvalidReference`] for a bad name, [`ImageError::Containerd`] when
    /// listing or deleting fails.
    pub async fn remove_image(&self, name: &str) -> Result<(), ImageError> {
        // Content may go with the image: nothing resolved is trusted past a removal.
        self.resolved.clear();
        let records = self.image_records().await?;
        let by_id = name.starts_with("sha256:") && super::reference::valid_digest(name);
        let id = if by_id {
            name.to_owned()
        } else {
            let name = normalize_reference(name)?;
            let Some(record) = records.iter().find(|r| r.name == name) else {
                return Ok(());
            };
            match self.resolve_record(record).await {
                Ok(image) => image.config.digest,
                // Broken or foreign image: it has no ID to share with others.
                Err(error) => {
                    tracing::debug!(image = %name, %error, "removing an image that does not resolve");
                    let deleted = self.delete_image_record(&name, true).await;
                    self.forget_pause_image().await;
                    return deleted;
                }
            }
        };
        let mut names = Vec::new();
        for record in &records {
            if let Ok(image) = self.resolve_record(record).await
                && image.config.digest == id
            {
                names.push(record.name.clone());
            }
        }
        let last = names.len().saturating_sub(1);
        let deleted = async {
            for (i, n) in names.iter().enumerate() {
                self.delete_image_record(n, i == last).await?;
            }
            Ok::<_, ImageError>(())
        }
        .await;
        // Whatever was removed, the pause image is looked up again (after the removal,
        // so a lookup made during it is forgotten too).
        self.forget_pause_image().await;
        deleted?;
        if !names.is_empty() {
            tracing::info!(image = %id, names = ?names, "image removed");
        }
        Ok(())
    }

    async fn delete_image_record(&self, name: &str, sync: bool) -> Result<(), ImageError> {
        let req = DeleteImageRequest {
            name: name.to_owned(),
            sync,
            target: None,
        };
        match ImagesClient::new(self.channel())
            .delete(self.request(req))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(ImageError::containerd("image delete", name, s)),
        }
    }

    async fn image_records(&self) -> Result<Vec<Image>, ImageError> {
        Ok(ImagesClient::new(self.channel())
            .list(self.request(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(|s| ImageError::containerd("image list", self.namespace(), s))?
            .into_inner()
            .images)
    }

    /// Every image in the namespace that resolves for this machine. Images that don't
    /// (another platform only, missing content) are left out with a warning. Nothing
    /// is unpacked: `chain_id` is what the snapshot is or would be named.
    ///
    /// # Errors
    /// [`ImageError::Containerd`] when the list itself fails.
    pub async fn list_images(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let records = self.image_records().await?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            match self.resolve_record(&record).await {
                Ok(image) => {
                    let chain_id = chain_ids(&image.diff_ids).pop().unwrap_or_default();
                    out.push(info(record.name.clone(), &image, chain_id));
                }
                Err(error) => {
                    tracing::warn!(image = %record.name, %error, "image left out of the list");
                }
            }
        }
        Ok(out)
    }
}

pub(super) fn info(name: String, image: &Resolved, chain_id: String) -> ImageInfo {
    ImageInfo {
        name,
        id: image.config.digest.clone(),
        repo_digest: image.target.digest.clone(),
        chain_id,
        size: image.size(),
        config: image.runtime.clone(),
    }
}

/// The built-in pause image's manifest digest, worked out once per process. Building
/// the image means a tar of the 0.9 MB pause binary and its SHA-256: done for every
/// sandbox, it cost a millisecond of CPU and about 2 MB of memory held by each sandbox
/// being made, so 110 pods started at once left the agent's heap 80 MB larger.
fn pause_manifest_digest() -> Result<&'static str, ImageError> {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(d) = DIGEST.get() {
        return Ok(d);
    }
    let digest = pause_image().build()?.manifest.digest;
    Ok(DIGEST.get_or_init(|| digest))
}
