//! The nftables proxier: owns the change trackers, the service and endpoints maps and
//! the reference-counted map elements it programmed, and turns each sync into one
//! transaction.
//!
//! What was programmed is not kept as rendered text: outside a failed sync (after which
//! the next one is full) the kernel holds exactly `render::service_port` of the service
//! and endpoints maps, so a service port's `Fragment` is rendered again when it is
//! needed: before a sync applies the trackers, for the services about to change (the
//! old side of the diff), and by the consistency check for the tables it compares. At
//! 30k services × 10 endpoints the fragments were most of the proxy's heap.
//!
//! - A partial sync re-renders only the services whose Service or EndpointSlices changed
//!   and sends the difference: changed chains flushed and refilled, map elements added
//!   and removed, dead chains deleted. It never lists the kernel's table. The difference
//!   goes out as one nf_tables netlink batch (`Nft::apply_batch`), or as `nft -f` text
//!   when no netlink writer is there; a batch the kernel rejects is followed at once by a
//!   full sync.
//! - Services are spread over shard tables (`nft::shard`): a transaction carries each
//!   table's part, and the kernel validates only the tables it touches.
//! - A full sync (at start, after a failed transaction) lists our tables once, rewrites
//!   every chain, refills the dispatch maps, deletes whatever else is in the tables and
//!   removes shard tables a run with more shards left (`resync`).
//! - The consistency check reads our tables back over netlink (`nft::netlink::dump`;
//!   `nft -j list table` when netlink is off) and repairs drift: missing or extra
//!   chains, chains whose rule count differs, missing, extra or wrong elements. A
//!   missing base chain or map falls back to a full sync (`resync`). The runner checks
//!   one table per turn beside the syncs (`check`); `check` here reads them all at once.
//! - With a conntrack table attached (`with_conntrack`), a sync that touched UDP services
//!   (and every full sync) then deletes the stale UDP conntrack entries (`conntrack`).

mod check;
mod resync;
mod stats;

pub use check::{CheckPlan, observe_planned};
pub use stats::{NoLocalEndpoints, PendingChanges};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::conntrack::{self, Conntrack, StaleHints};
use crate::model::{
    EndpointsChangeTracker, EndpointsMap, NodeTopology, ServiceChangeTracker, ServiceName,
    ServicePortMap, ServicePortName,
};
use crate::nft::RenderConfig;
use crate::nft::exec::{Nft, NftError};
use crate::nft::listing::ListingError;
use crate::nft::netlink::Batch;
use crate::nft::render::{self, Base, Fragment};
use crate::nft::shard::{self, Layout, MAIN, TableIx};
use crate::nft::tx::{ElementIndex, Tx};

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
    /// The conntrack reconciler ran after the sync (it listed the table) and took this
    /// long (upstream's `conntrack_reconciler_sync_duration_seconds`).
    pub conntrack_reconcile: Option<Duration>,
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
    layout: Layout,
    /// The base of the main table and that of every shard.
    main_base: Base,
    shard_base: Base,
    /// Programmed elements, by table index.
    indexes: Vec<ElementIndex>,
    need_full_sync: bool,
    base_recreated: bool,
    conntrack: Option<Box<dyn Conntrack>>,
    /// Services with Local-policy ports left without local endpoints (`stats`).
    no_local: BTreeMap<ServiceName, NoLocalEndpoints>,
    /// Health-check node ports and their local ready endpoints, by service (`stats`).
    health_checks: crate::health::service::Wanted,
    /// Per table, bumped whenever a transaction touches it (every table on a full
    /// sync): a per-table check that read a table at another generation is stale.
    generations: Vec<u64>,
    /// The next table the per-table check reads (round-robin).
    check_cursor: TableIx,
}

impl<N: Nft> Proxier<N> {
    /// A proxier that programs through `nft`; nothing is sent until the first sync, which
    /// is a full one.
    pub fn new(nft: N, cfg: RenderConfig, node: NodeTopology) -> Self {
        let layout = Layout::default();
        let (main_base, shard_base) = shard::split_base(&render::base(&cfg));
        Self {
            service_changes: ServiceChangeTracker::new(cfg.family),
            endpoint_changes: EndpointsChangeTracker::new(cfg.family, node.node_name.clone()),
            layout,
            main_base,
            shard_base,
            indexes: vec![ElementIndex::default(); layout.tables()],
            nft,
            cfg,
            node,
            services: ServicePortMap::default(),
            endpoints: EndpointsMap::default(),
            need_full_sync: true,
            base_recreated: false,
            conntrack: None,
            no_local: BTreeMap::new(),
            health_checks: BTreeMap::new(),
            generations: vec![0; layout.tables()],
            check_cursor: MAIN,
        }
    }

