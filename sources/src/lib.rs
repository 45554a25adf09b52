//! Pod sources for nodelet, the I/O half of the manifest pipeline: the manifest
//! file source that watches a directory ([`file`]), the manifest URL source
//! ([`url`]), and the state behind the agent's HTTP push API ([`push`], which
//! keeps state but does no I/O). Each reports the complete set of pods it wants
//! as a [`SourceEvent::Snapshot`].
//!
//! Parsing, defaulting, identity and validation are `nodelet-manifests`' pure
//! functions; this crate reads the bytes (within [`MAX_MANIFEST_BYTES`]), keeps
//! what each file, URL or push last gave, and decides which pods win.

pub mod file;
pub mod push;
pub mod url;

pub use file::FileSource;
pub use nodelet_manifests::{MAX_MANIFEST_BYTES, SourceEvent};
pub use push::{InvalidPod, PushError, PushStore, Pushed};
pub use url::{HeaderFlagError, UrlSource, UrlSourceError, parse_header_flag};
