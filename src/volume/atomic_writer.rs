//! Upstream's `AtomicWriter` (`pkg/volume/util/atomic_writer.go`): projects a set of
//! files into a volume directory so that a reader sees either the old set or the new
//! one, never a mix.
//!
//! The files live in a hidden timestamped directory (`..2006_01_02_15_04_05.<nanos>`);
//! `..data` is a symlink to it and each user-visible top-level name is a symlink
//! through `..data` (`key -> ..data/key`, for nested paths the top directory). An
//! update writes a new timestamped directory, points `..data_tmp` at it and renames
//! that over `..data` (the atomic step), then adds new visible links, drops stale
//! ones and removes the old directory. Names starting with `..` are reserved.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::Reason;

const DATA_DIR: &str = "..data";
const NEW_DATA_DIR: &str = "..data_tmp";
const MAX_FILE_NAME: usize = 255;
const MAX_PATH: usize = 4096;

/// One file's content and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileProjection {
    /// The bytes.
    pub data: Vec<u8>,
    /// Permission bits (`mode`, else the volume's `defaultMode`).
    pub mode: u32,
    /// The file's owner when not root (upstream's `FsUser`: a projected token
    /// belongs to the user every container runs as).
    pub owner: Option<u32>,
}

/// The files of a volume by relative path.
pub(crate) type Payload = BTreeMap<String, FileProjection>;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Reason {
    let path = path.to_owned();
    move |source| Reason::Io { op, path, source }
}

/// Refuses what upstream's `validatePath` refuses: empty, absolute, `..` elements, a
/// leading `..` name, names over 255 bytes, paths over 4096.
pub(crate) fn validate_path(path: &str) -> Result<(), Reason> {
    let bad = |why: String| Err(Reason::InvalidPath(why));
    if path.is_empty() {
        return bad("invalid path: must not be empty: \"\"".to_owned());
    }
    if path.starts_with('/') {
        return bad(format!("invalid path: must be relative path: {path}"));
    }
    if path.len() > MAX_PATH {
        return bad(format!(
            "invalid path: must be less than or equal to {MAX_PATH} characters"
        ));
    }
    let items: Vec<&str> = path.split('/').collect();
    for item in &items {
        if *item == ".." {
            return bad(format!("invalid path: must not contain '..': {path}"));
        }
        if item.len() > MAX_FILE_NAME {
            return bad(format!(
                "invalid path: filenames must be less than or equal to {MAX_FILE_NAME} characters"
            ));
        }
    }
    if items[0].starts_with("..") && items[0].len() > 2 {
        return bad(format!("invalid path: must not start with '..': {path}"));
    }
    Ok(())
}

/// `filepath.Clean` for a validated relative path: `a//b/./c` is `a/b/c`.
fn clean(path: &str) -> String {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Writes `payload` into `target` (which must exist) atomically; with `fs_group` the
/// files belong to that group and are group-readable (upstream's
/// `SetVolumeOwnership` for read-only volumes). Returns whether anything was written:
/// nothing is when the content, modes and visible names are unchanged.
///
/// # Errors
/// [`Reason::InvalidPath`] for a refused path, [`Reason::Io`] when the filesystem
/// fails; a half-written new version is removed and the old one stays visible.
pub(crate) fn write(
    target: &Path,
    payload: &Payload,
    fs_group: Option<u32>,
) -> Result<bool, Reason> {
    let mut cleaned = Payload::new();
    for (path, file) in payload {
        validate_path(path)?;
        cleaned.insert(clean(path), file.clone());
    }
    let data_link = target.join(DATA_DIR);
    let old_ts = match fs::read_link(&data_link) {
        Ok(p) => Some(target.join(p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("readlink", &data_link)(e)),
    };
    let mut stale = BTreeSet::new();
    if let Some(old) = &old_ts {
        stale = paths_to_remove(&cleaned, old)?;
        let links_ok = cleaned
            .keys()
            .all(|p| target.join(top_name(p)).symlink_metadata().is_ok());
        if stale.is_empty() && links_ok && !should_write(&cleaned, old, fs_group)? {
            return Ok(false);
        }
    }
    let ts = new_timestamp_dir(target)?;
    let staged = write_to_dir(&cleaned, &ts, fs_group).and_then(|()| {
        let tmp_link = target.join(NEW_DATA_DIR);
        match fs::remove_file(&tmp_link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &tmp_link)(e));
            }
            _ => {}
        }
        let name = ts.file_name().unwrap_or_default();
        std::os::unix::fs::symlink(name, &tmp_link).map_err(io_err("symlink", &tmp_link))?;
        fs::rename(&tmp_link, &data_link).map_err(|e| {
            let _ = fs::remove_file(&tmp_link);
            io_err("rename", &data_link)(e)
        })
    });
    if let Err(e) = staged {
        let _ = fs::remove_dir_all(&ts);
        return Err(e);
    }
    for path in cleaned.keys() {
        let top = top_name(path);
        let visible = target.join(top);
        if visible.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_DIR).join(top), &visible)
                .map_err(io_err("symlink", &visible))?;
        }
    }
    // Only top-level names are links of ours; deeper stale paths went with the old dir.
    for path in stale.iter().filter(|p| !p.contains('/')) {
        let visible = target.join(path);
        match fs::remove_file(&visible) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &visible)(e));
            }
            _ => {}
        }
    }
    if let Some(old) = old_ts.filter(|old| *old != ts) {
        match fs::remove_dir_all(&old) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &old)(e));
            }
            _ => {}
        }
    }
    Ok(true)
}

