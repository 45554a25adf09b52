//! Giving the heap back after a burst. glibc keeps what was freed in its heaps for the
//! next allocation; after a start burst (a hundred pods at once) most of it stays free
//! for good, and the agent's resident memory stays at its peak. The heap is looked at
//! every [`PERIOD`]; once a burst is over (the heap in use stopped growing) and at
//! least [`STEP`] more is free than after the last trim (and more than [`SLACK`] in
//! all), `malloc_trim` returns the free pages of every arena to the kernel (it walks
//! the free lists: milliseconds at most, off the async workers).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::server::debug::Heap;

/// How often the heap is looked at (`mallinfo2`: a walk of the free lists).
const PERIOD: Duration = Duration::from_secs(2);
/// Free heap below this is left for the next allocations. Small: [`STEP`] already
/// keeps the loop from trimming again and again for nothing.
const SLACK: u64 = 1 << 20;
/// Freed since the last trim: what makes another trim worth it.
const STEP: u64 = 1 << 20;
/// Growth of the heap in use between two looks that means a burst is still on.
const GROWING: u64 = 256 << 10;

/// Whether to trim now: the heap in use stopped growing since `prev`, more than
/// [`SLACK`] is free, and [`STEP`] more than `free_after_trim` (what was free, and so
/// given back, at the last trim).
fn worth_trimming(prev: &Heap, now: &Heap, free_after_trim: u64) -> bool {
    now.in_use <= prev.in_use.saturating_add(GROWING)
        && now.free > SLACK
        && now.free >= free_after_trim.saturating_add(STEP)
}

/// Trims the heap once each burst of allocations is over (see the module doc),
/// until `cancel`.
pub async fn trim_loop(cancel: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev = crate::server::debug::heap();
    let mut free_after_trim = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = crate::server::debug::heap();
        if worth_trimming(&prev, &now, free_after_trim) {
            let _ = tokio::task::spawn_blocking(trim).await;
            free_after_trim = now.free;
        } else {
            // Free heap taken again by new allocations lowers the mark: what is freed
            // later counts from there.
            free_after_trim = free_after_trim.min(now.free);
        }
        prev = now;
    }
}

/// Caps glibc's allocator at one arena, unless the operator set `MALLOC_ARENA_MAX`.
/// By default glibc gives threads up to 8 arenas per core; the free memory left in each
/// after a start burst sits in pages that also hold live blocks, which `malloc_trim`
/// cannot return. Measured with `dist` binaries and 110 pods (`scripts/bench-mem.py`,
/// three runs, with and without the cap): RSS when the pods are ready 31.2–33.8 →
/// 29.0–31.2 MiB and the peak 35.3–36.2 → 33.1–35.4 MiB; 12 s later both settle at
/// 28.6–29.5 MiB. Pod start p50 moved by −20 %, 0 and +15 % in the three runs (the
/// spread between runs); thread caches keep small allocations off the arena lock.
pub fn one_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two plain integers; called first thing in `main`,
        // before any thread is started.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Returns the heap's free pages to the kernel (the one `malloc_trim` call, shared with
/// the proxy's full syncs).
pub use nodelet_netproxy::heap::trim;

#[cfg(test)]
mod tests {
    use super::*;

    fn heap(in_use_mib: u64, free_mib: u64) -> Heap {
        Heap {
            in_use: in_use_mib << 20,
            free: free_mib << 20,
            releasable: 0,
            mapped: 0,
        }
    }

    #[test]
    fn trims_once_a_burst_is_over() {
        // Still growing: not yet.
        assert!(!worth_trimming(&heap(10, 8), &heap(14, 9), 0));
        // Stopped growing with plenty free: now.
        assert!(worth_trimming(&heap(14, 9), &heap(14, 9), 0));
        // Shrinking (pods gone): now.
        assert!(worth_trimming(&heap(14, 9), &heap(6, 17), 9 << 20));
        // Nothing new freed since the last trim: no.
        assert!(!worth_trimming(&heap(14, 9), &heap(14, 9), 9 << 20));
        // Little free in all: no.
        assert!(!worth_trimming(&heap(4, 0), &heap(4, 0), 0));
    }
}
