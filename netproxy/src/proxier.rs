//! The nftables proxier: owns the change trackers, the service and endpoints maps and
//! what it last programmed (one `Fragment` per service port and the reference-counted map
//! elements), and turns each sync into one transaction.
//!
//! - A partial sync re-renders only the services whose Service or EndpointSlices changed
//!   and sends the difference: changed chains flushed and refilled, map elements added
//!   and removed, dead chains deleted. It never lists the kernel's table. The difference
//!   goes out as one nf_tables netlink batch (`Nft::apply_batch`), or as `nft -f` text
//!   when no netlink writer is there; a batch the kernel rejects is followed at once by a
//!   full sync.
//! - A full sync (at start, after a failed transaction) lists our table once, rewrites
//!   every chain, refills the dispatch maps and deletes whatever else is in the table.
//! - The consistency check (every `syncPeriod`) lists our table and repairs drift: missing
//!   or extra chains, chains whose rule count differs, missing, extra or wrong elements.
//!   A missing base chain or map falls back to a full sync.
//! - With a conntrack table attached (`with_conntrack`), a sync that touched UDP services
//!   (and every full sync) then deletes the stale UDP conntrack entries (`conntrack`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::conntrack::{self, Conntrack, StaleHints};
use crate::model::{
    EndpointsChangeTracker, EndpointsMap, NodeTopology, ServiceChangeTracker, ServiceName,
    ServicePortMap, ServicePortName,
};
use crate::nft::exec::{Nft, NftError};
use crate::nft::listing::{self, ListingError, Observed};
use crate::nft::render::{self, Base, Element, Fragment};
use crate::nft::tx::{ElementIndex, Tx};
use crate::nft::{Container, RenderConfig, TABLE};

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("applying the nftables transaction failed: {0}")]
    Apply(#[source] NftError),
    #[error("listing table {table} failed: {source}")]
    List {
        table: String,
        #[source]
        source: NftError,
    },
    #[error("reading the listing of table {table} failed: {source}")]
    Listing {
        table: String,
        #[source]
        source: ListingError,
    },
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub full: bool,
    /// Services re-rendered.
    pub services: usize,
    /// Size of the script sent (0: nothing to send).
    pub script_bytes: usize,
    /// Drift repaired by a consistency check (chains and elements fixed).
    pub repaired: usize,
    pub render: Duration,
    pub apply: Duration,
    /// Messages of the netlink batch an incremental sync sent (0: sent as text).
    pub netlink_messages: usize,
    /// The netlink batch failed and this full sync replaced it.
    pub fell_back: bool,
    /// Stale UDP conntrack entries deleted after the sync.
    pub conntrack_deleted: usize,
}

/// The proxier of one IP family.
pub struct Proxier<N: Nft> {
    nft: N,
    cfg: RenderConfig,
    node: NodeTopology,
    services: ServicePortMap,
    endpoints: EndpointsMap,
    service_changes: ServiceChangeTracker,
    endpoint_changes: EndpointsChangeTracker,
    base: Base,
    fragments: HashMap<ServicePortName, Fragment>,
    by_service: BTreeMap<ServiceName, BTreeSet<ServicePortName>>,
    index: ElementIndex,
    need_full_sync: bool,
    base_recreated: bool,
    conntrack: Option<Box<dyn Conntrack>>,
}

impl<N: Nft> Proxier<N> {
    /// A proxier that programs through `nft`; nothing is sent until the first sync, which
    /// is a full one.
    pub fn new(nft: N, cfg: RenderConfig, node: NodeTopology) -> Self {
        Self {
            service_changes: ServiceChangeTracker::new(cfg.family),
            endpoint_changes: EndpointsChangeTracker::new(cfg.family, node.node_name.clone()),
            base: render::base(&cfg),
            nft,
            cfg,
            node,
            services: ServicePortMap::default(),
            endpoints: EndpointsMap::default(),
            fragments: HashMap::new(),
            by_service: BTreeMap::new(),
            index: ElementIndex::default(),
            need_full_sync: true,
            base_recreated: false,
            conntrack: None,
        }
    }

    /// Deletes stale UDP conntrack entries through `ct` after syncs (see `conntrack`).
    #[must_use]
    pub fn with_conntrack(mut self, ct: impl Conntrack + 'static) -> Self {
        self.conntrack = Some(Box::new(ct));
        self
    }

