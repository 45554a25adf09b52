//! HTTP push: the state and rules behind the agent's `POST /pods` and
//! `DELETE /pods/<namespace>/<name>`, without the HTTP server.
//!
//! A body holds a Pod, a `List`/`PodList` of pods, or several YAML documents,
//! in YAML or JSON. Every pod is defaulted, given the identity of a static pod
//! from source `"http-push"` ([`nodelet_manifests::PUSH_SOURCE`]; upstream has no
//! such source) and validated; the body is all or nothing. Errors come back as
//! the apiserver's `v1.Status` (`422 Invalid` with a cause per field error,
//! `400 BadRequest`, `404 NotFound`, `415 UnsupportedMediaType`), built in one
//! place, [`PushError::status`].
//!
//! Pushed pods are named like static pods, `<name>-<node>`, and are keyed by
//! namespace and that name: pushing a pod of the same name replaces it (an
//! identical push keeps its UID, so the pod is not restarted).
//!
//! A body may also hold `v1` ConfigMap and Secret documents, which pushed and other
//! standalone pods mount and reference, as beside the pods of a manifest file:
//! defaulted and validated the same way (an invalid one refuses the body, 422 with
//! its field paths), kept under their own name by kind, namespace and name (pushing
//! one again replaces it, and the change reaches running pods) and removed with
//! `DELETE /configmaps/<namespace>/<name>` or `DELETE /secrets/<namespace>/<name>`.
//! [`PushStore::objects_event`] is sent before the pods' snapshot.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};
use nodelet_manifests::ApiObject;
use nodelet_manifests::objects::{default_object, validate_object};

use nodelet_manifests::validate::go_quote;
use nodelet_manifests::{
    FieldError, FieldErrorKind, MAX_MANIFEST_BYTES, Origin, PUSH_SOURCE, ParseError, SourceEvent,
    apply_identity, default_pod, keep_first_seen, parse_manifests, suffixed_name, validate_pod,
};

/// The media types a push body may be declared as (parameters such as
/// `charset` are ignored); the format itself is detected from the body.
pub const ACCEPTED_MEDIA_TYPES: [&str; 5] = [
    "application/json",
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
];

/// A pod of a push body that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPod {
    /// The pod's document index in the body.
    pub index: usize,
    /// The pod's name (after the node suffix was added).
    pub name: String,
    /// Every problem found, with field paths relative to the pod.
    pub errors: Vec<FieldError>,
}

/// Why a push or a delete was refused. [`PushError::code`] and
/// [`PushError::status`] give the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// A `Content-Type` that is neither JSON nor YAML (415).
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {}",
        ACCEPTED_MEDIA_TYPES.join(", ")
    )]
    UnsupportedMediaType {
        /// The declared type.
        content_type: String,
    },
    /// A body larger than [`MAX_MANIFEST_BYTES`] (413), refused before parsing.
    #[error("Request entity too large: limit is {MAX_MANIFEST_BYTES}")]
    TooLarge,
    /// The body does not parse (400).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A document that is not a v1 Pod, ConfigMap or Secret (400).
    #[error(
        "request body: document {index}: kind {kind:?} (apiVersion {api_version:?}) is not a v1 Pod, ConfigMap or Secret"
    )]
    NotAPod {
        /// The document's index.
        index: usize,
        /// Its `kind`.
        kind: String,
        /// Its `apiVersion`.
        api_version: String,
    },
    /// A body with no document at all (400).
    #[error("request body: no pod in the request body")]
    Empty,
    /// A ConfigMap or Secret that failed validation (422).
    #[error("{kind} {} is invalid: {}", go_quote(.name), aggregate(.errors))]
    InvalidObject {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Every problem found, with field paths relative to the object.
        errors: Vec<FieldError>,
    },
    /// One or more pods failed validation (422).
    #[error("{}", invalid_message(.pods))]
    Invalid {
        /// The invalid pods, in body order.
        pods: Vec<InvalidPod>,
        /// Whether the body held several documents; causes' fields are then
        /// prefixed with `items[<index>].`.
        several: bool,
    },
    /// No pushed pod (or ConfigMap, Secret) of that namespace and name (404).
    #[error("{kind} {} not found", go_quote(.name))]
    NotFound {
        /// The resource: `pods`, `configmaps` or `secrets`.
        kind: &'static str,
        /// The namespace asked for.
        namespace: String,
        /// The name asked for.
        name: String,
    },
}

