//! cAdvisor's filesystem series on `/metrics/cadvisor`: `container_fs_usage_bytes`,
//! `container_fs_limit_bytes`, `container_fs_inodes_free` and `container_fs_inodes_total`,
//! for the node's filesystems (`id="/"`) and each container's writable layer, labelled
//! with the `device` the filesystem is mounted from, as cAdvisor labels them
//! (`device="/dev/vda1"`).

use std::path::Path;

use super::resource::{Sample, bytes, family};
use crate::node::summary::FsStats;

/// The devices of the node's filesystems, found once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsDevices {
    /// The filesystem of the root directory (the node fs).
    pub node: Option<String>,
    /// The filesystem of containerd's root (images and writable layers).
    pub image: Option<String>,
}

impl FsDevices {
    /// Looks up both in this mount namespace's `/proc/self/mountinfo`.
    pub fn find(root_dir: &Path, image_dir: &Path) -> FsDevices {
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return FsDevices::default();
        };
        let device = |p: &Path| {
            std::fs::canonicalize(p)
                .ok()
                .and_then(|p| device_in(&text, &p))
        };
        FsDevices {
            node: device(root_dir),
            image: device(image_dir),
        }
    }
}

/// The source of the last mount in `mountinfo` whose mount point holds `path` (the
/// longest match; a later mount on the same point hides an earlier one).
pub fn device_in(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        // `id parent maj:min root mount-point options [optional…] - fstype source super`
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(point), Some(source)) = (head.split(' ').nth(4), tail.split(' ').nth(1)) else {
            continue;
        };
        let point = crate::volume::unescape_mountinfo(point);
        if !path.starts_with(&point) {
            continue;
        }
        if best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), crate::volume::unescape_mountinfo(source)));
        }
    }
    best.map(|(_, source)| source)
}

/// The four series, gathered sample by sample.
#[derive(Default)]
pub(super) struct FsSeries {
    usage: Vec<Sample>,
    limit: Vec<Sample>,
    inodes_free: Vec<Sample>,
    inodes: Vec<Sample>,
}

impl FsSeries {
    /// Adds one filesystem's figures under `labels` (cAdvisor's, sorted by name)
    /// with `device` after `container`.
    pub(super) fn push(
        &mut self,
        mut labels: Vec<(&'static str, String)>,
        device: Option<&str>,
        fs: &FsStats,
    ) {
        let Some(device) = device else {
            return;
        };
        labels.insert(1, ("device", device.to_owned()));
        let at = Some(fs.time);
        for (series, value) in [
            (&mut self.usage, fs.used_bytes),
            (&mut self.limit, fs.capacity_bytes),
            (&mut self.inodes_free, fs.inodes_free),
            (&mut self.inodes, fs.inodes),
        ] {
            if let Some(v) = value {
                series.push((labels.clone(), bytes(v), at));
            }
        }
    }

    pub(super) fn render(&self, out: &mut String) {
        family(
            out,
            "container_fs_inodes_free",
            "Number of available Inodes",
            "gauge",
            &self.inodes_free,
        );
        family(
            out,
            "container_fs_inodes_total",
            "Number of Inodes",
            "gauge",
            &self.inodes,
        );
        family(
            out,
            "container_fs_limit_bytes",
            "Number of bytes that can be consumed by the container on this filesystem.",
            "gauge",
            &self.limit,
        );
        family(
            out,
            "container_fs_usage_bytes",
            "Number of bytes that are consumed by the container on this filesystem.",
            "gauge",
            &self.usage,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:26 / /var/lib/containerd rw,relatime shared:9 - xfs /dev/vdb rw
31 22 0:27 / /var/lib/with\\040space rw - ext4 /dev/vdc rw
32 30 0:28 / /var/lib/containerd rw - tmpfs tmpfs rw
";

    #[test]
    fn the_longest_and_latest_mount_wins() {
        assert_eq!(
            device_in(MOUNTINFO, Path::new("/var/lib/nodelet")).as_deref(),
            Some("/dev/vda1")
        );
        assert_eq!(
            device_in(MOUNTINFO, Path::new("/var/lib/containerd/io")).as_deref(),
            Some("tmpfs"),
            "a later mount on the same point hides the earlier one"
        );
        assert_eq!(
            device_in(MOUNTINFO, Path::new("/var/lib/with space/x")).as_deref(),
            Some("/dev/vdc")
        );
        assert_eq!(
            device_in(MOUNTINFO, Path::new("/var/lib/containerdx")).as_deref(),
            Some("/dev/vda1"),
            "path components, not string prefixes"
        );
    }

    #[test]
    fn this_hosts_root_has_a_device() {
        let d = FsDevices::find(Path::new("/"), Path::new("/"));
        assert!(d.node.is_some(), "{d:?}");
        assert_eq!(d.node, d.image);
    }
}
