//! A pod's `runtimeClassName` resolved to the runtime handler its sandbox runs on, as
//! upstream's `pkg/kubelet/runtimeclass` manager does: no class is the default
//! handler; otherwise the RuntimeClass object's `handler` (standalone, with no
//! RuntimeClass objects, the name itself). The errors read as upstream's, so
//! `Failed to create pod sandbox: runtimeclass.node.k8s.io "x" not found` is the same
//! event text on both agents.
//!
//! A RuntimeClass's `overhead` and `scheduling` are applied by the apiserver's
//! admission and the scheduler, not here.

use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;

use crate::volume::{ObjectError, ObjectSource};

/// Why a pod's RuntimeClass gives no handler.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RuntimeClassError {
    /// No RuntimeClass of that name (the lister's NotFound error text).
    #[error("runtimeclass.node.k8s.io {0:?} not found")]
    NotFound(String),
    /// The lookup itself failed (apiserver away, forbidden).
    #[error("failed to lookup RuntimeClass {name}: {source}")]
    Lookup {
        /// The class.
        name: String,
        /// What the source said.
        #[source]
        source: ObjectError,
    },
}

/// The runtime handler for `pod` (`""`: the default).
///
/// # Errors
/// [`RuntimeClassError`] when the named class does not exist or can't be read.
pub async fn runtime_handler(
    objects: &dyn ObjectSource,
    pod: &Pod,
) -> Result<String, RuntimeClassError> {
    let Some(name) = pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_deref())
        .filter(|n| !n.is_empty())
    else {
        return Ok(String::new());
    };
    match objects.runtime_handler(name).await {
        Ok(Some(handler)) => Ok(handler),
        Ok(None) => Err(RuntimeClassError::NotFound(name.to_owned())),
        Err(source) => Err(RuntimeClassError::Lookup {
            name: name.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use futures::future::BoxFuture;
    use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Secret};

    use super::*;
    use crate::volume::{IssuedToken, StaticObjects, TokenRequestSpec};

    /// A cluster with the given RuntimeClasses (name → handler), or one that fails.
    #[derive(Debug)]
    struct Classes(Result<BTreeMap<String, String>, ObjectError>);

    impl ObjectSource for Classes {
        fn config_map(
            &self,
            _: &str,
            _: &str,
        ) -> BoxFuture<'_, Result<Option<ConfigMap>, ObjectError>> {
            Box::pin(async { Ok(None) })
        }
        fn secret(&self, _: &str, _: &str) -> BoxFuture<'_, Result<Option<Secret>, ObjectError>> {
            Box::pin(async { Ok(None) })
        }
        fn service_account_token(
            &self,
            _: TokenRequestSpec,
        ) -> BoxFuture<'_, Result<IssuedToken, ObjectError>> {
            Box::pin(async { Err(ObjectError::Unavailable("no tokens".into())) })
        }
        fn runtime_handler(
            &self,
            name: &str,
        ) -> BoxFuture<'_, Result<Option<String>, ObjectError>> {
            let found = self.0.clone().map(|m| m.get(name).cloned());
            Box::pin(async move { found })
        }
    }

    fn pod(class: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                runtime_class_name: class.map(str::to_owned),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[tokio::test]
    async fn no_class_is_the_default_handler() {
        let objects = Classes(Ok(BTreeMap::new()));
        assert_eq!(
            runtime_handler(&objects, &pod(None)).await,
            Ok(String::new())
        );
        assert_eq!(
            runtime_handler(&objects, &pod(Some(""))).await,
            Ok(String::new())
        );
    }

    #[tokio::test]
    async fn a_class_gives_its_handler_or_upstreams_not_found() {
        let objects = Classes(Ok(BTreeMap::from([("fast".into(), "crun".into())])));
        assert_eq!(
            runtime_handler(&objects, &pod(Some("fast"))).await,
            Ok("crun".into())
        );
        let err = runtime_handler(&objects, &pod(Some("slow")))
            .await
            .expect_err("fails");
        assert_eq!(
            err.to_string(),
            "runtimeclass.node.k8s.io \"slow\" not found"
        );
    }

    #[tokio::test]
    async fn a_failed_lookup_says_so() {
        let objects = Classes(Err(ObjectError::Unavailable("apiserver away".into())));
        let err = runtime_handler(&objects, &pod(Some("fast")))
            .await
            .expect_err("fails");
        assert_eq!(
            err.to_string(),
            "failed to lookup RuntimeClass fast: apiserver away"
        );
    }

    #[tokio::test]
    async fn standalone_the_name_is_the_handler() {
        let objects = StaticObjects::default();
        assert_eq!(
            runtime_handler(&objects, &pod(Some("crun"))).await,
            Ok("crun".into())
        );
    }
}
