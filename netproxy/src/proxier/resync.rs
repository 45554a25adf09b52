//! The proxier's whole-table work: the full sync (every table of the layout rewritten,
//! shard tables of a larger layout removed) and the consistency check (every table
//! listed and its drift repaired), both as one `nft -f` transaction over all tables.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use super::{Proxier, SyncError, SyncReport, Wanted};
use crate::nft::Container;
use crate::nft::exec::Nft;
use crate::nft::listing::{self, Observed};
use crate::nft::netlink::NetlinkError;
use crate::nft::render::{Element, Fragment};
use crate::nft::shard::{self, MAIN, TableIx};
use crate::nft::tx::{ElementIndex, Tx};

impl<N: Nft> Proxier<N> {
    /// Reads the tables `present` says exist back over netlink, or lists them with
    /// `nft -j` when netlink is not there or fails; the others read as empty.
    async fn observe(&self, present: impl Fn(TableIx) -> bool) -> Result<Vec<Observed>, SyncError> {
        let ixs: Vec<TableIx> = (0..self.layout.tables()).filter(|t| present(*t)).collect();
        let names: Vec<String> = ixs.iter().map(|t| self.layout.table_name(*t)).collect();
        let mut out = vec![Observed::default(); self.layout.tables()];
        match self.nft.observe_tables(self.cfg.family, &names).await {
            Ok(read) => {
                for (t, o) in ixs.into_iter().zip(read) {
                    out[t] = o;
                }
                return Ok(out);
            }
            Err(NetlinkError::Unavailable) => {}
            Err(e) => tracing::warn!(error = %e, "netlink read-back failed: listing with nft"),
        }
        for (t, name) in ixs.into_iter().zip(&names) {
            out[t] = self.list(name).await?;
        }
        Ok(out)
    }

    /// Lists table `name` with `nft -j` (an absent table is an empty one).
    async fn list(&self, name: &str) -> Result<Observed, SyncError> {
        let table = format!("{} {name}", self.family());
        match self.nft.list_table(self.family(), name).await {
            Ok(json) => {
                listing::parse(&json).map_err(|source| SyncError::Listing { table, source })
            }
            Err(e) if e.is_not_found() => Ok(Observed::default()),
            Err(source) => Err(SyncError::List { table, source }),
        }
    }

    /// Our tables in the kernel now.
    async fn existing_tables(&self) -> Result<BTreeSet<String>, SyncError> {
        match self.nft.list_tables(self.family()).await {
            Ok(json) => Ok(shard::our_tables(&json)),
            Err(source) => Err(SyncError::List {
                table: format!("{} *", self.family()),
                source,
            }),
        }
    }

    /// Rewrites every table from the model and removes shard tables beyond the layout,
    /// then gives the transaction's memory back to the kernel (`heap::trim`: the
    /// transaction of every table is freed by then, and glibc would keep it resident).
    pub(super) async fn full_sync(&mut self) -> Result<SyncReport, SyncError> {
        let r = self.rewrite_all().await;
        crate::heap::trim();
        r
    }

