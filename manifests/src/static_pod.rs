//! Static pod identity, as the kubelet gives it to pods read from manifest
//! files (`pkg/kubelet/config/common.go` `applyDefaults`, plus the
//! `config.source`/`config.seen` annotations the pod config merge adds),
//! and [`load_static_pods`], which takes one file's bytes to the pods it yields.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus, Toleration};
use sha2::{Digest, Sha256};

use crate::defaults::default_pod;
use crate::parse::{ParseError, parse_manifests};
use crate::validate::{FieldError, validate_pod};

/// Annotation naming the source a pod came from.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// Annotation holding the static pod's hash (its UID).
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Annotation holding when the agent first saw the pod.
pub const CONFIG_SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";
/// The source name of manifest files (`kubetypes.FileSource`).
pub const FILE_SOURCE: &str = "file";

/// What one manifest file yields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileLoad {
    /// The valid pods, defaulted and with their static identity, in file order.
    pub pods: Vec<Pod>,
    /// Documents that were skipped or rejected.
    pub errors: Vec<ManifestError>,
}

impl FileLoad {
    /// Whether any error makes the file unusable as a whole (a parse error or
    /// an invalid pod), as opposed to non-pod documents that were skipped.
    #[must_use]
    pub fn has_fatal_errors(&self) -> bool {
        self.errors.iter().any(ManifestError::is_fatal)
    }
}

/// A document of a manifest file that did not become a pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be parsed (the error names file and document).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A document of another kind, skipped as upstream does.
    #[error(
        "{path}: document {index}: skipping kind {kind:?} (apiVersion {api_version:?}): only v1 Pod manifests are supported"
    )]
    UnsupportedKind {
        /// The file.
        path: String,
        /// The document's index in the file.
        index: usize,
        /// Its `kind`.
        kind: String,
        /// Its `apiVersion`.
        api_version: String,
    },
    /// A pod that failed validation; every field error is listed.
    #[error("{path}: document {index}: invalid pod {name:?}: {}", list(.errors))]
    Invalid {
        /// The file.
        path: String,
        /// The document's index in the file.
        index: usize,
        /// The pod's name (after the node suffix was added).
        name: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
}

impl ManifestError {
    /// Whether this error means the file's content is broken (rather than a
    /// document that is merely not a pod).
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::UnsupportedKind { .. })
    }
}

/// Renders field errors like upstream's aggregate: the error alone, or `[a, b]`.
fn list(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => {
            let texts: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("[{}]", texts.join(", "))
        }
    }
}

/// Parses, defaults, identifies and validates every pod document in one
/// manifest file, stamping `config.seen` with the current time.
#[must_use]
pub fn load_static_pods(bytes: &[u8], path: &str, node_name: &str) -> FileLoad {
    load_static_pods_at(bytes, path, node_name, SystemTime::now())
}

/// [`load_static_pods`] with an explicit `config.seen` time.
#[must_use]
pub fn load_static_pods_at(
    bytes: &[u8],
    path: &str,
    node_name: &str,
    seen: SystemTime,
) -> FileLoad {
    // Upstream order: the decoder defaults, applyDefaults hashes and renames, then
    // the result is validated.
    load_pods_with(bytes, path, |pod| {
        apply_static_identity(pod, node_name, path, seen);
    })
}

/// Parses, defaults, identifies (with `identify`) and validates every pod document of
/// one manifest; the shared path of every source. `label` names the origin (a file
/// path or URL) in errors.
pub(crate) fn load_pods_with(bytes: &[u8], label: &str, identify: impl Fn(&mut Pod)) -> FileLoad {
    let documents = match parse_manifests(bytes, label) {
        Ok(documents) => documents,
        Err(e) => {
            return FileLoad {
                pods: Vec::new(),
                errors: vec![e.into()],
            };
        }
    };
    let mut load = FileLoad::default();
    for document in documents {
        let Some(mut pod) = document.pod else {
            load.errors.push(ManifestError::UnsupportedKind {
                path: label.to_owned(),
                index: document.index,
                kind: document.kind,
                api_version: document.api_version,
            });
            continue;
        };
        default_pod(&mut pod);
        identify(&mut pod);
        let errors = validate_pod(&pod);
        if errors.is_empty() {
            load.pods.push(pod);
        } else {
            load.errors.push(ManifestError::Invalid {
                path: label.to_owned(),
                index: document.index,
                name: pod.metadata.name.unwrap_or_default(),
                errors,
            });
        }
    }
    load
}

