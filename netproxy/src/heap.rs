//! Giving the heap back after a burst. glibc keeps what was freed in its heaps for the
//! next allocation; after a burst (the proxy's full sync builds every table's
//! transaction, hundreds of MiB at 30k services, and frees it) most of it stays free for
//! good, and resident memory stays at the peak. `malloc_trim` returns the free pages of
//! every arena to the kernel (it walks the free lists: milliseconds).
//!
//! Shared with the agent (`src/heap.rs`, its periodic trim loop), which depends on this
//! crate: one place for the one `unsafe` call.

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
        // The peak is read before the drop: other tests of this crate trim too (every
        // full sync does), so the RSS between the drop and our trim may already be down.
        let mut blocks: Vec<Vec<u8>> = (0..100_000).map(|i| vec![(i % 251) as u8; 1000]).collect();
        let peak = rss_kib();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(200).map(std::mem::take).collect();
        drop(blocks);
        trim();
        let after = rss_kib();
        assert!(
            after + 50 * 1024 < peak,
            "RSS {peak} KiB with the burst, {after} KiB after it was freed and trimmed"
        );
        drop(kept);
    }
}