    /// The service and endpoints maps as of the last sync.
    pub fn maps(&self) -> (&ServicePortMap, &EndpointsMap) {
        (&self.services, &self.endpoints)
    }

    /// The health-check node ports to serve: every `externalTrafficPolicy: Local`
    /// service with a `healthCheckNodePort`, with its number of local ready endpoint
    /// addresses (upstream's `HealthCheckNodePorts` and `LocalReadyEndpoints`).
    pub fn health_check_node_ports(&self) -> crate::health::service::Wanted {
        let mut ips: BTreeMap<ServiceName, (u16, HashSet<std::net::IpAddr>)> = BTreeMap::new();
        for (name, info) in self.services.iter() {
            if !info.external_policy_local || info.health_check_node_port == 0 {
                continue;
            }
            let entry = ips
                .entry(name.service())
                .or_insert_with(|| (info.health_check_node_port, HashSet::new()));
            entry.1.extend(
                self.endpoints
                    .get(name)
                    .iter()
                    .filter(|e| e.is_local && e.ready)
                    .map(|e| e.ip),
            );
        }
        ips.into_iter()
            .map(|(k, (port, ips))| (k, (port, ips.len())))
            .collect()
    }

    /// Whether any port of `service` is UDP now.
    fn has_udp(&self, service: &ServiceName) -> bool {
        self.by_service.get(service).is_some_and(|ports| {
            ports
                .iter()
                .any(|p| p.protocol == crate::model::Protocol::Udp)
        })
    }

