//! One container brought toward its spec: kept, killed after a failed liveness
//! probe, restarted per the restart policy with upstream's crash-loop back-off
//! (10 s doubling to 300 s, reset after 10 minutes of running), or a new instance
//! created: image through the image manager, configuration, create, start, postStart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Container;
use nodelet_cri::runtime::{ContainerInfo, ContainerState, Runtime, RuntimeError, SandboxInfo};
use tracing::{info, warn};

use super::{
    BACKOFF_INITIAL, BACKOFF_MAX, BACKOFF_RESET, Backoff, PodWorker, RESYNC_PERIOD, display_name,
    restart_wanted,
};
use crate::events::reason as ev;
use crate::pod::hooks;
use crate::pod::podspec::{self, FieldValues};
use crate::pod::status::Waiting;

impl<R: Runtime> PodWorker<R> {
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
            .ensure(&self.pod, c, &reference, &events, now)
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
        // ConfigMaps, Secrets and Services the environment is made from; a missing
        // one holds the container in CreateContainerConfigError, retried each sync.
        let objects = self.env.volumes.objects();
        let env_objects = crate::pod::env::EnvObjects::fetch(&self.pod, c, objects.as_ref()).await;
        let term_dir = self.pod_dir().join("containers").join(&c.name);
        let term_log = term_dir.join(format!("termination-log-{attempt}"));
        let config = std::fs::create_dir_all(&term_dir)
            .and_then(|()| std::fs::write(&term_log, b""))
            .map_err(|e| podspec::ConfigError::Io {
                path: term_log.display().to_string(),
                reason: e.to_string(),
            })
            .and(env_objects)
            .and_then(|env_objects| {
                // Ordered as the pod's status shows them (upstream's `sortPodIPs`).
                let ips: Vec<String> = sb.ips.iter().map(ToString::to_string).collect();
                let ips = crate::pod::status::sort_pod_ips(&ips, &self.env.host_ip);
                let fields = FieldValues {
                    node_name: self.env.node_name.clone(),
                    host_ip: self.env.host_ip.clone(),
                    pod_ip: ips.first().cloned().unwrap_or_default(),
                    pod_ips: ips.join(","),
                    container: Some(c.clone()),
                    capacity: self.env.capacity,
                    env_objects,
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
        // Upstream's messages since v1.33 (the container is the field path).
        self.events_of(&c.name)
            .normal(ev::CREATED_CONTAINER, "Container created");
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
        self.events_of(&c.name)
            .normal(ev::STARTED_CONTAINER, "Container started");
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
}
