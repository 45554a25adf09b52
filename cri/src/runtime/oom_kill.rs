//! Whether the kernel's OOM killer struck in a container's cgroup, read from the
//! cgroup itself when its task's exit is recorded.
//!
//! containerd's `TaskOOM` event may arrive after the task's exit (the shim publishes
//! both, in no fixed order), so a container killed for memory could read `Error`
//! before `OOMKilled`. The cgroup's count says it at once: `oom_kill` in
//! `memory.oom_control` (cgroup v1, kernel 4.13+) or `memory.events` (v2). The cgroup
//! goes with the task, so the runtime reads it just before deleting the task and keeps
//! the answer in the record ([`keys::REASON`](super::keys::REASON)).

use std::path::{Path, PathBuf};

/// The reason upstream shows for a container the OOM killer ended.
pub const OOM_KILLED: &str = "OOMKilled";

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The `linux.cgroupsPath` of an OCI spec in JSON.
pub(super) fn cgroups_path(spec_json: &[u8]) -> Option<String> {
    let spec: serde_json::Value = serde_json::from_slice(spec_json).ok()?;
    spec.get("linux")?
        .get("cgroupsPath")?
        .as_str()
        .map(str::to_owned)
}

/// runc's `ExpandSlice`: `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`.
fn expand_slice(slice: &str) -> Option<String> {
    let name = slice.strip_suffix(".slice")?;
    if name == "-" {
        return Some(String::new());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if part.is_empty() || part.contains('/') {
            return None;
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(part);
        path.push_str(".slice");
        prefix.push_str(part);
        prefix.push('-');
    }
    Some(path)
}

/// The cgroup directory below a hierarchy's root that a `cgroupsPath` names: a
/// path as is, or the systemd form `slice:prefix:name` as runc's systemd driver
/// places it (`<expanded slice>/<prefix>-<name>.scope`).
fn relative_dir(cgroups_path: &str) -> Option<String> {
    if cgroups_path.starts_with('/') {
        return Some(cgroups_path.to_owned());
    }
    let mut parts = cgroups_path.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    let unit = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Some(format!("{}/{unit}", expand_slice(slice)?))
}

/// The `oom_kill` count in a `memory.oom_control` or `memory.events` file's text.
fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("oom_kill"))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// The file holding the cgroup's OOM kill count under `root`.
fn count_file(root: &Path, dir: &str) -> PathBuf {
    let dir = dir.trim_start_matches('/');
    if root.join("cgroup.controllers").exists() {
        root.join(dir).join("memory.events")
    } else {
        root.join("memory").join(dir).join("memory.oom_control")
    }
}

/// Whether the OOM killer killed a process in the cgroup that `cgroups_path` names;
/// `None` when that can't be read (no such cgroup, an old kernel).
pub(super) fn oom_killed(cgroups_path: &str) -> Option<bool> {
    let dir = relative_dir(cgroups_path)?;
    let text = std::fs::read_to_string(count_file(Path::new(CGROUP_ROOT), &dir)).ok()?;
    parse_oom_kill(&text).map(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_read_from_either_file() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_oom_kill(v1), Some(2));
        let v2 = "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kill(v2), Some(1));
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn cgroups_paths_in_both_forms() {
        assert_eq!(
            relative_dir("/kubepods/burstable/podab/c0").as_deref(),
            Some("/kubepods/burstable/podab/c0")
        );
        assert_eq!(
            relative_dir("kubepods-besteffort-podab.slice:cri-containerd:c0").as_deref(),
            Some(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podab.slice/cri-containerd-c0.scope"
            )
        );
        assert_eq!(relative_dir("bad"), None);
    }

    #[test]
    fn the_path_comes_from_the_spec() {
        let spec = br#"{"ociVersion":"1.1.0","linux":{"cgroupsPath":"/k/p/c"}}"#;
        assert_eq!(cgroups_path(spec).as_deref(), Some("/k/p/c"));
        assert_eq!(cgroups_path(b"{}"), None);
    }

    #[test]
    fn v1_and_v2_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            count_file(dir.path(), "/a/b"),
            dir.path().join("memory/a/b/memory.oom_control")
        );
        std::fs::write(dir.path().join("cgroup.controllers"), "memory").expect("write");
        assert_eq!(
            count_file(dir.path(), "/a/b"),
            dir.path().join("a/b/memory.events")
        );
    }
}
