//! Pod identity for every source, after upstream's `applyDefaults`
//! (`pkg/kubelet/config/common.go`): the UID hash, the `<name>-<node>` name, the
//! `default` namespace, `spec.nodeName`, the `config.hash`/`config.source`/
//! `config.seen` annotations (the last two added by upstream's pod config merge)
//! and the `Pending` phase. Manifest files ([`Origin::File`]) also get the NoExecute
//! toleration, which upstream adds to file pods only (`isFile`).
//!
//! One path serves the three origins (file, manifest URL, push API), so they can only
//! differ where upstream makes them differ: the toleration and what the UID hashes.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus, Toleration};
use sha2::{Digest, Sha256};

/// Annotation naming the source a pod came from.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// Annotation holding the static pod's hash (its UID).
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Annotation holding when the agent first saw the pod.
pub const CONFIG_SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";
/// The source name of manifest files (`kubetypes.FileSource`).
pub const FILE_SOURCE: &str = "file";
/// The source name of the manifest URL (`kubetypes.HTTPSource`).
pub const HTTP_SOURCE: &str = "http";
/// The source name of pods pushed to the agent's API. Upstream has no such
/// source (its kubelet API never accepted pods); `api` is upstream's name for
/// pods from the apiserver and would make them look like non-static pods, so
/// pushed pods get a name of their own.
pub const PUSH_SOURCE: &str = "http-push";
/// The source name of pods bound to this node in the apiserver
/// (`kubetypes.ApiserverSource`).
pub const API_SOURCE: &str = "api";
/// Annotation marking a mirror pod, the apiserver's copy of a static pod; its value
/// is the static pod's `config.hash` (upstream's `ConfigMirrorAnnotationKey`).
pub const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether `pod` is a static pod: one from any source but the apiserver (upstream's
/// `IsStaticPod`). A pod with no `config.source` annotation came from no source
/// this agent knows, so it is not static.
#[must_use]
pub fn is_static_pod(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .is_some_and(|s| s != API_SOURCE)
}

/// Whether `pod` is a mirror pod (upstream's `IsMirrorPod`).
#[must_use]
pub fn is_mirror_pod(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR_ANNOTATION))
}

/// Where a pod came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// Read from this manifest file (`--pod-manifest-path`).
    File(&'a str),
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
            Self::File(_) => FILE_SOURCE,
            Self::Url(_) => HTTP_SOURCE,
            Self::Push => PUSH_SOURCE,
        }
    }

    /// How errors name where the bytes came from.
    #[must_use]
    pub fn label(&self) -> &str {
        match self {
            Self::File(path) => path,
            Self::Url(url) => url,
            Self::Push => "request body",
        }
    }
}

/// The UID of a pod from `origin` with no `metadata.uid`: a hash of the pod as
/// written (after defaulting, before any identity is applied), the node name
/// and the origin, so that an edit gives a new UID (the pod is replaced) while
/// an unchanged manifest keeps its UID across agent restarts.
///
/// Upstream takes the MD5 of Go's JSON encoding of the pod followed by
/// `host:<node>file:<path>` (files) or `url:<url>` (URLs). Go's encoder orders
/// fields by struct declaration and k8s-openapi does not, so the bytes (and thus
/// the UID) can never match upstream's exactly; we keep the recipe and use
/// SHA-256, truncated to the same 32 hex digits. Unlike upstream the node name
/// is hashed for URL pods too, so that nodes reading one URL give its pods
/// different UIDs.
#[must_use]
pub fn pod_uid(pod: &Pod, node_name: &str, origin: Origin<'_>) -> String {
    // Serialising k8s-openapi types cannot fail (every map key is a string);
    // the Debug fallback keeps this total without a panic path.
    let json = serde_json::to_vec(pod).unwrap_or_else(|_| format!("{pod:?}").into_bytes());
    let mut hasher = Sha256::new();
    hasher.update(&json);
    hasher.update(b"\n"); // Go's json.Encoder ends every value with a newline.
    hasher.update(format!("host:{node_name}").as_bytes());
    match origin {
        Origin::File(path) => hasher.update(format!("file:{path}").as_bytes()),
        Origin::Url(url) => hasher.update(format!("url:{url}").as_bytes()),
        Origin::Push => hasher.update(b"push:"),
    }
    let digest = hasher.finalize();
    hex::encode(&digest[..16])
}

/// Gives a parsed, defaulted pod the identity of a pod from `origin`: UID
/// (unless set), `<name>-<node>` name, `default` namespace, `spec.nodeName`,
/// the config annotations, the `Pending` phase, and for files the NoExecute
/// toleration.
pub fn apply_identity(pod: &mut Pod, node_name: &str, origin: Origin<'_>, seen: SystemTime) {
    if pod.metadata.uid.as_deref().unwrap_or("").is_empty() {
        pod.metadata.uid = Some(pod_uid(pod, node_name, origin));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or("");
    pod.metadata.name = Some(suffixed_name(name, node_name));
    if pod.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        pod.metadata.namespace = Some("default".to_owned());
    }
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.node_name = Some(node_name.to_owned());
    if matches!(origin, Origin::File(_)) {
        // Static pods must not be evicted by the taint manager when the node has problems.
        add_or_update_toleration(
            spec,
            Toleration {
                operator: Some("Exists".to_owned()),
                effect: Some("NoExecute".to_owned()),
                ..Toleration::default()
            },
        );
    }
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

/// Upstream `AddOrUpdateTolerationInPod`: a toleration matching on key,
/// operator, value and effect is replaced unless identical; otherwise appended.
fn add_or_update_toleration(spec: &mut PodSpec, toleration: Toleration) {
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    let matches = |t: &Toleration| {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        s(&t.key) == s(&toleration.key)
            && s(&t.effect) == s(&toleration.effect)
            && s(&t.operator) == s(&toleration.operator)
            && s(&t.value) == s(&toleration.value)
    };
    let mut updated = false;
    for existing in tolerations.iter_mut() {
        if matches(existing) {
            *existing = toleration.clone();
            updated = true;
        }
    }
    if !updated {
        tolerations.push(toleration);
    }
}

/// `RFC3339NanoFixed` in UTC, e.g. `2024-05-01T12:00:00.000000001Z`, the
/// format of upstream's `config.seen`.
#[must_use]
pub fn rfc3339_nanos(time: SystemTime) -> String {
    // Times before 1970 do not occur on a running node; clamp rather than fail.
    let ts = jiff::Timestamp::try_from(time).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!(
        "{}.{:09}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        ts.subsec_nanosecond()
    )
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
    use crate::static_pod::{FileLoad, load_pods_at};
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
