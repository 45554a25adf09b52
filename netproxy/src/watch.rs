//! Services and EndpointSlices from the apiserver into the proxier's event channel, with
//! kube-runtime's watcher (list, then watch; a relist after `410 Gone` or a reconnect).
//!
//! As upstream's informers, both watches skip objects labelled
//! `service.kubernetes.io/service-proxy-name` (another proxy owns them) or
//! `service.kubernetes.io/headless`. After a relist, objects that were known but are not
//! in the new list are sent as deletions, so nothing programmed outlives its object. The
//! first time both watches have listed, `Event::InitialListDone` lets the runner sync.

use std::collections::HashSet;
use std::fmt::Debug;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::runner::Event;

/// Upstream's informer label selector: objects of other proxies and headless ones are
/// not ours.
pub const LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Why a watch ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watching {kind} failed: {source}")]
    Watch {
        kind: &'static str,
        #[source]
        source: watcher::Error,
    },
    #[error("the proxier's event channel closed")]
    Closed,
}

/// Watches Services and EndpointSlices in every namespace and sends their changes to
/// `tx` until `tx` closes.
///
/// # Errors
/// The event channel closed. Watch errors are retried with kube-runtime's default
/// backoff and logged, never returned.
pub async fn watch(client: Client, tx: mpsc::Sender<Event>) -> Result<(), WatchError> {
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(2);
    let services = watch_kind::<Service>(
        Api::all(client.clone()),
        tx.clone(),
        ready_tx.clone(),
        "Service",
        |s| Event::ServiceUpdated(Box::new(s)),
        |s| Event::ServiceDeleted(Box::new(s)),
    );
    let slices = watch_kind::<EndpointSlice>(
        Api::all(client),
        tx.clone(),
        ready_tx,
        "EndpointSlice",
        |s| Event::SliceUpdated(Box::new(s)),
        |s| Event::SliceDeleted(Box::new(s)),
    );
    let initial = async {
        for _ in 0..2 {
            if ready_rx.recv().await.is_none() {
                return Err(WatchError::Closed);
            }
        }
        tx.send(Event::InitialListDone)
            .await
            .map_err(|_| WatchError::Closed)?;
        // Keep the future pending so the join below ends only with the watches.
        std::future::pending::<Result<(), WatchError>>().await
    };
    tokio::try_join!(services, slices, initial).map(|_| ())
}

async fn watch_kind<K>(
    api: Api<K>,
    tx: mpsc::Sender<Event>,
    ready: mpsc::Sender<()>,
    kind: &'static str,
    updated: fn(K) -> Event,
    deleted: fn(K) -> Event,
) -> Result<(), WatchError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().labels(LABEL_SELECTOR);
    let mut stream = watcher(api, config)
        .default_backoff()
        .map_err(|source| WatchError::Watch { kind, source })
        .boxed();
    // Objects known from earlier lists and events, and those seen in a relist in progress.
    let mut known: std::collections::HashMap<(String, String), K> =
        std::collections::HashMap::new();
    let mut relist: Option<HashSet<(String, String)>> = None;
    let mut announced = false;
    let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                // The watcher retries (with backoff) when polled again; log and go on.
                tracing::warn!(error = %e, kind, "watch error, retrying");
                continue;
            }
        };
        let out = match ev {
            watcher::Event::Init => {
                relist = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) => {
                if let Some(seen) = relist.as_mut() {
                    seen.insert(key(&o));
                }
                known.insert(key(&o), o.clone());
                vec![updated(o)]
            }
            watcher::Event::InitDone => {
                let seen = relist.take().unwrap_or_default();
                let gone: Vec<(String, String)> = known
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                let mut out = Vec::new();
                for k in gone {
                    if let Some(o) = known.remove(&k) {
                        out.push(deleted(o));
                    }
                }
                if !announced {
                    announced = true;
                    ready.send(()).await.map_err(|_| WatchError::Closed)?;
                }
                out
            }
            watcher::Event::Apply(o) => {
                known.insert(key(&o), o.clone());
                vec![updated(o)]
            }
            watcher::Event::Delete(o) => {
                known.remove(&key(&o));
                vec![deleted(o)]
            }
        };
        for e in out {
            tx.send(e).await.map_err(|_| WatchError::Closed)?;
        }
    }
    Ok(())
}

/// Runs the proxy: watches the apiserver through `client` and programs `proxier`, until
/// the watches end (they end only when the proxier's loop is gone); `observer` sees the
/// events and syncs (health and metrics: `health::observer::HealthObserver`).
///
/// # Errors
/// The watches ended.
pub async fn run_proxy<N: crate::nft::exec::Nft>(
    client: Client,
    proxier: &mut crate::Proxier<N>,
    periods: crate::runner::Periods,
    observer: impl crate::runner::Observer<N>,
) -> Result<(), WatchError> {
    let (tx, rx) = mpsc::channel(1024);
    let watches = watch(client, tx);
    let runner = crate::runner::run(proxier, rx, periods, observer);
    tokio::select! {
        r = watches => r,
        () = runner => Ok(()),
    }
}
