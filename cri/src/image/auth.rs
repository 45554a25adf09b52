//! Registry credentials as the kubelet finds them: `imagePullSecrets` of type
//! `kubernetes.io/dockerconfigjson` (`{"auths": {...}}`) and `kubernetes.io/dockercfg`
//! (the bare map), and a node-level docker `config.json`, matched to an image the way
//! upstream's `pkg/credentialprovider` keyring does: keys are schemeless URLs (a `/v1/`
//! or `/v2/` path counts as the bare host), reverse-sorted so more specific paths come
//! first, host parts compared as globs one by one, ports exactly, paths by prefix, and
//! `index.docker.io` standing in for any Docker Hub image.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use thiserror::Error;

/// The key docker writes Docker Hub credentials under (`https://index.docker.io/v1/`
/// reduces to it).
const DEFAULT_REGISTRY_HOST: &str = "index.docker.io";

/// One set of credentials for a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credential {
    /// User name (from `username`, or the first half of `auth`).
    pub username: String,
    /// Password (from `password`, or the second half of `auth`).
    pub password: String,
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token realm.
    pub identity_token: String,
    /// A bearer token sent as is (`registrytoken`).
    pub registry_token: String,
}

impl std::fmt::Debug for Credential {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field(
                "password",
                &(!self.password.is_empty()).then_some("<redacted>"),
            )
            .field(
                "identity_token",
                &(!self.identity_token.is_empty()).then_some("<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Whether it carries anything to authenticate with.
    pub fn is_empty(&self) -> bool {
        self.username.is_empty()
            && self.password.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
    }
}

/// Errors parsing docker credential documents.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The document is not JSON of the expected shape.
    #[error("{what} is not a valid docker config: {source}")]
    Json {
        /// `dockerconfigjson`, `dockercfg`, or a file path.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// An entry's `auth` is not base64 of `user:password`.
    #[error("{what}: the auth field of {registry:?} is not base64 of user:password")]
    BadAuthField {
        /// The document.
        what: String,
        /// The registry key of the entry.
        registry: String,
    },
    /// A config file could not be read.
    #[error("cannot read docker config {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default, rename = "identitytoken")]
    identity_token: String,
    #[serde(default, rename = "registrytoken")]
    registry_token: String,
}

/// Credentials for one pull, the kubelet's keyring: entries from pull secrets, then
/// from the node's docker config. Empty (anonymous) by default.
#[derive(Clone, Debug, Default)]
pub struct PullAuth {
    /// Keys (schemeless URLs) with their credentials, in the order added.
    entries: Vec<(String, Credential)>,
}

impl PullAuth {
    /// No credentials: pulls are anonymous.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Adds the `.dockerconfigjson` data of a `kubernetes.io/dockerconfigjson` secret
    /// (`{"auths": {"registry": {"username", "password", "auth", ...}}}`).
    ///
    /// # Errors
    /// [`AuthError::Json`] when it is not such a document, [`AuthError::BadAuthField`]
    /// for an `auth` that is not base64 of `user:password`. Nothing is added then
    /// (upstream skips such a secret as a whole).
    pub fn add_dockerconfigjson(&mut self, data: &[u8]) -> Result<(), AuthError> {
        let doc: DockerConfigJson =
            serde_json::from_slice(data).map_err(|source| AuthError::Json {
                what: "dockerconfigjson".to_owned(),
                source,
            })?;
        self.add_entries("dockerconfigjson", doc.auths)
    }

    /// Adds the `.dockercfg` data of a `kubernetes.io/dockercfg` secret (the bare
    /// `{"registry": {...}}` map).
    ///
    /// # Errors
    /// As [`PullAuth::add_dockerconfigjson`].
    pub fn add_dockercfg(&mut self, data: &[u8]) -> Result<(), AuthError> {
        let doc: BTreeMap<String, Entry> =
            serde_json::from_slice(data).map_err(|source| AuthError::Json {
                what: "dockercfg".to_owned(),
                source,
            })?;
        self.add_entries("dockercfg", doc)
    }

    /// Adds the `auths` of a docker `config.json` file (the node-level credentials).
    ///
    /// # Errors
    /// [`AuthError::Io`] when it can't be read, else as
    /// [`PullAuth::add_dockerconfigjson`].
    pub fn add_docker_config_file(&mut self, path: &std::path::Path) -> Result<(), AuthError> {
        let data = std::fs::read(path).map_err(|source| AuthError::Io {
            path: path.to_owned(),
            source,
        })?;
        let doc: DockerConfigJson =
            serde_json::from_slice(&data).map_err(|source| AuthError::Json {
                what: path.display().to_string(),
                source,
            })?;
        self.add_entries(&path.display().to_string(), doc.auths)
    }

    fn add_entries(
        &mut self,
        what: &str,
        entries: BTreeMap<String, Entry>,
    ) -> Result<(), AuthError> {
        let mut parsed = Vec::with_capacity(entries.len());
        for (registry, entry) in entries {
            let mut cred = Credential {
                username: entry.username,
                password: entry.password,
                identity_token: entry.identity_token,
                registry_token: entry.registry_token,
            };
            if !entry.auth.is_empty() {
                let bad = || AuthError::BadAuthField {
                    what: what.to_owned(),
                    registry: registry.clone(),
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(entry.auth.trim())
                    .map_err(|_| bad())?;
                let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
                let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
                cred.username = user.to_owned();
                cred.password = pass.to_owned();
            }
            if let Some(key) = keyring_key(&registry) {
                parsed.push((key, cred));
            }
        }
        self.entries.extend(parsed);
        Ok(())
    }

    /// Appends `other`'s entries after this one's (pull secrets first, then the node's
    /// credentials, as the kubelet's union keyring orders them).
    pub fn extend(&mut self, other: &PullAuth) {
        self.entries.extend(other.entries.iter().cloned());
    }

    /// The credentials to try for `image` (a reference; tag and digest are ignored), in
    /// order; empty means pull anonymously.
    pub fn lookup(&self, image: &str) -> Vec<Credential> {
        let repo = repository_of(image);
        // Reverse-sorted unique keys: `quay.io/coreos` before `quay.io`.
        let mut keys: Vec<&str> = self.entries.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.reverse();
        let mut out = Vec::new();
        for key in keys {
            if urls_match(key, repo) {
                out.extend(
                    self.entries
                        .iter()
                        .filter(|(k, _)| k == key)
                        .map(|(_, c)| c.clone()),
                );
            }
        }
        if out.is_empty() && is_default_registry_match(repo) {
            out.extend(
                self.entries
                    .iter()
                    .filter(|(k, _)| k == DEFAULT_REGISTRY_HOST)
                    .map(|(_, c)| c.clone()),
            );
        }
        out
    }
}

/// `image` without its tag and digest (`host/path`).
fn repository_of(image: &str) -> &str {
    let name = image.split_once('@').map_or(image, |(n, _)| n);
    match name.rfind(':') {
        Some(i) if !name[i + 1..].contains('/') => &name[..i],
        _ => name,
    }
}

/// The keyring key of a config entry: host plus path, where `/v1/` and `/v2/` (docker's
/// API prefixes) count as no path, and the scheme is dropped. `None` for what can't be
/// a URL.
fn keyring_key(location: &str) -> Option<String> {
    let rest = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    let path = if path.starts_with("/v1/") || path.starts_with("/v2/") {
        &path[3..]
    } else {
        path
    };
    if path.is_empty() || path == "/" {
        Some(host.to_owned())
    } else {
        Some(format!("{host}{path}"))
    }
}

/// Whether `image` is pulled from Docker Hub, judged by its name as upstream does.
fn is_default_registry_match(image: &str) -> bool {
    match image.split_once('/') {
        None => !image.is_empty(),
        Some(("", _)) => false,
        Some((first, _)) => {
            first == "docker.io" || first == "index.docker.io" || !first.contains(['.', ':'])
        }
    }
}

/// Splits a schemeless URL into host parts, port and path; an IPv6 host is one part,
/// without its brackets (as Go's `url.Hostname` gives it), so `[` is not read as a
/// glob class.
fn split_url(url: &str) -> (Vec<&str>, &str, &str) {
    let (hostport, path) = match url.find('/') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    if let Some(end) = hostport.strip_prefix('[').and_then(|r| r.find(']')) {
        let host = &hostport[1..end + 1];
        let port = hostport[end + 2..].strip_prefix(':').unwrap_or("");
        return (vec![host], port, path);
    }
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, ""));
    (host.split('.').collect(), port, path)
}

/// Upstream's `URLsMatch`: same port, same number of host parts each matching as a
/// glob, and the target's path starting with the glob's.
fn urls_match(glob: &str, target: &str) -> bool {
    let (glob_parts, glob_port, glob_path) = split_url(glob);
    let (target_parts, target_port, target_path) = split_url(target);
    glob_port == target_port
        && glob_parts.len() == target_parts.len()
        && target_path.starts_with(glob_path)
        && glob_parts
            .iter()
            .zip(&target_parts)
            .all(|(g, t)| glob_match(g.as_bytes(), t.as_bytes()))
}

/// Go's `filepath.Match` for one host part: `*`, `?` and `[...]` classes (with `^`
/// negation and ranges); a malformed pattern matches nothing.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.first() {
        None => text.is_empty(),
        Some(b'*') => (0..=text.len()).any(|i| glob_match(&pattern[1..], &text[i..])),
        Some(b'?') => !text.is_empty() && glob_match(&pattern[1..], &text[1..]),
        Some(b'[') => {
            let Some(end) = pattern.iter().skip(2).position(|&b| b == b']') else {
                return false;
            };
            let class = &pattern[1..end + 2];
            let (negate, class) = match class.first() {
                Some(b'^') => (true, &class[1..]),
                _ => (false, class),
            };
            let Some(&c) = text.first() else {
                return false;
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= (class[i]..=class[i + 2]).contains(&c);
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob_match(&pattern[end + 3..], &text[1..])
        }
        Some(&p) => text.first() == Some(&p) && glob_match(&pattern[1..], &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(c: &Credential) -> &str {
        &c.username
    }

    #[test]
    fn dockerconfigjson_and_auth_field() {
        let mut auth = PullAuth::anonymous();
        let basic = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x");
        let doc = format!(
            r#"{{"auths":{{"registry.example.com:5000":{{"auth":"{basic}"}},"https://index.docker.io/v1/":{{"username":"hub","password":"p"}}}}}}"#
        );
        auth.add_dockerconfigjson(doc.as_bytes()).expect("parse");
        let found = auth.lookup("registry.example.com:5000/team/app:1.0");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].username, "alice");
        assert_eq!(found[0].password, "s3cret:x", "split at the first colon");
        assert_eq!(
            auth.lookup("docker.io/library/busybox:latest")
                .iter()
                .map(user)
                .collect::<Vec<_>>(),
            ["hub"]
        );
        assert!(auth.lookup("registry.example.com/app").is_empty(), "port");
        assert!(auth.lookup("quay.io/app").is_empty());
        assert!(format!("{:?}", found[0]).contains("redacted"));
        assert!(!format!("{:?}", found[0]).contains("s3cret"));
    }

