//! The status store: each pod's latest status, written by its worker and read by
//! whoever needs it (the read-only `/pods`, the eviction loop, the node view,
//! `nodelet run`, and with a cluster the apiserver status poster).
//!
//! As upstream's status manager (`pkg/kubelet/status/status_manager.go`) it
//! - numbers every change, so a consumer knows what it has already seen;
//! - merges the conditions the kubelet owns into those other controllers set on the
//!   pod (`mergePodStatus`): a source that carries status (the apiserver) keeps its
//!   conditions, the agent's own replace theirs;
//! - refuses a phase change out of `Succeeded`/`Failed`;
//! - keeps a removed pod's final status until every registered consumer has seen it,
//!   so a consumer that lags (a status poster) never misses how a pod ended.
//!
//! Readers hold a [`watch::Receiver`] of [`PodStatuses`], a cheap snapshot (an `Arc`
//! of the map), so nobody locks anything to read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use tokio::sync::watch;
use tracing::warn;

/// Condition types only the kubelet sets (upstream's `PodConditionsByKubelet`, with
/// `PodReadyToStartContainers`).
const KUBELET_CONDITIONS: [&str; 5] = [
    "PodScheduled",
    "Ready",
    "Initialized",
    "ContainersReady",
    "PodReadyToStartContainers",
];
/// Condition types the kubelet shares with controllers: its own replace theirs, theirs
/// are kept otherwise (upstream's `PodConditionSharedByKubelet`).
const SHARED_CONDITIONS: [&str; 1] = ["DisruptionTarget"];

/// One pod's entry.
#[derive(Debug, Clone)]
pub struct PodEntry {
    /// The pod with its latest status.
    pub pod: Arc<Pod>,
    /// Increases with every change of any pod: a consumer that saw version `v` of this
    /// pod has seen everything up to it.
    pub version: u64,
    /// The pod is gone from the node; this is its final status, kept until every
    /// registered consumer has seen it.
    pub removed: bool,
}

/// A snapshot of every pod's status.
#[derive(Debug, Clone, Default)]
pub struct PodStatuses {
    entries: Arc<BTreeMap<String, PodEntry>>,
}

impl PodStatuses {
    /// The pods on the node now (removed ones left out), by UID.
    pub fn live(&self) -> impl Iterator<Item = (&String, &Arc<Pod>)> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.removed)
            .map(|(uid, e)| (uid, &e.pod))
    }

    /// The pods on the node now (removed ones left out).
    pub fn values(&self) -> impl Iterator<Item = &Arc<Pod>> {
        self.live().map(|(_, p)| p)
    }

    /// A live pod by UID.
    pub fn get(&self, uid: &str) -> Option<&Arc<Pod>> {
        self.entries.get(uid).filter(|e| !e.removed).map(|e| &e.pod)
    }

    /// Every entry, removed ones included (for consumers that must see final statuses).
    pub fn entries(&self) -> &BTreeMap<String, PodEntry> {
        &self.entries
    }

    /// How many pods are on the node.
    pub fn len(&self) -> usize {
        self.live().count()
    }
}

#[derive(Debug, Default)]
struct Consumers {
    next_id: u64,
    /// The version of each pod each consumer has seen, by consumer ID.
    seen: HashMap<u64, HashMap<String, u64>>,
}

/// The store. Shared as `Arc<StatusStore>`.
#[derive(Debug)]
pub struct StatusStore {
    tx: watch::Sender<PodStatuses>,
    next_version: Mutex<u64>,
    consumers: Mutex<Consumers>,
}

