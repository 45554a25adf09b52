//! Where the API objects behind configMap, secret and projected volumes come from: the
//! [`ObjectSource`] trait (the apiserver implements it in cluster mode) and
//! [`StaticObjects`], an in-memory source for standalone mode (ConfigMap and Secret
//! documents beside static pods) and for tests.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use nodelet_manifests::ApiObject;
use thiserror::Error;
use tokio::sync::broadcast;

/// Why an object could not be read. "Not found" is not an error: sources answer
/// `Ok(None)` and the plugin decides (an optional volume is empty, else it fails).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ObjectError {
    /// No source can answer (standalone mode asked for a token, apiserver away).
    #[error("{0}")]
    Unavailable(String),
    /// The source answered with an error.
    #[error("get {kind} {namespace}/{name}: {reason}")]
    Request {
        /// `configmap`, `secret` or `serviceaccount`.
        kind: &'static str,
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
        /// What the source said.
        reason: String,
    },
}

/// A TokenRequest for a service account, bound to the pod (upstream's
/// `authenticationv1.TokenRequestSpec` with a `BoundObjectReference` to the pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestSpec {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's `serviceAccountName` (`default` when unset).
    pub service_account: String,
    /// The token's audiences; empty means the apiserver's own.
    pub audiences: Vec<String>,
    /// The requested lifetime.
    pub expiration_seconds: i64,
    /// The pod the token is bound to.
    pub pod_name: String,
    /// Its UID.
    pub pod_uid: String,
}

/// A token the source issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The bearer token.
    pub token: String,
    /// When it stops being valid.
    pub expiration: SystemTime,
}

/// Where API objects come from: the apiserver or, standalone, documents beside static
/// pods. Object-safe: the volume manager holds an `Arc<dyn ObjectSource>`.
pub trait ObjectSource: std::fmt::Debug + Send + Sync + 'static {
    /// The ConfigMap `namespace/name`, `None` when it does not exist.
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<Option<ConfigMap>, ObjectError>>;
    /// The Secret `namespace/name`, `None` when it does not exist.
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<Option<Secret>, ObjectError>>;
    /// TokenRequest for a service account, bound to the pod.
    fn service_account_token(
        &self,
        req: TokenRequestSpec,
    ) -> BoxFuture<'_, Result<IssuedToken, ObjectError>>;
    /// The Services the node knows, for service environment variables (upstream's
    /// service lister). Standalone there are none, and that list is complete.
    fn services(&self) -> Services {
        Services {
            synced: true,
            items: Vec::new(),
        }
    }
    /// Announcements of ConfigMaps and Secrets that changed (created, updated,
    /// deleted), for sources that know; the pods using them are synced at once.
    fn subscribe(&self) -> Option<broadcast::Receiver<ObjectKey>> {
        None
    }
    /// The `handler` of the RuntimeClass `name` (`node.k8s.io/v1`), `None` when it
    /// does not exist. Standalone there are no RuntimeClass objects: the name is the
    /// handler.
    fn runtime_handler(&self, name: &str) -> BoxFuture<'_, Result<Option<String>, ObjectError>> {
        let handler = name.to_owned();
        Box::pin(async move { Ok(Some(handler)) })
    }
    /// Takes the ConfigMap and Secret documents of a manifest source (standalone);
    /// whether this source uses them.
    fn replace_documents(&self, _source: &'static str, _objects: Vec<ApiObject>) -> bool {
        false
    }
}

/// A ConfigMap or Secret that changed, or [`ObjectKey::services_listed`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// `configmap` or `secret` (`services` for [`ObjectKey::services_listed`]).
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ObjectKey {
    /// Announced once, when the Services were first listed: the pods waiting for
    /// their service variables ([`Services::synced`]) look again at once rather than
    /// at their next resync.
    #[must_use]
    pub fn services_listed() -> Self {
        Self {
            kind: "services",
            namespace: String::new(),
            name: String::new(),
        }
    }
}

/// What a source knows of the cluster's Services.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// Whether a complete list has arrived at least once (upstream's
    /// `serviceHasSynced`): before that, pods from the apiserver wait for their env.
    pub synced: bool,
    /// Every Service, all namespaces.
    pub items: Vec<Arc<Service>>,
}

type Key = (String, String);

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// An in-memory [`ObjectSource`]: what standalone mode knows (the ConfigMap and
/// Secret documents of the manifest sources, [`StaticObjects::replace_documents`]),
/// and what unit tests use. It issues no tokens; it announces what changed.
#[derive(Debug)]
pub struct StaticObjects {
    config_maps: RwLock<BTreeMap<Key, ConfigMap>>,
    secrets: RwLock<BTreeMap<Key, Secret>>,
    /// Each source's documents, as last sent.
    documents: std::sync::Mutex<BTreeMap<&'static str, Vec<ApiObject>>>,
    changes: broadcast::Sender<ObjectKey>,
}

impl Default for StaticObjects {
    fn default() -> Self {
        Self {
            config_maps: RwLock::default(),
            secrets: RwLock::default(),
            documents: std::sync::Mutex::default(),
            changes: broadcast::channel(256).0,
        }
    }
}

/// What a token request answers without an apiserver.
pub const NO_APISERVER: &str = "no apiserver: service account tokens need --kubeconfig";

impl StaticObjects {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a ConfigMap (namespace `default` when unset).
    pub fn set_config_map(&self, cm: ConfigMap) {
        let k = key(&cm.metadata);
        self.config_maps
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(k, cm);
    }

    /// Removes a ConfigMap; whether it was there.
    pub fn remove_config_map(&self, namespace: &str, name: &str) -> bool {
        self.config_maps
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
    }

