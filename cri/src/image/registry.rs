//! Talking to a registry over the Docker Registry HTTP API v2 (OCI distribution), as
//! containerd's `remotes/docker` resolver does: the endpoints of a registry (its
//! mirrors in order, then the registry itself; `docker.io` is served by
//! `registry-1.docker.io`), HTTPS by default with system roots plus a per-registry CA
//! file, plain HTTP only for registries marked insecure and for loopback ones (tried
//! after HTTPS fails), and authorization: anonymous first, then whatever the
//! `WWW-Authenticate` challenge asks for, Basic or a Bearer token fetched from the
//! challenge's realm.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};

use super::auth::{Credential, PullAuth};
use super::pull::{PullError, RequestTarget, Stage};

/// The host Docker Hub's registry API is served from.
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
/// containerd's client ID in OAuth2 token requests.
const OAUTH_CLIENT_ID: &str = "nodelet";
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a response may stay silent (headers, or between body chunks): a stalled
/// registry fails the pull instead of hanging it.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What nodelet knows about registries: per-registry transport settings and mirrors,
/// and the node's docker `config.json` credentials.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Settings by registry host as references name it (`docker.io`,
    /// `registry.example.com:5000`, `127.0.0.1:5000`); mirrors look up their own host.
    pub hosts: BTreeMap<String, RegistryHostConfig>,
    /// A docker `config.json` whose `auths` are tried after the pull secrets' (the
    /// kubelet's node-level credentials). Read at each pull.
    pub docker_config: Option<PathBuf>,
    /// Blobs downloaded at once in one pull; 0 means 3 (containerd's default).
    pub max_concurrent_downloads: usize,
}

/// Transport settings of one registry.
#[derive(Clone, Debug, Default)]
pub struct RegistryHostConfig {
    /// Allow plain HTTP, and HTTPS without certificate verification (Docker's
    /// `insecure-registries`): HTTPS is tried first, then HTTP.
    pub insecure: bool,
    /// PEM file of CA certificates trusted for this registry, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Mirrors tried in order before the registry itself: `host[:port]` or
    /// `http(s)://host[:port][/path-prefix]`.
    pub mirrors: Vec<String>,
}

/// A base URL requests can go to, and how.
#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    /// `host[:port]` as in URLs.
    pub host: String,
    /// Path prefix before `/v2/` (mirrors may have one); no trailing slash.
    pub prefix: String,
    /// Schemes to try, in order.
    pub schemes: Vec<&'static str>,
    client: reqwest::Client,
}

impl Endpoint {
    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{}{path}", self.host, self.prefix)
    }
}

