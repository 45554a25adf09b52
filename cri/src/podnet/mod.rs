//! nodelet's built-in pod network, used when the CNI config directory holds no
//! configuration: what the bridge + host-local chain nodelet used to write as its default
//! gives a pod, done in-process instead of by exec'ing three plugin binaries per pod.
//!
//! The pod CIDR is one range of either family or two, one IPv4 and one IPv6
//! (dual-stack, as upstream's `podCIDRs`). Per pod: an address from each range
//! ([`ipam`], persisted under the root dir), a veth pair whose host end sits on the
//! bridge with hairpin on and whose peer is the pod's `eth0`, the addresses on `eth0`,
//! `lo` up and a default route per family via the bridge's gateway address of that
//! family ([`link`], over netlink). Once per network: the bridge with a gateway address
//! per range, forwarding of each family, and (with `ip_masq`) a masquerade rule per
//! range in an nftables table of its own per family (`ip` and `ip6`, same name,
//! [`nft`]), removed with the last pod. A pod's hostPorts ([`hostport`], what the
//! `portmap` plugin gives) are DNAT rules in the same tables: a `hostIP` maps only its
//! family, none maps both. The pod's IPs are reported in the ranges' order (the
//! kubelet puts the node IP's family first).
//!
//! The ranges can change while pods run ([`PodNetwork::set_pod_cidr`]: in a cluster the
//! Node's `spec.podCIDRs`, assigned by the controller manager after registration,
//! replace `--pod-cidr`, as upstream's `updatePodCIDR`): new pods get addresses from the
//! new ranges, the bridge gets their gateway addresses beside the old ones, and pods
//! already running keep their addresses (and their masquerade) until they go. The old
//! ranges are remembered in the allocation directory (`retired_ranges`) while any of
//! their addresses is held, so a restart keeps masquerading them. The allocation store
//! is one directory for every range, addresses as file names, so an address is never
//! handed out twice across a change either. Its blocking file I/O runs on tokio's
//! blocking threads.
//!
//! No pool of namespaces prepared ahead of demand: measured in `benches/kubelet_vs.rs`
//! (`floor-netonly`), a pod's netns and its attachment cost ~3 ms of CPU, and 10, 30
//! and 110 pods get theirs at once in 0.03, 0.07 and 0.26 s, 2–5 % of what starting
//! the same pods' containers takes (0.6–0.75, 2.2–2.5 and 10.2–14 s), below the
//! spread between runs; a pool would still allocate and assign the addresses on use.

pub mod hostport;
pub mod ipam;
mod link;
mod nft;

pub use hostport::{PortMapping, Protocol};

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use tokio::sync::{Mutex, OnceCell};
use tracing::{debug, info};

use ipam::{Cidr, Store};

/// The file (in the allocation directory) naming the earlier ranges whose addresses
/// may still be held.
const RETIRED: &str = "retired_ranges";

