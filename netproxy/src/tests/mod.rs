//! Unit tests across the model, the renderer and the proxier, on the recording `Nft`
//! fake: snapshots of the full ruleset and of incremental diffs (`snapshots/*.nft`;
//! `NODELET_UPDATE_SNAPSHOTS=1` rewrites them), and the consistency check's repairs.

mod fixtures;
mod netlink;
mod snapshots;
mod sync;
