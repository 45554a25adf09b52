//! The manifest URL source (`--manifest-url`, `staticPodURL`): a URL polled
//! every `--http-check-frequency`, whose body is a Pod, a `List`/`PodList` of
//! pods, or several YAML documents, as upstream's `pkg/kubelet/config/http.go`.
//!
//! Beyond upstream, each request carries `If-None-Match` and
//! `If-Modified-Since` from the last response, so an unchanged manifest costs
//! a `304 Not Modified` and no parsing; a `200` with the same bytes is not
//! re-parsed either. As upstream: an empty body means no pods; an unreachable
//! URL, a non-200 answer or a body that does not parse or validate keeps the
//! last good pods and is logged (each distinct problem once at `warn`).
//! Each change of the desired set is sent as one [`SourceEvent::Snapshot`]
//! with source `"http"`; ConfigMap and Secret documents in the body (beyond
//! upstream) as a [`SourceEvent::Objects`] before it.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use reqwest::StatusCode;
use reqwest::header::{
    ETAG, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use nodelet_manifests::{
    ApiObject, HTTP_SOURCE, Origin, SourceEvent, keep_first_seen, load_pods_at,
};

/// Upstream's client timeout for the manifest URL.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body read: the limit of every manifest (upstream's apiserver
/// request limit, 3 MiB; upstream's URL source allowed 10 MiB, `maxConfigLength`).
pub const MAX_BODY_BYTES: usize = nodelet_manifests::MAX_MANIFEST_BYTES;
/// Lower bound on the polling period (a zero period would spin).
const MIN_PERIOD: Duration = Duration::from_millis(50);

/// Why a URL source cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlSourceError {
    /// The URL does not parse.
    #[error("invalid --manifest-url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A scheme other than `http` and `https`.
    #[error("--manifest-url {url:?}: scheme {scheme:?} is not supported (only http and https)")]
    UnsupportedScheme {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// A header name or value that HTTP does not allow.
    #[error("invalid --manifest-url-header {name:?}: {reason}")]
    InvalidHeader {
        /// The header's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for --manifest-url: {0}")]
    Client(String),
}

/// Why a `--manifest-url-header` value is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pair {pair:?}, expect string:string")]
pub struct HeaderFlagError {
    /// The offending `key:value` pair.
    pub pair: String,
}

/// Parses one `--manifest-url-header` value as upstream's
/// `ColonSeparatedMultimapStringString` does: comma-separated `key:value`
/// pairs, split at the first colon, both sides trimmed, empty pairs skipped
/// (`a:hello,b:again` gives two headers). Repeat the flag for more; repeated
/// names are all sent, in order.
///
/// # Errors
/// [`HeaderFlagError`] for a pair without a colon.
pub fn parse_header_flag(value: &str) -> Result<Vec<(String, String)>, HeaderFlagError> {
    value
        .split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once(':') {
            Some((key, value)) => Ok((key.trim().to_owned(), value.trim().to_owned())),
            None => Err(HeaderFlagError {
                pair: pair.to_owned(),
            }),
        })
        .collect()
}

/// Polls a manifest URL and sends the pods it serves.
#[derive(Debug, Clone)]
pub struct UrlSource {
    url: String,
    headers: HeaderMap,
    node_name: String,
    check_frequency: Duration,
    client: reqwest::Client,
}

impl UrlSource {
    /// A source for `url` on node `node_name`, sending `headers` with every
    /// request and polling every `check_frequency` (upstream's
    /// `--http-check-frequency`, 20 s).
    ///
    /// # Errors
    /// [`UrlSourceError`] when the URL is not an `http(s)` URL, a header is not
    /// valid HTTP, or the client cannot be built: all configuration errors to
    /// report before the agent starts.
    pub fn new(
        url: &str,
        headers: Vec<(String, String)>,
        node_name: impl Into<String>,
        check_frequency: Duration,
    ) -> Result<Self, UrlSourceError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| UrlSourceError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        // https needs reqwest's TLS feature, which the nodelet binary enables
        // (features unify); a build without it fails each request, logged.
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(UrlSourceError::UnsupportedScheme {
                url: url.to_owned(),
                scheme: parsed.scheme().to_owned(),
            });
        }
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                UrlSourceError::InvalidHeader {
                    name: name.clone(),
                    reason: e.to_string(),
                }
            })?;
            let value =
                HeaderValue::from_str(&value).map_err(|e| UrlSourceError::InvalidHeader {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            map.append(header, value);
        }
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| UrlSourceError::Client(error_chain(&e)))?;
        Ok(Self {
            url: url.to_owned(),
            headers: map,
            node_name: node_name.into(),
            check_frequency,
            client,
        })
    }

    /// Runs until `cancel` fires or the receiver of `tx` goes away. Sends one
    /// snapshot after the first attempt (empty if it failed), then one
    /// whenever the set of pods changes.
    pub async fn run(self, tx: mpsc::Sender<SourceEvent>, cancel: CancellationToken) {
        info!(url = %self.url, "watching manifest URL");
        let mut poller = Poller::new(&self);
        let mut sent: Option<Vec<Pod>> = None;
        let mut sent_objects: Option<Vec<ApiObject>> = None;
        let mut ticker = tokio::time::interval(self.check_frequency.max(MIN_PERIOD));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = poller.poll() => {}
            }
            // The objects go first, so pods that use them find them.
            if sent_objects.as_ref() != Some(&poller.objects)
                && !(sent_objects.is_none() && poller.objects.is_empty())
            {
                sent_objects = Some(poller.objects.clone());
                let event = SourceEvent::Objects {
                    source: HTTP_SOURCE,
                    objects: poller.objects.clone(),
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    result = tx.send(event) => if result.is_err() { return },
                }
            }
            if sent.as_ref() != Some(&poller.pods) {
                debug!(url = %self.url, pods = poller.pods.len(), "pods from manifest URL changed");
                sent = Some(poller.pods.clone());
                let event = SourceEvent::Snapshot {
                    source: HTTP_SOURCE,
                    pods: poller.pods.clone(),
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    result = tx.send(event) => if result.is_err() { return },
                }
            }
        }
    }
}

