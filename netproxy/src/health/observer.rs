//! The sync loop's observer that feeds health, metrics and the health-check node ports:
//! every change queues an update (and counts in the change metrics, with the slice's
//! trigger time for the network-programming latency) and sets the pending-change gauges
//! once the proxier recorded it; every successful sync marks the proxier updated, records
//! its duration, the conntrack reconciler's and the services left without local
//! endpoints, and refreshes the health-check servers; every sync resets the pending gauges.

use std::time::{Duration, SystemTime};

use super::ProxyHealth;
use super::service::ServiceHealthServer;
use crate::model::IpFamily;
use crate::nft::exec::Nft;
use crate::runner::{Event, Observer};
use crate::{Proxier, SyncError, SyncReport};

/// The annotation with the time of the change that made the EndpointSlice's controller
/// write the slice.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Health, metrics and health-check node ports of one proxier.
pub struct HealthObserver {
    health: ProxyHealth,
    family: IpFamily,
    services: Option<ServiceHealthServer>,
    triggers: Vec<SystemTime>,
}

impl HealthObserver {
    /// An observer of `family`'s proxier; with `services`, health-check node ports are
    /// served (only one proxier of a node should serve them).
    pub fn new(
        health: ProxyHealth,
        family: IpFamily,
        services: Option<ServiceHealthServer>,
    ) -> Self {
        Self {
            health,
            family,
            services,
            triggers: Vec::new(),
        }
    }
}

fn trigger_time(slice: &k8s_openapi::api::discovery::v1::EndpointSlice) -> Option<SystemTime> {
    let v = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    let ts: jiff::Timestamp = v.parse().ok()?;
    Some(SystemTime::from(ts))
}

impl<N: Nft> Observer<N> for HealthObserver {
    fn event(&mut self, event: &Event) {
        let endpoints = match event {
            Event::ServiceUpdated(_) | Event::ServiceDeleted(_) => false,
            Event::SliceUpdated(s) => {
                if let Some(t) = trigger_time(s) {
                    self.triggers.push(t);
                }
                true
            }
            Event::SliceDeleted(_) => true,
            Event::InitialListDone => return,
        };
        self.health.queued(self.family);
        self.health.metrics.change(endpoints);
    }

    fn applied(&mut self, proxier: &Proxier<N>) {
        self.health
            .metrics
            .pending(self.family, proxier.pending_changes());
    }

    fn synced(
        &mut self,
        proxier: &Proxier<N>,
        result: &Result<SyncReport, SyncError>,
        elapsed: Duration,
    ) {
        let metrics = &self.health.metrics;
        metrics.pending(self.family, proxier.pending_changes());
        match result {
            Ok(r) => {
                self.health.updated(self.family);
                metrics.synced(self.family, r.full, elapsed.as_secs_f64());
                if let Some(d) = r.conntrack_reconcile {
                    metrics.conntrack_reconciled(self.family, d.as_secs_f64(), r.conntrack_deleted);
                }
                metrics.no_local_endpoints(self.family, proxier.no_local_endpoints());
                for t in self.triggers.drain(..) {
                    metrics.programmed(self.family, t);
                }
                if let Some(s) = self.services.as_mut() {
                    s.sync(&proxier.health_check_node_ports());
                }
            }
            Err(_) => metrics.sync_failed(self.family),
        }
    }
}