impl PushError {
    /// The HTTP status code of the answer.
    #[must_use]
    pub fn code(&self) -> u16 {
        match self {
            Self::UnsupportedMediaType { .. } => 415,
            Self::TooLarge => 413,
            Self::Parse(_) | Self::NotAPod { .. } | Self::Empty => 400,
            Self::Invalid { .. } | Self::InvalidObject { .. } => 422,
            Self::NotFound { .. } => 404,
        }
    }

    /// The body of the answer: a `v1.Status` as the apiserver words it.
    #[must_use]
    pub fn status(&self) -> Status {
        let (reason, details) = match self {
            Self::UnsupportedMediaType { .. } => ("UnsupportedMediaType", None),
            Self::TooLarge => ("RequestEntityTooLarge", None),
            Self::Parse(_) | Self::NotAPod { .. } | Self::Empty => ("BadRequest", None),
            Self::Invalid { pods, several } => ("Invalid", Some(invalid_details(pods, *several))),
            Self::InvalidObject { kind, name, errors } => (
                "Invalid",
                Some(StatusDetails {
                    name: Some(name.clone()),
                    kind: Some((*kind).to_owned()),
                    causes: Some(errors.iter().map(cause).collect()),
                    ..StatusDetails::default()
                }),
            ),
            Self::NotFound { name, kind, .. } => (
                "NotFound",
                Some(StatusDetails {
                    name: Some(name.clone()),
                    kind: Some((*kind).to_owned()),
                    ..StatusDetails::default()
                }),
            ),
        };
        Status {
            status: Some("Failure".to_owned()),
            message: Some(self.to_string()),
            reason: Some(reason.to_owned()),
            details,
            code: Some(i32::from(self.code())),
            ..Status::default()
        }
    }
}

/// Upstream `field.ErrorType` strings, the `reason` of a `StatusCause`.
fn cause_reason(kind: &FieldErrorKind) -> &'static str {
    match kind {
        FieldErrorKind::Required => "FieldValueRequired",
        FieldErrorKind::Invalid { .. } => "FieldValueInvalid",
        FieldErrorKind::Duplicate { .. } => "FieldValueDuplicate",
        FieldErrorKind::NotSupported { .. } => "FieldValueNotSupported",
        FieldErrorKind::NotFound { .. } => "FieldValueNotFound",
        FieldErrorKind::Forbidden => "FieldValueForbidden",
        FieldErrorKind::TooLong { .. } => "FieldValueTooLong",
    }
}

/// `apierrors.NewInvalid`'s details: kind `Pod`, the name when one pod is
/// invalid, and a cause per field error whose message is upstream's
/// `ErrorBody` (the error without its field path).
fn invalid_details(pods: &[InvalidPod], several: bool) -> StatusDetails {
    let causes = pods
        .iter()
        .flat_map(|pod| {
            pod.errors.iter().map(move |error| {
                let mut cause = cause(error);
                if several {
                    cause.field = Some(format!("items[{}].{}", pod.index, error.path));
                }
                cause
            })
        })
        .collect();
    StatusDetails {
        name: match pods {
            [one] => Some(one.name.clone()),
            _ => None,
        },
        kind: Some("Pod".to_owned()),
        causes: Some(causes),
        ..StatusDetails::default()
    }
}

/// A `StatusCause` for one field error, whose message is upstream's `ErrorBody` (the
/// error without its field path).
fn cause(error: &FieldError) -> StatusCause {
    let text = error.to_string();
    let body = text
        .strip_prefix(&format!("{}: ", error.path))
        .unwrap_or(&text)
        .to_owned();
    StatusCause {
        reason: Some(cause_reason(&error.kind).to_owned()),
        message: Some(body),
        field: Some(error.path.clone()),
    }
}

/// `Pod "x" is invalid: <aggregate>`, once per invalid pod (several as `[a, b]`).
fn invalid_message(pods: &[InvalidPod]) -> String {
    let one = |pod: &InvalidPod| {
        format!(
            "Pod {} is invalid: {}",
            go_quote(&pod.name),
            aggregate(&pod.errors)
        )
    };
    match pods {
        [pod] => one(pod),
        many => format!("[{}]", many.iter().map(one).collect::<Vec<_>>().join(", ")),
    }
}

