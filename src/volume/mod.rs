//! The volume manager: makes a pod's volumes exist before its containers start, keeps
//! the content of API-backed and downwardAPI volumes current, and removes everything
//! (tmpfs mounts included) after the pod's last container stopped.
//!
//! One [`VolumePlugin`] per kind, as upstream's `pkg/volume/*`: emptyDir, hostPath,
//! downwardAPI, configMap, secret and projected. API objects come through an
//! [`ObjectSource`] (the apiserver, or [`StaticObjects`] standalone). Volumes live
//! under `<pods_dir>/<uid>/volumes/kubernetes.io~<kind>/<name>`, as upstream's.
//!
//! The manager remembers per pod what each volume was set up from. A later
//! [`VolumeManager::setup`] redoes a volume when the pod's spec, labels or annotations
//! changed, when [`VolumeManager::invalidate`] forced it, or when its plugin's
//! `needs_update` says so (API content older than the 60 s sync period, a token past
//! 80% of its life); the atomic writer then writes only what changed. A source that
//! announces changed objects ([`ObjectSource::subscribe`]) gets the pods referencing
//! them re-read and woken at once ([`follow_changes`]); a failed setup is retried with
//! upstream's back-off ([`VolumeManager::retry_in`]).
//!
//! fsGroup: the kinds here get upstream's `SetVolumeOwnership` on what they write
//! (group owner, setgid directories, group read for read-only kinds) whatever the
//! pod's `fsGroupChangePolicy`, as upstream's emptyDir, configMap, secret, projected
//! and downwardAPI plugins pass no policy (it applies to persistent volumes); hostPath
//! is never re-owned.

mod atomic_writer;
mod config_map;
mod downward_api;
mod empty_dir;
mod error;
mod host_path;
mod mount;

pub(crate) use mount::unescape as unescape_mountinfo;
mod objects;
mod plugin;
mod projected;
mod secret;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, Volume};

// The agent builds these (StaticObjects standalone) once it wires the manager in.
#[allow(unused_imports)]
pub use objects::{
    IssuedToken, ObjectError, ObjectKey, ObjectSource, Services, StaticObjects, TokenRequestSpec,
};

pub use error::{Reason, VolumeError};
pub(crate) use plugin::{
    CachedToken, SetupContext, VolumePlugin, VolumeState, blocking, file_mode, write_payload,
};

use crate::pod::podspec::NodeCapacity;

/// How often API-backed content is re-read (upstream's kubelet sync period).
pub const SYNC_PERIOD: Duration = Duration::from_secs(60);

/// What the plugins need to know about the pod and its node.
#[derive(Debug, Clone)]
pub struct PodContext<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The node's name.
    pub node_name: String,
    /// The node's IP.
    pub host_ip: String,
    /// The pod's IPs (empty before the sandbox has them).
    pub pod_ips: Vec<String>,
    /// Stands in for unset limits in `resourceFieldRef`s (node allocatable upstream).
    pub capacity: NodeCapacity,
}

impl PodContext<'_> {
    fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// Upstream's `FsUserFrom`: the user every container (init and ephemeral too)
    /// runs as, when they all say the same one; `None` when one doesn't say or two
    /// differ.
    fn fs_user(&self) -> Option<u32> {
        let spec = self.pod.spec.as_ref()?;
        let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
        let users = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_user))
            .chain(
                spec.ephemeral_containers
                    .iter()
                    .flatten()
                    .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_user)),
            )
            .map(|u| u.or(pod_user));
        let mut found = None;
        for user in users {
            let user = user?;
            if found.is_some_and(|f| f != user) {
                return None;
            }
            found = Some(user);
        }
        found.and_then(|u| u32::try_from(u).ok())
    }

    fn fs_group(&self) -> Option<u32> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|s| s.fs_group)
            .and_then(|g| u32::try_from(g).ok())
    }
}

/// The pod fields a volume's content depends on: when they change, every volume is
/// redone (downwardAPI labels and annotations, a changed volume source). Kept as a
/// digest of their `Debug` form (which shows every field), not as a copy of the spec.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint([u8; 32]);

impl Fingerprint {
    fn of(pod: &Pod) -> Self {
        Self(nodelet_manifests::debug_digest(&(
            &pod.spec,
            &pod.metadata.labels,
            &pod.metadata.annotations,
        )))
    }
}

