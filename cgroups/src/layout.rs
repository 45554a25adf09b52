//! Where the cgroup hierarchies are mounted, and which cgroup version the node runs.
//!
//! Upstream decides v1 versus v2 by the filesystem type of `/sys/fs/cgroup` (cgroup2 ⇒
//! unified mode). A "hybrid" host (v1 controllers plus an empty v2 mount, like this
//! project's CI machine) is v1. A [`Layout`] can also be built over a temp dir, which is
//! how the fake-cgroupfs tests run.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// The cgroup version in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy (or hybrid): one hierarchy per controller.
    V1,
    /// Unified: one hierarchy, controllers enabled per subtree.
    V2,
}

/// The cgroup hierarchies a node has: for v1, each controller's mount point; for v2, the
/// unified mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    version: CgroupVersion,
    /// v1: controller name (`cpu`, `cpuacct`, `memory`, `pids`, `hugetlb`, `cpuset`,
    /// `name=systemd`, ...) → mount point. Co-mounted controllers share a path.
    v1: BTreeMap<String, PathBuf>,
    /// The cgroup2 mount point, if any (in v1 mode it may exist but hold no controllers).
    unified: Option<PathBuf>,
}

impl Layout {
    /// The host's layout, from `/proc/self/mountinfo`.
    ///
    /// # Errors
    /// When mountinfo can't be read or shows no cgroup hierarchy at all.
    pub fn detect() -> io::Result<Layout> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        Layout::from_mountinfo(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup or cgroup2 filesystem is mounted (see /proc/self/mountinfo)",
            )
        })
    }

    /// Parses mountinfo text. The node is v2 when a cgroup2 filesystem is mounted at
    /// `/sys/fs/cgroup` itself (upstream's unified-mode test), or when cgroup2 is the
    /// only cgroup filesystem; otherwise v1.
    pub fn from_mountinfo(text: &str) -> Option<Layout> {
        let mut v1 = BTreeMap::new();
        let mut unified = None;
        let mut unified_at_root = false;
        for line in text.lines() {
            // `id parent major:minor root mount-point options [optional...] - fstype source super-options`
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let post: Vec<&str> = post.split_whitespace().collect();
            let (Some(mount_point), Some(fstype)) = (pre.get(4), post.first()) else {
                continue;
            };
            match *fstype {
                "cgroup2" => {
                    unified_at_root |= *mount_point == "/sys/fs/cgroup";
                    unified.get_or_insert_with(|| PathBuf::from(mount_point));
                }
                "cgroup" => {
                    let options = post.get(2).copied().unwrap_or_default();
                    for opt in options.split(',') {
                        if is_v1_controller(opt) {
                            v1.entry(opt.to_owned())
                                .or_insert_with(|| PathBuf::from(mount_point));
                        }
                    }
                }
                _ => {}
            }
        }
        let version = if unified_at_root || (v1.is_empty() && unified.is_some()) {
            CgroupVersion::V2
        } else if !v1.is_empty() {
            CgroupVersion::V1
        } else {
            return None;
        };
        Some(Layout {
            version,
            v1,
            unified,
        })
    }

    /// A v1 layout over `root`, each controller at `root/<controller>` (the usual
    /// `/sys/fs/cgroup/<controller>` shape). For tests on a fake cgroupfs.
    pub fn v1_at(root: &Path, controllers: &[&str]) -> Layout {
        Layout {
            version: CgroupVersion::V1,
            v1: controllers
                .iter()
                .map(|c| ((*c).to_owned(), root.join(c)))
                .collect(),
            unified: None,
        }
    }

    /// A v2 layout with the unified hierarchy at `root`. For tests on a fake cgroupfs.
    pub fn v2_at(root: &Path) -> Layout {
        Layout {
            version: CgroupVersion::V2,
            v1: BTreeMap::new(),
            unified: Some(root.to_owned()),
        }
    }

    /// The cgroup version.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The directory of `cgroup` (an absolute cgroup path such as `/kubepods/pod1`) for
    /// `controller`: in v1 under that controller's mount (None when it isn't mounted, as
    /// `hugetlb` isn't on some hosts); in v2 under the unified mount, whatever the
    /// controller.
    pub fn dir(&self, controller: &str, cgroup: &str) -> Option<PathBuf> {
        let rel = cgroup.trim_start_matches('/');
        let base = match self.version {
            CgroupVersion::V1 => self.v1.get(controller)?,
            CgroupVersion::V2 => self.unified.as_ref()?,
        };
        Some(if rel.is_empty() {
            base.clone()
        } else {
            base.join(rel)
        })
    }

    /// Whether `controller` is usable: mounted (v1) or listed in the root's
    /// `cgroup.controllers` (v2). Hosts often have huge pages without the `hugetlb`
    /// controller, and runc refuses limits for a controller that isn't there.
    pub fn has_controller(&self, controller: &str) -> bool {
        match self.version {
            CgroupVersion::V1 => self.v1.contains_key(controller),
            CgroupVersion::V2 => self.unified.as_ref().is_some_and(|root| {
                std::fs::read_to_string(root.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == controller))
            }),
        }
    }

    /// The cgroup2 mount beside the v1 controllers on a hybrid host
    /// (`/sys/fs/cgroup/unified`): runc makes a container's cgroup there too, so a
    /// removal has to take it as well (libcontainer's hybrid `paths[""]`). `None` in
    /// v2 mode, where it is the only hierarchy.
    pub fn hybrid_unified(&self) -> Option<&std::path::Path> {
        match self.version {
            CgroupVersion::V1 => self.unified.as_deref(),
            CgroupVersion::V2 => None,
        }
    }

    /// The mounted v1 controllers (empty in v2).
    pub fn v1_controllers(&self) -> impl Iterator<Item = &str> {
        self.v1.keys().map(String::as_str)
    }

    /// Every distinct hierarchy mount point: each v1 mount once, then the unified one
    /// when it is the node's hierarchy. A cgroup exists in all of these.
    pub fn hierarchy_roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = Vec::new();
        match self.version {
            CgroupVersion::V1 => {
                for p in self.v1.values() {
                    if !roots.contains(p) {
                        roots.push(p.clone());
                    }
                }
            }
            CgroupVersion::V2 => roots.extend(self.unified.clone()),
        }
        roots
    }
}