/// Whether `host` (`name[:port]`, IPv6 in brackets) is a loopback address or
/// `localhost`.
pub(super) fn is_loopback(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true; // a bare IPv6 address has colons but no port
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The endpoints for `registry` (the reference's domain): mirrors, then the registry.
pub(super) fn endpoints(
    registry: &str,
    config: &RegistryConfig,
    reference: &str,
) -> Result<Vec<Endpoint>, PullError> {
    let host_config = config.hosts.get(registry).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for mirror in &host_config.mirrors {
        let (scheme, rest) = match mirror.split_once("://") {
            Some((s @ ("http" | "https"), rest)) => (Some(s), rest),
            Some(_) => {
                return Err(PullError::InvalidMirror {
                    reference: reference.to_owned(),
                    host: registry.to_owned(),
                    mirror: mirror.clone(),
                });
            }
            None => (None, mirror.as_str()),
        };
        let rest = rest.trim_end_matches('/');
        let (host, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(PullError::InvalidMirror {
                reference: reference.to_owned(),
                host: registry.to_owned(),
                mirror: mirror.clone(),
            });
        }
        let prefix = prefix.strip_suffix("/v2").unwrap_or(prefix);
        let mirror_config = config.hosts.get(host).cloned().unwrap_or_default();
        let schemes = match scheme {
            Some("http") => vec!["http"],
            Some(_) => vec!["https"],
            None => default_schemes(host, &mirror_config),
        };
        out.push(Endpoint {
            host: host.to_owned(),
            prefix: prefix.to_owned(),
            schemes,
            client: client(host, &mirror_config, reference)?,
        });
    }
    let host = if registry == "docker.io" {
        DOCKER_HUB_HOST
    } else {
        registry
    };
    out.push(Endpoint {
        host: host.to_owned(),
        prefix: String::new(),
        schemes: default_schemes(registry, &host_config),
        client: client(registry, &host_config, reference)?,
    });
    Ok(out)
}

fn default_schemes(host: &str, config: &RegistryHostConfig) -> Vec<&'static str> {
    if config.insecure || is_loopback(host) {
        vec!["https", "http"]
    } else {
        vec!["https"]
    }
}

/// HTTP clients by TLS settings (insecure, CA bundle contents): building one sets up
/// the TLS verifier, which costs more than a small pull, and a shared client keeps its
/// connections for the next pull.
type ClientCache = Mutex<HashMap<(bool, Option<Vec<u8>>), reqwest::Client>>;
static CLIENTS: std::sync::OnceLock<ClientCache> = std::sync::OnceLock::new();

fn client(
    host: &str,
    config: &RegistryHostConfig,
    reference: &str,
) -> Result<reqwest::Client, PullError> {
    // The CA file is read at each pull, so a replaced file takes effect.
    let pem = match &config.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| PullError::CaFile {
            reference: reference.to_owned(),
            host: host.to_owned(),
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let tls_error = |source| PullError::TlsConfig {
        reference: reference.to_owned(),
        host: host.to_owned(),
        source,
    };
    let key = (config.insecure, pem);
    let cache = CLIENTS.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(c) = cache.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(c);
    }
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("nodelet/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = &key.1 {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(tls_error)?;
        builder = builder.tls_certs_merge(certs);
    }
    if config.insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    let client = builder.build().map_err(tls_error)?;
    if let Ok(mut m) = cache.lock() {
        m.insert(key, client.clone());
    }
    Ok(client)
}

/// One `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Challenge {
    /// Lower-cased scheme: `basic`, `bearer`.
    pub scheme: String,
    /// Parameters by lower-cased name.
    pub params: HashMap<String, String>,
}

/// Parses `WWW-Authenticate` values (RFC 7235: a scheme then `name=value` or
/// `name="quoted"` parameters; several challenges may share one header).
pub(super) fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    for value in values {
        let s = value.as_bytes();
        let mut i = 0;
        let skip = |i: &mut usize, pred: &dyn Fn(u8) -> bool| {
            while *i < s.len() && pred(s[*i]) {
                *i += 1;
            }
        };
        let is_token = |b: u8| !b" \t,=\"".contains(&b);
        while i < s.len() {
            skip(&mut i, &|b| b == b' ' || b == b'\t' || b == b',');
            let start = i;
            skip(&mut i, &|b| is_token(b));
            if start == i {
                i += 1;
                continue;
            }
            let word = &value[start..i];
            let mut j = i;
            skip(&mut j, &|b| b == b' ' || b == b'\t');
            if j < s.len() && s[j] == b'=' && !out.is_empty() {
                // A parameter of the current challenge.
                j += 1;
                skip(&mut j, &|b| b == b' ' || b == b'\t');
                let mut param = String::new();
                if j < s.len() && s[j] == b'"' {
                    j += 1;
                    while j < s.len() && s[j] != b'"' {
                        if s[j] == b'\\' && j + 1 < s.len() {
                            j += 1;
                        }
                        let ch_len = value[j..].chars().next().map_or(1, char::len_utf8);
                        param.push_str(&value[j..j + ch_len]);
                        j += ch_len;
                    }
                    j += 1;
                } else {
                    let vstart = j;
                    skip(&mut j, &|b| b != b',' && b != b' ' && b != b'\t');
                    param.push_str(&value[vstart..j]);
                }
                if let Some(last) = out.last_mut() {
                    last.params.insert(word.to_ascii_lowercase(), param);
                }
                i = j;
            } else {
                out.push(Challenge {
                    scheme: word.to_ascii_lowercase(),
                    params: HashMap::new(),
                });
            }
        }
    }
    out
}

/// Authorization state of one pull: the header each endpoint host accepted.
pub(super) struct Session {
    pub reference: String,
    /// The repository path in the registry (`library/busybox`).
    pub repository: String,
    /// Credentials to use: one of the keyring's candidates (empty: anonymous).
    credential: Credential,
    /// `Authorization` values by endpoint host.
    authorization: Mutex<HashMap<String, HeaderValue>>,
    /// The scheme that worked, by endpoint host.
    scheme: Mutex<HashMap<String, &'static str>>,
}

