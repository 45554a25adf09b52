//! From a manifest's bytes to the pods it yields: [`load_pods_at`] parses,
//! defaults, gives each pod its identity ([`crate::identity`]) and validates it,
//! for every source; [`load_static_pods`] is that path for a manifest file, and
//! [`static_pod_uid`] and [`apply_static_identity`] the file case of the identity.

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;

use crate::defaults::default_pod;
use crate::identity::{Origin, apply_identity, pod_uid};
use crate::objects::{default_object, validate_object};
use crate::parse::ApiObject;
use crate::parse::{ParseError, parse_manifests};
use crate::validate::{FieldError, validate_pod};

/// What one manifest file yields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileLoad {
    /// The valid pods, defaulted and with their static identity, in file order.
    pub pods: Vec<Pod>,
    /// The valid ConfigMap and Secret documents, defaulted, in file order (what the
    /// pods may mount and reference standalone).
    pub objects: Vec<ApiObject>,
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
        "{path}: document {index}: skipping kind {kind:?} (apiVersion {api_version:?}): only v1 Pod, ConfigMap and Secret manifests are supported"
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
    /// A ConfigMap or Secret that failed validation; every field error is listed.
    #[error("{path}: document {index}: invalid {kind} {name:?}: {}", list(.errors))]
    InvalidObject {
        /// The file.
        path: String,
        /// The document's index in the file.
        index: usize,
        /// `ConfigMap` or `Secret`.
        kind: String,
        /// The object's name.
        name: String,
        /// Every problem found.
        errors: Vec<FieldError>,
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
    load_pods_at(bytes, Origin::File(path), node_name, seen)
}

/// Parses, defaults, identifies and validates every pod document of a manifest
/// from `origin`; the one path of every source. Errors are labelled with
/// [`Origin::label`] (the file path, the URL, or "request body").
#[must_use]
pub fn load_pods_at(
    bytes: &[u8],
    origin: Origin<'_>,
    node_name: &str,
    seen: SystemTime,
) -> FileLoad {
    let label = origin.label();
    let documents = match parse_manifests(bytes, label) {
        Ok(documents) => documents,
        Err(e) => {
            return FileLoad {
                pods: Vec::new(),
                objects: Vec::new(),
                errors: vec![e.into()],
            };
        }
    };
    let mut load = FileLoad::default();
    for document in documents {
        if let Some(mut object) = document.object {
            default_object(&mut object);
            let errors = validate_object(&object);
            if errors.is_empty() {
                load.objects.push(object);
            } else {
                load.errors.push(ManifestError::InvalidObject {
                    path: label.to_owned(),
                    index: document.index,
                    kind: document.kind,
                    name: crate::objects::name(&object).to_owned(),
                    errors,
                });
            }
            continue;
        }
        let Some(mut pod) = document.pod else {
            load.errors.push(ManifestError::UnsupportedKind {
                path: label.to_owned(),
                index: document.index,
                kind: document.kind,
                api_version: document.api_version,
            });
            continue;
        };
        // Upstream order: the decoder defaults, applyDefaults hashes and renames,
        // then the result is validated.
        default_pod(&mut pod);
        apply_identity(&mut pod, node_name, origin, seen);
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

/// The UID of a static pod with no `metadata.uid` (see [`pod_uid`]): a hash of
/// the pod as written, the node name and the file path.
#[must_use]
pub fn static_pod_uid(pod: &Pod, node_name: &str, source_path: &str) -> String {
    pod_uid(pod, node_name, Origin::File(source_path))
}

/// Gives a parsed, defaulted pod its static identity ([`apply_identity`] for a
/// file): UID (unless set), `<name>-<node>` name, `default` namespace,
/// `spec.nodeName`, the config annotations, the NoExecute toleration and the
/// `Pending` phase.
pub fn apply_static_identity(pod: &mut Pod, node_name: &str, source_path: &str, seen: SystemTime) {
    apply_identity(pod, node_name, Origin::File(source_path), seen);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::identity::{
        CONFIG_HASH_ANNOTATION, CONFIG_SEEN_ANNOTATION, CONFIG_SOURCE_ANNOTATION, rfc3339_nanos,
    };
    use k8s_openapi::api::core::v1::Toleration;
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
            "{POD}---\napiVersion: apps/v1\nkind: Deployment\n---\n{}",
            POD.replace("name: web", "name: bad")
                .replace("image: busybox:1.36", "image: ''")
        );
        let loaded = load(&manifest);
        assert_eq!(loaded.pods.len(), 1);
        let texts: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "/etc/manifests/web.yaml: document 1: skipping kind \"Deployment\" (apiVersion \"apps/v1\"): only v1 Pod, ConfigMap and Secret manifests are supported",
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

    #[test]
    fn a_ten_megabyte_annotation_is_refused_like_the_apiserver_does() {
        let huge = "x".repeat(10 << 20);
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations:\n    big: {huge}\nspec:\n  containers:\n  - name: app\n    image: busybox\n"
        );
        // Too large for a manifest before it is even parsed ...
        let loaded = load(&manifest);
        assert!(loaded.pods.is_empty());
        assert!(
            loaded.errors[0]
                .to_string()
                .contains("larger than 3145728 bytes")
        );
        // ... and 300 KiB, within the manifest limit, is over the annotation limit.
        let manifest = manifest.replace(&huge, &"x".repeat(300 << 10));
        let loaded = load(&manifest);
        assert!(loaded.pods.is_empty());
        assert_eq!(
            loaded.errors[0].to_string(),
            "/etc/manifests/web.yaml: document 0: invalid pod \"web-node-1\": metadata.annotations: Too long: may not be more than 262144 bytes"
        );
    }
}
