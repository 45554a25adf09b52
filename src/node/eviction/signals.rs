//! Signal observations: what each eviction signal measures now, built from plain node
//! numbers the agent reads (cgroup memory stats, `statvfs`, `pid_max`).
//!
//! Ported from upstream `pkg/kubelet/eviction/helpers.go` (`makeSignalObservations`) and
//! `helpers_linux.go` (`makeMemoryAvailableSignalObservation`). Upstream reads a stats
//! summary; here the agent fills [`NodeStats`] from the cgroups crate and `statvfs`, and
//! this module applies the same arithmetic.

use std::collections::BTreeMap;
use std::time::Instant;

use super::thresholds::Signal;

/// Node memory as the root memory cgroup reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Node memory capacity (machine memory), bytes.
    pub capacity_bytes: u64,
    /// The root cgroup's working set (usage − inactive file), bytes.
    pub working_set_bytes: u64,
}

/// Memory of the pods' cgroup (`kubepods`), against node allocatable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatableMemoryStats {
    /// Allocatable memory: capacity − kube-reserved − system-reserved, bytes.
    pub allocatable_bytes: u64,
    /// The `kubepods` cgroup's working set, bytes.
    pub pods_working_set_bytes: u64,
}

/// One filesystem, from `statvfs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    /// Total bytes.
    pub capacity_bytes: u64,
    /// Bytes available to unprivileged users (`f_bavail × f_frsize`).
    pub available_bytes: u64,
    /// Total inodes, when the filesystem reports them.
    pub inodes: Option<u64>,
    /// Free inodes.
    pub inodes_free: Option<u64>,
}

/// Process ids: the node's `kernel.pid_max` and the processes running now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidStats {
    /// `/proc/sys/kernel/pid_max` (or the lower `threads-max`, as upstream's rlimit stats).
    pub max: u64,
    /// Running processes (and threads) on the node.
    pub running: u64,
}

/// Everything one synchronisation observes about the node; a `None` leaves its signals
/// unobserved (and their thresholds unmet), as upstream does with missing stats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// When these numbers were read; `None` means "always new" (upstream's zero time).
    pub time: Option<Instant>,
    /// Node memory.
    pub memory: Option<MemoryStats>,
    /// The pods' memory against allocatable.
    pub allocatable_memory: Option<AllocatableMemoryStats>,
    /// The kubelet's filesystem (root dir, logs, volumes).
    pub node_fs: Option<FsStats>,
    /// The runtime's image filesystem (containerd's root). Give the same numbers as
    /// `node_fs` when it is on the same device.
    pub image_fs: Option<FsStats>,
    /// The containers' writable layers' filesystem; `None` means the image filesystem
    /// (containerd keeps snapshots beside images, as cadvisor reports it upstream).
    pub container_fs: Option<FsStats>,
    /// Process ids.
    pub pids: Option<PidStats>,
}

/// What one signal measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Available amount (bytes, inodes or pids); negative when over-committed.
    pub available: i64,
    /// Capacity the percentages apply to.
    pub capacity: i64,
    /// When it was measured.
    pub time: Option<Instant>,
}