/// The UID of a static pod with no `metadata.uid`: a hash of the pod as
/// written (after defaulting, before any identity is applied), the node name
/// and the file path, so that an edit gives a new UID (the pod is replaced)
/// while an unchanged file keeps its UID across agent restarts.
///
/// Upstream takes the MD5 of Go's JSON encoding of the pod followed by
/// `host:<node>file:<path>`. Go's encoder orders fields by struct declaration
/// and k8s-openapi does not, so the bytes (and thus the UID) can never match
/// upstream's exactly; we keep the recipe and use SHA-256, which the crate
/// already depends on, truncated to the same 32 hex digits.
#[must_use]
pub fn static_pod_uid(pod: &Pod, node_name: &str, source_path: &str) -> String {
    // Serialising k8s-openapi types cannot fail (every map key is a string);
    // the Debug fallback keeps this total without a panic path.
    let json = serde_json::to_vec(pod).unwrap_or_else(|_| format!("{pod:?}").into_bytes());
    let mut hasher = Sha256::new();
    hasher.update(&json);
    hasher.update(b"\n"); // Go's json.Encoder ends every value with a newline.
    hasher.update(format!("host:{node_name}").as_bytes());
    hasher.update(format!("file:{source_path}").as_bytes());
    let digest = hasher.finalize();
    hex::encode(&digest[..16])
}

