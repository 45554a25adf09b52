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