/// What one request gave.
enum Fetch {
    /// `304`, or a `200` whose bytes are those last parsed.
    Unchanged,
    /// New bytes.
    Body(Vec<u8>),
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("GET {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("GET {url}: {status}")]
    Status { url: String, status: StatusCode },
    #[error("GET {url}: the body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge { url: String },
}

/// The polling state: validators of the last response, the last good pods
/// and what was logged.
struct Poller<'a> {
    source: &'a UrlSource,
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    /// Digest of the body last parsed (good or bad).
    digest: Option<[u8; 32]>,
    /// The pods of the last good body.
    pods: Vec<Pod>,
    /// Its ConfigMap and Secret documents.
    objects: Vec<ApiObject>,
    /// The problems of the current state, each logged once at `warn`.
    reported: Vec<String>,
}

impl<'a> Poller<'a> {
    fn new(source: &'a UrlSource) -> Self {
        Self {
            source,
            etag: None,
            last_modified: None,
            digest: None,
            pods: Vec::new(),
            objects: Vec::new(),
            reported: Vec::new(),
        }
    }

    async fn poll(&mut self) {
        let url = &self.source.url;
        match self.fetch().await {
            Err(e) => self.report(vec![e.to_string()], "cannot read pods from manifest URL"),
            Ok(Fetch::Unchanged) => {
                debug!(%url, "manifest URL unchanged");
                // The problems of an unchanged body are still current; a
                // failed request before it is over.
                self.reported.retain(|m| !m.starts_with("GET "));
            }
            Ok(Fetch::Body(bytes)) => self.parse(&bytes),
        }
    }

    /// Logs each problem not already logged for the current state, and forgets
    /// the ones that went away.
    fn report(&mut self, problems: Vec<String>, what: &str) {
        for problem in &problems {
            if self.reported.contains(problem) {
                debug!(url = %self.source.url, reason = %problem, "{what}");
            } else {
                warn!(url = %self.source.url, reason = %problem, "{what}; keeping the pods it last gave, if any");
            }
        }
        self.reported = problems;
    }

