//! Identity of pods that do not come from manifest files: those read from the
//! manifest URL (`--manifest-url`) and those pushed to the agent's API
//! (`POST /pods`), and [`load_pods_at`], which takes a body's bytes to the
//! pods it yields, as [`crate::load_static_pods_at`] does for a file.
//!
//! Upstream's `applyDefaults` (`pkg/kubelet/config/common.go`) with
//! `isFile == false`: the same name suffix, namespace, node name, hash and
//! `Pending` phase as a file's static pod, but no NoExecute toleration (upstream
//! adds that to file pods only). The `config.source` and `config.seen`
//! annotations, which upstream's pod config merge adds, are set here too.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use sha2::{Digest, Sha256};

use crate::static_pod::{
    CONFIG_HASH_ANNOTATION, CONFIG_SEEN_ANNOTATION, CONFIG_SOURCE_ANNOTATION, FileLoad,
    rfc3339_nanos,
};

/// The source name of the manifest URL (`kubetypes.HTTPSource`).
pub const HTTP_SOURCE: &str = "http";
/// The source name of pods pushed to the agent's API. Upstream has no such
/// source (its kubelet API never accepted pods); `api` is upstream's name for
/// pods from the apiserver and would make them look like non-static pods, so
/// pushed pods get a name of their own.
pub const PUSH_SOURCE: &str = "http-push";

/// Where a pod that is not from a manifest file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// Read from this manifest URL (as given on the command line).
    Url(&'a str),
    /// Pushed to the agent's API (`POST /pods`).
    Push,
}

impl Origin<'_> {
    /// The source name (`config.source` annotation and snapshot source).
    #[must_use]
    pub fn source(self) -> &'static str {
        match self {
            Self::Url(_) => HTTP_SOURCE,
            Self::Push => PUSH_SOURCE,
        }
    }

    /// How errors name where the bytes came from.
    #[must_use]
    pub fn label(&self) -> &str {
        match self {
            Self::Url(url) => url,
            Self::Push => "request body",
        }
    }
}

/// The UID of a pod from `origin` with no `metadata.uid`: a hash of the pod as
/// written (after defaulting, before any identity is applied), the node name
/// and the origin, so an edit gives a new UID and an unchanged manifest keeps
/// its pod.
///
/// Upstream hashes `url:<url>` and the pod with MD5; as for files
/// ([`crate::static_pod_uid`]) we use SHA-256 over the JSON encoding, truncated
/// to 32 hex digits, and unlike upstream we include the node name for URL pods
/// too, so that nodes reading one URL give its pods different UIDs.
#[must_use]
pub fn origin_pod_uid(pod: &Pod, node_name: &str, origin: Origin<'_>) -> String {
    // Serialising k8s-openapi types cannot fail (every map key is a string);
    // the Debug fallback keeps this total without a panic path.
    let json = serde_json::to_vec(pod).unwrap_or_else(|_| format!("{pod:?}").into_bytes());
    let mut hasher = Sha256::new();
    hasher.update(&json);
    hasher.update(b"\n");
    hasher.update(format!("host:{node_name}").as_bytes());
    match origin {
        Origin::Url(url) => hasher.update(format!("url:{url}").as_bytes()),
        Origin::Push => hasher.update(b"push:"),
    }
    let digest = hasher.finalize();
    hex::encode(&digest[..16])
}

/// Gives a parsed, defaulted pod the identity of a pod from `origin`: UID
/// (unless set), `<name>-<node>` name, `default` namespace, `spec.nodeName`,
/// the config annotations and the `Pending` phase.
pub fn apply_origin_identity(pod: &mut Pod, node_name: &str, origin: Origin<'_>, seen: SystemTime) {
    if pod.metadata.uid.as_deref().unwrap_or("").is_empty() {
        pod.metadata.uid = Some(origin_pod_uid(pod, node_name, origin));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or("");
    pod.metadata.name = Some(suffixed_name(name, node_name));
    if pod.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        pod.metadata.namespace = Some("default".to_owned());
    }
    pod.spec.get_or_insert_with(PodSpec::default).node_name = Some(node_name.to_owned());
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), uid);
    annotations.insert(
        CONFIG_SOURCE_ANNOTATION.to_owned(),
        origin.source().to_owned(),
    );
    annotations.insert(CONFIG_SEEN_ANNOTATION.to_owned(), rfc3339_nanos(seen));
    pod.status.get_or_insert_with(PodStatus::default).phase = Some("Pending".to_owned());
}

