//! The pod's status from what the runtime shows: each container's view (current and
//! previous instance, how exited ones ended, probe verdicts, why it waits), turned
//! into a `PodStatus` by `pod::status` and written to the status store when it
//! changed.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Container;
use nodelet_cri::runtime::{ContainerInfo, ContainerState, Runtime, SandboxInfo, keys};
use std::time::SystemTime;
use tracing::debug;

use super::{PodWorker, latest};
use crate::node::eviction::messages;
use crate::pod::status::{self, ContainerView, Ending, PodFacts, Waiting};

impl<R: Runtime> PodWorker<R> {
    /// How an exited instance ended: its termination message (the file, or with
    /// `FallbackToLogsOnError` the log's tail after a failure) and OOMKilled. Read
    /// once per instance.
    pub(super) fn ending(&mut self, c: &Container, info: &ContainerInfo) -> Option<Ending> {
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
            // From containerd's OOM event, or from the cgroup's count that the
            // runtime read at the exit (the event may come later).
            reason: (self.oom_killed.contains(&info.id)
                || info.labels.get(keys::REASON).map(String::as_str) == Some("OOMKilled"))
            .then(|| "OOMKilled".to_owned()),
            message: Some(message).filter(|m| !m.is_empty()),
        };
        self.endings.insert(info.id.clone(), ending.clone());
        Some(ending)
    }

    pub(super) fn views(
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

    pub(super) fn publish(
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
        self.env.statuses.set(&self.pod, status);
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