    #[test]
    fn dockercfg_and_errors() {
        let mut auth = PullAuth::anonymous();
        auth.add_dockercfg(br#"{"quay.io":{"username":"q","password":"p","email":"e"}}"#)
            .expect("parse");
        assert_eq!(auth.lookup("quay.io/coreos/etcd").len(), 1);
        assert!(matches!(
            auth.add_dockercfg(br#"{"x.io":{"auth":"bm9jb2xvbg=="}}"#),
            Err(AuthError::BadAuthField { .. })
        ));
        assert!(matches!(
            auth.add_dockerconfigjson(b"[1]"),
            Err(AuthError::Json { .. })
        ));
        assert_eq!(auth.entries.len(), 1, "a bad secret adds nothing");
    }

    #[test]
    fn keyring_matching_like_upstream() {
        let mut auth = PullAuth::anonymous();
        auth.add_dockercfg(
            br#"{
                "quay.io": {"username": "host"},
                "quay.io/coreos": {"username": "path"},
                "*.gcr.io": {"username": "glob"},
                "http://plain.example.com/v2/": {"username": "v2"},
                "localhost:5000": {"username": "local"}
            }"#,
        )
        .expect("parse");
        let users = |image: &str| {
            auth.lookup(image)
                .iter()
                .map(|c| c.username.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(users("quay.io/coreos/etcd:v3"), ["path", "host"]);
        assert_eq!(users("quay.io/other/x"), ["host"]);
        assert_eq!(users("us.gcr.io/p/img"), ["glob"]);
        assert!(users("gcr.io/p/img").is_empty(), "part counts differ");
        assert!(users("a.b.gcr.io/p/img").is_empty());
        assert_eq!(users("plain.example.com/x@sha256:abc"), ["v2"]);
        assert_eq!(users("localhost:5000/x:1"), ["local"]);
        assert!(users("localhost:5001/x").is_empty());
        assert!(users("docker.io/library/busybox").is_empty());
    }

    #[test]
    fn keys_and_globs() {
        assert_eq!(
            keyring_key("https://index.docker.io/v1/").as_deref(),
            Some("index.docker.io")
        );
        assert_eq!(keyring_key("http://a.io/v2/ns").as_deref(), Some("a.io/ns"));
        assert_eq!(keyring_key("a.io/ns/").as_deref(), Some("a.io/ns/"));
        assert_eq!(keyring_key(""), None);
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"us-*", b"us-east1"));
        assert!(glob_match(b"r?g", b"reg"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[^a-c]x", b"bx"));
        assert!(!glob_match(b"[a-c", b"a"));
        assert!(is_default_registry_match("busybox"));
        assert!(is_default_registry_match("library/busybox"));
        assert!(is_default_registry_match("docker.io/library/busybox"));
        assert!(!is_default_registry_match("localhost:5000/busybox"));
        assert_eq!(repository_of("localhost:5000/a/b:t"), "localhost:5000/a/b");
        assert_eq!(repository_of("localhost:5000/a"), "localhost:5000/a");
        assert_eq!(repository_of("a.io/b:c@sha256:00"), "a.io/b");
        assert_eq!(split_url("[::1]:5000/x"), (vec!["::1"], "5000", "/x"));
        assert_eq!(split_url("[::1]"), (vec!["::1"], "", ""));
        assert_eq!(split_url("a.b:1"), (vec!["a", "b"], "1", ""));
        assert!(urls_match("[::1]:5000", "[::1]:5000/app"));
    }
}
