//! The pod worker: one task per pod, the only owner of that pod's runtime state.
//!
//! Each sync observes the pod's sandboxes and containers in the runtime (the truth,
//! which is also how a restarted agent adopts what it left running), brings them
//! toward the spec — sandbox first, then containers, restarting per `restartPolicy`
//! with upstream's crash-loop back-off — and publishes the pod's status. Syncs are
//! triggered by messages (spec updates, runtime events) and by a slow resync timer.
//! Termination stops containers with the grace period, then removes everything.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use nodelet_cri::runtime::{ContainerInfo, ContainerState, Runtime, RuntimeError, SandboxInfo};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::events::reason as ev;
use crate::node::eviction::messages;
use crate::pod::hooks;
use crate::pod::podspec::{self, FieldValues};
use crate::pod::status::{self, ContainerView, Ending, PodFacts, Waiting};
use crate::probe::worker::{ProbeKind, ProbeUpdate};
use crate::probe::{self, ProbeResult, ProbeTarget};

/// The published pods, by UID.
pub type PodMap = std::collections::BTreeMap<String, Arc<Pod>>;

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

/// What a worker is told.
#[derive(Debug)]
pub enum WorkerMsg {
    /// A new version of the pod's spec.
    Update(Box<Pod>),
    /// The pod is gone from its source: stop and remove it.
    Terminate,
    /// Something changed in the runtime: look again.
    Sync,
    /// The OOM killer hit this container (its exit follows).
    Oom(String),
    /// The eviction manager picked this pod: kill it within `grace` and end it
    /// `Failed` with reason `Evicted`.
    Evict {
        /// Upstream's eviction message.
        message: String,
        /// The containers' grace period.
        grace: Duration,
    },
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
    /// The pod cgroups (`kubepods` hierarchy) and container resource values.
    pub cgroups: Arc<crate::pod::cgroups::PodCgroups>,
    /// The node name.
    pub node_name: String,
    /// The node IP.
    pub host_ip: String,
    /// Cluster DNS settings for pods' resolv.conf.
    pub dns: podspec::DnsSettings,
    /// Registry credentials for pulls (the node's config.json).
    pub pull_auth: nodelet_cri::image::PullAuth,
    /// How many image pulls may run at once across pods (`serializeImagePulls` is 1,
    /// `maxParallelImagePulls` N); `None` for no limit.
    pub pull_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// `--registry-qps` / `--registry-burst`: a pull over the limit is refused.
    pub pull_limit: Arc<crate::image::pull_limit::PullLimiter>,
    /// Where pod and container events are recorded.
    pub events: crate::events::EventRecorder,
    /// Where pod statuses are published.
    pub statuses: watch::Sender<PodMap>,
    /// When the agent started: probes started soon after are jittered.
    pub agent_start: tokio::time::Instant,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    delay: Duration,
}

/// One pod's worker.
pub struct PodWorker<R> {
    env: Arc<WorkerEnv<R>>,
    pod: Pod,
    uid: String,
    start_time: SystemTime,
    backoff: HashMap<String, Backoff>,
    /// Image pull back-off per container: the current delay and when it ends.
    image_backoff: HashMap<String, (Duration, SystemTime)>,
    last_ips: Vec<String>,
    last_status: Option<PodStatus>,
    sandbox_error: Option<(String, SystemTime)>,
    /// A pod-level failure (`DeadlineExceeded`, `Evicted`): reason and message.
    failure: Option<(String, String)>,
    /// An eviction's grace period, replacing the pod's.
    grace_override: Option<Duration>,
    /// When the pod was evicted (its `DisruptionTarget` condition's time).
    evicted_at: Option<SystemTime>,
    /// How exited instances ended, by container ID.
    endings: HashMap<String, Ending>,
    /// Containers the OOM killer hit.
    oom_killed: std::collections::HashSet<String>,
    /// Probe results come back here.
    probe_tx: mpsc::Sender<ProbeUpdate>,
    probe_rx: Option<mpsc::Receiver<ProbeUpdate>>,
    /// The probe workers of each running container instance, by container ID.
    probes: HashMap<String, CancellationToken>,
    /// Readiness and startup verdicts, by container ID.
    ready: HashMap<String, bool>,
    started: HashMap<String, bool>,
    /// Instances whose liveness or startup probe failed: to be killed.
    unhealthy: std::collections::HashSet<String>,
}

