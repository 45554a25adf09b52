//! Removing a pod's cgroup once its containers are gone. runc creates and removes each
//! container's cgroup but leaves the parents it created; nodelet removes the pod level.
//! (The QoS hierarchy and limits belong to the `nodelet-cgroups` crate, to come.)

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The mount points of every cgroup hierarchy (v1 controllers and the v2 unified one),
/// read from `mounts` (normally `/proc/self/mounts`).
pub fn hierarchies(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, target, fstype) = (f.next()?, f.next()?, f.next()?);
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(target))
        })
        .collect()
}

/// Removes the (empty) cgroup `parent` from every hierarchy, deepest first. A missing
/// directory is fine; a non-empty one (a process still in it) is an error.
///
/// # Errors
/// The first `rmdir` failure other than "not found", with its path.
pub fn remove(parent: &str) -> Result<(), (PathBuf, io::Error)> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|e| (PathBuf::from("/proc/self/mounts"), e))?;
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return Ok(());
    }
    let mut first_err = None;
    for root in hierarchies(&mounts) {
        let dir = root.join(rel);
        if let Err(e) = remove_tree(&dir) {
            first_err.get_or_insert((dir, e));
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Removes a cgroup directory and any child cgroups left in it (cgroup directories are
/// removed with rmdir, children first; their control files go with them).
fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_and_v2_hierarchies() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\nproc /proc proc rw 0 0\n";
        assert_eq!(
            hierarchies(mounts),
            [
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/unified")
            ]
        );
    }
}
