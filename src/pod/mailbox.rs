//! A pod worker's inbox: one per worker, never blocking the sender, coalescing what
//! piles up, in order.
//!
//! Upstream's pod workers keep one pending update per pod and replace it with a newer
//! one (`pod_workers.go`, `podSyncStatus.pendingUpdate`); this is the same idea. What
//! a worker needs to know is state, not a queue of messages: the newest spec, whether
//! termination was asked for (and the shortest grace period asked), containers the OOM
//! killer hit, an eviction, and whether anything changed in the runtime. So a sender
//! never waits for room and never spawns a task to wait for it, and two updates can't
//! overtake each other: the later one simply replaces the earlier.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::Notify;

/// Why a pod is being terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TerminateReason {
    /// No source lists the pod any more (a static pod's file was removed, or a pod
    /// left over from before the agent started that nobody wants).
    Removed,
    /// The source marked the pod deleted (`deletionTimestamp`).
    Deleted,
}

/// The eviction manager picked the pod: kill it within `grace` and end it `Failed`
/// with reason `Evicted` (it stays, finished, until its source drops it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evict {
    /// Upstream's eviction message.
    pub message: String,
    /// The containers' grace period.
    pub grace: Duration,
}

/// A request to terminate the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminate {
    /// Why.
    pub reason: TerminateReason,
    /// A grace period that overrides the pod's (deletion or eviction); `None` uses
    /// the pod's `terminationGracePeriodSeconds`.
    pub grace: Option<Duration>,
}

/// What has piled up for a worker since it last looked.
#[derive(Debug, Default)]
pub struct Pending {
    /// The newest version of the pod, if it changed.
    pub update: Option<Arc<Pod>>,
    /// Termination asked for (sticky: later requests only shorten the grace).
    pub terminate: Option<Terminate>,
    /// An eviction (the first one counts).
    pub evict: Option<Evict>,
    /// Containers the OOM killer hit, by ID.
    pub oom: Vec<String>,
    /// Something changed in the runtime: look again.
    pub sync: bool,
}

impl Pending {
    /// Folds `later` into this, as if both had arrived together.
    pub fn merge(&mut self, later: Pending) {
        if later.update.is_some() {
            self.update = later.update;
        }
        self.terminate = match (self.terminate.take(), later.terminate) {
            (Some(a), Some(b)) => Some(merge_terminate(a, b)),
            (a, b) => a.or(b),
        };
        if self.evict.is_none() {
            self.evict = later.evict;
        }
        self.oom.extend(later.oom);
        self.sync |= later.sync;
    }

    fn is_empty(&self) -> bool {
        self.update.is_none()
            && self.terminate.is_none()
            && self.evict.is_none()
            && self.oom.is_empty()
            && !self.sync
    }
}

#[derive(Debug, Default)]
struct Inner {
    pending: Mutex<Pending>,
    notify: Notify,
}

/// The sending side, held by the pod manager (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Mailbox {
    inner: Arc<Inner>,
}

impl Mailbox {
    /// A new, empty mailbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock can only come from the few lines below,
        // which don't panic; the data is plain state either way.
        self.inner
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn post(&self, f: impl FnOnce(&mut Pending)) {
        f(&mut self.lock());
        self.inner.notify.notify_one();
    }

    /// A new version of the pod: replaces any update not yet taken.
    pub fn update(&self, pod: impl Into<Arc<Pod>>) {
        let pod = pod.into();
        self.post(|p| p.update = Some(pod));
    }

    /// Asks for termination. A second request keeps the first reason and only ever
    /// shortens the grace period (upstream's rule).
    pub fn terminate(&self, req: Terminate) {
        self.post(|p| {
            p.terminate = Some(match p.terminate.take() {
                None => req,
                Some(old) => merge_terminate(old, req),
            });
        });
    }

    /// Evicts the pod (a later eviction before this one is taken is dropped).
    pub fn evict(&self, evict: Evict) {
        self.post(|p| {
            p.evict.get_or_insert(evict);
        });
    }

    /// The OOM killer hit container `id`.
    pub fn oom(&self, id: String) {
        self.post(|p| p.oom.push(id));
    }

    /// Something changed in the runtime.
    pub fn sync(&self) {
        self.post(|p| p.sync = true);
    }

    /// Whether a termination request is waiting (a sync in progress checks this to
    /// stop starting containers for a pod that is going away).
    pub fn termination_pending(&self) -> bool {
        self.lock().terminate.is_some()
    }

    /// Takes everything pending.
    pub fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }

    /// Waits until something is pending, then takes it.
    pub async fn recv(&self) -> Pending {
        loop {
            let notified = self.inner.notify.notified();
            let pending = self.take();
            if !pending.is_empty() {
                return pending;
            }
            notified.await;
        }
    }
}

/// Two termination requests as one: the first reason, and the shorter grace period.
pub fn merge_terminate(old: Terminate, new: Terminate) -> Terminate {
    let reason = old.reason;
    let grace = match (old.grace, new.grace) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Terminate { reason, grace }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p
    }

    #[tokio::test]
    async fn later_update_replaces_earlier_and_nothing_is_lost() {
        let mb = Mailbox::new();
        mb.update(pod("a"));
        mb.sync();
        mb.update(pod("b"));
        mb.oom("c1".into());
        let p = mb.recv().await;
        assert_eq!(
            p.update.and_then(|p| p.metadata.name.clone()),
            Some("b".into())
        );
        assert!(p.sync);
        assert_eq!(p.oom, vec!["c1".to_owned()]);
        assert!(mb.take().is_empty());
    }

    #[tokio::test]
    async fn recv_waits_for_a_post() {
        let mb = Mailbox::new();
        let sender = mb.clone();
        let t = tokio::spawn(async move { mb.recv().await });
        tokio::task::yield_now().await;
        sender.sync();
        assert!(t.await.expect("join").sync);
    }

    #[test]
    fn grace_only_shortens() {
        let mb = Mailbox::new();
        mb.terminate(Terminate {
            reason: TerminateReason::Deleted,
            grace: Some(Duration::from_secs(30)),
        });
        mb.terminate(Terminate {
            reason: TerminateReason::Removed,
            grace: Some(Duration::from_secs(60)),
        });
        assert!(mb.termination_pending());
        let t = mb.take().terminate.expect("terminate");
        assert_eq!(t.reason, TerminateReason::Deleted);
        assert_eq!(t.grace, Some(Duration::from_secs(30)));

        let t = merge_terminate(
            Terminate {
                reason: TerminateReason::Removed,
                grace: None,
            },
            Terminate {
                reason: TerminateReason::Deleted,
                grace: Some(Duration::from_secs(5)),
            },
        );
        assert_eq!(t.reason, TerminateReason::Removed);
        assert_eq!(t.grace, Some(Duration::from_secs(5)));
    }
}
