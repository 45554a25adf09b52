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
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;

    /// Answers from a script (then repeats the last answer) and records when it ran,
    /// relative to the start.
    struct Scripted {
        answers: Mutex<VecDeque<ProbeResult>>,
        last: Mutex<ProbeResult>,
        calls: Arc<Mutex<Vec<Duration>>>,
        start: Instant,
        takes: Duration,
    }

    impl Scripted {
        fn new(answers: &[ProbeResult]) -> (Self, Arc<Mutex<Vec<Duration>>>) {
            let calls: Arc<Mutex<Vec<Duration>>> = Arc::default();
            (
                Self {
                    answers: Mutex::new(answers.iter().copied().collect()),
                    last: Mutex::new(ProbeResult::Success),
                    calls: calls.clone(),
                    start: Instant::now(),
                    takes: Duration::ZERO,
                },
                calls,
            )
        }
    }

    impl ProbeRunner for Scripted {
        async fn run(&self) -> ProbeOutcome {
            self.calls.lock().expect("lock").push(self.start.elapsed());
            tokio::time::sleep(self.takes).await;
            let mut last = self.last.lock().expect("lock");
            if let Some(next) = self.answers.lock().expect("lock").pop_front() {
                *last = next;
            }
            ProbeOutcome::new(*last, format!("said {}", last.as_str()))
        }
    }

    fn settings(delay: u64, period: u64, success: u32, failure: u32) -> ProbeSettings {
        ProbeSettings {
            initial_delay: Duration::from_secs(delay),
            period: Duration::from_secs(period),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    fn worker(
        kind: ProbeKind,
        s: ProbeSettings,
        runner: Scripted,
    ) -> (ProbeWorker<Scripted>, mpsc::Receiver<ProbeUpdate>) {
        let (tx, rx) = mpsc::channel(16);
        (
            ProbeWorker::new("app", "cid", kind, s, runner, Instant::now(), tx),
            rx,
        )
    }

    /// The updates so far, as (result, seconds since start).
    fn drain(rx: &mut mpsc::Receiver<ProbeUpdate>) -> Vec<ProbeResult> {
        let mut out = Vec::new();
        while let Ok(u) = rx.try_recv() {
            out.push(u.result);
        }
        out
    }

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    use ProbeResult::{Failure as F, Success as S, Unknown as U};

    #[test]
    fn settings_defaults_and_minimums() {
        let s = ProbeSettings::from_probe(&Probe::default());
        assert_eq!(s, settings(0, 10, 1, 3));
        let s = ProbeSettings::from_probe(&Probe {
            initial_delay_seconds: Some(-5),
            period_seconds: Some(0),
            success_threshold: Some(0),
            failure_threshold: Some(7),
            ..Default::default()
        });
        assert_eq!(s, settings(0, 1, 1, 7));
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_starts_failed_and_passes_on_first_success() {
        let (runner, calls) = Scripted::new(&[S]);
        let (w, mut rx) = worker(ProbeKind::Readiness, settings(0, 10, 1, 3), runner);
        let cancel = CancellationToken::new();
        let task = w.spawn(cancel.clone());
        tokio::time::sleep(Duration::from_secs(25)).await;
        let first = rx.recv().await.expect("initial");
        assert_eq!(
            first,
            ProbeUpdate {
                container: "app".into(),
                container_id: "cid".into(),
                kind: ProbeKind::Readiness,
                result: F,
                message: String::new(),
            }
        );
        let second = rx.recv().await.expect("success");
        assert_eq!(
            (second.result, second.message.as_str()),
            (S, "said success")
        );
        assert_eq!(drain(&mut rx), Vec::<ProbeResult>::new(), "no repeats");
        assert_eq!(*calls.lock().expect("lock"), secs(&[0, 10, 20]));
        cancel.cancel();
        assert_eq!(task.await.expect("join"), S);
    }

    #[tokio::test(start_paused = true)]
    async fn initial_delay_counts_whole_seconds_from_the_start_on_ticks() {
        let (runner, calls) = Scripted::new(&[S]);
        let (w, _rx) = worker(ProbeKind::Readiness, settings(5, 2, 1, 3), runner);
        let cancel = CancellationToken::new();
        let task = w.spawn(cancel.clone());
        tokio::time::sleep(Duration::from_secs(9)).await;
        cancel.cancel();
        task.await.expect("join");
        // Ticks at 0, 2, 4 are inside the delay; the first probe is on the tick at 6.
        assert_eq!(*calls.lock().expect("lock"), secs(&[6, 8]));
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_fails_after_the_threshold_and_stops() {
        let (runner, calls) = Scripted::new(&[S, F, F, S, F, F, F]);
        let (w, mut rx) = worker(ProbeKind::Liveness, settings(0, 1, 1, 3), runner);
        let task = w.spawn(CancellationToken::new());
        let end = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the worker ends by itself")
            .expect("join");
        assert_eq!(end, F);
        // Initial Success, then one Failure: the run of two was broken by a pass.
        assert_eq!(drain(&mut rx), [S, F]);
        assert_eq!(calls.lock().expect("lock").len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn success_threshold_needs_a_run_of_passes() {
        let (runner, _calls) = Scripted::new(&[S, F, S, S, F, F, F]);
        let (w, mut rx) = worker(ProbeKind::Readiness, settings(0, 1, 2, 3), runner);
        let cancel = CancellationToken::new();
        let task = w.spawn(cancel.clone());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(drain(&mut rx), [F], "S, F, S: no run of two yet");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(drain(&mut rx), [S], "S, S");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            drain(&mut rx),
            Vec::<ProbeResult>::new(),
            "two failures of three"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(drain(&mut rx), [F], "three failures: readiness goes on");
        cancel.cancel();
        assert_eq!(task.await.expect("join"), F);
    }

    #[tokio::test(start_paused = true)]
    async fn errored_probes_are_thrown_away() {
        let (runner, _calls) = Scripted::new(&[F, U, U, F, U]);
        let (w, mut rx) = worker(ProbeKind::Liveness, settings(0, 1, 1, 2), runner);
        let task = w.spawn(CancellationToken::new());
        let end = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("ends")
            .expect("join");
        // F, (U, U ignored), F: two failures in a row.
        assert_eq!(end, F);
        assert_eq!(drain(&mut rx), [S, F]);
    }

    #[tokio::test(start_paused = true)]
    async fn startup_gates_liveness_and_readiness() {
        let (startup, startup_calls) = Scripted::new(&[F, F, S]);
        let (live, live_calls) = Scripted::new(&[S]);
        let (tx, mut rx) = mpsc::channel(16);
        let (started_tx, started_rx) = watch::channel(false);
        let now = Instant::now();
        let cancel = CancellationToken::new();
        let s = ProbeWorker::new(
            "app",
            "cid",
            ProbeKind::Startup,
            settings(0, 2, 1, 5),
            startup,
            now,
            tx.clone(),
        )
        .signals_started(started_tx)
        .spawn(cancel.clone());
        let l = ProbeWorker::new(
            "app",
            "cid",
            ProbeKind::Liveness,
            settings(0, 3, 1, 3),
            live,
            now,
            tx,
        )
        .gated_by(started_rx)
        .spawn(cancel.clone());
        let end = tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .expect("startup ends")
            .expect("join");
        assert_eq!(end, S);
        // Startup probed at 0, 2, 4 and passed at 4; liveness (ticks at 0, 3, 6, 9)
        // probes from its next tick on.
        assert_eq!(*startup_calls.lock().expect("lock"), secs(&[0, 2, 4]));
        tokio::time::sleep(Duration::from_millis(5500)).await;
        assert_eq!(*live_calls.lock().expect("lock"), secs(&[6, 9]));
        let mut seen = Vec::new();
        while let Ok(u) = rx.try_recv() {
            seen.push((u.kind, u.result));
        }
        assert!(seen.contains(&(ProbeKind::Startup, U)), "{seen:?}");
        assert!(seen.contains(&(ProbeKind::Startup, S)), "{seen:?}");
        assert!(seen.contains(&(ProbeKind::Liveness, S)), "{seen:?}");
        assert_eq!(seen.len(), 3, "{seen:?}");
        cancel.cancel();
        assert_eq!(l.await.expect("join"), S);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_a_probe_in_flight() {
        let (mut runner, calls) = Scripted::new(&[S]);
        runner.takes = Duration::from_secs(3600);
        let (w, mut rx) = worker(ProbeKind::Readiness, settings(0, 1, 1, 3), runner);
        let cancel = CancellationToken::new();
        let task = w.spawn(cancel.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(calls.lock().expect("lock").len(), 1);
        cancel.cancel();
        let end = tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("stops at once")
            .expect("join");
        assert_eq!(end, F);
        assert_eq!(drain(&mut rx), [F]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gone_receiver_ends_the_worker() {
        let (runner, _calls) = Scripted::new(&[S]);
        let (w, rx) = worker(ProbeKind::Readiness, settings(0, 1, 1, 3), runner);
        drop(rx);
        let end = tokio::time::timeout(Duration::from_secs(5), w.spawn(CancellationToken::new()))
            .await
            .expect("ends")
            .expect("join");
        assert_eq!(end, F);
    }

    #[test]
    fn start_jitter_only_within_a_period_of_the_agent_start() {
        let ten = Duration::from_secs(10);
        assert_eq!(
            start_jitter(ten, Duration::ZERO, 0.5),
            Duration::from_secs(5)
        );
        assert_eq!(
            start_jitter(ten, Duration::from_secs(9), 0.0),
            Duration::ZERO
        );
        assert_eq!(
            start_jitter(ten, Duration::from_secs(9), 0.25),
            Duration::from_millis(2500)
        );
        // Not when the agent has run a whole period (upstream compares with `>`).
        assert_eq!(start_jitter(ten, ten, 0.5), Duration::ZERO);
        assert_eq!(
            start_jitter(ten, Duration::from_secs(60), 0.99),
            Duration::ZERO
        );
        // Never a whole period or more.
        assert!(start_jitter(ten, Duration::ZERO, 0.999_999) < ten);
    }

    /// Workers started right after the agent start probe first at a random point of
    /// their first period, not all at once; long after the agent start, at once.
    #[tokio::test(start_paused = true)]
    async fn first_probe_jittered_after_an_agent_start() {
        let period = Duration::from_secs(10);
        let agent_start = Instant::now();
        let cancel = CancellationToken::new();
        let mut started = Vec::new();
        for _ in 0..8 {
            let (runner, calls) = Scripted::new(&[S]);
            let (w, rx) = worker(ProbeKind::Readiness, settings(0, 10, 1, 3), runner);
            let task = w.jittered_after(agent_start).spawn(cancel.clone());
            started.push((task, calls, rx));
        }
        tokio::time::sleep(period).await;
        cancel.cancel();
        let mut firsts = Vec::new();
        for (task, calls, _rx) in started {
            task.await.expect("join");
            let first = calls.lock().expect("lock").first().copied();
            let first = first.expect("probed within the first period");
            assert!(first < period, "{first:?}");
            firsts.push(first);
        }
        // Not all at the same instant (8 equal draws from [0, 10 s) at nanosecond
        // resolution don't happen).
        firsts.sort();
        firsts.dedup();
        assert!(firsts.len() > 1, "{firsts:?}");

        // The agent has now run a whole period: no wait.
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The agent has now run 80 s: no wait.
        let (runner, calls) = Scripted::new(&[S]);
        let (w, _rx) = worker(ProbeKind::Readiness, settings(0, 10, 1, 3), runner);
        let cancel = CancellationToken::new();
        let task = w.jittered_after(agent_start).spawn(cancel.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
        task.await.expect("join");
        assert_eq!(calls.lock().expect("lock").first(), Some(&Duration::ZERO));
    }
}
