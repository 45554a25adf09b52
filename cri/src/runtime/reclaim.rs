//! Crash recovery of sandbox creation: an intent record written before the first side
//! effect of a sandbox, and the reclaim pass a starting agent runs before it admits
//! pods.
//!
//! A sandbox is made in steps, each leaving something on the host keyed by the
//! sandbox ID: its state directory (with the intent), the pinned network namespace,
//! the CNI attachment (IP, veth, cached result), the pause snapshot, the container
//! record, the task. The container record comes late, so an agent killed before it
//! leaves the earlier steps behind with no sandbox to own them, as containerd's CRI
//! plugin would without its sandbox store. The reclaim pass lists what only nodelet
//! makes (its netns pin directory, its state directories, its CNI network's cache
//! entries in its own cache directory, the snapshots it labelled in its containerd
//! namespace), takes away every ID that has a container record, and tears the rest
//! down the way `remove_sandbox` does: CNI `DEL` with the cached result, unmount the
//! pin, remove the files and the snapshot. Every step is idempotent, so a crash
//! during the reclaim is finished by the next start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{Kind as SnapshotKind, ListSnapshotsRequest};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt as _;
use tracing::{debug, info, warn};

use super::containerd::{grpc, io_err};
use super::{ContainerdRuntime, PodRef, RuntimeError};
use crate::cni::{Cni, CniRequest};
use crate::containerd::labels;
use crate::netns::NetNs;

/// The intent file in a sandbox's state directory.
const INTENT_FILE: &str = "intent.json";

/// What a sandbox being made is for, written before anything else of it exists.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    pod_uid: String,
    pod_name: String,
    pod_namespace: String,
    /// The network namespace pin it will have, if any.
    netns: Option<PathBuf>,
}

/// What a reclaim pass found and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// Sandbox IDs with leftovers and no container record.
    pub sandboxes: usize,
    /// Network namespace pins unmounted and removed.
    pub netns_pins: usize,
    /// CNI attachments torn down with `DEL` (IPs released, veths removed).
    pub cni_attachments: usize,
    /// Sandbox state directories removed.
    pub state_dirs: usize,
    /// Container and sandbox root filesystem snapshots removed.
    pub snapshots: usize,
    /// Unfinished CNI cache writes (temporary files) removed.
    pub cni_cache_temp_files: usize,
    /// How long the pass took.
    pub elapsed: Duration,
}

/// Whether `key` has the form of the IDs nodelet gives containers and sandboxes
/// (64 lowercase hex digits): other snapshots (image layers, unpacks) are left alone.
fn is_object_id(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The names of the entries of `dir` that look like object IDs.
fn ids_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_object_id(n))
                .collect()
        })
        .unwrap_or_default()
}

impl ContainerdRuntime {
    fn netns_dir(&self) -> PathBuf {
        self.config().state_dir.join("netns")
    }

    fn sandboxes_dir(&self) -> PathBuf {
        self.config().state_dir.join("sandboxes")
    }

