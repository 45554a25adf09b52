//! Termination: the grace period as upstream computes it, stopping containers in
//! upstream's order, and removing what a terminated pod leaves behind.
//!
//! - The grace period (`calculateEffectiveGracePeriod`): the pod's
//!   `terminationGracePeriodSeconds` (30 s by default), shortened by the source's
//!   `deletionGracePeriodSeconds` or a request's override, never lengthened once
//!   settled, never under 1 s. A shorter grace arriving while containers are being
//!   stopped restarts the stop with it, as upstream cancels and re-runs the kill.
//! - The order (`killContainersWithSyncResult` with termination ordering): every
//!   container's preStop hook runs at once; regular containers then get their stop
//!   signal; sidecars (restartable init containers) wait until the regular containers
//!   and the sidecars declared after them have stopped, within the grace period; each
//!   gets at least 2 s for its signal.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use nodelet_cri::runtime::{ContainerInfo, ContainerState, Runtime, RuntimeError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Next, Phase, PodWorker};
use crate::events::reason as ev;
use crate::pod::hooks;
use crate::pod::mailbox::{Pending, Terminate};
use crate::pod::status;

/// The default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;
/// How many of a terminated pod's containers are removed at once.
const REMOVE_CONCURRENCY: usize = 8;
/// Upstream always gives a terminating pod at least this long.
const MIN_POD_GRACE: Duration = Duration::from_secs(1);

