//! The pod worker: one task per pod UID, the only owner of that pod's runtime state,
//! with upstream's lifecycle (`pkg/kubelet/pod_workers.go`): **syncing** (bringing the
//! sandbox and containers toward the spec) → **terminating** (stopping containers
//! within the grace period) → **terminated** (nothing runs; the pod is never started
//! again). A pod that finishes by itself (every container done under its restart
//! policy, a deadline, an eviction) ends terminated and keeps its dead containers
//! (logs, exit codes) until its source drops it; a pod its source removed or deleted
//! is terminated and its runtime objects, volumes and directories are removed.
//!
//! Each sync observes the pod's sandboxes and containers in the runtime (the truth,
//! which is also how a restarted agent adopts what it left running), acts, and writes
//! the pod's status to the status store. Syncs come from the worker's mailbox (spec
//! updates, runtime events, termination, eviction), probe results, and a slow resync.
//!
//! - `sync.rs`: the syncing state: volumes, sandbox, init containers, deadline;
//! - `containers.rs`: one container: restarts with back-off, new instances;
//! - `terminate.rs`: grace periods and stopping containers in upstream's order;
//! - `probes.rs`: probe workers of running containers and their verdicts;
//! - `report.rs`: the status computed from what the runtime shows.

mod containers;
mod probes;
mod report;
mod sync;
mod terminate;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use nodelet_cri::runtime::{ContainerInfo, Runtime, RuntimeError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

use crate::events::reason as ev;
use crate::image::manager::ImageManager;
use crate::node::eviction::messages;
use crate::pod::mailbox::{Mailbox, Pending, Terminate};
use crate::pod::podspec;
use crate::pod::status::Ending;
use crate::pod::status_store::StatusStore;
use crate::probe::worker::ProbeUpdate;

/// How often a worker re-lists its pod's runtime state without being asked.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(10);
/// Upstream's crash-loop back-off: 10 s doubling to 5 minutes.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The back-off cap.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The least a container gets for its stop signal after its preStop hook used up the
/// grace period (upstream's `minimumGracePeriodInSeconds`).
pub const MIN_GRACE_AFTER_HOOK: Duration = Duration::from_secs(2);
/// A container that ran this long before exiting restarts without back-off.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The wall clock the worker reads. Tests use tokio's (pausable) clock so that
/// back-off and grace periods run in simulated time.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system clock.
    System,
    /// `base` plus tokio time elapsed since `since`.
    #[cfg_attr(not(test), allow(dead_code))]
    Tokio {
        /// The wall time at `since`.
        base: SystemTime,
        /// The tokio instant `base` stands for.
        since: tokio::time::Instant,
    },
}

impl Clock {
    /// Now.
    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Tokio { base, since } => *base + since.elapsed(),
        }
    }
}

/// What every worker shares.
#[derive(Debug)]
pub struct WorkerEnv<R> {
    /// The runtime.
    pub runtime: Arc<R>,
    /// `--root-dir`.
    pub root_dir: PathBuf,
    /// `--pod-logs-dir`.
    pub pod_logs_dir: PathBuf,
    /// `--container-logs-dir` (`/var/log/containers`): the log symlinks.
    pub container_logs_dir: PathBuf,
    /// The pod cgroups (`kubepods` hierarchy) and container resource values.
    pub cgroups: Arc<crate::pod::cgroups::PodCgroups>,
    /// The node name.
    pub node_name: String,
    /// The node IP.
    pub host_ip: String,
    /// The node's capacity: what the downward API gives for unset limits.
    pub capacity: podspec::NodeCapacity,
    /// Cluster DNS settings for pods' resolv.conf.
    pub dns: podspec::DnsSettings,
    /// Images: pull policy, limits, back-off.
    pub images: Arc<ImageManager<R>>,
    /// Volumes: one plugin per kind, API objects through an `ObjectSource`.
    pub volumes: Arc<crate::volume::VolumeManager>,
    /// Where pod and container events are recorded.
    pub events: crate::events::EventRecorder,
    /// Where pod statuses are published.
    pub statuses: Arc<StatusStore>,
    /// When the agent started: probes started soon after are jittered.
    pub agent_start: tokio::time::Instant,
    /// The wall clock.
    pub clock: Clock,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    delay: Duration,
}

/// Where a worker is in its pod's life.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Bringing the pod toward its spec.
    Syncing,
    /// Stopping everything; `remove` also removes the pod's runtime objects.
    Terminating(Terminate),
    /// Nothing runs and nothing will: a finished pod kept until its source drops it.
    Terminated,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The pod was terminated and its runtime objects removed.
    Removed,
    /// The agent is stopping: the pod keeps running, a restarted agent adopts it.
    Shutdown,
}

