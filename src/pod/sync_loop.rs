//! When the pod manager's loop last started an iteration, as upstream's
//! `syncLoopMonitor`: the loop records the time on every event and on a one-second
//! tick, so a loop stuck in a handler stops recording. The kubelet API's
//! `/healthz/syncloop` fails once the last entry is older than
//! `max(2 × syncFrequency, 5 min)` (upstream's `syncLoopHealthCheck`; nodelet's
//! sync frequency is upstream's default minute). Process-wide: one manager per agent.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Unix milliseconds of the latest loop entry; 0 before the loop ran.
static LATEST_ENTRY_MS: AtomicI64 = AtomicI64::new(0);

/// Upstream's default `syncFrequency`.
pub const SYNC_FREQUENCY: Duration = Duration::from_secs(60);

/// How long the loop may go without an iteration before the check fails.
pub fn allowed_gap() -> Duration {
    (SYNC_FREQUENCY * 2).max(Duration::from_secs(5 * 60))
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Records an iteration of the loop now.
pub fn record_entry() {
    LATEST_ENTRY_MS.store(now_ms(), Ordering::Relaxed);
}

/// Upstream's check at `now_ms` given the latest entry (0: never entered, which
/// passes, as upstream's zero time does).
///
/// # Errors
/// `sync Loop took longer than expected` when the entry is too old.
pub fn check_at(latest_ms: i64, now_ms: i64, gap: Duration) -> Result<(), &'static str> {
    let gap = i64::try_from(gap.as_millis()).unwrap_or(i64::MAX);
    if latest_ms != 0 && now_ms > latest_ms.saturating_add(gap) {
        return Err("sync Loop took longer than expected");
    }
    Ok(())
}

/// The check now.
///
/// # Errors
/// As [`check_at`].
pub fn check() -> Result<(), &'static str> {
    check_at(
        LATEST_ENTRY_MS.load(Ordering::Relaxed),
        now_ms(),
        allowed_gap(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_fails_only_after_the_allowed_gap() {
        let gap = allowed_gap();
        assert_eq!(gap, Duration::from_secs(300));
        let t = 1_000_000_000;
        assert!(check_at(0, t, gap).is_ok(), "never entered passes");
        assert!(check_at(t, t + 299_000, gap).is_ok());
        assert!(check_at(t, t + 300_000, gap).is_ok());
        assert_eq!(
            check_at(t, t + 300_001, gap),
            Err("sync Loop took longer than expected")
        );
    }
}
