//! The proxier's loop (upstream's `BoundedFrequencyRunner` around `syncProxyRules`):
//! events from the watchers go into the change trackers; a sync runs at most once per
//! `minSyncPeriod` (a burst of changes becomes one transaction). The consistency check
//! reads one table per turn, round-robin over the main table and the shards, a turn
//! every `syncPeriod / tables` so each table is checked once per `syncPeriod`
//! (`CheckSchedule`). The read runs beside the loop, never in front of a sync; its
//! findings are compared and repaired once it ends, and dropped when a sync touched that
//! table meanwhile (`proxier::check`). A read is abandoned after one `syncPeriod`, and
//! turns come less often when reads are slow (at most a quarter of the time goes to
//! them). The loop ends when the event channel closes (its owner's shutdown).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::nft::exec::Nft;
use crate::nft::listing::Observed;
use crate::proxier::{CheckPlan, observe_planned};
use crate::{Proxier, SyncError, SyncReport};

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

/// When the per-table consistency check runs: a turn every `sync_period / tables`, or
/// four times the last read when that is longer (at most a quarter of the time reading);
/// a read longer than `sync_period` is abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckSchedule {
    turn: Duration,
    bound: Duration,
}

impl CheckSchedule {
    /// The schedule for `tables` tables checked once each per `periods.sync_period`.
    pub fn new(periods: Periods, tables: usize) -> Self {
        let tables = u32::try_from(tables.max(1)).unwrap_or(u32::MAX);
        Self {
            turn: (periods.sync_period / tables).max(Duration::from_millis(1)),
            bound: periods.sync_period,
        }
    }

    /// The wait after a read that took `took` before the next turn starts.
    pub fn next_after(&self, took: Duration) -> Duration {
        self.turn.max(took.saturating_mul(4))
    }

    /// The wait before the first turn.
    pub fn first(&self) -> Duration {
        self.turn
    }

    /// How long a read may take before it is abandoned.
    pub fn bound(&self) -> Duration {
        self.bound
    }
}

/// What a table read yields: the table, or an error; `Elapsed` when abandoned.
type ReadResult = Result<Result<Observed, SyncError>, tokio::time::error::Elapsed>;

/// A read of one table in flight.
struct Reading {
    plan: CheckPlan,
    started: Instant,
    read: Pin<Box<dyn Future<Output = ReadResult> + Send>>,
}

