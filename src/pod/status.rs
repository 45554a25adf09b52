//! Pod status as upstream computes it: container states from what the runtime reports
//! plus the worker's own reasons (`ContainerCreating`, `ErrImagePull`,
//! `CrashLoopBackOff`), the pod phase (`getPhase`), conditions, and the STATUS column
//! kubectl prints. Pure functions, tested with tables of upstream cases.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nodelet_cri::runtime::{ContainerInfo, ContainerState as RtState};

/// A `Time` from a `SystemTime`.
pub fn k8s_time(t: SystemTime) -> Option<Time> {
    jiff::Timestamp::try_from(t).ok().map(Time)
}

/// A reason the worker holds a container back, shown as its `waiting` state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `ContainerCreating`, `ErrImagePull`, `CrashLoopBackOff`, …
    pub reason: String,
    /// The detail.
    pub message: Option<String>,
}

/// What the worker knows of one container of the spec.
#[derive(Debug, Clone, Default)]
pub struct ContainerView {
    /// The name in the spec.
    pub name: String,
    /// The image in the spec.
    pub image: String,
    /// The newest instance, if any.
    pub current: Option<ContainerInfo>,
    /// The instance before it, for `lastState`.
    pub previous: Option<ContainerInfo>,
    /// Set when the worker holds the container back.
    pub waiting: Option<Waiting>,
    /// The readiness probe's verdict; `None` (no probe) means ready while running.
    pub ready: Option<bool>,
    /// The startup probe's verdict; `None` (no probe) means started while running.
    pub started: Option<bool>,
    /// How instances ended, by container ID: reason override and termination message.
    pub endings: std::collections::HashMap<String, Ending>,
}

/// How a container instance ended, beyond its exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ending {
    /// A reason replacing `Completed`/`Error` (`OOMKilled`, `StartError`, …).
    pub reason: Option<String>,
    /// `state.terminated.message` (the termination message).
    pub message: Option<String>,
}

fn terminated(info: &ContainerInfo, ending: Option<&Ending>) -> ContainerStateTerminated {
    let code = info.exit_code.unwrap_or(0);
    // An instance whose start failed ends as containerd's CRI plugin reports it:
    // reason `StartError`, the runtime's message.
    let start_error = info.start_error();
    let reason = ending
        .and_then(|e| e.reason.clone())
        .or_else(|| start_error.map(|_| nodelet_cri::runtime::START_ERROR_REASON.to_owned()))
        .unwrap_or_else(|| if code == 0 { "Completed" } else { "Error" }.to_owned());
    ContainerStateTerminated {
        exit_code: code,
        reason: Some(reason),
        message: ending
            .and_then(|e| e.message.clone())
            .filter(|m| !m.is_empty())
            .or_else(|| start_error.map(str::to_owned)),
        started_at: info.started_at.and_then(k8s_time),
        finished_at: info.finished_at.and_then(k8s_time),
        container_id: Some(format!("containerd://{}", info.id)),
        ..Default::default()
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..Default::default()
    }
}

/// The status of one container.
pub fn container_status(v: &ContainerView) -> ContainerStatus {
    let current = v.current.as_ref();
    let exited = current.is_some_and(|c| c.state == RtState::Exited);
    let term = |c: &ContainerInfo| terminated(c, v.endings.get(&c.id));
    let (state, last) = match (&v.waiting, current) {
        (Some(w), Some(c)) if exited => (waiting(&w.reason, w.message.clone()), Some(term(c))),
        (Some(w), _) => (
            waiting(&w.reason, w.message.clone()),
            v.previous.as_ref().map(term),
        ),
        (None, Some(c)) => {
            let state = match c.state {
                RtState::Running => ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: c.started_at.and_then(k8s_time),
                    }),
                    ..Default::default()
                },
                RtState::Exited => ContainerState {
                    terminated: Some(term(c)),
                    ..Default::default()
                },
                RtState::Created | RtState::Unknown => waiting("ContainerCreating", None),
            };
            (state, v.previous.as_ref().map(term))
        }
        (None, None) => (waiting("ContainerCreating", None), None),
    };
    let running = state.running.is_some();
    let started = running && v.started.unwrap_or(true);
    ContainerStatus {
        name: v.name.clone(),
        image: current.map_or_else(|| v.image.clone(), |c| c.image.clone()),
        image_id: current.map(|c| c.image_id.clone()).unwrap_or_default(),
        container_id: current.map(|c| format!("containerd://{}", c.id)),
        restart_count: current.map_or(0, |c| i32::try_from(c.attempt).unwrap_or(i32::MAX)),
        ready: started && v.ready.unwrap_or(true),
        started: Some(started),
        state: Some(state),
        last_state: Some(
            last.map_or_else(ContainerState::default, |t| ContainerState {
                terminated: Some(t),
                ..Default::default()
            }),
        ),
        ..Default::default()
    }
}

