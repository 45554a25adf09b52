//! Stale UDP conntrack entries (upstream's `pkg/proxy/conntrack`, `CleanStaleEntries`):
//! UDP has no connection to end, so a conntrack entry that DNATs a client's flow to an
//! endpoint that went away (or that was made before the service existed and was never
//! DNATed) keeps blackholing that flow until it times out. After a sync that touched UDP
//! services, the proxier lists the UDP entries of its family and deletes exactly those
//! that are stale:
//!
//! - original destination is a UDP service's `(VIP, port)` (cluster IP, external IP,
//!   load-balancer IP) and the reply source is not one of its serving endpoints;
//! - original destination port is a UDP node port, the destination is one of the node's
//!   node-port addresses, and the reply source is not one of its serving endpoints;
//! - original destination is a `(VIP, port)` or node port a UDP service had until this
//!   sync and no UDP service has now (a service deleted or its IP/port changed).
//!
//! Everything else (TCP, other destinations, flows to healthy endpoints) is never touched,
//! so a proxy restart with no changes deletes nothing. The decision is the pure
//! `stale_flows`; the kernel side is the `Conntrack` trait, `netlink::NetlinkConntrack`
//! for real (ctnetlink over `NETLINK_NETFILTER`) and `RecordingConntrack` for tests.

pub mod netlink;
pub mod sysctl;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::model::{EndpointsMap, IpFamily, Protocol, ServicePortMap};

/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;

/// One conntrack entry: the original tuple (what the client sent) and the reply source
/// (who answers: the endpoint after DNAT, the original destination without it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    pub proto: u8,
    pub orig_src: IpAddr,
    pub orig_dst: IpAddr,
    pub orig_sport: u16,
    pub orig_dport: u16,
    pub reply_src: IpAddr,
    /// The conntrack zone (0: the default zone).
    pub zone: u16,
}

/// Why a conntrack operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("opening a netfilter netlink socket failed: {0}")]
    Socket(#[source] std::io::Error),
    #[error("entering network namespace {path} failed: {source}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed netlink answer: {0}")]
    Malformed(String),
}

/// The kernel's conntrack table.
pub trait Conntrack: Send + Sync {
    /// The UDP entries of `family`.
    ///
    /// # Errors
    /// The table could not be read.
    fn list_udp(&self, family: IpFamily) -> Result<Vec<Flow>, ConntrackError>;

    /// Deletes `flows` (their original tuple and zone); returns how many existed.
    ///
    /// # Errors
    /// A delete failed for another reason than the entry being gone already.
    fn delete(&self, family: IpFamily, flows: &[Flow]) -> Result<usize, ConntrackError>;

    /// The addresses of the node's interfaces (node ports are served on them unless
    /// `--nodeport-addresses` narrows them).
    fn local_addresses(&self) -> Vec<IpAddr>;
}

/// What changed in a sync, as far as conntrack is concerned.
#[derive(Debug, Default, Clone)]
pub struct StaleHints {
    /// UDP `(VIP, port)` destinations that went away.
    pub destinations: BTreeSet<(IpAddr, u16)>,
    /// UDP node ports that went away.
    pub node_ports: BTreeSet<u16>,
}

/// The entries among `entries` that are stale for the current services and endpoints
/// (see the module doc). `node_port_ips` are the addresses node ports are served on.
pub fn stale_flows(
    entries: &[Flow],
    services: &ServicePortMap,
    endpoints: &EndpointsMap,
    node_port_ips: &HashSet<IpAddr>,
    gone: &StaleHints,
) -> Vec<Flow> {
    let mut by_vip: HashMap<(IpAddr, u16), HashSet<IpAddr>> = HashMap::new();
    let mut by_node_port: HashMap<u16, HashSet<IpAddr>> = HashMap::new();
    for (name, info) in services.iter() {
        if info.protocol != Protocol::Udp {
            continue;
        }
        let serving: HashSet<IpAddr> = endpoints
            .get(name)
            .iter()
            .filter(|e| e.serving)
            .map(|e| e.ip)
            .collect();
        for ip in std::iter::once(&info.cluster_ip)
            .chain(&info.external_ips)
            .chain(&info.load_balancer_vips)
        {
            by_vip
                .entry((*ip, info.port))
                .or_default()
                .extend(serving.iter().copied());
        }
        if info.node_port != 0 {
            by_node_port
                .entry(info.node_port)
                .or_default()
                .extend(serving.iter().copied());
        }
    }
    entries
        .iter()
        .filter(|f| f.proto == IPPROTO_UDP)
        .filter(|f| {
            let dst = (f.orig_dst, f.orig_dport);
            if let Some(serving) = by_vip.get(&dst) {
                return !serving.contains(&f.reply_src);
            }
            if node_port_ips.contains(&f.orig_dst) {
                if let Some(serving) = by_node_port.get(&f.orig_dport) {
                    return !serving.contains(&f.reply_src);
                }
                if gone.node_ports.contains(&f.orig_dport) {
                    return true;
                }
            }
            gone.destinations.contains(&dst)
        })
        .cloned()
        .collect()
}

/// The fake's state: the table, the deleted entries, how many lists.
type FakeTable = (Vec<Flow>, Vec<Flow>, usize);

/// A fake table for tests: holds flows, records deletions.
#[derive(Debug, Clone, Default)]
pub struct RecordingConntrack {
    inner: Arc<Mutex<FakeTable>>,
    /// What `local_addresses` answers.
    pub local: Vec<IpAddr>,
}

impl RecordingConntrack {
    /// Adds an entry to the fake table.
    pub fn insert(&self, flow: Flow) {
        if let Ok(mut g) = self.inner.lock() {
            g.0.push(flow);
        }
    }

    /// Every entry deleted so far.
    pub fn deleted(&self) -> Vec<Flow> {
        self.inner.lock().map(|g| g.1.clone()).unwrap_or_default()
    }

    /// How many times the table was listed.
    pub fn lists(&self) -> usize {
        self.inner.lock().map(|g| g.2).unwrap_or_default()
    }
}

impl Conntrack for RecordingConntrack {
    fn list_udp(&self, family: IpFamily) -> Result<Vec<Flow>, ConntrackError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| ConntrackError::Malformed("poisoned".into()))?;
        g.2 += 1;
        Ok(g.0
            .iter()
            .filter(|f| f.proto == IPPROTO_UDP && IpFamily::of(&f.orig_dst) == family)
            .cloned()
            .collect())
    }

    fn delete(&self, _family: IpFamily, flows: &[Flow]) -> Result<usize, ConntrackError> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| ConntrackError::Malformed("poisoned".into()))?;
        let before = g.0.len();
        g.0.retain(|f| !flows.contains(f));
        let n = before - g.0.len();
        g.1.extend(flows.iter().cloned());
        Ok(n)
    }

    fn local_addresses(&self) -> Vec<IpAddr> {
        self.local.clone()
    }
}

#[cfg(test)]
mod tests;