/// Upstream's `utilerrors.Aggregate` text: the error alone, or `[a, b]`.
fn aggregate(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => {
            let texts: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("[{}]", texts.join(", "))
        }
    }
}

/// What one push added: its pods and objects, as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pushed {
    /// The pods, in body order.
    pub pods: Vec<Pod>,
    /// The ConfigMaps and Secrets, in body order.
    pub objects: Vec<ApiObject>,
}

/// An object's kind and its key in the store.
type ObjectKey = (&'static str, String, String);

fn object_key(object: &ApiObject) -> ObjectKey {
    let (kind, meta) = match object {
        ApiObject::ConfigMap(c) => ("ConfigMap", &c.metadata),
        ApiObject::Secret(s) => ("Secret", &s.metadata),
    };
    (
        kind,
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The pods pushed so far, by namespace and (suffixed) name, and the ConfigMaps and
/// Secrets by kind, namespace and name.
#[derive(Debug, Clone)]
pub struct PushStore {
    node_name: String,
    pods: BTreeMap<(String, String), Pod>,
    objects: BTreeMap<ObjectKey, ApiObject>,
}

impl PushStore {
    /// An empty store for node `node_name`.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            pods: BTreeMap::new(),
            objects: BTreeMap::new(),
        }
    }

    /// Parses a push body (YAML or JSON; a Pod, a List, or several documents),
    /// defaults, identifies and validates every pod (and defaults and validates every
    /// ConfigMap and Secret), and on success adds them, replacing pods and objects of
    /// the same namespace and name; returns them as stored.
    ///
    /// # Errors
    /// A [`PushError`] (and nothing changes) when the content type is not JSON
    /// or YAML, the body is over the manifest limits or does not parse, holds no
    /// document or a document of another kind, or any pod or object is invalid
    /// (including two pods of one name).
    pub fn apply(&mut self, body: &[u8], content_type: Option<&str>) -> Result<Pushed, PushError> {
        self.apply_at(body, content_type, SystemTime::now())
    }

    /// [`PushStore::apply`] with an explicit `config.seen` time.
    ///
    /// # Errors
    /// As [`PushStore::apply`].
    pub fn apply_at(
        &mut self,
        body: &[u8],
        content_type: Option<&str>,
        seen: SystemTime,
    ) -> Result<Pushed, PushError> {
        check_content_type(content_type)?;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(PushError::TooLarge);
        }
        let documents = parse_manifests(body, "request body")?;
        if documents.is_empty() {
            return Err(PushError::Empty);
        }
        let several = documents.len() > 1;
        let mut pods = Vec::with_capacity(documents.len());
        let mut objects = Vec::new();
        let mut invalid = Vec::new();
        let mut names: BTreeMap<(String, String), usize> = BTreeMap::new();
        for document in documents {
            if let Some(mut object) = document.object {
                default_object(&mut object);
                let errors = validate_object(&object);
                if !errors.is_empty() {
                    let (kind, _, name) = object_key(&object);
                    return Err(PushError::InvalidObject { kind, name, errors });
                }
                objects.push(object);
                continue;
            }
            let Some(mut pod) = document.pod else {
                return Err(PushError::NotAPod {
                    index: document.index,
                    kind: document.kind,
                    api_version: document.api_version,
                });
            };
            default_pod(&mut pod);
            apply_identity(&mut pod, &self.node_name, Origin::Push, seen);
            let mut errors = validate_pod(&pod);
            let key = key_of(&pod);
            if names.insert(key.clone(), document.index).is_some() {
                errors.push(FieldError::duplicate("metadata.name", key.1.as_str()));
            }
            if errors.is_empty() {
                pods.push(pod);
            } else {
                invalid.push(InvalidPod {
                    index: document.index,
                    name: key.1,
                    errors,
                });
            }
        }
        if !invalid.is_empty() {
            return Err(PushError::Invalid {
                pods: invalid,
                several,
            });
        }
        let mut stored = Vec::with_capacity(pods.len());
        for pod in pods {
            let key = key_of(&pod);
            let previous: Vec<Pod> = self.pods.get(&key).cloned().into_iter().collect();
            let pod = keep_first_seen(vec![pod], &previous)
                .pop()
                .unwrap_or_default();
            stored.push(pod.clone());
            self.pods.insert(key, pod);
        }
        for object in &objects {
            self.objects.insert(object_key(object), object.clone());
        }
        Ok(Pushed {
            pods: stored,
            objects,
        })
    }

    /// Removes a pushed pod and returns it. `name` is the pod's name as
    /// stored (`<name>-<node>`, what `GET /pods` shows); the name as written
    /// in the pushed manifest is accepted too, and is suffixed when no pod of
    /// the exact name exists.
    ///
    /// # Errors
    /// [`PushError::NotFound`] when neither name is a pushed pod.
    pub fn delete(&mut self, namespace: &str, name: &str) -> Result<Pod, PushError> {
        let exact = (namespace.to_owned(), name.to_owned());
        let suffixed = (namespace.to_owned(), suffixed_name(name, &self.node_name));
        self.pods
            .remove(&exact)
            .or_else(|| self.pods.remove(&suffixed))
            .ok_or_else(|| PushError::NotFound {
                kind: "pods",
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
    }

    /// Removes a pushed ConfigMap (`kind` `ConfigMap`) or Secret (`Secret`) and
    /// returns it; pods using it keep what their volumes hold, as when a manifest
    /// file's document is removed.
    ///
    /// # Errors
    /// [`PushError::NotFound`] when there is none of that kind, namespace and name.
    pub fn delete_object(
        &mut self,
        kind: &'static str,
        namespace: &str,
        name: &str,
    ) -> Result<ApiObject, PushError> {
        self.objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| PushError::NotFound {
                kind: if kind == "Secret" {
                    "secrets"
                } else {
                    "configmaps"
                },
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
    }

    /// The pushed ConfigMaps and Secrets, by kind, namespace and name.
    #[must_use]
    pub fn objects(&self) -> Vec<ApiObject> {
        self.objects.values().cloned().collect()
    }

    /// The objects event to send before [`PushStore::snapshot`] after a change.
    #[must_use]
    pub fn objects_event(&self) -> SourceEvent {
        SourceEvent::Objects {
            source: PUSH_SOURCE,
            objects: self.objects(),
        }
    }

    /// The pushed pods, ordered by namespace and name.
    #[must_use]
    pub fn pods(&self) -> Vec<Pod> {
        self.pods.values().cloned().collect()
    }

    /// The snapshot to send to the pod config after a change.
    #[must_use]
    pub fn snapshot(&self) -> SourceEvent {
        SourceEvent::Snapshot {
            source: PUSH_SOURCE,
            pods: self.pods(),
        }
    }
}

fn key_of(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn check_content_type(content_type: Option<&str>) -> Result<(), PushError> {
    let Some(declared) = content_type else {
        return Ok(());
    };
    let essence = declared
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence.is_empty() || ACCEPTED_MEDIA_TYPES.contains(&essence.as_str()) {
        Ok(())
    } else {
        Err(PushError::UnsupportedMediaType {
            content_type: declared.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nodelet_manifests::{CONFIG_SEEN_ANNOTATION, CONFIG_SOURCE_ANNOTATION};
    use std::time::{Duration, UNIX_EPOCH};

    fn pod_yaml(name: &str, image: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: {image}\n"
        )
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    fn store() -> PushStore {
        PushStore::new("Node1")
    }

    #[test]
    fn valid_pod_is_stored_with_static_identity() {
        let mut s = store();
        let pods = s
            .apply(pod_yaml("web", "busybox:1").as_bytes(), None)
            .unwrap()
            .pods;
        assert_eq!(names(&pods), ["web-node1"]);
        let annotations = pods[0].metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations[CONFIG_SOURCE_ANNOTATION], "http-push");
        assert_eq!(pods[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.pods(), pods);
        assert_eq!(
            s.snapshot(),
            SourceEvent::Snapshot {
                source: "http-push",
                pods
            }
        );
    }

    #[test]
    fn json_body_and_content_types() {
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j","namespace":"ns"},"spec":{"containers":[{"name":"c","image":"i:1"}]}}"#;
        let mut s = store();
        for ct in [
            Some("application/json"),
            Some("application/yaml; charset=utf-8"),
            Some("Application/JSON"),
            None,
        ] {
            let pods = s.apply(json.as_bytes(), ct).unwrap().pods;
            assert_eq!(names(&pods), ["j-node1"], "{ct:?}");
        }
        let err = s.apply(json.as_bytes(), Some("text/plain")).unwrap_err();
        assert_eq!(err.code(), 415);
        let status = err.status();
        assert_eq!(status.reason.as_deref(), Some("UnsupportedMediaType"));
        assert_eq!(
            status.message.as_deref(),
            Some(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/x-yaml, text/yaml, text/x-yaml"
            )
        );
    }

    #[test]
    fn invalid_pod_is_a_422_status_like_the_apiservers() {
        let mut s = store();
        s.apply(pod_yaml("keep", "busybox:1").as_bytes(), None)
            .unwrap();
        let err = s.apply(pod_yaml("x", "''").as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), 422);
        let json = serde_json::to_value(err.status()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Pod \"x-node1\" is invalid: spec.containers[0].image: Required value",
                "reason": "Invalid",
                "details": {
                    "name": "x-node1",
                    "kind": "Pod",
                    "causes": [{
                        "reason": "FieldValueRequired",
                        "message": "Required value",
                        "field": "spec.containers[0].image"
                    }]
                },
                "code": 422
            })
        );
        assert_eq!(
            names(&s.pods()),
            ["keep-node1"],
            "a refused push changes nothing"
        );
    }

    #[test]
    fn several_errors_are_aggregated_with_values_in_causes() {
        let body = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n  - name: app\n    image: ''\n  - name: app\n    image: i\n    ports:\n    - containerPort: 70000\n";
        let err = store().apply(body.as_bytes(), None).unwrap_err();
        let status = err.status();
        assert_eq!(
            status.message.as_deref(),
            Some(
                "Pod \"x-node1\" is invalid: [spec.containers[0].image: Required value, spec.containers[1].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive, spec.containers[1].name: Duplicate value: \"app\"]"
            )
        );
        let causes: Vec<(String, String, String)> = status
            .details
            .unwrap()
            .causes
            .unwrap()
            .into_iter()
            .map(|c| (c.reason.unwrap(), c.field.unwrap(), c.message.unwrap()))
            .collect();
        assert_eq!(
            causes,
            [
                (
                    "FieldValueRequired".into(),
                    "spec.containers[0].image".into(),
                    "Required value".into()
                ),
                (
                    "FieldValueInvalid".into(),
                    "spec.containers[1].ports[0].containerPort".into(),
                    "Invalid value: 70000: must be between 1 and 65535, inclusive".into()
                ),
                (
                    "FieldValueDuplicate".into(),
                    "spec.containers[1].name".into(),
                    "Duplicate value: \"app\"".into()
                ),
            ]
        );
    }

    #[test]
    fn list_of_pods_is_all_or_nothing() {
        let list = |second_image: &str| {
            format!(
                "apiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: Pod, metadata: {{name: a}}, spec: {{containers: [{{name: c, image: i}}]}}}}\n- {{apiVersion: v1, kind: Pod, metadata: {{name: b, namespace: kube-system}}, spec: {{containers: [{{name: c, image: {second_image}}}]}}}}\n"
            )
        };
        let mut s = store();
        let err = s.apply(list("''").as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), 422);
        let status = err.status();
        assert_eq!(
            status.message.as_deref(),
            Some("Pod \"b-node1\" is invalid: spec.containers[0].image: Required value")
        );
        let details = status.details.unwrap();
        assert_eq!(details.name.as_deref(), Some("b-node1"));
        assert_eq!(
            details.causes.unwrap()[0].field.as_deref(),
            Some("items[1].spec.containers[0].image")
        );
        assert!(s.pods().is_empty());

        let pods = s
            .apply(list("i").as_bytes(), Some("application/yaml"))
            .unwrap()
            .pods;
        assert_eq!(names(&pods), ["a-node1", "b-node1"]);
        // Ordered by namespace, then name.
        assert_eq!(
            s.pods()
                .iter()
                .map(|p| p.metadata.namespace.clone().unwrap())
                .collect::<Vec<_>>(),
            ["default", "kube-system"]
        );
    }

    #[test]
    fn several_invalid_pods_and_duplicates() {
        let body = format!(
            "{}---\n{}---\n{}",
            pod_yaml("a", "''"),
            pod_yaml("b", "i"),
            pod_yaml("b", "j")
        );
        let err = store().apply(body.as_bytes(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "[Pod \"a-node1\" is invalid: spec.containers[0].image: Required value, Pod \"b-node1\" is invalid: metadata.name: Duplicate value: \"b-node1\"]"
        );
        let details = err.status().details.unwrap();
        assert_eq!(details.name, None);
        let fields: Vec<String> = details
            .causes
            .unwrap()
            .into_iter()
            .map(|c| c.field.unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "items[0].spec.containers[0].image",
                "items[2].metadata.name"
            ]
        );
    }

    #[test]
    fn unparseable_bodies_are_400() {
        let cases: &[(&str, &str)] = &[
            (
                "kind: Pod\nmetadata: [\n",
                "request body: document 0: invalid YAML",
            ),
            ("{\"kind\": ", "request body: document 0: invalid JSON"),
            ("", "request body: no pod in the request body"),
            (
                "# only a comment\n",
                "request body: no pod in the request body",
            ),
            (
                "apiVersion: v1\nkind: Service\n",
                "request body: document 0: kind \"Service\" (apiVersion \"v1\") is not a v1 Pod, ConfigMap or Secret",
            ),
            (
                "apiVersion: v1\nkind: Pod\nspec:\n  containers: 3\n",
                "request body: document 0: invalid Pod",
            ),
        ];
        for (body, prefix) in cases {
            let mut s = store();
            let err = s.apply(body.as_bytes(), None).unwrap_err();
            assert_eq!(err.code(), 400, "{body:?}");
            let status = err.status();
            assert_eq!(status.code, Some(400));
            assert_eq!(status.reason.as_deref(), Some("BadRequest"));
            assert_eq!(status.status.as_deref(), Some("Failure"));
            let message = status.message.unwrap();
            assert!(message.starts_with(prefix), "{body:?}: {message}");
            assert!(s.pods().is_empty());
        }
    }

    #[test]
    fn repush_replaces_and_identical_push_keeps_uid_and_seen() {
        let mut s = store();
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let first = s
            .apply_at(pod_yaml("web", "i:1").as_bytes(), None, at(1))
            .unwrap()
            .pods;
        let again = s
            .apply_at(pod_yaml("web", "i:1").as_bytes(), None, at(2))
            .unwrap()
            .pods;
        assert_eq!(again, first, "same content: same UID and config.seen");
        let edited = s
            .apply_at(pod_yaml("web", "i:2").as_bytes(), None, at(3))
            .unwrap()
            .pods;
        assert_ne!(edited[0].metadata.uid, first[0].metadata.uid);
        assert_eq!(
            edited[0].metadata.annotations.as_ref().unwrap()[CONFIG_SEEN_ANNOTATION],
            "1970-01-01T00:00:03.000000000Z"
        );
        assert_eq!(s.pods(), edited);
    }

    #[test]
    fn delete_by_either_name_and_404_when_absent() {
        let mut s = store();
        s.apply(pod_yaml("web", "i").as_bytes(), None).unwrap();
        s.apply(pod_yaml("db", "i").as_bytes(), None).unwrap();
        let removed = s.delete("default", "web-node1").unwrap();
        assert_eq!(removed.metadata.name.as_deref(), Some("web-node1"));
        let removed = s.delete("default", "db").unwrap();
        assert_eq!(removed.metadata.name.as_deref(), Some("db-node1"));
        assert!(s.pods().is_empty());

        let err = s.delete("default", "web").unwrap_err();
        assert_eq!(err.code(), 404);
        assert_eq!(
            serde_json::to_value(err.status()).unwrap(),
            serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "pods \"web\" not found",
                "reason": "NotFound",
                "details": {"name": "web", "kind": "pods"},
                "code": 404
            })
        );
        s.apply(pod_yaml("web", "i").as_bytes(), None).unwrap();
        assert_eq!(
            s.delete("other", "web").unwrap_err().code(),
            404,
            "namespaces are kept apart"
        );
    }

    #[test]
    fn bodies_past_the_manifest_limits_are_refused() {
        let mut s = store();
        let mut big = pod_yaml("web", "i");
        big.push_str(&format!("# {}\n", "x".repeat(MAX_MANIFEST_BYTES)));
        let err = s.apply(big.as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), 413);
        assert_eq!(
            serde_json::to_value(err.status()).unwrap(),
            serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Request entity too large: limit is 3145728",
                "reason": "RequestEntityTooLarge",
                "code": 413
            })
        );
        let deep = "[".repeat(100_000);
        let err = s.apply(deep.as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), 400);
        assert_eq!(
            err.to_string(),
            "request body: document 0: nested deeper than 100 levels, the limit for a manifest (at line 1 column 101)"
        );
        let empties = "---\n".repeat(10_000);
        let err = s.apply(empties.as_bytes(), None).unwrap_err();
        assert!(
            err.to_string().contains("more than 1000 documents"),
            "{err}"
        );
        let annotated = pod_yaml("web", "i").replace(
            "  name: web\n",
            &format!(
                "  name: web\n  annotations:\n    a: {}\n",
                "x".repeat(300 << 10)
            ),
        );
        let err = s.apply(annotated.as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), 422);
        assert_eq!(
            err.to_string(),
            "Pod \"web-node1\" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes"
        );
        assert!(s.pods().is_empty());
    }
}

