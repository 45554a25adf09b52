//! The network-relevant end-to-end tests again, this time against the agent's built-in
//! pod network (issue 15): the same test files, compiled into this binary, whose worlds
//! leave their CNI directory empty (see `support::default_pod_net`), so the agent
//! attaches pods itself over netlink, allocates their IPs under
//! `<root-dir>/network/ipam/<bridge>` and masquerades in its own nft table, on the
//! world's private bridge and /24 (`--pod-network-bridge`, `--pod-cidr`).
//!
//! - `spine`: pod IPs from the world's range, two containers sharing the pod's network,
//!   the address released when a pod finishes or goes, the same IP after a restart,
//!   host-network pods allocating nothing;
//! - `run`: `nodelet run` leaves no address allocated;
//! - `crash` and `crash_restart`: the agent SIGKILLed at each step of sandbox creation
//!   (with the built-in network's own points after the IP allocation and after the
//!   veth) and while pods start leaks no netns pin, IP, veth, state directory, snapshot
//!   or nft table once restarted.
//!
//! Tests only the built-in network has (a hostPort, an exhausted range) are in
//! `pod_network.rs`.

// Each included file declares `mod support;`: the support module is compiled once per
// file here, which is what reusing the files as they are costs.
#![allow(clippy::duplicate_mod)]

#[path = "crash.rs"]
mod crash;
#[path = "crash_restart.rs"]
mod crash_restart;
#[path = "run.rs"]
mod run;
#[path = "spine.rs"]
mod spine;
