//! nodelet's runtime layer.
//!
//! Everything the agent asks of the machine to run a pod goes through this crate:
//! containerd (over its native gRPC API) for images, snapshots, containers and tasks;
//! CNI plugins for pod networking; the per-pod files a container sees (`/etc/hosts`,
//! `resolv.conf`, `hostname`); and the CRI-format log files under `/var/log/pods`.
//!
//! The crate knows nothing of Kubernetes API objects: the agent translates a PodSpec
//! into [`SandboxConfig`] and [`ContainerConfig`], much as the kubelet translates it into
//! CRI messages, so the boundary stays the one upstream draws.

pub mod cni;
pub mod cni_cache;
pub mod containerd;
pub mod failpoint;
pub mod image;
pub mod logs;
pub mod netns;
pub mod podnet;
pub mod runtime;