fn top_name(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// The mode a file ends up with: with fsGroup, group-readable as well.
fn effective_mode(mode: u32, fs_group: Option<u32>) -> u32 {
    let mode = mode & 0o7777;
    if fs_group.is_some() {
        mode | 0o440
    } else {
        mode
    }
}

fn should_write(payload: &Payload, old: &Path, fs_group: Option<u32>) -> Result<bool, Reason> {
    for (path, file) in payload {
        let full = old.join(path);
        let meta = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(io_err("stat", &full)(e)),
        };
        if !meta.is_file()
            || meta.mode() & 0o7777 != effective_mode(file.mode, fs_group)
            || fs_group.is_some_and(|g| meta.gid() != g)
            || file.owner.is_some_and(|u| meta.uid() != u)
        {
            return Ok(true);
        }
        let on_disk = fs::read(&full).map_err(io_err("read", &full))?;
        if on_disk != file.data {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The relative paths in the old version that the new payload no longer has (files
/// and directories, not the ancestors of a new file).
fn paths_to_remove(payload: &Payload, old: &Path) -> Result<BTreeSet<String>, Reason> {
    let mut existing = BTreeSet::new();
    walk(old, old, &mut existing)?;
    let mut wanted = BTreeSet::new();
    for path in payload.keys() {
        let mut p = path.as_str();
        loop {
            wanted.insert(p.to_owned());
            match p.rsplit_once('/') {
                Some((parent, _)) => p = parent,
                None => break,
            }
        }
    }
    Ok(existing.difference(&wanted).cloned().collect())
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> Result<(), Reason> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read dir", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("read dir", dir))?;
        let path = entry.path();
        if let Ok(rel) = path.strip_prefix(root) {
            out.insert(rel.to_string_lossy().into_owned());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &path, out)?;
        }
    }
    Ok(())
}

fn new_timestamp_dir(target: &Path) -> Result<PathBuf, Reason> {
    let now = jiff::Timestamp::now();
    let stamp = now.strftime("%Y_%m_%d_%H_%M_%S");
    let nanos = now.subsec_nanosecond();
    for attempt in 0u32.. {
        let name = if attempt == 0 {
            format!("..{stamp}.{nanos:09}")
        } else {
            format!("..{stamp}.{nanos:09}{attempt}")
        };
        let dir = target.join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {
                // 0755 whatever the umask: group and others must be able to traverse.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("chmod", &dir))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {}
            Err(e) => return Err(io_err("mkdir", &dir)(e)),
        }
    }
    unreachable!("the loop returns")
}

fn write_to_dir(payload: &Payload, dir: &Path, fs_group: Option<u32>) -> Result<(), Reason> {
    for (path, file) in payload {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).map_err(io_err("mkdir", parent))?;
        }
        fs::write(&full, &file.data).map_err(io_err("write", &full))?;
        fs::set_permissions(&full, fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(io_err("chmod", &full))?;
        if let Some(uid) = file.owner {
            std::os::unix::fs::lchown(&full, Some(uid), None).map_err(io_err("chown", &full))?;
        }
    }
    if let Some(gid) = fs_group {
        set_ownership(dir, gid)?;
    }
    Ok(())
}

/// Upstream's `SetVolumeOwnership` for a read-only volume: everything under `dir`
/// (and `dir` itself) belongs to group `gid`; files gain 0440, directories 0550 and
/// setgid. Symlinks are re-owned but not chmod'ed.
pub(crate) fn set_ownership(dir: &Path, gid: u32) -> Result<(), Reason> {
    let is_dir = own_one(dir, gid)?;
    if is_dir {
        for entry in fs::read_dir(dir).map_err(io_err("read dir", dir))? {
            let entry = entry.map_err(io_err("read dir", dir))?;
            set_ownership(&entry.path(), gid)?;
        }
    }
    Ok(())
}

/// [`set_ownership`] for the volume's root directory alone (its timestamped
/// directory was done before it became visible).
pub(crate) fn set_root_ownership(dir: &Path, gid: u32) -> Result<(), Reason> {
    own_one(dir, gid).map(|_| ())
}

/// Re-owns one path; whether it is a directory (not a symlink).
fn own_one(path: &Path, gid: u32) -> Result<bool, Reason> {
    let meta = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    std::os::unix::fs::lchown(path, None, Some(gid)).map_err(io_err("chown", path))?;
    if meta.file_type().is_symlink() {
        return Ok(false);
    }
    let mask = if meta.is_dir() { 0o2550 } else { 0o440 };
    let mode = (meta.mode() & 0o7777) | mask;
    if mode != meta.mode() & 0o7777 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", path))?;
    }
    Ok(meta.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| {
                (
                    (*p).to_owned(),
                    FileProjection {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                        owner: None,
                    },
                )
            })
            .collect()
    }

    fn data_target(dir: &Path) -> PathBuf {
        dir.join(fs::read_link(dir.join(DATA_DIR)).expect("..data"))
    }

    #[test]
    fn bad_paths_refused_with_upstream_messages() {
        let cases = [
            ("", "invalid path: must not be empty: \"\""),
            (
                "/etc/passwd",
                "invalid path: must be relative path: /etc/passwd",
            ),
            ("a/../b", "invalid path: must not contain '..': a/../b"),
            ("..", "invalid path: must not contain '..': .."),
            ("..data", "invalid path: must not start with '..': ..data"),
        ];
        for (path, want) in cases {
            let err = validate_path(path).expect_err(path);
            assert_eq!(err.to_string(), want);
        }
        let long = "x".repeat(256);
        assert!(validate_path(&long).is_err());
        assert!(validate_path("a/.b/c").is_ok());
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = write(tmp.path(), &payload(&[("../escape", "x", 0o644)]), None);
        assert!(matches!(err, Err(Reason::InvalidPath(_))));
        assert!(!tmp.path().join("..data").exists());
        assert!(!tmp.path().parent().expect("parent").join("escape").exists());
    }

    #[test]
    fn layout_update_and_stale_links() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let first = payload(&[
            ("a", "1", 0o644),
            ("nested/deep/b", "2", 0o600),
            ("c", "3", 0o644),
        ]);
        assert!(write(dir, &first, None).expect("write"));
        assert_eq!(
            fs::read_link(dir.join("a")).expect("link"),
            Path::new("..data/a")
        );
        assert_eq!(
            fs::read_link(dir.join("nested")).expect("link"),
            Path::new("..data/nested")
        );
        assert_eq!(
            fs::read_to_string(dir.join("nested/deep/b")).expect("read"),
            "2"
        );
        let ts1 = data_target(dir);
        let name = ts1
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        // ..2006_01_02_15_04_05.<nanos>
        assert_eq!(name.len(), "..2006_01_02_15_04_05.".len() + 9, "{name}");
        assert_eq!(fs::metadata(&ts1).expect("stat").mode() & 0o7777, 0o755);
        let inode = fs::metadata(ts1.join("a")).expect("stat").ino();

        // Unchanged: nothing written.
        assert!(!write(dir, &first, None).expect("write"));
        assert_eq!(data_target(dir), ts1);
        assert_eq!(fs::metadata(ts1.join("a")).expect("stat").ino(), inode);

        // Changed: new dir, old dir gone, dropped names unlinked.
        let second = payload(&[("a", "1b", 0o644), ("d", "4", 0o400)]);
        assert!(write(dir, &second, None).expect("write"));
        let ts2 = data_target(dir);
        assert_ne!(ts1, ts2);
        assert!(!ts1.exists());
        assert_eq!(fs::read_to_string(dir.join("a")).expect("read"), "1b");
        assert_eq!(
            fs::metadata(dir.join("d")).expect("stat").mode() & 0o7777,
            0o400
        );
        assert!(dir.join("c").symlink_metadata().is_err());
        assert!(dir.join("nested").symlink_metadata().is_err());
        assert!(!dir.join(NEW_DATA_DIR).exists());
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("..2"))
            .collect();
        names.sort();
        assert_eq!(names, ["..data", "a", "d"]);

        // A mode change alone is an update.
        let third = payload(&[("a", "1b", 0o600), ("d", "4", 0o400)]);
        assert!(write(dir, &third, None).expect("write"));
        assert_eq!(
            fs::metadata(dir.join("a")).expect("stat").mode() & 0o7777,
            0o600
        );
    }

    #[test]
    fn fs_group_owns_and_group_reads() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let files = payload(&[("a", "1", 0o600), ("sub/b", "2", 0o644)]);
        assert!(write(dir, &files, Some(4321)).expect("write"));
        let a = fs::metadata(dir.join("a")).expect("stat");
        assert_eq!((a.gid(), a.mode() & 0o7777), (4321, 0o640));
        let sub = fs::metadata(dir.join("sub")).expect("stat");
        assert_eq!((sub.gid(), sub.mode() & 0o7777), (4321, 0o2755));
        assert!(!write(dir, &files, Some(4321)).expect("write"));
    }
}