impl Session {
    pub fn new(reference: &str, repository: &str, credential: Credential) -> Self {
        Self {
            reference: reference.to_owned(),
            repository: repository.to_owned(),
            credential,
            authorization: Mutex::new(HashMap::new()),
            scheme: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `method path` to `endpoint` with `headers`, authorizing as challenged and
    /// falling back from HTTPS to HTTP where allowed. Answers of any status are
    /// returned except 401, which becomes [`PullError::Unauthorized`].
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        method: Method,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response, PullError> {
        let known = self
            .scheme
            .lock()
            .ok()
            .and_then(|m| m.get(&endpoint.host).copied());
        let schemes: Vec<&'static str> = match known {
            Some(s) => vec![s],
            None => endpoint.schemes.clone(),
        };
        let mut first_error = None;
        for scheme in schemes {
            let url = endpoint.url(scheme, path);
            match self
                .send_authorized(endpoint, &method, &url, headers.clone())
                .await
            {
                Ok(resp) => {
                    // A TLS server answering plain HTTP says 400: the HTTPS error
                    // before it is the one worth reporting.
                    if scheme == "http"
                        && resp.status() == StatusCode::BAD_REQUEST
                        && let Some(e) = first_error.take()
                    {
                        return Err(e);
                    }
                    if let Ok(mut m) = self.scheme.lock() {
                        m.insert(endpoint.host.clone(), scheme);
                    }
                    return Ok(resp);
                }
                Err(e @ PullError::Network { .. }) if first_error.is_none() => {
                    tracing::debug!(url = %url, error = %e, "registry endpoint failed; trying the next scheme");
                    first_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_error.unwrap_or_else(|| PullError::NoEndpoint {
            reference: self.reference.clone(),
            host: endpoint.host.clone(),
        }))
    }

    async fn send_authorized(
        &self,
        endpoint: &Endpoint,
        method: &Method,
        url: &str,
        headers: HeaderMap,
    ) -> Result<Response, PullError> {
        let mut authorized_here = false;
        loop {
            let mut req = endpoint
                .client
                .request(method.clone(), url)
                .headers(headers.clone());
            let cached = self
                .authorization
                .lock()
                .ok()
                .and_then(|m| m.get(&endpoint.host).cloned());
            if let Some(value) = cached {
                req = req.header(AUTHORIZATION, value);
            }
            let resp = req
                .send()
                .await
                .map_err(|source| self.network(&endpoint.host, url, source))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenges = parse_challenges(
                resp.headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            );
            let target = RequestTarget {
                method: method.to_string(),
                url: url.to_owned(),
            };
            if authorized_here {
                // Authorized and still refused: what the server says is the reason.
                let server_message = challenges
                    .iter()
                    .find_map(|c| c.params.get("error").cloned());
                return Err(self.unauthorized(&endpoint.host, target, server_message));
            }
            authorized_here = true;
            let value = self
                .authorize(endpoint, &challenges)
                .await?
                .ok_or_else(|| self.unauthorized(&endpoint.host, target.clone(), None))?;
            if let Ok(mut m) = self.authorization.lock() {
                m.insert(endpoint.host.clone(), value);
            }
        }
    }

    /// The `Authorization` value answering `challenges`, or `None` when none can be
    /// answered (Basic without credentials, unknown schemes).
    async fn authorize(
        &self,
        endpoint: &Endpoint,
        challenges: &[Challenge],
    ) -> Result<Option<HeaderValue>, PullError> {
        let cred = &self.credential;
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            if !cred.registry_token.is_empty() {
                return Ok(header(&format!("Bearer {}", cred.registry_token)));
            }
            let Some(realm) = bearer.params.get("realm") else {
                return Ok(None);
            };
            let token = self.fetch_token(endpoint, realm, bearer).await?;
            return Ok(header(&format!("Bearer {token}")));
        }
        if challenges.iter().any(|c| c.scheme == "basic")
            && (!cred.username.is_empty() || !cred.password.is_empty())
        {
            return Ok(header(&basic(cred)));
        }
        Ok(None)
    }

    /// Gets a token from the Bearer challenge's realm: an OAuth2 refresh-token POST for
    /// an identity token, else a GET with Basic credentials if any (anonymous if not).
    async fn fetch_token(
        &self,
        endpoint: &Endpoint,
        realm: &str,
        challenge: &Challenge,
    ) -> Result<String, PullError> {
        let mut scopes: Vec<String> = challenge
            .params
            .get("scope")
            .map(|s| s.split(' ').map(str::to_owned).collect())
            .unwrap_or_default();
        let ours = format!("repository:{}:pull", self.repository);
        if !scopes.contains(&ours) {
            scopes.push(ours);
        }
        let service = challenge.params.get("service").cloned().unwrap_or_default();
        let cred = &self.credential;
        let target = |method: &str| RequestTarget {
            method: method.to_owned(),
            url: realm.to_owned(),
        };
        let resp = if cred.identity_token.is_empty() {
            let mut query = vec![("service", service.as_str())];
            query.extend(scopes.iter().map(|s| ("scope", s.as_str())));
            let url = format!(
                "{realm}{}{}",
                if realm.contains('?') { '&' } else { '?' },
                form(&query)
            );
            let mut req = endpoint.client.get(&url);
            if !cred.username.is_empty() || !cred.password.is_empty() {
                req = req.header(AUTHORIZATION, basic(cred));
            }
            req.send()
                .await
                .map_err(|source| self.network(&endpoint.host, realm, source))?
        } else {
            let scope = scopes.join(" ");
            let body = form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", cred.identity_token.as_str()),
                ("service", service.as_str()),
                ("scope", scope.as_str()),
                ("client_id", OAUTH_CLIENT_ID),
            ]);
            endpoint
                .client
                .post(realm)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body)
                .send()
                .await
                .map_err(|source| self.network(&endpoint.host, realm, source))?
        };
        let method = if cred.identity_token.is_empty() {
            "GET"
        } else {
            "POST"
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.unauthorized(&endpoint.host, target(method), None));
        }
        if !status.is_success() {
            return Err(PullError::UnexpectedStatus {
                reference: self.reference.clone(),
                host: endpoint.host.clone(),
                stage: Stage::Resolve,
                request: Box::new(target(method)),
                status: status.as_u16(),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let body = resp
            .bytes()
            .await
            .map_err(|source| self.network(&endpoint.host, realm, source))?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|source| PullError::TokenResponse {
                reference: self.reference.clone(),
                host: endpoint.host.clone(),
                realm: realm.to_owned(),
                source: Some(source),
            })?;
        let token = if parsed.access_token.is_empty() {
            parsed.token
        } else {
            parsed.access_token
        };
        if token.is_empty() {
            return Err(PullError::TokenResponse {
                reference: self.reference.clone(),
                host: endpoint.host.clone(),
                realm: realm.to_owned(),
                source: None,
            });
        }
        Ok(token)
    }

    pub fn network(&self, host: &str, url: &str, source: reqwest::Error) -> PullError {
        PullError::Network {
            reference: self.reference.clone(),
            host: host.to_owned(),
            stage: Stage::Resolve,
            url: url.to_owned(),
            source,
        }
    }

    fn unauthorized(
        &self,
        host: &str,
        request: RequestTarget,
        server_message: Option<String>,
    ) -> PullError {
        PullError::Unauthorized {
            reference: self.reference.clone(),
            host: host.to_owned(),
            stage: Stage::Resolve,
            request: Box::new(request),
            server_message,
        }
    }
}

/// The credential candidates of a pull: the pull secrets', then the node's config.
pub(super) fn credentials(
    auth: &PullAuth,
    config: &RegistryConfig,
    reference: &str,
) -> Vec<Credential> {
    let mut keyring = auth.clone();
    if let Some(path) = &config.docker_config {
        let mut node = PullAuth::anonymous();
        match node.add_docker_config_file(path) {
            Ok(()) => keyring.extend(&node),
            // A node without the file pulls anonymously, as the kubelet does.
            Err(super::auth::AuthError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(%error, "node docker config ignored"),
        }
    }
    keyring.lookup(reference)
}

fn header(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn basic(cred: &Credential) -> String {
    let raw = format!("{}:{}", cred.username, cred.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(char::from(b));
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The Accept header of manifest requests: every manifest and index type this code
/// follows, as containerd sends them.
pub(super) fn manifest_accept() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        ACCEPT,
        HeaderValue::from_static(
            "application/vnd.docker.distribution.manifest.v2+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.oci.image.manifest.v1+json, \
             application/vnd.oci.image.index.v1+json, */*",
        ),
    );
    h
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
