//! The systemd cgroup driver's names: upstream's `CgroupName.ToSystemd` /
//! `ParseSystemdToCgroupName` (`pkg/kubelet/cm/cgroup_manager_linux.go`) and runc's
//! `ExpandSlice` / scope naming (`libcontainer/cgroups/systemd/common.go`).
//!
//! A kubelet cgroup name is a list of parts (`kubepods`, `burstable`, `pod<uid>`). The
//! cgroupfs driver joins them with `/`; the systemd driver joins them with `-` (after
//! turning each `-` inside a part into `_`), adds `.slice`, and the slice lives at the
//! path of its expanded ancestors: `kubepods-burstable.slice` is
//! `/kubepods.slice/kubepods-burstable.slice`. Only the naming is here; the units are
//! started and stopped over D-Bus by [`crate::systemd_dbus`].

/// Why a slice name is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemdError {
    /// runc's `ExpandSlice` message.
    #[error("invalid slice name: {0}")]
    InvalidSlice(String),
}

const SLICE: &str = ".slice";

/// Which cgroup driver names the kubelet's cgroups (`--cgroup-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupDriver {
    /// Plain directories: `/kubepods/burstable/pod<uid>`.
    #[default]
    Cgroupfs,
    /// Slices: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`.
    Systemd,
}

impl CgroupDriver {
    /// The flag value (`cgroupfs`, `systemd`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }

    /// The filesystem path (relative to each hierarchy's mount) of the kubelet cgroup
    /// named `name` in cgroupfs form (`/kubepods/burstable/pod<uid>`).
    #[must_use]
    pub fn path(self, name: &str) -> String {
        match self {
            CgroupDriver::Cgroupfs => {
                let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
                format!("/{}", parts.join("/"))
            }
            CgroupDriver::Systemd => to_systemd_path(name),
        }
    }
}

/// `kubepods-burstable-pod1234_5678.slice` for `/kubepods/burstable/pod1234-5678`
/// (`-.slice`, the root slice, for `/`). A name already in the driver's form (an
/// expanded slice path, what the agent hands the runtime as a pod's cgroup parent, as
/// upstream's `cgroupManager.Name`) is its last slice.
#[must_use]
pub fn to_systemd_name(name: &str) -> String {
    if let Some(last) = name.rsplit('/').find(|p| !p.is_empty())
        && last.ends_with(SLICE)
    {
        return last.to_owned();
    }
    let parts: Vec<String> = name
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| p.replace('-', "_"))
        .collect();
    if parts.is_empty() {
        return format!("-{SLICE}");
    }
    format!("{}{SLICE}", parts.join("-"))
}