    /// The full sync proper.
    async fn rewrite_all(&mut self) -> Result<SyncReport, SyncError> {
        let existing = self.existing_tables().await?;
        let observed = self
            .observe(|t| existing.contains(&self.layout.table_name(t)))
            .await?;
        let start = Instant::now();
        for g in &mut self.generations {
            *g += 1;
        }
        // Two passes, each fragment rendered twice: the element index (kept) first, each
        // fragment dropped as soon as its elements are indexed, so the index is not
        // strewn over the pages of the transaction built next, and the heap trim after
        // the sync can give all of those back.
        let mut indexes = vec![ElementIndex::default(); self.layout.tables()];
        let empty = Fragment::default();
        let mut services = BTreeSet::new();
        let mut shard = None;
        for (name, _) in self.services.iter() {
            let Some(f) = self.render_port(name) else {
                continue;
            };
            let t = self.shard_of_port(name, &mut shard);
            // Chains are written below; the diff against nothing only indexes elements.
            let (main, part) = shard::split_fragment(&Fragment {
                elements: f.elements,
                ..Fragment::default()
            });
            let mut scratch = Tx::new();
            scratch.diff(&empty, &main, &mut indexes[MAIN]);
            scratch.diff(&empty, &part, &mut indexes[t]);
            services.insert((&name.namespace, &name.name));
        }
        let services = services.len();
        self.indexes = indexes;
        let family = self.family();
        let mut script = String::new();
        for (w, observed) in self.wanted().iter().zip(&observed) {
            let tx = full_table(family, w, observed, !self.base_recreated);
            script.push_str(&tx.render(family, &w.name, &ElementIndex::default()));
        }
        for stale in existing.iter().filter(|t| self.layout.is_stale_shard(t)) {
            script.push_str(&format!("delete table {family} {stale}\n"));
        }
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
            services,
            script_bytes: script.len(),
            repaired: 0,
            render,
            apply: t0.elapsed(),
            ..SyncReport::default()
        })
    }

    /// Lists our tables and repairs what differs from what was programmed, then gives
    /// the listing's memory back to the kernel (`heap::trim`; every table read back at
    /// once is hundreds of MiB at 30k services).
    ///
    /// # Errors
    /// Listing or applying the repair failed.
    pub async fn check(&mut self) -> Result<SyncReport, SyncError> {
        let r = self.check_all().await;
        crate::heap::trim();
        r
    }

    /// The whole-ruleset check proper.
    async fn check_all(&mut self) -> Result<SyncReport, SyncError> {
        if self.need_full_sync {
            return self.full_sync().await;
        }
        let observed = self.observe(|_| true).await?;
        let start = Instant::now();
        let wanted = self.wanted();
        let base_ok = wanted.iter().zip(&observed).all(|(w, o)| {
            w.base
                .chains
                .iter()
                .all(|c| o.chains.get(&c.name) == Some(&c.rules.len()))
                && w.base.sets.iter().all(|s| o.sets.contains(&s.name))
        });
        if !base_ok {
            tracing::warn!("base chains or maps drifted: full resync");
            self.need_full_sync = true;
            return self.full_sync().await;
        }
        let mut repaired = 0;
        let mut script = String::new();
        for (w, o) in wanted.iter().zip(&observed) {
            let (tx, n) = repair(w, o);
            repaired += n;
            script.push_str(&tx.render(self.family(), &w.name, w.index));
        }
        let mut report = SyncReport {
            repaired,
            script_bytes: script.len(),
            render: start.elapsed(),
            ..SyncReport::default()
        };
        if repaired > 0 {
            tracing::warn!(repaired, "nftables drift repaired");
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

/// The full sync's transaction for one table: the table and its hooks (recreated when
/// `recreate`), base sets flushed and refilled, every chain flushed and rewritten, the
/// elements added, and whatever else the table holds deleted.
fn full_table(family: &str, w: &Wanted<'_>, observed: &Observed, recreate: bool) -> Tx {
    let mut tx = Tx::new();
    let t = format!("{family} {}", w.name);
    let what = if w.name == crate::nft::TABLE {
        "rules for nodelet's service proxy"
    } else {
        "nodelet's service proxy: NAT of one shard of the services"
    };
    tx.head(format!("add table {t} {{ comment \"{what}\"; }}"));
    let base_chains: Vec<_> = w.base.chains.iter().filter(|c| c.hook.is_some()).collect();
    if recreate {
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
    for set in &w.base.sets {
        tx.head(format!(
            "add {} {t} {} {{ {}; }}",
            set.kind, set.name, set.spec
        ));
        tx.head(format!("flush {} {t} {}", set.kind, set.name));
    }
    for (set, elem) in &w.base.set_elements {
        tx.head(format!("add element {t} {set} {{ {elem} }}"));
    }
    let mut wanted_chains: HashSet<&str> = HashSet::new();
    let mut wanted_sets: HashSet<&str> = w.base.sets.iter().map(|s| s.name.as_str()).collect();
    for c in &w.base.chains {
        wanted_chains.insert(&c.name);
        if c.hook.is_none() {
            tx.add_chain(&c.name);
        }
        tx.flush_chain(&c.name);
        tx.rules(c);
    }
    for f in &w.parts {
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
    let mut elements: Vec<(Container, &str, Option<&str>)> = w.index.iter().collect();
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
        tx.delete_set(kind_of(observed, s), s);
    }
    tx
}

fn kind_of(observed: &Observed, set: &str) -> &'static str {
    if observed.maps.contains(set) {
        "map"
    } else {
        "set"
    }
}

/// The repair of one table's drift, and how many things drifted.
pub(super) fn repair(w: &Wanted<'_>, observed: &Observed) -> (Tx, usize) {
    let mut tx = Tx::new();
    let mut repaired = 0;
    let mut wanted_chains: HashSet<&str> = w.base.chains.iter().map(|c| c.name.as_str()).collect();
    let mut wanted_sets: HashSet<&str> = w.base.sets.iter().map(|s| s.name.as_str()).collect();
    for f in &w.parts {
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
        tx.delete_set(kind_of(observed, s), s);
    }
    let mut wanted: HashMap<Container, HashMap<&str, Option<&str>>> = HashMap::new();
    for (c, k, v) in w.index.iter() {
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
    (tx, repaired)
}
