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

/// Returns the heap's free pages to the kernel (the one `malloc_trim` call, shared with
/// the proxy's full syncs).
pub use nodelet_netproxy::heap::trim;