    async fn fetch(&mut self) -> Result<Fetch, FetchError> {
        let url = &self.source.url;
        let transport = |e: &reqwest::Error| FetchError::Transport {
            url: url.clone(),
            reason: error_chain(e),
        };
        let mut request = self
            .source
            .client
            .get(url)
            .headers(self.source.headers.clone());
        if let Some(etag) = &self.etag {
            request = request.header(IF_NONE_MATCH, etag.clone());
        }
        if let Some(last_modified) = &self.last_modified {
            request = request.header(IF_MODIFIED_SINCE, last_modified.clone());
        }
        let mut response = request.send().await.map_err(|e| transport(&e))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED && self.digest.is_some() {
            return Ok(Fetch::Unchanged);
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status {
                url: url.clone(),
                status,
            });
        }
        let etag = response.headers().get(ETAG).cloned();
        let last_modified = response.headers().get(LAST_MODIFIED).cloned();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(&e))? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(FetchError::TooLarge { url: url.clone() });
            }
            body.extend_from_slice(&chunk);
        }
        // Only a complete body moves the validators forward.
        self.etag = etag;
        self.last_modified = last_modified;
        let digest: [u8; 32] = Sha256::digest(&body).into();
        if self.digest == Some(digest) {
            return Ok(Fetch::Unchanged);
        }
        self.digest = Some(digest);
        Ok(Fetch::Body(body))
    }

    fn parse(&mut self, bytes: &[u8]) {
        let url = self.source.url.as_str();
        let load = load_pods_at(
            bytes,
            Origin::Url(url),
            &self.source.node_name,
            SystemTime::now(),
        );
        if load.has_fatal_errors() {
            let problems = load.errors.iter().map(ToString::to_string).collect();
            self.report(problems, "manifest URL rejected");
            return;
        }
        if bytes.is_empty() {
            // Upstream sends an empty set and logs the zero-length body.
            info!(%url, "zero-length body from manifest URL: no pods");
        }
        for skipped in &load.errors {
            info!(%url, reason = %skipped, "manifest document skipped");
        }
        if !self.reported.is_empty() {
            info!(%url, "read pods from manifest URL again");
        }
        self.reported.clear();
        let old = std::mem::take(&mut self.pods);
        self.pods = keep_first_seen(dedupe(load.pods, url), &old);
        self.objects = load.objects;
    }
}

/// Keeps the first pod of each namespace/name, as the file source does across
/// files, logging the losers.
fn dedupe(pods: Vec<Pod>, url: &str) -> Vec<Pod> {
    let mut seen = std::collections::HashSet::new();
    pods.into_iter()
        .filter(|pod| {
            let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
            let first = seen.insert(key);
            if !first {
                warn!(%url, namespace = ?pod.metadata.namespace, pod = ?pod.metadata.name, "manifest URL names a pod twice; ignoring the second");
            }
            first
        })
        .collect()
}

/// An error with its sources, `a: b: c` (reqwest's own text omits the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn header_flags_as_upstream() {
        let pairs = |v: &str| parse_header_flag(v).unwrap();
        assert_eq!(
            pairs("a:hello,b:again,c:world"),
            [
                ("a".into(), "hello".into()),
                ("b".into(), "again".into()),
                ("c".into(), "world".into())
            ]
        );
        assert_eq!(
            pairs(" Authorization : Bearer x:y ,"),
            [("Authorization".into(), "Bearer x:y".into())]
        );
        assert_eq!(pairs(""), []);
        assert_eq!(pairs("k:"), [("k".into(), String::new())]);
        assert_eq!(
            parse_header_flag("a:1,nocolon").unwrap_err().to_string(),
            "malformed pair \"nocolon\", expect string:string"
        );
    }

    #[test]
    fn configuration_is_checked_up_front() {
        let new = |url: &str, headers: Vec<(&str, &str)>| {
            let headers = headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            UrlSource::new(url, headers, "n", Duration::from_secs(20))
        };
        assert!(new("http://127.0.0.1:8080/pods.yaml", vec![("X-A", "1")]).is_ok());
        assert!(matches!(
            new("not a url", vec![]),
            Err(UrlSourceError::InvalidUrl { .. })
        ));
        assert!(new("https://example.invalid/pods.yaml", vec![]).is_ok());
        assert_eq!(
            new("file:///etc/pods.yaml", vec![])
                .unwrap_err()
                .to_string(),
            "--manifest-url \"file:///etc/pods.yaml\": scheme \"file\" is not supported (only http and https)"
        );
        assert!(matches!(
            new("http://h/", vec![("bad name", "v")]),
            Err(UrlSourceError::InvalidHeader { .. })
        ));
        assert!(matches!(
            new("http://h/", vec![("X-A", "line\nbreak")]),
            Err(UrlSourceError::InvalidHeader { .. })
        ));
    }
}
