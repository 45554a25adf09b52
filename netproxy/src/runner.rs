//! The proxier's loop (upstream's `BoundedFrequencyRunner` around `syncProxyRules`):
//! events from the watchers go into the change trackers; a sync runs at most once per
//! `minSyncPeriod` (a burst of changes becomes one transaction), and every `syncPeriod`
//! the consistency check lists our table and repairs drift (less often when a check is
//! slow: at most a quarter of the time goes to checks). The loop ends when the event
//! channel closes (its owner's shutdown).

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::nft::exec::Nft;
use crate::{Proxier, SyncReport};

/// A change the watchers saw.
#[derive(Debug, Clone)]
pub enum Event {
    ServiceUpdated(Box<Service>),
    ServiceDeleted(Box<Service>),
    SliceUpdated(Box<EndpointSlice>),
    SliceDeleted(Box<EndpointSlice>),
    /// The watchers listed everything once: syncing before this would program a partial
    /// view (upstream waits for `HasSynced` likewise).
    InitialListDone,
}

/// `KubeProxyConfiguration`'s `minSyncPeriod` and `syncPeriod`.
#[derive(Debug, Clone, Copy)]
pub struct Periods {
    pub min_sync_period: Duration,
    pub sync_period: Duration,
}

impl Default for Periods {
    /// Upstream's defaults: 1 s and 30 s.
    fn default() -> Self {
        Self {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
        }
    }
}

/// Sees what the loop does (health, metrics, health-check node ports). A closure over
/// the sync result is an observer too.
pub trait Observer<N: Nft> {
    /// An event arrived (before it reaches the proxier).
    fn event(&mut self, _event: &Event) {}
    /// The proxier recorded the event `event` announced (its pending changes are current).
    fn applied(&mut self, _proxier: &Proxier<N>) {}
    /// A sync or consistency check ended after `elapsed`.
    fn synced(
        &mut self,
        proxier: &Proxier<N>,
        result: &Result<SyncReport, crate::SyncError>,
        elapsed: Duration,
    );
}

impl<N: Nft, F: FnMut(&Result<SyncReport, crate::SyncError>)> Observer<N> for F {
    fn synced(
        &mut self,
        _proxier: &Proxier<N>,
        result: &Result<SyncReport, crate::SyncError>,
        _elapsed: Duration,
    ) {
        self(result);
    }
}

/// Runs the proxier until `events` closes; `on_sync` sees every event and every sync's
/// outcome (metrics, healthz).
pub async fn run<N: Nft>(
    proxier: &mut Proxier<N>,
    mut events: mpsc::Receiver<Event>,
    periods: Periods,
    mut on_sync: impl Observer<N>,
) {
    let mut ready = false;
    let mut last_sync: Option<Instant> = None;
    let mut next_check = Instant::now() + periods.sync_period;
    loop {
        let due = (ready && proxier.has_pending()).then(|| match last_sync {
            Some(t) => t + periods.min_sync_period,
            None => Instant::now(),
        });
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { return };
                on_sync.event(&ev);
                match ev {
                    Event::ServiceUpdated(s) => proxier.service_updated(&s),
                    Event::ServiceDeleted(s) => proxier.service_deleted(&s),
                    Event::SliceUpdated(s) => proxier.slice_updated(&s),
                    Event::SliceDeleted(s) => proxier.slice_deleted(&s),
                    Event::InitialListDone => ready = true,
                }
                on_sync.applied(proxier);
            }
            () = sleep_until(due.unwrap_or(next_check)), if due.is_some() => {
                let started = Instant::now();
                let r = proxier.sync().await;
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "proxy sync failed; the next one is a full sync");
                }
                on_sync.synced(proxier, &r, started.elapsed());
                last_sync = Some(Instant::now());
            }
            () = sleep_until(next_check), if ready => {
                let started = Instant::now();
                let r = proxier.check().await;
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "proxy consistency check failed");
                }
                on_sync.synced(proxier, &r, started.elapsed());
                // Listing a table of 10k services takes nft tens of seconds: never let
                // the check take more than a quarter of the proxy's time.
                let interval = periods.sync_period.max(started.elapsed() * 4);
                if interval > periods.sync_period {
                    tracing::info!(?interval, "consistency check is slow; checking less often");
                }
                next_check = Instant::now() + interval;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpFamily, NodeTopology};
    use crate::nft::RenderConfig;
    use crate::nft::exec::RecordingNft;
    use crate::testing::{cluster_ip, ep, slice};

    #[tokio::test(start_paused = true)]
    async fn bursts_are_batched_and_checks_are_periodic() {
        let nft = RecordingNft::default();
        let mut p = Proxier::new(
            nft.clone(),
            RenderConfig::new(IpFamily::V4),
            NodeTopology {
                node_name: "n".into(),
                zone: None,
            },
        );
        let (tx, rx) = mpsc::channel(1000);
        let start = Instant::now();
        let feeder = tokio::spawn(async move {
            for i in 0..10u8 {
                let name = format!("s{i}");
                let _ = tx
                    .send(Event::ServiceUpdated(Box::new(cluster_ip(
                        "ns",
                        &name,
                        &format!("10.96.0.{i}"),
                        "p",
                        80,
                    ))))
                    .await;
            }
            let _ = tx.send(Event::InitialListDone).await;
            // A burst of 50 endpoint changes over 0.5 s.
            for i in 0..50u8 {
                let ip = format!("10.0.0.{i}");
                let s = slice("ns", "s1", "s1-a", "p", 80, &[ep(&ip, "n")]);
                let _ = tx.send(Event::SliceUpdated(Box::new(s))).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_secs(65)).await;
        });
        let mut syncs = Vec::new();
        run(
            &mut p,
            rx,
            Periods::default(),
            |r: &Result<SyncReport, crate::SyncError>| {
                syncs.push((
                    Instant::now() - start,
                    r.as_ref().map(|r| (r.full, r.repaired)).ok(),
                ));
            },
        )
        .await;
        feeder.await.expect("feeder");
        // The full sync at once, the burst in one sync 1 s later, checks at 30 s and 60 s
        // (the fake lists an empty table, so each check finds the base gone and resyncs).
        let shape: Vec<_> = syncs.iter().map(|(t, r)| (t.as_secs(), *r)).collect();
        assert_eq!(
            shape,
            vec![
                (0, Some((true, 0))),
                (1, Some((false, 0))),
                (30, Some((true, 0))),
                (60, Some((true, 0)))
            ],
            "{syncs:?}"
        );
        assert_eq!(nft.scripts().len(), 4);
    }
}
