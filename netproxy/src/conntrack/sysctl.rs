//! The conntrack sysctls the proxy sets at start, as upstream's kube-proxy
//! (`cmd/kube-proxy/app/conntrack.go`, `setSysctls`, from `KubeProxyConfiguration`'s
//! `conntrack` block):
//!
//! - `nf_conntrack_max` = `maxPerCore` × the node's online CPUs (capped at 1 Mi), or
//!   `min` when that is larger; `maxPerCore: 0` leaves it alone. Raised only (a larger
//!   value already set stays), and the module's `hashsize` raised to a quarter of it.
//! - `nf_conntrack_tcp_timeout_established`, `…_tcp_timeout_close_wait`,
//!   `nf_conntrack_udp_timeout`, `…_udp_timeout_stream`: set when positive and different;
//!   `tcpBeLiberal: true` sets `nf_conntrack_tcp_be_liberal` to 1.
//!
//! The timeouts are per network namespace. `nf_conntrack_max` and `hashsize` are global
//! and the kernel lets only the initial network namespace change them (upstream fails
//! to start there, and kind turns `maxPerCore` off for it): outside it they are left
//! alone with a warning naming the value in force, and the rest is still applied. The
//! paths are rooted ([`Sysctls::at`]) so the arithmetic is unit-tested on a temp dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upstream's cap on the scaled `nf_conntrack_max`.
pub const MAX_LIMIT: u64 = 1_048_576;

/// `KubeProxyConfiguration.conntrack` (upstream's defaults in [`Default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// `maxPerCore` (0: leave `nf_conntrack_max` alone).
    pub max_per_core: u64,
    /// `min`: the floor of the scaled maximum.
    pub min: u64,
    /// `tcpEstablishedTimeout` (zero: leave alone).
    pub tcp_established_timeout: Duration,
    /// `tcpCloseWaitTimeout` (zero: leave alone).
    pub tcp_close_wait_timeout: Duration,
    /// `tcpBeLiberal`.
    pub tcp_be_liberal: bool,
    /// `udpTimeout` (zero: leave alone).
    pub udp_timeout: Duration,
    /// `udpStreamTimeout` (zero: leave alone).
    pub udp_stream_timeout: Duration,
}

impl Default for ConntrackSettings {
    fn default() -> Self {
        Self {
            max_per_core: 32 * 1024,
            min: 128 * 1024,
            tcp_established_timeout: Duration::from_secs(24 * 3600),
            tcp_close_wait_timeout: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

/// A sysctl that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {value:?} is not a number", path.display())]
    Parse { path: PathBuf, value: String },
    #[error("setting {} to {value}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: u64,
        source: std::io::Error,
    },
}

/// What [`apply`] did with one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written: the entry and its new value.
    Set { entry: String, value: u64 },
    /// A global setting left alone outside the initial network namespace.
    NotInInitNetns {
        entry: String,
        current: u64,
        wanted: u64,
    },
}

/// Where the conntrack sysctls live, and whether this is the initial network namespace.
#[derive(Debug, Clone)]
pub struct Sysctls {
    /// The `net/netfilter` sysctl directory.
    netfilter: PathBuf,
    /// The `nf_conntrack` module's `hashsize` parameter.
    hashsize: PathBuf,
    /// Whether the global settings may be written.
    init_netns: bool,
}

impl Sysctls {
    /// The running kernel's, in the calling thread's network namespace.
    #[must_use]
    pub fn host() -> Self {
        Self {
            netfilter: PathBuf::from("/proc/sys/net/netfilter"),
            hashsize: PathBuf::from("/sys/module/nf_conntrack/parameters/hashsize"),
            init_netns: in_init_netns(),
        }
    }

    /// Files under `root` (`root/net/netfilter/*`, `root/hashsize`), for tests.
    #[must_use]
    pub fn at(root: &Path, init_netns: bool) -> Self {
        Self {
            netfilter: root.join("net/netfilter"),
            hashsize: root.join("hashsize"),
            init_netns,
        }
    }

    fn read(path: &Path) -> Result<u64, SysctlError> {
        let text = std::fs::read_to_string(path).map_err(|source| SysctlError::Read {
            path: path.to_owned(),
            source,
        })?;
        text.trim().parse().map_err(|_| SysctlError::Parse {
            path: path.to_owned(),
            value: text.trim().to_owned(),
        })
    }

    fn write(path: &Path, value: u64) -> Result<(), SysctlError> {
        std::fs::write(path, value.to_string()).map_err(|source| SysctlError::Write {
            path: path.to_owned(),
            value,
            source,
        })
    }
}

