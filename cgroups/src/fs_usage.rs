//! Filesystem usage: the whole filesystem a path lives on (`statvfs`), and what one
//! directory tree holds (a bounded `du`), for the node fs, the image fs, emptyDir
//! volumes and container log directories in `/stats/summary`.
//!
//! The filesystem figures follow cadvisor `fs/fs.go` (`getVfsStats`): capacity =
//! blocks × frsize, available = bavail × frsize, used = (blocks − bfree) × frsize. The
//! tree walk follows kubernetes `pkg/volume/util/fs/fs.go` (`DiskUsage`): bytes are
//! `st_blocks × 512`, an inode with several hard links counts once, and the walk stays
//! on the starting directory's filesystem. Unlike upstream (which shells out to nothing
//! and walks to the end), this walk stops at a limit on entries and time and says so,
//! so one huge emptyDir can't stall a stats round.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A filesystem's size and use, in bytes and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Total size.
    pub capacity: u64,
    /// Space an unprivileged user can still use.
    pub available: u64,
    /// Space in use (all users).
    pub used: u64,
    /// Total inodes.
    pub inodes: u64,
    /// Free inodes.
    pub inodes_free: u64,
    /// Inodes in use.
    pub inodes_used: u64,
}

/// What a directory tree holds on its own filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirUsage {
    /// Allocated bytes (`st_blocks × 512`), each inode counted once.
    pub bytes: u64,
    /// Distinct inodes, the directory itself included.
    pub inodes: u64,
    /// The walk stopped at a limit before seeing every entry: the figures are a lower
    /// bound.
    pub truncated: bool,
}

/// Bounds of one [`dir_usage`] walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirLimits {
    /// Stop after examining this many entries.
    pub max_entries: u64,
    /// Stop after walking this long.
    pub max_duration: Duration,
}

impl Default for DirLimits {
    /// One million entries or two seconds, whichever comes first.
    fn default() -> Self {
        DirLimits {
            max_entries: 1_000_000,
            max_duration: Duration::from_secs(2),
        }
    }
}

/// Why a usage figure could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FsUsageError {
    /// `statvfs` failed.
    #[error("statvfs {}: {source}", path.display())]
    Statvfs {
        /// The path asked about.
        path: PathBuf,
        /// The errno.
        source: nix::Error,
    },
    /// An entry of the tree could not be examined or listed.
    #[error("walking {}: {source}", path.display())]
    Walk {
        /// The entry.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// The size and use of the filesystem holding `path`.
///
/// # Errors
/// When `statvfs(2)` fails (the path doesn't exist, or isn't reachable).
pub fn statvfs(path: &Path) -> Result<FsStats, FsUsageError> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|source| FsUsageError::Statvfs {
        path: path.to_owned(),
        source,
    })?;
    // The field types differ between libc targets; all fit u64.
    let frsize = s.fragment_size() as u64;
    let blocks = s.blocks() as u64;
    let bfree = s.blocks_free() as u64;
    let bavail = s.blocks_available() as u64;
    let files = s.files() as u64;
    let ffree = s.files_free() as u64;
    Ok(FsStats {
        capacity: blocks.saturating_mul(frsize),
        available: bavail.saturating_mul(frsize),
        used: blocks.saturating_sub(bfree).saturating_mul(frsize),
        inodes: files,
        inodes_free: ffree,
        inodes_used: files.saturating_sub(ffree),
    })
}

