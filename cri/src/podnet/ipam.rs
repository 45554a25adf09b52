//! In-process IP allocation for the built-in pod network, persisted like host-local's
//! store so that a restart (or a second agent on the same root dir) never hands out an
//! address twice.
//!
//! One file per allocated address, `<dir>/<ip>`, holding the sandbox ID. The ID is
//! written to a pending file first and hard-linked to `<ip>` (`link(2)` fails if the
//! name exists), so two allocators racing for an address cannot both win, and no
//! allocation is ever seen without its owner, even after a crash mid-way; it survives
//! a crash between allocation and use (the sandbox's reclaim at the next start
//! releases it by ID). A pending file left by a dead process is removed by the next
//! allocation. `<dir>/last_reserved_ip` makes allocation round-robin, as
//! host-local's, so a released address is not reused at once.
//!
//! The directory ([`Store`]) holds every range's addresses, of both families and of
//! ranges no longer in use (the pod CIDR changed): an address is taken while its file
//! exists, whichever range handed it out. Everything here is blocking file I/O, run on
//! tokio's blocking threads by the pod network.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::PodNetError;

/// host-local's round-robin marker, for the IPv4 range (the IPv6 range's has a suffix,
/// both ranges sharing the directory).
const LAST_RESERVED: &str = "last_reserved_ip";
/// Prefix of pending files: `.pending-<pid>-<n>`.
const PENDING: &str = ".pending-";

static PENDING_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An address range of either family: the network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub network: IpAddr,
    /// The prefix length, 0-32 or 0-128.
    pub prefix: u8,
}

/// An address as a number of its family's width.
fn to_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `x::y/n`, clearing host bits.
    ///
    /// # Errors
    ///
    /// [`PodNetError::InvalidCidr`] for anything else, or a range too small for a
    /// gateway and one pod (an IPv4 prefix above 30, an IPv6 one above 126).
    pub fn parse(s: &str) -> Result<Self, PodNetError> {
        let bad = |reason: &'static str| PodNetError::InvalidCidr {
            cidr: s.to_owned(),
            reason,
        };
        let (addr, prefix) = s.trim().split_once('/').ok_or(bad("not address/prefix"))?;
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        match addr {
            IpAddr::V4(_) if prefix > 30 => {
                return Err(bad("prefix longer than /30 leaves no pod address"));
            }
            IpAddr::V6(_) if prefix > 126 => {
                return Err(bad("prefix longer than /126 leaves no pod address"));
            }
            _ => {}
        }
        let cidr = Cidr {
            network: addr,
            prefix,
        };
        Ok(Cidr {
            network: cidr.addr_of(to_bits(addr) & cidr.mask()),
            prefix,
        })
    }

    /// Whether this is an IPv6 range.
    pub fn is_ipv6(&self) -> bool {
        self.network.is_ipv6()
    }

    fn width(&self) -> u32 {
        if self.is_ipv6() { 128 } else { 32 }
    }

    fn mask(&self) -> u128 {
        let all = u128::MAX >> (128 - self.width());
        all & !(all.checked_shr(u32::from(self.prefix)).unwrap_or(0))
    }

    fn addr_of(&self, bits: u128) -> IpAddr {
        if self.is_ipv6() {
            IpAddr::V6(Ipv6Addr::from(bits))
        } else {
            IpAddr::V4(Ipv4Addr::from(u32::try_from(bits).unwrap_or(u32::MAX)))
        }
    }

    /// The gateway (the bridge's address): the first host address.
    pub fn gateway(&self) -> IpAddr {
        self.addr_of(to_bits(self.network) + 1)
    }

    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv6() == self.is_ipv6() && to_bits(ip) & self.mask() == to_bits(self.network)
    }

    /// First and last pod address, as host-local's defaults: after the gateway, up to
    /// the last address (IPv4: before broadcast).
    fn pod_range(&self) -> (u128, u128) {
        let all = u128::MAX >> (128 - self.width());
        let net = to_bits(self.network);
        let last = net | (all & !self.mask());
        (net + 2, if self.is_ipv6() { last } else { last - 1 })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The allocation store: one directory holding the addresses of every range of both
/// families, past and present (a range change keeps the old range's allocations valid
/// until released: addresses are file names, so a new range overlapping an old one never
/// hands out an address still held). Its methods do blocking file I/O: async callers run
/// them on a blocking thread ([`tokio::task::spawn_blocking`]).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Serialises this process's allocators and releases; other processes are kept
    /// apart by `link(2)`.
    lock: Mutex<()>,
}