impl Default for StatusStore {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent: every critical section below is a few
    // assignments that don't panic.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_terminal(status: Option<&PodStatus>) -> bool {
    matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether the agent owns condition type `type_` (it may set it on the apiserver's
/// copy of the pod): the kubelet's own and those it shares with controllers.
pub fn agent_owned_condition(type_: &str) -> bool {
    KUBELET_CONDITIONS.contains(&type_) || SHARED_CONDITIONS.contains(&type_)
}

/// The agent's conditions merged into those the source's copy of the pod carries,
/// as upstream's `mergePodStatus`.
pub fn merge_conditions(
    source: Option<&PodStatus>,
    ours: Option<Vec<PodCondition>>,
) -> Option<Vec<PodCondition>> {
    let theirs: Vec<PodCondition> = source
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !KUBELET_CONDITIONS.contains(&c.type_.as_str()))
        .collect();
    if theirs.is_empty() {
        return ours;
    }
    let mut merged: Vec<PodCondition> = theirs
        .into_iter()
        .filter(|c| {
            !(SHARED_CONDITIONS.contains(&c.type_.as_str())
                && ours.iter().flatten().any(|o| o.type_ == c.type_))
        })
        .collect();
    merged.extend(ours.into_iter().flatten());
    Some(merged)
}

impl StatusStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            tx: watch::channel(PodStatuses::default()).0,
            next_version: Mutex::new(0),
            consumers: Mutex::new(Consumers::default()),
        }
    }

    /// Follows every change.
    pub fn subscribe(&self) -> watch::Receiver<PodStatuses> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> PodStatuses {
        self.tx.borrow().clone()
    }

    fn bump(&self) -> u64 {
        let mut v = lock(&self.next_version);
        *v += 1;
        *v
    }

    /// Records `status` as pod `pod`'s (the source's copy of the pod, whose own status
    /// conditions are merged in). Returns false when refused: a pod that has reached
    /// `Succeeded` or `Failed` never goes back.
    pub fn set(&self, pod: &Pod, mut status: PodStatus) -> bool {
        let Some(uid) = pod.metadata.uid.clone() else {
            return false;
        };
        status.conditions = merge_conditions(pod.status.as_ref(), status.conditions.take());
        let current = self.tx.borrow().entries.get(&uid).cloned();
        if let Some(cur) = &current
            && is_terminal(cur.pod.status.as_ref())
            && !is_terminal(Some(&status))
        {
            warn!(
                uid,
                from = cur.pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                to = status.phase.as_deref(),
                "refused a pod phase transition out of a terminal phase"
            );
            return false;
        }
        let mut pod = pod.clone();
        pod.status = Some(status);
        let entry = PodEntry {
            pod: Arc::new(pod),
            version: self.bump(),
            removed: false,
        };
        self.tx.send_modify(|s| {
            Arc::make_mut(&mut s.entries).insert(uid, entry);
        });
        true
    }

    /// Replaces a pod's metadata and spec (a deletion timestamp, a new label) and
    /// keeps its status.
    pub fn set_object(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let status = self
            .tx
            .borrow()
            .entries
            .get(&uid)
            .and_then(|e| e.pod.status.clone());
        let mut pod = pod.clone();
        pod.status = status;
        let version = self.bump();
        self.tx.send_modify(|s| {
            Arc::make_mut(&mut s.entries).insert(
                uid,
                PodEntry {
                    pod: Arc::new(pod),
                    version,
                    removed: false,
                },
            );
        });
    }

    /// The pod is gone from the node. Its last status stays, marked removed, until
    /// every registered consumer has seen this version.
    pub fn remove(&self, uid: &str) {
        let version = self.bump();
        self.tx.send_modify(|s| {
            let entries = Arc::make_mut(&mut s.entries);
            if let Some(e) = entries.get_mut(uid) {
                e.removed = true;
                e.version = version;
            }
        });
        self.purge();
    }

    /// Registers a consumer that must see every pod's final status.
    pub fn register(self: &Arc<Self>) -> Consumer {
        let mut c = lock(&self.consumers);
        c.next_id += 1;
        let id = c.next_id;
        c.seen.insert(id, HashMap::new());
        Consumer {
            id,
            store: Arc::clone(self),
        }
    }

    /// Drops removed entries every consumer has seen.
    fn purge(&self) {
        let consumers = lock(&self.consumers);
        let gone: Vec<String> = self
            .tx
            .borrow()
            .entries
            .iter()
            .filter(|(uid, e)| {
                e.removed
                    && consumers
                        .seen
                        .values()
                        .all(|seen| seen.get(*uid).is_some_and(|v| *v >= e.version))
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        drop(consumers);
        self.tx.send_modify(|s| {
            let entries = Arc::make_mut(&mut s.entries);
            for uid in &gone {
                entries.remove(uid);
            }
        });
        let mut consumers = lock(&self.consumers);
        for seen in consumers.seen.values_mut() {
            for uid in &gone {
                seen.remove(uid);
            }
        }
    }
}

/// A registered consumer: tells the store what it has seen, so final statuses are
/// dropped only once it has. Unregisters on drop.
#[derive(Debug)]
pub struct Consumer {
    id: u64,
    store: Arc<StatusStore>,
}

impl Consumer {
    /// This consumer has seen `version` of pod `uid` (and everything before it).
    pub fn seen(&self, uid: &str, version: u64) {
        {
            let mut c = lock(&self.store.consumers);
            if let Some(seen) = c.seen.get_mut(&self.id) {
                let v = seen.entry(uid.to_owned()).or_default();
                *v = (*v).max(version);
            }
        }
        self.store.purge();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        lock(&self.store.consumers).seen.remove(&self.id);
        self.store.purge();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.name = Some(format!("pod-{uid}"));
        p
    }

    fn status(phase: &str) -> PodStatus {
        PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }
    }

    fn cond(t: &str, s: &str) -> PodCondition {
        PodCondition {
            type_: t.into(),
            status: s.into(),
            ..Default::default()
        }
    }

    fn phase(s: &PodStatuses, uid: &str) -> Option<String> {
        s.entries()
            .get(uid)
            .and_then(|e| e.pod.status.as_ref()?.phase.clone())
    }

    #[test]
    fn versions_increase_and_readers_see_the_latest() {
        let store = StatusStore::new();
        let mut rx = store.subscribe();
        assert!(store.set(&pod("a"), status("Pending")));
        let v1 = store.snapshot().entries()["a"].version;
        assert!(store.set(&pod("a"), status("Running")));
        assert!(rx.has_changed().expect("open"));
        let snap = rx.borrow_and_update().clone();
        assert!(snap.entries()["a"].version > v1);
        assert_eq!(phase(&snap, "a").as_deref(), Some("Running"));
        assert_eq!(snap.len(), 1);
    }

    #[test]
    fn never_back_from_a_terminal_phase() {
        let store = StatusStore::new();
        store.set(&pod("a"), status("Succeeded"));
        assert!(!store.set(&pod("a"), status("Running")));
        assert_eq!(phase(&store.snapshot(), "a").as_deref(), Some("Succeeded"));
        // Terminal to terminal (a late Failed) is a status update, allowed.
        assert!(store.set(&pod("a"), status("Failed")));
    }

    #[test]
    fn conditions_of_others_are_kept_and_ours_replace_kubelet_ones() {
        let store = StatusStore::new();
        let mut p = pod("a");
        p.status = Some(PodStatus {
            conditions: Some(vec![
                cond("PodScheduled", "True"),
                cond("example.com/Gate", "True"),
                cond("Ready", "True"),
                cond("DisruptionTarget", "True"),
            ]),
            ..Default::default()
        });
        let mut ours = status("Running");
        ours.conditions = Some(vec![cond("Ready", "False"), cond("Initialized", "True")]);
        store.set(&p, ours);
        let snap = store.snapshot();
        let got: Vec<(String, String)> = snap.entries()["a"]
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect();
        assert_eq!(
            got,
            vec![
                ("example.com/Gate".into(), "True".into()),
                ("DisruptionTarget".into(), "True".into()),
                ("Ready".into(), "False".into()),
                ("Initialized".into(), "True".into()),
            ]
        );
    }

    #[test]
    fn final_status_kept_until_every_consumer_saw_it() {
        let store = Arc::new(StatusStore::new());
        let slow = store.register();
        let fast = store.register();
        store.set(&pod("a"), status("Running"));
        store.set(&pod("a"), status("Succeeded"));
        store.remove("a");
        let snap = store.snapshot();
        assert!(snap.get("a").is_none(), "gone from the live view at once");
        let final_version = snap.entries()["a"].version;
        assert!(snap.entries()["a"].removed);
        fast.seen("a", final_version);
        assert!(
            store.snapshot().entries().contains_key("a"),
            "kept for the slow consumer"
        );
        slow.seen("a", final_version - 1);
        assert!(store.snapshot().entries().contains_key("a"));
        slow.seen("a", final_version);
        assert!(!store.snapshot().entries().contains_key("a"));
    }

    #[test]
    fn without_consumers_removal_is_immediate_and_dropping_a_consumer_releases() {
        let store = Arc::new(StatusStore::new());
        store.set(&pod("a"), status("Running"));
        store.remove("a");
        assert!(store.snapshot().entries().is_empty());

        let c = store.register();
        store.set(&pod("b"), status("Running"));
        store.remove("b");
        assert!(store.snapshot().entries().contains_key("b"));
        drop(c);
        assert!(store.snapshot().entries().is_empty());
    }
}
