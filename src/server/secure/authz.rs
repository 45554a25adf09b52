//! Authorization of kubelet API requests, as upstream's: each request maps to
//! attributes on the node object (`nodes/<subresource>`, the verb from the HTTP
//! method: upstream's `GetRequestAttributes`, with the fine-grained `pods`, `healthz`
//! and `configz` subresources tried before `proxy`); `--authorization-mode`
//! `AlwaysAllow` allows everything, `Webhook` asks the apiserver with a
//! `SubjectAccessReview` (answers cached: allowed
//! `--authorization-webhook-cache-authorized-ttl`, denied
//! `--authorization-webhook-cache-unauthorized-ttl`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::authn::UserInfo;

/// What a request asks to do to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `create`, `update`, `patch`, `delete` (empty for other methods).
    pub verb: &'static str,
    /// The subresources of `nodes` to check, in order; any allowed is enough.
    pub subresources: Vec<&'static str>,
}

/// `path` is `prefix` or below it.
fn is_subpath(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Upstream's mapping of a request to node attributes.
pub fn attributes(method: &http::Method, path: &str) -> Attributes {
    let verb = match *method {
        http::Method::POST => "create",
        http::Method::GET => "get",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "",
    };
    let mut subresources = Vec::with_capacity(2);
    if is_subpath(path, "/pods") || is_subpath(path, "/runningpods/") {
        subresources.push("pods");
    } else if is_subpath(path, "/healthz") {
        subresources.push("healthz");
    } else if is_subpath(path, "/configz") {
        subresources.push("configz");
    }
    subresources.push(if is_subpath(path, "/stats") {
        "stats"
    } else if is_subpath(path, "/metrics") {
        "metrics"
    } else if is_subpath(path, "/logs") {
        "log"
    } else if is_subpath(path, "/checkpoint") {
        "checkpoint"
    } else {
        "proxy"
    });
    Attributes { verb, subresources }
}

/// An authorization decision that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("subject access review: {0}")]
pub struct AuthzError(String);

type CacheKey = (UserInfo, &'static str, &'static str);

/// `SubjectAccessReview`s through the apiserver, answers cached.
pub struct SarWebhook {
    client: kube::Client,
    node_name: String,
    allowed_ttl: Duration,
    denied_ttl: Duration,
    cache: Mutex<HashMap<CacheKey, (Instant, bool)>>,
}

impl SarWebhook {
    /// Reviews through `client` for the node `node_name`.
    pub fn new(
        client: kube::Client,
        node_name: &str,
        allowed_ttl: Duration,
        denied_ttl: Duration,
    ) -> Self {
        Self {
            client,
            node_name: node_name.to_owned(),
            allowed_ttl,
            denied_ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn allowed(
        &self,
        user: &UserInfo,
        verb: &'static str,
        subresource: &'static str,
    ) -> Result<bool, AuthzError> {
        let key = (user.clone(), verb, subresource);
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, allowed)) = cache.get(&key)
        {
            let ttl = if *allowed {
                self.allowed_ttl
            } else {
                self.denied_ttl
            };
            if now.duration_since(*at) < ttl {
                return Ok(*allowed);
            }
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone().into_iter().collect()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.to_owned()),
                    group: Some(String::new()),
                    version: Some("v1".to_owned()),
                    resource: Some("nodes".to_owned()),
                    subresource: Some(subresource.to_owned()),
                    name: Some(self.node_name.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            api.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| AuthzError("timed out".to_owned()))?
        .map_err(|e| AuthzError(e.to_string()))?;
        let allowed = answer
            .status
            .is_some_and(|s| s.allowed && !s.denied.unwrap_or(false));
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 4096 {
                let ttl = self.allowed_ttl.max(self.denied_ttl);
                cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            }
            cache.insert(key, (now, allowed));
        }
        Ok(allowed)
    }
}

/// `--authorization-mode`.
pub enum Authorizer {
    /// Everything is allowed.
    AlwaysAllow,
    /// The apiserver decides.
    Webhook(Box<SarWebhook>),
}

impl Authorizer {
    /// Whether `user` may do `attrs`: allowed if any of its subresources is.
    ///
    /// # Errors
    /// A review that could not be made (answered 500).
    pub async fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<bool, AuthzError> {
        match self {
            Authorizer::AlwaysAllow => Ok(true),
            Authorizer::Webhook(w) => {
                let mut error = None;
                for sub in &attrs.subresources {
                    match w.allowed(user, attrs.verb, sub).await {
                        Ok(true) => return Ok(true),
                        Ok(false) => {}
                        Err(e) => error = Some(e),
                    }
                }
                error.map_or(Ok(false), Err)
            }
        }
    }
}

/// Upstream's 403 body.
pub fn forbidden_message(user: &UserInfo, attrs: &Attributes) -> String {
    format!(
        "Forbidden (user={}, verb={}, resource=nodes, subresource(s)=[{}])\n",
        user.name,
        attrs.verb,
        attrs.subresources.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(method: http::Method, path: &str) -> (&'static str, Vec<&'static str>) {
        let a = attributes(&method, path);
        (a.verb, a.subresources)
    }

    #[test]
    fn upstream_mapping() {
        use http::Method;
        assert_eq!(subs(Method::GET, "/pods"), ("get", vec!["pods", "proxy"]));
        assert_eq!(subs(Method::GET, "/pods/"), ("get", vec!["pods", "proxy"]));
        assert_eq!(subs(Method::GET, "/podsx"), ("get", vec!["proxy"]));
        assert_eq!(
            subs(Method::GET, "/runningpods/"),
            ("get", vec!["pods", "proxy"])
        );
        assert_eq!(
            subs(Method::GET, "/healthz/syncloop"),
            ("get", vec!["healthz", "proxy"])
        );
        assert_eq!(
            subs(Method::GET, "/configz"),
            ("get", vec!["configz", "proxy"])
        );
        assert_eq!(subs(Method::GET, "/stats/summary"), ("get", vec!["stats"]));
        assert_eq!(
            subs(Method::GET, "/metrics/cadvisor"),
            ("get", vec!["metrics"])
        );
        assert_eq!(subs(Method::GET, "/logs/syslog"), ("get", vec!["log"]));
        assert_eq!(
            subs(Method::GET, "/containerLogs/a/b/c"),
            ("get", vec!["proxy"])
        );
        assert_eq!(subs(Method::POST, "/exec/a/b/c"), ("create", vec!["proxy"]));
        assert_eq!(subs(Method::PUT, "/x"), ("update", vec!["proxy"]));
        assert_eq!(subs(Method::PATCH, "/x"), ("patch", vec!["proxy"]));
        assert_eq!(subs(Method::DELETE, "/x"), ("delete", vec!["proxy"]));
        assert_eq!(subs(Method::HEAD, "/x"), ("", vec!["proxy"]));
    }

    #[test]
    fn forbidden_body() {
        let user = UserInfo {
            name: "alice".into(),
            ..UserInfo::default()
        };
        let a = attributes(&http::Method::GET, "/pods");
        assert_eq!(
            forbidden_message(&user, &a),
            "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[pods proxy])\n"
        );
    }
}