/// The next output of the read in flight; never, when there is none.
async fn read_done(reading: &mut Option<Reading>) -> ReadResult {
    match reading {
        Some(r) => r.read.as_mut().await,
        None => std::future::pending().await,
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
    let schedule = CheckSchedule::new(periods, proxier.tables());
    let mut next_check = Instant::now() + schedule.first();
    let mut reading: Option<Reading> = None;
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
            () = sleep_until(next_check), if ready && reading.is_none() => {
                let plan = proxier.plan_check();
                let read = observe_planned(proxier.nft().clone(), plan.clone());
                reading = Some(Reading {
                    plan,
                    started: Instant::now(),
                    read: Box::pin(tokio::time::timeout(schedule.bound(), read)),
                });
            }
            read = read_done(&mut reading) => {
                let Some(Reading { plan, started, .. }) = reading.take() else { continue };
                let took = started.elapsed();
                match read {
                    Err(_) => tracing::warn!(table = plan.name, ?took, "consistency check read abandoned (too slow)"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, table = plan.name, "proxy consistency check failed");
                        on_sync.synced(proxier, &Err(e), took);
                    }
                    Ok(Ok(observed)) => match proxier.finish_check(&plan, &observed).await {
                        None => tracing::debug!(table = plan.name, "a sync touched the table during the check: findings dropped"),
                        Some(r) => {
                            if let Err(e) = &r {
                                tracing::warn!(error = %e, "proxy consistency check failed");
                            }
                            on_sync.synced(proxier, &r, started.elapsed());
                        }
                    },
                }
                let interval = schedule.next_after(took);
                if interval > schedule.first() {
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
    use crate::nft::exec::{NftError, RecordingNft};
    use crate::nft::netlink::{Batch, NetlinkError};
    use crate::testing::{cluster_ip, ep, slice};

    /// The fake whose table reads take `delay` (then fall back to its listing).
    #[derive(Clone)]
    struct SlowReads {
        inner: RecordingNft,
        delay: Duration,
    }

    impl Nft for SlowReads {
        async fn apply(&self, script: &str) -> Result<(), NftError> {
            self.inner.apply(script).await
        }
        async fn list_table(&self, family: &str, table: &str) -> Result<String, NftError> {
            self.inner.list_table(family, table).await
        }
        async fn list_tables(&self, family: &str) -> Result<String, NftError> {
            self.inner.list_tables(family).await
        }
        async fn apply_batch(&self, batch: &Batch) -> Result<(), NetlinkError> {
            self.inner.apply_batch(batch).await
        }
        async fn observe_tables(
            &self,
            family: IpFamily,
            tables: &[String],
        ) -> Result<Vec<Observed>, NetlinkError> {
            self.inner.observe_tables(family, tables).await
        }
        fn observe_table(
            &self,
            _: IpFamily,
            _: String,
        ) -> impl Future<Output = Result<Observed, NetlinkError>> + Send + 'static {
            let delay = self.delay;
            async move {
                tokio::time::sleep(delay).await;
                Err(NetlinkError::Unavailable)
            }
        }
    }

    fn proxier<N: Nft>(nft: N) -> Proxier<N> {
        Proxier::new(
            nft,
            RenderConfig::new(IpFamily::V4),
            NodeTopology {
                node_name: "n".into(),
                zone: None,
            },
        )
    }

    fn svc(i: u8) -> Event {
        Event::ServiceUpdated(Box::new(cluster_ip(
            "ns",
            &format!("s{i}"),
            &format!("10.96.0.{i}"),
            "p",
            80,
        )))
    }

    type Shape = Vec<(u64, Option<(bool, usize)>)>;

    /// Runs `p` over `events` (sent at their offsets, in ms) for `for_s` seconds of
    /// paused time; the syncs and checks reported, as (second, (full, repaired)).
    async fn drive<N: Nft>(
        p: &mut Proxier<N>,
        periods: Periods,
        events: Vec<(u64, Event)>,
        for_s: u64,
    ) -> Shape {
        let (tx, rx) = mpsc::channel(1000);
        let start = Instant::now();
        let feeder = tokio::spawn(async move {
            for (at, ev) in events {
                sleep_until(start + Duration::from_millis(at)).await;
                let _ = tx.send(ev).await;
            }
            sleep_until(start + Duration::from_secs(for_s)).await;
        });
        let mut syncs = Vec::new();
        run(
            p,
            rx,
            periods,
            |r: &Result<SyncReport, crate::SyncError>| {
                syncs.push((
                    (Instant::now() - start).as_secs(),
                    r.as_ref().map(|r| (r.full, r.repaired)).ok(),
                ));
            },
        )
        .await;
        feeder.await.expect("feeder");
        syncs
    }

    #[test]
    fn every_table_is_checked_once_per_sync_period() {
        let s = CheckSchedule::new(Periods::default(), 17);
        assert_eq!(s.first(), Duration::from_secs(30) / 17);
        assert_eq!(s.next_after(Duration::from_millis(100)), s.first());
        // A slow read: at most a quarter of the time goes to reading.
        assert_eq!(
            s.next_after(Duration::from_secs(3)),
            Duration::from_secs(12)
        );
        assert_eq!(s.bound(), Duration::from_secs(30));
        assert_eq!(
            CheckSchedule::new(Periods::default(), 0).first(),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_are_batched_and_tables_are_checked_in_turn() {
        let nft = RecordingNft::default();
        let mut p = proxier(nft.clone()).with_shards(2);
        let mut events: Vec<(u64, Event)> = (0..10).map(|i| (0, svc(i))).collect();
        events.push((0, Event::InitialListDone));
        // A burst of 50 endpoint changes over 0.5 s.
        for i in 0..50u8 {
            let ip = format!("10.0.0.{i}");
            let s = slice("ns", "s1", "s1-a", "p", 80, &[ep(&ip, "n")]);
            events.push((u64::from(i) * 10, Event::SliceUpdated(Box::new(s))));
        }
        // Three tables over 30 s: a turn every 10 s, each reading one table; the fake
        // lists nothing, so each read finds the base gone and resyncs.
        let shape = drive(&mut p, Periods::default(), events, 35).await;
        assert_eq!(
            shape,
            vec![
                (0, Some((true, 0))),
                (1, Some((false, 0))),
                (10, Some((true, 0))),
                (20, Some((true, 0))),
                (30, Some((true, 0)))
            ],
        );
        let listed: Vec<String> = nft
            .calls
            .lock()
            .expect("calls")
            .iter()
            .filter_map(|c| match c {
                crate::nft::exec::NftCall::List(t) if t.starts_with("ip nodelet") => {
                    Some(t.clone())
                }
                _ => None,
            })
            .collect();
        // Each full sync lists every table; the checks' reads come first, in turn.
        assert!(listed.contains(&"ip nodelet".to_string()), "{listed:?}");
        assert_eq!(nft.scripts().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_read_never_delays_a_sync_and_its_stale_findings_are_dropped() {
        let nft = SlowReads {
            inner: RecordingNft::default(),
            delay: Duration::from_secs(5),
        };
        // 17 tables over 34 s: a turn every 2 s.
        let periods = Periods {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(34),
        };
        let mut p = proxier(nft.clone());
        let events = vec![
            (0, svc(1)),
            (0, Event::InitialListDone),
            // During the first read (of the main table, 2 s to 7 s): a new service adds
            // its ClusterIP to the main table's `cluster-ips`.
            (3000, svc(2)),
        ];
        let shape = drive(&mut p, periods, events, 40).await;
        // The sync at 3 s is not held behind the read; the read ending at 7 s saw a
        // table that changed meanwhile, so nothing is reported or repaired from it; the
        // next turn waits 4 × 5 s and reads shard 0 (27 s to 32 s), whose findings stand
        // (the fake lists nothing: the base is gone, so a full resync).
        assert_eq!(
            shape,
            vec![
                (0, Some((true, 0))),
                (3, Some((false, 0))),
                (32, Some((true, 0)))
            ],
        );
    }
}
