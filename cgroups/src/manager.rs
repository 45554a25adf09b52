//! The cgroup manager: creates, updates and removes the kubelet's cgroups (the QoS
//! hierarchy and the pod cgroups) on a [`Layout`], for cgroup v1 and v2, with the
//! cgroupfs or the systemd driver's naming.
//!
//! Ported from upstream `pkg/kubelet/cm/cgroup_manager_linux.go` (`Create`, `Update`,
//! `Destroy`, `Exists`, `Pids`, `toResources`, `maybeSetHugetlb`), which drives runc's
//! libcontainer: `libcontainer/cgroups/fs` (v1: a directory in every mounted
//! hierarchy, `cpuset` copied from the parent, `cpu.go`'s period/quota order) and
//! `libcontainer/cgroups/fs2` (v2: `CreateCgroupPath` enabling controllers in each
//! ancestor's `cgroup.subtree_control`, `cpu.weight`, `cpu.max`, `memory.max`,
//! `pids.max`, `hugetlb.<size>.max`, unified files). The QoS layout follows
//! `qos_container_manager_linux.go` and `pod_container_manager_linux.go`.
//!
//! Why not the `cgroups-rs` crate (kata-containers; read as vendored in
//! `kata-containers/src/agent/vendor/cgroups-rs`): its `Hierarchy` trait can be
//! implemented over an arbitrary root, but v2 creation reads the controllers to enable
//! from the hard-coded `/sys/fs/cgroup/cgroup.controllers` whatever the hierarchy's
//! root, and writes `+<controller>` into the root's and every ancestor's
//! `cgroup.subtree_control` ignoring errors; `Cgroup::clone()` silently switches to the
//! host's auto-detected hierarchy; and its `Resources` model has no way to write
//! `cpu.cfs_period_us` before the quota with libcontainer's EINVAL retry or to skip
//! unmounted controllers the way kubelet does. The writes needed here are a handful of
//! small files, so they are written directly, each error carrying its path and value.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::layout::{CgroupVersion, Layout};
use crate::qos::QosClass;
use crate::systemd::{CgroupDriver, to_systemd_name};
use crate::systemd_dbus::{
    SystemdBus, SystemdBusError, parent_slice, resource_properties, slice_properties,
};
use crate::values::{QosResources, ResourceConfig, cpu_shares_to_weight};

/// What went wrong on a cgroup file or directory.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `mkdir` failed.
    #[error("creating cgroup {path}: {source}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing a value failed.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The value.
        value: String,
        /// The I/O error.
        source: io::Error,
    },
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The kernel clamped `cpu.shares` (libcontainer's check after writing).
    #[error("{path}: the {bound} allowed cpu-shares is {got} (asked for {wanted})")]
    SharesClamped {
        /// The file.
        path: PathBuf,
        /// `maximum` or `minimum`.
        bound: &'static str,
        /// What the kernel kept.
        got: u64,
        /// What was written.
        wanted: u64,
    },
    /// `rmdir` failed (e.g. EBUSY: processes are still in the cgroup).
    #[error("removing cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A huge page size that can't be named (`HugePageUnitSizeFromByteSize`).
    #[error("huge page size {0} is not a power-of-1024 multiple of a unit")]
    HugePageSize(u64),
    /// systemd refused or failed a unit operation (systemd driver).
    #[error(transparent)]
    Systemd(#[from] SystemdBusError),
}

/// The v1 hierarchies libcontainer's fs manager creates a cgroup in (its `subsystems`
/// list); others mounted on the host (`misc`, ...) are left alone.
const V1_SUBSYSTEMS: &[&str] = &[
    "cpuset",
    "devices",
    "memory",
    "cpu",
    "cpuacct",
    "pids",
    "blkio",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "freezer",
    "rdma",
    "name=systemd",
];

/// The v1 controllers whose presence makes a cgroup "exist" (kubelet's `Validate`
/// whitelist; `hugetlb` only when mounted).
const V1_REQUIRED: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids", "hugetlb"];

/// Creates, updates and removes kubelet cgroups. Names are in cgroupfs form
/// (`/kubepods/burstable/pod<uid>`); the driver maps them to directories.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    layout: Layout,
    driver: CgroupDriver,
    hugepage_sizes: Vec<u64>,
    /// systemd over D-Bus, for the systemd driver: slices are started, set and stopped
    /// through it before the direct cgroupfs writes.
    systemd: Option<Arc<SystemdBus>>,
}