/// What the tree at `path` holds on `path`'s filesystem, like `du -sx` plus an inode
/// count. Symlinks are counted, not followed; mount points below `path` are not
/// entered (nor counted); entries that vanish during the walk are skipped.
///
/// # Errors
/// When `path` itself can't be examined, or an entry under it can't be examined or
/// listed for a reason other than having vanished.
pub fn dir_usage(path: &Path, limits: DirLimits) -> Result<DirUsage, FsUsageError> {
    let started = Instant::now();
    let walk_err = |p: &Path, source| FsUsageError::Walk {
        path: p.to_owned(),
        source,
    };
    let top = std::fs::symlink_metadata(path).map_err(|e| walk_err(path, e))?;
    let dev = top.dev();
    let mut usage = DirUsage::default();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut entries: u64 = 0;
    let mut count = |md: &std::fs::Metadata, usage: &mut DirUsage| {
        if md.nlink() > 1 && !md.is_dir() && !seen.insert(md.ino()) {
            return;
        }
        usage.bytes = usage.bytes.saturating_add(md.blocks().saturating_mul(512));
        usage.inodes += 1;
    };
    count(&top, &mut usage);
    let mut stack = if top.is_dir() {
        vec![path.to_owned()]
    } else {
        Vec::new()
    };
    while let Some(dir) = stack.pop() {
        let listing = match std::fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(walk_err(&dir, e)),
        };
        for entry in listing {
            if entries >= limits.max_entries || started.elapsed() >= limits.max_duration {
                usage.truncated = true;
                return Ok(usage);
            }
            entries += 1;
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(walk_err(&dir, e)),
            };
            let p = entry.path();
            let md = match std::fs::symlink_metadata(&p) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(walk_err(&p, e)),
            };
            if md.dev() != dev {
                continue;
            }
            count(&md, &mut usage);
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn statvfs_of_a_temp_dir_adds_up() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = statvfs(t.path()).expect("statvfs");
        assert!(s.capacity > 0);
        assert!(s.used <= s.capacity && s.available <= s.capacity);
        assert_eq!(s.inodes_used, s.inodes - s.inodes_free);
        let e = statvfs(&t.path().join("nope")).expect_err("missing");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn dir_usage_counts_blocks_inodes_and_hard_links_once() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path();
        fs::create_dir_all(d.join("a/b")).expect("mkdir");
        fs::write(d.join("a/one"), vec![7u8; 64 * 1024]).expect("write");
        fs::write(d.join("a/b/two"), vec![7u8; 128 * 1024]).expect("write");
        fs::hard_link(d.join("a/b/two"), d.join("a/two-again")).expect("link");
        std::os::unix::fs::symlink("one", d.join("a/sym")).expect("symlink");

        let md = |p: &str| fs::symlink_metadata(d.join(p)).expect("stat");
        let expected_bytes: u64 = [".", "a", "a/b", "a/one", "a/b/two", "a/sym"]
            .iter()
            .map(|p| md(p).blocks() * 512)
            .sum();
        let u = dir_usage(d, DirLimits::default()).expect("du");
        assert_eq!(
            u,
            DirUsage {
                bytes: expected_bytes,
                inodes: 6,
                truncated: false,
            }
        );
        assert!(u.bytes >= (64 + 128) * 1024);
    }

    #[test]
    fn dir_usage_stops_at_the_entry_limit_and_says_so() {
        let t = tempfile::tempdir().expect("tempdir");
        for i in 0..20 {
            fs::write(t.path().join(format!("f{i}")), b"x").expect("write");
        }
        let u = dir_usage(
            t.path(),
            DirLimits {
                max_entries: 5,
                max_duration: Duration::from_secs(60),
            },
        )
        .expect("du");
        assert!(u.truncated);
        assert_eq!(u.inodes, 1 + 5);
        let whole = dir_usage(t.path(), DirLimits::default()).expect("du");
        assert!(!whole.truncated);
        assert_eq!(whole.inodes, 21);
    }

    #[test]
    fn dir_usage_does_not_cross_into_another_filesystem() {
        // /sys/fs/cgroup is a tmpfs whose entries are (mostly) the mount points of the
        // cgroup hierarchies: none of those may be counted or entered.
        let top = Path::new("/sys/fs/cgroup");
        let Ok(top_md) = fs::symlink_metadata(top) else {
            eprintln!("skipped: no /sys/fs/cgroup on this host");
            return;
        };
        let mut same_dev = 0;
        let mut other_dev = 0;
        for e in fs::read_dir(top).expect("list /sys/fs/cgroup") {
            let md = fs::symlink_metadata(e.expect("entry").path()).expect("stat");
            if md.dev() == top_md.dev() {
                if md.is_dir() {
                    eprintln!("skipped: /sys/fs/cgroup holds a plain directory");
                    return;
                }
                same_dev += 1;
            } else {
                other_dev += 1;
            }
        }
        if other_dev == 0 {
            eprintln!("skipped: nothing is mounted under /sys/fs/cgroup");
            return;
        }
        let u = dir_usage(top, DirLimits::default()).expect("du");
        assert_eq!(u.inodes, 1 + same_dev);
        assert!(!u.truncated);
    }

    #[test]
    fn dir_usage_of_a_missing_path_is_an_error() {
        let t = tempfile::tempdir().expect("tempdir");
        let e = dir_usage(&t.path().join("gone"), DirLimits::default()).expect_err("missing");
        assert!(e.to_string().contains("gone"), "{e}");
    }

    #[test]
    fn dir_usage_of_a_file_is_that_file() {
        let t = tempfile::tempdir().expect("tempdir");
        let f = t.path().join("log");
        fs::write(&f, vec![1u8; 10_000]).expect("write");
        let u = dir_usage(&f, DirLimits::default()).expect("du");
        assert_eq!(u.inodes, 1);
        assert_eq!(u.bytes, fs::metadata(&f).expect("stat").blocks() * 512);
    }
}
