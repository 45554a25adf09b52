//! Memory pressure notifications, so the eviction manager reacts to memory thresholds
//! between its periodic synchronisations.
//!
//! - **cgroup v1** ([`MemoryNotifier::threshold_v1`]): upstream's memcg threshold
//!   notifier (`pkg/kubelet/eviction/threshold_notifier_linux.go`): an eventfd is
//!   registered through `cgroup.event_control` as `"<eventfd> <fd of
//!   memory.usage_in_bytes> <bytes>"`, and the kernel signals the eventfd whenever usage
//!   crosses `bytes` in either direction. A threshold can't be changed in place; as
//!   upstream's `UpdateThreshold` does, [`MemoryNotifier::rearm_v1`] registers a new
//!   eventfd and closes the old one (closing it unregisters the event). The threshold to
//!   register is [`usage_threshold`]: `capacity − eviction threshold + inactive_file`
//!   (upstream `memory_threshold_notifier.go`), recomputed every sync.
//! - **cgroup v2** ([`MemoryNotifier::psi_v2`]): upstream has no notifier there (it
//!   returns a disabled one; kubernetes issue 106331). `memory.events` only changes on
//!   `high`/`max`/`oom` events, i.e. when a limit is hit, which the pods' cgroup on a
//!   node without `memory.high` rarely sees before the node itself is short. A PSI
//!   trigger on `memory.pressure` fires when tasks actually stall on memory (reclaim,
//!   refaults), which is what precedes an OOM whether or not a limit is set, and the
//!   kernel delivers it as `POLLPRI` on the file with no polling of ours. So v2 uses PSI:
//!   `"some <stall µs> <window µs>"` is written to `memory.pressure` and the fd is polled
//!   for priority events. Windows are whole multiples of 2s because the kernel refuses
//!   other windows to processes without `CAP_SYS_RESOURCE` (as on this project's hosts).
//!
//! Both wait asynchronously on tokio's [`AsyncFd`] (the eventfd is non-blocking; the PSI
//! fd is registered for [`Interest::PRIORITY`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};
use thiserror::Error;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::layout::Layout;

/// The v1 file whose value the threshold applies to.
pub const MEMORY_USAGE_FILE: &str = "memory.usage_in_bytes";
/// The v1 registration file.
pub const EVENT_CONTROL_FILE: &str = "cgroup.event_control";
/// The v2 pressure file.
pub const MEMORY_PRESSURE_FILE: &str = "memory.pressure";

/// A notifier failure, with the file involved.
#[derive(Debug, Error)]
pub enum NotifyError {
    /// The memory controller isn't mounted (v1) or there is no cgroup2 mount (v2).
    #[error("no memory cgroup hierarchy for cgroup {cgroup}")]
    NoHierarchy {
        /// The cgroup asked for.
        cgroup: String,
    },
    /// A cgroup file couldn't be opened.
    #[error("open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The eventfd couldn't be made.
    #[error("eventfd: {0}")]
    Eventfd(#[source] nix::Error),
    /// Registering the threshold or trigger was refused.
    #[error("write {value:?} to {path}: {source}")]
    Register {
        /// The file written.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        source: io::Error,
    },
    /// A PSI trigger outside the kernel's limits.
    #[error(
        "invalid psi trigger: stall {stall:?} must be at most window {window:?}, and the window between 500ms and 10s"
    )]
    InvalidTrigger {
        /// The stall threshold.
        stall: Duration,
        /// The window.
        window: Duration,
    },
    /// Waiting on the fd failed.
    #[error("wait for memory notification on {path}: {source}")]
    Wait {
        /// The file watched.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A PSI trigger: notify when tasks stalled on memory for `stall` within a `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsiTrigger {
    /// `full` (all non-idle tasks stalled) instead of `some` (at least one).
    pub full: bool,
    /// Total stall time within the window that fires the trigger.
    pub stall: Duration,
    /// The tracking window (500ms..=10s; a multiple of 2s without CAP_SYS_RESOURCE).
    pub window: Duration,
}

impl Default for PsiTrigger {
    /// `some 100000 2000000`: 100ms of memory stall within 2s.
    fn default() -> Self {
        PsiTrigger {
            full: false,
            stall: Duration::from_millis(100),
            window: Duration::from_secs(2),
        }
    }
}

