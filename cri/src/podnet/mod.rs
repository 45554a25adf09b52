//! nodelet's built-in pod network, used when the CNI config directory holds no
//! configuration: what the bridge + host-local chain nodelet used to write as its default
//! gives a pod, done in-process instead of by exec'ing three plugin binaries per pod.
//!
//! Per pod: an IPv4 address from the pod CIDR ([`ipam`], persisted under the root dir),
//! a veth pair whose host end sits on the bridge with hairpin on and whose peer is the
//! pod's `eth0`, the address on `eth0`, `lo` up and a default route via the bridge's
//! gateway address ([`link`], over netlink). Once per network: the bridge with the
//! gateway address, IPv4 forwarding, and (with `ip_masq`) a masquerade rule in an
//! nftables table of its own ([`nft`]), removed with the last pod. A pod's hostPorts
//! ([`hostport`], what the `portmap` plugin gives) are DNAT rules in the same table.
//!
//! Not (yet): IPv6 (nor do the CNI path's capability arguments carry hostPorts to a
//! configured `portmap`).

pub mod hostport;
pub mod ipam;
mod link;
mod nft;

pub use hostport::{PortMapping, Protocol};

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use tokio::sync::{Mutex, OnceCell};
use tracing::{debug, info};

use ipam::{Ipam, Ipv4Cidr};

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
    /// The pod CIDR (IPv4); the bridge takes its first address.
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
    ipam: Ipam,
    /// The host namespace's netlink handle, made on first use.
    handle: OnceCell<rtnetlink::Handle>,
    /// The bridge's index, once it is made (by the first setup, never by a teardown).
    bridge: OnceCell<u32>,
    /// The pods' hostPorts, by sandbox ID.
    hostports: hostport::Store,
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
        let cidr = Ipv4Cidr::parse(&cfg.pod_cidr)?;
        let ipam = Ipam::new(cidr, cfg.state_dir.join("ipam").join(&cfg.bridge));
        let hostports = hostport::Store::new(cfg.state_dir.join("hostports").join(&cfg.bridge));
        Ok(PodNetwork {
            cfg,
            ipam,
            handle: OnceCell::new(),
            bridge: OnceCell::new(),
            hostports,
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

    async fn bridge(&self) -> Result<u32, PodNetError> {
        let cidr = self.ipam.cidr();
        let handle = self.handle().await?;
        self.bridge
            .get_or_try_init(|| {
                link::ensure_bridge(handle, &self.cfg.bridge, cidr.gateway(), cidr.prefix)
            })
            .await
            .copied()
    }

    /// Attaches the pod whose sandbox is `container_id` and whose netns is pinned at
    /// `netns`, with its hostPorts `ports`; returns its IPs. On failure nothing of the
    /// attempt is left (the address is released, the veth deleted, the hostPorts gone).
    ///
    /// # Errors
    ///
    /// [`PodNetError::Exhausted`] when the range is full, and netlink, nft or store errors.
    pub async fn setup(
        &self,
        container_id: &str,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<Vec<IpAddr>, PodNetError> {
        let ip = self.ipam.allocate(container_id)?;
        crate::failpoint::hit("podnet-after-ipam");
        match self.attach(container_id, netns, ip, ports).await {
            Ok(()) => {
                info!(container_id, ip = %ip, bridge = %self.cfg.bridge, "pod network set up (built-in)");
                Ok(vec![IpAddr::V4(ip)])
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
        ip: Ipv4Addr,
        ports: &[PortMapping],
    ) -> Result<(), PodNetError> {
        let cidr = self.ipam.cidr();
        let bridge = self.bridge().await?;
        let handle = self.handle().await?;
        if !ports.is_empty() {
            // Saved before the rules, so a crash from here on is undone by the reclaim.
            self.hostports.save(container_id, ports)?;
            link::route_localnet(&self.cfg.bridge)?;
        }
        {
            let mut installed = self.table.lock().await;
            if !ports.is_empty() || (self.cfg.ip_masq && !*installed) {
                self.render_table().await?;
                *installed = true;
            }
        }
        link::attach(
            handle,
            bridge,
            &host_veth_name(container_id),
            netns,
            ip,
            cidr.prefix,
            cidr.gateway(),
        )
        .await
    }

    /// Detaches a pod: deletes its veth if its netns did not take it along, releases its
    /// address, and with the last pod gone removes the masquerade table. Repeating it, or
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
        let had_ports = self.hostports.remove(container_id)?;
        let released = self.ipam.release(container_id)?;
        if !released.is_empty() {
            info!(container_id, ips = ?released, "pod network torn down (built-in)");
        }
        if self.ipam.allocations()?.is_empty() {
            // Always: a table a crashed agent left goes too.
            nft::remove(&nft::table_name(&self.cfg.bridge)).await?;
            *installed = false;
        } else if had_ports || !*installed {
            // Rendered once after a restart too: an agent killed mid-teardown may have
            // left rules of a pod whose hostPorts file is already gone.
            self.render_table().await?;
            *installed = true;
        }
        Ok(())
    }

    /// Renders the whole nft table from the pods' addresses and saved hostPorts.
    async fn render_table(&self) -> Result<(), PodNetError> {
        let ips: std::collections::BTreeMap<String, Ipv4Addr> = self
            .ipam
            .allocations()?
            .into_iter()
            .map(|(ip, id)| (id, ip))
            .collect();
        let pods: Vec<(Ipv4Addr, Vec<PortMapping>)> = self
            .hostports
            .load_all()?
            .into_iter()
            .filter_map(|(id, ports)| Some((*ips.get(&id)?, ports)))
            .collect();
        nft::install(
            &nft::table_name(&self.cfg.bridge),
            self.ipam.cidr(),
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
    pub fn holds(&self, container_id: &str) -> Result<bool, PodNetError> {
        Ok(self
            .ipam
            .allocations()?
            .iter()
            .any(|(_, id)| id == container_id))
    }

    /// Every sandbox ID holding an address (for reclaim after a crash).
    ///
    /// # Errors
    ///
    /// [`PodNetError::Ipam`] when the store cannot be read.
    pub fn allocated_ids(&self) -> Result<Vec<String>, PodNetError> {
        Ok(self
            .ipam
            .allocations()?
            .into_iter()
            .map(|(_, id)| id)
            .collect())
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
