//! The mounts volumes make: tmpfs for memory-backed emptyDirs and for the secret,
//! projected and downwardAPI volumes (upstream wraps those in a `medium: Memory`
//! emptyDir so their content never reaches a disk), and finding and unmounting every
//! mount under a pod's directory at teardown.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::Reason;

/// Every mount point in this mount namespace, from `/proc/self/mountinfo` (field 5,
/// with the kernel's octal escapes for space, tab, newline and backslash undone).
pub(crate) fn mount_points() -> Result<Vec<PathBuf>, Reason> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| Reason::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect())
}

/// Undoes the kernel's octal escapes in a `/proc/self/mountinfo` field.
pub(crate) fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `dir` is a mount point.
pub(crate) fn is_mount_point(dir: &Path) -> Result<bool, Reason> {
    Ok(mount_points()?.iter().any(|p| p == dir))
}

/// Mounts a tmpfs on `dir` unless one is there already. `mode` is the root's mode
/// option (`None`: tmpfs' own 1777), `size_bytes` its size limit.
pub(crate) fn mount_tmpfs(
    dir: &Path,
    mode: Option<u32>,
    size_bytes: Option<u64>,
) -> Result<(), Reason> {
    if is_mount_point(dir)? {
        return Ok(());
    }
    let mut options = Vec::new();
    if let Some(mode) = mode {
        options.push(format!("mode={mode:04o}"));
    }
    if let Some(size) = size_bytes {
        options.push(format!("size={size}"));
    }
    let options = options.join(",");
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        (!options.is_empty()).then_some(options.as_str()),
    )
    .map_err(|e| Reason::Mount {
        path: dir.to_owned(),
        reason: format!("mount tmpfs ({options}): {e}"),
    })
}

/// Unmounts every mount at or below `dir`, deepest first; keeps going past failures
/// and returns them all.
pub(crate) fn unmount_all_under(dir: &Path) -> Vec<Reason> {
    let points = match mount_points() {
        Ok(p) => p,
        Err(e) => return vec![e],
    };
    let mut under: Vec<PathBuf> = points.into_iter().filter(|p| p.starts_with(dir)).collect();
    under.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    under.dedup();
    let mut errors = Vec::new();
    for p in under {
        // A path mounted twice needs two unmounts: repeat while it is still mounted.
        loop {
            match nix::mount::umount2(&p, MntFlags::MNT_DETACH) {
                Ok(()) => {}
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => break,
                Err(e) => {
                    errors.push(Reason::Mount {
                        path: p.clone(),
                        reason: format!("unmount: {e}"),
                    });
                    break;
                }
            }
            if !matches!(is_mount_point(&p), Ok(true)) {
                break;
            }
        }
    }
    errors
}

/// A temp dir for tests that unmounts whatever is still mounted under it when dropped,
/// before the directory itself goes, so a failing test leaks no mount.
#[cfg(test)]
pub(crate) struct TestDir(pub tempfile::TempDir);

#[cfg(test)]
impl TestDir {
    pub(crate) fn new() -> Self {
        Self(tempfile::tempdir().expect("tempdir"))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = unmount_all_under(self.0.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_undone() {
        assert_eq!(unescape(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape(r"/plain\9"), r"/plain\9");
    }

    #[test]
    fn tmpfs_mounted_once_and_unmounted() {
        let tmp = TestDir::new();
        let dir = tmp.path().join("with space");
        fs::create_dir(&dir).expect("mkdir");
        mount_tmpfs(&dir, Some(0o755), Some(1 << 20)).expect("mount");
        mount_tmpfs(&dir, Some(0o755), Some(1 << 20)).expect("mount again");
        let count = mount_points()
            .expect("mountinfo")
            .iter()
            .filter(|p| **p == dir)
            .count();
        assert_eq!(count, 1);
        assert!(unmount_all_under(tmp.path()).is_empty());
        assert!(!is_mount_point(&dir).expect("mountinfo"));
    }
}
