//! The pod manager: turns source snapshots into pod workers and routes runtime events
//! to them. It owns the set of workers; each worker owns its pod.
//!
//! - A UID new in a snapshot gets a worker; a changed pod is sent to its worker; a UID
//!   gone from its source is terminated. A UID that is terminating is not restarted
//!   until its worker has finished (upstream's rule), then it starts afresh.
//! - Once every source has reported, sandboxes and containers in the runtime that
//!   belong to no desired pod (left from before a restart) are terminated.
//! - A container exit is routed to its pod's worker by container ID.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use nodelet_cri::runtime::{Runtime, RuntimeEvent};
use nodelet_manifests::SourceEvent;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::pod::worker::{PodWorker, WorkerEnv, WorkerMsg};

/// Queue depth of each worker's inbox: a worker coalesces what it finds queued.
const WORKER_QUEUE: usize = 16;

struct Handle {
    tx: mpsc::Sender<WorkerMsg>,
    terminating: bool,
}

/// The pod manager.
pub struct PodManager<R> {
    env: Arc<WorkerEnv<R>>,
    workers: HashMap<String, Handle>,
    join: JoinSet<String>,
    /// Desired pods by source.
    desired: HashMap<&'static str, BTreeMap<String, Pod>>,
    /// Pods wanted again while their previous worker still terminates.
    pending: HashMap<String, Pod>,
    /// Sources that have not sent their first snapshot.
    unready_sources: HashSet<&'static str>,
    /// Container and sandbox IDs to pod UIDs, for routing events.
    owners: HashMap<String, String>,
    /// Whether runtime objects no source wants are removed (not when the namespace is
    /// shared with another agent, as under `nodelet run`).
    orphan_cleanup: bool,
    /// Node pressure for admitting new pods, and `--evict-static-pods`.
    admission: Option<(watch::Receiver<crate::node::pressure::Pressure>, bool)>,
}

