//! Pod manifests for nodelet: parsing (YAML or JSON, several documents per
//! file, `kind: List`), the apiserver's defaulting of v1 Pods, upstream-style
//! validation with field paths, static pod identity, and the manifest file
//! source that watches a directory and reports the pods it wants, the
//! manifest URL source, and the state behind the agent's HTTP push API.
//!
//! Everything except [`source`] and [`url_source`] is a pure function over
//! k8s-openapi types ([`push`] keeps state but does no I/O).
//! The usual path from bytes to a pod is [`load_static_pods`], which is
//! [`parse_manifests`] → [`default_pod`] → [`apply_static_identity`] →
//! [`validate_pod`] for each document of a file.

pub mod defaults;
pub mod identity;
pub mod parse;
pub mod push;
pub mod quantity;
pub mod source;
pub mod static_pod;
pub mod url_source;
pub mod validate;

pub use defaults::default_pod;
pub use identity::{HTTP_SOURCE, Origin, PUSH_SOURCE, load_pods_at};
pub use parse::{Document, Location, ParseError, ParseErrorReason, parse_manifests};
pub use push::{InvalidPod, PushError, PushStore};
pub use quantity::{Quantity, QuantityError};
pub use source::{FileSource, SourceEvent};
pub use static_pod::{
    CONFIG_HASH_ANNOTATION, CONFIG_SEEN_ANNOTATION, CONFIG_SOURCE_ANNOTATION, FILE_SOURCE,
    FileLoad, ManifestError, apply_static_identity, load_static_pods, load_static_pods_at,
    static_pod_uid,
};
pub use url_source::{HeaderFlagError, UrlSource, UrlSourceError, parse_header_flag};
pub use validate::{BadValue, FieldError, FieldErrorKind, validate_pod};