impl Store {
    /// A store in `dir` (created on first allocation).
    pub fn new(dir: PathBuf) -> Self {
        Store {
            dir,
            lock: Mutex::new(()),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn last_reserved(&self, cidr: Cidr) -> PathBuf {
        if cidr.is_ipv6() {
            self.dir.join(format!("{LAST_RESERVED}.ipv6"))
        } else {
            self.dir.join(LAST_RESERVED)
        }
    }

    /// Allocates an address of `cidr` for `id`, or returns the one of `cidr` it already
    /// holds.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Exhausted`] when every address is taken, [`PodNetError::Ipam`] when
    /// the state directory cannot be written.
    pub fn allocate(&self, cidr: Cidr, id: &str) -> Result<IpAddr, PodNetError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        fs::create_dir_all(&self.dir).map_err(self.err(&self.dir))?;
        if let Some(ip) = self.held_by(id, |ip| cidr.contains(ip))?.into_iter().next() {
            return Ok(ip);
        }
        let (first, last) = cidr.pod_range();
        let start = fs::read_to_string(self.last_reserved(cidr))
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .filter(|ip| cidr.contains(*ip))
            .map(to_bits)
            .filter(|ip| (first..=last).contains(ip))
            .map_or(first, |ip| if ip == last { first } else { ip + 1 });
        self.remove_dead_pending();
        let pending = self.dir.join(format!(
            "{PENDING}{}-{}",
            std::process::id(),
            PENDING_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let written = fs::File::create(&pending)
            .and_then(|mut f| f.write_all(id.as_bytes()).and_then(|()| f.sync_all()))
            .map_err(self.err(&pending));
        let result =
            written.and_then(|()| self.link_first_free(cidr, &pending, start, first, last));
        let _ = fs::remove_file(&pending);
        result
    }

    /// Links `pending` to the first free address of `cidr` from `start` on, round the
    /// range.
    fn link_first_free(
        &self,
        cidr: Cidr,
        pending: &Path,
        start: u128,
        first: u128,
        last: u128,
    ) -> Result<IpAddr, PodNetError> {
        // A huge IPv6 range is never scanned whole: 2^20 taken addresses in a row is
        // far beyond what a node holds.
        let count = (last - first).saturating_add(1).min(1 << 20);
        let mut candidate = start;
        for _ in 0..count {
            let ip = cidr.addr_of(candidate);
            let path = self.dir.join(ip.to_string());
            match fs::hard_link(pending, &path) {
                Ok(()) => {
                    let last_path = self.last_reserved(cidr);
                    fs::write(&last_path, ip.to_string()).map_err(self.err(&last_path))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.err(&path)(e)),
            }
            candidate = if candidate == last {
                first
            } else {
                candidate + 1
            };
        }
        Err(PodNetError::Exhausted {
            cidr: cidr.to_string(),
        })
    }

    /// Removes pending files whose process is gone (it crashed mid-allocation).
    fn remove_dead_pending(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PENDING))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Releases whatever `id` holds among the addresses `which` accepts; releasing
    /// nothing is not an error.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Ipam`] when the state cannot be read or a file removed.
    pub fn release_where(
        &self,
        id: &str,
        which: impl Fn(IpAddr) -> bool,
    ) -> Result<Vec<IpAddr>, PodNetError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.held_by(id, which)?;
        for ip in &held {
            let path = self.dir.join(ip.to_string());
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(self.err(&path)(e)),
                _ => {}
            }
        }
        Ok(held)
    }

    /// Releases every address `id` holds, of any range.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Ipam`] when the state cannot be read or a file removed.
    pub fn release(&self, id: &str) -> Result<Vec<IpAddr>, PodNetError> {
        self.release_where(id, |_| true)
    }

    /// Every (address, ID) allocated, of any range, sorted.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Ipam`] when the directory cannot be read.
    pub fn allocations(&self) -> Result<Vec<(IpAddr, String)>, PodNetError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            // Linked from a complete pending file, so never empty; an unreadable
            // one still counts as taken.
            let id = fs::read_to_string(entry.path()).unwrap_or_default();
            out.push((ip, id.trim().to_owned()));
        }
        out.sort();
        Ok(out)
    }

    fn held_by(
        &self,
        id: &str,
        which: impl Fn(IpAddr) -> bool,
    ) -> Result<Vec<IpAddr>, PodNetError> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|(ip, owner)| owner == id && which(*ip))
            .map(|(ip, _)| ip)
            .collect())
    }

    fn err(&self, path: &Path) -> impl FnOnce(io::Error) -> PodNetError {
        let path = path.to_path_buf();
        move |source| PodNetError::Ipam { path, source }
    }
}