    /// Deletes the stale UDP conntrack entries; failures are logged (the next UDP change
    /// or full sync tries again), as upstream does.
    fn clean_conntrack(&self, gone: &StaleHints) -> usize {
        let Some(ct) = &self.conntrack else {
            return 0;
        };
        let family = self.cfg.family;
        let entries = match ct.list_udp(family) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "listing conntrack entries failed");
                return 0;
            }
        };
        let node_port_ips: HashSet<std::net::IpAddr> = match &self.cfg.nodeport_ips {
            Some(ips) => ips.iter().copied().collect(),
            None => ct.local_addresses().into_iter().collect(),
        };
        let stale = conntrack::stale_flows(
            &entries,
            &self.services,
            &self.endpoints,
            &node_port_ips,
            gone,
        );
        if stale.is_empty() {
            return 0;
        }
        match ct.delete(family, &stale) {
            Ok(n) => {
                tracing::debug!(
                    deleted = n,
                    listed = entries.len(),
                    "stale UDP conntrack entries deleted"
                );
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, "deleting stale conntrack entries failed");
                0
            }
        }
    }

    /// Records a Service added or modified.
    pub fn service_updated(&mut self, svc: &Service) {
        self.service_changes.update(svc);
    }

    /// Records a Service deleted.
    pub fn service_deleted(&mut self, svc: &Service) {
        self.service_changes.delete(svc);
    }

    /// Records an EndpointSlice added or modified.
    pub fn slice_updated(&mut self, slice: &EndpointSlice) {
        self.endpoint_changes.update(slice);
    }

    /// Records an EndpointSlice deleted.
    pub fn slice_deleted(&mut self, slice: &EndpointSlice) {
        self.endpoint_changes.delete(slice);
    }

    /// Whether changes wait for a sync (or a full sync is due).
    pub fn has_pending(&self) -> bool {
        self.need_full_sync
            || self.service_changes.has_pending()
            || self.endpoint_changes.has_pending()
    }

    /// Forces the next sync to be full.
    pub fn request_full_sync(&mut self) {
        self.need_full_sync = true;
    }

    /// The `nft` seam (tests inspect the fake through it).
    pub fn nft(&self) -> &N {
        &self.nft
    }

    /// What was programmed: the base, the fragments and the elements (tests build fake
    /// listings from it).
    #[cfg(test)]
    pub(crate) fn programmed(&self) -> (&Base, &HashMap<ServicePortName, Fragment>, &ElementIndex) {
        (&self.base, &self.fragments, &self.index)
    }

    fn family(&self) -> &'static str {
        self.cfg.ip()
    }

    /// Applies pending changes: partially when possible, fully when needed.
    ///
    /// # Errors
    /// nft failed (the next sync is then a full one) or the listing of a full sync could
    /// not be read.
    pub async fn sync(&mut self) -> Result<SyncReport, SyncError> {
        let svc_update = self.services.apply(&mut self.service_changes);
        let ep_update = self.endpoints.apply(&mut self.endpoint_changes);
        let changed: BTreeSet<ServiceName> = svc_update
            .updated
            .into_iter()
            .chain(ep_update.updated)
            .collect();
        let gone = StaleHints {
            destinations: svc_update.stale_udp_destinations,
            node_ports: svc_update.stale_udp_node_ports,
        };
        let udp_changed = !gone.destinations.is_empty()
            || !gone.node_ports.is_empty()
            || !ep_update.deleted_udp_endpoints.is_empty();
        if self.need_full_sync {
            let mut r = self.full_sync().await?;
            r.conntrack_deleted = self.clean_conntrack(&gone);
            return Ok(r);
        }
        let start = Instant::now();
        let mut tx = Tx::new();
        for service in &changed {
            self.rerender(service, &mut tx);
        }
        // Over netlink when the transaction can be encoded and a writer is there, O(change);
        // `nft -f` reads the whole table first, O(table).
        let text_tx = tx.clone();
        match tx.encode(self.cfg.family, &self.index) {
            Ok(batch) => {
                let render = start.elapsed();
                if batch.is_empty() {
                    return Ok(SyncReport {
                        services: changed.len(),
                        render,
                        ..SyncReport::default()
                    });
                }
                let t = Instant::now();
                match self.nft.apply_batch(&batch).await {
                    Ok(()) => {
                        return Ok(SyncReport {
                            services: changed.len(),
                            render,
                            apply: t.elapsed(),
                            netlink_messages: batch.len(),
                            conntrack_deleted: self.conntrack_after(udp_changed, &changed, &gone),
                            ..SyncReport::default()
                        });
                    }
                    Err(e) if e.use_text() => {
                        tracing::debug!(error = %e, "netlink unavailable: sending the sync as text");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "netlink transaction failed: full resync");
                        self.need_full_sync = true;
                        let mut r = self.full_sync().await?;
                        r.fell_back = true;
                        r.conntrack_deleted = self.clean_conntrack(&gone);
                        return Ok(r);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "sync not encodable for netlink: sent as text"),
        }
        let script = text_tx.render(self.family(), &self.index);
        let render = start.elapsed();
        let mut report = SyncReport {
            services: changed.len(),
            script_bytes: script.len(),
            render,
            ..SyncReport::default()
        };
        if script.is_empty() {
            return Ok(report);
        }
        let t = Instant::now();
        if let Err(e) = self.nft.apply(&script).await {
            self.need_full_sync = true;
            return Err(SyncError::Apply(e));
        }
        report.apply = t.elapsed();
        report.conntrack_deleted = self.conntrack_after(udp_changed, &changed, &gone);
        Ok(report)
    }

    /// After an incremental sync, the stale UDP conntrack entries when it touched UDP
    /// services (a TCP-only change never lists the table); the number deleted.
    fn conntrack_after(
        &self,
        udp_changed: bool,
        changed: &BTreeSet<ServiceName>,
        gone: &StaleHints,
    ) -> usize {
        if udp_changed || changed.iter().any(|s| self.has_udp(s)) {
            self.clean_conntrack(gone)
        } else {
            0
        }
    }

    /// Renders `service` again and records the difference with what was programmed.
    fn rerender(&mut self, service: &ServiceName, tx: &mut Tx) {
        let old_names = self.by_service.remove(service).unwrap_or_default();
        let new_names: BTreeSet<ServicePortName> = self
            .services
            .iter()
            .filter(|(n, _)| n.namespace == service.namespace && n.name == service.name)
            .map(|(n, _)| n.clone())
            .collect();
        let empty = Fragment::default();
        for name in old_names.union(&new_names) {
            let new = self.services.get(name).map(|info| {
                render::service_port(name, info, self.endpoints.get(name), &self.node, &self.cfg)
            });
            let old = self.fragments.remove(name);
            tx.diff(
                old.as_ref().unwrap_or(&empty),
                new.as_ref().unwrap_or(&empty),
                &mut self.index,
            );
            if let Some(f) = new {
                self.fragments.insert(name.clone(), f);
            }
        }
        if !new_names.is_empty() {
            self.by_service.insert(service.clone(), new_names);
        }
    }

    async fn observe(&self) -> Result<Observed, SyncError> {
        let table = format!("{} {TABLE}", self.family());
        match self.nft.list_table(self.family()).await {
            Ok(json) => {
                listing::parse(&json).map_err(|source| SyncError::Listing { table, source })
            }
            Err(e) if e.is_not_found() => Ok(Observed::default()),
            Err(source) => Err(SyncError::List { table, source }),
        }
    }

    /// Rewrites the whole table from the model.
    async fn full_sync(&mut self) -> Result<SyncReport, SyncError> {
        let observed = self.observe().await?;
        let start = Instant::now();
        self.fragments.clear();
        self.by_service.clear();
        self.index = ElementIndex::default();
        let mut tx = Tx::new();
        let names: Vec<ServicePortName> = self.services.iter().map(|(n, _)| n.clone()).collect();
        let empty = Fragment::default();
        let mut services = BTreeSet::new();
        for name in names {
            if let Some(info) = self.services.get(&name) {
                let f = render::service_port(
                    &name,
                    info,
                    self.endpoints.get(&name),
                    &self.node,
                    &self.cfg,
                );
                // Chains are written below; the diff against nothing only indexes elements.
                let mut scratch = Tx::new();
                scratch.diff(
                    &empty,
                    &Fragment {
                        elements: f.elements.clone(),
                        ..Fragment::default()
                    },
                    &mut self.index,
                );
                services.insert(name.service());
                self.by_service
                    .entry(name.service())
                    .or_default()
                    .insert(name.clone());
                self.fragments.insert(name, f);
            }
        }
        let t = format!("{} {TABLE}", self.family());
        tx.head(format!(
            "add table {t} {{ comment \"rules for nodelet's service proxy\"; }}"
        ));
        let base_chains: Vec<_> = self
            .base
            .chains
            .iter()
            .filter(|c| c.hook.is_some())
            .collect();
        if !self.base_recreated {
            // Recreate hooked chains once so a changed priority or hook takes effect.
            for c in &base_chains {
                tx.head(format!("add chain {t} {}", c.name));
                tx.head(format!("delete chain {t} {}", c.name));
            }
        }
        for c in &base_chains {
            if let Some(hook) = &c.hook {
                tx.head(format!("add chain {t} {} {{ {hook}; }}", c.name));
            }
        }
        for set in &self.base.sets {
            tx.head(format!(
                "add {} {t} {} {{ {}; }}",
                set.kind, set.name, set.spec
            ));
            tx.head(format!("flush {} {t} {}", set.kind, set.name));
        }
        for (set, elem) in &self.base.set_elements {
            tx.head(format!("add element {t} {set} {{ {elem} }}"));
        }
        let mut wanted_chains: HashSet<&str> = HashSet::new();
        let mut wanted_sets: HashSet<&str> =
            self.base.sets.iter().map(|s| s.name.as_str()).collect();
        for c in &self.base.chains {
            wanted_chains.insert(&c.name);
            if c.hook.is_none() {
                tx.add_chain(&c.name);
            }
            tx.flush_chain(&c.name);
            tx.rules(c);
        }
        let mut names: Vec<&ServicePortName> = self.fragments.keys().collect();
        names.sort();
        for name in names {
            let Some(f) = self.fragments.get(name) else {
                continue;
            };
            for set in &f.sets {
                wanted_sets.insert(&set.name);
                tx.add_set(set.clone());
            }
            for c in &f.chains {
                wanted_chains.insert(&c.name);
                tx.add_chain(&c.name);
                tx.flush_chain(&c.name);
                tx.rules(c);
            }
        }
        let mut elements: Vec<(Container, &str, Option<&str>)> = self.index.iter().collect();
        elements.sort();
        for (container, key, value) in elements {
            tx.add_element(&Element {
                container,
                key: key.to_string(),
                value: value.map(str::to_string),
            });
        }
        let mut stale: Vec<&String> = observed
            .chains
            .keys()
            .filter(|c| !wanted_chains.contains(c.as_str()))
            .collect();
        stale.sort();
        for c in stale {
            tx.delete_chain(c);
        }
        let mut stale_sets: Vec<&String> = observed
            .sets
            .iter()
            .filter(|s| !wanted_sets.contains(s.as_str()))
            .collect();
        stale_sets.sort();
        for s in stale_sets {
            tx.delete_set(
                if observed.maps.contains(s) {
                    "map"
                } else {
                    "set"
                },
                s,
            );
        }
        let script = tx.render(self.family(), &ElementIndex::default());
        let render = start.elapsed();
        let t0 = Instant::now();
        if let Err(e) = self.nft.apply(&script).await {
            self.need_full_sync = true;
            return Err(SyncError::Apply(e));
        }
        self.need_full_sync = false;
        self.base_recreated = true;
        Ok(SyncReport {
            full: true,
            services: services.len(),
            script_bytes: script.len(),
            repaired: 0,
            render,
            apply: t0.elapsed(),
            ..SyncReport::default()
        })
    }

    /// Lists our table and repairs what differs from what was programmed.
    ///
    /// # Errors
    /// Listing or applying the repair failed.
    pub async fn check(&mut self) -> Result<SyncReport, SyncError> {
        if self.need_full_sync {
            return self.full_sync().await;
        }
        let observed = self.observe().await?;
        let start = Instant::now();
        let base_ok = self
            .base
            .chains
            .iter()
            .all(|c| observed.chains.get(&c.name) == Some(&c.rules.len()))
            && self
                .base
                .sets
                .iter()
                .all(|s| observed.sets.contains(&s.name));
        if !base_ok {
            tracing::warn!(table = TABLE, "base chains or maps drifted: full resync");
            self.need_full_sync = true;
            return self.full_sync().await;
        }
        let mut tx = Tx::new();
        let mut repaired = 0;
        let mut wanted_chains: HashSet<&str> =
            self.base.chains.iter().map(|c| c.name.as_str()).collect();
        let mut wanted_sets: HashSet<&str> =
            self.base.sets.iter().map(|s| s.name.as_str()).collect();
        for f in self.fragments.values() {
            for set in &f.sets {
                wanted_sets.insert(&set.name);
                let drifted = !observed.sets.contains(&set.name)
                    || (!set.elements.is_empty()
                        && observed.set_sizes.get(&set.name) != Some(&set.elements.len()));
                if drifted {
                    repaired += 1;
                    tx.add_set(set.clone());
                }
            }
            for c in &f.chains {
                wanted_chains.insert(&c.name);
                match observed.chains.get(&c.name) {
                    None => {
                        repaired += 1;
                        tx.add_chain(&c.name);
                        tx.rules(c);
                    }
                    Some(n) if *n != c.rules.len() => {
                        repaired += 1;
                        tx.flush_chain(&c.name);
                        tx.rules(c);
                    }
                    Some(_) => {}
                }
            }
        }
        for c in observed
            .chains
            .keys()
            .filter(|c| !wanted_chains.contains(c.as_str()))
        {
            repaired += 1;
            tx.delete_chain(c);
        }
        for s in observed
            .sets
            .iter()
            .filter(|s| !wanted_sets.contains(s.as_str()))
        {
            repaired += 1;
            tx.delete_set(
                if observed.maps.contains(s) {
                    "map"
                } else {
                    "set"
                },
                s,
            );
        }
        let mut wanted: HashMap<Container, HashMap<&str, Option<&str>>> = HashMap::new();
        for (c, k, v) in self.index.iter() {
            wanted.entry(c).or_default().insert(k, v);
        }
        for container in Container::ALL {
            let have = observed.elements.get(&container);
            let want = wanted.get(&container);
            for (k, v) in want.into_iter().flatten() {
                let current = have.and_then(|h| h.get(*k));
                if current.map(|c| c.as_deref()) != Some(*v) {
                    repaired += 1;
                    if current.is_some() {
                        tx.delete_element(container, k);
                    }
                    tx.add_element(&Element {
                        container,
                        key: (*k).to_string(),
                        value: v.map(str::to_string),
                    });
                }
            }
            for k in have.into_iter().flat_map(|h| h.keys()) {
                if !want.is_some_and(|w| w.contains_key(k.as_str())) {
                    repaired += 1;
                    tx.delete_element(container, k);
                }
            }
        }
        let script = tx.render(self.family(), &self.index);
        let mut report = SyncReport {
            repaired,
            script_bytes: script.len(),
            render: start.elapsed(),
            ..SyncReport::default()
        };
        if repaired > 0 {
            tracing::warn!(table = TABLE, repaired, "nftables drift repaired");
            let t0 = Instant::now();
            if let Err(e) = self.nft.apply(&script).await {
                self.need_full_sync = true;
                return Err(SyncError::Apply(e));
            }
            report.apply = t0.elapsed();
        }
        Ok(report)
    }
}