/// Whether the calling thread is in the initial network namespace (that of PID 1);
/// `false` when that cannot be told, so global settings are never written blindly.
#[must_use]
pub fn in_init_netns() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let ino = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    match (ino("/proc/thread-self/ns/net"), ino("/proc/1/ns/net")) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The node's online CPUs (`/sys/devices/system/cpu/online`, as upstream reads the
/// node's count rather than the process's cpuset), else the available parallelism.
#[must_use]
pub fn online_cpus() -> u64 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpu_list(&s))
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| u64::try_from(n.get()).unwrap_or(1))
        })
}

/// The number of CPUs in a kernel CPU list (`0-3,8,10-11`).
fn count_cpu_list(list: &str) -> Option<u64> {
    let mut n = 0;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => {
                part.parse::<u64>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// Upstream's `getConntrackMax`: the `nf_conntrack_max` wanted (0: leave it alone).
#[must_use]
pub fn wanted_max(settings: &ConntrackSettings, cpus: u64) -> u64 {
    if settings.max_per_core == 0 {
        return 0;
    }
    let scaled = settings.max_per_core.saturating_mul(cpus);
    if scaled > MAX_LIMIT {
        MAX_LIMIT
    } else {
        scaled.max(settings.min)
    }
}

/// Applies `settings` as upstream's `setSysctls` does; returns what changed or was
/// left alone. Stops at the first failure (upstream's proxy does not start then).
///
/// # Errors
/// A sysctl that cannot be read or written.
pub fn apply(
    settings: &ConntrackSettings,
    sys: &Sysctls,
    cpus: u64,
) -> Result<Vec<Outcome>, SysctlError> {
    let mut out = Vec::new();
    let max = wanted_max(settings, cpus);
    if max > 0 {
        let path = sys.netfilter.join("nf_conntrack_max");
        let current = Sysctls::read(&path)?;
        if current < max {
            set_global(sys, &path, "nf_conntrack_max", current, max, &mut out)?;
        }
        let hashsize = Sysctls::read(&sys.hashsize)?;
        if hashsize < max / 4 {
            set_global(sys, &sys.hashsize, "hashsize", hashsize, max / 4, &mut out)?;
        }
    }
    let seconds = |d: Duration| d.as_secs();
    for (entry, value) in [
        (
            "nf_conntrack_tcp_timeout_established",
            seconds(settings.tcp_established_timeout),
        ),
        (
            "nf_conntrack_tcp_timeout_close_wait",
            seconds(settings.tcp_close_wait_timeout),
        ),
        (
            "nf_conntrack_tcp_be_liberal",
            u64::from(settings.tcp_be_liberal),
        ),
        ("nf_conntrack_udp_timeout", seconds(settings.udp_timeout)),
        (
            "nf_conntrack_udp_timeout_stream",
            seconds(settings.udp_stream_timeout),
        ),
    ] {
        if value == 0 {
            continue;
        }
        let path = sys.netfilter.join(entry);
        // Upstream reads first and ignores a failed read (then writes).
        if Sysctls::read(&path).ok() != Some(value) {
            tracing::info!(entry = %format!("net/netfilter/{entry}"), value, "Set sysctl");
            Sysctls::write(&path, value)?;
            out.push(Outcome::Set {
                entry: entry.to_owned(),
                value,
            });
        }
    }
    Ok(out)
}

/// Raises a global setting in the initial network namespace; elsewhere warns.
fn set_global(
    sys: &Sysctls,
    path: &Path,
    entry: &str,
    current: u64,
    wanted: u64,
    out: &mut Vec<Outcome>,
) -> Result<(), SysctlError> {
    if !sys.init_netns {
        tracing::warn!(
            entry,
            current,
            wanted,
            "not in the initial network namespace: the kernel allows only it to change this \
             global conntrack setting, left as it is (set conntrack.maxPerCore to 0 to skip)"
        );
        out.push(Outcome::NotInInitNetns {
            entry: entry.to_owned(),
            current,
            wanted,
        });
        return Ok(());
    }
    tracing::info!(entry, value = wanted, "Set sysctl");
    Sysctls::write(path, wanted)?;
    out.push(Outcome::Set {
        entry: entry.to_owned(),
        value: wanted,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(values: &[(&str, u64)], hashsize: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("net/netfilter")).expect("mkdir");
        for (k, v) in values {
            std::fs::write(dir.path().join("net/netfilter").join(k), format!("{v}\n"))
                .expect("write");
        }
        std::fs::write(dir.path().join("hashsize"), format!("{hashsize}\n")).expect("write");
        dir
    }

    fn read(dir: &Path, entry: &str) -> u64 {
        Sysctls::read(&dir.join("net/netfilter").join(entry)).expect("read")
    }

    const KERNEL_DEFAULTS: &[(&str, u64)] = &[
        ("nf_conntrack_max", 65536),
        ("nf_conntrack_tcp_timeout_established", 432_000),
        ("nf_conntrack_tcp_timeout_close_wait", 60),
        ("nf_conntrack_tcp_be_liberal", 0),
        ("nf_conntrack_udp_timeout", 30),
        ("nf_conntrack_udp_timeout_stream", 120),
    ];

    #[test]
    fn max_as_upstream_get_conntrack_max() {
        let s = |per, min| ConntrackSettings {
            max_per_core: per,
            min,
            ..ConntrackSettings::default()
        };
        assert_eq!(wanted_max(&s(0, 131_072), 64), 0, "off");
        assert_eq!(wanted_max(&s(32_768, 131_072), 2), 131_072, "min floor");
        assert_eq!(wanted_max(&s(32_768, 131_072), 8), 262_144, "scaled");
        assert_eq!(wanted_max(&s(32_768, 0), 64), MAX_LIMIT, "capped");
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn defaults_raise_max_and_hashsize_and_set_tcp_timeouts() {
        let dir = root(KERNEL_DEFAULTS, 16384);
        let out = apply(
            &ConntrackSettings::default(),
            &Sysctls::at(dir.path(), true),
            8,
        )
        .expect("apply");
        assert_eq!(read(dir.path(), "nf_conntrack_max"), 262_144);
        assert_eq!(
            Sysctls::read(&dir.path().join("hashsize")).expect("hashsize"),
            65536
        );
        assert_eq!(
            read(dir.path(), "nf_conntrack_tcp_timeout_established"),
            86400
        );
        assert_eq!(
            read(dir.path(), "nf_conntrack_tcp_timeout_close_wait"),
            3600
        );
        // Zero durations and false leave the rest alone.
        assert_eq!(read(dir.path(), "nf_conntrack_udp_timeout"), 30);
        assert_eq!(read(dir.path(), "nf_conntrack_udp_timeout_stream"), 120);
        assert_eq!(read(dir.path(), "nf_conntrack_tcp_be_liberal"), 0);
        assert_eq!(out.len(), 4, "{out:?}");
        // A second run finds everything in place.
        let again = apply(
            &ConntrackSettings::default(),
            &Sysctls::at(dir.path(), true),
            8,
        )
        .expect("apply");
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn a_larger_max_stays_and_timeouts_may_go_down() {
        let mut values = KERNEL_DEFAULTS.to_vec();
        values[0].1 = 1_000_000;
        let dir = root(&values, 500_000);
        let settings = ConntrackSettings {
            tcp_established_timeout: Duration::from_secs(600),
            tcp_be_liberal: true,
            udp_timeout: Duration::from_secs(45),
            udp_stream_timeout: Duration::from_secs(150),
            ..ConntrackSettings::default()
        };
        apply(&settings, &Sysctls::at(dir.path(), true), 2).expect("apply");
        assert_eq!(read(dir.path(), "nf_conntrack_max"), 1_000_000);
        assert_eq!(
            read(dir.path(), "nf_conntrack_tcp_timeout_established"),
            600
        );
        assert_eq!(read(dir.path(), "nf_conntrack_tcp_be_liberal"), 1);
        assert_eq!(read(dir.path(), "nf_conntrack_udp_timeout"), 45);
        assert_eq!(read(dir.path(), "nf_conntrack_udp_timeout_stream"), 150);
    }

    #[test]
    fn outside_the_initial_netns_globals_are_left_and_reported() {
        let dir = root(KERNEL_DEFAULTS, 16384);
        let out = apply(
            &ConntrackSettings::default(),
            &Sysctls::at(dir.path(), false),
            8,
        )
        .expect("apply");
        assert_eq!(read(dir.path(), "nf_conntrack_max"), 65536, "untouched");
        assert_eq!(
            Sysctls::read(&dir.path().join("hashsize")).expect("hashsize"),
            16384
        );
        assert!(out.contains(&Outcome::NotInInitNetns {
            entry: "nf_conntrack_max".into(),
            current: 65536,
            wanted: 262_144
        }));
        // The per-namespace timeouts are still set.
        assert_eq!(
            read(dir.path(), "nf_conntrack_tcp_timeout_established"),
            86400
        );
    }

    #[test]
    fn an_unwritable_sysctl_is_an_error_naming_it() {
        let dir = root(KERNEL_DEFAULTS, 16384);
        let sys = Sysctls::at(&dir.path().join("missing"), true);
        let err = apply(&ConntrackSettings::default(), &sys, 8).expect_err("no files");
        assert!(err.to_string().contains("nf_conntrack_max"), "{err}");
    }
}
