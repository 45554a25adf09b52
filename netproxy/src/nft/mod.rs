//! The nftables backend: upstream's nftables-mode rule structure (`pkg/proxy/nftables`)
//! in tables of our own (`ip nodelet` / `ip6 nodelet` for the filter side and
//! masquerading, `nodelet-<i>` for the NAT side of one shard of the services, see
//! `shard`), rendered as the text `nft -f` reads, and applied one transaction per sync.
//!
//! Why text and not the `nftables` crate's JSON (`nft -j -f`): the crate (0.6) has every
//! expression we need (numgen, fib, vmaps, dynset `update`), but the JSON of the same
//! table is about three times the size and nft reads it more slowly (the bench, 1k
//! services × 10 endpoints: 8.0 MiB and 1.28 s as JSON against 2.5 MiB and 0.97 s as
//! text), nft 1.0.6 cannot even read back its own JSON for `typeof` maps, the text is
//! what upstream's knftables sends and what `nft list` shows an operator, and a text
//! snapshot reads as the ruleset itself. Reading the live tables for the consistency
//! check goes over netlink (`netlink::dump`), or `nft -j` (`listing`) without netlink.
//!
//! - `render`: pure functions from a service port and its endpoints to a `Fragment`
//!   (its chains, affinity sets and map elements), and the fixed base ruleset;
//! - `rule`: the typed rules of fragments, rendered as text and encoded for netlink;
//! - `netlink`: incremental transactions as nf_tables netlink batches (O(change), where
//!   every `nft` run is O(table));
//! - `tx`: a transaction builder ordering commands so references are never dangling, and
//!   the diff of two fragments, rendered as a script or encoded as a netlink batch;
//! - `shard`: which table a service and each part of its fragment live in, and why;
//! - `exec`: the `Nft` seam and the real `nft` runner (timeout, status and output kept);
//! - `listing`: the parsed `nft -j list table`, and the repair of drift found in it.

pub mod exec;
pub mod listing;
pub mod netlink;
pub mod render;
pub mod rule;
pub mod shard;
pub mod tx;

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::model::{Cidr, Endpoint, IpFamily, ServicePortName};

/// Our main table's name in both families (shards are `nodelet-<i>`).
pub const TABLE: &str = "nodelet";

/// The masquerade mark (upstream's default `--iptables-masquerade-bit` 14).
pub const MASQUERADE_MARK: &str = "0x4000";

/// What the rules depend on besides services and endpoints.
#[derive(Debug, Clone)]
pub struct RenderConfig {
    pub family: IpFamily,
    /// `--cluster-cidr`: pod traffic is recognised by it (masquerade of off-cluster
    /// traffic to a ClusterIP, short-circuit of pod traffic for Local policies).
    pub cluster_cidrs: Vec<Cidr>,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// Node IPs accepting NodePorts (resolved from `--nodeport-addresses`); `None` means
    /// every local address (upstream's default).
    pub nodeport_ips: Option<Vec<IpAddr>>,
    /// Service CIDRs: traffic to unallocated ClusterIPs there is dropped.
    pub service_cidrs: Vec<Cidr>,
    /// The node's IP, for `loadBalancerSourceRanges` that include the node.
    pub node_ip: Option<IpAddr>,
}

impl RenderConfig {
    /// A configuration for `family` with upstream's defaults.
    pub fn new(family: IpFamily) -> Self {
        Self {
            family,
            cluster_cidrs: Vec::new(),
            masquerade_all: false,
            nodeport_ips: None,
            service_cidrs: Vec::new(),
            node_ip: None,
        }
    }

    /// `ip` or `ip6`: the table family and the address match keyword.
    pub fn ip(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }

    /// `ipv4_addr` or `ipv6_addr`.
    pub fn addr_type(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "ipv4_addr",
            IpFamily::V6 => "ipv6_addr",
        }
    }

    /// The loopback exclusion for NodePorts.
    pub fn no_localhost(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "ip daddr != 127.0.0.0/8",
            IpFamily::V6 => "ip6 daddr != ::1",
        }
    }

    /// The match for traffic from pods (`ip saddr { cidrs }`), if the cluster CIDR is known.
    pub fn if_local(&self, negate: bool) -> Option<rule::Match> {
        let nets: Vec<rule::Net> = self
            .cluster_cidrs
            .iter()
            .filter(|c| c.family() == self.family)
            .map(|c| rule::Net::Prefix(*c))
            .collect();
        if nets.is_empty() {
            return None;
        }
        Some(rule::Match::Addr {
            dir: rule::Dir::Saddr,
            negate,
            nets,
            braces: false,
        })
    }
}

