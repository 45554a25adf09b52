//! Image users given by name (`USER nginx`, `USER app:staff`, `USER 1000:staff`),
//! resolved to numeric IDs from the container's own `/etc/passwd` and `/etc/group`, as
//! containerd's `oci.WithUser` / `WithUsername` do for the CRI
//! (`containerd/pkg/oci/spec_opts.go`):
//! - `name`: the passwd entry's UID and GID;
//! - `user:group` with a name on either side: the name's UID from passwd, the group's
//!   GID from group, a number taken as is.
//!
//! Purely numeric users need no lookup and are left to the spec builder.
//!
//! To read the files, containerd mounts the snapshot in a temporary directory. So do
//! we, but from a thread of our own in a private mount namespace (`unshare(CLONE_NEWNS)`
//! applies to the calling thread only): the mounts are made read-only there, never
//! appear in the host's mount table, and vanish with the namespace when the thread
//! ends, even if it fails half-way. The thread then `chroot`s into the rootfs before
//! opening the files, so a symlinked `/etc/passwd` resolves inside the container's
//! filesystem, as containerd's `fs.RootPath` does, never on the host.
//!
//! The passwd and group parsers are hand-written: the crates for these files read
//! the host's own databases through libc, not a file in another root.

use std::path::{Path, PathBuf};

use containerd_client::types::Mount;
use thiserror::Error;

/// Errors from resolving an image user.
#[derive(Debug, Error)]
pub enum UserError {
    /// A name not in the container's passwd file (runc's message).
    #[error("unable to find user {name}: no matching entries in passwd file")]
    NoUser {
        /// The user name.
        name: String,
    },
    /// A group name not in the container's group file.
    #[error("unable to find group {name}: no matching entries in group file")]
    NoGroup {
        /// The group name.
        name: String,
    },
    /// The container rootfs could not be mounted or entered to read the files.
    #[error("mount the container rootfs ({what}) to look up image user {user:?}: {source}")]
    Mount {
        /// The image user being resolved.
        user: String,
        /// What failed: the mount's type and source, or the step.
        what: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// `/etc/passwd` or `/etc/group` exists in the rootfs but could not be read.
    #[error("read {path} in the container rootfs: {source}")]
    Read {
        /// The path inside the container.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The lookup thread could not be started or died.
    #[error("look up image user {user:?}: {reason}")]
    Thread {
        /// The image user being resolved.
        user: String,
        /// What happened.
        reason: String,
    },
}

/// Whether the image's `user` has a name in a part the pod doesn't override
/// (`runAsUser` replaces the user part, `runAsGroup` the group part), so the
/// container's files must be read.
pub fn needs_lookup(user: &str, run_as_user: bool, run_as_group: bool) -> bool {
    let is_name = |s: &str| !s.is_empty() && s.parse::<u32>().is_err();
    match user.split_once(':') {
        None => is_name(user) && !(run_as_user && run_as_group),
        Some((u, g)) => (is_name(u) && !run_as_user) || (is_name(g) && !run_as_group),
    }
}

/// Resolves `user` (`name`, `name:group`, `uid:group`, `name:gid`) to `(uid, gid)`
/// with the contents of the container's passwd and group files (`None`: no such file).
///
/// # Errors
/// [`UserError::NoUser`] and [`UserError::NoGroup`] for names the files don't have.
pub fn resolve(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32), UserError> {
    let find_user = |name: &str| {
        passwd_entries(passwd.unwrap_or_default())
            .find(|e| e.name == name)
            .ok_or_else(|| UserError::NoUser {
                name: name.to_owned(),
            })
    };
    let Some((u, g)) = user.split_once(':') else {
        // containerd `WithUserID` for a number (never reached: numbers need no lookup).
        if let Ok(uid) = user.parse() {
            let gid = passwd_entries(passwd.unwrap_or_default())
                .find(|e| e.uid == uid)
                .map_or(0, |e| e.gid);
            return Ok((uid, gid));
        }
        let e = find_user(user)?;
        return Ok((e.uid, e.gid));
    };
    let uid = match u.parse() {
        Ok(uid) => uid,
        Err(_) => find_user(u)?.uid,
    };
    let gid = match g.parse() {
        Ok(gid) => gid,
        Err(_) => group_entries(group.unwrap_or_default())
            .find(|e| e.0 == g)
            .map(|e| e.1)
            .ok_or_else(|| UserError::NoGroup { name: g.to_owned() })?,
    };
    Ok((uid, gid))
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

/// `name:password:uid:gid:gecos:home:shell` lines; blank, comment and malformed lines
/// are skipped, as libcontainer's `user.ParsePasswdFilter` does.
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next();
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

/// `name:password:gid:members` lines as `(name, gid)`.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next();
        Some((name, f.next()?.parse().ok()?))
    })
}

/// Resolves `user` by reading `/etc/passwd` and `/etc/group` of the root filesystem
/// that `mounts` (a snapshot's mounts) make; see the module docs for how.
///
/// # Errors
/// [`UserError::Mount`] when the rootfs can't be mounted or entered,
/// [`UserError::Read`] for an unreadable file, and those of [`resolve`].
pub async fn resolve_in_rootfs(user: &str, mounts: &[Mount]) -> Result<(u32, u32), UserError> {
    let owned_user = user.to_owned();
    let mounts = mounts.to_vec();
    let files = tokio::task::spawn_blocking(move || {
        let dir = nix::unistd::mkdtemp(&std::env::temp_dir().join("nodelet-user-XXXXXX")).map_err(
            |source| UserError::Mount {
                user: owned_user.clone(),
                what: "make a temporary directory".into(),
                source,
            },
        )?;
        let (u, d) = (owned_user.clone(), dir.clone());
        let joined = std::thread::Builder::new()
            .name("user-lookup".into())
            .spawn(move || read_rootfs_files(&u, &d, &mounts))
            .map(std::thread::JoinHandle::join);
        // Empty on the host: the mounts on it lived in the thread's namespace.
        let _ = std::fs::remove_dir(&dir);
        match joined {
            Ok(Ok(files)) => files,
            Ok(Err(_)) => Err(UserError::Thread {
                user: owned_user,
                reason: "the lookup thread panicked".into(),
            }),
            Err(e) => Err(UserError::Thread {
                user: owned_user,
                reason: e.to_string(),
            }),
        }
    })
    .await
    .map_err(|e| UserError::Thread {
        user: user.to_owned(),
        reason: e.to_string(),
    })??;
    resolve(user, files.0.as_deref(), files.1.as_deref())
}

