//! Runtime objects read back from containerd: the labels nodelet puts on every
//! container record (pod identity, attempt, log path, start time, a failed start's
//! reason) and what they and the task's state say about a sandbox or a container.
//! containerd is the only state, so a restarted agent reads the same answers.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use containerd_client::services::v1::Container;
use containerd_client::types::v1::{Process, Status as TaskStatus};

use super::events::to_system_time;
use super::{ContainerInfo, ContainerState, PodRef, START_ERROR_EXIT_CODE, SandboxInfo, keys};
use crate::containerd::labels;

pub(super) fn label_bool(labels: &HashMap<String, String>, key: &str) -> bool {
    labels.get(key).is_some_and(|v| v == "true")
}

pub(super) fn label_u32(labels: &HashMap<String, String>, key: &str) -> u32 {
    labels.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub(super) fn label(labels: &HashMap<String, String>, key: &str) -> String {
    labels.get(key).cloned().unwrap_or_default()
}

pub(super) fn pod_of(labels: &HashMap<String, String>) -> PodRef {
    PodRef {
        uid: label(labels, keys::POD_UID),
        name: label(labels, keys::POD_NAME),
        namespace: label(labels, keys::POD_NAMESPACE),
    }
}

pub(super) fn pod_labels(pod: &PodRef, kind: &str) -> HashMap<String, String> {
    HashMap::from([
        (keys::POD_UID.to_owned(), pod.uid.clone()),
        (keys::POD_NAME.to_owned(), pod.name.clone()),
        (keys::POD_NAMESPACE.to_owned(), pod.namespace.clone()),
        (keys::KIND.to_owned(), kind.to_owned()),
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
    ])
}

/// containerd refuses a label whose key and value pass 4096 bytes; a start error's
/// message is cut to fit.
pub(super) const MAX_LABEL_VALUE: usize = 4000;

/// The labels that record a failed start: the message and when it failed.
pub(super) fn start_failure_labels(message: &str, at: jiff::Timestamp) -> Vec<(String, String)> {
    let mut message = message.to_owned();
    if message.len() > MAX_LABEL_VALUE {
        let mut cut = MAX_LABEL_VALUE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    vec![
        (keys::START_ERROR.to_owned(), message),
        (keys::FINISHED_AT.to_owned(), at.to_string()),
    ]
}

/// An exited task's exit code as containers report it.
fn exit_code_of(t: &Process) -> i32 {
    i32::try_from(t.exit_status).unwrap_or(i32::MAX)
}

/// The labels that record an exited task's end (its exit code and when), so the task
/// can be deleted and its shim exit while the container reads back the same; `None`
/// when the task has not exited.
pub(super) fn exit_labels(task: &Process) -> Option<Vec<(String, String)>> {
    if task.status != TaskStatus::Stopped as i32 {
        return None;
    }
    let mut labels = vec![(keys::EXIT_CODE.to_owned(), exit_code_of(task).to_string())];
    if let Some(at) =
        to_system_time(task.exited_at.as_ref()).and_then(|t| jiff::Timestamp::try_from(t).ok())
    {
        labels.push((keys::FINISHED_AT.to_owned(), at.to_string()));
    }
    Some(labels)
}

/// Whether a record says how its instance ended (a failed start or a recorded exit),
/// so it reads the same with no task.
pub(super) fn has_recorded_end(c: &Container) -> bool {
    c.labels.contains_key(keys::EXIT_CODE) || c.labels.contains_key(keys::START_ERROR)
}

pub(super) fn parse_time(s: &str) -> Option<SystemTime> {
    let ts: jiff::Timestamp = s.parse().ok()?;
    Some(SystemTime::from(ts))
}

/// A sandbox read back from its record and its task; `files_dir` is where its pod
/// files live.
pub(super) fn sandbox_info(
    c: &Container,
    task: Option<&Process>,
    files_dir: PathBuf,
) -> SandboxInfo {
    let l = &c.labels;
    let ips: Vec<IpAddr> = l
        .get(keys::IPS)
        .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_default();
    let running = task.is_some_and(|t| t.status == TaskStatus::Running as i32);
    SandboxInfo {
        id: c.id.clone(),
        pod: pod_of(l),
        attempt: label_u32(l, keys::ATTEMPT),
        ready: running,
        pid: task.map_or(0, |t| t.pid),
        ips,
        netns: l.get(keys::NETNS).map(PathBuf::from),
        host_network: label_bool(l, keys::HOST_NETWORK),
        share_pid: label_bool(l, keys::SHARE_PID),
        cgroup_parent: l.get(keys::CGROUP_PARENT).cloned(),
        files_dir,
        log_directory: l.get(keys::LOG_PATH).map(PathBuf::from).unwrap_or_default(),
        created_at: to_system_time(c.created_at.as_ref()).unwrap_or(SystemTime::UNIX_EPOCH),
        runtime_handler: label(l, keys::RUNTIME_HANDLER),
    }
}

/// A container read back from its record and its task.
pub(super) fn container_info(c: &Container, task: Option<&Process>) -> ContainerInfo {
    let l = &c.labels;
    let state = match task.and_then(|t| TaskStatus::try_from(t.status).ok()) {
        None | Some(TaskStatus::Created) => ContainerState::Created,
        Some(TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing) => {
            ContainerState::Running
        }
        Some(TaskStatus::Stopped) => ContainerState::Exited,
        Some(TaskStatus::Unknown) => ContainerState::Unknown,
    };
    let (state, exit_code, finished_at) = match task {
        Some(t) => {
            let exited = state == ContainerState::Exited;
            (
                state,
                exited.then(|| exit_code_of(t)),
                exited
                    .then(|| to_system_time(t.exited_at.as_ref()))
                    .flatten(),
            )
        }
        // A start that failed left no task: the instance is dead, as the CRI plugin
        // reports it (exit code 128, `StartError`).
        None if l.contains_key(keys::START_ERROR) && l.contains_key(keys::FINISHED_AT) => (
            ContainerState::Exited,
            Some(START_ERROR_EXIT_CODE),
            l.get(keys::FINISHED_AT).and_then(|s| parse_time(s)),
        ),
        // An exited task deleted once its exit was recorded (see `exit_labels`).
        None => match l.get(keys::EXIT_CODE).and_then(|v| v.parse::<i32>().ok()) {
            Some(code) => (
                ContainerState::Exited,
                Some(code),
                l.get(keys::FINISHED_AT).and_then(|s| parse_time(s)),
            ),
            None => (state, None, None),
        },
    };
    ContainerInfo {
        id: c.id.clone(),
        pod_uid: label(l, keys::POD_UID),
        name: label(l, keys::CONTAINER_NAME),
        attempt: label_u32(l, keys::ATTEMPT),
        sandbox_id: label(l, keys::SANDBOX_ID),
        image: c.image.clone(),
        image_id: label(l, keys::IMAGE_ID),
        state,
        pid: task.map_or(0, |t| t.pid),
        created_at: to_system_time(c.created_at.as_ref()).unwrap_or(SystemTime::UNIX_EPOCH),
        started_at: l.get(keys::STARTED_AT).and_then(|s| parse_time(s)),
        finished_at,
        exit_code,
        log_path: l.get(keys::LOG_PATH).map(PathBuf::from).unwrap_or_default(),
        labels: l
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(labels: &[(&str, &str)]) -> Container {
        Container {
            id: "c1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_start_reads_back_as_a_dead_instance() {
        let at: jiff::Timestamp = "2026-01-02T03:04:05Z".parse().expect("time");
        let mut l = vec![(keys::CONTAINER_NAME, "app"), (keys::ATTEMPT, "2")];
        let failure = start_failure_labels("exec: \"/nonexistent\": not found", at);
        l.extend(failure.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let info = container_info(&record(&l), None);
        assert_eq!(info.state, ContainerState::Exited);
        assert_eq!(info.exit_code, Some(128));
        assert_eq!(info.attempt, 2);
        assert_eq!(info.finished_at, Some(SystemTime::from(at)));
        assert_eq!(info.started_at, None);
        assert_eq!(
            info.start_error(),
            Some("exec: \"/nonexistent\": not found")
        );

        let plain = container_info(&record(&[(keys::CONTAINER_NAME, "app")]), None);
        assert_eq!(plain.state, ContainerState::Created, "no task, no failure");
        assert_eq!(plain.exit_code, None);
        assert_eq!(plain.start_error(), None);
    }

    #[test]
    fn a_recorded_exit_reads_back_as_its_task_did() {
        let task = Process {
            status: TaskStatus::Stopped as i32,
            exit_status: 137,
            exited_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 123_456_789,
            }),
            pid: 42,
            ..Default::default()
        };
        let mut c = record(&[(keys::CONTAINER_NAME, "app"), (keys::ATTEMPT, "3")]);
        let with_task = container_info(&c, Some(&task));
        assert!(!has_recorded_end(&c));
        c.labels.extend(exit_labels(&task).expect("exited"));
        assert!(has_recorded_end(&c));
        let recorded = container_info(&c, None);
        assert_eq!(recorded.state, ContainerState::Exited);
        assert_eq!(recorded.exit_code, Some(137));
        assert_eq!(recorded.finished_at, with_task.finished_at);
        assert_eq!(recorded.attempt, 3);
        assert_eq!(recorded.start_error(), None);

        let running = Process {
            status: TaskStatus::Running as i32,
            ..Default::default()
        };
        assert!(exit_labels(&running).is_none(), "only an exited task");
    }

    #[test]
    fn long_start_errors_are_cut_to_a_label_containerd_takes() {
        let message = "é".repeat(MAX_LABEL_VALUE);
        let labels = start_failure_labels(&message, jiff::Timestamp::UNIX_EPOCH);
        let (key, value) = &labels[0];
        assert_eq!(key, keys::START_ERROR);
        assert!(value.len() <= MAX_LABEL_VALUE && value.len() >= MAX_LABEL_VALUE - 1);
        assert!(message.starts_with(value.as_str()));
    }
}
