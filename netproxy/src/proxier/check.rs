//! The per-table consistency check the runner uses: one table (the main one or a shard)
//! per turn, round-robin, read back beside the syncs and compared afterwards.
//!
//! Why per table: reading every table back at 30k services × 10 endpoints took 35 s, more
//! than the 30 s `syncPeriod`, and the runner awaited it inside its loop, so syncs queued
//! behind it. One shard is 1/16 of that, and its read-back borrows nothing from the
//! proxier (`observe_planned`), so the runner drives it beside the syncs.
//!
//! Why it stays correct while syncs go on: each table has a generation, bumped whenever
//! a transaction touches it. A `CheckPlan` records the generation the read started at;
//! `finish_check` drops the findings when the table moved on meanwhile (the read may
//! have seen half of a change; the next turn reads it again).
//!
//! How drift is repaired: by the existing per-chain and per-element repair
//! (`resync::repair`) of that table, sent as one netlink batch (text when netlink is
//! off), not by rewriting the shard: the repair is O(drift), while rewriting a shard
//! flushes and refills ~20k chains at 30k services and makes the kernel revalidate
//! them all. A drifted base (hook chain or dispatch map) still falls back to the full
//! sync, as the whole-ruleset check does.

use std::time::Instant;

use super::{Proxier, SyncError, SyncReport, Wanted};
use crate::model::IpFamily;
use crate::nft::exec::Nft;
use crate::nft::listing::{self, Observed};
use crate::nft::netlink::{Batch, NetlinkError};
use crate::nft::shard::{self, MAIN, TableIx};

/// One table's check, as planned: which table, and its generation when the read began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckPlan {
    pub table: TableIx,
    pub name: String,
    pub family: IpFamily,
    generation: u64,
}

/// Reads the table of `plan` over netlink (`Nft::observe_table`), or with
/// `nft -j list table` when netlink is off or fails; an absent table reads as empty.
///
/// # Errors
/// Both reads failed, or the JSON listing could not be read.
pub async fn observe_planned<N: Nft>(nft: N, plan: CheckPlan) -> Result<Observed, SyncError> {
    match nft.observe_table(plan.family, plan.name.clone()).await {
        Ok(o) => return Ok(o),
        Err(NetlinkError::Unavailable) => {}
        Err(e) => {
            tracing::warn!(error = %e, table = plan.name, "netlink read-back failed: listing with nft")
        }
    }
    let family = match plan.family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    };
    let table = format!("{family} {}", plan.name);
    match nft.list_table(family, &plan.name).await {
        Ok(json) => listing::parse(&json).map_err(|source| SyncError::Listing { table, source }),
        Err(e) if e.is_not_found() => Ok(Observed::default()),
        Err(source) => Err(SyncError::List { table, source }),
    }
}

impl<N: Nft> Proxier<N> {
    /// How many tables the check goes round (the main table and the shards).
    pub fn tables(&self) -> usize {
        self.layout.tables()
    }

    /// The next table to check, round-robin over the main table and the shards.
    pub fn plan_check(&mut self) -> CheckPlan {
        let t = self.check_cursor % self.layout.tables();
        self.check_cursor = (t + 1) % self.layout.tables();
        CheckPlan {
            table: t,
            name: self.layout.table_name(t),
            family: self.cfg.family,
            generation: self.generations[t],
        }
    }

    /// Whether findings read under `plan` still describe what was programmed (no
    /// transaction touched the table since, and no full sync is due).
    pub fn plan_is_current(&self, plan: &CheckPlan) -> bool {
        !self.need_full_sync && self.generations.get(plan.table) == Some(&plan.generation)
    }

    /// Table `t` as wanted: the parts of the fragments it holds, in service-port order,
    /// rendered from the maps: for a shard the ports of its services; for the main table
    /// the ports with a firewall chain (the repair takes elements from the index, and
    /// the main part of every other fragment has no chain and no set).
    fn wanted_table(&self, t: TableIx) -> Wanted<'_> {
        let mut shard = None;
        let mut parts = Vec::new();
        for (name, info) in self.services.iter() {
            let ours = if t == MAIN {
                crate::nft::render::has_firewall(info)
            } else {
                self.shard_of_port(name, &mut shard) == t
            };
            if !ours {
                continue;
            }
            let Some(f) = self.render_port(name) else {
                continue;
            };
            parts.push(if t == MAIN {
                shard::main_part(&f)
            } else {
                shard::shard_part(&f)
            });
        }
        Wanted {
            name: self.layout.table_name(t),
            base: self.base_of(t),
            parts,
            index: &self.indexes[t],
        }
    }

    /// Compares what `plan`'s read saw with what was programmed into that table and
    /// repairs the difference. `None`: the findings are stale (`plan_is_current`) and
    /// were dropped.
    ///
    /// # Errors
    /// Applying the repair (or the full sync a drifted base needs) failed; the next sync
    /// is then a full one.
    pub async fn finish_check(
        &mut self,
        plan: &CheckPlan,
        observed: &Observed,
    ) -> Option<Result<SyncReport, SyncError>> {
        if !self.plan_is_current(plan) {
            return None;
        }
        let start = Instant::now();
        let t = plan.table;
        let w = self.wanted_table(t);
        let base_ok = w
            .base
            .chains
            .iter()
            .all(|c| observed.chains.get(&c.name) == Some(&c.rules.len()))
            && w.base.sets.iter().all(|s| observed.sets.contains(&s.name));
        if !base_ok {
            tracing::warn!(
                table = plan.name,
                "base chains or maps drifted: full resync"
            );
            self.need_full_sync = true;
            return Some(self.full_sync().await);
        }
        let (tx, repaired) = super::resync::repair(&w, observed);
        let mut report = SyncReport {
            repaired,
            render: start.elapsed(),
            ..SyncReport::default()
        };
        if repaired == 0 {
            return Some(Ok(report));
        }
        tracing::warn!(repaired, table = plan.name, "nftables drift repaired");
        let text = tx.clone().render(self.family(), &w.name, w.index);
        let mut batch = Batch::new(self.cfg.family, &plan.name);
        let encoded = tx.encode_into(&mut batch, w.index);
        self.generations[t] += 1;
        let t0 = Instant::now();
        if encoded.is_ok() {
            match self.nft.apply_batch(&batch).await {
                Ok(()) => {
                    report.apply = t0.elapsed();
                    report.netlink_messages = batch.len();
                    return Some(Ok(report));
                }
                Err(e) if e.use_text() => {}
                Err(e) => {
                    tracing::warn!(error = %e, "netlink repair failed: full resync");
                    self.need_full_sync = true;
                    return Some(self.full_sync().await);
                }
            }
        }
        report.script_bytes = text.len();
        if let Err(e) = self.nft.apply(&text).await {
            self.need_full_sync = true;
            return Some(Err(SyncError::Apply(e)));
        }
        report.apply = t0.elapsed();
        Some(Ok(report))
    }
}