/// Errors of the built-in pod network.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    /// The pod CIDR does not parse or is too small.
    #[error("invalid pod CIDR {cidr:?}: {reason}")]
    InvalidCidr {
        /// The value given.
        cidr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Every address of the range is allocated.
    #[error("no IP addresses available in range set: {cidr}")]
    Exhausted {
        /// The range.
        cidr: String,
    },
    /// The allocation store could not be read or written.
    #[error("IP allocation store {}: {source}", path.display())]
    Ipam {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A netlink socket could not be opened (in the named namespace).
    #[error("netlink socket in {netns}: {source}")]
    Socket {
        /// The namespace path, or `(host)`.
        netns: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{op} {name}: {source}")]
    Netlink {
        /// What was asked.
        op: &'static str,
        /// The link it was about.
        name: String,
        /// The kernel's answer.
        source: Box<rtnetlink::Error>,
    },
    /// A link just made was not found.
    #[error("link {0} not found")]
    Missing(String),
    /// A sysctl could not be set.
    #[error("set {}: {source}", path.display())]
    Sysctl {
        /// The /proc/sys file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `nft` failed.
    #[error("nftables: {detail}")]
    Nft {
        /// What failed, with nft's stderr.
        detail: String,
        /// The script it was given.
        script: String,
    },
}

/// What the built-in network is: the same knobs as the default CNI config had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinNetwork {
    /// Linux bridge name, at most 15 bytes.
    pub bridge: String,
    /// The pod CIDR at start: one range of either family, or two comma-separated (one
    /// IPv4, one IPv6); the bridge takes the first address of each.
    pub pod_cidr: String,
    /// Masquerade traffic leaving the pod CIDR.
    pub ip_masq: bool,
    /// Where allocations are kept (under the agent's root dir).
    pub state_dir: PathBuf,
}

/// The built-in network, ready to attach pods.
#[derive(Debug)]
pub struct PodNetwork {
    cfg: BuiltinNetwork,
    /// The allocations of every range, past and present.
    store: Arc<Store>,
    /// The ranges new pods get addresses from, in order.
    ranges: std::sync::RwLock<Vec<Cidr>>,
    /// Earlier ranges that pods may still hold addresses of (kept in [`RETIRED`]).
    retired: std::sync::Mutex<Vec<Cidr>>,
    /// The host namespace's netlink handle, made on first use.
    handle: OnceCell<rtnetlink::Handle>,
    /// The bridge's index and the ranges whose gateway it has been given, once it is
    /// made (by the first setup, never by a teardown).
    bridge: Mutex<Option<(u32, Vec<Cidr>)>>,
    /// The pods' hostPorts, by sandbox ID.
    hostports: Arc<hostport::Store>,
    /// Whether the nft table is installed; serialises its rendering and removal.
    table: Mutex<bool>,
}

/// The host end of a pod's veth: derived from the sandbox ID, so teardown (and reclaim
/// after a crash) finds it without state.
pub fn host_veth_name(container_id: &str) -> String {
    let short: String = container_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(11)
        .collect();
    format!("veth{short}")
}

impl PodNetwork {
    /// Checks the configuration; touches nothing until the first pod.
    ///
    /// # Errors
    ///
    /// [`PodNetError::InvalidCidr`].
    pub fn new(cfg: BuiltinNetwork) -> Result<Self, PodNetError> {
        let cidrs = parse_pod_cidrs(&cfg.pod_cidr)?;
        // Every range keeps its files in one directory (file names are addresses).
        let dir = cfg.state_dir.join("ipam").join(&cfg.bridge);
        // Unreadable or bad entries are dropped: at worst an old range's pods lose
        // their masquerade, never an address.
        let retired: Vec<Cidr> = std::fs::read_to_string(dir.join(RETIRED))
            .unwrap_or_default()
            .split(',')
            .filter_map(|c| Cidr::parse(c).ok())
            .filter(|c| !cidrs.contains(c))
            .collect();
        let hostports = hostport::Store::new(cfg.state_dir.join("hostports").join(&cfg.bridge));
        Ok(PodNetwork {
            cfg,
            store: Arc::new(Store::new(dir)),
            ranges: std::sync::RwLock::new(cidrs),
            retired: std::sync::Mutex::new(retired),
            handle: OnceCell::new(),
            bridge: Mutex::new(None),
            hostports: Arc::new(hostports),
            table: Mutex::new(false),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BuiltinNetwork {
        &self.cfg
    }

    async fn handle(&self) -> Result<&rtnetlink::Handle, PodNetError> {
        self.handle
            .get_or_try_init(|| async { link::connect() })
            .await
    }

    /// The ranges new pods get addresses from, in order.
    pub fn cidrs(&self) -> Vec<Cidr> {
        self.ranges
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The pod CIDR new pods get addresses from, as `--pod-cidr` spells it.
    pub fn pod_cidr(&self) -> String {
        join(&self.cidrs())
    }

    /// Earlier ranges whose addresses pods may still hold.
    pub fn retired_cidrs(&self) -> Vec<Cidr> {
        self.retired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Switches the ranges new pods get addresses from to `value` (as `--pod-cidr`
    /// takes it), as upstream's `updatePodCIDR`: pods already running keep their
    /// addresses, which stay allocated (and masqueraded) until released; the bridge, if
    /// made, gets the new gateway addresses at once. Returns the previous pod CIDR, or
    /// `None` when `value` is the current one.
    ///
    /// # Errors
    ///
    /// [`PodNetError::InvalidCidr`] (nothing changes), and store, netlink or nft errors
    /// (the new ranges are in use all the same: the next setup retries the bridge).
    pub async fn set_pod_cidr(&self, value: &str) -> Result<Option<String>, PodNetError> {
        let new = parse_pod_cidrs(value)?;
        let old = {
            let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
            if *ranges == new {
                return Ok(None);
            }
            std::mem::replace(&mut *ranges, new.clone())
        };
        let retired = {
            let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
            for c in &old {
                if !retired.contains(c) {
                    retired.push(*c);
                }
            }
            retired.retain(|c| !new.contains(c));
            retired.clone()
        };
        info!(original = %join(&old), new = %join(&new), bridge = %self.cfg.bridge,
            "built-in pod network: pod CIDR changed; new pods get addresses from the new ranges");
        self.save_retired(retired).await?;
        let made = self.bridge.lock().await.is_some();
        if made {
            self.bridge(&new).await?;
        }
        let installed = self.table.lock().await;
        if *installed {
            self.render_table().await?;
        }
        Ok(Some(join(&old)))
    }

    /// Writes the retired ranges next to the allocations (atomically: a crash leaves
    /// the old list or the new).
    async fn save_retired(&self, retired: Vec<Cidr>) -> Result<(), PodNetError> {
        self.blocking(move |store| {
            let path = store.dir().join(RETIRED);
            let tmp = store.dir().join(format!(".{RETIRED}.tmp"));
            let err = |path: &Path| {
                let path = path.to_path_buf();
                move |source| PodNetError::Ipam { path, source }
            };
            std::fs::create_dir_all(store.dir()).map_err(err(store.dir()))?;
            std::fs::write(&tmp, join(&retired)).map_err(err(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(err(&path))
        })
        .await
    }

    /// Runs `f` on the store on a blocking thread: its file I/O (and the in-process
    /// lock it takes) never stalls an async worker thread.
    async fn blocking<T, F>(&self, f: F) -> Result<T, PodNetError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, PodNetError> + Send + 'static,
    {
        off_thread(Arc::clone(&self.store), self.store.dir(), f).await
    }

    /// Runs `f` on the hostPorts store on a blocking thread.
    async fn hostports<T, F>(&self, f: F) -> Result<T, PodNetError>
    where
        T: Send + 'static,
        F: FnOnce(&hostport::Store) -> Result<T, PodNetError> + Send + 'static,
    {
        let dir = self.cfg.state_dir.join("hostports");
        off_thread(Arc::clone(&self.hostports), &dir, f).await
    }

    /// The bridge's index, made (or given the gateway addresses of `cidrs` it lacks).
    async fn bridge(&self, cidrs: &[Cidr]) -> Result<u32, PodNetError> {
        let mut bridge = self.bridge.lock().await;
        if let Some((index, done)) = &*bridge
            && cidrs.iter().all(|c| done.contains(c))
        {
            return Ok(*index);
        }
        let mut done = bridge.as_ref().map(|(_, d)| d.clone()).unwrap_or_default();
        let gateways: Vec<(IpAddr, u8)> = cidrs
            .iter()
            .filter(|c| !done.contains(c))
            .map(|c| (c.gateway(), c.prefix))
            .collect();
        let handle = self.handle().await?;
        let index = link::ensure_bridge(handle, &self.cfg.bridge, &gateways).await?;
        done.extend(
            cidrs
                .iter()
                .filter(|c| !done.contains(c))
                .collect::<Vec<_>>(),
        );
        *bridge = Some((index, done));
        Ok(index)
    }

    /// Every (address, sandbox ID) of every range, past and present.
    async fn allocations(&self) -> Result<Vec<(IpAddr, String)>, PodNetError> {
        self.blocking(Store::allocations).await
    }

    /// Attaches the pod whose sandbox is `container_id` and whose netns is pinned at
    /// `netns`, with its hostPorts `ports`; returns its IPs, one per range in the ranges'
    /// order. On failure nothing of the attempt is left (the addresses are released, the
    /// veth deleted, the hostPorts gone).
    ///
    /// # Errors
    ///
    /// [`PodNetError::Exhausted`] when a range is full, and netlink, nft or store errors.
    pub async fn setup(
        &self,
        container_id: &str,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<Vec<IpAddr>, PodNetError> {
        let cidrs = self.cidrs();
        let mut addrs = Vec::with_capacity(cidrs.len());
        for cidr in &cidrs {
            let (cidr, id) = (*cidr, container_id.to_owned());
            match self.blocking(move |s| s.allocate(cidr, &id)).await {
                Ok(ip) => addrs.push(link::PodAddr {
                    ip,
                    prefix: cidr.prefix,
                    gateway: cidr.gateway(),
                }),
                Err(e) => {
                    if let Err(undo) = self.teardown(container_id).await {
                        debug!(container_id, error = %undo, "undoing a failed allocation");
                    }
                    return Err(e);
                }
            }
        }
        crate::failpoint::hit("podnet-after-ipam");
        match self
            .attach(container_id, netns, &cidrs, &addrs, ports)
            .await
        {
            Ok(()) => {
                let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip).collect();
                info!(container_id, ips = ?ips, bridge = %self.cfg.bridge, "pod network set up (built-in)");
                Ok(ips)
            }
            Err(e) => {
                if let Err(undo) = self.teardown(container_id).await {
                    debug!(container_id, error = %undo, "undoing a failed built-in network setup");
                }
                Err(e)
            }
        }
    }

    async fn attach(
        &self,
        container_id: &str,
        netns: &Path,
        cidrs: &[Cidr],
        addrs: &[link::PodAddr],
        ports: &[PortMapping],
    ) -> Result<(), PodNetError> {
        let bridge = self.bridge(cidrs).await?;
        let handle = self.handle().await?;
        if !ports.is_empty() {
            // Saved before the rules, so a crash from here on is undone by the reclaim.
            let (id, ports) = (container_id.to_owned(), ports.to_vec());
            self.hostports(move |h| h.save(&id, &ports)).await?;
            link::route_localnet(&self.cfg.bridge)?;
        }
        {
            let mut installed = self.table.lock().await;
            if !ports.is_empty() || (self.cfg.ip_masq && !*installed) {
                self.render_table().await?;
                *installed = true;
            }
        }
        link::attach(handle, bridge, &host_veth_name(container_id), netns, addrs).await
    }

    /// Detaches a pod: deletes its veth if its netns did not take it along, releases its
    /// addresses, and with the last pod gone removes the masquerade tables. Repeating it, or
    /// calling it for a sandbox the network never saw, succeeds.
    ///
    /// # Errors
    ///
    /// Netlink, nft or store errors.
    pub async fn teardown(&self, container_id: &str) -> Result<(), PodNetError> {
        let handle = self.handle().await?;
        link::detach(handle, &host_veth_name(container_id)).await?;
        let mut installed = self.table.lock().await;
        // The hostPorts go first: no DNAT is ever left to an address given back.
        let id = container_id.to_owned();
        let had_ports = self.hostports(move |h| h.remove(&id)).await?;
        let id = container_id.to_owned();
        let released = self.blocking(move |s| s.release(&id)).await?;
        if !released.is_empty() {
            info!(container_id, ips = ?released, "pod network torn down (built-in)");
        }
        if self.allocations().await?.is_empty() {
            // Always: a table a crashed agent left goes too.
            nft::remove(&nft::table_name(&self.cfg.bridge)).await?;
            *installed = false;
            let forget = !self.retired_cidrs().is_empty();
            if forget {
                self.retired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                self.save_retired(Vec::new()).await?;
            }
        } else if had_ports || !*installed {
            // Rendered once after a restart too: an agent killed mid-teardown may have
            // left rules of a pod whose hostPorts file is already gone.
            self.render_table().await?;
            *installed = true;
        }
        Ok(())
    }

    /// Renders the whole nft tables from the pods' addresses and saved hostPorts: the
    /// current ranges, and the retired ones some pod still holds an address of.
    async fn render_table(&self) -> Result<(), PodNetError> {
        let allocations = self.allocations().await?;
        let mut cidrs = self.cidrs();
        cidrs.extend(
            self.retired_cidrs()
                .into_iter()
                .filter(|c| allocations.iter().any(|(ip, _)| c.contains(*ip))),
        );
        let mut ips: std::collections::BTreeMap<String, Vec<IpAddr>> = Default::default();
        for (ip, id) in allocations {
            ips.entry(id).or_default().push(ip);
        }
        let pods: Vec<(IpAddr, Vec<PortMapping>)> = self
            .hostports(hostport::Store::load_all)
            .await?
            .into_iter()
            .flat_map(|(id, ports)| {
                ips.get(&id)
                    .into_iter()
                    .flatten()
                    .map(move |ip| (*ip, ports.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        nft::install(
            &nft::table_name(&self.cfg.bridge),
            &cidrs,
            self.cfg.ip_masq,
            &pods,
        )
        .await
    }

    /// Whether `container_id` holds an address of this network.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Ipam`] when the store cannot be read.
    pub async fn holds(&self, container_id: &str) -> Result<bool, PodNetError> {
        Ok(self
            .allocations()
            .await?
            .iter()
            .any(|(_, id)| id == container_id))
    }

    /// Every sandbox ID holding an address (for reclaim after a crash).
    ///
    /// # Errors
    ///
    /// [`PodNetError::Ipam`] when the store cannot be read.
    pub async fn allocated_ids(&self) -> Result<Vec<String>, PodNetError> {
        let mut ids: Vec<String> = self
            .allocations()
            .await?
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Whether the host end of `container_id`'s veth exists (for tests).
    ///
    /// # Errors
    ///
    /// Netlink errors.
    pub async fn has_veth(&self, container_id: &str) -> Result<bool, PodNetError> {
        let handle = self.handle().await?;
        link::exists(handle, &host_veth_name(container_id)).await
    }
}

/// Runs `f` on `state` on one of tokio's blocking threads (the stores' file I/O, and the
/// allocation store's in-process lock, never stall an async worker thread); a task that
/// could not finish is an I/O error on `path`.
async fn off_thread<S, T, F>(state: Arc<S>, path: &Path, f: F) -> Result<T, PodNetError>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&S) -> Result<T, PodNetError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(|e| PodNetError::Ipam {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Ranges comma-joined, as `--pod-cidr` takes them.
fn join(cidrs: &[Cidr]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `--pod-cidr`: one range of either family, or two comma-separated of different
/// families (upstream's `podCIDRs` rule: at most one per family).
///
/// # Errors
///
/// [`PodNetError::InvalidCidr`] naming the flag.
pub fn parse_pod_cidrs(value: &str) -> Result<Vec<Cidr>, PodNetError> {
    let bad = |reason: &'static str| PodNetError::InvalidCidr {
        cidr: value.to_owned(),
        reason,
    };
    let cidrs = value
        .split(',')
        .map(Cidr::parse)
        .collect::<Result<Vec<_>, _>>()?;
    match cidrs.as_slice() {
        [_] => Ok(cidrs),
        [a, b] if a.is_ipv6() != b.is_ipv6() => Ok(cidrs),
        [_, _] => Err(bad(
            "--pod-cidr takes at most one CIDR per IP family (one IPv4 and one IPv6)",
        )),
        _ => Err(bad(
            "--pod-cidr takes one CIDR, or two comma-separated (one IPv4 and one IPv6)",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidr_takes_one_range_or_one_per_family() {
        let one = parse_pod_cidrs("fd00:88::/64").unwrap();
        assert_eq!(one.len(), 1);
        assert!(one[0].is_ipv6());
        let dual = parse_pod_cidrs("fd00:88::/64,10.88.0.0/16").unwrap();
        assert_eq!(
            dual.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["fd00:88::/64", "10.88.0.0/16"]
        );
        for (bad, why) in [
            (
                "10.88.0.0/16,10.89.0.0/16",
                "at most one CIDR per IP family",
            ),
            ("fd00::/64,fd01::/64", "at most one CIDR per IP family"),
            ("10.88.0.0/16,fd00::/64,10.1.0.0/16", "two comma-separated"),
            ("10.88.0.0/16,", "not address/prefix"),
        ] {
            let err = parse_pod_cidrs(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            if why.contains("IP family") {
                assert!(err.contains("--pod-cidr"), "{err}");
            }
        }
    }
}