impl CgroupManager {
    /// A cgroupfs-driver manager over `layout`.
    #[must_use]
    pub fn new(layout: Layout) -> Self {
        CgroupManager {
            layout,
            driver: CgroupDriver::Cgroupfs,
            hugepage_sizes: Vec::new(),
            systemd: None,
        }
    }

    /// The same with `driver`'s naming. With [`CgroupDriver::Systemd`] but no bus
    /// (see [`CgroupManager::with_systemd`]) only the naming changes: the slices'
    /// directories are made directly.
    #[must_use]
    pub fn with_driver(mut self, driver: CgroupDriver) -> Self {
        self.driver = driver;
        self
    }

    /// The systemd driver over `bus`, as upstream's: `create` starts each cgroup as a
    /// transient slice (`StartTransientUnit`), `create` and `update` set its resources
    /// with `SetUnitProperties`, `destroy` stops it (`StopUnit`); each is followed by
    /// the direct cgroupfs work the cgroupfs driver does (directories in hierarchies
    /// systemd leaves alone, the values, huge pages), as libcontainer's systemd
    /// managers follow up with their fs managers.
    #[must_use]
    pub fn with_systemd(mut self, bus: Arc<SystemdBus>) -> Self {
        self.driver = CgroupDriver::Systemd;
        self.systemd = Some(bus);
        self
    }

    /// The host's huge page sizes in bytes: a size missing from a config's
    /// `hugepage_limit` gets limit 0 when hugetlb is available (kubelet's
    /// `maybeSetHugetlb`).
    #[must_use]
    pub fn with_hugepage_sizes(mut self, sizes: Vec<u64>) -> Self {
        self.hugepage_sizes = sizes;
        self
    }

    /// The layout.
    #[must_use]
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The driver.
    #[must_use]
    pub fn driver(&self) -> CgroupDriver {
        self.driver
    }

    /// The cgroup path (relative to each hierarchy's mount) of `name`.
    #[must_use]
    pub fn path(&self, name: &str) -> String {
        self.driver.path(name)
    }

    /// The directories `name` has: one per libcontainer hierarchy in v1, one in v2.
    fn dirs(&self, name: &str) -> Vec<PathBuf> {
        let path = self.path(name);
        let mut out: Vec<PathBuf> = Vec::new();
        match self.layout.version() {
            CgroupVersion::V1 => {
                for c in self.layout.v1_controllers() {
                    if !V1_SUBSYSTEMS.contains(&c) {
                        continue;
                    }
                    if let Some(d) = self.layout.dir(c, &path)
                        && !out.contains(&d)
                    {
                        out.push(d);
                    }
                }
            }
            CgroupVersion::V2 => out.extend(self.layout.dir("", &path)),
        }
        out
    }

    /// [`Self::dirs`] plus the hybrid unified directory runc also makes: what a
    /// removal, and the search for processes left in the cgroup, go through.
    fn all_dirs(&self, name: &str) -> Vec<PathBuf> {
        let mut out = self.dirs(name);
        if let Some(unified) = self.layout.hybrid_unified() {
            let rel = self.path(name);
            let rel = rel.trim_start_matches('/');
            if !rel.is_empty() {
                out.push(unified.join(rel));
            }
        }
        out
    }

