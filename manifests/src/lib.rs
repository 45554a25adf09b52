//! Pod manifests for nodelet: parsing (YAML or JSON, several documents per
//! file, `kind: List`) within resource limits, the apiserver's defaulting of v1
//! Pods, upstream-style validation with field paths, pod identity for every
//! source, and resource quantities.
//!
//! Everything here is a pure function over bytes and k8s-openapi types: no I/O,
//! no async runtime. The sources that read files, poll URLs and accept pushed
//! pods live in `nodelet-sources`.
//! The usual path from bytes to a pod is [`load_pods_at`] (or
//! [`load_static_pods`] for a file), which is [`parse_manifests`] →
//! [`default_pod`] → [`apply_identity`] → [`validate_pod`] for each document.

pub mod defaults;
pub mod digest;
pub mod event;
pub mod identity;
pub mod limits;
pub mod objects;
pub mod octal;
pub mod parse;
pub mod quantity;
pub mod static_pod;
pub mod validate;

pub use defaults::default_pod;
pub use digest::debug_digest;
pub use event::SourceEvent;
pub use identity::{
    API_SOURCE, CONFIG_HASH_ANNOTATION, CONFIG_MIRROR_ANNOTATION, CONFIG_SEEN_ANNOTATION,
    CONFIG_SOURCE_ANNOTATION, FILE_SOURCE, HTTP_SOURCE, Origin, PUSH_SOURCE, apply_identity,
    is_mirror_pod, is_static_pod, keep_first_seen, pod_uid, rfc3339_nanos, suffixed_name,
};
pub use limits::{LimitError, MAX_DOCUMENTS, MAX_MANIFEST_BYTES, MAX_NESTING, MAX_NODES};
pub use parse::{ApiObject, Document, Location, ParseError, ParseErrorReason, parse_manifests};
pub use quantity::{Quantity, QuantityError};
pub use static_pod::{
    FileLoad, ManifestError, apply_static_identity, load_pods_at, load_static_pods,
    load_static_pods_at, static_pod_uid,
};
pub use validate::{BadValue, FieldError, FieldErrorKind, validate_pod};
