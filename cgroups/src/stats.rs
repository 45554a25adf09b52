//! Usage statistics of one cgroup, read from its cgroup files the way cAdvisor reads
//! them for the kubelet's `/stats/summary`.
//!
//! Ported from google/cadvisor `container/libcontainer/handler.go` (`setCPUStats`,
//! `setMemoryStats`, `setThreadsStats`) over opencontainers/cgroups `fs/*.go` (v1) and
//! `fs2/{cpu,memory,pids}.go` (v2):
//! - working set = usage − inactive file, floored at 0 (`total_inactive_file` in v1,
//!   `inactive_file` in v2);
//! - RSS is `total_rss` in v1 (hierarchical accounting, which the kubelet's cgroups
//!   always have) and `anon` in v2;
//! - the v2 root cgroup has no `memory.current`/`memory.max`: like opencontainers/cgroups
//!   `fs2/memory.go` (`rootStatsFromMeminfo`), usage is `anon + file` of the root's
//!   `memory.stat` and there is no limit.
//!
//! A controller that isn't mounted or a file the kernel doesn't have gives `None` for
//! its fields; a cgroup whose directory is gone (before or during the read) is
//! [`StatsError::Gone`].

use std::io;
use std::path::{Path, PathBuf};

use crate::layout::{CgroupVersion, Layout};

/// A v1 `memory.limit_in_bytes` above this is "unlimited" (the kernel reports
/// `PAGE_COUNTER_MAX` pages rounded down, 9223372036854771712 on 4 KiB pages); the
/// kubelet's `isMemoryUnlimited` (pkg/kubelet/stats/helper.go) uses the same bound.
const UNLIMITED_ABOVE: u64 = 1 << 62;

/// What one read of a cgroup's files found. Cumulative counters (`cpu_usage_nanos`,
/// page faults, OOM kills) count since the cgroup was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Total CPU time of all tasks, in nanoseconds (v1 `cpuacct.usage`, v2 `cpu.stat`
    /// `usage_usec` × 1000).
    pub cpu_usage_nanos: Option<u64>,
    /// Memory in use, page cache included (v1 `memory.usage_in_bytes`, v2
    /// `memory.current`).
    pub memory_usage: Option<u64>,
    /// Usage minus inactive file pages, floored at 0: what the eviction manager ranks by.
    pub memory_working_set: Option<u64>,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub memory_rss: Option<u64>,
    /// Minor + major page faults (v1 `total_pgfault`, v2 `pgfault`): the whole subtree
    /// in both versions. (cadvisor's v1 `ContainerData.Pgfault`, which the upstream
    /// kubelet reports, is the cgroup's own `pgfault`, near 0 for a pod cgroup whose
    /// tasks all live in container cgroups; the hierarchical figure is the one v2 has.)
    pub page_faults: Option<u64>,
    /// Major page faults (v1 `total_pgmajfault`, v2 `pgmajfault`).
    pub major_page_faults: Option<u64>,
    /// The memory limit in bytes; `None` when unlimited or unknown.
    pub memory_limit: Option<u64>,
    /// OOM kills inside the cgroup (v1 `memory.oom_control` `oom_kill`, kernel ≥ 4.13;
    /// v2 `memory.events` `oom_kill`).
    pub oom_kills: Option<u64>,
    /// Tasks (threads) in the cgroup (`pids.current`).
    pub pids: Option<u64>,
}

/// Why a cgroup's stats could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The cgroup does not exist (or was removed while being read).
    #[error("cgroup {cgroup} does not exist")]
    Gone {
        /// The cgroup path asked for.
        cgroup: String,
    },
    /// A cgroup file exists but could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A cgroup file held something that isn't what the kernel writes there.
    #[error("parsing {}: unexpected value {value:?}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The offending text (a line or the whole value).
        value: String,
    },
}

/// Reads `cgroup`'s usage (an absolute cgroup path like `/kubepods/burstable/pod<uid>`,
/// or `/` for the root) from the hierarchies of `layout`.
///
/// # Errors
/// [`StatsError::Gone`] when the cgroup's directory doesn't exist in its memory or CPU
/// accounting hierarchy (checked before reading and again whenever a file turns out to
/// be missing); [`StatsError::Read`]/[`StatsError::Parse`] when a file that exists can't
/// be read or parsed.
pub fn read(layout: &Layout, cgroup: &str) -> Result<CgroupStats, StatsError> {
    let mut r = Reader {
        missing_file: false,
    };
    let essential = essential_dirs(layout, cgroup);
    if essential.iter().any(|d| !d.is_dir()) {
        return Err(gone(cgroup));
    }
    let stats = match layout.version() {
        CgroupVersion::V1 => read_v1(&mut r, layout, cgroup)?,
        CgroupVersion::V2 => read_v2(&mut r, layout, cgroup)?,
    };
    if r.missing_file && essential.iter().any(|d| !d.is_dir()) {
        return Err(gone(cgroup));
    }
    Ok(stats)
}

