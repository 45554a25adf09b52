//! Keeping a container's `oom_score_adj` within what the host allows.
//!
//! Lowering `oom_score_adj` below a process's own value needs `CAP_SYS_RESOURCE`; without
//! it runc's write fails and the container doesn't start. containerd's CRI plugin has
//! `restrict_oom_score_adj` for such hosts (rootless, or a root in a container like
//! this project's CI): a value below the runtime's own becomes the runtime's own. nodelet
//! does the same, deciding from its own capabilities and score, so real hosts keep
//! upstream's values (-997 for Guaranteed pods, -998 for pause).

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

/// `CAP_SYS_RESOURCE`'s bit in the capability sets.
const CAP_SYS_RESOURCE: u32 = 24;

/// The lowest `oom_score_adj` a container may be given here: -1000 with
/// `CAP_SYS_RESOURCE`, else this process's own score.
pub fn lowest_allowed() -> i32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if has_capability(&status, CAP_SYS_RESOURCE) {
        return -1000;
    }
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether the effective set in `/proc/<pid>/status` text holds capability `bit`.
fn has_capability(status: &str, bit: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|set| set & (1 << bit) != 0)
}

/// `wanted`, raised to `lowest` when the host can't go that low. The first raise is
/// logged once per process, so operators know the upstream value isn't applied.
pub fn restrict(wanted: i32, lowest: i32) -> i32 {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if wanted >= lowest {
        return wanted;
    }
    if !WARNED.swap(true, Ordering::Relaxed) {
        warn!(
            wanted,
            applied = lowest,
            "this host doesn't allow lowering oom_score_adj (no CAP_SYS_RESOURCE); \
             containers get the lowest value allowed instead, as containerd's \
             restrict_oom_score_adj does"
        );
    }
    lowest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_sys_resource_from_status() {
        let without = "Name:\tx\nCapEff:\t000001fffeffffff\n";
        let with = "CapEff:\t000001ffffffffff\n";
        assert!(!has_capability(without, CAP_SYS_RESOURCE));
        assert!(has_capability(with, CAP_SYS_RESOURCE));
        assert!(!has_capability("Name:\tx\n", CAP_SYS_RESOURCE));
    }

    #[test]
    fn raises_only_what_the_host_refuses() {
        assert_eq!(restrict(-997, 0), 0);
        assert_eq!(restrict(1000, 0), 1000);
        assert_eq!(restrict(-997, -1000), -997);
        assert_eq!(restrict(5, 5), 5);
    }
}
