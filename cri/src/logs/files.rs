//! The files around container logs, named and kept as upstream's kubelet keeps them:
//! the pod log directories `<pod-logs-dir>/<namespace>_<name>_<uid>/` and the
//! `/var/log/containers/<pod>_<namespace>_<container>-<containerID>.log` symlinks
//! that log shippers (Fluent Bit, Vector, Promtail, …) tail.
//!
//! Upstream: `BuildPodLogsDirectory` and `parsePodUIDFromLogsDirectory`
//! (`pkg/kubelet/kuberuntime/helpers.go`), `logSymlink` and `legacyLogSymlink`
//! (`legacy.go`), `removeContainerLog` and the container GC's dead-symlink sweep and
//! `evictPodLogsDirectories` (`kuberuntime_gc.go`).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Upstream's `ext4MaxFileNameLen`: a symlink's name (suffix included) is cut to it.
const MAX_FILE_NAME_LEN: usize = 255;
/// The symlinks' suffix (upstream's `legacyLogSuffix`).
const LOG_SUFFIX: &str = ".log";

/// A log file or directory that could not be made, read or removed.
#[derive(Debug, Error)]
#[error("{op} {path}: {source}")]
pub struct LogFileError {
    /// What was being done (`remove pod log directory`, …).
    pub op: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

fn err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LogFileError {
    let path = path.to_path_buf();
    move |source| LogFileError { op, path, source }
}

/// What a sweep removed, and what it could not (it keeps going past failures).
#[derive(Debug, Default)]
pub struct Pruned {
    /// The paths removed.
    pub removed: Vec<PathBuf>,
    /// The failures met on the way.
    pub errors: Vec<LogFileError>,
}

/// A pod's log directory: `<pod_logs_dir>/<namespace>_<name>_<uid>` (upstream's
/// `BuildPodLogsDirectory`).
pub fn pod_log_dir(pod_logs_dir: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    pod_logs_dir.join(format!("{namespace}_{name}_{uid}"))
}

/// Removes a pod's log directory and everything in it; a missing one is fine.
///
/// # Errors
/// [`LogFileError`] when the directory exists and can't be removed.
pub fn remove_pod_log_dir(
    pod_logs_dir: &Path,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<(), LogFileError> {
    let dir = pod_log_dir(pod_logs_dir, namespace, name, uid);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err("remove", &dir)(e)),
        _ => Ok(()),
    }
}

/// The pod UID a log directory's name carries: its last `_`-separated field, as
/// upstream's `parsePodUIDFromLogsDirectory` reads it (a pod name can't hold `_`,
/// but this stays right if one did).
fn uid_of_log_dir(name: &str) -> &str {
    name.rsplit('_').next().unwrap_or(name)
}

/// Removes the pod log directories under `pod_logs_dir` whose pod UID is not in
/// `keep_uids` (upstream's `evictPodLogsDirectories`, which the container GC runs
/// once every source has reported its pods). Only directories are considered.
///
/// # Errors
/// [`LogFileError`] when `pod_logs_dir` can't be read (a missing one has nothing
/// to prune); failures on single directories are in [`Pruned::errors`].
pub fn prune_pod_log_dirs(
    pod_logs_dir: &Path,
    keep_uids: &HashSet<String>,
) -> Result<Pruned, LogFileError> {
    let mut out = Pruned::default();
    let entries = match std::fs::read_dir(pod_logs_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(err("read", pod_logs_dir)(e)),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                out.errors.push(err("read", pod_logs_dir)(e));
                continue;
            }
        };
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if keep_uids.contains(uid_of_log_dir(name)) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => out.removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => out.errors.push(err("remove", &path)(e)),
        }
    }
    out.removed.sort();
    Ok(out)
}

/// Removes a container instance's log file and its rotated files (`<log>*`, upstream's
/// container log manager `Clean`); missing ones are fine.
///
/// # Errors
/// [`LogFileError`] for the first file that exists and can't be removed.
pub fn remove_container_logs(log: &Path) -> Result<(), LogFileError> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Ok(());
    };
    let rotated_prefix = format!("{name}.");
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err("read", dir)(e)),
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if file_name != name && !file_name.starts_with(&rotated_prefix) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err("remove", &path)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// The `/var/log/containers` symlink of a container instance:
/// `<dir>/<pod>_<namespace>_<container>-<containerID>.log`, the name (without the
/// suffix) cut so the whole stays within 255 bytes, as upstream's `logSymlink`.
pub fn log_symlink_path(
    container_logs_dir: &Path,
    pod_name: &str,
    pod_namespace: &str,
    container_name: &str,
    container_id: &str,
) -> PathBuf {
    let mut name = format!("{pod_name}_{pod_namespace}_{container_name}-{container_id}");
    let max = MAX_FILE_NAME_LEN - LOG_SUFFIX.len();
    if name.len() > max {
        // Go slices bytes; the names here are ASCII (DNS labels and hex), but never
        // cut inside a character.
        let mut cut = max;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name.push_str(LOG_SUFFIX);
    container_logs_dir.join(name)
}

/// Makes `link` point at `target`, replacing a link left at that name.
///
/// # Errors
/// [`LogFileError`] when the directory or the link can't be made.
pub fn create_log_symlink(link: &Path, target: &Path) -> Result<(), LogFileError> {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(err("create", dir))?;
    }
    remove_log_symlink(link)?;
    std::os::unix::fs::symlink(target, link).map_err(err("symlink", link))
}