    /// Creates `name` (and missing parents) and sets `rc`.
    ///
    /// # Errors
    /// A directory that can't be made or a value the kernel refuses, with its path.
    pub fn create(&self, name: &str, rc: &ResourceConfig) -> Result<(), CgroupError> {
        if let Some(bus) = &self.systemd {
            // libcontainer Apply(-1): the slice, Wants= its parent (kubelet's
            // libctCgroupConfig names both); an existing unit is fine.
            let unit = to_systemd_name(name);
            let props = slice_properties(self.layout.version(), &unit, &parent_slice(&unit));
            bus.start_transient_unit(&unit, &props)?;
        }
        let path = self.path(name);
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        match self.layout.version() {
            CgroupVersion::V1 => {
                for dir in self.dirs(name) {
                    mkdir_all(&dir)?;
                }
                if let Some(mount) = self.layout.dir("cpuset", "/") {
                    ensure_cpuset(&mount, &components)?;
                }
            }
            CgroupVersion::V2 => {
                if let Some(mount) = self.layout.dir("", "/") {
                    create_v2(&mount, &components)?;
                }
            }
        }
        self.update(name, rc)
    }

    /// Sets `rc` on the existing cgroup `name`.
    ///
    /// # Errors
    /// A value the kernel refuses (or a missing cgroup), with the file's path.
    pub fn update(&self, name: &str, rc: &ResourceConfig) -> Result<(), CgroupError> {
        if let Some(bus) = &self.systemd {
            let version = self.layout.version();
            let props = resource_properties(version, rc, bus.version());
            bus.set_unit_properties(&to_systemd_name(name), &props)?;
        }
        let path = self.path(name);
        match self.layout.version() {
            CgroupVersion::V1 => self.set_v1(&path, rc),
            CgroupVersion::V2 => match self.layout.dir("", &path) {
                Some(dir) => self.set_v2(&dir, rc),
                None => Ok(()),
            },
        }
    }

    fn set_v1(&self, path: &str, rc: &ResourceConfig) -> Result<(), CgroupError> {
        if let Some(dir) = self.layout.dir("cpu", path) {
            set_cpu_v1(&dir, rc)?;
        }
        if let Some(dir) = self.layout.dir("memory", path)
            && let Some(limit) = rc.memory.filter(|m| *m != 0)
        {
            write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        }
        if let Some(dir) = self.layout.dir("pids", path)
            && let Some(value) = pids_value(rc.pids_limit)
        {
            write(&dir.join("pids.max"), &value)?;
        }
        if let Some(dir) = self.layout.dir("hugetlb", path) {
            for (size, limit) in self.hugetlb_limits(rc) {
                let unit = hugepage_unit(size)?;
                write(
                    &dir.join(format!("hugetlb.{unit}.limit_in_bytes")),
                    &limit.to_string(),
                )?;
            }
        }
        Ok(())
    }

    fn set_v2(&self, dir: &Path, rc: &ResourceConfig) -> Result<(), CgroupError> {
        if let Some(shares) = rc.cpu_shares {
            write(
                &dir.join("cpu.weight"),
                &cpu_shares_to_weight(shares).to_string(),
            )?;
        }
        let quota = rc.cpu_quota.unwrap_or(0);
        let period = rc.cpu_period.unwrap_or(0);
        if quota != 0 || period != 0 {
            let mut value = if quota > 0 {
                quota.to_string()
            } else {
                "max".to_owned()
            };
            if period != 0 {
                value.push_str(&format!(" {period}"));
            }
            write(&dir.join("cpu.max"), &value)?;
        }
        if let Some(limit) = rc.memory.filter(|m| *m != 0) {
            let value = if limit < 0 {
                "max".to_owned()
            } else {
                limit.to_string()
            };
            write(&dir.join("memory.max"), &value)?;
        }
        if let Some(value) = pids_value(rc.pids_limit) {
            write(&dir.join("pids.max"), &value)?;
        }
        let mount = self.layout.dir("", "/").unwrap_or_else(|| dir.to_owned());
        if read_words(&mount.join("cgroup.controllers")).contains("hugetlb") {
            for (size, limit) in self.hugetlb_limits(rc) {
                let unit = hugepage_unit(size)?;
                write(&dir.join(format!("hugetlb.{unit}.max")), &limit.to_string())?;
            }
        }
        for (file, value) in &rc.unified {
            write(&dir.join(file), value)?;
        }
        Ok(())
    }

