//! `/proc/meminfo`, and the node's memory as the kubelet's eviction manager sees it.
//!
//! The kubelet takes the node's memory from cAdvisor's root container: the capacity is
//! `MemTotal` (cadvisor `machine.GetMachineMemoryCapacity`), usage and working set come
//! from the root cgroup's files, and `availableBytes = capacity − workingSet`
//! (kubernetes `pkg/kubelet/stats/helper.go` `cadvisorInfoToContainerStats`, the root's
//! memory limit being the machine capacity). The eviction manager's `memory.available`
//! signal is that value, its capacity `available + workingSet`
//! (`pkg/kubelet/eviction/helpers.go` `makeSignalObservations`).

use std::io;
use std::path::{Path, PathBuf};

use crate::layout::Layout;
use crate::stats::{self, StatsError};

/// The lines of `/proc/meminfo` the node agent uses, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemFree`.
    pub free: u64,
    /// `MemAvailable` (the kernel's estimate; 0 on kernels older than 3.14).
    pub available: u64,
    /// `Buffers`.
    pub buffers: u64,
    /// `Cached`.
    pub cached: u64,
    /// `Active(file)`.
    pub active_file: u64,
    /// `Inactive(file)`.
    pub inactive_file: u64,
    /// `SwapTotal`.
    pub swap_total: u64,
    /// `SwapFree`.
    pub swap_free: u64,
}

/// The node's memory for the summary API and eviction, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeMemory {
    /// Physical memory (`MemTotal`).
    pub capacity: u64,
    /// The root cgroup's usage, page cache included.
    pub usage: u64,
    /// Usage minus inactive file pages, floored at 0.
    pub working_set: u64,
    /// `capacity − working_set`, floored at 0: the `memory.available` eviction signal.
    pub available: u64,
    /// Anonymous memory of the root cgroup, when the kernel reports it.
    pub rss: Option<u64>,
    /// Page faults of the root cgroup, when the kernel reports them.
    pub page_faults: Option<u64>,
    /// Major page faults of the root cgroup, when the kernel reports them.
    pub major_page_faults: Option<u64>,
}

/// Why the node's memory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MemInfoError {
    /// `/proc/meminfo` could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line of `/proc/meminfo` isn't `Name: <n> [kB]`.
    #[error("parsing {}: unexpected line {line:?}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line.
        line: String,
    },
    /// `MemTotal` is missing.
    #[error("{} has no MemTotal line", path.display())]
    NoTotal {
        /// The file.
        path: PathBuf,
    },
    /// The root cgroup's stats could not be read.
    #[error("reading the root cgroup's memory: {0}")]
    Root(#[from] StatsError),
}

/// Parses `<proc_root>/meminfo`.
///
/// # Errors
/// When the file can't be read, a line of it doesn't parse, or it has no `MemTotal`.
pub fn read_meminfo(proc_root: &Path) -> Result<MemInfo, MemInfoError> {
    let path = proc_root.join("meminfo");
    let text = std::fs::read_to_string(&path).map_err(|source| MemInfoError::Read {
        path: path.clone(),
        source,
    })?;
    parse_meminfo(&path, &text)
}

fn parse_meminfo(path: &Path, text: &str) -> Result<MemInfo, MemInfoError> {
    let mut m = MemInfo::default();
    let mut has_total = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || MemInfoError::Parse {
            path: path.to_owned(),
            line: line.to_owned(),
        };
        let (name, rest) = line.split_once(':').ok_or_else(bad)?;
        let mut parts = rest.split_whitespace();
        let n: u64 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let bytes = match parts.next() {
            Some("kB") => n.saturating_mul(1024),
            None => n,
            Some(_) => return Err(bad()),
        };
        let field = match name {
            "MemTotal" => {
                has_total = true;
                &mut m.total
            }
            "MemFree" => &mut m.free,
            "MemAvailable" => &mut m.available,
            "Buffers" => &mut m.buffers,
            "Cached" => &mut m.cached,
            "Active(file)" => &mut m.active_file,
            "Inactive(file)" => &mut m.inactive_file,
            "SwapTotal" => &mut m.swap_total,
            "SwapFree" => &mut m.swap_free,
            _ => continue,
        };
        *field = bytes;
    }
    if !has_total {
        return Err(MemInfoError::NoTotal {
            path: path.to_owned(),
        });
    }
    Ok(m)
}

