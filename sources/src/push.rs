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
#[path = "push_tests.rs"]
mod tests;
