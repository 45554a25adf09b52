//! Snapshots: unpacking an image's layers into committed snapshots named by chain ID
//! (as containerd's `rootfs.ApplyLayers` does), and the writable snapshot a container's
//! root filesystem is made of.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Mount;
use sha2::{Digest as _, Sha256};

use super::content::{Desc, gc};
use super::{ImageError, ImageInfo};
use crate::containerd::{Containerd, labels};

/// Label containerd's unpacker puts on layer snapshots: the chain ID they stand for.
const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";
/// How long a container's prepared snapshot is protected by its lease: long enough to
/// create the container record that then references it.
const ROOTFS_LEASE_EXPIRY: Duration = Duration::from_secs(60 * 60);
/// Deadline of one layer's apply (a large layer on a slow disk).
const APPLY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The chain IDs of a stack of layers: the first layer's diff ID, then
/// `sha256(parent + " " + diff_id)` for each layer above.
pub(super) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {diff_id}")))
            ),
        };
        out.push(next);
    }
    out
}

impl Containerd {
    /// Whether the snapshot `key` exists.
    pub(super) async fn snapshot_exists(&self, key: &str) -> Result<bool, ImageError> {
        let req = StatSnapshotRequest {
            snapshotter: self.snapshotter().to_owned(),
            key: key.to_owned(),
        };
        match SnapshotsClient::new(self.channel())
            .stat(self.request(req))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(ImageError::containerd("snapshot stat", key, s)),
        }
    }

    /// Unpacks `layers` (with their `diff_ids`) into committed snapshots, skipping
    /// those that exist, and returns the top chain ID. `lease` protects the snapshots
    /// until an image references them.
    pub(super) async fn unpack(
        &self,
        lease: &str,
        layers: &[Desc],
        diff_ids: &[String],
    ) -> Result<String, ImageError> {
        let chains = chain_ids(diff_ids);
        // Hold every chain under the lease before looking (a snapshot keeps its
        // parents, but one found present must not be collected before it is used).
        let kind = format!("snapshots/{}", self.snapshotter());
        for chain in &chains {
            self.lease_add(lease, chain, &kind).await?;
        }
        // Find the highest layer already unpacked; everything below it is too.
        let mut start = chains.len();
        while start > 0 && !self.snapshot_exists(&chains[start - 1]).await? {
            start -= 1;
        }
        for i in start..chains.len() {
            let parent = if i == 0 { "" } else { chains[i - 1].as_str() };
            self.apply_layer(lease, &layers[i], &diff_ids[i], &chains[i], parent)
                .await?;
        }
        Ok(chains.last().cloned().unwrap_or_default())
    }

    /// Applies one layer on `parent` and commits it as `chain_id`.
    async fn apply_layer(
        &self,
        lease: &str,
        layer: &Desc,
        diff_id: &str,
        chain_id: &str,
        parent: &str,
    ) -> Result<(), ImageError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let key = format!("extract-{nanos}-{chain_id}");
        let labels = HashMap::from([(SNAPSHOT_REF_LABEL.to_owned(), chain_id.to_owned())]);
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter().to_owned(),
            key: key.clone(),
            parent: parent.to_owned(),
            labels: labels.clone(),
        };
        let mounts = match SnapshotsClient::new(self.channel())
            .prepare(self.leased(prepare, Some(lease)))
            .await
        {
            Ok(resp) => resp.into_inner().mounts,
            // The target label makes containerd answer AlreadyExists when another
            // unpack committed this chain meanwhile.
            Err(s) if s.code() == Code::AlreadyExists && self.snapshot_exists(chain_id).await? => {
                return Ok(());
            }
            Err(s) => return Err(ImageError::containerd("snapshot prepare", &key, s)),
        };

        let result = self
            .apply_and_commit(lease, layer, diff_id, chain_id, &key, mounts, labels)
            .await;
        if result.is_err() {
            // Best effort: the lease would let the GC take it anyway.
            let _ = self.remove_snapshot(&key).await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_and_commit(
        &self,
        lease: &str,
        layer: &Desc,
        diff_id: &str,
        chain_id: &str,
        key: &str,
        mounts: Vec<Mount>,
        labels: HashMap<String, String>,
    ) -> Result<(), ImageError> {
        let apply = ApplyRequest {
            diff: Some(layer.to_containerd()),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        };
        let applied = DiffClient::new(self.channel())
            .apply(self.request_with_timeout(apply, APPLY_TIMEOUT))
            .await
            .map_err(|s| ImageError::containerd("diff apply", &layer.digest, s))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        if applied != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("diff ID of layer {}", layer.digest),
                expected: diff_id.to_owned(),
                actual: applied,
            });
        }

        let commit = CommitSnapshotRequest {
            snapshotter: self.snapshotter().to_owned(),
            name: chain_id.to_owned(),
            key: key.to_owned(),
            labels,
        };
        match SnapshotsClient::new(self.channel())
            .commit(self.leased(commit, Some(lease)))
            .await
        {
            Ok(_) => Ok(()),
            // Committed meanwhile by a concurrent unpack: ours is redundant.
            Err(s) if s.code() == Code::AlreadyExists => {
                self.remove_snapshot(key).await?;
                Ok(())
            }
            Err(s) => Err(ImageError::containerd("snapshot commit", chain_id, s)),
        }
    }

    /// Records on the config blob that the image is unpacked into `chain_id`, so the GC
    /// keeps the snapshots as long as the image.
    pub(super) async fn label_unpacked(
        &self,
        config_digest: &str,
        chain_id: &str,
    ) -> Result<(), ImageError> {
        let key = format!("{}{}", gc::REF_SNAPSHOT_PREFIX, self.snapshotter());
        let current = self
            .content_info(config_digest)
            .await?
            .map(|i| i.labels)
            .unwrap_or_default();
        let wanted = std::collections::BTreeMap::from([(key, chain_id.to_owned())]);
        self.content_set_labels(config_digest, &current, &wanted)
            .await
    }

    /// Prepares the writable snapshot `key` on top of `image`'s layers and returns the
    /// mounts of a container's root filesystem. If `key` exists already (the agent
    /// restarted half-way through creating a container) its mounts are returned.
    ///
    /// The snapshot is held by a lease that expires after an hour, so that the GC does
    /// not take it before the container that uses it is created, and an abandoned one
    /// does not stay forever; [`Containerd::remove_snapshot`] deletes both.
    ///
    /// # Errors
    /// [`ImageError::Containerd`] when containerd refuses, e.g. the image's snapshot
    /// does not exist.
    pub async fn prepare_snapshot(
        &self,
        image: &ImageInfo,
        key: &str,
    ) -> Result<Vec<Mount>, ImageError> {
        let lease = rootfs_lease(key);
        self.create_lease(&lease, ROOTFS_LEASE_EXPIRY).await?;
        let req = PrepareSnapshotRequest {
            snapshotter: self.snapshotter().to_owned(),
            key: key.to_owned(),
            parent: image.chain_id.clone(),
            labels: HashMap::from([(
                labels::MANAGED_BY.to_owned(),
                labels::MANAGED_BY_VALUE.to_owned(),
            )]),
        };
        match SnapshotsClient::new(self.channel())
            .prepare(self.leased(req, Some(&lease)))
            .await
        {
            Ok(resp) => Ok(resp.into_inner().mounts),
            Err(s) if s.code() == Code::AlreadyExists => {
                let req = MountsRequest {
                    snapshotter: self.snapshotter().to_owned(),
                    key: key.to_owned(),
                };
                SnapshotsClient::new(self.channel())
                    .mounts(self.request(req))
                    .await
                    .map(|r| r.into_inner().mounts)
                    .map_err(|s| ImageError::containerd("snapshot mounts", key, s))
            }
            Err(s) => Err(ImageError::containerd("snapshot prepare", key, s)),
        }
    }

    /// Removes the snapshot `key` (and the lease [`Containerd::prepare_snapshot`] made
    /// for it). A snapshot that does not exist is not an error.
    ///
    /// # Errors
    /// [`ImageError::Containerd`] when containerd refuses, e.g. the snapshot is the
    /// parent of another.
    pub async fn remove_snapshot(&self, key: &str) -> Result<(), ImageError> {
        let req = RemoveSnapshotRequest {
            snapshotter: self.snapshotter().to_owned(),
            key: key.to_owned(),
        };
        match SnapshotsClient::new(self.channel())
            .remove(self.request(req))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(ImageError::containerd("snapshot remove", key, s)),
        }
        self.delete_lease(&rootfs_lease(key)).await
    }
}

/// The lease holding a container's snapshot: derived from the key (which may hold
/// characters a lease ID may not) so that removal finds it.
fn rootfs_lease(key: &str) -> String {
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    format!("nodelet-rootfs-{}", &hash[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{a} {b}").as_bytes()))
        );
        assert_eq!(chains[1], want);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn rootfs_lease_ids_are_valid_identifiers() {
        let id = rootfs_lease("k8s.io/some container/../weird");
        assert!(id.len() <= 76);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