    /// Adds or replaces a Secret (namespace `default` when unset).
    pub fn set_secret(&self, secret: Secret) {
        let k = key(&secret.metadata);
        self.secrets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(k, secret);
    }

    /// Removes a Secret; whether it was there.
    pub fn remove_secret(&self, namespace: &str, name: &str) -> bool {
        self.secrets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
    }

    /// Replaces the documents `source` holds (the complete set it sends) and
    /// announces every object that was added, changed or removed. Of two sources
    /// with the same object, the first in name order wins.
    pub fn replace_source(&self, source: &'static str, objects: Vec<ApiObject>) {
        let mut documents = self
            .documents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        documents.insert(source, objects);
        let mut config_maps = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        for object in documents.values().flatten() {
            match object {
                ApiObject::ConfigMap(c) => {
                    config_maps
                        .entry(key(&c.metadata))
                        .or_insert_with(|| c.clone());
                }
                ApiObject::Secret(s) => {
                    secrets.entry(key(&s.metadata)).or_insert_with(|| s.clone());
                }
            }
        }
        let changed_cms = swap_and_diff(&self.config_maps, config_maps);
        let changed_secrets = swap_and_diff(&self.secrets, secrets);
        drop(documents);
        let announce = |kind, (namespace, name): Key| {
            // No receiver is fine: nothing uses the objects yet.
            let _ = self.changes.send(ObjectKey {
                kind,
                namespace,
                name,
            });
        };
        for k in changed_cms {
            announce("configmap", k);
        }
        for k in changed_secrets {
            announce("secret", k);
        }
    }
}

/// Puts `new` in `slot`; the keys whose value differs between the two.
fn swap_and_diff<V: PartialEq>(slot: &RwLock<BTreeMap<Key, V>>, new: BTreeMap<Key, V>) -> Vec<Key> {
    let mut slot = slot
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let old = std::mem::replace(&mut *slot, new);
    let mut changed: Vec<Key> = old
        .iter()
        .filter(|(k, v)| slot.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    changed.extend(slot.keys().filter(|k| !old.contains_key(*k)).cloned());
    changed
}

impl ObjectSource for StaticObjects {
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<Option<ConfigMap>, ObjectError>> {
        let found = self
            .config_maps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<Option<Secret>, ObjectError>> {
        let found = self
            .secrets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn service_account_token(
        &self,
        _req: TokenRequestSpec,
    ) -> BoxFuture<'_, Result<IssuedToken, ObjectError>> {
        Box::pin(std::future::ready(Err(ObjectError::Unavailable(
            NO_APISERVER.to_owned(),
        ))))
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<ObjectKey>> {
        Some(self.changes.subscribe())
    }

    fn replace_documents(&self, source: &'static str, objects: Vec<ApiObject>) -> bool {
        self.replace_source(source, objects);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[tokio::test]
    async fn static_objects_set_get_remove() {
        let objects = StaticObjects::new();
        objects.set_config_map(ConfigMap {
            metadata: ObjectMeta {
                name: Some("cfg".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let got = objects.config_map("default", "cfg").await;
        assert!(matches!(got, Ok(Some(_))));
        assert_eq!(objects.config_map("other", "cfg").await, Ok(None));
        assert!(objects.remove_config_map("default", "cfg"));
        assert_eq!(objects.config_map("default", "cfg").await, Ok(None));
        assert_eq!(objects.secret("default", "s").await, Ok(None));
        let token = objects
            .service_account_token(TokenRequestSpec {
                namespace: "default".into(),
                service_account: "default".into(),
                audiences: vec![],
                expiration_seconds: 3600,
                pod_name: "p".into(),
                pod_uid: "u".into(),
            })
            .await;
        assert_eq!(token, Err(ObjectError::Unavailable(NO_APISERVER.into())));
    }

    #[tokio::test]
    async fn documents_replace_per_source_and_changes_are_announced() {
        let objects = StaticObjects::new();
        let mut rx = objects.subscribe().expect("announces");
        let cm = |name: &str, v: &str| {
            ApiObject::ConfigMap(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "namespace": "default"}, "data": {"k": v}
                }))
                .expect("cm"),
            )
        };
        let secret: ApiObject = ApiObject::Secret(
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "s", "namespace": "ns"}}),
            )
            .expect("secret"),
        );
        objects.replace_source("file", vec![cm("a", "1"), secret.clone()]);
        let mut got = [rx.try_recv().expect("a"), rx.try_recv().expect("s")];
        got.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!((got[0].kind, got[0].name.as_str()), ("configmap", "a"));
        assert_eq!((got[1].kind, got[1].namespace.as_str()), ("secret", "ns"));
        assert!(rx.try_recv().is_err());
        // The same set again: nothing to announce. An edit and a removal: both.
        objects.replace_source("file", vec![cm("a", "1"), secret]);
        assert!(rx.try_recv().is_err());
        objects.replace_source("file", vec![cm("a", "2")]);
        let mut names = vec![
            rx.try_recv().expect("one").name,
            rx.try_recv().expect("two").name,
        ];
        names.sort();
        assert_eq!(names, ["a", "s"]);
        let got = objects.config_map("default", "a").await.expect("read");
        assert_eq!(
            got.and_then(|c| c.data).map(|d| d["k"].clone()).as_deref(),
            Some("2")
        );
        assert_eq!(objects.secret("ns", "s").await, Ok(None));
        // Another source's documents stay when one source changes.
        objects.replace_source("run", vec![cm("b", "x")]);
        objects.replace_source("file", vec![]);
        assert!(
            objects
                .config_map("default", "b")
                .await
                .expect("read")
                .is_some()
        );
        assert!(
            objects
                .config_map("default", "a")
                .await
                .expect("read")
                .is_none()
        );
    }
}