impl PsiTrigger {
    /// The line written to `memory.pressure`, e.g. `some 100000 2000000`.
    ///
    /// # Errors
    /// [`NotifyError::InvalidTrigger`] when the kernel would refuse it for its range.
    pub fn line(&self) -> Result<String, NotifyError> {
        let window_ok =
            (Duration::from_millis(500)..=Duration::from_secs(10)).contains(&self.window);
        if !window_ok || self.stall.is_zero() || self.stall > self.window {
            return Err(NotifyError::InvalidTrigger {
                stall: self.stall,
                window: self.window,
            });
        }
        Ok(format!(
            "{} {} {}",
            if self.full { "full" } else { "some" },
            self.stall.as_micros(),
            self.window.as_micros()
        ))
    }
}

/// The v1 usage threshold that corresponds to an eviction threshold (upstream
/// `memoryThresholdNotifier.UpdateThreshold`): the working set reaches
/// `capacity − eviction_threshold` when usage reaches that plus the inactive file
/// cache (`usage − working_set`). All in bytes; saturates at 0.
pub fn usage_threshold(
    capacity: u64,
    eviction_threshold: u64,
    usage: u64,
    working_set: u64,
) -> u64 {
    capacity
        .saturating_sub(eviction_threshold)
        .saturating_add(usage.saturating_sub(working_set))
}

enum Kind {
    /// The eventfd registered with `cgroup.event_control`.
    Threshold(AsyncFd<EventFd>),
    /// The open `memory.pressure` with its trigger.
    Psi(AsyncFd<File>),
}

/// A memory notifier on one cgroup.
pub struct MemoryNotifier {
    kind: Kind,
    /// The cgroup directory.
    dir: PathBuf,
}

impl std::fmt::Debug for MemoryNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Threshold(_) => "memcg-threshold",
            Kind::Psi(_) => "psi",
        };
        f.debug_struct("MemoryNotifier")
            .field("kind", &kind)
            .field("dir", &self.dir)
            .finish()
    }
}

fn open(path: &Path, write: bool, read: bool) -> Result<File, NotifyError> {
    OpenOptions::new()
        .read(read)
        .write(write)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| NotifyError::Open {
            path: path.to_owned(),
            source,
        })
}

fn register_v1(dir: &Path, bytes: u64) -> Result<AsyncFd<EventFd>, NotifyError> {
    let usage = open(&dir.join(MEMORY_USAGE_FILE), false, true)?;
    let control_path = dir.join(EVENT_CONTROL_FILE);
    let mut control = open(&control_path, true, false)?;
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(NotifyError::Eventfd)?;
    let value = format!("{} {} {}", efd.as_raw_fd(), usage.as_raw_fd(), bytes);
    control
        .write_all(value.as_bytes())
        .map_err(|source| NotifyError::Register {
            path: control_path.clone(),
            value: value.clone(),
            source,
        })?;
    // The usage file and control fd may close now; the registration holds its own
    // references (upstream closes them too).
    // SAFETY: the `EventFd` owns its fd and moves into the `AsyncFd`, which never
    // closes or replaces it while registered; `as_raw_fd` always returns that fd.
    unsafe { AsyncFd::register_with_interest(efd, Interest::READABLE) }.map_err(|e| {
        NotifyError::Wait {
            path: control_path,
            source: e.into_parts().1,
        }
    })
}

impl MemoryNotifier {
    /// Registers a v1 memcg threshold of `bytes` on `memory.usage_in_bytes` of `cgroup`
    /// (an absolute cgroup path; `/` for the node). Needs a tokio runtime.
    ///
    /// # Errors
    /// [`NotifyError`] naming the file that failed.
    pub fn threshold_v1(layout: &Layout, cgroup: &str, bytes: u64) -> Result<Self, NotifyError> {
        let dir = layout
            .dir("memory", cgroup)
            .ok_or_else(|| NotifyError::NoHierarchy {
                cgroup: cgroup.to_owned(),
            })?;
        let fd = register_v1(&dir, bytes)?;
        Ok(MemoryNotifier {
            kind: Kind::Threshold(fd),
            dir,
        })
    }

    /// Replaces the v1 threshold with `bytes` (a new eventfd; the old one is closed,
    /// which unregisters it). On a PSI notifier, registers a v1 threshold in its place.
    ///
    /// # Errors
    /// [`NotifyError`]; the old registration is kept then.
    pub fn rearm_v1(&mut self, bytes: u64) -> Result<(), NotifyError> {
        let fd = register_v1(&self.dir, bytes)?;
        self.kind = Kind::Threshold(fd);
        Ok(())
    }

