//! Services and EndpointSlices from the apiserver into the proxier's event channel, with
//! kube-runtime's watcher (list, then watch; a relist after `410 Gone` or a reconnect).
//! On servers without `discovery.k8s.io/v1`, `v1beta1` slices or core Endpoints are
//! watched and converted (`legacy`).
//!
//! As upstream's informers, both watches skip objects labelled
//! `service.kubernetes.io/service-proxy-name` (another proxy owns them) or
//! `service.kubernetes.io/headless`. After a relist, objects that were known but are not
//! in the new list are sent as deletions, so nothing programmed outlives its object. The
//! first time both watches have listed, `Event::InitialListDone` lets the runner sync.
//!
//! What a watch keeps of each object between relists is its `Tombstone`: the name and
//! what a deletion event needs, not the object. The proxier converts each object into
//! its change trackers at once; a full copy of every Service and EndpointSlice here
//! would be a second model of the cluster (tens of MiB at 10k services).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::legacy::{self, EndpointsSource};
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

/// What a watch keeps of an object it has seen, to send its deletion when a relist no
/// longer lists it: beside the namespace and name (the key it is kept under), only what
/// the deletion's conversion reads (the service-name label, the address type), not the
/// object (an inline k8s-openapi `Service` alone is about a kilobyte before any field).
pub trait Tombstone: Sized {
    /// What is kept besides the namespace and name.
    type Stone;

    /// The part of the object kept.
    fn tombstone(&self) -> Self::Stone;

    /// The object a deletion event carries, from its key and what was kept.
    fn revive(namespace: &str, name: &str, stone: Self::Stone) -> Self;
}

/// What a slice's deletion needs besides its name: its service and address type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceStone {
    service: Option<String>,
    address_type: Option<String>,
}