/// The allocator over one range of a [`Store`]: what it allocates is in the range; what
/// it lists and releases is of the range's family.
#[derive(Debug)]
pub struct Ipam {
    cidr: Cidr,
    store: std::sync::Arc<Store>,
}

impl Ipam {
    /// An allocator keeping its state in `dir` (created on first use).
    /// Ranges of both families may share `dir`: each sees only its own family's files.
    pub fn new(cidr: Cidr, dir: PathBuf) -> Self {
        Ipam::in_store(cidr, std::sync::Arc::new(Store::new(dir)))
    }

    /// An allocator over `cidr` in `store`.
    pub fn in_store(cidr: Cidr, store: std::sync::Arc<Store>) -> Self {
        Ipam { cidr, store }
    }

    /// The range.
    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    /// Allocates an address for `id`, or returns the one it already holds.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Exhausted`] when every address is taken, [`PodNetError::Ipam`] when
    /// the state directory cannot be written.
    pub fn allocate(&self, id: &str) -> Result<IpAddr, PodNetError> {
        self.store.allocate(self.cidr, id)
    }

    /// Releases whatever `id` holds of this family; releasing nothing is not an error.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Ipam`] when the state cannot be read or a file removed.
    pub fn release(&self, id: &str) -> Result<Vec<IpAddr>, PodNetError> {
        let v6 = self.cidr.is_ipv6();
        self.store.release_where(id, |ip| ip.is_ipv6() == v6)
    }

