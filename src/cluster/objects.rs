//! The apiserver as the volume manager's and image manager's [`ObjectSource`]:
//! ConfigMaps and Secrets read with the node's credentials (the Node authorizer lets
//! a node read what the pods bound to it reference), and service account tokens from
//! the TokenRequest API, bound to the pod, as upstream's token manager asks for them.
//!
//! ConfigMaps and Secrets come from a watch per object (upstream's `Watch`
//! change-detection strategy, [`super::object_cache`]), and their changes are
//! announced so the pods using them are synced at once. Services come from a
//! watch cache of every namespace (upstream's service lister), for the service
//! environment variables: [`ApiObjects::watch_services`] keeps it. RuntimeClasses
//! come from a cluster-wide watch cache too (upstream's runtimeclass manager reads an
//! informer), [`ApiObjects::watch_runtime_classes`]: a pod naming a known class costs
//! no request, and keeps starting while the apiserver is away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec as ApiTokenRequestSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::object_cache::ObjectCache;
use super::{ClusterError, call};
use crate::volume::{
    IssuedToken, ObjectError, ObjectKey, ObjectSource, Services, TokenRequestSpec,
};

/// Objects from the apiserver.
#[derive(Clone)]
pub struct ApiObjects {
    client: kube::Client,
    services: Store<Service>,
    services_writer: Arc<std::sync::Mutex<Option<reflector::store::Writer<Service>>>>,
    services_synced: Arc<AtomicBool>,
    runtime_classes: Store<RuntimeClass>,
    runtime_classes_writer: Arc<std::sync::Mutex<Option<reflector::store::Writer<RuntimeClass>>>>,
    config_maps: Arc<ObjectCache<ConfigMap>>,
    secrets: Arc<ObjectCache<Secret>>,
    changes: broadcast::Sender<ObjectKey>,
}

impl std::fmt::Debug for ApiObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiObjects").finish_non_exhaustive()
    }
}

impl ApiObjects {
    /// Objects read through `client`.
    pub fn new(client: kube::Client) -> Self {
        let (services, writer) = reflector::store();
        let (runtime_classes, runtime_classes_writer) = reflector::store();
        let (changes, _) = broadcast::channel(256);
        Self {
            config_maps: Arc::new(ObjectCache::new(
                client.clone(),
                "configmap",
                changes.clone(),
            )),
            secrets: Arc::new(ObjectCache::new(client.clone(), "secret", changes.clone())),
            changes,
            client,
            services,
            services_writer: Arc::new(std::sync::Mutex::new(Some(writer))),
            services_synced: Arc::new(AtomicBool::new(false)),
            runtime_classes,
            runtime_classes_writer: Arc::new(std::sync::Mutex::new(Some(runtime_classes_writer))),
        }
    }

    /// Keeps the Service cache until `cancel`: a watch on every namespace, resumed
    /// from its resourceVersion and re-listed on `410 Gone`. Run it once.
    pub async fn watch_services(self, cancel: CancellationToken) {
        let Some(writer) = self
            .services_writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let synced = Arc::clone(&self.services_synced);
        let changes = self.changes.clone();
        let on_listed = move || {
            if !synced.swap(true, Ordering::SeqCst) {
                tracing::debug!("services listed");
                // Pods waiting for their service variables go on now (upstream's
                // kubelet retries once the informer synced).
                let _ = changes.send(ObjectKey::services_listed());
            }
        };
        reflect(
            Api::all(self.client.clone()),
            writer,
            "service",
            on_listed,
            cancel,
        )
        .await;
    }

    /// Keeps the RuntimeClass cache until `cancel`, as [`Self::watch_services`] keeps
    /// the Services'. Run it once.
    pub async fn watch_runtime_classes(self, cancel: CancellationToken) {
        let Some(writer) = self
            .runtime_classes_writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let on_listed = || tracing::debug!("runtime classes listed");
        reflect(
            Api::all(self.client.clone()),
            writer,
            "runtimeclass",
            on_listed,
            cancel,
        )
        .await;
    }
}

