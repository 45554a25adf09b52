//! One probe of one container instance, run on its period (upstream
//! `pkg/kubelet/prober/worker.go`): it starts from the kind's initial result, waits
//! `initialDelaySeconds` from the container's start, probes every `periodSeconds`,
//! changes its result only after `successThreshold` passes or `failureThreshold`
//! failures in a row, throws away probes that errored, and keeps liveness and
//! readiness quiet until the container has started (its startup probe passed).
//! Each change of result is sent as a [`ProbeUpdate`].
//!
//! Probes started within one period of the agent's start (an agent restart adopting
//! running containers starts them all at once) first wait a random part of their
//! period, so they don't all run in the same instant, as upstream's `worker.run`.
//!
//! A worker belongs to one container instance: after a liveness or startup failure
//! the container must be restarted, and its next instance gets new workers (upstream
//! keeps one worker and puts it on hold until the container ID changes).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Probe};
use nodelet_cri::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{ProbeOutcome, ProbeResult, ProbeTarget, probe_once};

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `livenessProbe`: a failure restarts the container.
    Liveness,
    /// `readinessProbe`: the container's `ready`.
    Readiness,
    /// `startupProbe`: the container's `started`; gates the other two.
    Startup,
}

impl ProbeKind {
    /// Upstream's name (`Liveness`, `Readiness`, `Startup`), as in its events.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }

    /// The result before any probe ran: readiness fails, liveness passes, startup is
    /// unknown (upstream's `initialValue`).
    pub fn initial_result(self) -> ProbeResult {
        match self {
            ProbeKind::Liveness => ProbeResult::Success,
            ProbeKind::Readiness => ProbeResult::Failure,
            ProbeKind::Startup => ProbeResult::Unknown,
        }
    }
}

/// A change of a probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUpdate {
    /// The container's name in the pod spec.
    pub container: String,
    /// The runtime's ID of the container instance probed.
    pub container_id: String,
    /// Which probe.
    pub kind: ProbeKind,
    /// The new result.
    pub result: ProbeResult,
    /// The last probe's message (empty for the initial result).
    pub message: String,
}

/// The timing and thresholds of a probe, with the API's defaults and minimums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// `initialDelaySeconds` (default 0), counted from the container's start.
    pub initial_delay: Duration,
    /// `periodSeconds` (default 10, at least 1).
    pub period: Duration,
    /// `successThreshold` (default 1, at least 1).
    pub success_threshold: u32,
    /// `failureThreshold` (default 3, at least 1).
    pub failure_threshold: u32,
}

impl ProbeSettings {
    /// The settings of `probe`.
    pub fn from_probe(probe: &Probe) -> Self {
        let secs = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(default).max(min)).unwrap_or(0))
        };
        let count =
            |v: Option<i32>, default: i32| u32::try_from(v.unwrap_or(default).max(1)).unwrap_or(1);
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0, 0),
            period: secs(probe.period_seconds, 10, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// Runs one probe once; [`HandlerRunner`] is the real one, tests use fakes.
pub trait ProbeRunner: Send + Sync + 'static {
    /// Probes once.
    fn run(&self) -> impl Future<Output = ProbeOutcome> + Send;
}

/// Runs a pod spec's probe through its handler ([`probe_once`]).
#[derive(Debug)]
pub struct HandlerRunner<R> {
    probe: Probe,
    target: ProbeTarget,
    runtime: Arc<R>,
}

impl<R: Runtime> HandlerRunner<R> {
    /// The runner of `probe` against `target`.
    pub fn new(probe: Probe, target: ProbeTarget, runtime: Arc<R>) -> Self {
        Self {
            probe,
            target,
            runtime,
        }
    }
}

impl<R: Runtime> ProbeRunner for HandlerRunner<R> {
    async fn run(&self) -> ProbeOutcome {
        probe_once(&self.probe, &self.target, self.runtime.as_ref()).await
    }
}

/// One probe of one container instance; see the module docs.
pub struct ProbeWorker<P> {
    container: String,
    container_id: String,
    kind: ProbeKind,
    settings: ProbeSettings,
    runner: P,
    started_at: Instant,
    gate: Option<watch::Receiver<bool>>,
    on_started: Option<watch::Sender<bool>>,
    agent_start: Option<Instant>,
    updates: mpsc::Sender<ProbeUpdate>,
    events: Option<crate::events::ObjectEvents>,
}

