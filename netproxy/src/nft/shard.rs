//! Services spread over several tables so a change validates only a shard.
//!
//! Why: at commit, nf_tables re-walks every chain reachable from a table's base chains
//! whenever the transaction adds a `jump`/`goto` (a rule or a verdict-map element), to
//! rule out loops. With one table that walk is O(all services): 160 ms of kernel CPU per
//! commit at 10k services × 10 endpoints, 530 ms at 30k, whatever the change. The walk is
//! per table, so each service lives in one of `k` shard tables and a change walks 1/k.
//!
//! What sharding cannot remove: every commit also walks every chain of every table in
//! the network namespace (`nf_tables_commit`, making new rule blobs visible), O(all
//! chains) whatever the change: ~5–6 ms per 100k chains, ~17 ms at 30k services × 10
//! endpoints (`benches/COMMIT_COST.md`). Sharding divides the validation, not that.
//!
//! The layout (each family):
//! - `nodelet` (main): the filter side, unchanged from upstream's structure: the filter
//!   hook chains, `firewall-check` and the per-service `firewall-*` chains,
//!   `cluster-ips-check` with the `cluster-ips` set, `service-endpoints-check` and
//!   `nodeport-endpoints-check` with the `no-endpoint-*` maps, `reject-chain`, and the
//!   one `nat-postrouting` hook with `masquerading`, so masquerading happens once.
//! - `nodelet-<i>`, `i < k` (shards): the NAT side of the services hashed to `i`
//!   (`shard_of`): its own `nat-prerouting`/`nat-output` hooks (priority -100, as before)
//!   jumping to its `services` chain, its `service-ips`/`service-nodeports` maps, its
//!   `mark-for-masquerade` (it only sets the packet mark, which `masquerading` in the
//!   main table reads), and the service, local, external and endpoint chains with their
//!   endpoint maps and affinity sets.
//!
//! Why the semantics do not change: NAT base chains at one hook run in priority order
//! until one of them sets up the mapping; once a chain DNATs a new connection the core
//! (`nf_nat_inet_fn`) stops calling the others. A service's keys sit in exactly one
//! shard, so for any packet at most one shard matches and the others fall through, as a
//! miss in the single `service-ips` map did. The filter checks reject or drop on a match
//! and otherwise fall through, and they all stay in the main table, so their order
//! (e.g. a known ClusterIP with a wrong port rejected before the service CIDR drop) is
//! upstream's. Only a key claimed by two services (the same external IP and port) could
//! now resolve to the other one; upstream's winner there is unspecified too.
//!
//! `k` is fixed (`DEFAULT_SHARDS`), not derived from the service count: moving services
//! between tables when the count crosses a threshold needs a full resync, and a fixed
//! hash keeps every service in place across restarts. 16 brings the walk at 30k services
//! to that of one table of ~1.9k; each new connection pays 16 NAT-chain map lookups in
//! place of one (conntracked packets after the first never see NAT chains).

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use super::exec::{Nft, NftError};
use super::render::{self, Base, Chain, Fragment};
use super::{Container, TABLE};
use crate::model::ServiceName;

/// Shards when none is configured (see the module docs).
pub const DEFAULT_SHARDS: usize = 16;

/// Base chains and sets of every shard; the rest of `render::base` is the main table's.
const SHARD_CHAINS: [&str; 4] = [
    "nat-prerouting",
    "nat-output",
    render::SERVICES,
    render::MARK_MASQ,
];

/// Which table something lives in: 0 is the main table, `i + 1` shard `i`.
pub type TableIx = usize;

/// The main table's index.
pub const MAIN: TableIx = 0;

/// The shard layout of one family: `shards` shard tables besides the main one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    shards: usize,
}

impl Default for Layout {
    fn default() -> Self {
        Self::new(DEFAULT_SHARDS)
    }
}

impl Layout {
    /// A layout of `shards` shard tables (at least one).
    pub fn new(shards: usize) -> Self {
        Self {
            shards: shards.max(1),
        }
    }

