//! Node capacity, `--kube-reserved` / `--system-reserved`, node allocatable and the
//! `kubepods` cgroup's limits.
//!
//! Ported from upstream:
//! - `cmd/kubelet/app/server.go` `parseResourceList` and component-base
//!   `cliflag.MapStringString` (the flag syntax and its messages);
//! - `pkg/kubelet/cm/node_container_manager_linux.go` (`getNodeAllocatableAbsoluteImpl`,
//!   `createNodeAllocatableCgroups`, `getCgroupConfigInternal`);
//! - `pkg/kubelet/cm/container_manager_linux.go` / `node_container_manager_linux.go`
//!   `GetNodeAllocatableReservation` and `pkg/kubelet/nodestatus/setters.go`
//!   `MachineInfo` (allocatable = capacity − reservation, never negative; huge pages come
//!   out of allocatable memory);
//! - cadvisor `machine.GetMachineInfo` (online CPUs, `MemTotal`, huge pages) and
//!   `pkg/kubelet/stats/pidlimit` (min of `pid_max` and `threads-max`).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use nodelet_manifests::quantity::Quantity;

use crate::values::{ResourceConfig, milli_cpu_to_shares, milli_value, value};

/// Why a reservation flag or a host file couldn't be used.
#[derive(Debug, thiserror::Error)]
pub enum AllocatableError {
    /// A `key=value` pair without `=` (cliflag `MapStringString`).
    #[error("malformed pair, expect string=string")]
    MalformedPair,
    /// The value is not a quantity.
    #[error("failed to parse quantity {value:?} for {resource:?} resource: {reason}")]
    Quantity {
        /// The value given.
        value: String,
        /// The resource.
        resource: String,
        /// The quantity parser's message.
        reason: nodelet_manifests::quantity::QuantityError,
    },
    /// A negative value.
    #[error("resource quantity for {resource:?} cannot be negative: {value}")]
    Negative {
        /// The resource.
        resource: String,
        /// The value given.
        value: String,
    },
    /// A resource that can't be reserved.
    #[error("cannot reserve {0:?} resource")]
    Unsupported(String),
    /// A host file couldn't be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A host file didn't hold what was expected.
    #[error("unexpected contents in {path}: {contents:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held (trimmed).
        contents: String,
    },
}

/// A reservation (`--kube-reserved`, `--system-reserved`, or the hard eviction
/// thresholds expressed as amounts). Unset resources reserve nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    /// CPU in millicores.
    pub cpu_milli: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Process IDs.
    pub pids: i64,
}

impl Reserved {
    /// Parses the flag value `cpu=100m,memory=100Mi,ephemeral-storage=1Gi,pid=1000`.
    /// An empty value reserves nothing.
    ///
    /// # Errors
    /// Upstream's messages: a pair without `=`, a value that is not a quantity, a
    /// negative value, or a resource other than `cpu`, `memory`, `ephemeral-storage`
    /// and `pid`.
    pub fn parse(flag: &str) -> Result<Reserved, AllocatableError> {
        let mut out = Reserved::default();
        if flag.trim().is_empty() {
            return Ok(out);
        }
        for pair in flag.split(',') {
            let (k, v) = pair
                .split_once('=')
                .ok_or(AllocatableError::MalformedPair)?;
            let (k, v) = (k.trim(), v.trim());
            match k {
                "cpu" | "memory" | "ephemeral-storage" | "pid" => {}
                _ => return Err(AllocatableError::Unsupported(k.to_owned())),
            }
            let q = Quantity::parse(v).map_err(|reason| AllocatableError::Quantity {
                value: v.to_owned(),
                resource: k.to_owned(),
                reason,
            })?;
            if q.is_negative() {
                return Err(AllocatableError::Negative {
                    resource: k.to_owned(),
                    value: v.to_owned(),
                });
            }
            match k {
                "cpu" => out.cpu_milli = milli_value(q),
                "memory" => out.memory = value(q),
                "ephemeral-storage" => out.ephemeral_storage = value(q),
                _ => out.pids = value(q),
            }
        }
        Ok(out)
    }
}

/// What the node has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCapacity {
    /// Online CPUs × 1000.
    pub cpu_milli: i64,
    /// `MemTotal` in bytes.
    pub memory: i64,
    /// The root filesystem's size in bytes (0 when unknown).
    pub ephemeral_storage: i64,
    /// min(`pid_max`, `threads-max`); internal capacity, not reported in node status.
    pub pids: i64,
    /// Huge page size in bytes → bytes of pre-allocated huge pages.
    pub hugepages: BTreeMap<u64, i64>,
}