/// Whether an init container is a sidecar (`restartPolicy: Always`).
pub fn is_sidecar(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Counts regular init containers still to finish and those that failed, as
/// upstream's `getPhase` does.
fn init_progress(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    statuses: &[ContainerStatus],
) -> (usize, usize) {
    let (mut pending, mut failed) = (0, 0);
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| !is_sidecar(c))
    {
        let Some(s) = statuses.iter().find(|s| s.name == c.name) else {
            pending += 1;
            continue;
        };
        let state = s.state.clone().unwrap_or_default();
        let last_failed = s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some_and(|t| t.exit_code != 0);
        match (&state.running, &state.terminated, &state.waiting) {
            (Some(_), _, _) => pending += 1,
            (_, Some(t), _) => failed += usize::from(t.exit_code != 0),
            (_, _, Some(_)) if last_failed => failed += 1,
            _ => pending += 1,
        }
    }
    (pending, failed)
}

/// The pod phase from its init and app container statuses, as upstream's `getPhase`.
pub fn pod_phase(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    init: &[ContainerStatus],
    statuses: &[ContainerStatus],
) -> &'static str {
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let (pending_init, failed_init) = init_progress(spec, init);
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 {
        return "Pending";
    }
    phase(policy, statuses)
}

/// The pod phase from its app container statuses, as upstream's `getPhase`.
pub fn phase(restart_policy: &str, statuses: &[ContainerStatus]) -> &'static str {
    let (mut waiting, mut running, mut stopped, mut succeeded, mut unknown) = (0, 0, 0, 0, 0);
    for s in statuses {
        let state = s.state.clone().unwrap_or_default();
        if state.running.is_some() {
            running += 1;
        } else if let Some(t) = &state.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if state.waiting.is_some() {
            if s.last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .is_some()
            {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 && unknown == 0 {
        return "Running";
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        if restart_policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if restart_policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

/// Inputs of a pod's status besides its containers.
#[derive(Debug, Clone)]
pub struct PodFacts {
    /// The sandbox runs and its network is set up.
    pub sandbox_ready: bool,
    /// Pod IPs.
    pub pod_ips: Vec<String>,
    /// Node IP.
    pub host_ip: String,
    /// When the agent accepted the pod.
    pub start_time: SystemTime,
    /// A pod-level failure reason and message (`Failed`).
    pub failure: Option<(String, String)>,
    /// False once an app container has run: init containers then count as done even
    /// if their records are gone (upstream's rule for adopted pods).
    pub init_required: bool,
}

fn condition(
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    previous: &[PodCondition],
    now: SystemTime,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // A condition's transition time moves only when its status changes.
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .or_else(|| k8s_time(now));
    PodCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
        message,
        last_transition_time: since,
        ..Default::default()
    }
}

/// The pod's status.
pub fn pod_status(
    pod: &Pod,
    init_views: &[ContainerView],
    views: &[ContainerView],
    facts: &PodFacts,
    previous: Option<&PodStatus>,
    now: SystemTime,
) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let init_statuses: Vec<ContainerStatus> = init_views.iter().map(container_status).collect();
    let statuses: Vec<ContainerStatus> = views.iter().map(container_status).collect();
    let mut phase = pod_phase(&spec, &init_statuses, &statuses).to_owned();
    let (mut reason, mut message) = (None, None);
    if let Some((r, m)) = &facts.failure {
        phase = "Failed".to_owned();
        reason = Some(r.clone());
        message = Some(m.clone());
    }
    let prev_conditions = previous
        .and_then(|p| p.conditions.clone())
        .unwrap_or_default();
    // Sidecars count toward readiness like app containers, as upstream.
    let sidecars = init_statuses.iter().filter(|s| {
        spec.init_containers
            .iter()
            .flatten()
            .any(|c| c.name == s.name && is_sidecar(c))
    });
    let not_ready: Vec<&str> = sidecars
        .chain(&statuses)
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let terminal = phase == "Succeeded" || phase == "Failed";
    let uninitialized: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| !is_sidecar(c))
        .filter(|c| {
            !init_statuses.iter().any(|s| {
                s.name == c.name
                    && s.state
                        .as_ref()
                        .and_then(|st| st.terminated.as_ref())
                        .is_some_and(|t| t.exit_code == 0)
            })
        })
        .map(|c| c.name.as_str())
        .collect();
    let initialized = uninitialized.is_empty() || !facts.init_required;
    // Readiness gates: nothing sets their conditions in standalone mode, so each one
    // not already True holds the pod's Ready, with upstream's message.
    let missing_gate = spec
        .readiness_gates
        .iter()
        .flatten()
        .find(|g| {
            !previous
                .and_then(|p| p.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == g.condition_type && c.status == "True")
                })
        })
        .map(|g| g.condition_type.clone());
    let (ready_reason, ready_message) = if terminal && phase == "Succeeded" {
        (Some("PodCompleted"), None)
    } else if !not_ready.is_empty() {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                not_ready.join(" ")
            )),
        )
    } else {
        (None, None)
    };
    let containers_ready = not_ready.is_empty() && !terminal;
    let all_ready = containers_ready && missing_gate.is_none();
    let (pod_ready_reason, pod_ready_message) = match (&ready_reason, &missing_gate) {
        (None, Some(g)) if !terminal => (
            Some("ReadinessGatesNotReady"),
            Some(format!(
                "corresponding condition of pod readiness gate \"{g}\" does not exist."
            )),
        ),
        _ => (ready_reason, ready_message.clone()),
    };
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            facts.sandbox_ready,
            None,
            None,
            &prev_conditions,
            now,
        ),
        condition(
            "Initialized",
            initialized,
            if initialized {
                (phase == "Succeeded" && spec.init_containers.is_none()).then_some("PodCompleted")
            } else {
                Some("ContainersNotInitialized")
            },
            (!initialized).then(|| {
                format!(
                    "containers with incomplete status: [{}]",
                    uninitialized.join(" ")
                )
            }),
            &prev_conditions,
            now,
        ),
        condition(
            "Ready",
            all_ready,
            pod_ready_reason,
            pod_ready_message,
            &prev_conditions,
            now,
        ),
        condition(
            "ContainersReady",
            containers_ready,
            ready_reason,
            ready_message,
            &prev_conditions,
            now,
        ),
        condition("PodScheduled", true, None, None, &prev_conditions, now),
    ];
    PodStatus {
        phase: Some(phase),
        reason,
        message,
        conditions: Some(conditions),
        host_ip: Some(facts.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: facts.host_ip.clone(),
        }]),
        pod_ip: facts.pod_ips.first().cloned(),
        pod_ips: (!facts.pod_ips.is_empty()).then(|| {
            facts
                .pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.clone() })
                .collect()
        }),
        start_time: k8s_time(facts.start_time),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        qos_class: Some(nodelet_cgroups::qos_class(&spec).as_str().to_owned()),
        ..Default::default()
    }
}