/// The expanded path of the cgroupfs-form `name` under the systemd driver:
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`.
#[must_use]
pub fn to_systemd_path(name: &str) -> String {
    // Parts are non-empty and hold no '-' or '/', so the slice name is always valid.
    expand_slice(&to_systemd_name(name)).unwrap_or_else(|_| "/".to_owned())
}

/// runc's `ExpandSlice`: `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`; `-.slice`
/// → `/`.
///
/// # Errors
/// A name not ending in `.slice`, holding `/`, or with an empty component (`a--b.slice`,
/// `-a.slice`).
pub fn expand_slice(slice: &str) -> Result<String, SystemdError> {
    let invalid = || SystemdError::InvalidSlice(slice.to_owned());
    let name = slice.strip_suffix(SLICE).ok_or_else(invalid)?;
    if slice.contains('/') {
        return Err(invalid());
    }
    if name == "-" {
        return Ok("/".to_owned());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in name.split('-') {
        if component.is_empty() {
            return Err(invalid());
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(component);
        path.push_str(SLICE);
        prefix.push_str(component);
        prefix.push('-');
    }
    Ok(path)
}

/// Upstream `ParseSystemdToCgroupName`: the cgroupfs-form name of a systemd slice path
/// or name (`/kubepods.slice/kubepods-burstable.slice` → `/kubepods/burstable`, with
/// `_` turned back into `-`).
#[must_use]
pub fn from_systemd_path(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or_default();
    let base = base.strip_suffix(SLICE).unwrap_or(base);
    if base.is_empty() || base == "-" {
        return "/".to_owned();
    }
    let parts: Vec<String> = base.split('-').map(|p| p.replace('_', "-")).collect();
    format!("/{}", parts.join("/"))
}

/// The `cgroupsPath` runc gets for a container under the systemd driver:
/// `<parent slice>:<prefix>:<name>` (`kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`).
#[must_use]
pub fn runc_cgroups_path(parent_slice: &str, prefix: &str, name: &str) -> String {
    format!("{parent_slice}:{prefix}:{name}")
}

/// Where runc's systemd driver puts a container given `slice:prefix:name`: the
/// expanded slice, then the scope `<prefix>-<name>.scope` (or the name itself when it
/// is a slice).
///
/// # Errors
/// A path without three `:`-separated fields, or an invalid slice.
pub fn scope_path(cgroups_path: &str) -> Result<String, SystemdError> {
    let mut fields = cgroups_path.split(':');
    let (Some(slice), Some(prefix), Some(name), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(SystemdError::InvalidSlice(cgroups_path.to_owned()));
    };
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let parent = expand_slice(slice)?;
    let unit = if name.ends_with(SLICE) {
        name.to_owned()
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(format!("{}/{unit}", parent.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    // runc libcontainer/cgroups/systemd TestExpandSlice cases.
    #[test]
    fn expand_slice_table() {
        for (slice, want) in [
            ("-.slice", Some("/")),
            ("a.slice", Some("/a.slice")),
            ("a-b.slice", Some("/a.slice/a-b.slice")),
            (
                "kubepods-burstable-pod1_2.slice",
                Some("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1_2.slice"),
            ),
            ("a--b.slice", None),
            ("-a.slice", None),
            ("a/b.slice", None),
            ("a.scope", None),
            (".slice", None),
        ] {
            assert_eq!(expand_slice(slice).ok().as_deref(), want, "{slice}");
        }
    }

    // cgroup_manager_linux_test.go TestCgroupNameToSystemdBasename / ToSystemd.
    #[test]
    fn names() {
        assert_eq!(to_systemd_name("/"), "-.slice");
        assert_eq!(to_systemd_name("/kubepods"), "kubepods.slice");
        assert_eq!(
            to_systemd_name("/kubepods/burstable/pod1234-abcd-5678"),
            "kubepods-burstable-pod1234_abcd_5678.slice"
        );
        assert_eq!(
            to_systemd_path("/kubepods/besteffort/podab-cd"),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podab_cd.slice"
        );
        assert_eq!(to_systemd_path("/"), "/");
        // Already in systemd form: the same slice.
        let path = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podab_cd.slice";
        assert_eq!(to_systemd_path(path), path);
        assert_eq!(to_systemd_name(path), "kubepods-besteffort-podab_cd.slice");
        assert_eq!(
            from_systemd_path(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_abcd.slice"
            ),
            "/kubepods/burstable/pod1234-abcd"
        );
        assert_eq!(from_systemd_path("/"), "/");
        assert_eq!(
            CgroupDriver::Cgroupfs.path("kubepods//pod1/"),
            "/kubepods/pod1"
        );
    }

    #[test]
    fn runc_paths() {
        let p = runc_cgroups_path(
            "kubepods-besteffort-podab_cd.slice",
            "cri-containerd",
            "c0ffee",
        );
        assert_eq!(
            p,
            "kubepods-besteffort-podab_cd.slice:cri-containerd:c0ffee"
        );
        assert_eq!(
            scope_path(&p).expect("scope"),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podab_cd.slice/cri-containerd-c0ffee.scope"
        );
        assert_eq!(
            scope_path(":docker:x").expect("scope"),
            "/system.slice/docker-x.scope"
        );
        assert!(scope_path("a.slice:b").is_err());
    }
}
