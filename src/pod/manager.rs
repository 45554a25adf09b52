//! The pod manager: turns source snapshots into pod workers, with upstream's rules
//! for a pod UID's life (`pkg/kubelet/pod_workers.go`, `UpdatePod` and
//! `SyncKnownPods`):
//!
//! - a UID new in the sources gets a worker; a pod already marked deleted
//!   (`deletionTimestamp`) gets one that terminates it at once;
//! - a change upstream treats as an update (spec, labels, annotations, the deletion
//!   fields; never status alone) reaches the worker's mailbox;
//! - a `deletionTimestamp` set by a source terminates the pod with the source's grace
//!   period; a UID gone from every source is terminated with the pod's own;
//! - a terminated UID is never started again while a source still lists it (its
//!   tombstone stays until none does); a UID that a source removed and then listed
//!   anew while it was terminating starts afresh once the termination is over
//!   (upstream's `restartRequested`);
//! - a worker that panics is logged with its pod, the pod is failed, and a new worker
//!   stops what it left running; the agent carries on;
//! - once every source has reported, runtime objects of pods nobody wants (left from
//!   before a restart) are terminated.
//!
//! Nothing here waits on the runtime: the orphan scan runs as its own task and runtime
//! events arrive already routed to a pod (`router.rs`), so one slow pod never holds
//! up another pod's admission or status.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use nodelet_cri::runtime::Runtime;
use nodelet_manifests::SourceEvent;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::node::pressure::{PodCommand, Pressure};
use crate::pod::admission::{self, AdmitNode, Rejection};
use crate::pod::mailbox::{Evict, Mailbox, Terminate, TerminateReason};
use crate::pod::router::Routed;
use crate::pod::worker::{Outcome, PodWorker, WorkerEnv};

/// Where a UID is in its life, as the manager tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Its worker runs (syncing, or finished by itself and kept).
    Active,
    /// Termination was asked for; its worker is stopping it.
    Terminating,
    /// Its worker is gone, the pod removed; a source still lists the UID, which is
    /// never started again.
    Tombstone,
}

struct Slot {
    mailbox: Mailbox,
    state: SlotState,
    /// Listed anew while terminating: start afresh once the worker is done.
    restart: Option<Arc<Pod>>,
    /// The pod as last sent to the worker, for telling updates apart (the same
    /// allocation as the desired map's and the worker's).
    pod: Arc<Pod>,
    /// Admitted (its requests count against the node's allocatable).
    admitted: bool,
}

/// The pod manager.
pub struct PodManager<R> {
    env: Arc<WorkerEnv<R>>,
    slots: HashMap<String, Slot>,
    tasks: JoinSet<Outcome>,
    task_uids: HashMap<tokio::task::Id, String>,
    /// Desired pods by source.
    desired: HashMap<&'static str, BTreeMap<String, Arc<Pod>>>,
    /// Sources that have not sent their first snapshot.
    unready_sources: HashSet<&'static str>,
    /// Whether runtime objects no source wants are removed (not when the namespace is
    /// shared with another agent, as under `nodelet run`).
    orphan_cleanup: bool,
    /// Node pressure for admitting new pods, and `--evict-static-pods`.
    admission: Option<(watch::Receiver<Pressure>, bool)>,
    /// The node's allocatable, labels and taints, for admitting new pods.
    node: Option<watch::Receiver<Arc<AdmitNode>>>,
    /// Stops the workers (their pods keep running).
    workers_stop: CancellationToken,
    /// Where the union of the sources' pods is published (for the mirror pods).
    desired_tx: Option<watch::Sender<DesiredPods>>,
}

/// What the sources want, as the manager last merged it.
#[derive(Debug, Clone, Default)]
pub struct DesiredPods {
    /// Every source has sent its first snapshot.
    pub ready: bool,
    /// The pods, by UID.
    pub pods: Arc<BTreeMap<String, Arc<Pod>>>,
}

/// Whether `new` differs from `old` in what a worker acts on: spec, labels and
/// annotations (the downward API shows them), and the deletion fields. A change in
/// status alone (a source that carries status, as the apiserver does) is not an update.
pub fn is_update(old: &Pod, new: &Pod) -> bool {
    let (a, b) = (&old.metadata, &new.metadata);
    old.spec != new.spec
        || a.labels != b.labels
        || a.annotations != b.annotations
        || a.deletion_timestamp != b.deletion_timestamp
        || a.deletion_grace_period_seconds != b.deletion_grace_period_seconds
        || a.name != b.name
        || a.namespace != b.namespace
}

