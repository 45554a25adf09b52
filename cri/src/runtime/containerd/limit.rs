//! Bounds on the task calls that make a shim run `runc`: kill and delete.
//!
//! A pod's containers share one runc shim (the `io.containerd.runc.v2.group`
//! annotation names the sandbox), and the shim runs `runc kill` or `runc delete` for
//! each signal or delete. Terminating a pod of 1,000 containers sent 1,000 kills to the
//! one shim at once: containerd answered `kill task: context deadline exceeded`, its
//! `ListTasks` timed out, after five minutes 813 processes were left, and then the
//! shim and containerd died (issue 17). Upstream kills a pod's containers in
//! parallel, each with its own grace period; so does nodelet, but only
//! [`PER_SHIM`] of these calls are in flight to one shim, and [`PER_NODE`] in all.
//! The grace-period waits (`Wait`, which only blocks in the shim) hold no permit and
//! stay parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many kill and delete calls go to one shim at once.
pub(super) const PER_SHIM: usize = 16;
/// How many go to all shims at once.
pub(super) const PER_NODE: usize = 48;

/// The semaphores: one for the node, one for each shim with calls in flight or
/// waiting (a shim's goes with its last permit).
#[derive(Debug)]
pub(super) struct ShimLimiter {
    per_shim: usize,
    node: Arc<Semaphore>,
    shims: Mutex<HashMap<String, Weak<Semaphore>>>,
}

/// Leave to make one call to a shim; the call's turn ends when it is dropped.
#[derive(Debug)]
pub(super) struct Permit {
    _shim: Option<OwnedSemaphorePermit>,
    _node: Option<OwnedSemaphorePermit>,
}

impl ShimLimiter {
    pub(super) fn new(per_shim: usize, per_node: usize) -> Self {
        Self {
            per_shim: per_shim.max(1),
            node: Arc::new(Semaphore::new(per_node.max(1))),
            shims: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a turn to call shim `group` (a sandbox ID): the shim's permit first,
    /// so a call waiting for its busy shim holds none of the node's.
    pub(super) async fn acquire(&self, group: &str) -> Permit {
        let shim = {
            let mut shims = self.shims.lock().unwrap_or_else(|p| p.into_inner());
            shims.retain(|_, s| s.strong_count() > 0);
            if let Some(s) = shims.get(group).and_then(Weak::upgrade) {
                s
            } else {
                let s = Arc::new(Semaphore::new(self.per_shim));
                shims.insert(group.to_owned(), Arc::downgrade(&s));
                s
            }
        };
        // The semaphores are never closed: acquiring cannot fail.
        let shim = shim.acquire_owned().await.ok();
        let node = Arc::clone(&self.node).acquire_owned().await.ok();
        Permit {
            _shim: shim,
            _node: node,
        }
    }

    /// How many shims have calls in flight or waiting.
    #[cfg(test)]
    fn shims(&self) -> usize {
        let shims = self.shims.lock().unwrap_or_else(|p| p.into_inner());
        shims.values().filter(|s| s.strong_count() > 0).count()
    }
}

impl Default for ShimLimiter {
    fn default() -> Self {
        Self::new(PER_SHIM, PER_NODE)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Runs `calls` calls per group in `groups` at once, each holding its permit for a
    /// while; returns the most in flight to one shim and in all.
    async fn run(limiter: Arc<ShimLimiter>, groups: &[&str], calls: usize) -> (usize, usize) {
        let total = Arc::new(AtomicUsize::new(0));
        let peak_total = Arc::new(AtomicUsize::new(0));
        let per: Arc<Vec<(AtomicUsize, AtomicUsize)>> = Arc::new(
            groups
                .iter()
                .map(|_| (AtomicUsize::new(0), AtomicUsize::new(0)))
                .collect(),
        );
        let mut handles = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            for _ in 0..calls {
                let (limiter, total, peak_total, per) = (
                    Arc::clone(&limiter),
                    Arc::clone(&total),
                    Arc::clone(&peak_total),
                    Arc::clone(&per),
                );
                let group = (*group).to_owned();
                handles.push(tokio::spawn(async move {
                    let _permit = limiter.acquire(&group).await;
                    let now = per[g].0.fetch_add(1, Ordering::SeqCst) + 1;
                    per[g].1.fetch_max(now, Ordering::SeqCst);
                    let all = total.fetch_add(1, Ordering::SeqCst) + 1;
                    peak_total.fetch_max(all, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    per[g].0.fetch_sub(1, Ordering::SeqCst);
                    total.fetch_sub(1, Ordering::SeqCst);
                }));
            }
        }
        for h in handles {
            h.await.expect("call task");
        }
        let peak_shim = per.iter().map(|p| p.1.load(Ordering::SeqCst)).max();
        (peak_shim.unwrap_or(0), peak_total.load(Ordering::SeqCst))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_thousand_calls_to_one_shim_go_at_most_per_shim_at_once() {
        let limiter = Arc::new(ShimLimiter::default());
        let (shim, total) = run(Arc::clone(&limiter), &["sandbox"], 1000).await;
        assert_eq!(shim, PER_SHIM, "the shim's bound is reached, never passed");
        assert_eq!(total, PER_SHIM);
        assert_eq!(limiter.shims(), 0, "an idle shim's semaphore goes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn calls_to_many_shims_go_at_most_per_node_at_once() {
        let limiter = Arc::new(ShimLimiter::new(4, 10));
        let groups = ["a", "b", "c", "d", "e"];
        let (shim, total) = run(limiter, &groups, 100).await;
        assert!(shim <= 4, "at most 4 to one shim, saw {shim}");
        assert_eq!(total, 10, "the node's bound is reached, never passed");
    }

    #[tokio::test]
    async fn a_busy_shim_does_not_hold_up_another() {
        let limiter = ShimLimiter::new(1, 4);
        let _busy = limiter.acquire("a").await;
        let other = tokio::time::timeout(Duration::from_secs(5), limiter.acquire("b")).await;
        assert!(other.is_ok(), "shim b's call went while shim a was busy");
        let same = tokio::time::timeout(Duration::from_millis(50), limiter.acquire("a")).await;
        assert!(same.is_err(), "a second call to shim a waited");
    }

    /// With the node's own bounds: calls queued behind one saturated shim hold none
    /// of the node's slots, the other shims get all that are left, and then no more.
    #[tokio::test]
    async fn calls_queued_for_a_busy_shim_leave_the_node_slots_to_others() {
        let limiter = Arc::new(ShimLimiter::default());
        let mut held = Vec::new();
        for _ in 0..PER_SHIM {
            held.push(limiter.acquire("busy").await);
        }
        let queued: Vec<_> = (0..100)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    let _turn = limiter.acquire("busy").await;
                })
            })
            .collect();
        tokio::task::yield_now().await;
        for i in 0..PER_NODE - PER_SHIM {
            let other = format!("other{}", i % 4);
            let turn = tokio::time::timeout(Duration::from_secs(5), limiter.acquire(&other))
                .await
                .unwrap_or_else(|_| panic!("node slot {} of {PER_NODE} was free", i + PER_SHIM));
            held.push(turn);
        }
        let over =
            tokio::time::timeout(Duration::from_millis(50), limiter.acquire("another")).await;
        assert!(over.is_err(), "a call past {PER_NODE} in all waited");
        drop(held);
        for q in queued {
            q.await.expect("queued call");
        }
        assert_eq!(limiter.shims(), 0);
    }
}