    /// Registers a PSI trigger on `memory.pressure` of `cgroup` in the unified
    /// hierarchy (`layout.dir` in v2; give a v2 layout of the cgroup2 mount on hybrid
    /// hosts). Needs a tokio runtime.
    ///
    /// # Errors
    /// [`NotifyError`] naming the file that failed (e.g. no PSI in the kernel).
    pub fn psi_v2(layout: &Layout, cgroup: &str, trigger: PsiTrigger) -> Result<Self, NotifyError> {
        let dir = layout
            .dir("memory", cgroup)
            .ok_or_else(|| NotifyError::NoHierarchy {
                cgroup: cgroup.to_owned(),
            })?;
        let line = trigger.line()?;
        let path = dir.join(MEMORY_PRESSURE_FILE);
        let mut file = open(&path, true, true)?;
        // The whole trigger in one write, NUL-terminated as the kernel docs show.
        let mut bytes = line.clone().into_bytes();
        bytes.push(0);
        file.write_all(&bytes)
            .map_err(|source| NotifyError::Register {
                path: path.clone(),
                value: line,
                source,
            })?;
        // SAFETY: the `File` owns its fd and moves into the `AsyncFd`, which never
        // closes or replaces it while registered; `as_raw_fd` always returns that fd.
        let fd =
            unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) }.map_err(|e| {
                NotifyError::Wait {
                    path,
                    source: e.into_parts().1,
                }
            })?;
        Ok(MemoryNotifier {
            kind: Kind::Psi(fd),
            dir,
        })
    }

    /// The cgroup directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits for the next notification: the v1 threshold crossed (either way), or the
    /// PSI trigger fired. Returns how many v1 events were counted (1 for PSI).
    /// Cancel-safe.
    ///
    /// # Errors
    /// [`NotifyError::Wait`] when the fd fails.
    pub async fn notified(&mut self) -> Result<u64, NotifyError> {
        let wait_err = |dir: &Path, file: &str, source| NotifyError::Wait {
            path: dir.join(file),
            source,
        };
        match &self.kind {
            Kind::Threshold(fd) => loop {
                let mut guard = fd
                    .readable()
                    .await
                    .map_err(|e| wait_err(&self.dir, EVENT_CONTROL_FILE, e))?;
                match guard.try_io(|inner| inner.get_ref().read().map_err(io::Error::from)) {
                    Ok(Ok(n)) => return Ok(n),
                    Ok(Err(e)) => return Err(wait_err(&self.dir, EVENT_CONTROL_FILE, e)),
                    Err(_would_block) => {}
                }
            },
            Kind::Psi(fd) => {
                let mut guard = fd
                    .ready(Interest::PRIORITY)
                    .await
                    .map_err(|e| wait_err(&self.dir, MEMORY_PRESSURE_FILE, e))?;
                guard.clear_ready();
                Ok(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_threshold_arithmetic() {
        const MI: u64 = 1024 * 1024;
        // capacity 4Gi, eviction at 100Mi available, 300Mi inactive file.
        assert_eq!(
            usage_threshold(4096 * MI, 100 * MI, 2000 * MI, 1700 * MI),
            (4096 - 100 + 300) * MI
        );
        assert_eq!(usage_threshold(100, 200, 10, 20), 0);
    }

    #[test]
    fn psi_trigger_lines() {
        assert_eq!(
            PsiTrigger::default().line().expect("line"),
            "some 100000 2000000"
        );
        let full = PsiTrigger {
            full: true,
            stall: Duration::from_millis(500),
            window: Duration::from_secs(4),
        };
        assert_eq!(full.line().expect("line"), "full 500000 4000000");
        for bad in [
            (Duration::from_secs(3), Duration::from_secs(2)),
            (Duration::ZERO, Duration::from_secs(2)),
            (Duration::from_millis(1), Duration::from_secs(11)),
            (Duration::from_millis(1), Duration::from_millis(100)),
        ] {
            let t = PsiTrigger {
                full: false,
                stall: bad.0,
                window: bad.1,
            };
            assert!(t.line().is_err(), "{t:?}");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = Layout::v1_at(tmp.path(), &["memory"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let _g = rt.enter();
        let err = MemoryNotifier::threshold_v1(&layout, "/nope", 1).expect_err("no cgroup");
        assert!(
            err.to_string().contains("nope/memory.usage_in_bytes"),
            "{err}"
        );
        let err = MemoryNotifier::threshold_v1(&Layout::v1_at(tmp.path(), &["cpu"]), "/", 1)
            .expect_err("no memory hierarchy");
        assert!(matches!(err, NotifyError::NoHierarchy { .. }));
        let err = MemoryNotifier::psi_v2(&Layout::v2_at(tmp.path()), "/x", PsiTrigger::default())
            .expect_err("no pressure file");
        assert!(err.to_string().contains("x/memory.pressure"), "{err}");
    }
}