fn deletion(pod: &Pod) -> Option<Terminate> {
    pod.metadata.deletion_timestamp.as_ref()?;
    Some(Terminate {
        reason: TerminateReason::Deleted,
        grace: pod
            .metadata
            .deletion_grace_period_seconds
            .map(|s| std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0))),
    })
}

/// What feeds the manager.
#[derive(Debug)]
pub struct Inputs {
    /// Source snapshots.
    pub sources: mpsc::Receiver<SourceEvent>,
    /// Runtime events, routed to pods.
    pub events: mpsc::Receiver<Routed>,
    /// Commands from the eviction loop.
    pub commands: mpsc::Receiver<PodCommand>,
}

impl<R: Runtime> PodManager<R> {
    /// A manager that waits for a first snapshot from each of `sources` before
    /// cleaning up runtime objects of pods nobody wants.
    pub fn new(env: Arc<WorkerEnv<R>>, sources: &[&'static str]) -> Self {
        Self {
            env,
            slots: HashMap::new(),
            tasks: JoinSet::new(),
            task_uids: HashMap::new(),
            desired: HashMap::new(),
            unready_sources: sources.iter().copied().collect(),
            orphan_cleanup: true,
            admission: None,
            node: None,
            workers_stop: CancellationToken::new(),
            desired_tx: None,
        }
    }

    /// Publishes what the sources want on `tx` after every snapshot.
    #[must_use]
    pub fn with_desired(mut self, tx: watch::Sender<DesiredPods>) -> Self {
        self.desired_tx = Some(tx);
        self
    }

    /// Refuses new pods the node can't take under pressure, as upstream's eviction
    /// manager admits pods.
    #[must_use]
    pub fn with_admission(
        mut self,
        pressure: watch::Receiver<Pressure>,
        evict_static: bool,
    ) -> Self {
        self.admission = Some((pressure, evict_static));
        self
    }

    /// Refuses new pods the node can't hold or that don't match it, as upstream's
    /// predicate admit handler (`admission.rs`).
    #[must_use]
    pub fn with_node(mut self, node: watch::Receiver<Arc<AdmitNode>>) -> Self {
        self.node = Some(node);
        self
    }

    /// Leaves runtime objects of pods no source wants alone.
    #[must_use]
    pub fn without_orphan_cleanup(mut self) -> Self {
        self.orphan_cleanup = false;
        self
    }

    /// Runs until `cancel`: pods keep running when the agent stops, as upstream.
    pub async fn run(mut self, mut inputs: Inputs, cancel: CancellationToken) {
        let (orphans_tx, mut orphans_rx) = mpsc::channel::<Orphans>(1);
        if self.unready_sources.is_empty() {
            self.scan_orphans(&orphans_tx);
        }
        // Upstream's sync loop ticks every second; each iteration marks the loop alive
        // for `/healthz/syncloop`.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            crate::pod::sync_loop::record_entry();
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
                Some(ev) = inputs.sources.recv() => {
                    let (source, pods) = match ev {
                        SourceEvent::Snapshot { source, pods } => (source, pods),
                        SourceEvent::Objects { source, objects } => {
                            self.on_objects(source, objects);
                            continue;
                        }
                    };
                    self.on_snapshot(source, pods);
                    if self.unready_sources.remove(source) && self.unready_sources.is_empty() {
                        self.scan_orphans(&orphans_tx);
                    }
                    if let Some(tx) = &self.desired_tx {
                        tx.send_replace(DesiredPods {
                            ready: self.unready_sources.is_empty(),
                            pods: Arc::new(self.all_desired()),
                        });
                    }
                }
                Some(ev) = inputs.events.recv() => self.on_routed(ev),
                Some(cmd) = inputs.commands.recv() => self.on_command(cmd),
                Some(orphans) = orphans_rx.recv() => self.on_orphans(orphans),
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_worker_done(done);
                }
            }
        }
        // The workers stop; their pods keep running.
        self.workers_stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    /// ConfigMap and Secret documents beside a source's pods: the objects standalone
    /// pods mount and reference (joined to a cluster, pods read the apiserver's).
    fn on_objects(&self, source: &'static str, objects: Vec<nodelet_manifests::ApiObject>) {
        let count = objects.len();
        if self
            .env
            .volumes
            .objects()
            .replace_documents(source, objects)
        {
            debug!(source, count, "configMap and secret documents");
        } else if count > 0 {
            warn!(
                source,
                count,
                "configMap and secret documents are used standalone only; joined to a cluster, pods read the apiserver's"
            );
        }
    }

    fn all_desired(&self) -> BTreeMap<String, Arc<Pod>> {
        self.desired
            .values()
            .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), Arc::clone(v))))
            .collect()
    }

    /// A source's new snapshot: moves the workers toward the union of all sources.
    /// A pod equal to the one already held keeps that allocation, so the desired
    /// map, the slots and the workers share one copy of each pod.
    fn on_snapshot(&mut self, source: &'static str, pods: Vec<Pod>) {
        let old = self.desired.remove(source).unwrap_or_default();
        let pods: BTreeMap<String, Arc<Pod>> = pods
            .into_iter()
            .filter_map(|p| {
                let uid = p.metadata.uid.clone()?;
                let pod = match old.get(&uid) {
                    Some(held) if **held == p => Arc::clone(held),
                    _ => Arc::new(p),
                };
                Some((uid, pod))
            })
            .collect();
        debug!(source, count = pods.len(), "source snapshot");
        let before: HashSet<String> = self
            .desired
            .values()
            .flat_map(|m| m.keys().cloned())
            .chain(old.into_keys())
            .collect();
        self.desired.insert(source, pods);
        let desired = self.all_desired();
        for (uid, pod) in &desired {
            let added = !before.contains(uid);
            self.on_desired(uid, pod, added);
        }
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|uid| !desired.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.on_gone(&uid);
        }
    }

    fn on_desired(&mut self, uid: &str, pod: &Arc<Pod>, added: bool) {
        let Some(slot) = self.slots.get_mut(uid) else {
            self.spawn(Arc::clone(pod));
            if let Some(req) = deletion(pod) {
                self.terminate(uid, req);
            }
            return;
        };
        match slot.state {
            // Removed and listed anew: a fresh start (it was fully removed).
            SlotState::Tombstone if added => {
                self.slots.remove(uid);
                self.spawn(Arc::clone(pod));
            }
            SlotState::Tombstone => {}
            SlotState::Terminating if added => {
                debug!(
                    uid,
                    "pod listed again while terminating: restarts once terminated"
                );
                slot.restart = Some(Arc::clone(pod));
            }
            SlotState::Terminating | SlotState::Active => {
                if !Arc::ptr_eq(&slot.pod, pod) {
                    if is_update(&slot.pod, pod) {
                        slot.mailbox.update(Arc::clone(pod));
                    }
                    // Either way the slot shares the desired map's copy, so that
                    // only one is kept.
                    slot.pod = Arc::clone(pod);
                }
                if let Some(req) = deletion(pod) {
                    self.terminate(uid, req);
                }
            }
        }
    }

    fn on_gone(&mut self, uid: &str) {
        let Some(slot) = self.slots.get_mut(uid) else {
            return;
        };
        slot.restart = None;
        match slot.state {
            SlotState::Tombstone => {
                self.slots.remove(uid);
            }
            SlotState::Active | SlotState::Terminating => {
                info!(uid, "pod removed from its source, terminating");
                self.terminate(
                    uid,
                    Terminate {
                        reason: TerminateReason::Removed,
                        grace: None,
                    },
                );
            }
        }
    }

    fn terminate(&mut self, uid: &str, req: Terminate) {
        if let Some(slot) = self.slots.get_mut(uid)
            && slot.state != SlotState::Tombstone
        {
            slot.state = SlotState::Terminating;
            slot.mailbox.terminate(req);
        }
    }

    fn on_command(&mut self, cmd: PodCommand) {
        match cmd {
            PodCommand::Evict {
                uid,
                message,
                grace,
            } => match self.slots.get(&uid) {
                Some(slot) if slot.state == SlotState::Active => {
                    slot.mailbox.evict(Evict { message, grace });
                }
                _ => debug!(uid = %uid, "eviction of a pod without a running worker ignored"),
            },
        }
    }

    fn on_routed(&mut self, ev: Routed) {
        match ev {
            Routed::Resync => {
                for slot in self.slots.values() {
                    slot.mailbox.sync();
                }
            }
            Routed::Sync { uid } => {
                if let Some(slot) = self.slots.get(&uid) {
                    slot.mailbox.sync();
                }
            }
            Routed::Oom { uid, id } => {
                if let Some(slot) = self.slots.get(&uid) {
                    slot.mailbox.oom(id);
                }
            }
        }
    }

    fn spawn(&mut self, pod: Arc<Pod>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        info!(
            pod = pod.metadata.name.as_deref().unwrap_or(""),
            namespace = pod.metadata.namespace.as_deref().unwrap_or(""),
            uid = %uid,
            "pod added"
        );
        let rejection = self
            .admission
            .as_ref()
            .and_then(|(pressure, evict_static)| {
                crate::node::pressure::admit(&pressure.borrow(), &pod, *evict_static).err()
            });
        let refusal = match rejection {
            Some(r) => Some((r.reason.to_owned(), r.message)),
            None => self.unfit(&pod).map(|r| (r.reason, r.message)),
        };
        let mailbox = Mailbox::new();
        let mut worker = PodWorker::new(Arc::clone(&self.env), Arc::clone(&pod), mailbox.clone());
        let admitted = refusal.is_none();
        if let Some((reason, message)) = refusal {
            info!(uid = %uid, reason, message, "pod rejected");
            worker = worker.refused(&reason, &message);
        }
        self.start(uid.clone(), pod, worker, mailbox);
        if let Some(slot) = self.slots.get_mut(&uid) {
            slot.admitted = admitted;
        }
    }

    /// Why the node can't take `pod` besides pressure: resources against the pods
    /// admitted and not finished, node affinity, taints.
    fn unfit(&self, pod: &Pod) -> Option<Rejection> {
        let node = Arc::clone(&self.node.as_ref()?.borrow());
        let statuses = self.env.statuses.snapshot();
        let others: Vec<&Pod> = self
            .slots
            .iter()
            .filter(|(uid, slot)| {
                slot.admitted
                    && slot.state != SlotState::Tombstone
                    && !statuses.get(uid.as_str()).is_some_and(|p| {
                        matches!(
                            p.status.as_ref().and_then(|s| s.phase.as_deref()),
                            Some("Succeeded" | "Failed")
                        )
                    })
            })
            .map(|(_, slot)| &*slot.pod)
            .collect();
        admission::admit(&node, pod, &others).err()
    }

    fn start(&mut self, uid: String, pod: Arc<Pod>, worker: PodWorker<R>, mailbox: Mailbox) {
        let stop = self.workers_stop.clone();
        let handle = self.tasks.spawn(worker.run(stop));
        self.task_uids.insert(handle.id(), uid.clone());
        self.slots.insert(
            uid,
            Slot {
                mailbox,
                state: SlotState::Active,
                restart: None,
                pod,
                admitted: true,
            },
        );
    }

    fn on_worker_done(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, Ok(outcome)),
            Err(e) => (e.id(), Err(e)),
        };
        let Some(uid) = self.task_uids.remove(&id) else {
            return;
        };
        match outcome {
            Ok(Outcome::Shutdown) => {}
            Ok(Outcome::Removed) => self.on_removed(&uid),
            Err(e) => self.on_panic(&uid, &e),
        }
    }

    fn on_removed(&mut self, uid: &str) {
        let Some(slot) = self.slots.get_mut(uid) else {
            return;
        };
        let desired = self.desired.values().any(|m| m.contains_key(uid));
        match (slot.restart.take(), desired) {
            (Some(pod), true) => {
                info!(uid, "pod listed anew: starting it again");
                self.slots.remove(uid);
                self.spawn(pod);
            }
            (_, true) => slot.state = SlotState::Tombstone,
            (_, false) => {
                self.slots.remove(uid);
            }
        }
    }

    /// A worker panicked: the pod is failed with the panic's message, and a new
    /// worker (which starts nothing for a failed pod) stops what it left running.
    fn on_panic(&mut self, uid: &str, e: &tokio::task::JoinError) {
        let Some(slot) = self.slots.remove(uid) else {
            return;
        };
        let message = format!("pod worker panicked: {e}");
        error!(
            uid,
            pod = slot.pod.metadata.name.as_deref().unwrap_or(""),
            namespace = slot.pod.metadata.namespace.as_deref().unwrap_or(""),
            %message,
            "pod worker panicked; the pod is failed"
        );
        let terminating = slot.state == SlotState::Terminating;
        let mailbox = Mailbox::new();
        let worker = PodWorker::new(
            Arc::clone(&self.env),
            Arc::clone(&slot.pod),
            mailbox.clone(),
        )
        .rejected(PANIC_REASON, message);
        self.start(uid.to_owned(), slot.pod, worker, mailbox);
        if terminating || !self.desired.values().any(|m| m.contains_key(uid)) {
            self.on_gone(uid);
        }
    }

    /// Lists the runtime in a task of its own; what no source wants comes back.
    fn scan_orphans(&self, out: &mpsc::Sender<Orphans>) {
        if !self.orphan_cleanup {
            return;
        }
        let runtime = Arc::clone(&self.env.runtime);
        let volumes = Arc::clone(&self.env.volumes);
        let out = out.clone();
        tokio::spawn(async move {
            let dirs = match tokio::task::spawn_blocking(move || volumes.pods_on_disk()).await {
                Ok(Ok(uids)) => uids,
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot list pod directories");
                    Vec::new()
                }
                Err(e) => {
                    warn!(error = %e, "listing pod directories panicked");
                    Vec::new()
                }
            };
            match find_runtime_pods(&*runtime).await {
                Ok(pods) => {
                    let _ = out.send(Orphans { pods, dirs }).await;
                }
                Err(e) => warn!(error = %e, "cannot list runtime objects for orphan cleanup"),
            }
        });
    }

    /// Terminates the runtime pods that no source wants and no worker owns, and
    /// removes the directories (volumes) of pods that are gone altogether (upstream's
    /// cleanup of orphaned pod directories).
    fn on_orphans(&mut self, orphans: Orphans) {
        let Orphans { pods, dirs } = orphans;
        let in_runtime: HashSet<String> =
            pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let stale: Vec<String> = dirs
            .into_iter()
            .filter(|uid| {
                !in_runtime.contains(uid)
                    && !self.slots.contains_key(uid)
                    && !self.desired.values().any(|m| m.contains_key(uid))
            })
            .collect();
        // Log directories and symlinks of pods that are gone (upstream's container GC).
        let keep: HashSet<String> = in_runtime
            .iter()
            .cloned()
            .chain(self.slots.keys().cloned())
            .chain(self.desired.values().flat_map(|m| m.keys().cloned()))
            .collect();
        let volumes = Arc::clone(&self.env.volumes);
        let pod_logs_dir = self.env.pod_logs_dir.clone();
        let container_logs_dir = self.env.container_logs_dir.clone();
        tokio::task::spawn_blocking(move || {
            if !stale.is_empty() {
                info!(
                    count = stale.len(),
                    "removing directories of pods that are gone"
                );
            }
            for uid in stale {
                if let Err(e) = volumes.teardown(&uid) {
                    warn!(uid, error = %e, "cannot remove an orphaned pod directory");
                }
            }
            let pruned = [
                nodelet_cri::logs::prune_pod_log_dirs(&pod_logs_dir, &keep),
                nodelet_cri::logs::prune_log_symlinks(&container_logs_dir),
            ];
            for p in pruned {
                match p {
                    Ok(p) => {
                        if !p.removed.is_empty() {
                            info!(
                                count = p.removed.len(),
                                "removed logs of pods that are gone"
                            );
                        }
                        for e in p.errors {
                            warn!(error = %e, "cannot remove logs of a pod that is gone");
                        }
                    }
                    Err(e) => warn!(error = %e, "cannot list log files"),
                }
            }
        });
        for pod in pods {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if self.slots.contains_key(&uid) || self.desired.values().any(|m| m.contains_key(&uid))
            {
                continue;
            }
            info!(uid = %uid, pod = pod.metadata.name.as_deref().unwrap_or(""), "removing pod no source wants");
            self.spawn(Arc::new(pod));
            self.terminate(
                &uid,
                Terminate {
                    reason: TerminateReason::Removed,
                    grace: None,
                },
            );
        }
    }
}