/// The node's memory: capacity from `<proc_root>/meminfo`, usage and working set from
/// the root cgroup (`/`) of `layout`. When the root cgroup has no memory figures (the
/// memory controller isn't mounted), usage is `MemTotal − MemFree` and the working set
/// that minus `Inactive(file)`, the same formula over the kernel's global counters.
///
/// # Errors
/// When meminfo can't be read or parsed, or the root cgroup's files can't be read.
pub fn node_memory(layout: &Layout, proc_root: &Path) -> Result<NodeMemory, MemInfoError> {
    let info = read_meminfo(proc_root)?;
    let root = stats::read(layout, "/")?;
    let (usage, working_set) = match (root.memory_usage, root.memory_working_set) {
        (Some(u), Some(ws)) => (u, ws),
        _ => {
            let usage = info.total.saturating_sub(info.free);
            (usage, usage.saturating_sub(info.inactive_file))
        }
    };
    Ok(NodeMemory {
        capacity: info.total,
        usage,
        working_set,
        available: info.total.saturating_sub(working_set),
        rss: root.memory_rss,
        page_faults: root.page_faults,
        major_page_faults: root.major_page_faults,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const MEMINFO: &str = "\
MemTotal:       24683656 kB
MemFree:        17683784 kB
MemAvailable:   23486036 kB
Buffers:           44036 kB
Cached:          5620896 kB
SwapCached:            0 kB
Active:          2474860 kB
Inactive:        3796216 kB
Active(anon):     617068 kB
Inactive(anon):        0 kB
Active(file):    1857792 kB
Inactive(file):  3796216 kB
Unevictable:           0 kB
SwapTotal:       1048572 kB
SwapFree:        1048000 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
";

    #[test]
    fn parses_meminfo_in_bytes() {
        let m = parse_meminfo(Path::new("/proc/meminfo"), MEMINFO).expect("parse");
        assert_eq!(
            m,
            MemInfo {
                total: 24_683_656 * 1024,
                free: 17_683_784 * 1024,
                available: 23_486_036 * 1024,
                buffers: 44_036 * 1024,
                cached: 5_620_896 * 1024,
                active_file: 1_857_792 * 1024,
                inactive_file: 3_796_216 * 1024,
                swap_total: 1_048_572 * 1024,
                swap_free: 1_048_000 * 1024,
            }
        );
    }

    #[test]
    fn rejects_garbage_and_missing_total() {
        let p = Path::new("/proc/meminfo");
        let e = parse_meminfo(p, "MemTotal: lots kB\n").expect_err("garbage");
        assert!(e.to_string().contains("lots"), "{e}");
        assert!(matches!(
            parse_meminfo(p, "MemFree: 1 kB\n"),
            Err(MemInfoError::NoTotal { .. })
        ));
    }

    #[test]
    fn node_memory_from_the_v1_root_cgroup() {
        let t = tempfile::tempdir().expect("tempdir");
        let proc_root = t.path().join("proc");
        fs::create_dir_all(&proc_root).expect("mkdir");
        fs::write(proc_root.join("meminfo"), MEMINFO).expect("write");
        let mem = t.path().join("cg/memory");
        fs::create_dir_all(&mem).expect("mkdir");
        fs::write(mem.join("memory.usage_in_bytes"), "6000000000\n").expect("write");
        fs::write(
            mem.join("memory.stat"),
            "total_rss 600000000\ntotal_inactive_file 3000000000\ntotal_pgfault 9\ntotal_pgmajfault 1\n",
        )
        .expect("write");
        let layout = Layout::v1_at(&t.path().join("cg"), &["memory"]);
        let n = node_memory(&layout, &proc_root).expect("node memory");
        let capacity = 24_683_656 * 1024;
        assert_eq!(
            n,
            NodeMemory {
                capacity,
                usage: 6_000_000_000,
                working_set: 3_000_000_000,
                available: capacity - 3_000_000_000,
                rss: Some(600_000_000),
                page_faults: Some(9),
                major_page_faults: Some(1),
            }
        );
    }

    #[test]
    fn node_memory_without_a_memory_controller_uses_meminfo() {
        let t = tempfile::tempdir().expect("tempdir");
        fs::write(t.path().join("meminfo"), MEMINFO).expect("write");
        fs::create_dir_all(t.path().join("cg/cpuacct")).expect("mkdir");
        let layout = Layout::v1_at(&t.path().join("cg"), &["cpuacct"]);
        let n = node_memory(&layout, t.path()).expect("node memory");
        let usage = (24_683_656 - 17_683_784) * 1024;
        assert_eq!(n.usage, usage);
        assert_eq!(n.working_set, usage - 3_796_216 * 1024);
        assert_eq!(n.available, 24_683_656 * 1024 - n.working_set);
        assert_eq!(n.rss, None);
    }

    #[test]
    fn this_hosts_meminfo_parses() {
        let m = read_meminfo(Path::new("/proc")).expect("host meminfo");
        assert!(m.total > 0 && m.free <= m.total);
    }
}
