//! Unit tests of `worker.rs`.

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