/// Upstream `generatePodName`: `<name>-<lower-cased node name>`.
#[must_use]
pub fn suffixed_name(name: &str, node_name: &str) -> String {
    format!("{name}-{}", node_name.to_lowercase())
}

/// Parses, defaults, identifies and validates every pod document of a body
/// from `origin`. Errors are labelled with [`Origin::label`].
#[must_use]
pub fn load_pods_at(
    bytes: &[u8],
    origin: Origin<'_>,
    node_name: &str,
    seen: SystemTime,
) -> FileLoad {
    crate::static_pod::load_pods_with(bytes, origin.label(), |pod| {
        apply_origin_identity(pod, node_name, origin, seen);
    })
}

/// Carries `config.seen` over from the previous version of each pod with the
/// same UID, so an unchanged pod compares equal to what was already sent.
#[must_use]
pub fn keep_first_seen(mut pods: Vec<Pod>, old: &[Pod]) -> Vec<Pod> {
    for pod in &mut pods {
        let Some(previous) = old.iter().find(|p| p.metadata.uid == pod.metadata.uid) else {
            continue;
        };
        let seen = previous
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CONFIG_SEEN_ANNOTATION))
            .cloned();
        if let (Some(seen), Some(annotations)) = (seen, pod.metadata.annotations.as_mut()) {
            annotations.insert(CONFIG_SEEN_ANNOTATION.to_owned(), seen);
        }
    }
    pods
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: app
    image: busybox:1.36
";

    fn load(bytes: &str, origin: Origin<'_>, node: &str) -> FileLoad {
        load_pods_at(bytes.as_bytes(), origin, node, UNIX_EPOCH)
    }

    #[test]
    fn url_identity_is_upstreams_without_the_toleration() {
        let loaded = load(POD, Origin::Url("http://127.0.0.1/m"), "Node-1");
        assert_eq!(loaded.errors, []);
        let pod = &loaded.pods[0];
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("Node-1"));
        assert_eq!(spec.tolerations, None, "only file pods get the toleration");
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[CONFIG_SOURCE_ANNOTATION], "http");
        assert_eq!(
            &annotations[CONFIG_HASH_ANNOTATION],
            pod.metadata.uid.as_ref().unwrap()
        );
        assert_eq!(
            pod.status.as_ref().unwrap().phase.as_deref(),
            Some("Pending")
        );
        let pushed = load(POD, Origin::Push, "Node-1");
        let annotations = pushed.pods[0].metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[CONFIG_SOURCE_ANNOTATION], "http-push");
    }

    #[test]
    fn uid_depends_on_content_node_and_origin_but_not_time() {
        let uid = |text: &str, origin, node| load(text, origin, node).pods[0].metadata.uid.clone();
        let url = Origin::Url("http://127.0.0.1/m");
        let base = uid(POD, url, "n1");
        let later = load_pods_at(
            POD.as_bytes(),
            url,
            "n1",
            UNIX_EPOCH + Duration::from_secs(9),
        );
        assert_eq!(later.pods[0].metadata.uid, base);
        assert_ne!(uid(&POD.replace("1.36", "1.37"), url, "n1"), base);
        assert_ne!(uid(POD, url, "n2"), base);
        assert_ne!(uid(POD, Origin::Url("http://127.0.0.1/other"), "n1"), base);
        assert_ne!(uid(POD, Origin::Push, "n1"), base);
        // A file with the URL as its path is still a different pod.
        let file =
            crate::load_static_pods_at(POD.as_bytes(), "http://127.0.0.1/m", "n1", UNIX_EPOCH);
        assert_ne!(file.pods[0].metadata.uid, base);
    }

    #[test]
    fn errors_are_labelled_with_the_origin() {
        let bad = POD.replace("busybox:1.36", "''");
        let loaded = load(&bad, Origin::Url("http://h/m"), "n");
        assert_eq!(
            loaded.errors[0].to_string(),
            "http://h/m: document 0: invalid pod \"web-n\": spec.containers[0].image: Required value"
        );
        let loaded = load("kind: [", Origin::Push, "n");
        assert!(
            loaded.errors[0]
                .to_string()
                .starts_with("request body: document 0: invalid YAML"),
            "{}",
            loaded.errors[0]
        );
    }

    #[test]
    fn first_seen_is_carried_over_by_uid() {
        let old = load(POD, Origin::Push, "n").pods;
        let new = load_pods_at(
            POD.as_bytes(),
            Origin::Push,
            "n",
            UNIX_EPOCH + Duration::from_secs(5),
        )
        .pods;
        assert_ne!(new, old);
        assert_eq!(keep_first_seen(new, &old), old);
    }
}
