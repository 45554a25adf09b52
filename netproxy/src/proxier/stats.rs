//! What the proxier's state says for the metrics (upstream computes these inside
//! `syncProxyRules` and its change trackers): the changes waiting for a sync, and the
//! service ports with a Local traffic policy and no local endpoint.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use super::Proxier;
use crate::model::{ServiceName, categorize_endpoints};
use crate::nft::exec::Nft;

/// Service ports whose Local traffic policy finds no local endpoint while the service has
/// endpoints elsewhere (upstream's `serviceNoLocalEndpointsTotalInternal` and
/// `…External`): their traffic of that kind is dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoLocalEndpoints {
    /// `internalTrafficPolicy: Local`.
    pub internal: usize,
    /// `externalTrafficPolicy: Local` (externally accessible services only).
    pub external: usize,
}

/// Changes recorded and not yet synced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingChanges {
    /// Services with a change (upstream's `sync_proxy_rules_service_changes_pending`).
    pub services: usize,
    /// EndpointSlice updates and deletions that changed something (upstream's
    /// `sync_proxy_rules_endpoint_changes_pending`).
    pub endpoints: usize,
}

impl<N: Nft> Proxier<N> {
    /// The changes waiting for the next sync (zero right after one).
    pub fn pending_changes(&self) -> PendingChanges {
        PendingChanges {
            services: self.service_changes.pending(),
            endpoints: self.endpoint_changes.pending(),
        }
    }

    /// The service ports, as of the last sync, whose Local policy has no local endpoint
    /// although the service has endpoints (a service without any endpoint rejects, and
    /// is not counted), as upstream's nftables proxier counts them. Kept per service and
    /// refreshed for the services each sync changes, so reading it costs O(services
    /// counted), not O(ports).
    pub fn no_local_endpoints(&self) -> NoLocalEndpoints {
        self.no_local
            .values()
            .fold(NoLocalEndpoints::default(), |a, n| NoLocalEndpoints {
                internal: a.internal + n.internal,
                external: a.external + n.external,
            })
    }

    /// Recounts the services in `changed` (their ports and endpoints were just applied):
    /// their Local-policy ports without local endpoints and their health-check node
    /// port.
    pub(super) fn refresh_no_local(&mut self, changed: &BTreeSet<ServiceName>) {
        for service in changed {
            self.refresh_health_check(service);
            let mut n = NoLocalEndpoints::default();
            for (name, info) in self.services.service_ports(service) {
                if !info.internal_policy_local && !info.external_policy_local {
                    continue;
                }
                let c = categorize_endpoints(self.endpoints.get(name), info, &self.node);
                if !c.has_any || !c.local.is_empty() {
                    continue;
                }
                n.internal += usize::from(info.internal_policy_local);
                n.external += usize::from(info.external_policy_local);
            }
            if n == NoLocalEndpoints::default() {
                self.no_local.remove(service);
            } else {
                self.no_local.insert(service.clone(), n);
            }
        }
    }

    /// `service`'s health-check node port (that of its first port with
    /// `externalTrafficPolicy: Local` and one) and its local ready endpoint addresses
    /// over those ports.
    fn refresh_health_check(&mut self, service: &ServiceName) {
        let mut port = None;
        let mut ips: HashSet<IpAddr> = HashSet::new();
        for (name, info) in self.services.service_ports(service) {
            if !info.external_policy_local || info.health_check_node_port == 0 {
                continue;
            }
            port.get_or_insert(info.health_check_node_port);
            ips.extend(
                self.endpoints
                    .get(name)
                    .iter()
                    .filter(|e| e.is_local && e.ready)
                    .map(|e| e.ip),
            );
        }
        match port {
            Some(p) => {
                self.health_checks.insert(service.clone(), (p, ips.len()));
            }
            None => {
                self.health_checks.remove(service);
            }
        }
    }
}
