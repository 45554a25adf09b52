//! Images on the node: garbage collection by disk usage and age, and the limits on
//! registry pulls (`--registry-qps`/`--registry-burst`).

pub mod gc;
pub mod manager;
pub mod pull_limit;