    /// Number of shard tables.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Number of tables, the main one included.
    pub fn tables(&self) -> usize {
        self.shards + 1
    }

    /// The table name of index `t`.
    pub fn table_name(&self, t: TableIx) -> String {
        if t == MAIN {
            TABLE.to_string()
        } else {
            format!("{TABLE}-{}", t - 1)
        }
    }

    /// The table index of `service` (a stable hash of namespace/name, so every port of
    /// a service, and the service across restarts, stays in one shard).
    pub fn shard_of(&self, service: &ServiceName) -> TableIx {
        let digest = Sha256::digest(format!("{}/{}", service.namespace, service.name).as_bytes());
        let h = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
        1 + (h as usize) % self.shards
    }

    /// Whether `name` is a shard table of ours that this layout does not have (left by a
    /// run with more shards).
    pub fn is_stale_shard(&self, name: &str) -> bool {
        shard_number(name).is_some_and(|n| n >= self.shards)
    }
}

/// `N` of a table named `nodelet-N`.
fn shard_number(name: &str) -> Option<usize> {
    let n = name.strip_prefix(TABLE)?.strip_prefix('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Whether `name` is one of our tables (main or any shard).
pub fn is_ours(name: &str) -> bool {
    name == TABLE || shard_number(name).is_some()
}

/// The full base split into the main table's part and every shard's part.
pub fn split_base(base: &Base) -> (Base, Base) {
    let (shard_chains, main_chains): (Vec<Chain>, Vec<Chain>) = base
        .chains
        .iter()
        .cloned()
        .partition(|c| SHARD_CHAINS.contains(&c.name.as_str()));
    let in_shard = |name: &str| {
        Container::from_name(name).is_some_and(|c| container_table(c) != MAIN)
            || name == render::NODEPORT_IPS
    };
    let in_main = |name: &str| {
        Container::from_name(name).is_none_or(|c| container_table(c) == MAIN)
            || name == render::NODEPORT_IPS
    };
    let main = Base {
        chains: main_chains,
        sets: base
            .sets
            .iter()
            .filter(|s| in_main(&s.name))
            .cloned()
            .collect(),
        set_elements: base
            .set_elements
            .iter()
            .filter(|(s, _)| in_main(s))
            .cloned()
            .collect(),
    };
    let shard = Base {
        chains: shard_chains,
        sets: base
            .sets
            .iter()
            .filter(|s| in_shard(&s.name))
            .cloned()
            .collect(),
        set_elements: base
            .set_elements
            .iter()
            .filter(|(s, _)| in_shard(s))
            .cloned()
            .collect(),
    };
    (main, shard)
}

/// Where a container's elements go: the NAT dispatch maps to the shard (`!= MAIN`), the
/// filter side to the main table.
pub fn container_table(c: Container) -> TableIx {
    match c {
        Container::ServiceIps | Container::ServiceNodePorts => 1,
        Container::ClusterIps
        | Container::NoEndpointServices
        | Container::NoEndpointNodePorts
        | Container::FirewallIps => MAIN,
    }
}

/// A service port's fragment split into its main-table part (firewall chains, filter-side
/// elements) and its shard part (everything else).
pub fn split_fragment(f: &Fragment) -> (Fragment, Fragment) {
    (main_part(f), shard_part(f))
}

/// The main-table part of a fragment alone (the check of the main table needs no copy
/// of the shard parts, which hold nearly all the chains).
pub fn main_part(f: &Fragment) -> Fragment {
    Fragment {
        chains: f
            .chains
            .iter()
            .filter(|c| c.name.starts_with("firewall-"))
            .cloned()
            .collect(),
        elements: f
            .elements
            .iter()
            .filter(|e| container_table(e.container) == MAIN)
            .cloned()
            .collect(),
        sets: Vec::new(),
    }
}

/// The shard part of a fragment alone.
pub fn shard_part(f: &Fragment) -> Fragment {
    Fragment {
        chains: f
            .chains
            .iter()
            .filter(|c| !c.name.starts_with("firewall-"))
            .cloned()
            .collect(),
        sets: f.sets.clone(),
        elements: f
            .elements
            .iter()
            .filter(|e| container_table(e.container) != MAIN)
            .cloned()
            .collect(),
    }
}

/// Names of our tables in `family` (`ip`/`ip6`) from `nft -j list tables` output.
pub fn our_tables(json: &str) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["table"]["name"].as_str())
        .filter(|n| is_ours(n))
        .map(str::to_string)
        .collect()
}

