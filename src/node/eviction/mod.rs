//! Node-pressure eviction: upstream kubelet's `pkg/kubelet/eviction` as pure, table-tested
//! logic. The agent feeds it numbers and carries out what it decides.
//!
//! - [`config`]: the `--eviction-*` flags ([`EvictionArgs`]) parsed into an
//!   [`EvictionConfig`] with upstream's `ParseThresholdConfig` rules and defaults;
//! - [`signals`]: [`NodeStats`] (plain numbers from cgroups and `statvfs`) →
//!   [`Observations`];
//! - [`thresholds`]: signals, thresholds, upstream's quantity printing and arithmetic;
//! - [`ranking`]: [`PodUsage`] and the eviction orders for memory, disk and pid pressure;
//! - [`manager`]: the [`EvictionManager`] state machine (grace periods, minimum reclaim,
//!   the pressure transition period, node-level reclaim first, one pod per cycle);
//! - [`messages`]: the eviction message, the evicted pod's status, node conditions and
//!   taints.
//!
//! Wiring, per synchronisation (every `--eviction-monitoring-interval`, and whenever a
//! `nodelet_cgroups::notify::MemoryNotifier` fires): fill [`NodeStats`], build
//! [`Observations::from_stats`], list the active pods as [`PodUsage`], call
//! [`EvictionManager::synchronize`]; publish `node_conditions`; if `reclaim` is non-empty
//! run container then image GC, observe again and call
//! [`EvictionManager::after_node_reclaim`]; kill the [`Eviction`]'s pod with its grace
//! period and give it [`messages::apply_evicted_status`].

pub mod config;
pub mod manager;
pub mod messages;
pub mod ranking;
pub mod signals;
pub mod thresholds;

pub use config::{EvictionArgs, EvictionConfig};
pub use manager::{Eviction, EvictionManager};
pub use ranking::{PodUsage, Qos};
pub use signals::{NodeStats, Observations};
