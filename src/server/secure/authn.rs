//! Authentication of kubelet API requests, as upstream's delegating authenticator:
//! a verified client certificate first (user = CN, groups = O), then a bearer token
//! checked with a `TokenReview` (`--authentication-token-webhook`, answers cached for
//! `--authentication-token-webhook-cache-ttl`), then anonymous
//! (`system:anonymous`, group `system:unauthenticated`) when `--anonymous-auth` allows.
//! Authenticated users get the `system:authenticated` group, as upstream's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

/// Who made a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserInfo {
    /// The user name.
    pub name: String,
    /// The user's UID (from a token review), or empty.
    pub uid: String,
    /// The user's groups.
    pub groups: Vec<String>,
    /// Extra attributes (from a token review).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The identity a verified TLS client certificate gave the connection; inserted in
/// every request's extensions by the server (absent: no certificate was presented).
#[derive(Debug, Clone)]
pub struct PeerCertUser(pub UserInfo);

/// The anonymous user.
pub fn anonymous() -> UserInfo {
    UserInfo {
        name: "system:anonymous".to_owned(),
        groups: vec!["system:unauthenticated".to_owned()],
        ..UserInfo::default()
    }
}

/// Why a request is not authenticated (all answered `401 Unauthorized`).
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// No credential, and anonymous requests are off.
    #[error("no credentials and anonymous requests are disabled")]
    NoCredentials,
    /// The token review said no.
    #[error("token rejected{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    TokenRejected(Option<String>),
    /// The token review could not be made.
    #[error("token review: {0}")]
    Review(String),
}

/// A review's answer (the user, or the rejection's message) and when it came.
type CachedReview = (Instant, Result<UserInfo, Option<String>>);

/// Bearer tokens checked with `TokenReview`s, answers cached.
pub struct TokenWebhook {
    client: kube::Client,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], CachedReview>>,
}

impl TokenWebhook {
    /// Reviews through `client`, caching each answer `ttl`.
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Self {
            client,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn review(&self, token: &str) -> Result<UserInfo, AuthnError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, answer)) = cache.get(&key)
            && now.duration_since(*at) < self.ttl
        {
            return answer.clone().map_err(AuthnError::TokenRejected);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            api.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| AuthnError::Review("timed out".to_owned()))?
        .map_err(|e| AuthnError::Review(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        let result = match (status.authenticated, status.user) {
            (Some(true), Some(user)) => Ok(UserInfo {
                name: user.username.unwrap_or_default(),
                uid: user.uid.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default().into_iter().collect(),
            }),
            _ => Err(status.error.filter(|e| !e.is_empty())),
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 4096 {
                let ttl = self.ttl;
                cache.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            }
            cache.insert(key, (now, result.clone()));
        }
        result.map_err(AuthnError::TokenRejected)
    }
}

/// The authenticator chain.
pub struct Authenticator {
    /// `--authentication-token-webhook`.
    pub token: Option<TokenWebhook>,
    /// `--anonymous-auth`.
    pub anonymous: bool,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Authenticator {
    /// Who sent a request with these headers over a connection whose client
    /// certificate (if any) named `peer`.
    ///
    /// # Errors
    /// Nobody, and anonymous requests are off; or a rejected token.
    pub async fn authenticate(
        &self,
        peer: Option<&PeerCertUser>,
        headers: &HeaderMap,
    ) -> Result<UserInfo, AuthnError> {
        let mut user = if let Some(PeerCertUser(user)) = peer {
            user.clone()
        } else if let (Some(webhook), Some(token)) = (&self.token, bearer(headers)) {
            webhook.review(token).await?
        } else if self.anonymous {
            return Ok(anonymous());
        } else {
            return Err(AuthnError::NoCredentials);
        };
        if !user.groups.iter().any(|g| g == "system:authenticated") {
            user.groups.push("system:authenticated".to_owned());
        }
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().expect("header value"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            "authorization",
            "bearer  x.y ".parse().expect("header value"),
        );
        assert_eq!(bearer(&h), Some("x.y"));
        h.insert("authorization", "Basic abc".parse().expect("header value"));
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer ".parse().expect("header value"));
        assert_eq!(bearer(&h), None);
    }

    #[tokio::test]
    async fn anonymous_only_when_allowed() {
        let off = Authenticator {
            token: None,
            anonymous: false,
        };
        assert!(matches!(
            off.authenticate(None, &HeaderMap::new()).await,
            Err(AuthnError::NoCredentials)
        ));
        let on = Authenticator {
            token: None,
            anonymous: true,
        };
        assert_eq!(
            on.authenticate(None, &HeaderMap::new())
                .await
                .expect("anonymous"),
            anonymous()
        );
        let peer = PeerCertUser(UserInfo {
            name: "kube-apiserver-kubelet-client".into(),
            groups: vec!["system:masters".into()],
            ..UserInfo::default()
        });
        let user = off
            .authenticate(Some(&peer), &HeaderMap::new())
            .await
            .expect("the certificate's user");
        assert_eq!(user.name, "kube-apiserver-kubelet-client");
        assert_eq!(user.groups, ["system:masters", "system:authenticated"]);
    }
}