/// The directories whose absence means the cgroup is gone: in v1 the `memory` and
/// `cpuacct` hierarchies (whichever are mounted), in v2 the cgroup's one directory.
fn essential_dirs(layout: &Layout, cgroup: &str) -> Vec<PathBuf> {
    match layout.version() {
        CgroupVersion::V1 => ["memory", "cpuacct"]
            .iter()
            .filter_map(|c| layout.dir(c, cgroup))
            .collect(),
        CgroupVersion::V2 => layout.dir("memory", cgroup).into_iter().collect(),
    }
}

fn gone(cgroup: &str) -> StatsError {
    StatsError::Gone {
        cgroup: cgroup.to_owned(),
    }
}

fn read_v1(r: &mut Reader, layout: &Layout, cgroup: &str) -> Result<CgroupStats, StatsError> {
    let mut s = CgroupStats::default();
    if let Some(dir) = layout.dir("cpuacct", cgroup) {
        s.cpu_usage_nanos = r.single_u64(&dir.join("cpuacct.usage"))?;
    }
    if let Some(dir) = layout.dir("memory", cgroup) {
        s.memory_usage = r.single_u64(&dir.join("memory.usage_in_bytes"))?;
        if let Some(stat) = r.flat_keyed(&dir.join("memory.stat"))? {
            s.memory_working_set = working_set(s.memory_usage, stat.get("total_inactive_file"));
            s.memory_rss = stat.get("total_rss");
            s.page_faults = stat.get("total_pgfault");
            s.major_page_faults = stat.get("total_pgmajfault");
        }
        s.memory_limit = r
            .single_u64(&dir.join("memory.limit_in_bytes"))?
            .filter(|l| *l <= UNLIMITED_ABOVE);
        if let Some(oom) = r.flat_keyed(&dir.join("memory.oom_control"))? {
            s.oom_kills = oom.get("oom_kill");
        }
    }
    if let Some(dir) = layout.dir("pids", cgroup) {
        s.pids = r.single_u64(&dir.join("pids.current"))?;
    }
    Ok(s)
}

fn read_v2(r: &mut Reader, layout: &Layout, cgroup: &str) -> Result<CgroupStats, StatsError> {
    let mut s = CgroupStats::default();
    let Some(dir) = layout.dir("memory", cgroup) else {
        return Ok(s);
    };
    if let Some(cpu) = r.flat_keyed(&dir.join("cpu.stat"))? {
        s.cpu_usage_nanos = cpu.get("usage_usec").map(|u| u.saturating_mul(1000));
    }
    let is_root = cgroup.trim_matches('/').is_empty();
    let stat = r.flat_keyed(&dir.join("memory.stat"))?;
    s.memory_usage = if is_root {
        // No memory.current at the root: opencontainers/cgroups fs2/memory.go
        // rootStatsFromMeminfo sums anon + file, what v1's usage_in_bytes counts.
        stat.as_ref()
            .and_then(|st| Some(st.get("anon")?.saturating_add(st.get("file")?)))
    } else {
        r.single_u64(&dir.join("memory.current"))?
    };
    if let Some(stat) = &stat {
        s.memory_working_set = working_set(s.memory_usage, stat.get("inactive_file"));
        s.memory_rss = stat.get("anon");
        s.page_faults = stat.get("pgfault");
        s.major_page_faults = stat.get("pgmajfault");
    }
    if !is_root {
        s.memory_limit = r.single_u64_or_max(&dir.join("memory.max"))?;
        if let Some(events) = r.flat_keyed(&dir.join("memory.events"))? {
            s.oom_kills = events.get("oom_kill");
        }
        s.pids = r.single_u64(&dir.join("pids.current"))?;
    }
    Ok(s)
}

/// cadvisor `setMemoryStats`: usage minus inactive file, floored at 0; the usage alone
/// when the stat has no inactive-file line.
fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    let usage = usage?;
    Some(usage.saturating_sub(inactive_file.unwrap_or(0)))
}

/// A parsed flat-keyed cgroup file (`key value` per line).
struct FlatKeyed(Vec<(String, u64)>);