/// Feeds `writer` from a watch of `api` until `cancel`: resumed from its
/// resourceVersion, re-listed on `410 Gone`, retried with backoff; `on_listed` runs
/// after every complete list.
async fn reflect<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    kind: &'static str,
    on_listed: impl Fn(),
    cancel: CancellationToken,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let config = watcher::Config::default().timeout(290);
    let stream = watcher::watcher(api, config)
        .default_backoff()
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let follow = async move {
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => on_listed(),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, kind, "watch failed; retrying"),
            }
        }
    };
    tokio::select! {
        () = follow => {}
        () = cancel.cancelled() => {}
    }
}

fn request_error(kind: &'static str, namespace: &str, name: &str, e: &ClusterError) -> ObjectError {
    if e.code().is_none() {
        return ObjectError::Unavailable(e.to_string());
    }
    ObjectError::Request {
        kind,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

async fn get<K>(
    client: kube::Client,
    kind: &'static str,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, ObjectError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client, namespace);
    call(
        "get",
        format!("{kind}/{namespace}/{name}"),
        api.get_opt(name),
    )
    .await
    .map_err(|e| request_error(kind, namespace, name, &e))
}

impl ObjectSource for ApiObjects {
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<Option<ConfigMap>, ObjectError>> {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        Box::pin(async move {
            match self.config_maps.get(&namespace, &name) {
                Some(cached) => Ok(cached),
                None => get(self.client.clone(), "configmap", &namespace, &name).await,
            }
        })
    }

    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<Option<Secret>, ObjectError>> {
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        Box::pin(async move {
            match self.secrets.get(&namespace, &name) {
                Some(cached) => Ok(cached),
                None => get(self.client.clone(), "secret", &namespace, &name).await,
            }
        })
    }

    fn runtime_handler(&self, name: &str) -> BoxFuture<'_, Result<Option<String>, ObjectError>> {
        let name = name.to_owned();
        Box::pin(async move {
            // The watch cache first, as upstream's informer-backed lister. A class
            // it lacks (created a moment ago, or the watch not up yet) is asked for
            // directly, so a pod is never failed on a cache that is behind.
            if let Some(class) = self.runtime_classes.get(&reflector::ObjectRef::new(&name)) {
                return Ok(Some(class.handler.clone()));
            }
            let api: Api<RuntimeClass> = Api::all(self.client.clone());
            call("get", format!("runtimeclass/{name}"), api.get_opt(&name))
                .await
                .map(|rc| rc.map(|rc| rc.handler))
                .map_err(|e| request_error("runtimeclass", "", &name, &e))
        })
    }

    fn service_account_token(
        &self,
        req: TokenRequestSpec,
    ) -> BoxFuture<'_, Result<IssuedToken, ObjectError>> {
        Box::pin(async move {
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &req.namespace);
            let body = TokenRequest {
                spec: ApiTokenRequestSpec {
                    audiences: req.audiences.clone(),
                    expiration_seconds: Some(req.expiration_seconds),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".to_owned()),
                        kind: Some("Pod".to_owned()),
                        name: Some(req.pod_name.clone()),
                        uid: Some(req.pod_uid.clone()),
                    }),
                },
                ..TokenRequest::default()
            };
            let object = format!("ServiceAccount/{}/{}", req.namespace, req.service_account);
            let issued = call(
                "create token",
                object,
                api.create_token_request(&req.service_account, &PostParams::default(), &body),
            )
            .await
            .map_err(|e| {
                request_error("serviceaccount", &req.namespace, &req.service_account, &e)
            })?;
            let status = issued.status.ok_or_else(|| ObjectError::Request {
                kind: "serviceaccount",
                namespace: req.namespace.clone(),
                name: req.service_account.clone(),
                reason: "the TokenRequest came back without a token".to_owned(),
            })?;
            let expiration = SystemTime::UNIX_EPOCH
                + Duration::from_secs(
                    u64::try_from(status.expiration_timestamp.0.as_second()).unwrap_or(0),
                );
            Ok(IssuedToken {
                token: status.token,
                expiration,
            })
        })
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<ObjectKey>> {
        Some(self.changes.subscribe())
    }

    fn services(&self) -> Services {
        Services {
            synced: self.services_synced.load(Ordering::SeqCst),
            items: self.services.state(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The Service watch against a mock apiserver (`tower-test` behind
    //! `kube::Client`): its first complete list is announced, once.

    #![allow(clippy::unwrap_used)]

    use http::{Request, Response};
    use kube::client::Body;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_service_list_is_announced_once() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let objects = ApiObjects::new(kube::Client::new(svc, "default"));
        let mut changes = objects.subscribe().unwrap();
        assert!(!objects.services().synced);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(objects.clone().watch_services(cancel.clone()));
        let list = |rv: &str| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "ServiceList",
                "metadata": {"resourceVersion": rv},
                "items": [{"metadata": {"name": "kubernetes", "namespace": "default", "resourceVersion": rv},
                           "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 443}]}}]
            })
            .to_string()
        };
        let (req, send) = handle.next_request().await.unwrap();
        assert!(
            req.uri().path().ends_with("/api/v1/services"),
            "{}",
            req.uri()
        );
        send.send_response(Response::new(Body::from(list("1").into_bytes())));
        assert_eq!(changes.recv().await.unwrap(), ObjectKey::services_listed());
        assert!(objects.services().synced);
        assert_eq!(objects.services().items.len(), 1);
        // A re-list (the watch expired) is not announced again.
        let (req, send) = handle.next_request().await.unwrap();
        assert!(req.uri().query().unwrap_or_default().contains("watch=true"));
        let gone = serde_json::json!({"type": "ERROR", "object": {"kind": "Status",
            "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
            "message": "too old resource version"}});
        send.send_response(Response::new(Body::from(format!("{gone}\n").into_bytes())));
        let (req, send) = handle.next_request().await.unwrap();
        assert!(
            !req.uri().query().unwrap_or_default().contains("watch=true"),
            "{}",
            req.uri()
        );
        send.send_response(Response::new(Body::from(list("9").into_bytes())));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(changes.try_recv().is_err());
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_listed_runtime_class_needs_no_request_and_a_new_one_is_asked_for() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let objects = ApiObjects::new(kube::Client::new(svc, "default"));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(objects.clone().watch_runtime_classes(cancel.clone()));
        let (req, send) = handle.next_request().await.unwrap();
        assert!(
            req.uri()
                .path()
                .ends_with("/apis/node.k8s.io/v1/runtimeclasses"),
            "{}",
            req.uri()
        );
        let list = serde_json::json!({
            "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClassList",
            "metadata": {"resourceVersion": "1"},
            "items": [{"metadata": {"name": "fast", "resourceVersion": "1"}, "handler": "crun"}]
        });
        send.send_response(Response::new(Body::from(list.to_string().into_bytes())));
        // The watch that follows the list stays open (no response): the apiserver
        // could be away from here on.
        let (watch, _keep) = handle.next_request().await.unwrap();
        assert!(
            watch
                .uri()
                .query()
                .unwrap_or_default()
                .contains("watch=true")
        );
        assert_eq!(
            objects.runtime_handler("fast").await.unwrap(),
            Some("crun".to_owned())
        );
        // A class the cache lacks is read directly.
        let lookup = tokio::spawn({
            let objects = objects.clone();
            async move { objects.runtime_handler("new").await }
        });
        let (req, send) = handle.next_request().await.unwrap();
        assert!(
            req.uri()
                .path()
                .ends_with("/apis/node.k8s.io/v1/runtimeclasses/new"),
            "{}",
            req.uri()
        );
        let class = serde_json::json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
            "metadata": {"name": "new"}, "handler": "runc"});
        send.send_response(Response::new(Body::from(class.to_string().into_bytes())));
        assert_eq!(lookup.await.unwrap().unwrap(), Some("runc".to_owned()));
        cancel.cancel();
        task.await.unwrap();
    }
}