type EtcFiles = (Option<String>, Option<String>);

/// Runs on a thread of its own, which it moves into a private mount namespace, mounts
/// the rootfs on the empty directory `dir` and enters it: the thread must end after.
fn read_rootfs_files(user: &str, dir: &Path, mounts: &[Mount]) -> Result<EtcFiles, UserError> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};

    let fail = |what: &str| {
        let what = what.to_owned();
        move |source| UserError::Mount {
            user: user.to_owned(),
            what,
            source,
        }
    };
    unshare(CloneFlags::CLONE_NEWNS).map_err(fail("unshare the mount namespace"))?;
    // Nothing mounted from here on propagates back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(fail("make / private"))?;
    for m in mounts {
        let (flags, data) = mount_args(m);
        let typ = (m.r#type != "bind").then_some(m.r#type.as_str());
        let what = format!("{} {}", m.r#type, m.source);
        mount(
            Some(m.source.as_str()),
            dir,
            typ,
            flags,
            Some(data.as_str()).filter(|d| !d.is_empty()),
        )
        .map_err(fail(&what))?;
    }
    nix::unistd::chroot(dir).map_err(fail("chroot into the rootfs"))?;
    nix::unistd::chdir("/").map_err(fail("chdir to the rootfs"))?;
    let read = |path: &str| match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(UserError::Read {
            path: path.into(),
            source,
        }),
    };
    Ok((read("/etc/passwd")?, read("/etc/group")?))
}

/// The flags and data for mounting `m` read-only: bind mounts by flag, the other
/// options (overlay's `lowerdir=…`) as data.
fn mount_args(m: &Mount) -> (nix::mount::MsFlags, String) {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::MS_RDONLY;
    let mut data = Vec::new();
    for o in &m.options {
        match o.as_str() {
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "ro" | "rw" => {}
            other => data.push(other),
        }
    }
    if m.r#type == "bind" {
        flags |= MsFlags::MS_BIND;
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        \n\
        broken:x:notanumber:1::/:\n\
        nginx:x:101:102:nginx:/var/cache/nginx:/sbin/nologin\n\
        nginx:x:999:999:shadowed by the first:/:/bin/sh\n\
        app:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnginx:x:102:\nstaff:x:50:app\n";

    #[test]
    fn names_resolve_as_containerd_does() {
        let r = |u| resolve(u, Some(PASSWD), Some(GROUP));
        assert_eq!(r("nginx").expect("nginx"), (101, 102), "first entry wins");
        assert_eq!(r("app:staff").expect("app:staff"), (1000, 50));
        assert_eq!(
            r("app:7").expect("app:7"),
            (1000, 7),
            "user part gives only the uid"
        );
        assert_eq!(r("5:staff").expect("5:staff"), (5, 50));
        assert_eq!(
            r("1000").expect("uid"),
            (1000, 1000),
            "a uid's gid from passwd"
        );
        assert_eq!(r("4242").expect("unknown uid"), (4242, 0));
    }

    #[test]
    fn unknown_names_are_errors() {
        let e = resolve("nobody", Some(PASSWD), Some(GROUP)).expect_err("no such user");
        assert_eq!(
            e.to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        let e = resolve("app:wheel", Some(PASSWD), Some(GROUP)).expect_err("no such group");
        assert_eq!(
            e.to_string(),
            "unable to find group wheel: no matching entries in group file"
        );
        assert!(matches!(
            resolve("app", None, None),
            Err(UserError::NoUser { .. })
        ));
    }

    #[test]
    fn lookup_only_for_names_the_pod_does_not_override() {
        assert!(!needs_lookup("", false, false));
        assert!(!needs_lookup("1000", false, false));
        assert!(!needs_lookup("1000:1000", false, false));
        assert!(needs_lookup("nginx", false, false));
        assert!(
            needs_lookup("nginx", true, false),
            "its gid still comes from passwd"
        );
        assert!(!needs_lookup("nginx", true, true));
        assert!(needs_lookup("nginx:5", false, true));
        assert!(!needs_lookup("nginx:5", true, false));
        assert!(needs_lookup("5:staff", true, false));
        assert!(!needs_lookup("5:staff", false, true));
    }

    #[test]
    fn mount_arguments() {
        use nix::mount::MsFlags;
        let overlay = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec!["index=off".into(), "lowerdir=/a:/b".into()],
        };
        assert_eq!(
            mount_args(&overlay),
            (MsFlags::MS_RDONLY, "index=off,lowerdir=/a:/b".into())
        );
        let bind = Mount {
            r#type: "bind".into(),
            source: "/snap/1/fs".into(),
            target: String::new(),
            options: vec!["rbind".into(), "rw".into()],
        };
        assert_eq!(
            mount_args(&bind),
            (
                MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC,
                String::new()
            )
        );
    }
}
