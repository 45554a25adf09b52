//! nodelet's service proxy (the kube-proxy half of the agent): Services and
//! EndpointSlices merged per service port (`model`), rendered into upstream's nftables-mode
//! rule structure (`nft`), spread over shard tables so the kernel's per-commit loop check
//! walks one shard (`nft::shard`), and programmed incrementally (`proxier`): full syncs as one
//! `nft -f` transaction, incremental ones as one nf_tables netlink batch (`nft::netlink`;
//! the `nft` binary reads the whole table on every run, so it costs O(table) even for a
//! one-element change).
//!
//! The model and the renderer are pure; the only side effects, running `nft` and sending
//! netlink batches, sit behind the `nft::Nft` trait so the proxier's sync logic is tested with a recording fake and the
//! real path is tested in throwaway network namespaces (`tests/kernel.rs`) and against
//! the real apiserver tier (`tests/apiserver.rs`).
//!
//! Around the proxier: stale UDP conntrack entries deleted over ctnetlink after syncs
//! that touch UDP services (`conntrack`); `/healthz`, `/livez`, `/metrics` and the
//! health-check node ports (`health`); the watchers (`watch`), falling back to
//! `v1beta1` EndpointSlices or core Endpoints on old apiservers (`legacy`), one set of
//! watches feeding one proxier per IP family (dual-stack). After a full sync the heap's
//! free pages go back to the kernel (`heap`, shared with the agent).
//!
//! Known limits, for now: the consistency check compares rule counts, not rule text; dead
//! chains are deleted in the same transaction that drops their last reference (fine on
//! this project's kernels, upstream defers it for kernels before 6.2); no IPVS backend;
//! the `conntrack` sysctls of `KubeProxyConfiguration` are not applied.

pub mod conntrack;
pub mod health;
pub mod heap;
pub mod legacy;
pub mod model;
pub mod nft;
pub mod proxier;
pub mod runner;
pub mod watch;

pub use proxier::{Proxier, SyncError, SyncReport};
pub mod testing;

#[cfg(test)]
mod tests;