    /// The config's huge page limits plus 0 for every other host size.
    fn hugetlb_limits(&self, rc: &ResourceConfig) -> Vec<(u64, i64)> {
        let mut out: Vec<(u64, i64)> = rc.hugepage_limit.iter().map(|(s, l)| (*s, *l)).collect();
        for size in &self.hugepage_sizes {
            if !rc.hugepage_limit.contains_key(size) {
                out.push((*size, 0));
            }
        }
        out
    }

    /// Removes `name` and everything under it from every hierarchy. A missing cgroup
    /// is fine. Keeps going after a failure and returns the first error.
    ///
    /// # Errors
    /// A directory the kernel won't remove (EBUSY while processes remain), with its path.
    pub fn destroy(&self, name: &str) -> Result<(), CgroupError> {
        let mut first = None;
        // libcontainer: stop the unit, then remove every directory either way (some
        // were made directly, and systemd 239 leaves sub-cgroups).
        if let Some(bus) = &self.systemd
            && let Err(e) = bus.stop_unit(&to_systemd_name(name))
        {
            tracing::warn!(error = %e, "stopping the cgroup's unit failed");
            first = Some(CgroupError::from(e));
        }
        for dir in self.all_dirs(name) {
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!(error = %e, "cgroup removal failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Whether `name` exists: in v1, in every mounted required hierarchy (cpu,
    /// cpuacct, cpuset, memory, pids, hugetlb); in v2, its directory.
    #[must_use]
    pub fn exists(&self, name: &str) -> bool {
        let path = self.path(name);
        match self.layout.version() {
            CgroupVersion::V1 => {
                let dirs: Vec<PathBuf> = V1_REQUIRED
                    .iter()
                    .filter_map(|c| self.layout.dir(c, &path))
                    .collect();
                !dirs.is_empty() && dirs.iter().all(|d| d.is_dir())
            }
            CgroupVersion::V2 => self.layout.dir("", &path).is_some_and(|d| d.is_dir()),
        }
    }

    /// The processes in `name` and its descendants, in any hierarchy, sorted.
    #[must_use]
    pub fn pids(&self, name: &str) -> Vec<i32> {
        let mut pids = BTreeSet::new();
        for dir in self.all_dirs(name) {
            collect_pids(&dir, &mut pids);
        }
        pids.into_iter().collect()
    }

    /// Creates (or updates) `<root>/kubepods` with `kubepods` plus the guaranteed-level
    /// QoS values, and `kubepods/burstable`, `kubepods/besteffort` with theirs.
    ///
    /// # Errors
    /// As [`CgroupManager::create`].
    pub fn ensure_qos_hierarchy(
        &self,
        cgroup_root: &str,
        kubepods: &ResourceConfig,
        qos: &QosResources,
    ) -> Result<(), CgroupError> {
        let mut top = kubepods.clone();
        top.hugepage_limit
            .extend(qos.guaranteed.hugepage_limit.clone());
        top.unified.extend(qos.guaranteed.unified.clone());
        let entries = [
            (kubepods_name(cgroup_root), &top),
            (
                qos_cgroup_name(cgroup_root, QosClass::Burstable),
                &qos.burstable,
            ),
            (
                qos_cgroup_name(cgroup_root, QosClass::BestEffort),
                &qos.besteffort,
            ),
        ];
        for (name, rc) in entries {
            if self.exists(&name) {
                self.update(&name, rc)?;
            } else {
                self.create(&name, rc)?;
            }
        }
        Ok(())
    }
}

fn join_root(cgroup_root: &str, rest: &str) -> String {
    format!("{}/{rest}", cgroup_root.trim_end_matches('/'))
}

/// `<root>/kubepods`.
#[must_use]
pub fn kubepods_name(cgroup_root: &str) -> String {
    join_root(cgroup_root, "kubepods")
}

/// The QoS class's cgroup: `<root>/kubepods` for Guaranteed,
/// `<root>/kubepods/burstable`, `<root>/kubepods/besteffort`.
#[must_use]
pub fn qos_cgroup_name(cgroup_root: &str, class: QosClass) -> String {
    match class {
        QosClass::Guaranteed => kubepods_name(cgroup_root),
        QosClass::Burstable => join_root(cgroup_root, "kubepods/burstable"),
        QosClass::BestEffort => join_root(cgroup_root, "kubepods/besteffort"),
    }
}

/// A pod's cgroup: `<root>/kubepods[/burstable|/besteffort]/pod<uid>`.
#[must_use]
pub fn pod_cgroup_name(cgroup_root: &str, class: QosClass, uid: &str) -> String {
    format!("{}/pod{uid}", qos_cgroup_name(cgroup_root, class))
}

/// `pids.max`'s value: 0 leaves it, negative is `max` (libcontainer).
fn pids_value(limit: Option<i64>) -> Option<String> {
    match limit? {
        0 => None,
        l if l < 0 => Some("max".to_owned()),
        l => Some(l.to_string()),
    }
}

/// kubelet's `HugePageUnitSizeFromByteSize`: 2097152 → `2MB`, 1073741824 → `1GB`.
fn hugepage_unit(size: u64) -> Result<String, CgroupError> {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut s = size;
    let mut idx = 0;
    while s != 0 && s.is_multiple_of(1024) && idx < UNITS.len() - 1 {
        s /= 1024;
        idx += 1;
    }
    if s > 1024 && idx < UNITS.len() - 1 {
        return Err(CgroupError::HugePageSize(size));
    }
    Ok(format!("{s}{}", UNITS[idx]))
}

/// libcontainer `fs/cpu.go` `Set`: shares (checked by reading back), then the period,
/// then the quota; a period the kernel refuses with EINVAL (old quota / new period
/// over the parent's limit) is written again after the quota.
fn set_cpu_v1(dir: &Path, rc: &ResourceConfig) -> Result<(), CgroupError> {
    if let Some(shares) = rc.cpu_shares.filter(|s| *s != 0) {
        let file = dir.join("cpu.shares");
        write(&file, &shares.to_string())?;
        let text = std::fs::read_to_string(&file).map_err(|source| CgroupError::Read {
            path: file.clone(),
            source,
        })?;
        if let Ok(got) = text.trim().parse::<u64>()
            && got != shares
        {
            return Err(CgroupError::SharesClamped {
                path: file,
                bound: if shares > got { "maximum" } else { "minimum" },
                got,
                wanted: shares,
            });
        }
    }
    let quota = rc.cpu_quota.unwrap_or(0);
    let mut deferred_period = None;
    if let Some(period) = rc.cpu_period.filter(|p| *p != 0) {
        let file = dir.join("cpu.cfs_period_us");
        match write(&file, &period.to_string()) {
            Ok(()) => {}
            Err(CgroupError::Write { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) && quota != 0 =>
            {
                deferred_period = Some(period);
            }
            Err(e) => return Err(e),
        }
    }
    if quota != 0 {
        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        if let Some(period) = deferred_period {
            write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
        }
    }
    Ok(())
}

/// Writes `value` in one `write(2)`, as cgroup files need. The file is created when
/// missing, which only a fake tree allows (the kernel refuses new files in cgroupfs).
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    use std::io::Write as _;
    let err = |source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

fn mkdir_all(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Create {
        path: dir.to_owned(),
        source,
    })
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// A file's whitespace-separated words, `+` prefixes dropped (empty when missing).
fn read_words(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .map(|w| w.trim_start_matches('+').to_owned())
        .collect()
}

/// libcontainer `fs/cpuset.go` `ensureParent` + `copyIfNeeded`: each level's empty
/// `cpuset.cpus` / `cpuset.mems` gets its parent's value (a new cpuset cgroup has
/// none, and no task can join it until it does).
fn ensure_cpuset(mount: &Path, components: &[&str]) -> Result<(), CgroupError> {
    let mut parent = mount.to_owned();
    for c in components {
        let child = parent.join(c);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = std::fs::read_to_string(child.join(file)).unwrap_or_default();
            if current.trim().is_empty() {
                let from = parent.join(file);
                let value = std::fs::read_to_string(&from).map_err(|source| CgroupError::Read {
                    path: from.clone(),
                    source,
                })?;
                let value = value.trim();
                if !value.is_empty() {
                    write(&child.join(file), value)?;
                }
            }
        }
        parent = child;
    }
    Ok(())
}

/// libcontainer `fs2.CreateCgroupPath`: makes each level, and in every ancestor of the
/// leaf (the mount included) enables the controllers it offers (its
/// `cgroup.controllers`, or the mount's where a fake tree has none) that aren't enabled
/// yet. A refused combined write is retried controller by controller, errors ignored,
/// as libcontainer does (the resource writes then report what is missing).
fn create_v2(mount: &Path, components: &[&str]) -> Result<(), CgroupError> {
    let root_controllers = read_words(&mount.join("cgroup.controllers"));
    let mut current = mount.to_owned();
    for c in components {
        // Enable in `current`, the parent of the next level.
        let offered = {
            let own = read_words(&current.join("cgroup.controllers"));
            if own.is_empty() {
                root_controllers.clone()
            } else {
                own
            }
        };
        let file = current.join("cgroup.subtree_control");
        let enabled = read_words(&file);
        // Keep the kernel's order (cgroup.controllers lists them in a fixed order).
        let order = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        let missing: Vec<&str> = order
            .split_whitespace()
            .filter(|c| offered.contains(*c) && !enabled.contains(*c))
            .collect();
        if !missing.is_empty() {
            let all = missing
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            if write(&file, &all).is_err() {
                for c in &missing {
                    let _ = write(&file, &format!("+{c}"));
                }
            }
        }
        current = current.join(c);
        mkdir(&current)?;
    }
    Ok(())
}

/// Removes `dir` depth-first. Missing is fine. EBUSY is retried a few times (the
/// kernel can lag behind exiting tasks), as libcontainer's `RemovePath`.
fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Remove {
                path: dir.to_owned(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let mut delay = Duration::from_millis(10);
    for attempt in 0..5 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 4 => {
                std::thread::sleep(delay);
                delay *= 2;
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn collect_pids(dir: &Path, out: &mut BTreeSet<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&entry.path(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            pod_cgroup_name("/", QosClass::Guaranteed, "u1"),
            "/kubepods/podu1"
        );
        assert_eq!(
            pod_cgroup_name("/nodelet/", QosClass::Burstable, "u1"),
            "/nodelet/kubepods/burstable/podu1"
        );
        assert_eq!(
            pod_cgroup_name("", QosClass::BestEffort, "u1"),
            "/kubepods/besteffort/podu1"
        );
    }

    #[test]
    fn hugepage_units() {
        assert_eq!(hugepage_unit(2 << 20).expect("2MB"), "2MB");
        assert_eq!(hugepage_unit(1 << 30).expect("1GB"), "1GB");
        assert_eq!(hugepage_unit(64 << 10).expect("64KB"), "64KB");
        assert!(hugepage_unit(3 * 1025).is_err());
    }

    #[test]
    fn pids_values() {
        assert_eq!(pids_value(None), None);
        assert_eq!(pids_value(Some(0)), None);
        assert_eq!(pids_value(Some(-1)).as_deref(), Some("max"));
        assert_eq!(pids_value(Some(42)).as_deref(), Some("42"));
    }
}