/// Gives a parsed, defaulted pod its static identity: UID (unless set),
/// `<name>-<node>` name, `default` namespace, `spec.nodeName`, the config
/// annotations, the NoExecute toleration and the `Pending` phase.
pub fn apply_static_identity(pod: &mut Pod, node_name: &str, source_path: &str, seen: SystemTime) {
    if pod.metadata.uid.as_deref().unwrap_or("").is_empty() {
        pod.metadata.uid = Some(static_pod_uid(pod, node_name, source_path));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or("");
    pod.metadata.name = Some(format!("{name}-{}", node_name.to_lowercase()));
    if pod.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        pod.metadata.namespace = Some("default".to_owned());
    }
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.node_name = Some(node_name.to_owned());
    // Static pods must not be evicted by the taint manager when the node has problems.
    add_or_update_toleration(
        spec,
        Toleration {
            operator: Some("Exists".to_owned()),
            effect: Some("NoExecute".to_owned()),
            ..Toleration::default()
        },
    );
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), uid);
    annotations.insert(CONFIG_SOURCE_ANNOTATION.to_owned(), FILE_SOURCE.to_owned());
    annotations.insert(CONFIG_SEEN_ANNOTATION.to_owned(), rfc3339_nanos(seen));
    pod.status.get_or_insert_with(PodStatus::default).phase = Some("Pending".to_owned());
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

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn load(bytes: &str) -> FileLoad {
        load_static_pods_at(bytes.as_bytes(), "/etc/manifests/web.yaml", "Node-1", at(0))
    }

    #[test]
    fn identity_is_applied() {
        let loaded = load(POD);
        assert_eq!(loaded.errors, []);
        let pod = &loaded.pods[0];
        let uid = pod.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        assert!(uid.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("Node-1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            spec.tolerations.as_deref().unwrap(),
            [Toleration {
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                ..Default::default()
            }]
        );
        let annotations = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], uid);
        assert_eq!(annotations[CONFIG_SOURCE_ANNOTATION], "file");
        assert_eq!(
            annotations[CONFIG_SEEN_ANNOTATION],
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(
            pod.status.as_ref().unwrap().phase.as_deref(),
            Some("Pending")
        );
    }

    #[test]
    fn uid_depends_on_content_node_and_path_but_not_time() {
        let base = load(POD).pods[0].metadata.uid.clone();
        let later =
            load_static_pods_at(POD.as_bytes(), "/etc/manifests/web.yaml", "Node-1", at(99));
        assert_eq!(
            later.pods[0].metadata.uid, base,
            "config.seen must not feed the hash"
        );
        let reformatted = load(&POD.replace("name: web", "name:   web  # same"));
        assert_eq!(
            reformatted.pods[0].metadata.uid, base,
            "formatting is not content"
        );
        let edited = load(&POD.replace("1.36", "1.37"));
        assert_ne!(edited.pods[0].metadata.uid, base);
        let other_node =
            load_static_pods_at(POD.as_bytes(), "/etc/manifests/web.yaml", "n2", at(0));
        assert_ne!(other_node.pods[0].metadata.uid, base);
        let other_path =
            load_static_pods_at(POD.as_bytes(), "/etc/manifests/x.yaml", "Node-1", at(0));
        assert_ne!(other_path.pods[0].metadata.uid, base);
    }

    #[test]
    fn explicit_uid_and_namespace_are_kept() {
        let loaded = load(&POD.replace(
            "  name: web\n",
            "  name: web\n  uid: abc\n  namespace: kube-system\n",
        ));
        let pod = &loaded.pods[0];
        assert_eq!(pod.metadata.uid.as_deref(), Some("abc"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION],
            "abc"
        );
    }

    #[test]
    fn existing_matching_toleration_is_replaced() {
        let manifest = format!(
            "{POD}  tolerations:\n  - operator: Exists\n    effect: NoExecute\n    tolerationSeconds: 5\n  - key: k\n    operator: Exists\n"
        );
        let loaded = load(&manifest);
        let tolerations = loaded.pods[0]
            .spec
            .as_ref()
            .unwrap()
            .tolerations
            .clone()
            .unwrap();
        assert_eq!(tolerations.len(), 2);
        assert_eq!(tolerations[0].toleration_seconds, None);
        assert_eq!(tolerations[1].key.as_deref(), Some("k"));
    }

    #[test]
    fn mixed_file_reports_every_problem() {
        let manifest = format!(
            "{POD}---\napiVersion: v1\nkind: ConfigMap\n---\n{}",
            POD.replace("name: web", "name: bad")
                .replace("image: busybox:1.36", "image: ''")
        );
        let loaded = load(&manifest);
        assert_eq!(loaded.pods.len(), 1);
        let texts: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "/etc/manifests/web.yaml: document 1: skipping kind \"ConfigMap\" (apiVersion \"v1\"): only v1 Pod manifests are supported",
                "/etc/manifests/web.yaml: document 2: invalid pod \"bad-node-1\": spec.containers[0].image: Required value",
            ]
        );
        assert!(!loaded.errors[0].is_fatal());
        assert!(loaded.errors[1].is_fatal());
        assert!(loaded.has_fatal_errors());
    }

    #[test]
    fn several_field_errors_are_listed() {
        let manifest = POD.replace(
            "image: busybox:1.36",
            "image: ''\n  - name: app\n    image: x",
        );
        let text = load(&manifest).errors[0].to_string();
        assert_eq!(
            text,
            "/etc/manifests/web.yaml: document 0: invalid pod \"web-node-1\": [spec.containers[0].image: Required value, spec.containers[1].name: Duplicate value: \"app\"]"
        );
    }

    #[test]
    fn parse_errors_are_fatal() {
        let loaded = load("kind: Pod\napiVersion: v1\nspec: [\n");
        assert!(loaded.pods.is_empty());
        assert!(loaded.has_fatal_errors());
        assert!(
            loaded.errors[0]
                .to_string()
                .starts_with("/etc/manifests/web.yaml: document 0: invalid YAML")
        );
    }

    #[test]
    fn timestamps() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000000005Z"),
            (1_714_564_800, 123_456_789, "2024-05-01T12:00:00.123456789Z"),
            (4_102_444_799, 999_999_999, "2099-12-31T23:59:59.999999999Z"),
        ];
        for (secs, nanos, text) in cases {
            let time = UNIX_EPOCH + Duration::new(secs, nanos);
            assert_eq!(rfc3339_nanos(time), text);
        }
    }
}