/// A v1 mount option that names a controller (or a named hierarchy like
/// `name=systemd`), as opposed to a generic mount option.
fn is_v1_controller(opt: &str) -> bool {
    matches!(
        opt,
        "cpu"
            | "cpuacct"
            | "cpuset"
            | "memory"
            | "devices"
            | "freezer"
            | "net_cls"
            | "net_prio"
            | "blkio"
            | "perf_event"
            | "hugetlb"
            | "pids"
            | "rdma"
            | "misc"
    ) || opt.starts_with("name=")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_is_v1() {
        let l = Layout::from_mountinfo(HYBRID).expect("layout");
        assert_eq!(l.version(), CgroupVersion::V1);
        assert_eq!(
            l.dir("memory", "/kubepods/pod1"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/kubepods/pod1"))
        );
        assert_eq!(l.dir("hugetlb", "/kubepods"), None);
        assert!(l.has_controller("memory") && !l.has_controller("hugetlb"));
        assert_eq!(l.hierarchy_roots().len(), 5);
    }

    #[test]
    fn unified_host_is_v2() {
        let text = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = Layout::from_mountinfo(text).expect("layout");
        assert_eq!(l.version(), CgroupVersion::V2);
        assert_eq!(
            l.dir("memory", "/kubepods"),
            Some(PathBuf::from("/sys/fs/cgroup/kubepods"))
        );
        assert_eq!(l.dir("cpu", "/"), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn co_mounted_controllers_share_a_root() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let l = Layout::from_mountinfo(text).expect("layout");
        assert_eq!(l.dir("cpu", "/a"), l.dir("cpuacct", "/a"));
        assert_eq!(l.hierarchy_roots().len(), 1);
    }

    #[test]
    fn no_cgroups_is_none() {
        assert_eq!(
            Layout::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }
}
