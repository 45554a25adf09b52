//! nodelet-cgroups: the pod cgroup hierarchy as upstream's kubelet lays it out
//! (`kubepods`, `kubepods/burstable`, `kubepods/besteffort`, `pod<uid>`), the values
//! requests and limits turn into, node allocatable, usage statistics read from cgroup
//! files, and memory pressure notifications for the eviction manager.
//!
//! Everything that touches the kernel goes through a [`Layout`]: where each controller's
//! hierarchy is mounted. Tests point a layout at a temp-dir "fake cgroupfs" to check the
//! files and values written for cgroup v1 and v2 without root; the real layout comes from
//! `/proc/self/mountinfo`.

pub mod layout;
pub mod notify;

pub use layout::{CgroupVersion, Layout};
pub mod allocatable;
pub mod manager;
pub mod qos;
pub mod systemd;
pub mod systemd_dbus;
pub mod values;

pub use allocatable::{Allocatable, AllocatableError, NodeCapacity, Reserved};
pub use manager::{CgroupError, CgroupManager, pod_cgroup_name};
pub use qos::{QosClass, qos_class};
pub use systemd::CgroupDriver;
pub use systemd_dbus::{SystemdBus, SystemdBusError};
pub use values::{ContainerResources, ContainerSettings, QosResources, ResourceConfig};
pub mod fs_usage;
pub mod meminfo;
pub mod stats;

pub use fs_usage::{DirLimits, DirUsage, FsStats, FsUsageError, dir_usage, statvfs};
pub use meminfo::{MemInfo, MemInfoError, NodeMemory, node_memory, read_meminfo};
pub use stats::{CgroupStats, StatsError};
