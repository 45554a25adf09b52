//! Probe workers of a pod's running containers and the verdicts they send back:
//! readiness and startup results feed the status; a failed liveness or startup probe
//! marks the instance for killing, which the next sync does.

use nodelet_cri::runtime::{ContainerInfo, ContainerState, Runtime};
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::PodWorker;
use crate::probe::worker::{ProbeKind, ProbeUpdate};
use crate::probe::{self, ProbeResult, ProbeTarget};

impl<R: Runtime> PodWorker<R> {
    /// Records a probe result; a liveness or startup failure marks the instance for
    /// killing, which the next sync does.
    pub(super) fn on_probe(&mut self, u: ProbeUpdate) {
        debug!(
            container = %u.container,
            probe = u.kind.as_str(),
            result = u.result.as_str(),
            message = %u.message,
            "probe result changed"
        );
        let ok = u.result == ProbeResult::Success;
        match u.kind {
            ProbeKind::Readiness => {
                self.ready.insert(u.container_id, ok);
            }
            ProbeKind::Startup => {
                if u.result == ProbeResult::Failure {
                    self.unhealthy.insert(u.container_id.clone());
                }
                self.started.insert(u.container_id, ok);
            }
            ProbeKind::Liveness if u.result == ProbeResult::Failure => {
                debug!(container = %u.container, message = %u.message, "liveness probe failed");
                self.unhealthy.insert(u.container_id);
            }
            ProbeKind::Liveness => {}
        }
    }

    /// Starts probe workers for running instances that have none and stops those of
    /// instances that no longer run.
    pub(super) fn sync_probes(&mut self, containers: &[ContainerInfo], active: bool) {
        let running: Vec<&ContainerInfo> = containers
            .iter()
            .filter(|c| active && c.state == ContainerState::Running)
            .collect();
        self.stop_probes(|id| !running.iter().any(|c| c.id == id));
        for info in running {
            if self.probes.contains_key(&info.id) {
                continue;
            }
            let Some(spec) = self.container_spec(&info.name) else {
                continue;
            };
            if spec.liveness_probe.is_none()
                && spec.readiness_probe.is_none()
                && spec.startup_probe.is_none()
            {
                continue;
            }
            let cancel = CancellationToken::new();
            let target = ProbeTarget {
                pod_ip: self.pod_ip(),
                container_id: info.id.clone(),
                container: spec.clone(),
            };
            let started_at =
                probe::worker::instant_of(info.started_at.unwrap_or_else(SystemTime::now));
            let probe_tx = self.probe_sender();
            probe::worker::spawn_container_probes(
                &spec,
                &target,
                &self.env.runtime,
                started_at,
                self.env.agent_start,
                &probe_tx,
                &cancel,
                &self.events_of(&spec.name),
            );
            self.probes.insert(info.id.clone(), cancel);
        }
    }

    /// Stops the probe workers of the instances `which` selects, forgetting their
    /// verdicts.
    pub(super) fn stop_probes(&mut self, which: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.probes.keys().filter(|id| which(id)).cloned().collect();
        for id in gone {
            if let Some(cancel) = self.probes.remove(&id) {
                cancel.cancel();
            }
            self.ready.remove(&id);
            self.started.remove(&id);
            self.unhealthy.remove(&id);
        }
    }
}