/// Metadata with only a namespace, a name and, if any, the service-name label.
fn meta(namespace: &str, name: &str, service: Option<String>) -> ObjectMeta {
    ObjectMeta {
        namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
        name: Some(name.to_string()),
        labels: service.map(|s| {
            [(crate::model::SERVICE_NAME_LABEL.to_string(), s)]
                .into_iter()
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

/// The service-name label of `meta`.
fn service_label(meta: &ObjectMeta) -> Option<String> {
    meta.labels
        .as_ref()?
        .get(crate::model::SERVICE_NAME_LABEL)
        .cloned()
}

impl Tombstone for Service {
    type Stone = ();

    fn tombstone(&self) -> Self::Stone {}

    fn revive(namespace: &str, name: &str, (): ()) -> Self {
        Service {
            metadata: meta(namespace, name, None),
            ..Service::default()
        }
    }
}

impl Tombstone for Endpoints {
    type Stone = ();

    fn tombstone(&self) -> Self::Stone {}

    fn revive(namespace: &str, name: &str, (): ()) -> Self {
        Endpoints {
            metadata: meta(namespace, name, None),
            subsets: None,
        }
    }
}

impl Tombstone for EndpointSlice {
    type Stone = SliceStone;

    fn tombstone(&self) -> SliceStone {
        SliceStone {
            service: service_label(&self.metadata),
            address_type: Some(self.address_type.clone()),
        }
    }

    fn revive(namespace: &str, name: &str, stone: SliceStone) -> Self {
        EndpointSlice {
            metadata: meta(namespace, name, stone.service),
            address_type: stone.address_type.unwrap_or_default(),
            endpoints: Vec::new(),
            ports: None,
        }
    }
}

impl Tombstone for DynamicObject {
    /// A `v1beta1` EndpointSlice: its type besides the slice's stone.
    type Stone = (Option<kube::api::TypeMeta>, SliceStone);

    fn tombstone(&self) -> Self::Stone {
        let address_type = self
            .data
            .get("addressType")
            .and_then(|t| t.as_str())
            .map(str::to_string);
        (
            self.types.clone(),
            SliceStone {
                service: service_label(&self.metadata),
                address_type,
            },
        )
    }

    fn revive(namespace: &str, name: &str, (types, stone): Self::Stone) -> Self {
        let mut data = serde_json::Map::new();
        if let Some(t) = stone.address_type {
            data.insert("addressType".into(), t.into());
        }
        data.insert("endpoints".into(), serde_json::Value::Array(Vec::new()));
        DynamicObject {
            types,
            metadata: meta(namespace, name, stone.service),
            data: serde_json::Value::Object(data),
        }
    }
}

/// A watched object's change, before conversion to events.
pub enum Change<K> {
    Updated(K),
    Deleted(K),
}

/// Watches Services and endpoints (from `source`) in every namespace and sends their
/// changes to `tx` until `tx` closes.
///
/// # Errors
/// The event channel closed. Watch errors are retried with kube-runtime's default
/// backoff and logged, never returned.
pub async fn watch(
    client: Client,
    tx: mpsc::Sender<Event>,
    source: EndpointsSource,
) -> Result<(), WatchError> {
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(2);
    let services = watch_kind::<Service>(
        Api::all(client.clone()),
        tx.clone(),
        ready_tx.clone(),
        "Service",
        |c| {
            vec![match c {
                Change::Updated(s) => Event::ServiceUpdated(Box::new(s)),
                Change::Deleted(s) => Event::ServiceDeleted(Box::new(s)),
            }]
        },
    );
    let endpoints = async {
        match source {
            EndpointsSource::V1 => {
                watch_kind::<EndpointSlice>(
                    Api::all(client),
                    tx.clone(),
                    ready_tx,
                    "EndpointSlice",
                    |c| {
                        vec![match c {
                            Change::Updated(s) => Event::SliceUpdated(Box::new(s)),
                            Change::Deleted(s) => Event::SliceDeleted(Box::new(s)),
                        }]
                    },
                )
                .await
            }
            EndpointsSource::V1Beta1 => {
                let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
                let ar = ApiResource::from_gvk(&gvk);
                watch_kind::<DynamicObject>(
                    Api::all_with(client, &ar),
                    tx.clone(),
                    ready_tx,
                    "EndpointSlice (v1beta1)",
                    |c| {
                        let (obj, deleted) = match c {
                            Change::Updated(o) => (o, false),
                            Change::Deleted(o) => (o, true),
                        };
                        let slice = serde_json::to_value(&obj)
                            .ok()
                            .and_then(legacy::slice_from_v1beta1);
                        slice
                            .map(|s| {
                                if deleted {
                                    Event::SliceDeleted(Box::new(s))
                                } else {
                                    Event::SliceUpdated(Box::new(s))
                                }
                            })
                            .into_iter()
                            .collect()
                    },
                )
                .await
            }
            EndpointsSource::CoreEndpoints => {
                // The slices each Endpoints was last converted to, so slices of
                // subsets that went away are deleted.
                let mut made: HashMap<(String, String), Vec<EndpointSlice>> = HashMap::new();
                watch_kind::<Endpoints>(
                    Api::all(client),
                    tx.clone(),
                    ready_tx,
                    "Endpoints",
                    move |c| {
                        let (key, now) = match &c {
                            Change::Updated(e) | Change::Deleted(e) => {
                                let key = (e.namespace().unwrap_or_default(), e.name_any());
                                let now = match c {
                                    Change::Updated(e) => legacy::slices_from_endpoints(&e),
                                    Change::Deleted(_) => Vec::new(),
                                };
                                (key, now)
                            }
                        };
                        let before = made.remove(&key).unwrap_or_default();
                        let mut out: Vec<Event> = before
                            .into_iter()
                            .filter(|b| !now.iter().any(|n| n.metadata.name == b.metadata.name))
                            .map(|b| Event::SliceDeleted(Box::new(b)))
                            .collect();
                        out.extend(
                            now.iter()
                                .cloned()
                                .map(|s| Event::SliceUpdated(Box::new(s))),
                        );
                        if !now.is_empty() {
                            made.insert(key, now);
                        }
                        out
                    },
                )
                .await
            }
        }
    };
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
    tokio::try_join!(services, endpoints, initial).map(|_| ())
}

async fn watch_kind<K>(
    api: Api<K>,
    tx: mpsc::Sender<Event>,
    ready: mpsc::Sender<()>,
    kind: &'static str,
    mut convert: impl FnMut(Change<K>) -> Vec<Event>,
) -> Result<(), WatchError>
where
    K: Resource + Tombstone + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().labels(LABEL_SELECTOR);
    let mut stream = watcher(api, config)
        .default_backoff()
        .map_err(|source| WatchError::Watch { kind, source })
        .boxed();
    // Objects known from earlier lists and events (their tombstones), and those seen in
    // a relist in progress.
    let mut known: HashMap<(String, String), K::Stone> = HashMap::new();
    let mut relist: Option<HashSet<(String, String)>> = None;
    let mut announced = false;
    let key = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                // The watcher retries (with backoff) when polled again; log and go on.
                if matches!(&e, WatchError::Watch { source, .. } if forbidden(source)) {
                    tracing::error!(
                        error = %e,
                        kind,
                        "forbidden: the proxy's credential needs kube-proxy's permissions \
                         (ClusterRole system:node-proxier); retrying"
                    );
                } else {
                    tracing::warn!(error = %e, kind, "watch error, retrying");
                }
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
                known.insert(key(&o), o.tombstone());
                convert(Change::Updated(o))
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
                    if let Some(stone) = known.remove(&k) {
                        out.extend(convert(Change::Deleted(K::revive(&k.0, &k.1, stone))));
                    }
                }
                if !announced {
                    announced = true;
                    ready.send(()).await.map_err(|_| WatchError::Closed)?;
                }
                out
            }
            watcher::Event::Apply(o) => {
                known.insert(key(&o), o.tombstone());
                convert(Change::Updated(o))
            }
            watcher::Event::Delete(o) => {
                known.remove(&key(&o));
                convert(Change::Deleted(o))
            }
        };
        for e in out {
            tx.send(e).await.map_err(|_| WatchError::Closed)?;
        }
    }
    Ok(())
}