impl FlatKeyed {
    fn get(&self, key: &str) -> Option<u64> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// Reads cgroup files, remembering whether any was missing so the caller can tell a
/// missing file from a vanished cgroup.
struct Reader {
    missing_file: bool,
}

impl Reader {
    /// The file's text; `None` when it doesn't exist (or its cgroup was removed after
    /// it was opened, which the kernel reports as ENODEV).
    fn text(&mut self, path: &Path) -> Result<Option<String>, StatsError> {
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(Some(t)),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENODEV) =>
            {
                self.missing_file = true;
                Ok(None)
            }
            Err(source) => Err(StatsError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn single_u64(&mut self, path: &Path) -> Result<Option<u64>, StatsError> {
        let Some(text) = self.text(path)? else {
            return Ok(None);
        };
        parse_u64(path, text.trim()).map(Some)
    }

    /// A v2 single value where `max` means no limit (→ `None`).
    fn single_u64_or_max(&mut self, path: &Path) -> Result<Option<u64>, StatsError> {
        let Some(text) = self.text(path)? else {
            return Ok(None);
        };
        match text.trim() {
            "max" => Ok(None),
            v => parse_u64(path, v).map(Some),
        }
    }

    fn flat_keyed(&mut self, path: &Path) -> Result<Option<FlatKeyed>, StatsError> {
        let Some(text) = self.text(path)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            let (Some(k), Some(v), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(StatsError::Parse {
                    path: path.to_owned(),
                    value: line.to_owned(),
                });
            };
            out.push((k.to_owned(), parse_u64(path, v)?));
        }
        Ok(Some(FlatKeyed(out)))
    }
}

fn parse_u64(path: &Path, v: &str) -> Result<u64, StatsError> {
    v.parse().map_err(|_| StatsError::Parse {
        path: path.to_owned(),
        value: v.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A v1 `memory.stat` as a 5.10 kernel writes it for a cgroup with one process.
    const V1_MEMORY_STAT: &str = "\
cache 4055040
rss 31588352
rss_huge 0
shmem 0
mapped_file 1081344
dirty 0
writeback 0
pgpgin 17457
pgpgout 8757
pgfault 19536
pgmajfault 13
inactive_anon 31584256
active_anon 4096
inactive_file 2158592
active_file 1896448
unevictable 0
hierarchical_memory_limit 9223372036854771712
total_cache 4055040
total_rss 31588352
total_rss_huge 0
total_shmem 0
total_mapped_file 1081344
total_dirty 0
total_writeback 0
total_pgpgin 17457
total_pgpgout 8757
total_pgfault 19536
total_pgmajfault 13
total_inactive_anon 31584256
total_active_anon 4096
total_inactive_file 2158592
total_active_file 1896448
total_unevictable 0
";

    /// A v2 `memory.stat` (6.1 kernel), abridged only of the lines no one reads.
    const V2_MEMORY_STAT: &str = "\
anon 52293632
file 10240000
kernel 1843200
kernel_stack 98304
pagetables 262144
sec_pagetables 0
percpu 0
sock 0
vmalloc 0
shmem 0
file_mapped 3072000
file_dirty 0
file_writeback 0
swapcached 0
anon_thp 0
inactive_anon 52269056
active_anon 24576
inactive_file 6144000
active_file 4096000
unevictable 0
slab_reclaimable 1024000
slab_unreclaimable 409600
pgfault 23114
pgmajfault 7
workingset_refault_anon 0
";

    fn write(dir: &Path, name: &str, text: &str) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join(name), text).expect("write");
    }

    fn v1_tree(root: &Path, cg: &str) {
        let rel = cg.trim_start_matches('/');
        let cpuacct = root.join("cpuacct").join(rel);
        let memory = root.join("memory").join(rel);
        let pids = root.join("pids").join(rel);
        write(&cpuacct, "cpuacct.usage", "123456789\n");
        write(&memory, "memory.usage_in_bytes", "40000000\n");
        write(&memory, "memory.stat", V1_MEMORY_STAT);
        write(&memory, "memory.limit_in_bytes", "134217728\n");
        write(
            &memory,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(&pids, "pids.current", "3\n");
    }

    #[test]
    fn v1_every_field() {
        let t = tempfile::tempdir().expect("tempdir");
        v1_tree(t.path(), "/kubepods/pod1");
        let layout = Layout::v1_at(t.path(), &["cpu", "cpuacct", "memory", "pids"]);
        let s = read(&layout, "/kubepods/pod1").expect("stats");
        assert_eq!(
            s,
            CgroupStats {
                cpu_usage_nanos: Some(123_456_789),
                memory_usage: Some(40_000_000),
                memory_working_set: Some(40_000_000 - 2_158_592),
                memory_rss: Some(31_588_352),
                page_faults: Some(19_536),
                major_page_faults: Some(13),
                memory_limit: Some(134_217_728),
                oom_kills: Some(2),
                pids: Some(3),
            }
        );
    }

    #[test]
    fn v1_unlimited_and_floor_and_missing_controller() {
        let t = tempfile::tempdir().expect("tempdir");
        v1_tree(t.path(), "/");
        let mem = t.path().join("memory");
        write(&mem, "memory.limit_in_bytes", "9223372036854771712\n");
        // usage below inactive file (possible between two reads): working set 0.
        write(&mem, "memory.usage_in_bytes", "1000\n");
        // An older kernel: no oom_kill line.
        write(
            &mem,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\n",
        );
        // pids not mounted in this layout.
        let layout = Layout::v1_at(t.path(), &["cpuacct", "memory"]);
        let s = read(&layout, "/").expect("stats");
        assert_eq!(s.memory_limit, None);
        assert_eq!(s.memory_working_set, Some(0));
        assert_eq!(s.oom_kills, None);
        assert_eq!(s.pids, None);
        assert_eq!(s.cpu_usage_nanos, Some(123_456_789));
    }

    #[test]
    fn v1_missing_file_is_none_and_missing_cgroup_is_gone() {
        let t = tempfile::tempdir().expect("tempdir");
        v1_tree(t.path(), "/a");
        fs::remove_file(t.path().join("pids/a/pids.current")).expect("rm");
        let layout = Layout::v1_at(t.path(), &["cpuacct", "memory", "pids", "hugetlb"]);
        let s = read(&layout, "/a").expect("stats");
        assert_eq!(s.pids, None);
        assert_eq!(s.memory_usage, Some(40_000_000));
        assert!(matches!(
            read(&layout, "/b"),
            Err(StatsError::Gone { cgroup }) if cgroup == "/b"
        ));
    }

    #[test]
    fn garbage_is_a_parse_error_naming_the_file() {
        let t = tempfile::tempdir().expect("tempdir");
        v1_tree(t.path(), "/a");
        write(&t.path().join("cpuacct/a"), "cpuacct.usage", "lots\n");
        let layout = Layout::v1_at(t.path(), &["cpuacct", "memory"]);
        let e = read(&layout, "/a").expect_err("garbage");
        assert!(e.to_string().contains("cpuacct.usage"), "{e}");
        assert!(e.to_string().contains("lots"), "{e}");
    }

    fn v2_tree(root: &Path, cg: &str) {
        let dir = root.join(cg.trim_start_matches('/'));
        write(
            &dir,
            "cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
        );
        write(&dir, "memory.stat", V2_MEMORY_STAT);
        if !cg.trim_matches('/').is_empty() {
            write(&dir, "memory.current", "65536000\n");
            write(&dir, "memory.max", "268435456\n");
            write(
                &dir,
                "memory.events",
                "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
            );
            write(&dir, "pids.current", "5\n");
        }
    }

    #[test]
    fn v2_every_field() {
        let t = tempfile::tempdir().expect("tempdir");
        v2_tree(t.path(), "/kubepods.slice/pod1");
        let layout = Layout::v2_at(t.path());
        let s = read(&layout, "/kubepods.slice/pod1").expect("stats");
        assert_eq!(
            s,
            CgroupStats {
                cpu_usage_nanos: Some(2_500_000_000),
                memory_usage: Some(65_536_000),
                memory_working_set: Some(65_536_000 - 6_144_000),
                memory_rss: Some(52_293_632),
                page_faults: Some(23_114),
                major_page_faults: Some(7),
                memory_limit: Some(268_435_456),
                oom_kills: Some(1),
                pids: Some(5),
            }
        );
    }

    #[test]
    fn v2_max_is_unlimited() {
        let t = tempfile::tempdir().expect("tempdir");
        v2_tree(t.path(), "/a");
        write(&t.path().join("a"), "memory.max", "max\n");
        let s = read(&Layout::v2_at(t.path()), "/a").expect("stats");
        assert_eq!(s.memory_limit, None);
    }

    #[test]
    fn v2_root_usage_is_anon_plus_file() {
        let t = tempfile::tempdir().expect("tempdir");
        v2_tree(t.path(), "/");
        let s = read(&Layout::v2_at(t.path()), "/").expect("stats");
        let usage = 52_293_632 + 10_240_000;
        assert_eq!(
            s,
            CgroupStats {
                cpu_usage_nanos: Some(2_500_000_000),
                memory_usage: Some(usage),
                memory_working_set: Some(usage - 6_144_000),
                memory_rss: Some(52_293_632),
                page_faults: Some(23_114),
                major_page_faults: Some(7),
                memory_limit: None,
                oom_kills: None,
                pids: None,
            }
        );
    }

    #[test]
    fn v2_gone() {
        let t = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            read(&Layout::v2_at(t.path()), "/nope"),
            Err(StatsError::Gone { .. })
        ));
    }
}