/// The STATUS column of `kubectl get pods` (kubectl's `printPod`).
pub fn status_column(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let mut reason = status
        .reason
        .clone()
        .filter(|r| !r.is_empty())
        .or(status.phase.clone())
        .unwrap_or_else(|| "Unknown".to_owned());
    let mut has_running = false;
    let init_specs = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .unwrap_or_default();
    let mut initializing = false;
    for (i, c) in status.init_container_statuses.iter().flatten().enumerate() {
        let state = c.state.clone().unwrap_or_default();
        let sidecar = init_specs.iter().any(|s| s.name == c.name && is_sidecar(s));
        if sidecar && c.started == Some(true) {
            continue;
        }
        match (&state.terminated, &state.waiting) {
            (Some(t), _) if t.exit_code == 0 => continue,
            (Some(t), _) => {
                reason = match &t.reason {
                    Some(r) if !r.is_empty() => format!("Init:{r}"),
                    _ if t.signal.unwrap_or(0) != 0 => {
                        format!("Init:Signal:{}", t.signal.unwrap_or(0))
                    }
                    _ => format!("Init:ExitCode:{}", t.exit_code),
                };
            }
            (_, Some(w))
                if w.reason
                    .as_deref()
                    .is_some_and(|r| !r.is_empty() && r != "PodInitializing") =>
            {
                reason = format!("Init:{}", w.reason.clone().unwrap_or_default());
            }
            _ => reason = format!("Init:{i}/{}", init_specs.len()),
        }
        initializing = true;
        break;
    }
    for c in status
        .container_statuses
        .iter()
        .flatten()
        .rev()
        .filter(|_| !initializing)
    {
        let state = c.state.clone().unwrap_or_default();
        if let Some(w) = state
            .waiting
            .as_ref()
            .and_then(|w| w.reason.clone())
            .filter(|r| !r.is_empty())
        {
            reason = w;
        } else if let Some(t) = &state.terminated {
            reason = match &t.reason {
                Some(r) if !r.is_empty() => r.clone(),
                _ if t.signal.unwrap_or(0) != 0 => format!("Signal:{}", t.signal.unwrap_or(0)),
                _ => format!("ExitCode:{}", t.exit_code),
            };
        } else if c.ready && state.running.is_some() {
            has_running = true;
        }
    }
    if reason == "Completed" && has_running {
        reason = "Running".to_owned();
    }
    if pod.metadata.deletion_timestamp.is_some() {
        reason = "Terminating".to_owned();
    }
    reason
}