/// Removes a container's symlink; a missing one is fine.
///
/// # Errors
/// [`LogFileError`] when it exists and can't be removed.
pub fn remove_log_symlink(link: &Path) -> Result<(), LogFileError> {
    match std::fs::remove_file(link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err("remove", link)(e)),
        _ => Ok(()),
    }
}

/// Removes the dangling `*.log` symlinks in `container_logs_dir` (upstream's
/// container GC sweep): links whose log file is gone. Regular files and links that
/// resolve are left alone.
///
/// # Errors
/// [`LogFileError`] when the directory can't be read (a missing one has nothing to
/// prune); failures on single links are in [`Pruned::errors`].
pub fn prune_log_symlinks(container_logs_dir: &Path) -> Result<Pruned, LogFileError> {
    let mut out = Pruned::default();
    let entries = match std::fs::read_dir(container_logs_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(err("read", container_logs_dir)(e)),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                out.errors.push(err("read", container_logs_dir)(e));
                continue;
            }
        };
        let path = entry.path();
        let is_log_link = entry.file_type().is_ok_and(|t| t.is_symlink())
            && entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(LOG_SUFFIX));
        if !is_log_link {
            continue;
        }
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::remove_file(&path) {
                Ok(()) => out.removed.push(path),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => out.errors.push(err("remove", &path)(e)),
            },
            _ => {}
        }
    }
    out.removed.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"").expect("write");
    }

    #[test]
    fn container_logs_go_with_their_rotated_files_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in [
            "0.log",
            "0.log.20261204-231500.gz",
            "0.log.20261204-231501",
            "1.log",
            "10.log",
        ] {
            touch(&dir.path().join(n));
        }
        remove_container_logs(&dir.path().join("0.log")).expect("remove");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["1.log", "10.log"]);
        remove_container_logs(&dir.path().join("gone/0.log")).expect("a missing dir is fine");
    }

    #[test]
    fn symlink_name_is_upstreams() {
        let p = log_symlink_path(
            Path::new("/var/log/containers"),
            "web",
            "default",
            "nginx",
            "abc123",
        );
        assert_eq!(
            p,
            Path::new("/var/log/containers/web_default_nginx-abc123.log")
        );
    }

    #[test]
    fn long_symlink_names_are_cut_before_the_suffix() {
        let pod = "p".repeat(253);
        let id = "f".repeat(64);
        let p = log_symlink_path(Path::new("/d"), &pod, "default", "c", &id);
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(name.len(), 255);
        assert!(name.ends_with(".log"));
        assert!(name.starts_with(&pod[..251]));
    }

    #[test]
    fn pod_log_dirs_of_unkept_uids_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(&root.join("default_web_u1/nginx/0.log"));
        touch(&root.join("kube-system_dns_u2/c/1.log"));
        touch(&root.join("default_gone_u3/c/0.log"));
        touch(&root.join("stray_file_u4"));
        let keep = HashSet::from(["u1".to_owned(), "u2".to_owned()]);
        let pruned = prune_pod_log_dirs(root, &keep).expect("prune");
        assert!(pruned.errors.is_empty(), "{:?}", pruned.errors);
        assert_eq!(pruned.removed, [root.join("default_gone_u3")]);
        assert!(root.join("default_web_u1/nginx/0.log").exists());
        assert!(root.join("kube-system_dns_u2").exists());
        assert!(
            root.join("stray_file_u4").exists(),
            "files are not pod log dirs"
        );

        remove_pod_log_dir(root, "default", "web", "u1").expect("remove");
        assert!(!root.join("default_web_u1").exists());
        remove_pod_log_dir(root, "default", "web", "u1").expect("a missing dir is fine");
        let none = prune_pod_log_dirs(&root.join("missing"), &keep).expect("missing root");
        assert!(none.removed.is_empty());
    }

    #[test]
    fn only_dangling_log_symlinks_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("pods/default_web_u1/nginx/0.log");
        touch(&logs);
        let links = dir.path().join("containers");
        let live = log_symlink_path(&links, "web", "default", "nginx", "aaa");
        let dead = log_symlink_path(&links, "web", "default", "nginx", "bbb");
        create_log_symlink(&live, &logs).expect("link");
        create_log_symlink(&dead, &dir.path().join("pods/gone/0.log")).expect("link");
        create_log_symlink(&live, &logs).expect("a second create replaces the link");
        touch(&links.join("plain.log"));
        let pruned = prune_log_symlinks(&links).expect("prune");
        assert!(pruned.errors.is_empty(), "{:?}", pruned.errors);
        assert_eq!(pruned.removed, [dead]);
        assert_eq!(std::fs::read_link(&live).expect("live link"), logs);
        assert!(links.join("plain.log").exists());
        remove_log_symlink(&live).expect("remove");
        assert!(std::fs::symlink_metadata(&live).is_err());
        remove_log_symlink(&live).expect("a missing link is fine");
    }
}