    /// Spreads services over `shards` shard tables instead of `DEFAULT_SHARDS` (before
    /// the first sync; the first full sync removes shard tables beyond the new number).
    #[must_use]
    pub fn with_shards(mut self, shards: usize) -> Self {
        self.layout = Layout::new(shards);
        self.indexes = vec![ElementIndex::default(); self.layout.tables()];
        self.generations = vec![0; self.layout.tables()];
        self.need_full_sync = true;
        self
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
    /// addresses (upstream's `HealthCheckNodePorts` and `LocalReadyEndpoints`). Kept per
    /// service and refreshed for the services each sync changes (`stats`), so reading
    /// it after every sync costs O(such services), not O(service ports).
    pub fn health_check_node_ports(&self) -> crate::health::service::Wanted {
        self.health_checks.clone()
    }

    /// Whether any port of `service` is UDP now.
    fn has_udp(&self, service: &ServiceName) -> bool {
        self.services
            .service_ports(service)
            .any(|(p, _)| p.protocol == crate::model::Protocol::Udp)
    }

    /// The fragment of service port `name` as the maps say now (what was programmed for
    /// it, outside a sync; `None` when the port is not in the map).
    fn render_port(&self, name: &ServicePortName) -> Option<Fragment> {
        let info = self.services.get(name)?;
        Some(render::service_port(
            name,
            info,
            self.endpoints.get(name),
            &self.node,
            &self.cfg,
        ))
    }

    /// The fragments of every port of `services`, by service, rendered from the maps as
    /// they are (the programmed side of the next diff).
    fn render_services<'a>(
        &self,
        services: impl Iterator<Item = &'a ServiceName>,
    ) -> HashMap<ServiceName, Rendered> {
        let mut out: HashMap<ServiceName, Rendered> = HashMap::new();
        for service in services {
            if out.contains_key(service) {
                continue;
            }
            let ports = self
                .services
                .service_ports(service)
                .filter_map(|(name, _)| Some((name.clone(), self.render_port(name)?)))
                .collect();
            out.insert(service.clone(), ports);
        }
        out
    }