/// Signal → observation (upstream `signalObservations`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations(BTreeMap<Signal, Observation>);

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Observations {
    /// Observations from node stats (upstream `makeSignalObservations`):
    /// - `memory.available` = capacity − working set, floored at 0, with capacity taken
    ///   as available + working set (cadvisor's `AvailableBytes` arithmetic);
    /// - `allocatableMemory.available` = allocatable − pods' working set, likewise;
    /// - `nodefs.*`, `imagefs.*`, `containerfs.*` from `statvfs` (containerfs is the
    ///   image filesystem unless given);
    /// - `pid.available` = pid max − running processes.
    pub fn from_stats(stats: &NodeStats) -> Observations {
        let mut m = BTreeMap::new();
        let time = stats.time;
        let memory = |capacity: u64, working_set: u64| {
            let available = capacity.saturating_sub(working_set);
            Observation {
                available: int(available),
                capacity: int(available.saturating_add(working_set)),
                time,
            }
        };
        if let Some(mem) = stats.memory {
            m.insert(
                Signal::MemoryAvailable,
                memory(mem.capacity_bytes, mem.working_set_bytes),
            );
        }
        if let Some(alloc) = stats.allocatable_memory {
            m.insert(
                Signal::AllocatableMemoryAvailable,
                memory(alloc.allocatable_bytes, alloc.pods_working_set_bytes),
            );
        }
        let mut fs = |fs: Option<FsStats>, bytes: Signal, inodes: Signal| {
            let Some(fs) = fs else { return };
            m.insert(
                bytes,
                Observation {
                    available: int(fs.available_bytes),
                    capacity: int(fs.capacity_bytes),
                    time,
                },
            );
            if let (Some(total), Some(free)) = (fs.inodes, fs.inodes_free) {
                m.insert(
                    inodes,
                    Observation {
                        available: int(free),
                        capacity: int(total),
                        time,
                    },
                );
            }
        };
        fs(
            stats.node_fs,
            Signal::NodeFsAvailable,
            Signal::NodeFsInodesFree,
        );
        fs(
            stats.image_fs,
            Signal::ImageFsAvailable,
            Signal::ImageFsInodesFree,
        );
        fs(
            stats.container_fs.or(stats.image_fs),
            Signal::ContainerFsAvailable,
            Signal::ContainerFsInodesFree,
        );
        if let Some(pids) = stats.pids {
            m.insert(
                Signal::PidAvailable,
                Observation {
                    available: int(pids.max).saturating_sub(int(pids.running)),
                    capacity: int(pids.max),
                    time,
                },
            );
        }
        Observations(m)
    }

    /// The observation of `signal`.
    pub fn get(&self, signal: Signal) -> Option<&Observation> {
        self.0.get(&signal)
    }

    /// Sets one observation (tests, or a caller with its own source).
    #[cfg(test)]
    pub fn insert(&mut self, signal: Signal, observation: Observation) {
        self.0.insert(signal, observation);
    }

    /// Every observation.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (Signal, &Observation)> {
        self.0.iter().map(|(s, o)| (*s, o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1024 * 1024;

    #[test]
    fn observations_from_node_stats() {
        let stats = NodeStats {
            time: None,
            memory: Some(MemoryStats {
                capacity_bytes: 1024 * MI,
                working_set_bytes: 900 * MI,
            }),
            allocatable_memory: Some(AllocatableMemoryStats {
                allocatable_bytes: 800 * MI,
                pods_working_set_bytes: 850 * MI,
            }),
            node_fs: Some(FsStats {
                capacity_bytes: 10_000,
                available_bytes: 2_000,
                inodes: Some(500),
                inodes_free: Some(100),
            }),
            image_fs: Some(FsStats {
                capacity_bytes: 20_000,
                available_bytes: 3_000,
                inodes: None,
                inodes_free: None,
            }),
            container_fs: None,
            pids: Some(PidStats {
                max: 32768,
                running: 30000,
            }),
        };
        let o = Observations::from_stats(&stats);
        let mem = o.get(Signal::MemoryAvailable).expect("memory");
        assert_eq!(
            (mem.available, mem.capacity),
            (124 * 1024 * 1024, 1024 * 1024 * 1024)
        );
        // Over-committed pods: available floors at 0 and capacity becomes the working set.
        let alloc = o
            .get(Signal::AllocatableMemoryAvailable)
            .expect("allocatable");
        assert_eq!((alloc.available, alloc.capacity), (0, 850 * 1024 * 1024));
        let nodefs = o.get(Signal::NodeFsInodesFree).expect("inodes");
        assert_eq!((nodefs.available, nodefs.capacity), (100, 500));
        assert!(o.get(Signal::ImageFsInodesFree).is_none());
        assert_eq!(
            o.get(Signal::ContainerFsAvailable).map(|c| c.available),
            Some(3_000)
        );
        let pid = o.get(Signal::PidAvailable).expect("pid");
        assert_eq!((pid.available, pid.capacity), (2768, 32768));
        assert!(
            Observations::from_stats(&NodeStats::default())
                .iter()
                .next()
                .is_none()
        );
    }
}
