//! hostPath volumes (upstream's `pkg/volume/hostpath`): the host's own path, after the
//! `type` check (`DirectoryOrCreate` and `FileOrCreate` make what is missing, 0755 and
//! 0644 as upstream). Nothing is made under the pod's directory.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Volume;

use super::{Reason, SetupContext, VolumePlugin, VolumeState, blocking};

/// The hostPath plugin.
pub(crate) struct HostPathPlugin;

impl VolumePlugin for HostPathPlugin {
    fn kind(&self) -> &'static str {
        "hostPath"
    }

    fn dir_name(&self) -> Option<&'static str> {
        None
    }

    fn can_support(&self, v: &Volume) -> bool {
        v.host_path.is_some()
    }

    fn setup<'a>(
        &'a self,
        cx: &'a SetupContext<'a>,
        _state: &'a mut VolumeState,
    ) -> BoxFuture<'a, Result<PathBuf, Reason>> {
        let source = cx.volume.host_path.clone().unwrap_or_default();
        Box::pin(async move {
            let path = PathBuf::from(&source.path);
            let kind = source.type_.unwrap_or_default();
            blocking(move || check_host_path(&path, &kind).map(|()| path)).await
        })
    }
}

/// Checks (and for the `*OrCreate` types makes) `path` as its `type` asks.
///
/// # Errors
/// [`Reason::HostPathType`] when the path is not what the type wants.
pub(crate) fn check_host_path(path: &Path, kind: &str) -> Result<(), Reason> {
    let io = |op: &'static str, p: &Path| {
        let path = p.to_owned();
        move |source| Reason::Io { op, path, source }
    };
    let meta = fs::metadata(path);
    let fail = |want: &str| Reason::HostPathType {
        path: path.to_owned(),
        want: want.to_owned(),
    };
    let is = |ok: fn(&fs::Metadata) -> bool, want: &str| {
        meta.as_ref()
            .ok()
            .filter(|m| ok(m))
            .map(|_| ())
            .ok_or_else(|| fail(want))
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" if meta.is_err() => {
            fs::create_dir_all(path).map_err(io("mkdir", path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(io("chmod", path))
        }
        "DirectoryOrCreate" | "Directory" => is(fs::Metadata::is_dir, "directory"),
        "FileOrCreate" if meta.is_err() => {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io("mkdir", parent))?;
            }
            fs::File::create(path).map_err(io("create", path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(io("chmod", path))
        }
        "FileOrCreate" | "File" => is(fs::Metadata::is_file, "file"),
        "Socket" => is(|m| m.file_type().is_socket(), "socket"),
        "CharDevice" => is(|m| m.file_type().is_char_device(), "character device"),
        "BlockDevice" => is(|m| m.file_type().is_block_device(), "block device"),
        other => Err(fail(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn host_path_types() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let file = dir.join("file");
        fs::write(&file, "x").expect("write");
        let sock = dir.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let missing = dir.join("missing");

        assert!(check_host_path(&missing, "").is_ok());
        assert!(check_host_path(dir, "Directory").is_ok());
        assert!(check_host_path(&file, "File").is_ok());
        assert!(check_host_path(&sock, "Socket").is_ok());
        assert!(check_host_path(Path::new("/dev/null"), "CharDevice").is_ok());
        let cases = [
            (&file, "Directory", "is not a directory"),
            (&missing, "Directory", "is not a directory"),
            (&dir.to_path_buf(), "File", "is not a file"),
            (&file, "Socket", "is not a socket"),
            (&file, "CharDevice", "is not a character device"),
            (&file, "BlockDevice", "is not a block device"),
            (&file, "Weird", "is not a Weird"),
        ];
        for (path, kind, want) in cases {
            let err = check_host_path(path, kind).expect_err(kind).to_string();
            assert_eq!(
                err,
                format!("hostPath type check failed: {} {want}", path.display())
            );
        }
        assert!(check_host_path(&file, "DirectoryOrCreate").is_err());
        assert!(check_host_path(dir, "FileOrCreate").is_err());

        let made = dir.join("made/sub");
        check_host_path(&made, "DirectoryOrCreate").expect("dir made");
        assert_eq!(fs::metadata(&made).expect("stat").mode() & 0o7777, 0o755);
        let made_file = dir.join("new/parent/f");
        check_host_path(&made_file, "FileOrCreate").expect("file made");
        let meta = fs::metadata(&made_file).expect("stat");
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o7777, 0o644);
    }
}