/// How long a worker waits before its first probe (upstream `worker.run`): when the
/// agent started less than a `period` ago, `unit` (uniform in [0, 1)) of the period,
/// else nothing.
pub fn start_jitter(period: Duration, since_agent_start: Duration, unit: f64) -> Duration {
    if period > since_agent_start {
        period.mul_f64(unit.clamp(0.0, 1.0))
    } else {
        Duration::ZERO
    }
}

/// `at` (wall clock) as a tokio instant, for a container's start time.
pub fn instant_of(at: SystemTime) -> Instant {
    let ago = SystemTime::now().duration_since(at).unwrap_or_default();
    let now = Instant::now();
    now.checked_sub(ago).unwrap_or(now)
}

impl<P: ProbeRunner> ProbeWorker<P> {
    /// A worker for the `kind` probe of container `container` (instance
    /// `container_id`, started at `started_at`), sending changes to `updates`.
    pub fn new(
        container: impl Into<String>,
        container_id: impl Into<String>,
        kind: ProbeKind,
        settings: ProbeSettings,
        runner: P,
        started_at: Instant,
        updates: mpsc::Sender<ProbeUpdate>,
    ) -> Self {
        Self {
            container: container.into(),
            container_id: container_id.into(),
            kind,
            settings,
            runner,
            started_at,
            gate: None,
            on_started: None,
            agent_start: None,
            updates,
            events: None,
        }
    }

    /// Records upstream's `Unhealthy` events (a failed or errored probe) for the
    /// container on `events`.
    #[must_use]
    pub fn records_events(mut self, events: crate::events::ObjectEvents) -> Self {
        self.events = Some(events);
        self
    }

    /// Liveness and readiness: probe only while `started` is true (the container's
    /// startup probe passed). Without a gate they probe from the start, as for a
    /// container without a startup probe.
    #[must_use]
    pub fn gated_by(mut self, started: watch::Receiver<bool>) -> Self {
        self.gate = Some(started);
        self
    }

    /// Startup: set `started` to true when the probe passes.
    #[must_use]
    pub fn signals_started(mut self, started: watch::Sender<bool>) -> Self {
        self.on_started = Some(started);
        self
    }

    /// Before the first probe, wait [`start_jitter`] when the agent started at
    /// `agent_start`. Without it the first probe runs at once.
    #[must_use]
    pub fn jittered_after(mut self, agent_start: Instant) -> Self {
        self.agent_start = Some(agent_start);
        self
    }

    /// Runs the worker as a task; see [`ProbeWorker::run`].
    pub fn spawn(self, cancel: CancellationToken) -> JoinHandle<ProbeResult>
    where
        P: 'static,
    {
        tokio::spawn(self.run(cancel))
    }