    /// Deletes the stale UDP conntrack entries: how many, and how long the reconciliation
    /// took (`None` when it did not run or listing failed: upstream observes its duration
    /// only past the listing). Failures are logged (the next UDP change or full sync tries
    /// again), as upstream does.
    fn clean_conntrack(&self, gone: &StaleHints) -> (usize, Option<Duration>) {
        let start = Instant::now();
        let Some(ct) = &self.conntrack else {
            return (0, None);
        };
        let family = self.cfg.family;
        let entries = match ct.list_udp(family) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "listing conntrack entries failed");
                return (0, None);
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
            return (0, Some(start.elapsed()));
        }
        let deleted = match ct.delete(family, &stale) {
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
        };
        (deleted, Some(start.elapsed()))
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

    /// What was programmed, table by table (tests build fake listings from it).
    #[cfg(test)]
    pub(crate) fn programmed(&self) -> Vec<Wanted<'_>> {
        self.wanted()
    }

    /// The base of table `t`.
    fn base_of(&self, t: TableIx) -> &Base {
        if t == MAIN {
            &self.main_base
        } else {
            &self.shard_base
        }
    }

    /// Every table as it should be: its name, base, the parts of the fragments it holds
    /// (in service-port order, rendered from the maps) and its elements.
    fn wanted(&self) -> Vec<Wanted<'_>> {
        let mut parts: Vec<Vec<Fragment>> = vec![Vec::new(); self.layout.tables()];
        let mut shard = None;
        for (name, _) in self.services.iter() {
            let Some(f) = self.render_port(name) else {
                continue;
            };
            let (main, part) = shard::split_fragment(&f);
            parts[MAIN].push(main);
            let t = self.shard_of_port(name, &mut shard);
            parts[t].push(part);
        }
        self.wanted_from(parts)
    }

    /// The tables as they should be with `parts`, table by table.
    fn wanted_from(&self, parts: Vec<Vec<Fragment>>) -> Vec<Wanted<'_>> {
        parts
            .into_iter()
            .enumerate()
            .map(|(t, parts)| Wanted {
                name: self.layout.table_name(t),
                base: self.base_of(t),
                parts,
                index: &self.indexes[t],
            })
            .collect()
    }

    /// The shard of the service of `name`, remembering the last answer in `last`: the
    /// ports of a service come one after another in name order, and the shard is a hash.
    fn shard_of_port(
        &self,
        name: &ServicePortName,
        last: &mut Option<(ServiceName, TableIx)>,
    ) -> TableIx {
        if let Some((s, t)) = last
            && s.namespace == name.namespace
            && s.name == name.name
        {
            return *t;
        }
        let service = name.service();
        let t = self.layout.shard_of(&service);
        *last = Some((service, t));
        t
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
        let start = Instant::now();
        // The programmed side of the diff, rendered before the maps move on: every
        // service with a pending change (a superset of those that changed).
        let mut old = if self.need_full_sync {
            HashMap::new()
        } else {
            self.render_services(
                self.service_changes
                    .pending_services()
                    .chain(self.endpoint_changes.pending_services()),
            )
        };
        let svc_update = self.services.apply(&mut self.service_changes);
        let ep_update = self.endpoints.apply(&mut self.endpoint_changes);
        let changed: BTreeSet<ServiceName> = svc_update
            .updated
            .into_iter()
            .chain(ep_update.updated)
            .collect();
        self.refresh_no_local(&changed);
        let gone = StaleHints {
            destinations: svc_update.stale_udp_destinations,
            node_ports: svc_update.stale_udp_node_ports,
        };
        let udp_changed = !gone.destinations.is_empty()
            || !gone.node_ports.is_empty()
            || !ep_update.deleted_udp_endpoints.is_empty();
        if self.need_full_sync {
            let mut r = self.full_sync().await?;
            (r.conntrack_deleted, r.conntrack_reconcile) = self.clean_conntrack(&gone);
            return Ok(r);
        }
        let mut txs = vec![Tx::new(); self.layout.tables()];
        for service in &changed {
            let programmed = old.remove(service);
            self.rerender(service, programmed, &mut txs);
        }
        drop(old);
        for (g, tx) in self.generations.iter_mut().zip(&txs) {
            if tx.touches() {
                *g += 1;
            }
        }
        // Over netlink when the transaction can be encoded and a writer is there, O(change);
        // `nft -f` reads the whole table first, O(table).
        let text_txs = txs.clone();
        match self.encode(txs) {
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
                        let (conntrack_deleted, conntrack_reconcile) =
                            self.conntrack_after(udp_changed, &changed, &gone);
                        return Ok(SyncReport {
                            services: changed.len(),
                            render,
                            apply: t.elapsed(),
                            netlink_messages: batch.len(),
                            conntrack_deleted,
                            conntrack_reconcile,
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
                        (r.conntrack_deleted, r.conntrack_reconcile) = self.clean_conntrack(&gone);
                        return Ok(r);
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "sync not encodable for netlink: sent as text"),
        }
        let script = self.render_txs(text_txs);
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
        (report.conntrack_deleted, report.conntrack_reconcile) =
            self.conntrack_after(udp_changed, &changed, &gone);
        Ok(report)
    }

    /// After an incremental sync, the stale UDP conntrack entries when it touched UDP
    /// services (a TCP-only change never lists the table); as `clean_conntrack`.
    fn conntrack_after(
        &self,
        udp_changed: bool,
        changed: &BTreeSet<ServiceName>,
        gone: &StaleHints,
    ) -> (usize, Option<Duration>) {
        if udp_changed || changed.iter().any(|s| self.has_udp(s)) {
            self.clean_conntrack(gone)
        } else {
            (0, None)
        }
    }

    /// The per-table transactions as one netlink batch (one kernel transaction).
    fn encode(&self, txs: Vec<Tx>) -> Result<Batch, crate::nft::netlink::EncodeError> {
        let mut batch = Batch::new(self.cfg.family, &self.layout.table_name(MAIN));
        for (t, tx) in txs.into_iter().enumerate() {
            batch.set_table(&self.layout.table_name(t));
            tx.encode_into(&mut batch, &self.indexes[t])?;
        }
        Ok(batch)
    }

    /// The per-table transactions as one `nft -f` script (one kernel transaction).
    fn render_txs(&self, txs: Vec<Tx>) -> String {
        txs.into_iter()
            .enumerate()
            .map(|(t, tx)| tx.render(self.family(), &self.layout.table_name(t), &self.indexes[t]))
            .collect()
    }

    /// Renders `service` again and records the difference with what was programmed
    /// (its fragments in `old`, rendered before the maps changed), the filter side in the
    /// main table's transaction and the rest in its shard's. O(the service's ports): its
    /// ports are a range of the ordered map.
    fn rerender(&mut self, service: &ServiceName, old: Option<Rendered>, txs: &mut [Tx]) {
        let t = self.layout.shard_of(service);
        let mut old = old.unwrap_or_default();
        let mut names: BTreeSet<ServicePortName> = self
            .services
            .service_ports(service)
            .map(|(n, _)| n.clone())
            .collect();
        names.extend(old.keys().cloned());
        let empty = Fragment::default();
        for name in &names {
            let new = self.render_port(name);
            let old = old.remove(name);
            let (old_main, old_part) = shard::split_fragment(old.as_ref().unwrap_or(&empty));
            let (new_main, new_part) = shard::split_fragment(new.as_ref().unwrap_or(&empty));
            txs[MAIN].diff(&old_main, &new_main, &mut self.indexes[MAIN]);
            txs[t].diff(&old_part, &new_part, &mut self.indexes[t]);
        }
    }
}

/// The fragments of one service's ports, by port.
type Rendered = BTreeMap<ServicePortName, Fragment>;

/// One table as the proxier wants it.
pub(crate) struct Wanted<'a> {
    pub name: String,
    pub base: &'a Base,
    /// The parts of fragments in this table.
    pub parts: Vec<Fragment>,
    pub index: &'a ElementIndex,
}
