//! Pod manifests for nodelet: parsing (YAML or JSON, several documents per
//! file, `kind: List`), the apiserver's defaulting of v1 Pods, upstream-style
//! validation with field paths, static pod identity, and the manifest file
//! source that watches a directory and reports the pods it wants.
//!
//! Everything except [`source`] is a pure function over k8s-openapi types.
//! The usual path from bytes to a pod is [`load_static_pods`], which is
//! [`parse_manifests`] → [`default_pod`] → [`apply_static_identity`] →
//! [`validate_pod`] for each document of a file.

pub mod defaults;
pub mod parse;
pub mod quantity;
pub mod source;
pub mod static_pod;
pub mod validate;

pub use defaults::default_pod;
pub use parse::{Document, Location, ParseError, ParseErrorReason, parse_manifests};
pub use quantity::{Quantity, QuantityError};
pub use source::{FileSource, SourceEvent};
pub use static_pod::{
    CONFIG_HASH_ANNOTATION, CONFIG_SEEN_ANNOTATION, CONFIG_SOURCE_ANNOTATION, FILE_SOURCE,
    FileLoad, ManifestError, apply_static_identity, load_static_pods, load_static_pods_at,
    static_pod_uid,
};
pub use validate::{BadValue, FieldError, FieldErrorKind, validate_pod};