    /// Probes until `cancel` fires, or until its verdict on this container instance
    /// is final: a liveness or startup failure (the container must be restarted), a
    /// startup success. Sends the initial result first, then every change. Returns
    /// the last result it set.
    pub async fn run(mut self, cancel: CancellationToken) -> ProbeResult {
        let mut current = self.kind.initial_result();
        if !self.send(current, String::new(), &cancel).await {
            return current;
        }
        if let Some(agent_start) = self.agent_start {
            let wait = start_jitter(self.settings.period, agent_start.elapsed(), fastrand::f64());
            if !wait.is_zero() {
                debug!(
                    container = %self.container, probe = self.kind.as_str(),
                    wait_ms = wait.as_millis(), "agent just started: first probe jittered"
                );
                tokio::select! {
                    () = cancel.cancelled() => return current,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        let mut last = ProbeResult::Unknown;
        let mut run = 0u32;
        let mut ticker = tokio::time::interval(self.settings.period);
        // Go's ticker drops the ticks a slow probe missed.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let delay_secs = self.settings.initial_delay.as_secs();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return current,
                _ = ticker.tick() => {}
            }
            // Whole seconds since the start, as upstream compares them.
            if self.started_at.elapsed().as_secs() < delay_secs {
                continue;
            }
            if self.kind != ProbeKind::Startup && self.gate.as_ref().is_some_and(|g| !*g.borrow()) {
                continue;
            }
            let outcome = tokio::select! {
                () = cancel.cancelled() => return current,
                o = self.runner.run() => o,
            };
            if let Some(events) = &self.events {
                let o = events.object();
                let result = match outcome.result {
                    ProbeResult::Success => "successful",
                    ProbeResult::Failure => "failed",
                    ProbeResult::Unknown => "unknown",
                };
                crate::server::metrics::observe_probe(
                    self.kind.as_str(),
                    result,
                    &self.container,
                    o.name.as_deref().unwrap_or_default(),
                    o.namespace.as_deref().unwrap_or_default(),
                    o.uid.as_deref().unwrap_or_default(),
                );
            }
            if outcome.result == ProbeResult::Unknown {
                // The probe errored: its result is thrown away, as upstream.
                info!(
                    container = %self.container, probe = self.kind.as_str(),
                    message = %outcome.message, "probe errored"
                );
                if let Some(events) = &self.events {
                    events.warning(
                        crate::events::reason::CONTAINER_UNHEALTHY,
                        &format!(
                            "{} probe errored and resulted in unknown state: {}",
                            self.kind.as_str(),
                            outcome.message
                        ),
                    );
                }
                continue;
            }
            if outcome.result == ProbeResult::Failure {
                debug!(
                    container = %self.container, probe = self.kind.as_str(),
                    message = %outcome.message, "probe failed"
                );
                // Upstream's prober records every failed run.
                if let Some(events) = &self.events {
                    events.warning(
                        crate::events::reason::CONTAINER_UNHEALTHY,
                        &format!("{} probe failed: {}", self.kind.as_str(), outcome.message),
                    );
                }
            }
            // Upstream's `probe.Warning`: the HTTP prober's only one is a redirect it
            // did not follow, a pass whose message says so.
            if outcome.result == ProbeResult::Success
                && outcome.message.starts_with("Probe terminated redirects")
                && let Some(events) = &self.events
            {
                events.warning(
                    crate::events::reason::CONTAINER_PROBE_WARNING,
                    &format!("{} probe warning: {}", self.kind.as_str(), outcome.message),
                );
            }
            if outcome.result == last {
                run = run.saturating_add(1);
            } else {
                last = outcome.result;
                run = 1;
            }
            let threshold = match outcome.result {
                ProbeResult::Failure => self.settings.failure_threshold,
                _ => self.settings.success_threshold,
            };
            if run < threshold {
                continue;
            }
            if outcome.result != current {
                current = outcome.result;
                if !self.send(current, outcome.message, &cancel).await {
                    return current;
                }
            }
            match (self.kind, current) {
                (ProbeKind::Liveness | ProbeKind::Startup, ProbeResult::Failure) => return current,
                (ProbeKind::Startup, ProbeResult::Success) => {
                    if let Some(started) = &self.on_started {
                        started.send_replace(true);
                    }
                    return current;
                }
                _ => {}
            }
        }
    }

    /// Sends an update; false when the receiver is gone or the worker is cancelled.
    async fn send(
        &mut self,
        result: ProbeResult,
        message: String,
        cancel: &CancellationToken,
    ) -> bool {
        let update = ProbeUpdate {
            container: self.container.clone(),
            container_id: self.container_id.clone(),
            kind: self.kind,
            result,
            message,
        };
        tokio::select! {
            () = cancel.cancelled() => false,
            sent = self.updates.send(update) => sent.is_ok(),
        }
    }
}

/// Starts the workers of a container instance's probes: startup first, and liveness
/// and readiness gated on it (ungated when there is no startup probe). `started_at`
/// is when the container's process started, `agent_start` when the agent did (for
/// [`start_jitter`]). Every worker stops when `cancel` fires.
#[allow(clippy::too_many_arguments)]
pub fn spawn_container_probes<R: Runtime>(
    container: &Container,
    target: &ProbeTarget,
    runtime: &Arc<R>,
    started_at: Instant,
    agent_start: Instant,
    updates: &mpsc::Sender<ProbeUpdate>,
    cancel: &CancellationToken,
    events: &crate::events::ObjectEvents,
) -> Vec<JoinHandle<ProbeResult>> {
    let (started_tx, started_rx) = watch::channel(container.startup_probe.is_none());
    let worker = |kind: ProbeKind, probe: &Probe| {
        ProbeWorker::new(
            container.name.clone(),
            target.container_id.clone(),
            kind,
            ProbeSettings::from_probe(probe),
            HandlerRunner::new(probe.clone(), target.clone(), runtime.clone()),
            started_at,
            updates.clone(),
        )
        .records_events(events.clone())
        .jittered_after(agent_start)
    };
    let mut handles = Vec::new();
    if let Some(p) = &container.startup_probe {
        handles.push(
            worker(ProbeKind::Startup, p)
                .signals_started(started_tx)
                .spawn(cancel.child_token()),
        );
    }
    for (kind, probe) in [
        (ProbeKind::Liveness, &container.liveness_probe),
        (ProbeKind::Readiness, &container.readiness_probe),
    ] {
        if let Some(p) = probe {
            handles.push(
                worker(kind, p)
                    .gated_by(started_rx.clone())
                    .spawn(cancel.child_token()),
            );
        }
    }
    handles
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
