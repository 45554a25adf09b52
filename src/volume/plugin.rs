//! The plugin side of the manager: the [`VolumePlugin`] trait each kind implements,
//! what a plugin's setup is given ([`SetupContext`]) and may keep between syncs
//! ([`VolumeState`], [`CachedToken`]), and helpers the API-backed kinds share.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Volume;

use super::{
    ObjectSource, PodContext, Reason, SYNC_PERIOD, TokenRequestSpec, atomic_writer, mount,
};

/// A token a projected volume holds, and what it was requested with.
#[derive(Debug, Clone)]
pub(crate) struct CachedToken {
    pub request: TokenRequestSpec,
    pub token: String,
    pub issued_at: SystemTime,
    pub expiration: SystemTime,
}

impl CachedToken {
    /// Upstream's token manager: refresh after 80% of the lifetime, or after 24 h.
    pub(crate) fn refresh_at(&self) -> SystemTime {
        let life = self
            .expiration
            .duration_since(self.issued_at)
            .unwrap_or_default();
        let at = self.issued_at + life.mul_f64(0.8);
        at.min(self.issued_at + Duration::from_secs(24 * 3600))
    }
}

/// What the manager remembers about one volume of a pod.
#[derive(Debug, Clone, Default)]
pub(crate) struct VolumeState {
    /// The volume as last set up (`None` before the first success).
    pub source: Option<Volume>,
    /// Its host path.
    pub path: PathBuf,
    /// When its content was last made (API objects read).
    pub synced_at: Option<SystemTime>,
    /// Service account tokens by path (projected volumes).
    pub tokens: BTreeMap<String, CachedToken>,
}

impl VolumeState {
    /// Whether the sync period has passed since the content was read.
    pub(crate) fn sync_due(&self, now: SystemTime) -> bool {
        self.synced_at
            .is_none_or(|t| now.duration_since(t).map_or(true, |age| age >= SYNC_PERIOD))
    }
}

/// Everything one plugin's setup needs.
pub(crate) struct SetupContext<'a> {
    pub ctx: &'a PodContext<'a>,
    pub volume: &'a Volume,
    /// `<pods_dir>/<uid>/volumes/<plugin dir>/<name>` (unused by hostPath).
    pub dir: PathBuf,
    pub fs_group: Option<u32>,
    pub objects: &'a dyn ObjectSource,
    pub now: SystemTime,
}

/// One volume kind.
pub(crate) trait VolumePlugin: Send + Sync {
    /// The kind as the API names its field (`configMap`).
    fn kind(&self) -> &'static str;
    /// The directory under `volumes/` (`kubernetes.io~configmap`); `None` for kinds
    /// that live outside the pod directory (hostPath).
    fn dir_name(&self) -> Option<&'static str>;
    /// Whether this plugin handles `v`.
    fn can_support(&self, v: &Volume) -> bool;
    /// Makes the volume exist with current content; returns its host path.
    fn setup<'a>(
        &'a self,
        cx: &'a SetupContext<'a>,
        state: &'a mut VolumeState,
    ) -> BoxFuture<'a, Result<PathBuf, Reason>>;
    /// Whether content that changes by itself (API objects, tokens) is due for a
    /// refresh. The manager also redoes a volume whose pod changed.
    fn needs_update(&self, _state: &VolumeState, _now: SystemTime) -> bool {
        false
    }
    /// Removes the volume at `dir`: unmounts it if mounted, then deletes it.
    fn teardown(&self, dir: &Path) -> Vec<Reason> {
        let mut errors = mount::unmount_all_under(dir);
        if errors.is_empty()
            && let Err(source) = fs::remove_dir_all(dir)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(Reason::Io {
                op: "remove",
                path: dir.to_owned(),
                source,
            });
        }
        errors
    }
}

/// Runs filesystem and mount work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Reason> + Send + 'static,
) -> Result<T, Reason> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Reason::Task(e.to_string()))?
}

/// A permission mode from the API (`mode`, `defaultMode`), 0644 when unset.
pub(crate) fn file_mode(mode: Option<i32>) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok())
        .map_or(0o644, |m| m & 0o7777)
}

/// Writes an API-backed volume's `payload` into the context's directory (see
/// [`write_volume`]) off the async threads; the directory is the volume's path.
pub(crate) async fn write_payload(
    cx: &SetupContext<'_>,
    payload: atomic_writer::Payload,
    memory: bool,
) -> Result<PathBuf, Reason> {
    let dir = cx.dir.clone();
    let fs_group = cx.fs_group;
    blocking(move || write_volume(&dir, &payload, fs_group, memory).map(|()| dir)).await
}

/// Writes an API-backed volume: the directory (world-writable as upstream's wrapped
/// emptyDir; a tmpfs when `memory`), the payload through the atomic writer, and with
/// fsGroup the volume root's group.
pub(crate) fn write_volume(
    dir: &Path,
    payload: &atomic_writer::Payload,
    fs_group: Option<u32>,
    memory: bool,
) -> Result<(), Reason> {
    use std::os::unix::fs::PermissionsExt;
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|source| Reason::Io {
            op: "mkdir",
            path: dir.to_owned(),
            source,
        })?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).map_err(|source| {
            Reason::Io {
                op: "chmod",
                path: dir.to_owned(),
                source,
            }
        })?;
    }
    if memory {
        mount::mount_tmpfs(dir, None, None)?;
    }
    atomic_writer::write(dir, payload, fs_group)?;
    if let Some(gid) = fs_group {
        atomic_writer::set_root_ownership(dir, gid)?;
    }
    Ok(())
}