fn read(path: &Path) -> Result<String, AllocatableError> {
    std::fs::read_to_string(path).map_err(|source| AllocatableError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_err(path: &Path, contents: &str) -> AllocatableError {
    AllocatableError::Parse {
        path: path.to_owned(),
        contents: contents.trim().to_owned(),
    }
}

/// Counts the CPUs in a kernel CPU list (`0-3,6,8-9`).
fn count_cpu_list(list: &str) -> Option<i64> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<i64>().ok()? - a.parse::<i64>().ok()? + 1,
            None => {
                part.parse::<i64>().ok()?;
                1
            }
        };
    }
    Some(n)
}

impl NodeCapacity {
    /// Reads the host's capacity under `root` (`/` on the host; a temp dir in tests):
    /// `sys/devices/system/cpu/online`, `proc/meminfo`, `proc/sys/kernel/pid_max` and
    /// `threads-max`, `sys/kernel/mm/hugepages/hugepages-<N>kB/nr_hugepages`.
    /// `ephemeral_storage` is left 0: the caller knows which filesystem holds the root
    /// dir.
    ///
    /// # Errors
    /// A file that can't be read or parsed (missing huge page dirs are fine).
    pub fn read(root: &Path) -> Result<NodeCapacity, AllocatableError> {
        let online = root.join("sys/devices/system/cpu/online");
        let text = read(&online)?;
        let cpus = count_cpu_list(&text).ok_or_else(|| parse_err(&online, &text))?;

        let meminfo = root.join("proc/meminfo");
        let text = read(&meminfo)?;
        let kib: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| parse_err(&meminfo, "MemTotal missing"))?;

        let mut pids: Option<i64> = None;
        for name in ["pid_max", "threads-max"] {
            let path = root.join("proc/sys/kernel").join(name);
            let text = read(&path)?;
            let v: i64 = text.trim().parse().map_err(|_| parse_err(&path, &text))?;
            pids = Some(pids.map_or(v, |p| p.min(v)));
        }

        let mut hugepages = BTreeMap::new();
        let hp_dir = root.join("sys/kernel/mm/hugepages");
        if let Ok(entries) = std::fs::read_dir(&hp_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(kb) = name
                    .strip_prefix("hugepages-")
                    .and_then(|s| s.strip_suffix("kB"))
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    continue;
                };
                let path = entry.path().join("nr_hugepages");
                let text = read(&path)?;
                let n: i64 = text.trim().parse().map_err(|_| parse_err(&path, &text))?;
                let size = kb * 1024;
                hugepages.insert(size, n * i64::try_from(size).unwrap_or(i64::MAX));
            }
        }

        Ok(NodeCapacity {
            cpu_milli: cpus * 1000,
            memory: kib * 1024,
            ephemeral_storage: 0,
            pids: pids.unwrap_or(0),
            hugepages,
        })
    }
}

/// Node allocatable, as reported in node status (`pids` is not reported upstream but
/// is kept here for completeness).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocatable {
    /// CPU in millicores.
    pub cpu_milli: i64,
    /// Memory in bytes (huge pages taken out).
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Process IDs.
    pub pids: i64,
    /// Huge page size → bytes (not reserved, so equal to capacity).
    pub hugepages: BTreeMap<u64, i64>,
}

/// Node status allocatable: capacity − kube-reserved − system-reserved − the hard
/// eviction thresholds (`eviction`, e.g. `memory.available<100Mi` as `memory`), each
/// floored at 0; then every huge page capacity is taken out of memory.
#[must_use]
pub fn allocatable(
    capacity: &NodeCapacity,
    kube: &Reserved,
    system: &Reserved,
    eviction: &Reserved,
) -> Allocatable {
    let sub = |cap: i64, f: fn(&Reserved) -> i64| (cap - f(kube) - f(system) - f(eviction)).max(0);
    let hugepages_total: i64 = capacity.hugepages.values().sum();
    Allocatable {
        cpu_milli: sub(capacity.cpu_milli, |r| r.cpu_milli),
        memory: (sub(capacity.memory, |r| r.memory) - hugepages_total).max(0),
        ephemeral_storage: sub(capacity.ephemeral_storage, |r| r.ephemeral_storage),
        pids: sub(capacity.pids, |r| r.pids),
        hugepages: capacity.hugepages.clone(),
    }
}

