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

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::PodNetError;

const LAST_RESERVED: &str = "last_reserved_ip";
/// Prefix of pending files: `.pending-<pid>-<n>`.
const PENDING: &str = ".pending-";

static PENDING_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// An IPv4 range: the network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// The prefix length, 0-32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Parses `a.b.c.d/n`, clearing host bits.
    ///
    /// # Errors
    ///
    /// [`PodNetError::InvalidCidr`] for anything else, or a range too small for a
    /// gateway and one pod (prefix above 30).
    pub fn parse(s: &str) -> Result<Self, PodNetError> {
        let bad = |reason: &'static str| PodNetError::InvalidCidr {
            cidr: s.to_owned(),
            reason,
        };
        let (addr, prefix) = s.split_once('/').ok_or(bad("not address/prefix"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        if prefix > 30 {
            return Err(bad("prefix longer than /30 leaves no pod address"));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The gateway (the bridge's address): the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// First and last pod address: after the gateway, before broadcast.
    fn pod_range(&self) -> (u32, u32) {
        let size = 1u64 << (32 - u32::from(self.prefix));
        let first = u32::from(self.network) + 2;
        let last = u32::try_from(u64::from(u32::from(self.network)) + size - 2).unwrap_or(u32::MAX);
        (first, last)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The allocator over one range and one state directory.
#[derive(Debug)]
pub struct Ipam {
    cidr: Ipv4Cidr,
    dir: PathBuf,
    lock: Mutex<()>,
}

impl Ipam {
    /// An allocator keeping its state in `dir` (created on first use).
    pub fn new(cidr: Ipv4Cidr, dir: PathBuf) -> Self {
        Ipam {
            cidr,
            dir,
            lock: Mutex::new(()),
        }
    }

    /// The range.
    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// Allocates an address for `id`, or returns the one it already holds.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Exhausted`] when every address is taken, [`PodNetError::Ipam`] when
    /// the state directory cannot be written.
    pub fn allocate(&self, id: &str) -> Result<Ipv4Addr, PodNetError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        fs::create_dir_all(&self.dir).map_err(self.err(&self.dir))?;
        if let Some(ip) = self.held_by(id)?.first() {
            return Ok(*ip);
        }
        let (first, last) = self.cidr.pod_range();
        let start = fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
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
        let result = written.and_then(|()| self.link_first_free(&pending, start, first, last));
        let _ = fs::remove_file(&pending);
        result
    }

    /// Links `pending` to the first free address from `start` on, round the range.
    fn link_first_free(
        &self,
        pending: &Path,
        start: u32,
        first: u32,
        last: u32,
    ) -> Result<Ipv4Addr, PodNetError> {
        let count = u64::from(last - first) + 1;
        let mut candidate = start;
        for _ in 0..count {
            let ip = Ipv4Addr::from(candidate);
            let path = self.dir.join(ip.to_string());
            match fs::hard_link(pending, &path) {
                Ok(()) => {
                    let last_path = self.dir.join(LAST_RESERVED);
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
            cidr: self.cidr.to_string(),
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

    /// Releases whatever `id` holds; releasing nothing is not an error.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Ipam`] when the state cannot be read or a file removed.
    pub fn release(&self, id: &str) -> Result<Vec<Ipv4Addr>, PodNetError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let held = self.held_by(id)?;
        for ip in &held {
            let path = self.dir.join(ip.to_string());
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(self.err(&path)(e)),
                _ => {}
            }
        }
        Ok(held)
    }

    /// Every (address, ID) allocated.
    ///
    /// # Errors
    ///
    /// [`PodNetError::Ipam`] when the directory cannot be read.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, PodNetError> {
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
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
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

    fn held_by(&self, id: &str) -> Result<Vec<Ipv4Addr>, PodNetError> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|(_, owner)| owner == id)
            .map(|(ip, _)| ip)
            .collect())
    }

    fn err(&self, path: &Path) -> impl FnOnce(io::Error) -> PodNetError {
        let path = path.to_path_buf();
        move |source| PodNetError::Ipam { path, source }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        Ipam::new(Ipv4Cidr::parse(cidr).unwrap(), dir.join("ipam"))
    }

    #[test]
    fn cidr_parsing_and_gateway() {
        let c = Ipv4Cidr::parse("10.88.3.7/16").unwrap();
        assert_eq!(c.to_string(), "10.88.0.0/16");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 88, 255, 254)));
        assert!(!c.contains(Ipv4Addr::new(10, 89, 0, 1)));
        for bad in ["10.0.0.0", "10.0.0.0/31", "x/8", "10.0.0.0/x", "::1/64"] {
            assert!(Ipv4Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allocates_round_robin_skips_gateway_and_broadcast_and_exhausts() {
        let dir = tempfile::tempdir().unwrap();
        let a = ipam(dir.path(), "10.1.2.0/29");
        let ips: Vec<_> = (0..5)
            .map(|i| a.allocate(&format!("id{i}")).unwrap())
            .collect();
        assert_eq!(ips.first(), Some(&Ipv4Addr::new(10, 1, 2, 2)));
        assert_eq!(ips.last(), Some(&Ipv4Addr::new(10, 1, 2, 6)));
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
        let mut all: Vec<Ipv4Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
