//! Pod network namespaces pinned by a bind mount, as containerd's `pkg/netns` does.
//!
//! A network namespace lives as long as something references it. A sandbox's namespace
//! must outlive every process in it (the pause process may die and be restarted, CNI
//! teardown runs after the containers are gone), so it is pinned by bind-mounting
//! `/proc/<pid>/task/<tid>/ns/net` onto a plain file. The file's path is what CNI plugins
//! (`CNI_NETNS`) and the OCI spec of every container in the pod are given.
//!
//! `unshare(CLONE_NEWNET)` changes the namespace of the calling *thread* only, so the
//! namespace is created on a short-lived dedicated thread that pins it and exits. It is
//! never done on a tokio worker thread, which would leave that worker (and every task it
//! later runs) in the pod's namespace.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::thread;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::statfs::{FsType, statfs};

/// `NSFS_MAGIC` from `linux/magic.h`: the filesystem type of a pinned namespace.
/// nix does not export it.
const NSFS_MAGIC: FsType = FsType(0x6e73_6673);

/// Errors from creating or removing a pinned network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The directory that holds the pin could not be created.
    #[error("create netns directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The pin file could not be created (it already exists, or the directory is not writable).
    #[error("create netns pin file {}: {source}", path.display())]
    CreatePin {
        /// The pin file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The thread that creates the namespace could not be started, or died.
    #[error("netns thread for {}: {reason}", path.display())]
    Thread {
        /// The pin file.
        path: PathBuf,
        /// What went wrong with the thread.
        reason: String,
    },
    /// A system call failed.
    #[error("netns {}: {syscall}: {source}", path.display())]
    Syscall {
        /// The pin file.
        path: PathBuf,
        /// The failing call, with the arguments that matter (e.g. `unshare(CLONE_NEWNET)`).
        syscall: &'static str,
        /// The errno.
        source: Errno,
    },
    /// The pin file could not be removed after unmounting it.
    #[error("remove netns pin file {}: {source}", path.display())]
    RemovePin {
        /// The pin file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// A network namespace pinned at a path by a bind mount.
///
/// Dropping a `NetNs` does not remove the namespace: a pod's namespace is removed
/// explicitly with [`NetNs::remove`] once CNI teardown has run, and it must survive
/// agent restarts in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Creates a new network namespace and pins it at `path`, creating the pin file and
    /// its parent directory.
    ///
    /// Blocks for the short time it takes to start a thread and make three system calls;
    /// from async code, call it from `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// Fails if `path` already exists ([`NetNsError::CreatePin`]), if its directory cannot be
    /// created, or if `unshare` or the bind mount fail ([`NetNsError::Syscall`], e.g. EPERM
    /// without `CAP_SYS_ADMIN`). On failure nothing is left behind at `path`.
    pub fn create(path: &Path) -> Result<NetNs, NetNsError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| NetNsError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        // O_EXCL: two sandboxes must never share (or unmount) each other's pin.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| NetNsError::CreatePin {
                path: path.to_path_buf(),
                source,
            })?;

        let pinned = pin_new_netns(path);
        if pinned.is_err() {
            // Nothing is mounted on failure; the empty file is all there is to remove.
            let _ = fs::remove_file(path);
        }
        pinned.map(|()| NetNs {
            path: path.to_path_buf(),
        })
    }

    /// The pin's path: what `CNI_NETNS` and the OCI spec's network namespace point at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` is a pinned namespace (a mounted nsfs file), as opposed to missing,
    /// or a plain file whose mount is already gone.
    pub fn is_pinned(path: &Path) -> bool {
        statfs(path).is_ok_and(|st| st.filesystem_type() == NSFS_MAGIC)
    }

    /// Unmounts the pin (lazily, `MNT_DETACH`, so a process still holding it open does not
    /// make this fail) and removes the file. The namespace itself goes away once nothing
    /// else references it.
    ///
    /// Succeeds if the pin is already unmounted or gone, so it can be retried.
    ///
    /// # Errors
    ///
    /// Fails if the unmount fails for another reason than "not mounted" or "missing"
    /// ([`NetNsError::Syscall`]), or the file cannot be removed.
    pub fn remove(path: &Path) -> Result<(), NetNsError> {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (already unmounted); ENOENT: already removed.
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(source) => {
                return Err(NetNsError::Syscall {
                    path: path.to_path_buf(),
                    syscall: "umount2(MNT_DETACH)",
                    source,
                });
            }
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(NetNsError::RemovePin {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Creates a network namespace on a dedicated thread and bind-mounts it onto `path`.
fn pin_new_netns(path: &Path) -> Result<(), NetNsError> {
    let target = path.to_path_buf();
    let handle = thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<(), NetNsError> {
            let syscall_err = |syscall, source| NetNsError::Syscall {
                path: target.clone(),
                syscall,
                source,
            };
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| syscall_err("unshare(CLONE_NEWNET)", e))?;
            // The thread's own namespace file: /proc/self/ns/net would name the thread
            // group leader's, which is still the host's.
            let own_ns = format!(
                "/proc/{}/task/{}/ns/net",
                std::process::id(),
                nix::unistd::gettid()
            );
            nix::mount::mount(
                Some(own_ns.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| syscall_err("mount(MS_BIND)", e))
            // The thread exits here, taking its reference to the namespace with it; the
            // bind mount is what keeps the namespace alive from now on.
        })
        .map_err(|e| NetNsError::Thread {
            path: path.to_path_buf(),
            reason: format!("spawn: {e}"),
        })?;
    handle.join().map_err(|_| NetNsError::Thread {
        path: path.to_path_buf(),
        reason: "panicked".into(),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_of_missing_pin_is_ok() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gone");
        assert!(NetNs::remove(&path).is_ok());
        assert!(!NetNs::is_pinned(&path));
    }

    #[test]
    fn remove_of_plain_file_removes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plain");
        fs::write(&path, b"").expect("write");
        assert!(!NetNs::is_pinned(&path));
        NetNs::remove(&path).expect("remove plain file");
        assert!(!path.exists());
    }

    #[test]
    fn create_refuses_existing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("taken");
        fs::write(&path, b"keep").expect("write");
        let err = NetNs::create(&path).expect_err("existing path");
        assert!(matches!(err, NetNsError::CreatePin { .. }), "{err}");
        // The existing file is not ours: it must be left alone.
        assert_eq!(fs::read(&path).expect("read"), b"keep");
    }
}