/// The `kubepods` cgroup's values (`createNodeAllocatableCgroups`): with `pods` in
/// `--enforce-node-allocatable`, capacity − kube-reserved − system-reserved (never
/// negative; eviction thresholds are not subtracted); otherwise the whole capacity.
/// Either way cpu becomes shares, memory the limit, pids the pids limit and huge pages
/// their limits.
#[must_use]
pub fn kubepods_resources(
    capacity: &NodeCapacity,
    kube: &Reserved,
    system: &Reserved,
    enforce_pods: bool,
) -> ResourceConfig {
    let none = Reserved::default();
    let (kube, system) = if enforce_pods {
        (kube, system)
    } else {
        (&none, &none)
    };
    let sub = |cap: i64, f: fn(&Reserved) -> i64| (cap - f(kube) - f(system)).max(0);
    ResourceConfig {
        cpu_shares: Some(milli_cpu_to_shares(sub(capacity.cpu_milli, |r| {
            r.cpu_milli
        }))),
        memory: Some(sub(capacity.memory, |r| r.memory)),
        pids_limit: Some(sub(capacity.pids, |r| r.pids)),
        hugepage_limit: capacity.hugepages.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: i64 = 1 << 20;
    const GI: i64 = 1 << 30;

    #[test]
    fn parse_flags() {
        assert_eq!(
            Reserved::parse("cpu=100m,memory=100Mi,ephemeral-storage=1Gi,pid=1000").expect("ok"),
            Reserved {
                cpu_milli: 100,
                memory: 100 * MI,
                ephemeral_storage: GI,
                pids: 1000
            }
        );
        assert_eq!(Reserved::parse("").expect("ok"), Reserved::default());
        assert_eq!(Reserved::parse(" cpu = 1 ").expect("ok").cpu_milli, 1000);
        let err = |s: &str| Reserved::parse(s).expect_err(s).to_string();
        assert_eq!(err("cpu"), "malformed pair, expect string=string");
        assert_eq!(err("gpu=1"), "cannot reserve \"gpu\" resource");
        assert_eq!(
            err("memory=-1Mi"),
            "resource quantity for \"memory\" cannot be negative: -1Mi"
        );
        assert!(err("cpu=abc").starts_with(
            "failed to parse quantity \"abc\" for \"cpu\" resource: quantities must match"
        ));
    }

    fn fake_host(dir: &Path) {
        let w = |p: &str, s: &str| {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, s).expect("write");
        };
        w("sys/devices/system/cpu/online", "0-1,4\n");
        w(
            "proc/meminfo",
            "MemTotal:        4030380 kB\nMemFree:          100 kB\n",
        );
        w("proc/sys/kernel/pid_max", "4194304\n");
        w("proc/sys/kernel/threads-max", "31477\n");
        w(
            "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            "3\n",
        );
        w(
            "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",
            "0\n",
        );
    }

    #[test]
    fn reads_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_host(dir.path());
        let cap = NodeCapacity::read(dir.path()).expect("capacity");
        assert_eq!(
            cap,
            NodeCapacity {
                cpu_milli: 3000,
                memory: 4_030_380 * 1024,
                ephemeral_storage: 0,
                pids: 31477,
                hugepages: BTreeMap::from([(2 << 20, 6 * MI), (1 << 30, 0)]),
            }
        );
    }

    #[test]
    fn reads_this_host() {
        let cap = NodeCapacity::read(Path::new("/")).expect("host capacity");
        assert!(
            cap.cpu_milli >= 1000 && cap.memory > 0 && cap.pids > 0,
            "{cap:?}"
        );
    }

    #[test]
    fn allocatable_subtracts_and_floors() {
        let cap = NodeCapacity {
            cpu_milli: 2000,
            memory: 4 * GI,
            ephemeral_storage: 10 * GI,
            pids: 1000,
            hugepages: BTreeMap::from([(2 << 20, 512 * MI)]),
        };
        let kube = Reserved::parse("cpu=100m,memory=100Mi").expect("kube");
        let system = Reserved::parse("cpu=200m,memory=1Gi,ephemeral-storage=20Gi").expect("sys");
        let eviction = Reserved {
            memory: 100 * MI,
            ephemeral_storage: GI,
            ..Default::default()
        };
        let a = allocatable(&cap, &kube, &system, &eviction);
        assert_eq!(a.cpu_milli, 1700);
        assert_eq!(a.memory, 4 * GI - 200 * MI - GI - 512 * MI);
        assert_eq!(a.ephemeral_storage, 0);
        assert_eq!(a.pids, 1000);

        let rc = kubepods_resources(&cap, &kube, &system, true);
        assert_eq!(rc.cpu_shares, Some(1740)); // 1700m
        assert_eq!(rc.memory, Some(4 * GI - 100 * MI - GI));
        assert_eq!(rc.pids_limit, Some(1000));
        assert_eq!(rc.cpu_quota, None);
        let rc = kubepods_resources(&cap, &kube, &system, false);
        assert_eq!(rc.cpu_shares, Some(2048));
        assert_eq!(rc.memory, Some(4 * GI));
    }
}