#[cfg(test)]
mod object_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const OBJECTS: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {k: v}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns}\nstringData: {p: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: app, image: i}\n";

    fn data(object: &ApiObject) -> Vec<(String, Vec<u8>)> {
        match object {
            ApiObject::ConfigMap(c) => c
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect(),
            ApiObject::Secret(s) => s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        }
    }

    #[test]
    fn config_maps_and_secrets_are_kept_beside_the_pods() {
        let mut s = PushStore::new("node1");
        let pushed = s.apply(OBJECTS.as_bytes(), None).unwrap();
        assert_eq!(pushed.pods.len(), 1);
        assert_eq!(pushed.objects.len(), 2);
        // Defaulted as in a manifest file: namespace, stringData folded into data.
        let objects = s.objects();
        assert_eq!(objects.len(), 2);
        assert_eq!(nodelet_manifests::objects::name(&objects[0]), "cfg");
        assert_eq!(data(&objects[1]), [("p".to_owned(), b"x".to_vec())]);
        let SourceEvent::Objects { source, objects } = s.objects_event() else {
            panic!("an objects event")
        };
        assert_eq!(source, PUSH_SOURCE);
        assert_eq!(objects.len(), 2);

        // Pushing one again replaces it; others stay.
        let edit = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {k: w}\n";
        let pushed = s.apply(edit.as_bytes(), None).unwrap();
        assert!(pushed.pods.is_empty());
        let objects = s.objects();
        assert_eq!(objects.len(), 2);
        assert_eq!(data(&objects[0]), [("k".to_owned(), b"w".to_vec())]);
        assert_eq!(s.pods().len(), 1);

        // Deleted by kind, namespace and name.
        let err = s.delete_object("Secret", "default", "s").unwrap_err();
        assert_eq!(err.code(), 404);
        assert_eq!(err.to_string(), "secrets \"s\" not found");
        s.delete_object("Secret", "ns", "s").unwrap();
        assert_eq!(
            s.delete_object("ConfigMap", "default", "cfg")
                .map(|o| data(&o))
                .unwrap(),
            [("k".to_owned(), b"w".to_vec())]
        );
        assert!(s.objects().is_empty());
        assert_eq!(s.pods().len(), 1);
    }

    #[test]
    fn an_invalid_object_refuses_the_body_with_field_paths() {
        let mut s = PushStore::new("node1");
        let body = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {'a/b': v, '..x': w}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: app, image: i}\n";
        let err = s.apply(body.as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), 422);
        let status = err.status();
        assert_eq!(status.reason.as_deref(), Some("Invalid"));
        let message = status.message.unwrap();
        assert!(
            message.starts_with("ConfigMap \"cfg\" is invalid: ["),
            "{message}"
        );
        let details = status.details.unwrap();
        assert_eq!(details.kind.as_deref(), Some("ConfigMap"));
        let fields: Vec<String> = details
            .causes
            .unwrap()
            .into_iter()
            .map(|c| c.field.unwrap())
            .collect();
        assert_eq!(fields, ["data[..x]", "data[a/b]"]);
        assert!(s.pods().is_empty() && s.objects().is_empty());
    }
}
