//! emptyDir volumes (upstream's `pkg/volume/emptydir`): a directory under the pod's,
//! world-writable so any container user can use it (with fsGroup: that group's,
//! setgid, 2777); `medium: Memory` is a tmpfs sized by `sizeLimit`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Volume;

use super::{Reason, SetupContext, VolumePlugin, VolumeState, blocking, mount};

/// The emptyDir plugin.
pub(crate) struct EmptyDirPlugin;

impl VolumePlugin for EmptyDirPlugin {
    fn kind(&self) -> &'static str {
        "emptyDir"
    }

    fn dir_name(&self) -> Option<&'static str> {
        Some("kubernetes.io~empty-dir")
    }

    fn can_support(&self, v: &Volume) -> bool {
        v.empty_dir.is_some()
    }

    fn setup<'a>(
        &'a self,
        cx: &'a SetupContext<'a>,
        _state: &'a mut VolumeState,
    ) -> BoxFuture<'a, Result<PathBuf, Reason>> {
        let source = cx.volume.empty_dir.clone().unwrap_or_default();
        let dir = cx.dir.clone();
        let fs_group = cx.fs_group;
        Box::pin(async move {
            let memory = source.medium.as_deref() == Some("Memory");
            let size = match &source.size_limit {
                Some(q) => size_bytes(&q.0).ok_or_else(|| Reason::Mount {
                    path: dir.clone(),
                    reason: format!("sizeLimit {:?} is not a valid quantity", q.0),
                })?,
                None => None,
            };
            blocking(move || setup_dir(&dir, memory, size, fs_group).map(|()| dir)).await
        })
    }
}

/// A quantity in bytes, rounded up (`Quantity.Value()`); `None` for zero, which
/// upstream treats as no limit.
fn size_bytes(quantity: &str) -> Option<Option<u64>> {
    let q = nodelet_manifests::Quantity::parse(quantity).ok()?;
    let nanos = u128::try_from(q.nanos()).ok()?;
    let bytes = nanos.div_ceil(1_000_000_000);
    Some(u64::try_from(bytes).ok().filter(|b| *b > 0))
}

fn setup_dir(
    dir: &Path,
    memory: bool,
    size: Option<u64>,
    fs_group: Option<u32>,
) -> Result<(), Reason> {
    let io = |op: &'static str| {
        move |source| Reason::Io {
            op,
            path: dir.to_owned(),
            source,
        }
    };
    let mut fresh = false;
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io("mkdir"))?;
        fresh = true;
    }
    if memory && !mount::is_mount_point(dir)? {
        mount::mount_tmpfs(dir, Some(0o777), size)?;
        fresh = true;
    }
    if fresh {
        // Upstream makes emptyDirs world-writable so any container user can use them;
        // with fsGroup the volume belongs to that group, setgid so new files do too.
        let mode = if let Some(gid) = fs_group {
            std::os::unix::fs::chown(dir, None, Some(gid)).map_err(io("chown"))?;
            0o2777
        } else {
            0o777
        };
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io("chmod"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limits_in_bytes() {
        assert_eq!(size_bytes("64Mi"), Some(Some(64 << 20)));
        assert_eq!(size_bytes("1G"), Some(Some(1_000_000_000)));
        assert_eq!(size_bytes("1500m"), Some(Some(2)));
        assert_eq!(size_bytes("0"), Some(None));
        assert_eq!(size_bytes("lots"), None);
    }
}
