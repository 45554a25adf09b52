//! What the proxier's state says for the metrics (upstream computes these inside
//! `syncProxyRules` and its change trackers): the changes waiting for a sync, and the
//! service ports with a Local traffic policy and no local endpoint.

use super::Proxier;
use crate::model::categorize_endpoints;
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

    /// Counts, over the service ports as of the last sync, those whose Local policy has
    /// no local endpoint although the service has endpoints (a service without any
    /// endpoint rejects, and is not counted), as upstream's nftables proxier does.
    pub fn no_local_endpoints(&self) -> NoLocalEndpoints {
        let mut out = NoLocalEndpoints::default();
        for (name, info) in self.services.iter() {
            let c = categorize_endpoints(self.endpoints.get(name), info, &self.node);
            if !c.has_any {
                continue;
            }
            if info.internal_policy_local && c.local.is_empty() {
                out.internal += 1;
            }
            if info.external_policy_local && c.local.is_empty() {
                out.external += 1;
            }
        }
        out
    }
}
