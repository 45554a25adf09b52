//! `nodelet run FILE`: the standalone test runner for pod configs (upstream's removed
//! `--runonce`, done properly).
//!
//! The pods in FILE are parsed, defaulted and validated as the manifest directory
//! source would (every error printed, exit 1 if any), then run on this machine by the
//! agent's own parts ([`crate::agent::start`], without its sources, ports or orphan
//! cleanup) under the source name `file`. Each change of a pod's phase or kubectl
//! STATUS column prints one line, `<time> <pod> <phase> <status>`; with `--logs`,
//! container output follows as `[container] text`, read from the CRI log files.
//!
//! The run ends when every pod has completed (exit 0 if all Succeeded, else 1), or
//! with `--until ready` when every pod is Ready (exit 0; a Failed pod ends it with 1),
//! or at `--timeout` (exit 1), or on SIGINT/SIGTERM (exit 130; a second signal exits
//! at once). Unless `--keep`, the pods are then torn down (containers, sandbox,
//! network) by removing them from the source and waiting until the workers have
//! removed them. `--output json` prints the last status seen before tear-down, one
//! `PodStatus` object (a JSON array of them when FILE holds several pods), on stdout;
//! progress then goes to stderr.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use nodelet_manifests::{ApiObject, ManifestError, SourceEvent, load_static_pods};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, StartOptions};
use crate::cli::{RunArgs, RunOutput, RunUntil};
use crate::pod::status_store::PodStatuses;

/// The source the pods are run under (their `config.source` annotation says `file`).
const SOURCE: &str = "file";
/// How often log files are read with `--logs`.
const LOG_POLL: Duration = Duration::from_millis(200);
/// Allowed on top of the longest grace period for tear-down to finish.
const TEARDOWN_SLACK: Duration = Duration::from_secs(60);
/// Exit code after SIGINT/SIGTERM, as a shell reports it.
const EXIT_INTERRUPTED: u8 = 130;

/// How the watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The exit condition held; whether it is a success.
    Done { success: bool },
    /// `--timeout` passed.
    TimedOut,
    /// SIGINT or SIGTERM.
    Interrupted,
}

/// Runs `nodelet run`.
///
/// # Errors
/// Agent-only flags, an unreadable FILE, or an agent that cannot start (bad flags,
/// a port taken); an invalid FILE is reported and gives exit code 1, not an error.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.agent.pod_manifest_path.is_some()
        || args.agent.manifest_url.is_some()
        || args.agent.enable_pod_push
    {
        bail!(
            "nodelet run takes its pods from FILE only: drop --pod-manifest-path, --manifest-url and --enable-pod-push"
        );
    }
    let node_name = crate::node::node_name(args.agent.hostname_override.as_deref());
    let Some((pods, objects)) = load(&args.file, &node_name)? else {
        return Ok(ExitCode::FAILURE);
    };
    let out = Printer {
        to_stderr: args.output == RunOutput::Json,
    };
    let interrupt = CancellationToken::new();
    agent::spawn_signal_handler(interrupt.clone());
    let deadline = (!args.timeout.is_zero()).then(|| Instant::now() + args.timeout);

    let started = tokio::select! {
        started = agent::start(
            &args.agent,
            StartOptions { sources: false, orphan_cleanup: false },
            CancellationToken::new(),
            |_| {},
        ) => started?,
        () = interrupt.cancelled() => return Ok(ExitCode::from(EXIT_INTERRUPTED)),
        () = sleep_until(deadline) => {
            eprintln!("nodelet run: timed out after {:?} waiting for containerd", args.timeout);
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(running) = started else {
        bail!("the agent stopped while starting");
    };
    let uids: Vec<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    let mut logs = args
        .logs
        .then(|| LogTail::new(&args.agent.pod_logs_dir, &pods));
    let grace = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.termination_grace_period_seconds)
        .max()
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(30);
    // The objects first, so the pods find them.
    running
        .sources
        .send(SourceEvent::Objects {
            source: SOURCE,
            objects,
        })
        .await
        .context("the pod manager stopped")?;
    running
        .sources
        .send(SourceEvent::Snapshot {
            source: SOURCE,
            pods,
        })
        .await
        .context("the pod manager stopped")?;

    let mut watch = Watch {
        statuses: running.statuses.clone(),
        uids,
        shown: HashMap::new(),
        last: BTreeMap::new(),
        out,
    };
    let outcome = loop {
        tokio::select! {
            () = interrupt.cancelled() => break Outcome::Interrupted,
            () = sleep_until(deadline) => break Outcome::TimedOut,
            changed = watch.statuses.changed() => {
                if changed.is_err() {
                    bail!("the pod manager stopped");
                }
            }
            () = tokio::time::sleep(LOG_POLL), if logs.is_some() => {}
        }
        if let Some(logs) = logs.as_mut() {
            logs.poll(out);
        }
        watch.observe();
        if let Some(success) = verdict(&watch.uids, &watch.last, args.until) {
            break Outcome::Done { success };
        }
    };
    if let Some(logs) = logs.as_mut() {
        logs.poll(out);
    }
    let final_pods = watch.last.clone();
    match outcome {
        Outcome::TimedOut => eprintln!("nodelet run: timed out after {:?}", args.timeout),
        Outcome::Interrupted | Outcome::Done { .. } => {}
    }

    let mut torn_down = true;
    if !args.keep {
        torn_down = teardown(
            &running,
            &mut watch,
            logs.as_mut(),
            Duration::from_secs(grace) + TEARDOWN_SLACK,
        )
        .await;
    }
    running.cancel.cancel();
    running.join().await;

    if args.output == RunOutput::Json {
        print_json(&watch.uids, &final_pods)?;
    }
    Ok(match outcome {
        Outcome::Done { success: true } if torn_down => ExitCode::SUCCESS,
        Outcome::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
        Outcome::Done { .. } | Outcome::TimedOut => ExitCode::FAILURE,
    })
}