/// What the orphan scan found: runtime pods, and UIDs with a pod directory.
#[derive(Debug)]
struct Orphans {
    pods: Vec<Pod>,
    dirs: Vec<String>,
}

/// The reason a pod failed by a worker panic shows.
pub const PANIC_REASON: &str = "NodeletWorkerPanic";

/// Every pod the runtime has objects of, as stand-ins built from their labels.
async fn find_runtime_pods<R: Runtime>(
    rt: &R,
) -> Result<Vec<Pod>, nodelet_cri::runtime::RuntimeError> {
    use nodelet_cri::runtime::keys;
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    for sb in rt.list_sandboxes(None).await? {
        pods.entry(sb.pod.uid.clone())
            .or_insert_with(|| synthetic_pod(&sb.pod.uid, &sb.pod.name, &sb.pod.namespace));
    }
    for c in rt.list_containers(None).await? {
        let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
        pods.entry(c.pod_uid.clone()).or_insert_with(|| {
            synthetic_pod(
                &c.pod_uid,
                &label(keys::POD_NAME),
                &label(keys::POD_NAMESPACE),
            )
        });
    }
    Ok(pods.into_values().collect())
}

/// A stand-in for a pod known only from runtime labels, for terminating it.
fn synthetic_pod(uid: &str, name: &str, namespace: &str) -> Pod {
    let mut pod = Pod::default();
    pod.metadata.uid = Some(uid.to_owned());
    pod.metadata.name = Some(name.to_owned());
    pod.metadata.namespace = Some(namespace.to_owned());
    // Upstream kills pods it no longer knows with a minimal grace period.
    pod.spec = Some(PodSpec {
        termination_grace_period_seconds: Some(2),
        ..Default::default()
    });
    pod
}

#[cfg(test)]
mod tests;