/// One pod's worker.
pub struct PodWorker<R> {
    env: Arc<WorkerEnv<R>>,
    /// The pod as the manager last sent it: shared with the manager's copy (a pod's
    /// spec is kilobytes; one copy per pod, not one per holder).
    pod: Arc<Pod>,
    uid: String,
    phase: Phase,
    start_time: SystemTime,
    backoff: HashMap<String, Backoff>,
    last_ips: Vec<String>,
    last_status: Option<PodStatus>,
    sandbox_error: Option<(String, SystemTime)>,
    /// A pod-level failure (`DeadlineExceeded`, `Evicted`): reason and message.
    failure: Option<(String, String)>,
    /// The grace period termination settled on (it only ever shortens).
    grace_override: Option<Duration>,
    /// When the pod was evicted (its `DisruptionTarget` condition's time).
    evicted_at: Option<SystemTime>,
    /// When termination began (the deletion timestamp shown for a removed pod).
    terminating_since: Option<SystemTime>,
    /// How exited instances ended, by container ID.
    endings: HashMap<String, Ending>,
    /// Containers the OOM killer hit.
    oom_killed: HashSet<String>,
    /// Probe results come back here; made with the first probe worker (a channel's
    /// first block of slots is ~3 KB, and most pods have no probes).
    probe_tx: Option<mpsc::Sender<ProbeUpdate>>,
    /// Its receiving end.
    probe_rx: Option<mpsc::Receiver<ProbeUpdate>>,
    /// The probe workers of each running container instance, by container ID.
    probes: HashMap<String, CancellationToken>,
    /// Readiness and startup verdicts, by container ID.
    ready: HashMap<String, bool>,
    started: HashMap<String, bool>,
    /// Instances whose liveness or startup probe failed: to be killed.
    unhealthy: HashSet<String>,
    /// The worker's own mailbox (to notice a termination during a long sync).
    mailbox: Mailbox,
    /// The volumes as last set up, by name (kept serving when a refresh fails).
    volumes: Option<std::collections::BTreeMap<String, PathBuf>>,
    /// A published status is out of date although nothing runs (an OOM kill reported
    /// after the instance's exit was seen): a finished pod publishes again.
    stale_status: bool,
}

/// The outcome of one step.
enum Next {
    /// Run again after this long (or earlier, when something arrives).
    After(Duration),
    /// Nothing to do until something arrives.
    Idle,
    /// The pod is removed; the worker ends.
    Done,
}

fn display_name(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

/// The next probe result, or never when no probe worker was started.
async fn recv_probe(rx: &mut Option<mpsc::Receiver<ProbeUpdate>>) -> Option<ProbeUpdate> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The newest instance of container `name` and the one before it.
fn latest(infos: &[ContainerInfo], name: &str) -> (Option<ContainerInfo>, Option<ContainerInfo>) {
    let mut mine: Vec<&ContainerInfo> = infos.iter().filter(|c| c.name == name).collect();
    mine.sort_by_key(|c| (c.attempt, c.created_at));
    let cur = mine.pop().cloned();
    (cur, mine.pop().cloned())
}

fn restart_wanted(policy: &str, exit_code: Option<i32>) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code.unwrap_or(0) != 0,
        _ => true,
    }
}

impl<R: Runtime> PodWorker<R> {
    /// A worker for `pod`, reading its inbox from `mailbox`.
    pub fn new(env: Arc<WorkerEnv<R>>, pod: impl Into<Arc<Pod>>, mailbox: Mailbox) -> Self {
        let pod = pod.into();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let now = env.clock.now();
        Self {
            env,
            pod,
            uid,
            phase: Phase::Syncing,
            start_time: now,
            backoff: HashMap::new(),
            last_ips: Vec::new(),
            last_status: None,
            sandbox_error: None,
            failure: None,
            grace_override: None,
            evicted_at: None,
            terminating_since: None,
            endings: HashMap::new(),
            oom_killed: HashSet::new(),
            probe_tx: None,
            probe_rx: None,
            probes: HashMap::new(),
            ready: HashMap::new(),
            started: HashMap::new(),
            unhealthy: HashSet::new(),
            mailbox,
            volumes: None,
            stale_status: false,
        }
    }

    /// A pod refused at admission: it never starts and shows `Failed` with `reason`
    /// and `message` (upstream's `rejectPod`).
    #[must_use]
    pub fn rejected(mut self, reason: &str, message: String) -> Self {
        self.env.events.for_pod(&self.pod).warning(reason, &message);
        self.failure = Some((reason.to_owned(), message));
        self
    }

    /// A pod refused at admission (upstream's `rejectPod`): the event says why, and
    /// the status says `Pod was rejected: <why>`.
    pub fn refused(mut self, reason: &str, message: &str) -> Self {
        self.env.events.for_pod(&self.pod).warning(reason, message);
        self.failure = Some((reason.to_owned(), format!("Pod was rejected: {message}")));
        self
    }