/// Whether a watch failed with 403 Forbidden.
fn forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
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
    run_proxies(client, vec![(proxier, observer)], periods).await
}

/// [`run_proxy`] for several proxiers (one per IP family, dual-stack): one set of
/// watches, every event to every proxier's loop.
///
/// # Errors
/// The watches ended.
pub async fn run_proxies<N: crate::nft::exec::Nft, O: crate::runner::Observer<N>>(
    client: Client,
    proxiers: Vec<(&mut crate::Proxier<N>, O)>,
    periods: crate::runner::Periods,
) -> Result<(), WatchError> {
    let source = legacy::discover(&client).await;
    if source != EndpointsSource::V1 {
        tracing::info!(
            ?source,
            "the apiserver lacks discovery.k8s.io/v1 EndpointSlices; falling back"
        );
    }
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    let watches = watch(client, tx, source);
    let mut senders = Vec::new();
    let mut runners = Vec::new();
    for (proxier, observer) in proxiers {
        let (ptx, prx) = mpsc::channel(1024);
        senders.push(ptx);
        runners.push(crate::runner::run(proxier, prx, periods, observer));
    }
    let fan_out = async move {
        while let Some(ev) = rx.recv().await {
            for s in &senders {
                if s.send(ev.clone()).await.is_err() {
                    return;
                }
            }
        }
    };
    let runners = futures::future::join_all(runners);
    tokio::select! {
        r = watches => r,
        () = fan_out => Ok(()),
        _ = runners => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EndpointsChangeTracker, EndpointsMap, IpFamily};
    use serde_json::json;

    #[test]
    fn a_slice_tombstone_deletes_what_the_slice_added() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "s-1", "resourceVersion": "7",
                "labels": {"kubernetes.io/service-name": "s", "other": "x"},
                "annotations": {"big": "y"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]
        }))
        .expect("slice");
        let stone = EndpointSlice::revive("ns", "s-1", slice.tombstone());
        assert!(stone.endpoints.is_empty() && stone.ports.is_none());
        assert_eq!(
            stone.metadata.labels.as_ref().map(|l| l.len()),
            Some(1),
            "only the service-name label is kept"
        );
        assert!(stone.metadata.annotations.is_none() && stone.metadata.resource_version.is_none());

        let mut t = EndpointsChangeTracker::new(IpFamily::V4, "n");
        let mut map = EndpointsMap::default();
        t.update(&slice);
        assert_eq!(map.apply(&mut t).updated.len(), 1);
        t.delete(&stone);
        assert_eq!(
            map.apply(&mut t).updated.len(),
            1,
            "the tombstone names the slice"
        );
        assert!(!t.has_pending());
    }

    #[test]
    fn a_v1beta1_tombstone_still_converts() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"namespace": "ns", "name": "s-1",
                "labels": {"kubernetes.io/service-name": "s"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "topology": {"kubernetes.io/hostname": "n"}}]
        }))
        .expect("object");
        let stone = DynamicObject::revive("ns", "s-1", obj.tombstone());
        let slice = serde_json::to_value(&stone)
            .ok()
            .and_then(legacy::slice_from_v1beta1)
            .expect("a v1 slice");
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.metadata.name.as_deref(), Some("s-1"));
        assert!(slice.endpoints.is_empty());
    }

    #[test]
    fn service_and_endpoints_tombstones_keep_the_name() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "s", "labels": {"a": "b"}},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}
        }))
        .expect("service");
        svc.tombstone();
        let stone = Service::revive("ns", "s", ());
        assert_eq!(
            (
                stone.metadata.namespace.as_deref(),
                stone.metadata.name.as_deref()
            ),
            (Some("ns"), Some("s"))
        );
        assert!(stone.spec.is_none() && stone.metadata.labels.is_none());
        let eps: Endpoints = serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": "s"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]
        }))
        .expect("endpoints");
        eps.tombstone();
        let stone = Endpoints::revive("ns", "s", ());
        assert_eq!(stone.metadata.name.as_deref(), Some("s"));
        assert!(stone.subsets.is_none());
    }
}
