//! ConfigMaps and Secrets kept current by a watch per object (upstream's `Watch`
//! change-detection strategy, `pkg/kubelet/util/manager/watch_based_manager.go`): the
//! first read of `namespace/name` starts a watch on that one object (a field
//! selector on its name, which the Node authorizer allows for objects its pods
//! reference); reads are then answered from the cache, and every change is announced
//! on [`ObjectCache::changes`] so the pods using the object are synced at once.
//!
//! An immutable object is not watched once seen (upstream stops too: it can't
//! change, only be deleted and recreated under a new pod spec). A watch nobody read
//! for [`IDLE`] is stopped, which is how objects of pods gone from the node are let
//! go. Until a watch has listed, reads go to the apiserver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio::sync::broadcast;
// tokio's clock, so the idle expiry can be tested in paused time.
use tokio::time::Instant;

use crate::volume::ObjectKey;

/// A watch nobody read for this long is stopped (several volume sync periods).
pub const IDLE: Duration = Duration::from_secs(300);

type Slot<K> = Arc<Mutex<Option<Option<K>>>>;

#[derive(Debug)]
struct Entry<K> {
    /// `Some` once the watch listed: the object, `None` when it does not exist.
    current: Slot<K>,
    last_read: Instant,
    task: tokio::task::AbortHandle,
}

/// A watch-backed cache of one kind.
pub struct ObjectCache<K> {
    client: kube::Client,
    kind: &'static str,
    entries: Mutex<HashMap<(String, String), Entry<K>>>,
    changes: broadcast::Sender<ObjectKey>,
}

impl<K> std::fmt::Debug for ObjectCache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectCache")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// What the cache needs of a kind.
pub trait Cached:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Whether the object is `immutable`.
    fn immutable(&self) -> bool;
}

impl Cached for k8s_openapi::api::core::v1::ConfigMap {
    fn immutable(&self) -> bool {
        self.immutable == Some(true)
    }
}

impl Cached for k8s_openapi::api::core::v1::Secret {
    fn immutable(&self) -> bool {
        self.immutable == Some(true)
    }
}

impl<K: Cached> ObjectCache<K> {
    /// An empty cache of `kind` objects read through `client`, announcing changes on
    /// `changes`.
    pub fn new(
        client: kube::Client,
        kind: &'static str,
        changes: broadcast::Sender<ObjectKey>,
    ) -> Self {
        Self {
            client,
            kind,
            entries: Mutex::new(HashMap::new()),
            changes,
        }
    }

    /// The cached object once its watch has listed (`Some(None)`: it does not
    /// exist); `None` before, when the caller reads the apiserver. Starts the watch
    /// on the first read and stops watches idle for [`IDLE`].
    pub fn get(&self, namespace: &str, name: &str) -> Option<Option<K>> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, e| {
            let idle = now.duration_since(e.last_read) >= IDLE;
            if idle {
                e.task.abort();
            }
            !idle
        });
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(e) = entries.get_mut(&key) {
            e.last_read = now;
            return e
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
        }
        let current: Slot<K> = Arc::new(Mutex::new(None));
        let task = tokio::spawn(watch::<K>(
            self.client.clone(),
            ObjectKey {
                kind: self.kind,
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            Arc::clone(&current),
            self.changes.clone(),
        ))
        .abort_handle();
        entries.insert(
            key,
            Entry {
                current,
                last_read: now,
                task,
            },
        );
        None
    }
}

impl<K> Drop for ObjectCache<K> {
    fn drop(&mut self) {
        for e in self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            e.task.abort();
        }
    }
}

/// Follows one object until aborted (or until it is seen immutable).
async fn watch<K: Cached>(
    client: kube::Client,
    key: ObjectKey,
    slot: Slot<K>,
    changes: broadcast::Sender<ObjectKey>,
) {
    let api: Api<K> = Api::namespaced(client, &key.namespace);
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={}", key.name))
        .timeout(290);
    let stream = watcher::watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listing: Option<Option<K>> = None;
    while let Some(event) = stream.next().await {
        let now: Option<K> = match event {
            Ok(watcher::Event::Init) => {
                listing = Some(None);
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                listing = Some(Some(o));
                continue;
            }
            Ok(watcher::Event::InitDone) => listing.take().flatten(),
            Ok(watcher::Event::Apply(o)) => Some(o),
            Ok(watcher::Event::Delete(_)) => None,
            Err(e) => {
                tracing::debug!(kind = key.kind, namespace = %key.namespace, name = %key.name, error = %e, "object watch failed; retrying");
                continue;
            }
        };
        let version = |o: &Option<K>| o.as_ref().and_then(|o| o.meta().resource_version.clone());
        let immutable = now.as_ref().is_some_and(Cached::immutable);
        let changed = {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            let changed = slot
                .as_ref()
                .is_none_or(|old| version(old) != version(&now));
            *slot = Some(now);
            changed
        };
        if changed {
            tracing::debug!(kind = key.kind, namespace = %key.namespace, name = %key.name, "object changed");
            let _ = changes.send(key.clone());
        }
        if immutable {
            return;
        }
    }
}

#[cfg(test)]
#[path = "object_cache_tests.rs"]
mod tests;
