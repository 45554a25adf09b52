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

use super::{BACKOFF_INITIAL, Next, Phase, PodWorker, RESYNC_PERIOD, latest, restart_wanted};
use crate::events::reason as ev;
use crate::pod::podspec;
use crate::pod::status::{self, Waiting};
use crate::volume::PodContext;

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
                // The node IP's family first, as upstream's `sortPodIPs`.
                let ips: Vec<String> = sb.ips.iter().map(ToString::to_string).collect();
                crate::pod::status::sort_pod_ips(&ips, &self.env.host_ip)
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
                            volumes,
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
                                volumes,
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
            // Its volumes go back now (tmpfs memory, emptyDir space); the dead
            // containers' termination messages stay until the pod is removed.
            let volumes = Arc::clone(&self.env.volumes);
            let uid = self.uid.clone();
            match tokio::task::spawn_blocking(move || volumes.teardown_volumes(&uid)).await {
                Ok(Ok(())) => self.volumes = None,
                Ok(Err(e)) => warn!(error = %e, "volume teardown of a finished pod failed"),
                Err(e) => warn!(error = %e, "volume teardown panicked"),
            }
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
        let mut config = podspec::sandbox_config(
            &self.pod,
            attempt,
            &self.env.pod_logs_dir,
            self.env.cgroups.pod_cgroup(&self.pod),
            &self.env.dns,
        );
        // The RuntimeClass first, as upstream's createPodSandbox: a missing one fails
        // this pod's sandbox with its own message.
        let objects = self.env.volumes.objects();
        let handler = crate::pod::runtimeclass::runtime_handler(&*objects, &self.pod).await;
        // The pod cgroup first, with the pod's limits, as upstream's syncPod does
        // before it asks the runtime for a sandbox.
        // Off the async threads: with the systemd driver this is a D-Bus round trip.
        let cgroups = Arc::clone(&self.env.cgroups);
        let pod = self.pod.clone();
        let made = match handler {
            Err(e) => Err(e.to_string()),
            Ok(handler) => {
                config.runtime_handler = handler;
                match tokio::task::spawn_blocking(move || cgroups.ensure_pod(&pod)).await {
                    Ok(Ok(())) => rt.run_sandbox(&config).await.map_err(|e| e.to_string()),
                    Ok(Err(e)) => Err(format!("pod cgroup: {e}")),
                    Err(e) => Err(format!("pod cgroup: {e}")),
                }
            }
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
                // Upstream's back-off; a change to a referenced object wakes the
                // worker sooner.
                *wake = (*wake).min(self.env.volumes.retry_in(&self.uid));
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