/// Parses, defaults and validates FILE; prints every problem to stderr and returns
/// `None` when it is invalid or holds no pod. The ConfigMap and Secret documents
/// come with the pods.
fn load(file: &Path, node_name: &str) -> anyhow::Result<Option<(Vec<Pod>, Vec<ApiObject>)>> {
    let label = file.to_string_lossy();
    let bytes = std::fs::read(file).with_context(|| format!("{label}: cannot read"))?;
    let load = load_static_pods(&bytes, &label, node_name);
    let mut valid = true;
    for error in &load.errors {
        match error {
            ManifestError::Invalid {
                path,
                index,
                errors,
                ..
            } => {
                valid = false;
                for field_error in errors {
                    eprintln!("{path}: document {index}: {field_error}");
                }
            }
            ManifestError::Parse(_) | ManifestError::InvalidObject { .. } => {
                valid = false;
                eprintln!("{error}");
            }
            ManifestError::UnsupportedKind { .. } => eprintln!("{error}"),
        }
    }
    if valid && load.pods.is_empty() {
        eprintln!("{label}: no pods");
        valid = false;
    }
    Ok(valid.then_some((load.pods, load.objects)))
}

/// Where progress lines go.
#[derive(Debug, Clone, Copy)]
struct Printer {
    to_stderr: bool,
}