/// Removes every table of ours (main and shards, whatever their number) in both
/// families, in one transaction per family (`--cleanup`).
///
/// # Errors
/// Listing the tables or deleting them failed.
pub async fn cleanup<N: Nft>(nft: &N) -> Result<usize, NftError> {
    let mut removed = 0;
    for family in ["ip", "ip6"] {
        let tables = our_tables(&nft.list_tables(family).await?);
        if tables.is_empty() {
            continue;
        }
        let script: String = tables
            .iter()
            .map(|t| format!("delete table {family} {t}\n"))
            .collect();
        nft.apply(&script).await?;
        removed += tables.len();
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpFamily;
    use crate::nft::RenderConfig;

    #[test]
    fn shards_are_stable_and_spread() {
        let l = Layout::new(16);
        let svc = |n: usize| ServiceName {
            namespace: "ns".into(),
            name: format!("svc-{n}"),
        };
        let mut counts = [0usize; 17];
        for n in 0..16_000 {
            let t = l.shard_of(&svc(n));
            assert!((1..=16).contains(&t));
            counts[t] += 1;
        }
        assert_eq!(counts[MAIN], 0);
        // Within 10 % of the mean everywhere.
        assert!(
            counts[1..].iter().all(|c| (900..1100).contains(c)),
            "{counts:?}"
        );
        assert_eq!(l.shard_of(&svc(7)), Layout::new(16).shard_of(&svc(7)));
        assert_eq!(l.table_name(MAIN), "nodelet");
        assert_eq!(l.table_name(3), "nodelet-2");
    }

    #[test]
    fn stale_and_foreign_tables() {
        let l = Layout::new(4);
        assert!(l.is_stale_shard("nodelet-4") && l.is_stale_shard("nodelet-17"));
        assert!(!l.is_stale_shard("nodelet-3") && !l.is_stale_shard("nodelet"));
        assert!(!is_ours("nodelet-x") && !is_ours("nodelets") && !is_ours("nodelet-"));
        let json = r#"{"nftables": [{"metainfo": {}}, {"table": {"family": "ip", "name": "nodelet"}},
            {"table": {"family": "ip", "name": "nodelet-9"}}, {"table": {"family": "ip", "name": "filter"}}]}"#;
        let t: Vec<String> = our_tables(json).into_iter().collect();
        assert_eq!(t, ["nodelet", "nodelet-9"]);
    }

    #[test]
    fn base_split_keeps_masquerading_once_and_nat_dispatch_per_shard() {
        let mut cfg = RenderConfig::new(IpFamily::V4);
        cfg.nodeport_ips = Some(vec!["192.0.2.1".parse().expect("ip")]);
        let full = render::base(&cfg);
        let (main, shard) = split_base(&full);
        let names = |b: &Base| b.chains.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&shard),
            [
                "nat-prerouting",
                "nat-output",
                "mark-for-masquerade",
                "services"
            ]
        );
        assert!(names(&main).contains(&"nat-postrouting".to_string()));
        assert!(names(&main).contains(&"masquerading".to_string()));
        assert_eq!(main.chains.len() + shard.chains.len(), full.chains.len());
        let sets = |b: &Base| b.sets.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            sets(&shard),
            ["service-ips", "service-nodeports", "nodeport-ips"]
        );
        assert!(sets(&main).contains(&"nodeport-ips".to_string()));
        assert_eq!(shard.set_elements.len(), 1);
        assert_eq!(main.set_elements.len(), 1);
    }
}