    /// Records that sandbox `id` of `pod` is being made, before any of it exists, so
    /// an agent killed at any later step leaves a trail the next start follows.
    pub(super) fn write_intent(
        &self,
        id: &str,
        pod: &PodRef,
        netns: Option<&Path>,
    ) -> Result<(), RuntimeError> {
        let dir = self.sandboxes_dir().join(id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let intent = Intent {
            pod_uid: pod.uid.clone(),
            pod_name: pod.name.clone(),
            pod_namespace: pod.namespace.clone(),
            netns: netns.map(Path::to_path_buf),
        };
        let path = dir.join(INTENT_FILE);
        let bytes = serde_json::to_vec(&intent).map_err(|e| RuntimeError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        // Written and synced before the side effects it announces.
        let tmp = dir.join(".intent.json.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(io_err(&path))
    }

    fn read_intent(&self, id: &str) -> Option<Intent> {
        let path = self.sandboxes_dir().join(id).join(INTENT_FILE);
        let bytes = std::fs::read(&path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The IDs of every container record in the namespace, sandboxes and containers,
    /// nodelet's or not: nothing with a record is touched.
    async fn record_ids(&self) -> Result<BTreeSet<String>, RuntimeError> {
        Ok(self
            .list_raw(None)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// nodelet's active snapshots keyed by an object ID.
    async fn own_snapshots(&self) -> Result<Vec<String>, RuntimeError> {
        let req = self.containerd().request(ListSnapshotsRequest {
            snapshotter: self.containerd().snapshotter().to_owned(),
            filters: vec![format!(
                "labels.{:?}=={:?}",
                labels::MANAGED_BY,
                labels::MANAGED_BY_VALUE
            )],
        });
        let mut stream = SnapshotsClient::new(self.containerd().channel())
            .list(req)
            .await
            .map_err(grpc("list snapshots", ""))?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(grpc("list snapshots", ""))?;
            keys.extend(
                msg.info
                    .into_iter()
                    .filter(|i| i.kind == SnapshotKind::Active as i32 && is_object_id(&i.name))
                    .map(|i| i.name),
            );
        }
        Ok(keys)
    }

    /// Finds what half-made sandboxes and containers left behind (see the module doc)
    /// and removes it. Run once at start, before pods are admitted: nothing is being
    /// made then, so an ID without a container record is an orphan. Logs one line
    /// with what was reclaimed.
    ///
    /// # Errors
    /// containerd can't list containers or snapshots; a leftover that can't be
    /// removed is logged and tried again at the next start.
    pub async fn reclaim_leaked(&self) -> Result<Reclaimed, RuntimeError> {
        let start = Instant::now();
        let live = self.record_ids().await?;
        let cni = self.cni_cache().get().ok();
        let mut candidates: BTreeSet<String> = BTreeSet::new();
        candidates.extend(ids_in(&self.netns_dir()));
        candidates.extend(ids_in(&self.sandboxes_dir()));
        if let Some(podnet) = self.builtin_network() {
            candidates.extend(
                podnet
                    .allocated_ids()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|id| is_object_id(id)),
            );
        }
        if let Some(cni) = &cni {
            candidates.extend(
                cni.cached_container_ids("eth0")
                    .into_iter()
                    .filter(|id| is_object_id(id)),
            );
        }
        let mut out = Reclaimed {
            cni_cache_temp_files: cni.as_deref().map_or(0, Cni::remove_stale_cache_writes),
            ..Reclaimed::default()
        };
        for id in candidates.iter().filter(|id| !live.contains(*id)) {
            out.sandboxes += 1;
            self.reclaim_sandbox(id, cni.as_deref(), &mut out).await;
        }
        for key in self.own_snapshots().await? {
            if live.contains(&key) {
                continue;
            }
            match self.containerd().remove_snapshot(&key).await {
                Ok(()) => out.snapshots += 1,
                Err(e) => warn!(snapshot = %key, error = %e, "cannot remove a leaked snapshot"),
            }
        }
        out.elapsed = start.elapsed();
        if out.sandboxes + out.snapshots + out.cni_cache_temp_files > 0 {
            info!(
                sandboxes = out.sandboxes,
                netns_pins = out.netns_pins,
                cni_attachments = out.cni_attachments,
                state_dirs = out.state_dirs,
                snapshots = out.snapshots,
                cni_cache_temp_files = out.cni_cache_temp_files,
                elapsed_ms = out.elapsed.as_millis(),
                "reclaimed resources leaked by an interrupted sandbox or container creation"
            );
        } else {
            debug!(
                elapsed_ms = out.elapsed.as_millis(),
                "nothing leaked to reclaim"
            );
        }
        Ok(out)
    }

    /// Tears down what sandbox `id` left: its CNI attachment (with the cached result
    /// and the pod identity from its intent), its pin, its state directory. Each part
    /// that fails stays for the next start.
    async fn reclaim_sandbox(&self, id: &str, cni: Option<&Cni>, out: &mut Reclaimed) {
        let intent = self.read_intent(id);
        // Only ever a pin in nodelet's own directory, whatever the intent says.
        let pin = self.netns_dir().join(id);
        let cached = cni.is_some_and(|c| c.cached_container_ids("eth0").iter().any(|c| c == id));
        // A pin means CNI may have run (the cache is written after ADD): DEL is owed.
        let mut network_done = true;
        let builtin = match self.builtin_network() {
            Some(p) if p.holds(id).await.unwrap_or(false) => Some(p),
            _ => None,
        };
        // The network was surely made (an allocation or a cached ADD result).
        let attached = builtin.is_some() || cached;
        if let Some(podnet) = builtin {
            match podnet.teardown(id).await {
                Ok(()) => out.cni_attachments += 1,
                Err(e) => {
                    network_done = false;
                    warn!(sandbox = id, error = %e, "cannot tear down a leaked built-in pod network");
                }
            }
        } else if let Some(cni) = cni
            && (cached || pin.exists())
        {
            let (uid, name, namespace) = intent
                .as_ref()
                .map(|i| {
                    (
                        i.pod_uid.as_str(),
                        i.pod_name.as_str(),
                        i.pod_namespace.as_str(),
                    )
                })
                .unwrap_or_default();
            let req = CniRequest {
                container_id: id,
                netns: &pin,
                ifname: "eth0",
                pod_namespace: namespace,
                pod_name: name,
                pod_uid: uid,
                // Those ADD had, from the CNI cache.
                port_mappings: &[],
            };
            match cni.teardown(&req).await {
                Ok(()) => out.cni_attachments += 1,
                Err(e) => {
                    network_done = false;
                    warn!(sandbox = id, error = %e, "cannot tear down a leaked pod network");
                }
            }
        }
        if !network_done {
            // The pin stays for the DEL that is still owed (the bridge plugin needs it
            // to remove the pod's end of the veth).
            return;
        }
        if attached {
            // A crash here leaves a pin and a state directory whose network is gone:
            // the next pass sends DEL again (a no-op) and removes them.
            crate::failpoint::hit("reclaim-after-network");
        }
        if pin.exists() {
            match NetNs::remove(&pin) {
                Ok(()) => out.netns_pins += 1,
                Err(e) => warn!(sandbox = id, error = %e, "cannot remove a leaked netns pin"),
            }
        }
        let dir = self.sandboxes_dir().join(id);
        if dir.exists() {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => out.state_dirs += 1,
                Err(e) => {
                    warn!(sandbox = id, error = %e, "cannot remove a leaked sandbox directory")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_object_ids_are_candidates() {
        assert!(is_object_id(&"a1".repeat(32)));
        assert!(!is_object_id(&"A1".repeat(32)));
        assert!(!is_object_id("sha256:abc"));
        assert!(!is_object_id(&"a".repeat(63)));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a".repeat(64)), b"").expect("write");
        std::fs::write(dir.path().join("lock"), b"").expect("write");
        assert_eq!(ids_in(dir.path()), vec!["a".repeat(64)]);
    }
}