    /// Every (address, ID) allocated in this range's family.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Ipam`] when the directory cannot be read.
    pub fn allocations(&self) -> Result<Vec<(IpAddr, String)>, PodNetError> {
        let v6 = self.cidr.is_ipv6();
        Ok(self
            .store
            .allocations()?
            .into_iter()
            .filter(|(ip, _)| ip.is_ipv6() == v6)
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        Ipam::new(Cidr::parse(cidr).unwrap(), dir.join("ipam"))
    }

    #[test]
    fn cidr_parsing_and_gateway() {
        let c = Cidr::parse("10.88.3.7/16").unwrap();
        assert_eq!(c.to_string(), "10.88.0.0/16");
        assert_eq!(c.gateway(), IpAddr::V4(Ipv4Addr::new(10, 88, 0, 1)));
        assert!(c.contains(IpAddr::V4(Ipv4Addr::new(10, 88, 255, 254))));
        assert!(!c.contains(IpAddr::V4(Ipv4Addr::new(10, 89, 0, 1))));
        let v6 = Cidr::parse("fd00:10:88::7/64").unwrap();
        assert_eq!(v6.to_string(), "fd00:10:88::/64");
        assert!(v6.is_ipv6());
        assert_eq!(v6.gateway().to_string(), "fd00:10:88::1");
        assert!(v6.contains("fd00:10:88::ffff:1".parse().unwrap()));
        assert!(!v6.contains("fd00:10:89::1".parse().unwrap()));
        assert!(!v6.contains("10.88.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(Cidr::parse("::/0").unwrap().pod_range().1, u128::MAX);
        assert_eq!(
            Cidr::parse("0.0.0.0/0").unwrap().pod_range(),
            (2, 0xffff_fffe)
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/31",
            "x/8",
            "10.0.0.0/x",
            "fd00::/127",
            "fd00::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_ranges_use_the_last_address_and_share_the_directory_with_ipv4() {
        let dir = tempfile::tempdir().unwrap();
        let v6 = ipam(dir.path(), "fd00:1::/126");
        let v4 = ipam(dir.path(), "10.1.2.0/30");
        let a = v6.allocate("a").unwrap();
        let b = v6.allocate("b").unwrap();
        assert_eq!(a.to_string(), "fd00:1::2");
        assert_eq!(b.to_string(), "fd00:1::3");
        assert!(matches!(
            v6.allocate("c"),
            Err(PodNetError::Exhausted { .. })
        ));
        assert_eq!(v4.allocate("a").unwrap().to_string(), "10.1.2.2");
        // Each range sees its own family only, and keeps its own round-robin marker.
        assert_eq!(v6.allocations().unwrap().len(), 2);
        assert_eq!(v4.allocations().unwrap().len(), 1);
        assert_eq!(v6.release("a").unwrap(), vec![a]);
        assert_eq!(v4.allocations().unwrap().len(), 1);
        assert_eq!(v6.allocate("c").unwrap(), a);
        assert!(dir.path().join("ipam/last_reserved_ip.ipv6").is_file());
        assert!(dir.path().join("ipam/last_reserved_ip").is_file());
    }

    #[test]
    fn allocates_round_robin_skips_gateway_and_broadcast_and_exhausts() {
        let dir = tempfile::tempdir().unwrap();
        let a = ipam(dir.path(), "10.1.2.0/29");
        let ips: Vec<_> = (0..5)
            .map(|i| a.allocate(&format!("id{i}")).unwrap())
            .collect();
        assert_eq!(ips.first(), Some(&IpAddr::V4(Ipv4Addr::new(10, 1, 2, 2))));
        assert_eq!(ips.last(), Some(&IpAddr::V4(Ipv4Addr::new(10, 1, 2, 6))));
        assert!(matches!(
            a.allocate("id5"),
            Err(PodNetError::Exhausted { .. })
        ));
        // Idempotent for a holder.
        assert_eq!(a.allocate("id2").unwrap(), ips[2]);
        // A released address is not reused first: the next free after the last one is.
        assert_eq!(a.release("id1").unwrap(), vec![ips[1]]);
        assert_eq!(a.allocate("id6").unwrap(), ips[1]);
        assert!(a.release("nobody").unwrap().is_empty());
    }

    #[test]
    fn state_survives_a_restart_and_is_shared_between_allocators() {
        let dir = tempfile::tempdir().unwrap();
        let first = ipam(dir.path(), "10.1.2.0/24");
        let a = first.allocate("a").unwrap();
        drop(first);
        let again = ipam(dir.path(), "10.1.2.0/24");
        let other = ipam(dir.path(), "10.1.2.0/24");
        let b = again.allocate("b").unwrap();
        let c = other.allocate("c").unwrap();
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_ne!(a, c);
        assert_eq!(again.allocate("a").unwrap(), a);
        assert_eq!(other.allocations().unwrap().len(), 3);
    }

    #[test]
    fn a_dead_allocators_pending_file_is_removed_and_never_counts() {
        let dir = tempfile::tempdir().unwrap();
        let a = ipam(dir.path(), "10.1.2.0/29");
        fs::create_dir_all(dir.path().join("ipam")).unwrap();
        // PID 0 is never a live allocator's; our own pending files are kept.
        let dead = dir.path().join("ipam").join(format!("{PENDING}0-7"));
        fs::write(&dead, "half").unwrap();
        a.allocate("x").unwrap();
        assert!(!dead.exists());
        assert_eq!(a.allocations().unwrap().len(), 1);
        let names: Vec<_> = fs::read_dir(dir.path().join("ipam"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with(PENDING)), "{names:?}");
    }

    #[test]
    fn concurrent_allocators_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let a = ipam(&path, "10.9.0.0/24");
                    (0..20)
                        .map(|i| a.allocate(&format!("t{t}-{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn a_range_change_keeps_old_allocations_and_never_hands_them_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("ipam"));
        let old = Cidr::parse("10.1.2.0/29").unwrap();
        // The new range overlaps the old one's addresses.
        let new = Cidr::parse("10.1.2.0/28").unwrap();
        let a = store.allocate(old, "a").unwrap();
        let b = store.allocate(old, "b").unwrap();
        let c = store.allocate(new, "c").unwrap();
        assert!(c != a && c != b, "{a} {b} {c}");
        assert!(new.contains(c));
        // A holder of an old address asking in the new range gets one of the new range
        // only when it holds none there; the old address stays its until released.
        assert_eq!(store.allocate(new, "a").unwrap(), a);
        let moved = Cidr::parse("10.7.0.0/24").unwrap();
        let a2 = store.allocate(moved, "a").unwrap();
        assert!(moved.contains(a2));
        assert_eq!(store.allocations().unwrap().len(), 4);
        let mut released = store.release("a").unwrap();
        released.sort();
        assert_eq!(released, vec![a, a2]);
        assert_eq!(store.release("b").unwrap(), vec![b]);
        assert_eq!(store.allocations().unwrap(), vec![(c, "c".to_owned())]);
    }
}
