//! nodelet's service proxy (the kube-proxy half of the agent): Services and
//! EndpointSlices merged per service port (`model`), rendered into upstream's nftables-mode
//! rule structure (`nft`), and programmed incrementally, one `nft -f` transaction per sync
//! (`proxier`).
//!
//! The model and the renderer are pure; the only side effect, running `nft`, sits behind
//! the `nft::Nft` trait so the proxier's sync logic is tested with a recording fake and the
//! real path is tested in throwaway network namespaces (`tests/kernel.rs`) and against
//! the real apiserver tier (`tests/apiserver.rs`).
//!
//! Known limits, for now: the consistency check compares rule counts, not rule text; dead
//! chains are deleted in the same transaction that drops their last reference (fine on
//! this project's kernels, upstream defers it for kernels before 6.2); `nodelet proxy`
//! programs IPv4 only; no IPVS backend. Stale UDP conntrack entries are deleted over
//! ctnetlink after syncs that touch UDP services (`conntrack`).

pub mod conntrack;
pub mod health;
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