impl Printer {
    fn line(self, line: &str) {
        if self.to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// The run's pods as published by their workers.
struct Watch {
    statuses: tokio::sync::watch::Receiver<PodStatuses>,
    uids: Vec<String>,
    /// Phase and STATUS column last printed, by UID.
    shown: HashMap<String, (String, String)>,
    /// Last published pod, by UID (kept after the pod is removed).
    last: BTreeMap<String, Arc<Pod>>,
    out: Printer,
}

impl Watch {
    /// Takes the current pods and prints a line for each changed one; returns whether
    /// any of the run's pods is still published.
    fn observe(&mut self) -> bool {
        let map = self.statuses.borrow_and_update().clone();
        let mut present = false;
        for uid in &self.uids {
            let Some(pod) = map.get(uid) else { continue };
            present = true;
            let shown = (
                phase(pod).to_owned(),
                crate::pod::status::status_column(pod),
            );
            if self.shown.get(uid) != Some(&shown) {
                let time = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
                let name = pod.metadata.name.as_deref().unwrap_or("");
                self.out
                    .line(&format!("{time} {name} {} {}", shown.0, shown.1));
                self.shown.insert(uid.clone(), shown);
            }
            self.last.insert(uid.clone(), Arc::clone(pod));
        }
        present
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Whether `pod` is Ready: its Ready condition, else Running with every container ready.
fn is_ready(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    if let Some(ready) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
    {
        return ready.status == "True";
    }
    phase(pod) == "Running"
        && status
            .container_statuses
            .as_ref()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

/// The exit condition over the run's pods: `Some(success)` once it holds.
fn verdict(uids: &[String], pods: &BTreeMap<String, Arc<Pod>>, until: RunUntil) -> Option<bool> {
    let mut phases = Vec::with_capacity(uids.len());
    for uid in uids {
        phases.push((pods.get(uid)?, phase(pods.get(uid)?)));
    }
    match until {
        RunUntil::Complete => phases
            .iter()
            .all(|(_, p)| matches!(*p, "Succeeded" | "Failed"))
            .then(|| phases.iter().all(|(_, p)| *p == "Succeeded")),
        RunUntil::Ready => {
            if phases.iter().any(|(_, p)| *p == "Failed") {
                Some(false)
            } else {
                phases
                    .iter()
                    .all(|(pod, p)| *p == "Succeeded" || is_ready(pod))
                    .then_some(true)
            }
        }
    }
}

/// Removes the pods from the source and waits until their workers removed them
/// (containers, sandbox, network), printing status changes and logs meanwhile.
/// Returns whether that finished within `limit`.
async fn teardown(
    running: &agent::RunningAgent,
    watch: &mut Watch,
    mut logs: Option<&mut LogTail>,
    limit: Duration,
) -> bool {
    if running
        .sources
        .send(SourceEvent::Snapshot {
            source: SOURCE,
            pods: Vec::new(),
        })
        .await
        .is_err()
    {
        eprintln!("nodelet run: cannot tear down: the pod manager stopped");
        return false;
    }
    let deadline = Instant::now() + limit;
    loop {
        if let Some(logs) = logs.as_deref_mut() {
            logs.poll(watch.out);
        }
        if !watch.observe() {
            return true;
        }
        tokio::select! {
            changed = watch.statuses.changed() => {
                if changed.is_err() {
                    eprintln!("nodelet run: cannot tear down: the pod manager stopped");
                    return false;
                }
            }
            () = tokio::time::sleep(LOG_POLL), if logs.is_some() => {}
            () = tokio::time::sleep_until(deadline) => {
                eprintln!("nodelet run: tear-down did not finish within {limit:?}");
                return false;
            }
        }
    }
}

/// Prints the last status of each pod as JSON on stdout.
fn print_json(uids: &[String], pods: &BTreeMap<String, Arc<Pod>>) -> anyhow::Result<()> {
    let statuses: Vec<_> = uids
        .iter()
        .map(|uid| {
            pods.get(uid)
                .and_then(|p| p.status.clone())
                .unwrap_or_default()
        })
        .collect();
    let text = match statuses.as_slice() {
        [one] => serde_json::to_string_pretty(one),
        all => serde_json::to_string_pretty(all),
    }
    .context("rendering the pod status as JSON")?;
    println!("{text}");
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Follows the CRI log files of the run's pods
/// (`<pod-logs-dir>/<ns>_<name>_<uid>/<container>/<n>.log`).
struct LogTail {
    pod_dirs: Vec<PathBuf>,
    files: BTreeMap<PathBuf, TailedFile>,
}

#[derive(Default)]
struct TailedFile {
    /// Bytes consumed (whole lines only).
    offset: u64,
    /// Text of partial (`P`) lines waiting for their end.
    pending: String,
    /// The file being read, kept open: when the driver rotates it (`N.log` renamed,
    /// a new `N.log` made) the rest of the old file is still read through it.
    file: Option<std::fs::File>,
}

impl LogTail {
    fn new(pod_logs_dir: &Path, pods: &[Pod]) -> Self {
        let pod_dirs = pods
            .iter()
            .map(|p| crate::pod::podspec::log_dir(pod_logs_dir, &crate::pod::podspec::pod_ref(p)))
            .collect();
        LogTail {
            pod_dirs,
            files: BTreeMap::new(),
        }
    }

    /// Prints what was appended since the last poll. Files that cannot be read are
    /// skipped (they appear with the container, and go with the pod).
    fn poll(&mut self, out: Printer) {
        for pod_dir in &self.pod_dirs {
            let Ok(containers) = std::fs::read_dir(pod_dir) else {
                continue;
            };
            let mut containers: Vec<PathBuf> = containers.flatten().map(|e| e.path()).collect();
            containers.sort();
            for dir in containers {
                let Some(container) = dir.file_name().map(|n| n.to_string_lossy().into_owned())
                else {
                    continue;
                };
                for file in log_files(&dir) {
                    let state = self.files.entry(file.clone()).or_default();
                    for text in read_new_lines(&file, state) {
                        out.line(&format!("[{container}] {text}"));
                    }
                }
            }
        }
    }
}

/// A container directory's `<n>.log` files, by restart count.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let n = path
                .file_name()?
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((n, path))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// The complete log lines appended to `file` since `state`, as text, following the
/// file across rotation.
fn read_new_lines(file: &Path, state: &mut TailedFile) -> Vec<String> {
    let mut lines = read_open_file(file, state);
    // At the end of the file read so far: a new file under the name means the driver
    // rotated; its lines follow the old file's.
    let rotated =
        state
            .file
            .as_ref()
            .is_some_and(|f| match (f.metadata(), std::fs::metadata(file)) {
                (Ok(open), Ok(named)) => {
                    use std::os::unix::fs::MetadataExt as _;
                    open.ino() != named.ino()
                }
                _ => false,
            });
    if rotated {
        // Lines may have reached the old file after it was read and before the
        // rename: read it to its end once more, then on to the new file.
        lines.extend(read_open_file(file, state));
        state.file = None;
        state.offset = 0;
        lines.extend(read_open_file(file, state));
    }
    lines
}

fn read_open_file(file: &Path, state: &mut TailedFile) -> Vec<String> {
    if state.file.is_none() {
        let Ok(mut f) = std::fs::File::open(file) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(state.offset)).is_err() {
            return Vec::new();
        }
        state.file = Some(f);
    }
    let Some(f) = state.file.as_mut() else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let consumed = bytes
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |end| end + 1);
    // An unfinished line is read again once its newline is written.
    let unread = i64::try_from(bytes.len() - consumed).unwrap_or(0);
    if unread > 0 && f.seek(SeekFrom::Current(-unread)).is_err() {
        state.file = None;
    }
    state.offset += u64::try_from(consumed).unwrap_or(0);
    let mut lines = Vec::new();
    if consumed == 0 {
        return lines;
    }
    for raw in String::from_utf8_lossy(&bytes[..consumed - 1]).split('\n') {
        let Some(line) = nodelet_cri::logs::parse_line(raw) else {
            continue;
        };
        state.pending.push_str(&line.text);
        if line.full {
            lines.push(std::mem::take(&mut state.pending));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn pod(phase: &str, ready: Option<bool>) -> Arc<Pod> {
        Arc::new(Pod {
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                conditions: ready.map(|r| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: if r { "True" } else { "False" }.into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn map(pods: &[(&str, Arc<Pod>)]) -> BTreeMap<String, Arc<Pod>> {
        pods.iter()
            .map(|(k, v)| ((*k).to_owned(), Arc::clone(v)))
            .collect()
    }

    #[test]
    fn complete_waits_for_every_pod_and_fails_if_any_failed() {
        let uids = vec!["a".to_owned(), "b".to_owned()];
        let done = pod("Succeeded", None);
        let failed = pod("Failed", None);
        let running = pod("Running", Some(true));
        let v = |m| verdict(&uids, &m, RunUntil::Complete);
        assert_eq!(v(map(&[("a", done.clone())])), None);
        assert_eq!(v(map(&[("a", done.clone()), ("b", running)])), None);
        assert_eq!(
            v(map(&[("a", done.clone()), ("b", done.clone())])),
            Some(true)
        );
        assert_eq!(v(map(&[("a", done), ("b", failed)])), Some(false));
    }

    #[test]
    fn ready_wants_every_pod_ready_and_stops_on_failure() {
        let uids = vec!["a".to_owned()];
        let v = |p| verdict(&uids, &map(&[("a", p)]), RunUntil::Ready);
        assert_eq!(v(pod("Pending", None)), None);
        assert_eq!(v(pod("Running", Some(false))), None);
        assert_eq!(v(pod("Running", Some(true))), Some(true));
        assert_eq!(v(pod("Succeeded", Some(false))), Some(true));
        assert_eq!(v(pod("Failed", Some(false))), Some(false));
    }

    #[test]
    fn tail_joins_partial_lines_and_keeps_incomplete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("0.log");
        let t = "2024-01-01T00:00:00.000000000Z";
        std::fs::write(
            &file,
            format!("{t} stdout F hello\n{t} stdout P par\n{t} stderr F tial\n{t} stdout F cut"),
        )
        .unwrap();
        let mut state = TailedFile::default();
        assert_eq!(read_new_lines(&file, &mut state), ["hello", "partial"]);
        assert_eq!(read_new_lines(&file, &mut state), Vec::<String>::new());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        std::io::Write::write_all(&mut f, b"\n").unwrap();
        assert_eq!(read_new_lines(&file, &mut state), ["cut"]);
        // Rotation: the old file gets a last line, is renamed, a new one follows.
        std::io::Write::write_all(&mut f, format!("{t} stdout F last\n").as_bytes()).unwrap();
        std::fs::rename(&file, dir.path().join("0.log.20240101-000000")).unwrap();
        std::fs::write(&file, format!("{t} stdout F new\n")).unwrap();
        assert_eq!(read_new_lines(&file, &mut state), ["last", "new"]);
        assert_eq!(read_new_lines(&file, &mut state), Vec::<String>::new());
    }
}
