//! The syncing state: one pass brings the pod toward its spec. Sandbox first (a
//! new one replaces a dead one), then init containers in order (sidecars kept
//! running), then the app containers, each restarted per the restart policy with
//! upstream's crash-loop back-off; `activeDeadlineSeconds` fails the pod. A pass stops
//! starting containers as soon as a termination is waiting in the mailbox, so a
//! removal interrupts a long start.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Container;
use nodelet_cri::runtime::{ContainerInfo, ContainerState, Runtime, RuntimeError, SandboxInfo};
use tracing::{debug, info, warn};

use super::{
    BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_RESET, Backoff, Next, Phase, PodWorker, RESYNC_PERIOD,
    display_name, latest, restart_wanted,
};
use crate::events::reason as ev;
use crate::pod::hooks;
use crate::pod::podspec::{self, FieldValues};
use crate::pod::status::{self, Waiting};
use crate::volume::PodContext;

/// How soon volume setup is tried again after it failed.
const VOLUME_RETRY: Duration = Duration::from_secs(2);

impl<R: Runtime> PodWorker<R> {
    pub(super) async fn sync(&mut self) -> Result<Next, RuntimeError> {
        let now = self.env.clock.now();
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
        // Volumes come before the sandbox (upstream's WaitForAttachAndMount): a pod
        // whose volume can't be set up waits in ContainerCreating.
        let volumes = if done {
            None
        } else {
            self.setup_volumes(&containers, &mut waiting, &mut wake)
                .await
        };
        if done {
            // A finished pod stops what still runs (sidecars, or everything past its
            // deadline) and gives back its sandbox and IP, keeping its containers
            // (their logs and exit codes) until the pod is removed.
            self.stop_all(&containers, self.grace_period()).await?;
            for sb in &sandboxes {
                rt.remove_sandbox(&sb.id).await?;
                debug!(sandbox = %sb.id, "sandbox of a finished pod removed");
            }
            if !sandboxes.is_empty() {
                containers = rt.list_containers(Some(&self.uid)).await?;
            }
            sandbox = None;
        } else if sandbox.is_none() && volumes.is_some() {
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
            match &volumes {
                None => {}
                Some(volumes) => {
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
                        // A removal interrupts a long start: the termination that
                        // waits in the mailbox comes next.
                        if self.mailbox.termination_pending() {
                            debug!("termination requested: no more containers started");
                            break;
                        }
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
        if done
            && containers
                .iter()
                .all(|c| c.state != ContainerState::Running)
        {
            // Finished: nothing runs and nothing will. The pod is terminated; its
            // dead containers stay (logs, exit codes) until its source drops it.
            info!(
                phase = self
                    .last_status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .unwrap_or(""),
                "pod finished"
            );
            self.phase = Phase::Terminated;
            return Ok(Next::Idle);
        }
        Ok(Next::After(wake))
    }

    /// Runs the init containers in order, each to completion before the next (a
    /// sidecar only has to be running); true when all are done. Once the app
    /// containers have started, regular init containers count as done and only the
    /// sidecars are looked after (restarted when they stop, killed when unhealthy).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn sync_init(
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
            if self.mailbox.termination_pending() {
                return Ok(false);
            }
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
    pub(super) fn check_deadline(
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

    /// Replaces a dead or missing sandbox: containers of the old one are killed (they
    /// lost their network), as upstream does when a sandbox changes.
    pub(super) async fn new_sandbox(
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
        // Off the async threads: with the systemd driver this is a D-Bus round trip.
        let cgroups = Arc::clone(&self.env.cgroups);
        let pod = self.pod.clone();
        let made = match tokio::task::spawn_blocking(move || cgroups.ensure_pod(&pod)).await {
            Ok(Ok(())) => rt.run_sandbox(&config).await.map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(format!("pod cgroup: {e}")),
            Err(e) => Err(format!("pod cgroup: {e}")),
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
    pub(super) async fn sync_container(
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
                    self.stop_one(cur, grace, async {}, super::MIN_GRACE_AFTER_HOOK)
                        .await?;
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

    /// Upstream's crash-loop back-off. The first restart is immediate; later ones wait
    /// 10 s, 20 s, … 300 s after the last exit; a long clean run resets it.
    pub(super) fn crash_backoff(
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

    pub(super) async fn start_instance(
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
        let events = self.events_of(&c.name);
        let image = match self
            .env
            .images
            .ensure(&self.uid, c, &reference, &events, now)
            .await?
        {
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
                    capacity: self.env.capacity,
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

    /// Sets up the pod's volumes through the volume manager. On failure the event
    /// is `FailedMount` and containers not yet created wait in `ContainerCreating`;
    /// volumes that were set up before keep serving (a failed refresh leaves their
    /// content as it was).
    pub(super) async fn setup_volumes(
        &mut self,
        containers: &[ContainerInfo],
        waiting: &mut HashMap<String, Waiting>,
        wake: &mut Duration,
    ) -> Option<BTreeMap<String, PathBuf>> {
        let ctx = PodContext {
            pod: &self.pod,
            node_name: self.env.node_name.clone(),
            host_ip: self.env.host_ip.clone(),
            pod_ips: self.last_ips.clone(),
            capacity: self.env.capacity,
        };
        match self.env.volumes.setup(&ctx).await {
            Ok(volumes) => {
                self.volumes = Some(volumes.clone());
                Some(volumes)
            }
            Err(e) => {
                warn!(error = %e, "volume setup failed");
                self.env
                    .events
                    .for_pod(&self.pod)
                    .warning(e.reason(), &e.to_string());
                *wake = (*wake).min(VOLUME_RETRY);
                if self.volumes.is_none() {
                    let spec = self.pod.spec.clone().unwrap_or_default();
                    for c in spec
                        .init_containers
                        .iter()
                        .flatten()
                        .chain(&spec.containers)
                    {
                        if latest(containers, &c.name).0.is_none() {
                            waiting.insert(
                                c.name.clone(),
                                Waiting {
                                    reason: "ContainerCreating".into(),
                                    message: None,
                                },
                            );
                        }
                    }
                }
                self.volumes.clone()
            }
        }
    }
}