/// The outcome of one sync.
enum Next {
    /// Sync again after this long (or earlier, when a message comes).
    After(Duration),
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
    /// A worker for `pod`.
    pub fn new(env: Arc<WorkerEnv<R>>, pod: Pod) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (probe_tx, probe_rx) = mpsc::channel(64);
        Self {
            env,
            pod,
            uid,
            start_time: SystemTime::now(),
            backoff: HashMap::new(),
            image_backoff: HashMap::new(),
            last_ips: Vec::new(),
            last_status: None,
            sandbox_error: None,
            failure: None,
            grace_override: None,
            evicted_at: None,
            endings: HashMap::new(),
            oom_killed: std::collections::HashSet::new(),
            probe_tx,
            probe_rx: Some(probe_rx),
            probes: HashMap::new(),
            ready: HashMap::new(),
            started: HashMap::new(),
            unhealthy: std::collections::HashSet::new(),
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

    /// Runs until the pod is terminated and removed, or `rx` closes (agent shutdown,
    /// which leaves the pod running, as upstream does).
    pub async fn run(mut self, mut rx: mpsc::Receiver<WorkerMsg>) {
        let span = info_span!(
            "pod",
            pod = self.pod.metadata.name.as_deref().unwrap_or(""),
            namespace = self.pod.metadata.namespace.as_deref().unwrap_or(""),
            uid = %self.uid
        );
        async move {
            // The pod shows up at once as Pending, before any runtime work.
            if self.last_status.is_none() {
                self.publish(&[], None, HashMap::new(), true, SystemTime::now());
            }
            let mut terminating = false;
            let Some(mut probe_rx) = self.probe_rx.take() else {
                return;
            };
            // An orphan's worker is told to terminate before it first runs.
            while let Ok(m) = rx.try_recv() {
                terminating |= self.apply(m);
            }
            let mut failures = 0u32;
            loop {
                let result = if terminating {
                    self.terminate().await
                } else {
                    self.sync().await
                };
                let wait = match result {
                    Ok(Next::Done) => return,
                    Ok(Next::After(d)) => {
                        failures = 0;
                        d
                    }
                    Err(e) => {
                        failures += 1;
                        warn!(error = %e, "pod sync failed");
                        Duration::from_millis(500 * 2u64.pow(failures.min(5)))
                    }
                };
                let deadline = tokio::time::Instant::now() + wait;
                // Take every message that is already queued before syncing again, so
                // a burst of events costs one sync.
                tokio::select! {
                    msg = rx.recv() => match msg {
                        None => {
                            self.stop_probes(|_| true);
                            return;
                        }
                        Some(m) => terminating |= self.apply(m),
                    },
                    Some(update) = probe_rx.recv() => self.on_probe(update),
                    () = tokio::time::sleep_until(deadline) => {}
                }
                while let Ok(m) = rx.try_recv() {
                    terminating |= self.apply(m);
                }
                while let Ok(update) = probe_rx.try_recv() {
                    self.on_probe(update);
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Applies a message; true when it asks for termination.
    fn apply(&mut self, msg: WorkerMsg) -> bool {
        match msg {
            WorkerMsg::Update(pod) => {
                self.pod = *pod;
                false
            }
            WorkerMsg::Terminate => true,
            WorkerMsg::Sync => false,
            WorkerMsg::Oom(id) => {
                self.oom_killed.insert(id);
                false
            }
            WorkerMsg::Evict { message, grace } => {
                if self.failure.is_none() {
                    info!(%message, "evicted");
                    self.env
                        .events
                        .for_pod(&self.pod)
                        .warning(ev::EVICTED, &message);
                    self.failure = Some((messages::REASON.to_owned(), message));
                    // Upstream kills with the override, but never under its minimum.
                    self.grace_override = Some(grace.max(MIN_GRACE_AFTER_HOOK));
                    self.evicted_at = Some(SystemTime::now());
                }
                false
            }
        }
    }

    /// Shows the pod as being deleted (kubectl prints `Terminating`), as the
    /// apiserver's deletion timestamp does for a pod the kubelet is stopping.
    fn mark_terminating(&mut self) {
        if self.pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let grace = self.grace_period();
        self.pod.metadata.deletion_timestamp = status::k8s_time(SystemTime::now() + grace);
        self.pod.metadata.deletion_grace_period_seconds = i64::try_from(grace.as_secs()).ok();
        let mut pod = self.pod.clone();
        pod.status = self.last_status.clone();
        let pod = Arc::new(pod);
        self.env.statuses.send_modify(|m| {
            if m.contains_key(&self.uid) {
                m.insert(self.uid.clone(), pod);
            }
        });
    }

    fn grace_period(&self) -> Duration {
        if let Some(grace) = self.grace_override {
            return grace;
        }
        let secs = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    }

    fn pod_dir(&self) -> PathBuf {
        self.env.root_dir.join("pods").join(&self.uid)
    }

    async fn terminate(&mut self) -> Result<Next, RuntimeError> {
        self.mark_terminating();
        self.stop_probes(|_| true);
        let rt = &self.env.runtime;
        let containers = rt.list_containers(Some(&self.uid)).await?;
        self.stop_all(&containers).await?;
        for c in &containers {
            rt.remove_container(&c.id).await?;
        }
        // The pod cgroup goes after the last sandbox: the one each sandbox recorded
        // (an adopted pod's spec may be a stand-in) and the one this spec gives.
        let mut cgroups: Vec<String> = self.env.cgroups.pod_cgroup(&self.pod).into_iter().collect();
        for sb in rt.list_sandboxes(Some(&self.uid)).await? {
            rt.remove_sandbox(&sb.id).await?;
            cgroups.extend(sb.cgroup_parent);
        }
        cgroups.sort();
        cgroups.dedup();
        self.env.cgroups.remove_pod(&self.uid, &cgroups);
        podspec::cleanup_pod_dir(&self.pod_dir());
        self.env.statuses.send_modify(|m| {
            m.remove(&self.uid);
        });
        info!("pod removed");
        Ok(Next::Done)
    }

    async fn sync(&mut self) -> Result<Next, RuntimeError> {
        let now = SystemTime::now();
        let rt = Arc::clone(&self.env.runtime);
        let sandboxes = rt.list_sandboxes(Some(&self.uid)).await?;
        let mut containers = rt.list_containers(Some(&self.uid)).await?;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let init_specs = spec.init_containers.clone().unwrap_or_default();
        let mut wake = RESYNC_PERIOD;
        let mut waiting: HashMap<String, Waiting> = HashMap::new();
        // An adopted pod started when its oldest sandbox was made, not when this
        // agent process first saw it.
        if let Some(first) = sandboxes.iter().map(|s| s.created_at).min() {
            self.start_time = self.start_time.min(first);
        }
        self.check_deadline(&spec, now, &mut wake);

        // Init containers count as done once an app container has run (upstream's
        // rule, which also covers adopted pods whose init records are gone).
        let apps_started = spec
            .containers
            .iter()
            .any(|c| latest(&containers, &c.name).0.is_some());
        let init_failed = policy == "Never"
            && init_specs
                .iter()
                .filter(|c| !status::is_sidecar(c))
                .any(|c| {
                    latest(&containers, &c.name).0.is_some_and(|cur| {
                        cur.state == ContainerState::Exited && cur.exit_code.unwrap_or(0) != 0
                    })
                });
        // The pod is finished when no app container will run again.
        let apps_done = spec.containers.iter().all(|c| {
            latest(&containers, &c.name).0.is_some_and(|cur| {
                cur.state == ContainerState::Exited && !restart_wanted(&policy, cur.exit_code)
            })
        });
        let done = self.failure.is_some() || init_failed || apps_done;

        let mut sandbox: Option<SandboxInfo> = sandboxes
            .iter()
            .filter(|s| s.ready)
            .max_by_key(|s| s.attempt)
            .cloned();
        if done {
            // A finished pod stops what still runs (sidecars, or everything past its
            // deadline) and gives back its sandbox and IP, keeping its containers
            // (their logs and exit codes) until the pod is removed.
            self.stop_all(&containers).await?;
            for sb in &sandboxes {
                rt.remove_sandbox(&sb.id).await?;
                debug!(sandbox = %sb.id, "sandbox of a finished pod removed");
            }
            if !sandboxes.is_empty() {
                containers = rt.list_containers(Some(&self.uid)).await?;
            }
            sandbox = None;
        } else if sandbox.is_none() {
            sandbox = self
                .new_sandbox(&sandboxes, &containers, now, &mut wake)
                .await?;
            if sandbox.is_some() {
                containers = rt.list_containers(Some(&self.uid)).await?;
            }
        }
        if let Some(sb) = &sandbox {
            // A host-network pod has the node's IP, as upstream reports it.
            self.last_ips = if sb.host_network {
                vec![self.env.host_ip.clone()]
            } else {
                sb.ips.iter().map(ToString::to_string).collect()
            };
            // Old sandboxes of this pod go once a new one runs.
            for old in sandboxes.iter().filter(|s| s.id != sb.id) {
                rt.remove_sandbox(&old.id).await?;
            }
        }

        let all_names = || {
            init_specs
                .iter()
                .chain(&spec.containers)
                .map(|c| c.name.clone())
        };
        if let (Some(sb), false) = (&sandbox, done) {
            match podspec::prepare_volumes(&self.pod, &self.pod_dir()) {
                Err(e) => {
                    for name in all_names() {
                        waiting.insert(
                            name,
                            Waiting {
                                reason: "CreateContainerConfigError".into(),
                                message: Some(e.to_string()),
                            },
                        );
                    }
                }
                Ok(volumes) => {
                    // Sidecars are kept running for the pod's whole life, so this
                    // runs even once the app containers have started.
                    let initialized = self
                        .sync_init(
                            sb,
                            &init_specs,
                            &containers,
                            &volumes,
                            (&policy, apps_started),
                            now,
                            &mut waiting,
                            &mut wake,
                        )
                        .await?;
                    for c in &spec.containers {
                        if !initialized {
                            waiting.insert(
                                c.name.clone(),
                                Waiting {
                                    reason: "PodInitializing".into(),
                                    message: None,
                                },
                            );
                            continue;
                        }
                        let (cur, prev) = latest(&containers, &c.name);
                        let result = self
                            .sync_container(
                                sb,
                                c,
                                cur.as_ref(),
                                prev.as_ref(),
                                &volumes,
                                &policy,
                                now,
                            )
                            .await?;
                        if let Some((w, retry)) = result {
                            wake = wake.min(retry);
                            waiting.insert(c.name.clone(), w);
                        }
                    }
                    containers = rt.list_containers(Some(&self.uid)).await?;
                }
            }
        } else if let (None, false, Some((msg, _))) = (&sandbox, done, &self.sandbox_error) {
            for name in all_names() {
                waiting.insert(
                    name,
                    Waiting {
                        reason: "ContainerCreating".into(),
                        message: Some(msg.clone()),
                    },
                );
            }
        }

        // App containers that never ran while initialization is incomplete wait on it,
        // also once the pod is finished (an init container failed under `Never`).
        if !init_specs.is_empty() {
            let never_ran = spec
                .containers
                .iter()
                .filter(|c| latest(&containers, &c.name).0.is_none());
            for c in never_ran {
                waiting.entry(c.name.clone()).or_insert_with(|| Waiting {
                    reason: "PodInitializing".into(),
                    message: None,
                });
            }
        }
        self.sync_probes(&containers, sandbox.is_some() && !done);
        self.publish(&containers, sandbox.as_ref(), waiting, !apps_started, now);
        Ok(Next::After(wake))
    }

    /// Runs the init containers in order, each to completion before the next (a
    /// sidecar only has to be running); true when all are done. Once the app
    /// containers have started, regular init containers count as done and only the
    /// sidecars are looked after (restarted when they stop, killed when unhealthy).
    #[allow(clippy::too_many_arguments)]
    async fn sync_init(
        &mut self,
        sb: &SandboxInfo,
        init_specs: &[Container],
        containers: &[ContainerInfo],
        volumes: &std::collections::BTreeMap<String, PathBuf>,
        (policy, apps_started): (&str, bool),
        now: SystemTime,
        waiting: &mut HashMap<String, Waiting>,
        wake: &mut Duration,
    ) -> Result<bool, RuntimeError> {
        for c in init_specs {
            let (cur, prev) = latest(containers, &c.name);
            let sidecar = status::is_sidecar(c);
            if !sidecar && apps_started {
                continue;
            }
            let running = cur
                .as_ref()
                .is_some_and(|cur| cur.state == ContainerState::Running && cur.sandbox_id == sb.id);
            let succeeded = cur
                .as_ref()
                .is_some_and(|cur| cur.state == ContainerState::Exited && cur.exit_code == Some(0));
            let unhealthy = cur
                .as_ref()
                .is_some_and(|cur| self.unhealthy.contains(&cur.id));
            if (sidecar && running && !unhealthy) || (!sidecar && succeeded) {
                continue;
            }
            // Under `Always` a failed init container is retried like `OnFailure`; a
            // sidecar restarts whenever it stops.
            let init_policy = match (sidecar, policy) {
                (true, _) => "Always",
                (false, "Never") => "Never",
                _ => "OnFailure",
            };
            let result = self
                .sync_container(
                    sb,
                    c,
                    cur.as_ref(),
                    prev.as_ref(),
                    volumes,
                    init_policy,
                    now,
                )
                .await?;
            match result {
                Some((w, retry)) => {
                    *wake = (*wake).min(retry);
                    waiting.insert(c.name.clone(), w);
                }
                // Just started: its exit event (or, for a sidecar, a short wait)
                // moves initialization on.
                None if sidecar => *wake = (*wake).min(Duration::from_millis(200)),
                None => {}
            }
            if sidecar && apps_started {
                continue;
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// Fails the pod once it has been active longer than `activeDeadlineSeconds`.
    fn check_deadline(
        &mut self,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        now: SystemTime,
        wake: &mut Duration,
    ) {
        let Some(secs) = spec
            .active_deadline_seconds
            .and_then(|s| u64::try_from(s).ok())
        else {
            return;
        };
        let deadline = self.start_time + Duration::from_secs(secs);
        match deadline.duration_since(now) {
            Ok(left) => *wake = (*wake).min(left),
            Err(_) if self.failure.is_none() => {
                info!("pod passed its active deadline");
                self.failure = Some((
                    "DeadlineExceeded".to_owned(),
                    "Pod was active on the node longer than the specified deadline".to_owned(),
                ));
            }
            Err(_) => {}
        }
    }

    /// Events of container `name` of this pod.
    fn events_of(&self, name: &str) -> crate::events::ObjectEvents {
        self.env.events.for_container(&self.pod, name)
    }

    /// Stops every running container of the pod with its grace period, all at once.
    async fn stop_all(&self, containers: &[ContainerInfo]) -> Result<(), RuntimeError> {
        let grace = self.grace_period();
        let stops = containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .map(|c| {
                let message = format!("Stopping container {}", c.name);
                self.events_of(&c.name)
                    .normal(ev::KILLING_CONTAINER, &message);
                self.stop_one(c, grace)
            });
        for r in futures::future::join_all(stops).await {
            r?;
        }
        Ok(())
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

    /// The IP hooks and probes reach the pod on.
    fn pod_ip(&self) -> std::net::IpAddr {
        self.last_ips
            .first()
            .or(Some(&self.env.host_ip))
            .and_then(|ip| ip.parse().ok())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    }

    /// Stops one container as upstream's `killContainer` does: the preStop hook first,
    /// within the grace period, then the stop signal with what is left of it (at
    /// least 2 s), then SIGKILL.
    async fn stop_one(&self, info: &ContainerInfo, grace: Duration) -> Result<(), RuntimeError> {
        let mut grace = grace;
        if let Some(c) = self.container_spec(&info.name)
            && let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
            && !grace.is_zero()
        {
            let start = tokio::time::Instant::now();
            let rt = &*self.env.runtime;
            if let Err(message) = hooks::run(hook, rt, &c, &info.id, self.pod_ip(), grace).await {
                warn!(container = %info.name, %message, "FailedPreStopHook");
                // Upstream leaves the hook's output out of the event (it may hold
                // secrets); the log line has it.
                self.events_of(&info.name)
                    .warning(ev::FAILED_PRE_STOP_HOOK, "PreStopHook failed");
            }
            grace = grace
                .saturating_sub(start.elapsed())
                .max(MIN_GRACE_AFTER_HOOK);
        }
        self.env.runtime.stop_container(&info.id, grace).await
    }

    /// Replaces a dead or missing sandbox: containers of the old one are killed (they
    /// lost their network), as upstream does when a sandbox changes.
    async fn new_sandbox(
        &mut self,
        sandboxes: &[SandboxInfo],
        containers: &[ContainerInfo],
        now: SystemTime,
        wake: &mut Duration,
    ) -> Result<Option<SandboxInfo>, RuntimeError> {
        if let Some((_, retry_at)) = &self.sandbox_error
            && now < *retry_at
        {
            *wake = retry_at.duration_since(now).unwrap_or_default();
            return Ok(None);
        }
        let rt = &self.env.runtime;
        if !sandboxes.is_empty() {
            self.env.events.for_pod(&self.pod).normal(
                ev::SANDBOX_CHANGED,
                "Pod sandbox changed, it will be killed and re-created.",
            );
        }
        for c in containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
        {
            rt.stop_container(&c.id, Duration::ZERO).await?;
        }
        for sb in sandboxes {
            rt.remove_sandbox(&sb.id).await?;
        }
        let attempt = sandboxes.iter().map(|s| s.attempt + 1).max().unwrap_or(0);
        let config = podspec::sandbox_config(
            &self.pod,
            attempt,
            &self.env.pod_logs_dir,
            self.env.cgroups.pod_cgroup(&self.pod),
            &self.env.dns,
        );
        // The pod cgroup first, with the pod's limits, as upstream's syncPod does
        // before it asks the runtime for a sandbox.
        let made = match self.env.cgroups.ensure_pod(&self.pod) {
            Ok(()) => rt.run_sandbox(&config).await,
            Err(e) => Err(RuntimeError::Io {
                path: PathBuf::from(config.cgroup_parent.clone().unwrap_or_default()),
                source: std::io::Error::other(e.to_string()),
            }),
        };
        match made {
            Ok(sb) => {
                self.sandbox_error = None;
                info!(sandbox = %sb.id, ips = ?sb.ips, "sandbox running");
                Ok(Some(sb))
            }
            Err(e) => {
                warn!(error = %e, "failed to create pod sandbox");
                self.env.events.for_pod(&self.pod).warning(
                    ev::FAILED_CREATE_POD_SANDBOX,
                    &format!("Failed to create pod sandbox: {e}"),
                );
                let retry = BACKOFF_INITIAL;
                self.sandbox_error =
                    Some((format!("failed to create pod sandbox: {e}"), now + retry));
                *wake = retry;
                Ok(None)
            }
        }
    }

    /// Brings one container toward its spec. Returns the waiting reason to show and
    /// when to look again, if the container is held back.
    #[allow(clippy::too_many_arguments)]
    async fn sync_container(
        &mut self,
        sb: &SandboxInfo,
        c: &Container,
        cur: Option<&ContainerInfo>,
        prev: Option<&ContainerInfo>,
        volumes: &std::collections::BTreeMap<String, PathBuf>,
        policy: &str,
        now: SystemTime,
    ) -> Result<Option<(Waiting, Duration)>, RuntimeError> {
        let rt = Arc::clone(&self.env.runtime);
        let attempt = match cur {
            None => 0,
            Some(cur) => match cur.state {
                ContainerState::Running if cur.sandbox_id == sb.id => {
                    if !self.unhealthy.remove(&cur.id) {
                        return Ok(None);
                    }
                    // A failed liveness (or startup) probe: kill it; its exit brings the
                    // restart policy and back-off in on the next sync.
                    let grace = c
                        .liveness_probe
                        .as_ref()
                        .or(c.startup_probe.as_ref())
                        .and_then(|p| p.termination_grace_period_seconds)
                        .and_then(|s| u64::try_from(s).ok())
                        .map_or_else(|| self.grace_period(), Duration::from_secs);
                    info!(container = %c.name, "container failed its liveness probe, restarting");
                    // Upstream's computePodActions message, with killContainer's suffix.
                    let probe = if c.startup_probe.is_some()
                        && !self.started.get(&cur.id).copied().unwrap_or(false)
                    {
                        "startup"
                    } else {
                        "liveness"
                    };
                    self.events_of(&c.name).normal(
                        ev::KILLING_CONTAINER,
                        &format!(
                            "Container {} failed {probe} probe, will be restarted",
                            c.name
                        ),
                    );
                    self.stop_one(cur, grace).await?;
                    return Ok(None);
                }
                ContainerState::Running => {
                    // Left from an old sandbox: it has no network any more.
                    rt.stop_container(&cur.id, Duration::ZERO).await?;
                    cur.attempt + 1
                }
                ContainerState::Created if cur.sandbox_id == sb.id => {
                    rt.start_container(&cur.id).await?;
                    return Ok(None);
                }
                ContainerState::Created | ContainerState::Unknown => {
                    rt.remove_container(&cur.id).await?;
                    cur.attempt
                }
                ContainerState::Exited => {
                    if !restart_wanted(policy, cur.exit_code) {
                        return Ok(None);
                    }
                    if let Some(w) = self.crash_backoff(c, cur, now) {
                        return Ok(Some(w));
                    }
                    // Keep one dead instance (for lastState and logs), as upstream's
                    // MaxPerPodContainer = 1.
                    if let Some(prev) = prev {
                        rt.remove_container(&prev.id).await?;
                    }
                    cur.attempt + 1
                }
            },
        };
        self.start_instance(sb, c, attempt, volumes, now).await
    }

    /// Upstream's crash-loop back-off. The first restart is immediate; later ones wait
    /// 10 s, 20 s, … 300 s after the last exit; a long clean run resets it.
    fn crash_backoff(
        &mut self,
        c: &Container,
        cur: &ContainerInfo,
        now: SystemTime,
    ) -> Option<(Waiting, Duration)> {
        let finished = cur.finished_at.unwrap_or(now);
        let ran = cur
            .started_at
            .and_then(|s| finished.duration_since(s).ok())
            .unwrap_or_default();
        let entry = self.backoff.get(&c.name).copied();
        let delay = match entry {
            Some(b) if ran < BACKOFF_RESET => b.delay,
            _ => {
                self.backoff.insert(
                    c.name.clone(),
                    Backoff {
                        delay: BACKOFF_INITIAL,
                    },
                );
                return None;
            }
        };
        let until = finished + delay;
        if now < until {
            let message = format!(
                "back-off {} restarting failed container={} pod={}",
                crate::pod::status::human_duration(delay),
                c.name,
                display_name(&self.pod)
            );
            let wait = until.duration_since(now).unwrap_or_default();
            self.events_of(&c.name).warning(
                ev::BACK_OFF_START_CONTAINER,
                &format!(
                    "Back-off restarting failed container {} in pod {}",
                    c.name,
                    display_name(&self.pod)
                ),
            );
            return Some((
                Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(message),
                },
                wait,
            ));
        }
        self.backoff.insert(
            c.name.clone(),
            Backoff {
                delay: (delay * 2).min(BACKOFF_MAX),
            },
        );
        None
    }

    async fn start_instance(
        &mut self,
        sb: &SandboxInfo,
        c: &Container,
        attempt: u32,
        volumes: &std::collections::BTreeMap<String, PathBuf>,
        now: SystemTime,
    ) -> Result<Option<(Waiting, Duration)>, RuntimeError> {
        let rt = Arc::clone(&self.env.runtime);
        let image_ref = c.image.clone().unwrap_or_default();
        let reference = match nodelet_cri::image::normalize_reference(&image_ref) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("Failed to apply default image tag {image_ref:?}: {e}");
                self.events_of(&c.name)
                    .warning(ev::FAILED_TO_INSPECT_IMAGE, &message);
                return Ok(Some((
                    Waiting {
                        reason: "InvalidImageName".into(),
                        message: Some(message),
                    },
                    RESYNC_PERIOD,
                )));
            }
        };
        let image = match self.ensure_image(c, &image_ref, &reference, now).await? {
            Ok(image) => image,
            Err(held) => return Ok(Some(held)),
        };
        if let Err(message) = podspec::verify_run_as_non_root(&self.pod, c, &image.config.user) {
            self.events_of(&c.name)
                .warning(ev::FAILED_TO_CREATE_CONTAINER, &format!("Error: {message}"));
            return Ok(Some((
                Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message: Some(message),
                },
                RESYNC_PERIOD,
            )));
        }
        let term_dir = self.pod_dir().join("containers").join(&c.name);
        let term_log = term_dir.join(format!("termination-log-{attempt}"));
        let config = std::fs::create_dir_all(&term_dir)
            .and_then(|()| std::fs::write(&term_log, b""))
            .map_err(|e| podspec::ConfigError::Io {
                path: term_log.display().to_string(),
                reason: e.to_string(),
            })
            .and_then(|()| {
                let fields = FieldValues {
                    node_name: self.env.node_name.clone(),
                    host_ip: self.env.host_ip.clone(),
                    pod_ip: sb.ips.first().map(ToString::to_string).unwrap_or_default(),
                    pod_ips: sb
                        .ips
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    container: Some(c.clone()),
                };
                podspec::container_config(
                    &self.pod,
                    c,
                    attempt,
                    volumes,
                    &term_log,
                    &reference,
                    &fields,
                    &self.env.root_dir.join("seccomp"),
                )
            });
        let config = match config {
            Ok(mut config) => {
                if let Some(spec) = self.pod.spec.as_ref() {
                    config.resources = self.env.cgroups.container_resources(spec, c);
                }
                config
            }
            Err(e) => {
                self.events_of(&c.name)
                    .warning(ev::FAILED_TO_CREATE_CONTAINER, &format!("Error: {e}"));
                return Ok(Some((
                    Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(e.to_string()),
                    },
                    RESYNC_PERIOD,
                )));
            }
        };
        let id = match rt.create_container(sb, &config, &image).await {
            Ok(id) => id,
            Err(e @ RuntimeError::Spec { .. }) => {
                self.events_of(&c.name)
                    .warning(ev::FAILED_TO_CREATE_CONTAINER, &format!("Error: {e}"));
                return Ok(Some((
                    Waiting {
                        reason: "CreateContainerError".into(),
                        message: Some(e.to_string()),
                    },
                    RESYNC_PERIOD,
                )));
            }
            Err(e) => return Err(e),
        };
        self.events_of(&c.name).normal(
            ev::CREATED_CONTAINER,
            &format!("Created container: {}", c.name),
        );
        if let Err(e) = rt.start_container(&id).await {
            warn!(container = %c.name, error = %e, "container failed to start");
            self.events_of(&c.name)
                .warning(ev::FAILED_TO_CREATE_CONTAINER, &format!("Error: {e}"));
            // Counted like a crash: the next try waits out the back-off.
            self.backoff.entry(c.name.clone()).or_insert(Backoff {
                delay: BACKOFF_INITIAL,
            });
            return Ok(Some((
                Waiting {
                    reason: "RunContainerError".into(),
                    message: Some(e.to_string()),
                },
                BACKOFF_INITIAL,
            )));
        }
        info!(container = %c.name, id = %id, attempt, "container started");
        self.events_of(&c.name).normal(
            ev::STARTED_CONTAINER,
            &format!("Started container {}", c.name),
        );
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let rt = &*self.env.runtime;
            let grace = self.grace_period();
            if let Err(message) = hooks::run(hook, rt, c, &id, self.pod_ip(), grace).await {
                // Upstream kills a container whose postStart hook failed; the restart
                // policy and back-off decide what comes next.
                warn!(container = %c.name, %message, "FailedPostStartHook");
                // Upstream leaves the hook's output out of the event (it may hold
                // secrets); the log line and the waiting message have it.
                self.events_of(&c.name)
                    .warning(ev::FAILED_POST_START_HOOK, "PostStartHook failed");
                // Upstream's killContainer with the message "FailedPostStartHook".
                self.events_of(&c.name)
                    .normal(ev::KILLING_CONTAINER, "FailedPostStartHook");
                rt.stop_container(&id, grace).await?;
                self.backoff.entry(c.name.clone()).or_insert(Backoff {
                    delay: BACKOFF_INITIAL,
                });
                return Ok(Some((
                    Waiting {
                        reason: "PostStartHookError".into(),
                        message: Some(message),
                    },
                    BACKOFF_INITIAL,
                )));
            }
        }
        Ok(None)
    }

    /// The image a new instance runs, by upstream's pull policies: `Never` uses only
    /// what is present (`ErrImageNeverPull`), `IfNotPresent` pulls when missing,
    /// `Always` pulls every time (a pull of a present image re-resolves the tag and
    /// fetches only what changed). A failed pull shows `ErrImagePull` with the
    /// registry's reason, then `ImagePullBackOff` while the back-off (10 s doubling to
    /// 300 s) runs.
    async fn ensure_image(
        &mut self,
        c: &Container,
        image_ref: &str,
        reference: &str,
        now: SystemTime,
    ) -> Result<Result<nodelet_cri::image::ImageInfo, (Waiting, Duration)>, RuntimeError> {
        let rt = Arc::clone(&self.env.runtime);
        let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let events = self.events_of(&c.name);
        let present = match rt.image(reference).await {
            Ok(present) => present,
            Err(e) => {
                let message = format!("Failed to inspect image {image_ref:?}: {e}");
                events.warning(ev::FAILED_TO_INSPECT_IMAGE, &message);
                return Err(e);
            }
        };
        match (policy, present) {
            ("Always", _) => {}
            (_, Some(image)) => {
                let message = format!("Container image {image_ref:?} already present on machine");
                events.normal(ev::PULLED_IMAGE, &message);
                return Ok(Ok(image));
            }
            ("Never", None) => {
                let message = format!(
                    "Container image {image_ref:?} is not present with pull policy of Never"
                );
                events.warning(ev::ERR_IMAGE_NEVER_PULL, &message);
                return Ok(Err((
                    Waiting {
                        reason: "ErrImageNeverPull".into(),
                        message: Some(message),
                    },
                    RESYNC_PERIOD,
                )));
            }
            _ => {}
        }
        if let Some((_, until)) = self.image_backoff.get(&c.name)
            && now < *until
        {
            events.normal(
                ev::BACK_OFF_PULL_IMAGE,
                &format!("Back-off pulling image {image_ref:?}"),
            );
            return Ok(Err((
                Waiting {
                    reason: "ImagePullBackOff".into(),
                    message: Some(format!("Back-off pulling image {image_ref:?}")),
                },
                until.duration_since(now).unwrap_or_default(),
            )));
        }
        let waited = tokio::time::Instant::now();
        // Held for the pull: a closed semaphore (never closed here) means no limit.
        let _slot = match &self.env.pull_slots {
            Some(slots) => Arc::clone(slots).acquire_owned().await.ok(),
            None => None,
        };
        info!(container = %c.name, image = %image_ref, "Pulling image");
        events.normal(ev::PULLING_IMAGE, &format!("Pulling image {image_ref:?}"));
        let started = tokio::time::Instant::now();
        // Upstream's throttledImageService: no token, no pull ("pull QPS exceeded").
        let pulled = match self.env.pull_limit.try_accept() {
            Ok(()) => rt
                .pull_image(reference, &self.env.pull_auth)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match pulled {
            Ok(image) => {
                info!(
                    container = %c.name,
                    image = %image_ref,
                    size = image.size,
                    took = ?started.elapsed(),
                    including_waiting = ?waited.elapsed(),
                    "Successfully pulled image"
                );
                events.normal(
                    ev::PULLED_IMAGE,
                    &format!(
                        "Successfully pulled image {image_ref:?} in {} ({} including waiting). Image size: {} bytes.",
                        crate::events::go_duration_ms(started.elapsed()),
                        crate::events::go_duration_ms(waited.elapsed()),
                        image.size
                    ),
                );
                self.image_backoff.remove(&c.name);
                Ok(Ok(image))
            }
            Err(e) => {
                let delay = self
                    .image_backoff
                    .get(&c.name)
                    .map_or(BACKOFF_INITIAL, |(d, _)| (*d * 2).min(BACKOFF_MAX));
                self.image_backoff
                    .insert(c.name.clone(), (delay, now + delay));
                warn!(container = %c.name, image = %image_ref, error = %e, "Failed to pull image");
                events.warning(
                    ev::FAILED_TO_PULL_IMAGE,
                    &format!("Failed to pull image {image_ref:?}: {e}"),
                );
                // Look again shortly: the status then moves on to ImagePullBackOff
                // for the rest of the window, as upstream's does.
                Ok(Err((
                    Waiting {
                        reason: "ErrImagePull".into(),
                        message: Some(e.to_string()),
                    },
                    Duration::from_secs(1).min(delay),
                )))
            }
        }
    }

    /// Records a probe result; a liveness or startup failure marks the instance for
    /// killing, which the next sync does.
    fn on_probe(&mut self, u: ProbeUpdate) {
        debug!(
            container = %u.container,
            probe = u.kind.as_str(),
            result = u.result.as_str(),
            message = %u.message,
            "probe result changed"
        );
        let ok = u.result == ProbeResult::Success;
        match u.kind {
            ProbeKind::Readiness => {
                self.ready.insert(u.container_id, ok);
            }
            ProbeKind::Startup => {
                if u.result == ProbeResult::Failure {
                    self.unhealthy.insert(u.container_id.clone());
                }
                self.started.insert(u.container_id, ok);
            }
            ProbeKind::Liveness if u.result == ProbeResult::Failure => {
                debug!(container = %u.container, message = %u.message, "liveness probe failed");
                self.unhealthy.insert(u.container_id);
            }
            ProbeKind::Liveness => {}
        }
    }

    /// Starts probe workers for running instances that have none and stops those of
    /// instances that no longer run.
    fn sync_probes(&mut self, containers: &[ContainerInfo], active: bool) {
        let running: Vec<&ContainerInfo> = containers
            .iter()
            .filter(|c| active && c.state == ContainerState::Running)
            .collect();
        self.stop_probes(|id| !running.iter().any(|c| c.id == id));
        for info in running {
            if self.probes.contains_key(&info.id) {
                continue;
            }
            let Some(spec) = self.container_spec(&info.name) else {
                continue;
            };
            if spec.liveness_probe.is_none()
                && spec.readiness_probe.is_none()
                && spec.startup_probe.is_none()
            {
                continue;
            }
            let cancel = CancellationToken::new();
            let target = ProbeTarget {
                pod_ip: self.pod_ip(),
                container_id: info.id.clone(),
                container: spec.clone(),
            };
            let started_at =
                probe::worker::instant_of(info.started_at.unwrap_or_else(SystemTime::now));
            probe::worker::spawn_container_probes(
                &spec,
                &target,
                &self.env.runtime,
                started_at,
                self.env.agent_start,
                &self.probe_tx,
                &cancel,
                &self.events_of(&spec.name),
            );
            self.probes.insert(info.id.clone(), cancel);
        }
    }

    /// Stops the probe workers of the instances `which` selects, forgetting their
    /// verdicts.
    fn stop_probes(&mut self, which: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.probes.keys().filter(|id| which(id)).cloned().collect();
        for id in gone {
            if let Some(cancel) = self.probes.remove(&id) {
                cancel.cancel();
            }
            self.ready.remove(&id);
            self.started.remove(&id);
            self.unhealthy.remove(&id);
        }
    }

    /// How an exited instance ended: its termination message (the file, or with
    /// `FallbackToLogsOnError` the log's tail after a failure) and OOMKilled. Read
    /// once per instance.
    fn ending(&mut self, c: &Container, info: &ContainerInfo) -> Option<Ending> {
        if info.state != ContainerState::Exited {
            return None;
        }
        if let Some(e) = self.endings.get(&info.id) {
            return Some(e.clone());
        }
        let file = self
            .pod_dir()
            .join("containers")
            .join(&c.name)
            .join(format!("termination-log-{}", info.attempt));
        let mut message = read_capped(&file, TERMINATION_MESSAGE_MAX);
        let failed = info.exit_code.unwrap_or(0) != 0;
        if message.is_empty()
            && failed
            && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
        {
            message = log_tail(&info.log_path, FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES);
        }
        let ending = Ending {
            reason: self
                .oom_killed
                .contains(&info.id)
                .then(|| "OOMKilled".to_owned()),
            message: Some(message).filter(|m| !m.is_empty()),
        };
        self.endings.insert(info.id.clone(), ending.clone());
        Some(ending)
    }

    fn views(
        &mut self,
        specs: &[Container],
        containers: &[ContainerInfo],
        waiting: &mut HashMap<String, Waiting>,
    ) -> Vec<ContainerView> {
        specs
            .iter()
            .map(|c| {
                let (current, previous) = latest(containers, &c.name);
                let endings = current
                    .iter()
                    .chain(previous.iter())
                    .filter_map(|i| Some((i.id.clone(), self.ending(c, i)?)))
                    .collect();
                let id = current.as_ref().map(|i| i.id.clone()).unwrap_or_default();
                // With a probe, its verdict decides (false until it has one).
                let ready = c
                    .readiness_probe
                    .as_ref()
                    .map(|_| self.ready.get(&id).copied().unwrap_or(false));
                let started = c
                    .startup_probe
                    .as_ref()
                    .map(|_| self.started.get(&id).copied().unwrap_or(false));
                ContainerView {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    waiting: waiting.remove(&c.name),
                    current,
                    previous,
                    endings,
                    ready,
                    started,
                }
            })
            .collect()
    }

    fn publish(
        &mut self,
        containers: &[ContainerInfo],
        sandbox: Option<&SandboxInfo>,
        mut waiting: HashMap<String, Waiting>,
        init_required: bool,
        now: SystemTime,
    ) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let init_specs = spec.init_containers.clone().unwrap_or_default();
        let init_views = self.views(&init_specs, containers, &mut waiting);
        let views = self.views(&spec.containers, containers, &mut waiting);
        let facts = PodFacts {
            sandbox_ready: sandbox.is_some(),
            pod_ips: self.last_ips.clone(),
            host_ip: self.env.host_ip.clone(),
            start_time: self.start_time,
            failure: self.failure.clone(),
            init_required,
        };
        let mut status = status::pod_status(
            &self.pod,
            &init_views,
            &views,
            &facts,
            self.last_status.as_ref(),
            now,
        );
        if let (Some(at), Some((_, message))) = (self.evicted_at, &self.failure)
            && let Some(at) = status::k8s_time(at)
        {
            messages::apply_evicted_status(&mut status, message, at);
        }
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        debug!(
            phase = status.phase.as_deref().unwrap_or(""),
            "status changed"
        );
        self.last_status = Some(status.clone());
        let mut pod = self.pod.clone();
        pod.status = Some(status);
        let pod = Arc::new(pod);
        self.env.statuses.send_modify(|m| {
            m.insert(self.uid.clone(), pod);
        });
    }
}

/// Upstream's cap on a termination message read from its file.
const TERMINATION_MESSAGE_MAX: u64 = 4096;
/// With `FallbackToLogsOnError`: at most this many lines of the log's tail…
const FALLBACK_LOG_LINES: usize = 80;
/// …and at most this many bytes.
const FALLBACK_LOG_BYTES: usize = 2048;

/// The first `max` bytes of a file as text; empty when it is missing.
fn read_capped(path: &std::path::Path, max: u64) -> String {
    use std::io::Read as _;
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(max).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `lines` lines (at most `bytes` bytes) of a CRI log file's text, as
/// upstream's fallback termination message.
fn log_tail(path: &std::path::Path, lines: usize, bytes: usize) -> String {
    let content = std::fs::read_to_string(path).unwrap_or_default();
    let mut text = String::new();
    for line in content.lines().filter_map(nodelet_cri::logs::parse_line) {
        text.push_str(&line.text);
        if line.full {
            text.push('\n');
        }
    }
    let kept: Vec<&str> = text.lines().collect();
    let mut tail = kept[kept.len().saturating_sub(lines)..].join("\n");
    if !tail.is_empty() && text.ends_with('\n') {
        tail.push('\n');
    }
    if tail.len() > bytes {
        let mut cut = tail.len() - bytes;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_owned();
    }
    tail
}