/// The maps and sets every service port puts elements into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Container {
    /// set: active ClusterIPs.
    ClusterIps,
    /// map: ClusterIP, external IP and load-balancer IP dispatch.
    ServiceIps,
    /// map: NodePort dispatch.
    ServiceNodePorts,
    /// map: drop or reject for services without endpoints.
    NoEndpointServices,
    /// map: drop or reject for node ports without endpoints.
    NoEndpointNodePorts,
    /// map: destinations subject to `loadBalancerSourceRanges`.
    FirewallIps,
}

impl Container {
    pub const ALL: [Container; 6] = [
        Container::ClusterIps,
        Container::ServiceIps,
        Container::ServiceNodePorts,
        Container::NoEndpointServices,
        Container::NoEndpointNodePorts,
        Container::FirewallIps,
    ];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Container::ClusterIps => "cluster-ips",
            Container::ServiceIps => "service-ips",
            Container::ServiceNodePorts => "service-nodeports",
            Container::NoEndpointServices => "no-endpoint-services",
            Container::NoEndpointNodePorts => "no-endpoint-nodeports",
            Container::FirewallIps => "firewall-ips",
        }
    }

    /// `set` or `map` (the keyword of `add`/`flush`).
    pub fn kind(self) -> &'static str {
        match self {
            Container::ClusterIps => "set",
            _ => "map",
        }
    }

    /// The container named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Upstream's chain-name hash: the first 8 characters of the base32 SHA-256.
fn hash8(input: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input.as_bytes());
    // 8 base32 characters are exactly the first 40 bits.
    let mut bits: u64 = 0;
    for b in &digest[..5] {
        bits = (bits << 8) | u64::from(*b);
    }
    (0..8)
        .map(|i| char::from(ALPHABET[((bits >> (35 - 5 * i)) & 31) as usize]))
        .collect()
}

/// `HASH-ns/name/proto/port`: the part every chain of a service port shares; the hash
/// is over the rest of the name, as upstream's `servicePortChainNameBase`.
pub fn chain_base(spn: &ServicePortName) -> String {
    let name = format!(
        "{}/{}/{}/{}",
        spn.namespace,
        spn.name,
        spn.protocol.as_str(),
        spn.port
    );
    format!("{}-{name}", hash8(&name))
}

/// `HASH-ns/name/proto/port__ip/port`: an endpoint's chain and affinity-set suffix. IPv6
/// colons become dots: nft identifiers may not hold a colon.
pub fn endpoint_base(spn: &ServicePortName, ep: &Endpoint) -> String {
    let ip = ep.ip.to_string().replace(':', ".");
    let name = format!(
        "{}/{}/{}/{}__{ip}/{}",
        spn.namespace,
        spn.name,
        spn.protocol.as_str(),
        spn.port,
        ep.port
    );
    format!("{}-{name}", hash8(&name))
}

/// Whether a chain name is one of the per-service chains (as opposed to the fixed ones).
pub fn is_service_chain(name: &str) -> bool {
    ["service-", "local-", "external-", "firewall-", "endpoint-"]
        .iter()
        .any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    #[test]
    fn chain_names_follow_upstream_shape() {
        let spn = ServicePortName {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port: "p80".into(),
            protocol: Protocol::Tcp,
        };
        let base = chain_base(&spn);
        assert_eq!(base.len(), 8 + "-ns1/svc1/tcp/p80".len());
        assert!(base.ends_with("-ns1/svc1/tcp/p80"));
        assert!(
            base[..8]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        // Upstream's own test data: service-ULMVA6XW-ns1/svc1/tcp/p80.
        assert_eq!(&base[..8], "ULMVA6XW");
        let ep = Endpoint {
            ip: "fd00::1".parse().expect("ip"),
            port: 80,
            is_local: false,
            ready: true,
            serving: true,
            terminating: false,
            zone_hints: Default::default(),
            node_hints: Default::default(),
        };
        assert!(endpoint_base(&spn, &ep).ends_with("-ns1/svc1/tcp/p80__fd00..1/80"));
        let ep = Endpoint {
            ip: "10.180.0.1".parse().expect("ip"),
            ..ep
        };
        assert_eq!(
            endpoint_base(&spn, &ep),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }
}
