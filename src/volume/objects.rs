//! Where the API objects behind configMap, secret and projected volumes come from: the
//! [`ObjectSource`] trait (the apiserver implements it in cluster mode) and
//! [`StaticObjects`], an in-memory source for standalone mode (ConfigMap and Secret
//! documents beside static pods) and for tests.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::SystemTime;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use thiserror::Error;

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

/// An in-memory [`ObjectSource`]: what standalone mode knows, and what unit tests use.
/// It issues no tokens.
#[derive(Debug, Default)]
pub struct StaticObjects {
    config_maps: RwLock<BTreeMap<Key, ConfigMap>>,
    secrets: RwLock<BTreeMap<Key, Secret>>,
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
}