#[derive(Default)]
struct PodVolumes {
    seen: Option<Fingerprint>,
    volumes: BTreeMap<String, VolumeState>,
}

#[derive(Default)]
struct PodEntry {
    forced: AtomicBool,
    /// The ConfigMaps and Secrets the pod references (volumes and env).
    refs: Mutex<HashSet<ObjectKey>>,
    /// Setups failed in a row (the retry back-off).
    failures: AtomicU32,
    state: tokio::sync::Mutex<PodVolumes>,
}

/// Upstream's volume operation back-off: 500 ms doubling to 2 min 2 s.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(122);

/// The ConfigMaps and Secrets a pod references: in volumes (projected sources too)
/// and in its containers' `envFrom` and `valueFrom`.
pub fn references(pod: &Pod) -> HashSet<ObjectKey> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let key = |kind, name: &str| ObjectKey {
        kind,
        namespace: ns.to_owned(),
        name: name.to_owned(),
    };
    let mut out = HashSet::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            out.insert(key("configmap", &cm.name));
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            out.insert(key("secret", name));
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &p.config_map {
                out.insert(key("configmap", &cm.name));
            }
            if let Some(s) = &p.secret {
                out.insert(key("secret", &s.name));
            }
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in containers {
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                out.insert(key("configmap", &r.name));
            }
            if let Some(r) = &f.secret_ref {
                out.insert(key("secret", &r.name));
            }
        }
        for from in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(r) = &from.config_map_key_ref {
                out.insert(key("configmap", &r.name));
            }
            if let Some(r) = &from.secret_key_ref {
                out.insert(key("secret", &r.name));
            }
        }
    }
    out
}

/// Follows `changes` until `cancel`: each changed object invalidates the pods that
/// reference it and wakes their workers (`Routed::Sync`), so an update reaches the
/// volume (and a pod waiting for a missing object starts) at once. The first list of
/// Services ([`ObjectKey::services_listed`]) wakes every worker (`Routed::Resync`):
/// pods waiting to build their env go on at once.
pub async fn follow_changes(
    volumes: Arc<VolumeManager>,
    mut changes: tokio::sync::broadcast::Receiver<ObjectKey>,
    wake: tokio::sync::mpsc::Sender<crate::pod::router::Routed>,
    cancel: tokio_util::sync::CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let uids = tokio::select! {
            () = cancel.cancelled() => return,
            got = changes.recv() => match got {
                Ok(key) if key == ObjectKey::services_listed() => {
                    if wake.send(crate::pod::router::Routed::Resync).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(key) => volumes.object_changed(&key),
                // Missed some: every pod looks again.
                Err(RecvError::Lagged(_)) => volumes.object_changed_all(),
                Err(RecvError::Closed) => return,
            },
        };
        for uid in uids {
            if wake
                .send(crate::pod::router::Routed::Sync { uid })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// A source of the current time (injectable for tests of the sync period and token
/// refresh).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Sets up and tears down pods' volumes; one per agent.
pub struct VolumeManager {
    pods_dir: PathBuf,
    objects: Arc<dyn ObjectSource>,
    plugins: Vec<Box<dyn VolumePlugin>>,
    clock: Clock,
    pods: Mutex<HashMap<String, Arc<PodEntry>>>,
}

impl std::fmt::Debug for VolumeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeManager")
            .field("pods_dir", &self.pods_dir)
            .finish_non_exhaustive()
    }
}

/// A UID is one plain path component, or it could name a directory outside the pod's.
fn safe_component(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains('/')
}

/// The API field name of a volume's source (`persistentVolumeClaim`), for errors.
fn source_kind(v: &Volume) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|value| {
            value
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        })
        .unwrap_or_else(|| "this".to_owned())
}

impl VolumeManager {
    /// A manager for pods under `pods_dir` (`<root-dir>/pods`).
    pub fn new(pods_dir: impl Into<PathBuf>, objects: Arc<dyn ObjectSource>) -> Self {
        Self {
            pods_dir: pods_dir.into(),
            objects,
            plugins: vec![
                Box::new(empty_dir::EmptyDirPlugin),
                Box::new(host_path::HostPathPlugin),
                Box::new(downward_api::DownwardApiPlugin),
                Box::new(config_map::ConfigMapPlugin),
                Box::new(secret::SecretPlugin),
                Box::new(projected::ProjectedPlugin),
            ],
            clock: Arc::new(SystemTime::now),
            pods: Mutex::new(HashMap::new()),
        }
    }