    /// Runs until the pod is terminated and removed, or `shutdown` (the agent stops,
    /// leaving the pod running, as upstream does).
    pub async fn run(mut self, shutdown: CancellationToken) -> Outcome {
        let span = info_span!(
            "pod",
            pod = self.pod.metadata.name.as_deref().unwrap_or(""),
            namespace = self.pod.metadata.namespace.as_deref().unwrap_or(""),
            uid = %self.uid
        );
        async move {
            // The pod shows up at once as Pending, before any runtime work.
            if self.last_status.is_none() {
                let now = self.env.clock.now();
                self.publish(&[], None, HashMap::new(), true, now);
            }
            // An orphan's worker is told to terminate before it first runs.
            let pending = self.mailbox.take();
            self.apply(pending);
            let mut failures = 0u32;
            loop {
                // Boxed: a sync's state machine (runtime calls, volumes, images) is
                // tens of kilobytes, held only while the step runs, not while the
                // worker waits.
                let result = Box::pin(self.step(&shutdown)).await;
                let wait = match result {
                    Ok(Next::Done) => return Outcome::Removed,
                    Ok(Next::After(d)) => {
                        failures = 0;
                        Some(d)
                    }
                    Ok(Next::Idle) => {
                        failures = 0;
                        None
                    }
                    Err(e) => {
                        failures += 1;
                        warn!(error = %e, "pod sync failed");
                        Some(Duration::from_millis(500 * 2u64.pow(failures.min(5))))
                    }
                };
                if shutdown.is_cancelled() {
                    self.stop_probes(|_| true);
                    return Outcome::Shutdown;
                }
                let sleep = async {
                    match wait {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => {
                        self.stop_probes(|_| true);
                        return Outcome::Shutdown;
                    }
                    pending = self.mailbox.recv() => self.apply(pending),
                    Some(update) = recv_probe(&mut self.probe_rx) => self.on_probe(update),
                    () = sleep => {}
                }
                // Everything already queued counts for the next step: a burst of
                // events costs one sync.
                let pending = self.mailbox.take();
                self.apply(pending);
                while let Some(update) = self.probe_rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
                    self.on_probe(update);
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One step of the current phase.
    async fn step(&mut self, shutdown: &CancellationToken) -> Result<Next, RuntimeError> {
        match self.phase.clone() {
            Phase::Syncing => {
                let started = std::time::Instant::now();
                let next = self.sync().await;
                crate::server::metrics::observe_pod_worker("sync", started);
                next
            }
            Phase::Terminating(req) => self.terminate_step(req, shutdown).await,
            Phase::Terminated => {
                if std::mem::take(&mut self.stale_status) {
                    let containers = self.env.runtime.list_containers(Some(&self.uid)).await?;
                    let now = self.env.clock.now();
                    self.publish(&containers, None, HashMap::new(), false, now);
                }
                Ok(Next::Idle)
            }
        }
    }

    /// Takes in what arrived: the newest spec, a termination, an eviction, OOM kills.
    fn apply(&mut self, p: Pending) {
        if let Some(pod) = p.update {
            // A terminated pod keeps the spec it ended with; its metadata (a deletion
            // timestamp) still shows.
            if self.phase == Phase::Terminated {
                Arc::make_mut(&mut self.pod).metadata = pod.metadata.clone();
            } else {
                self.pod = pod;
            }
            // Readers see the new labels and annotations at once, with the status
            // they had.
            if self.last_status.is_some() {
                self.env.statuses.set_object(&self.pod);
            }
        }
        for id in p.oom {
            // The exit may have been seen (and its ending cached) before the OOM
            // event arrived: look again.
            if self.endings.remove(&id).is_some() {
                self.stale_status = true;
            }
            self.oom_killed.insert(id);
        }
        if let Some(evict) = p.evict
            && self.failure.is_none()
            && self.phase == Phase::Syncing
        {
            info!(message = %evict.message, "evicted");
            self.env
                .events
                .for_pod(&self.pod)
                .warning(ev::EVICTED, &evict.message);
            self.failure = Some((messages::REASON.to_owned(), evict.message));
            // Upstream kills with the override, but never under its minimum.
            self.grace_override = Some(evict.grace.max(MIN_GRACE_AFTER_HOOK));
            self.evicted_at = Some(self.env.clock.now());
        }
        if let Some(req) = p.terminate {
            self.phase = match std::mem::replace(&mut self.phase, Phase::Syncing) {
                Phase::Terminating(old) => {
                    Phase::Terminating(crate::pod::mailbox::merge_terminate(old, req))
                }
                Phase::Syncing | Phase::Terminated => Phase::Terminating(req),
            };
        }
    }

    fn pod_dir(&self) -> PathBuf {
        self.env.root_dir.join("pods").join(&self.uid)
    }

    /// Events of container `name` of this pod.
    fn events_of(&self, name: &str) -> crate::events::ObjectEvents {
        self.env.events.for_container(&self.pod, name)
    }

    /// The spec of container `name` (app or init).
    fn container_spec(&self, name: &str) -> Option<Container> {
        let spec = self.pod.spec.as_ref()?;
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .cloned()
    }

    /// Where probe workers send their results (the channel is made on first use).
    fn probe_sender(&mut self) -> mpsc::Sender<ProbeUpdate> {
        if let Some(tx) = &self.probe_tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(64);
        self.probe_rx = Some(rx);
        self.probe_tx = Some(tx.clone());
        tx
    }

    /// The IP hooks and probes reach the pod on.
    fn pod_ip(&self) -> std::net::IpAddr {
        self.last_ips
            .first()
            .or(Some(&self.env.host_ip))
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }
}

#[cfg(test)]
mod tests;