/// The READY column: ready containers / containers.
pub fn ready_column(pod: &Pod) -> String {
    let total = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    let ready = pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter(|c| c.ready)
        .count();
    format!("{ready}/{total}")
}

/// The RESTARTS column: the sum, with how long ago the last one was.
pub fn restarts_column(pod: &Pod, now: SystemTime) -> String {
    let mut total = 0;
    let mut last: Option<jiff::Timestamp> = None;
    for c in pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
    {
        total += c.restart_count;
        if let Some(t) = c
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .and_then(|t| t.finished_at.as_ref())
        {
            last = Some(last.map_or(t.0, |l| l.max(t.0)));
        }
    }
    match last {
        Some(t) if total > 0 => {
            let ago = now.duration_since(SystemTime::from(t)).unwrap_or_default();
            format!("{total} ({} ago)", human_duration(ago))
        }
        _ => total.to_string(),
    }
}

/// kubectl's `HumanDuration`: `45s`, `3m20s`, `12m`, `5h`, `2d3h`, …
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..600 => {
            let (m, sec) = (s / 60, s % 60);
            if sec == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{sec}s")
            }
        }
        600..10800 => format!("{}m", s / 60),
        10800..28800 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        28800..172800 => format!("{}h", s / 3600),
        _ => {
            let (days, h) = (s / 86400, (s % 86400) / 3600);
            if days < 8 && h != 0 {
                format!("{days}d{h}h")
            } else {
                format!("{days}d")
            }
        }
    }
}

/// Upstream's `sortPodIPs`: of the sandbox's IPs (in the runtime's order), the first of
/// the node IP's family, then the first of the other family; IPv4 first when the node IP
/// does not parse. What the pod's `podIPs` and its downward API show.
pub fn sort_pod_ips<S: AsRef<str>>(ips: &[S], node_ip: &str) -> Vec<String> {
    let v6 = |ip: &str| ip.parse::<std::net::IpAddr>().ok().map(|ip| ip.is_ipv6());
    let primary_v6 = v6(node_ip).unwrap_or(false);
    let first_of = |want_v6: bool| {
        ips.iter()
            .map(AsRef::as_ref)
            .find(|ip| v6(ip) == Some(want_v6))
            .map(str::to_owned)
    };
    first_of(primary_v6)
        .into_iter()
        .chain(first_of(!primary_v6))
        .collect()
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