impl<R: Runtime> PodManager<R> {
    /// A manager that waits for a first snapshot from each of `sources` before
    /// cleaning up runtime objects of pods nobody wants.
    pub fn new(env: Arc<WorkerEnv<R>>, sources: &[&'static str]) -> Self {
        Self {
            env,
            workers: HashMap::new(),
            join: JoinSet::new(),
            desired: HashMap::new(),
            pending: HashMap::new(),
            unready_sources: sources.iter().copied().collect(),
            owners: HashMap::new(),
            orphan_cleanup: true,
            admission: None,
        }
    }

    /// Refuses new pods the node can't take under pressure, as upstream's eviction
    /// manager admits pods.
    #[must_use]
    pub fn with_admission(
        mut self,
        pressure: watch::Receiver<crate::node::pressure::Pressure>,
        evict_static_pods: bool,
    ) -> Self {
        self.admission = Some((pressure, evict_static_pods));
        self
    }

    /// Leaves runtime objects of pods no source wants alone.
    #[must_use]
    pub fn without_orphan_cleanup(mut self) -> Self {
        self.orphan_cleanup = false;
        self
    }

    /// Runs until `cancel`: pods keep running when the agent stops, as upstream.
    pub async fn run(
        mut self,
        mut sources: mpsc::Receiver<SourceEvent>,
        mut events: mpsc::Receiver<RuntimeEvent>,
        mut commands: mpsc::Receiver<crate::node::pressure::PodCommand>,
        cancel: CancellationToken,
    ) {
        if self.unready_sources.is_empty() {
            self.remove_orphans().await;
        }
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(ev) = sources.recv() => self.on_source(ev).await,
                Some(ev) = events.recv() => self.on_runtime_event(ev).await,
                Some(cmd) = commands.recv() => self.on_command(cmd),
                Some(done) = self.join.join_next(), if !self.join.is_empty() => {
                    match done {
                        Ok(uid) => self.on_worker_done(&uid),
                        Err(e) => warn!(error = %e, "pod worker panicked"),
                    }
                }
            }
        }
        // Dropping the senders ends every worker; their pods keep running.
        self.workers.clear();
        self.join.shutdown().await;
    }

    async fn on_source(&mut self, ev: SourceEvent) {
        let SourceEvent::Snapshot { source, pods } = ev;
        let pods: BTreeMap<String, Pod> = pods
            .into_iter()
            .filter_map(|p| Some((p.metadata.uid.clone()?, p)))
            .collect();
        debug!(source, count = pods.len(), "source snapshot");
        let before = self.all_desired();
        self.desired.insert(source, pods);
        self.reconcile(&before);
        if self.unready_sources.remove(source) && self.unready_sources.is_empty() {
            self.remove_orphans().await;
        }
    }

    fn on_command(&mut self, cmd: crate::node::pressure::PodCommand) {
        match cmd {
            crate::node::pressure::PodCommand::Evict {
                uid,
                message,
                grace,
            } => match self.workers.get(&uid) {
                Some(h) => deliver(&h.tx, WorkerMsg::Evict { message, grace }),
                None => debug!(uid = %uid, "eviction of a pod without a worker ignored"),
            },
        }
    }

    fn all_desired(&self) -> BTreeMap<String, Pod> {
        self.desired
            .values()
            .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }

    /// Moves the workers toward the desired pods; `before` is what was desired until
    /// now, so only workers whose pod changed are told.
    fn reconcile(&mut self, before: &BTreeMap<String, Pod>) {
        let desired = self.all_desired();
        for (uid, pod) in &desired {
            match self.workers.get(uid) {
                None => self.spawn(pod.clone()),
                Some(h) if h.terminating => {
                    self.pending.insert(uid.clone(), pod.clone());
                }
                Some(h) if before.get(uid) != Some(pod) => {
                    deliver(&h.tx, WorkerMsg::Update(Box::new(pod.clone())));
                }
                Some(_) => {}
            }
        }
        let gone: Vec<String> = self
            .workers
            .iter()
            .filter(|(uid, h)| !h.terminating && !desired.contains_key(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.terminate(&uid);
        }
        self.pending.retain(|uid, _| desired.contains_key(uid));
    }

    fn spawn(&mut self, pod: Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        info!(
            pod = pod.metadata.name.as_deref().unwrap_or(""),
            namespace = pod.metadata.namespace.as_deref().unwrap_or(""),
            uid = %uid,
            "pod added"
        );
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        let rejection = self
            .admission
            .as_ref()
            .and_then(|(pressure, evict_static)| {
                crate::node::pressure::admit(&pressure.borrow(), &pod, *evict_static).err()
            });
        let mut worker = PodWorker::new(Arc::clone(&self.env), pod);
        if let Some(r) = rejection {
            info!(uid = %uid, reason = r.reason, message = %r.message, "pod rejected");
            worker = worker.rejected(r.reason, r.message);
        }
        let id = uid.clone();
        self.join.spawn(async move {
            worker.run(rx).await;
            id
        });
        self.workers.insert(
            uid,
            Handle {
                tx,
                terminating: false,
            },
        );
    }

    fn terminate(&mut self, uid: &str) {
        if let Some(h) = self.workers.get_mut(uid) {
            info!(uid, "pod removed from its source, terminating");
            h.terminating = true;
            deliver(&h.tx, WorkerMsg::Terminate);
        }
    }

    fn on_worker_done(&mut self, uid: &str) {
        self.workers.remove(uid);
        self.owners.retain(|_, owner| owner != uid);
        if let Some(pod) = self.pending.remove(uid) {
            self.spawn(pod);
        }
    }

    async fn refresh_owners(&mut self) {
        let rt = &self.env.runtime;
        match (
            rt.list_containers(None).await,
            rt.list_sandboxes(None).await,
        ) {
            (Ok(cs), Ok(sbs)) => {
                self.owners = cs
                    .into_iter()
                    .map(|c| (c.id, c.pod_uid))
                    .chain(sbs.into_iter().map(|s| (s.id, s.pod.uid)))
                    .collect();
            }
            (Err(e), _) | (_, Err(e)) => warn!(error = %e, "cannot list runtime objects"),
        }
    }

    async fn on_runtime_event(&mut self, ev: RuntimeEvent) {
        let (id, msg) = match &ev {
            RuntimeEvent::ContainerExited { id, .. } => (id, WorkerMsg::Sync),
            RuntimeEvent::ContainerOom { id } => (id, WorkerMsg::Oom(id.clone())),
            RuntimeEvent::Resync => {
                for h in self.workers.values() {
                    let _ = h.tx.try_send(WorkerMsg::Sync);
                }
                return;
            }
        };
        if !self.owners.contains_key(id) {
            self.refresh_owners().await;
        }
        if let Some(h) = self.owners.get(id).and_then(|uid| self.workers.get(uid)) {
            match msg {
                // A full queue already holds a pending sync: dropping this one is fine.
                WorkerMsg::Sync => {
                    let _ = h.tx.try_send(WorkerMsg::Sync);
                }
                other => deliver(&h.tx, other),
            }
        }
    }

    /// Terminates runtime objects of pods that no source wants.
    async fn remove_orphans(&mut self) {
        if !self.orphan_cleanup {
            return;
        }
        let rt = &self.env.runtime;
        let (containers, sandboxes) = match (
            rt.list_containers(None).await,
            rt.list_sandboxes(None).await,
        ) {
            (Ok(c), Ok(s)) => (c, s),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "cannot list runtime objects for orphan cleanup");
                return;
            }
        };
        let mut orphans: BTreeMap<String, Pod> = BTreeMap::new();
        let desired = self.all_desired();
        for sb in &sandboxes {
            if !desired.contains_key(&sb.pod.uid) && !self.workers.contains_key(&sb.pod.uid) {
                orphans
                    .entry(sb.pod.uid.clone())
                    .or_insert_with(|| synthetic_pod(&sb.pod.uid, &sb.pod.name, &sb.pod.namespace));
            }
        }
        for c in &containers {
            if !desired.contains_key(&c.pod_uid) && !self.workers.contains_key(&c.pod_uid) {
                let name = c
                    .labels
                    .get(nodelet_cri::runtime::keys::POD_NAME)
                    .cloned()
                    .unwrap_or_default();
                let ns = c
                    .labels
                    .get(nodelet_cri::runtime::keys::POD_NAMESPACE)
                    .cloned()
                    .unwrap_or_default();
                orphans
                    .entry(c.pod_uid.clone())
                    .or_insert_with(|| synthetic_pod(&c.pod_uid, &name, &ns));
            }
        }
        for (uid, pod) in orphans {
            info!(uid = %uid, pod = pod.metadata.name.as_deref().unwrap_or(""), "removing pod no source wants");
            self.spawn(pod);
            self.terminate(&uid);
        }
    }
}

/// Sends a message that must not be lost (a spec update, a termination): at once if
/// the worker's inbox has room, else from a task that waits for room. (A `Sync` may
/// be dropped instead: a full inbox already holds a pending sync.)
fn deliver(tx: &mpsc::Sender<WorkerMsg>, msg: WorkerMsg) {
    if let Err(mpsc::error::TrySendError::Full(msg)) = tx.try_send(msg) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(msg).await;
        });
    }
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