    /// Where the manager reads API objects (also what container environments are
    /// made from).
    pub fn objects(&self) -> Arc<dyn ObjectSource> {
        Arc::clone(&self.objects)
    }

    /// The same manager reading time from `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// `<pods_dir>/<uid>`.
    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.pods_dir.join(pod_uid)
    }

    /// The UIDs with a directory under `pods_dir`: after a restart, the pods whose
    /// volumes may still be there (upstream's orphaned pod directories), for the
    /// agent to [`teardown`](Self::teardown) those no source wants.
    ///
    /// # Errors
    /// When `pods_dir` exists but can't be read.
    pub fn pods_on_disk(&self) -> std::io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.pods_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut uids = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                uids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        uids.sort();
        Ok(uids)
    }

    /// Makes the next [`setup`](Self::setup) of the pod re-read every API object and
    /// rewrite every volume whose content changed, sync period or not.
    pub fn invalidate(&self, pod_uid: &str) {
        if let Some(entry) = self
            .pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pod_uid)
        {
            entry.forced.store(true, Ordering::SeqCst);
        }
    }

    /// Marks the pods referencing `key` for a full re-read on their next setup;
    /// returns their UIDs.
    pub fn object_changed(&self, key: &ObjectKey) -> Vec<String> {
        let pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        pods.iter()
            .filter(|(_, e)| {
                e.refs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(key)
            })
            .map(|(uid, e)| {
                e.forced.store(true, Ordering::SeqCst);
                uid.clone()
            })
            .collect()
    }

    /// [`object_changed`](Self::object_changed) for every pod with references.
    pub fn object_changed_all(&self) -> Vec<String> {
        let pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        pods.iter()
            .filter(|(_, e)| {
                !e.refs
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_empty()
            })
            .map(|(uid, e)| {
                e.forced.store(true, Ordering::SeqCst);
                uid.clone()
            })
            .collect()
    }

    /// How long to wait before setting up the pod's volumes again after a failure
    /// (upstream's back-off: 500 ms doubling to 2 min 2 s); zero after a success.
    pub fn retry_in(&self, pod_uid: &str) -> Duration {
        let failures = self
            .pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pod_uid)
            .map_or(0, |e| e.failures.load(Ordering::SeqCst));
        match failures {
            0 => Duration::ZERO,
            n => RETRY_INITIAL
                .saturating_mul(1 << (n - 1).min(10))
                .min(RETRY_MAX),
        }
    }

    /// Makes every volume of the pod exist (idempotent; content of API-backed and
    /// downwardAPI volumes rewritten when it changed, tokens refreshed at 80% of
    /// their life). Returns each volume's host path by volume name. Every volume is
    /// attempted; the first failure is returned.
    ///
    /// # Errors
    /// [`VolumeError::SetUp`] naming the volume, worded as upstream's event.
    pub async fn setup(
        &self,
        ctx: &PodContext<'_>,
    ) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
        let uid = ctx.uid();
        if !safe_component(uid) {
            return Err(VolumeError::BadUid {
                name: ctx.name().to_owned(),
                uid: uid.to_owned(),
            });
        }
        let entry = Arc::clone(
            self.pods
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(uid.to_owned())
                .or_default(),
        );
        *entry.refs.lock().unwrap_or_else(PoisonError::into_inner) = references(ctx.pod);
        let mut pod = entry.state.lock().await;
        let now = (self.clock)();
        let fingerprint = Fingerprint::of(ctx.pod);
        let forced = entry.forced.swap(false, Ordering::SeqCst);
        let changed = forced || pod.seen.as_ref() != Some(&fingerprint);
        let pod_dir = self.pod_dir(uid);
        let fs_group = ctx.fs_group();
        let mut out = BTreeMap::new();
        let mut first_error = None;
        for v in ctx.pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let fail = |reason| VolumeError::SetUp {
                volume: v.name.clone(),
                reason,
            };
            let Some(plugin) = self.plugins.iter().find(|p| p.can_support(v)) else {
                first_error.get_or_insert(fail(Reason::Unsupported {
                    kind: source_kind(v),
                }));
                continue;
            };
            if !safe_component(&v.name) {
                first_error.get_or_insert(fail(Reason::InvalidPath(format!(
                    "invalid volume name {:?}",
                    v.name
                ))));
                continue;
            }
            let current = pod.volumes.get(&v.name);
            if let Some(st) = current
                && !changed
                && st.source.as_ref() == Some(v)
                && !plugin.needs_update(st, now)
            {
                out.insert(v.name.clone(), st.path.clone());
                continue;
            }
            let mut st = current.cloned().unwrap_or_default();
            let dir = plugin.dir_name().map_or_else(PathBuf::new, |d| {
                pod_dir.join("volumes").join(d).join(&v.name)
            });
            let cx = SetupContext {
                ctx,
                volume: v,
                dir,
                fs_group,
                objects: self.objects.as_ref(),
                now,
            };
            match plugin.setup(&cx, &mut st).await {
                Ok(path) => {
                    tracing::debug!(pod = ctx.name(), uid, volume = %v.name, kind = plugin.kind(), "volume set up");
                    st.source = Some(v.clone());
                    st.path = path.clone();
                    st.synced_at = Some(now);
                    pod.volumes.insert(v.name.clone(), st);
                    out.insert(v.name.clone(), path);
                }
                Err(reason) => {
                    tracing::warn!(pod = ctx.name(), uid, volume = %v.name, error = %reason, "volume setup failed");
                    first_error.get_or_insert(fail(reason));
                }
            }
        }
        match first_error {
            None => {
                pod.seen = Some(fingerprint);
                entry.failures.store(0, Ordering::SeqCst);
                Ok(out)
            }
            Some(e) => {
                entry.failures.fetch_add(1, Ordering::SeqCst);
                // A change not fully applied is applied again next time.
                if changed {
                    entry.forced.store(true, Ordering::SeqCst);
                }
                Err(e)
            }
        }
    }

    /// Unmounts every tmpfs of the pod and removes `<pods_dir>/<uid>`; keeps going
    /// past errors and returns them all. The directory stays when a mount under it
    /// could not be undone (removing it would reach into the mounted filesystem).
    ///
    /// # Errors
    /// [`VolumeError::TearDown`] with every error met.
    pub fn teardown(&self, pod_uid: &str) -> Result<(), VolumeError> {
        self.teardown_below(pod_uid, true)
    }

    /// Tears down the pod's volumes only (`volumes/`), keeping the rest of its
    /// directory (termination messages): a finished pod gives its volumes back, as
    /// upstream unmounts the volumes of terminated pods.
    ///
    /// # Errors
    /// As [`VolumeManager::teardown`].
    pub fn teardown_volumes(&self, pod_uid: &str) -> Result<(), VolumeError> {
        self.teardown_below(pod_uid, false)
    }

    fn teardown_below(&self, pod_uid: &str, whole: bool) -> Result<(), VolumeError> {
        if !safe_component(pod_uid) {
            return Err(VolumeError::BadUid {
                name: String::new(),
                uid: pod_uid.to_owned(),
            });
        }
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pod_uid);
        let pod_dir = self.pod_dir(pod_uid);
        let mut errors = Vec::new();
        for plugin in &self.plugins {
            let Some(kind_dir) = plugin.dir_name() else {
                continue;
            };
            let kind_dir = pod_dir.join("volumes").join(kind_dir);
            let Ok(entries) = fs::read_dir(&kind_dir) else {
                continue;
            };
            for entry in entries.flatten() {
                errors.extend(plugin.teardown(&entry.path()));
            }
        }
        // Whatever else is mounted below (a kind dir we don't know).
        let target = if whole {
            pod_dir.clone()
        } else {
            pod_dir.join("volumes")
        };
        let left = mount::unmount_all_under(&target);
        let mounts_left = !left.is_empty();
        errors.extend(left);
        if !mounts_left
            && let Err(source) = fs::remove_dir_all(&target)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(Reason::Io {
                op: "remove",
                path: target.clone(),
                source,
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(VolumeError::TearDown {
                pod_uid: pod_uid.to_owned(),
                errors,
            })
        }
    }
}