fn seconds(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// The grace period for terminating `pod`: `settled` (an earlier decision, which
/// later ones only shorten) or the pod's own, shortened by the deletion's and the
/// request's, at least 1 s.
pub fn effective_grace(pod: &Pod, settled: Option<Duration>, req: Option<&Terminate>) -> Duration {
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    let mut grace = settled.unwrap_or_else(|| seconds(own));
    if let Some(d) = pod.metadata.deletion_grace_period_seconds {
        grace = grace.min(seconds(d));
    }
    if let Some(r) = req.and_then(|r| r.grace) {
        grace = grace.min(r);
    }
    grace.max(MIN_POD_GRACE)
}

/// Whether what arrived shortens a termination running with `grace`.
fn shortens(p: &Pending, pod: &Pod, grace: Duration) -> bool {
    let deletion = p
        .update
        .as_ref()
        .and_then(|u| u.metadata.deletion_grace_period_seconds)
        .or(pod.metadata.deletion_grace_period_seconds);
    let requested = p.terminate.as_ref().and_then(|t| t.grace);
    deletion
        .map(seconds)
        .into_iter()
        .chain(requested)
        .any(|g| g.max(MIN_POD_GRACE) < grace)
}

impl<R: Runtime> PodWorker<R> {
    /// The grace period for a container being stopped while the pod keeps running
    /// (a failed probe or hook), or the one termination settled on.
    pub(super) fn grace_period(&self) -> Duration {
        self.grace_override.unwrap_or_else(|| {
            seconds(
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(DEFAULT_GRACE_SECONDS),
            )
        })
    }

    /// Shows the pod as being deleted (kubectl prints `Terminating`). A source that
    /// deleted the pod set its own deletion timestamp; for a pod its source dropped,
    /// the published copy gets one as the apiserver would set it.
    fn mark_terminating(&mut self, grace: Duration) {
        let now = self.env.clock.now();
        let since = *self.terminating_since.get_or_insert(now);
        if self.pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let mut shown = Pod::clone(&self.pod);
        shown.metadata.deletion_timestamp = status::k8s_time(since + grace);
        shown.metadata.deletion_grace_period_seconds = i64::try_from(grace.as_secs()).ok();
        self.env.statuses.set_object(&shown);
    }

    /// Stops everything and removes the pod (its runtime objects, cgroup, volumes,
    /// directories), then its status.
    pub(super) async fn terminate_step(
        &mut self,
        req: Terminate,
        shutdown: &CancellationToken,
    ) -> Result<Next, RuntimeError> {
        let mut grace = effective_grace(&self.pod, self.grace_override, Some(&req));
        self.grace_override = Some(grace);
        self.mark_terminating(grace);
        self.stop_probes(|_| true);
        let rt = std::sync::Arc::clone(&self.env.runtime);
        let mailbox = self.mailbox.clone();
        loop {
            let containers = rt.list_containers(Some(&self.uid)).await?;
            let mut stash = Pending::default();
            let finished = {
                let kill = self.stop_all(&containers, grace);
                tokio::pin!(kill);
                loop {
                    tokio::select! {
                        r = &mut kill => break Some(r),
                        p = mailbox.recv() => {
                            let shorter = shortens(&p, &self.pod, grace);
                            stash.merge(p);
                            if shorter {
                                break None;
                            }
                        }
                        () = shutdown.cancelled() => return Ok(Next::Idle),
                    }
                }
            };
            self.apply(stash);
            let Phase::Terminating(req) = self.phase.clone() else {
                continue;
            };
            match finished {
                Some(r) => {
                    r?;
                    break;
                }
                None => {
                    grace = effective_grace(&self.pod, self.grace_override, Some(&req));
                    self.grace_override = Some(grace);
                    info!(grace = ?grace, "grace period shortened, stopping again");
                }
            }
        }
        // The final status: every container stopped, as the pod ends.
        let containers = rt.list_containers(Some(&self.uid)).await?;
        let now = self.env.clock.now();
        self.publish(&containers, None, Default::default(), false, now);
        // A few at a time: removing 300 containers one by one took minutes.
        let ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
        let removals = futures::stream::iter(ids)
            .map(|id| {
                let rt = std::sync::Arc::clone(&rt);
                async move { rt.remove_container(&id).await }
            })
            .buffer_unordered(REMOVE_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        for r in removals {
            r?;
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
        // Off the async threads: with the systemd driver this is a D-Bus round trip.
        let pod_cgroups = std::sync::Arc::clone(&self.env.cgroups);
        let uid = self.uid.clone();
        if let Err(e) =
            tokio::task::spawn_blocking(move || pod_cgroups.remove_pod(&uid, &cgroups)).await
        {
            warn!(error = %e, "pod cgroup removal panicked");
        }
        let volumes = std::sync::Arc::clone(&self.env.volumes);
        let uid = self.uid.clone();
        match tokio::task::spawn_blocking(move || volumes.teardown(&uid)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "volume teardown failed"),
            Err(e) => warn!(error = %e, "volume teardown panicked"),
        }
        // The pod's log directory goes with it (upstream's container GC does this
        // within its one-minute period).
        let m = &self.pod.metadata;
        if let Err(e) = nodelet_cri::logs::remove_pod_log_dir(
            &self.env.pod_logs_dir,
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or(""),
            &self.uid,
        ) {
            warn!(error = %e, "cannot remove the pod's log directory");
        }
        self.env.images.forget_pod(&self.uid);
        self.env.statuses.remove(&self.uid);
        self.phase = Phase::Terminated;
        info!("pod removed");
        Ok(Next::Done)
    }

    /// Stops every running container of the pod within `grace`, in upstream's order:
    /// preStop hooks at once, regular containers, then sidecars last to first.
    pub(super) async fn stop_all(
        &self,
        containers: &[ContainerInfo],
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let running: Vec<&ContainerInfo> = containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .collect();
        let sidecars: Vec<String> = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| status::is_sidecar(c))
            .map(|c| c.name.clone())
            .collect();
        // What a container waits for before its signal: nothing for a regular one;
        // for a sidecar, every running regular container and later sidecar.
        let waits_for = |name: &str| -> HashSet<String> {
            let Some(i) = sidecars.iter().position(|s| s == name) else {
                return HashSet::new();
            };
            running
                .iter()
                .map(|c| c.name.clone())
                .filter(|n| match sidecars.iter().position(|s| s == n) {
                    None => true,
                    Some(j) => j > i,
                })
                .collect()
        };
        let (stopped_tx, stopped_rx) = watch::channel(HashSet::<String>::new());
        let stops = running.iter().map(|c| {
            let message = format!("Stopping container {}", c.name);
            self.events_of(&c.name)
                .normal(ev::KILLING_CONTAINER, &message);
            let deps = waits_for(&c.name);
            let mut rx = stopped_rx.clone();
            let tx = stopped_tx.clone();
            async move {
                let turn = async move {
                    let _ = rx.wait_for(|stopped| deps.is_subset(stopped)).await;
                };
                let r = self.stop_one(c, grace, turn, MIN_POD_GRACE).await;
                tx.send_modify(|s| {
                    s.insert(c.name.clone());
                });
                r
            }
        });
        for r in futures::future::join_all(stops).await {
            r?;
        }
        Ok(())
    }

    /// Stops one container as upstream's `killContainer` does: the preStop hook first,
    /// within the grace period, then its turn (`turn` resolves), then the stop signal
    /// with what is left of the grace period (at least `floor`: upstream's 2 s for a
    /// container killed in a running pod, the pod's 1 s minimum when the pod
    /// terminates with a grace period it was given), then SIGKILL.
    pub(super) async fn stop_one(
        &self,
        info: &ContainerInfo,
        grace: Duration,
        turn: impl Future<Output = ()>,
        floor: Duration,
    ) -> Result<(), RuntimeError> {
        let start = tokio::time::Instant::now();
        if let Some(c) = self.container_spec(&info.name)
            && let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
            && !grace.is_zero()
        {
            let rt = &*self.env.runtime;
            if let Err(message) = hooks::run(hook, rt, &c, &info.id, self.pod_ip(), grace).await {
                warn!(container = %info.name, %message, "FailedPreStopHook");
                // Upstream leaves the hook's output out of the event (it may hold
                // secrets); the log line has it.
                self.events_of(&info.name)
                    .warning(ev::FAILED_PRE_STOP_HOOK, "PreStopHook failed");
            }
        }
        let left = grace.saturating_sub(start.elapsed());
        if !left.is_zero() && tokio::time::timeout(left, turn).await.is_err() {
            debug!(container = %info.name, "stopping before its turn: the grace period is over");
        }
        let left = grace.saturating_sub(start.elapsed()).max(floor);
        self.env.runtime.stop_container(&info.id, left).await
    }
}
