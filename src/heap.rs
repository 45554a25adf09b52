//! Giving the heap back after a burst. glibc keeps what was freed in its heaps for the
//! next allocation; after a start burst (a hundred pods at once) most of it stays free
//! for good, and the agent's resident memory stays at its peak. Every [`PERIOD`], when
//! the heap holds more than [`SLACK`] free, `malloc_trim` returns the free pages of
//! every arena to the kernel (it walks the free lists: milliseconds at most, off the
//! async workers).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the heap is looked at.
const PERIOD: Duration = Duration::from_secs(10);
/// Free heap below this is left for the next allocations.
const SLACK: u64 = 4 << 20;

/// Trims the heap every [`PERIOD`] while more than [`SLACK`] of it is free, until
/// `cancel`.
pub async fn trim_loop(cancel: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if crate::server::debug::heap().free > SLACK {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Returns the heap's free pages to the kernel; whether any were.
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes a plain size and locks each arena itself.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn trim_gives_back_a_fragmented_burst() {
        // 100 MB of small blocks, one in 200 kept: the heap cannot shrink from its
        // top, so the free pages stay resident until trimmed.
        let mut blocks: Vec<Vec<u8>> = (0..100_000).map(|i| vec![(i % 251) as u8; 1000]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(200).map(std::mem::take).collect();
        drop(blocks);
        let before = rss_kib();
        trim();
        let after = rss_kib();
        assert!(
            after + 50 * 1024 < before,
            "RSS {before} KiB before the trim, {after} KiB after"
        );
        drop(kept);
    }
}
