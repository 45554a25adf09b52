//! Parsing manifest files into documents: YAML or JSON, several YAML documents
//! per file (`---`), `kind: List` / `kind: PodList` expanded into their items.
//!
//! `apiVersion: v1` documents of kind `Pod` are decoded into a [`Pod`], and of kinds
//! `ConfigMap` and `Secret` (which standalone pods may mount and reference, beyond
//! upstream) into theirs; other kinds come back undecoded so the caller can report
//! and skip them, as the kubelet's file source does.

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use serde::Deserialize as _;
use serde_json::Value;

use crate::limits::{self, Crossed, LimitError, MAX_DOCUMENTS};

/// One object found in a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Position among the documents of the file, counting from 0; items of a
    /// `List` each take their own index. Empty documents take none.
    pub index: usize,
    /// The object's `kind` (empty when the document has none).
    pub kind: String,
    /// The object's `apiVersion` (empty when the document has none).
    pub api_version: String,
    /// The decoded pod, present only for `apiVersion: v1, kind: Pod`.
    pub pod: Option<Pod>,
    /// A `v1 ConfigMap` or `v1 Secret`.
    pub object: Option<ApiObject>,
}

/// A ConfigMap or Secret document.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiObject {
    /// A `v1 ConfigMap`.
    ConfigMap(ConfigMap),
    /// A `v1 Secret`.
    Secret(Secret),
}

/// A line and column in the file, both counting from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// Why a file could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: document {index}: {reason}")]
pub struct ParseError {
    /// Where the bytes came from (the file path).
    pub origin: String,
    /// The index the failing document would have had (see [`Document::index`]);
    /// for a limit crossed ([`ParseErrorReason::Limit`]), the document's position in
    /// the stream, empty documents counted.
    pub index: usize,
    /// Where in the file, when the parser knows.
    pub location: Option<Location>,
    /// What went wrong.
    pub reason: ParseErrorReason,
}

/// What went wrong while parsing (the parser messages already carry
/// "at line L column C" when they know it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorReason {
    /// The YAML is malformed.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// The JSON is malformed.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A document is a scalar or a sequence, not an object.
    #[error("expected an object, found {0}")]
    NotAnObject(&'static str),
    /// `apiVersion` or `kind` is present but not a string.
    #[error("`{0}` must be a string")]
    NotAString(&'static str),
    /// A `List` whose `items` is not a sequence of objects.
    #[error("`items` of a {0} must be a list of objects")]
    BadItems(String),
    /// A `v1 Pod` whose fields have the wrong types.
    #[error("invalid Pod: {0}")]
    InvalidPod(String),
    /// A `v1 ConfigMap` or `v1 Secret` whose fields have the wrong types.
    #[error("invalid {kind}: {reason}")]
    InvalidObject {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// A resource limit of [`crate::limits`] was crossed.
    #[error("{limit}{}", at_text(.at))]
    Limit {
        /// The limit.
        limit: LimitError,
        /// Where it was crossed, when known.
        at: Option<Location>,
    },
}

fn at_text(at: &Option<Location>) -> String {
    at.map(|l| format!(" (at line {} column {})", l.line, l.column))
        .unwrap_or_default()
}

/// Parses the manifests in `bytes`; `origin` (normally the file path) only
/// labels errors.
///
/// JSON is recognised by a leading `{` (after whitespace), as upstream's
/// `yaml.ToJSON` does; anything else is read as a YAML stream, where plain scalars
/// such as `0400` are YAML 1.1 octal integers as for upstream ([`crate::octal`]).
///
/// The text is first held to the limits of [`crate::limits`] (size, documents,
/// nesting, nodes, alias expansion), so that parsing costs bounded memory and
/// linear time whatever the input.
///
/// # Errors
/// Returns a [`ParseError`] for a limit crossed, or for the first document that
/// is not well-formed, not an object, or a `v1 Pod` whose fields have the wrong
/// types. A file is all-or-nothing, as upstream treats a manifest file.
pub fn parse_manifests(bytes: &[u8], origin: &str) -> Result<Vec<Document>, ParseError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let limit_error = |crossed: Crossed| ParseError {
        origin: origin.to_owned(),
        index: crossed.document,
        location: crossed.at.map(|(line, column)| Location { line, column }),
        reason: ParseErrorReason::Limit {
            limit: crossed.limit,
            at: crossed.at.map(|(line, column)| Location { line, column }),
        },
    };
    let shape = limits::prescan(bytes).map_err(limit_error)?;
    let format = if bytes.trim_ascii_start().starts_with(b"{") {
        Format::Json
    } else {
        Format::Yaml
    };
    if matches!(format, Format::Yaml) && shape.has_aliases {
        // A YAML error met here is met again, with its document, by the parse below.
        if let Err(Ok(crossed)) = limits::count_expanded(bytes) {
            return Err(limit_error(crossed));
        }
    }
    // YAML 1.1 octals (`defaultMode: 0400`) read as upstream reads them.
    let resolved = match (format, std::str::from_utf8(bytes)) {
        (Format::Yaml, Ok(text)) => match crate::octal::resolve_octals(text) {
            std::borrow::Cow::Owned(text) => Some(text),
            std::borrow::Cow::Borrowed(_) => None,
        },
        _ => None,
    };
    let bytes = resolved.as_ref().map_or(bytes, String::as_bytes);
    let mut parser = Parser {
        bytes,
        origin,
        format,
        documents: Vec::new(),
    };
    parser.run()?;
    Ok(parser.documents)
}

#[derive(Clone, Copy)]
enum Format {
    Json,
    Yaml,
}

struct Parser<'a> {
    bytes: &'a [u8],
    origin: &'a str,
    format: Format,
    documents: Vec<Document>,
}

impl Parser<'_> {
    /// Reads the file's top-level documents one at a time (empty YAML documents
    /// included, as `null`, so positions in the stream stay known) and adds each before
    /// reading the next, so an error in a later document carries that document's index.
    fn run(&mut self) -> Result<(), ParseError> {
        let bytes = self.bytes;
        match self.format {
            Format::Json => {
                let stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
                for (raw_index, item) in stream.enumerate() {
                    self.check_document_count(raw_index)?;
                    let value = item.map_err(|e| self.json_error(&e))?;
                    self.push_top_level(raw_index, value)?;
                }
            }
            Format::Yaml => {
                for (raw_index, document) in serde_yaml::Deserializer::from_slice(bytes).enumerate()
                {
                    self.check_document_count(raw_index)?;
                    let mut value = serde_yaml::Value::deserialize(document)
                        .map_err(|e| self.yaml_error(&e))?;
                    // `<<: *anchor` merge keys, which upstream's YAML library honours.
                    value.apply_merge().map_err(|e| self.yaml_error(&e))?;
                    let value = match serde_json::to_value(value) {
                        Ok(value) => value,
                        // Not representable as JSON (a key that isn't a string): read the
                        // same document straight into JSON, which fails with a position.
                        Err(e) => {
                            let located = serde_yaml::Deserializer::from_slice(bytes)
                                .nth(raw_index)
                                .map(Value::deserialize);
                            return Err(match located {
                                Some(Err(located)) => self.yaml_error(&located),
                                _ => self.error(
                                    None,
                                    ParseErrorReason::Yaml(format!(
                                        "cannot be represented as JSON: {e}"
                                    )),
                                ),
                            });
                        }
                    };
                    self.push_top_level(raw_index, value)?;
                }
            }
        }
        Ok(())
    }

    /// The pre-scan counts YAML documents; this also holds a stream of JSON values
    /// (which has no `---` to count) to [`MAX_DOCUMENTS`].
    fn check_document_count(&self, raw_index: usize) -> Result<(), ParseError> {
        if raw_index >= MAX_DOCUMENTS {
            return Err(ParseError {
                origin: self.origin.to_owned(),
                index: raw_index,
                location: None,
                reason: ParseErrorReason::Limit {
                    limit: LimitError::TooManyDocuments,
                    at: None,
                },
            });
        }
        Ok(())
    }

    fn push_top_level(&mut self, raw_index: usize, value: Value) -> Result<(), ParseError> {
        if value.is_null() {
            return Ok(());
        }
        let (kind, _) = self.type_meta(&value)?;
        if matches!(kind.as_str(), "List" | "PodList") {
            let Value::Object(mut list) = value else {
                return Err(self.error(None, ParseErrorReason::NotAnObject(describe(&value))));
            };
            let items = match list.remove("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items,
                Some(_) => return Err(self.error(None, ParseErrorReason::BadItems(kind))),
            };
            for mut item in items {
                if kind == "PodList" {
                    // PodList items are pods even when they don't say so.
                    if let Value::Object(map) = &mut item {
                        map.entry("apiVersion").or_insert_with(|| "v1".into());
                        map.entry("kind").or_insert_with(|| "Pod".into());
                    }
                }
                if !item.is_object() {
                    return Err(self.error(None, ParseErrorReason::BadItems(kind)));
                }
                self.push_object(item, None)?;
            }
            return Ok(());
        }
        self.push_object(value, Some(raw_index))
    }

    /// Adds one object; `raw_index` is its position in the file's stream when
    /// it is a top-level document, which lets a decoding error be located.
    fn push_object(
        &mut self,
        mut value: Value,
        raw_index: Option<usize>,
    ) -> Result<(), ParseError> {
        let (kind, api_version) = self.type_meta(&value)?;
        let invalid = |kind: &'static str, e: serde_json::Error| {
            self.error(
                None,
                ParseErrorReason::InvalidObject {
                    kind,
                    reason: e.to_string(),
                },
            )
        };
        let (mut pod, mut object) = (None, None);
        match (kind.as_str(), api_version.as_str()) {
            ("Pod", "v1") => {
                crate::defaults::null_command_items_as_empty(&mut value);
                match serde_json::from_value::<Pod>(value) {
                    Ok(p) => pod = Some(p),
                    Err(e) => return Err(self.pod_error(&e, raw_index)),
                }
            }
            ("ConfigMap", "v1") => {
                object = Some(ApiObject::ConfigMap(
                    serde_json::from_value(value).map_err(|e| invalid("ConfigMap", e))?,
                ));
            }
            ("Secret", "v1") => {
                object = Some(ApiObject::Secret(
                    serde_json::from_value(value).map_err(|e| invalid("Secret", e))?,
                ));
            }
            _ => {}
        }
        self.documents.push(Document {
            index: self.documents.len(),
            kind,
            api_version,
            pod,
            object,
        });
        Ok(())
    }

    fn type_meta(&self, value: &Value) -> Result<(String, String), ParseError> {
        let Value::Object(map) = value else {
            return Err(self.error(None, ParseErrorReason::NotAnObject(describe(value))));
        };
        let field = |name: &'static str| match map.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.error(None, ParseErrorReason::NotAString(name))),
        };
        Ok((field("kind")?, field("apiVersion")?))
    }

    /// Decoding from the JSON value loses positions, so on failure decode the
    /// same document again straight from the bytes, whose error has a line
    /// and column (and, for YAML, the field path).
    fn pod_error(&self, fallback: &serde_json::Error, raw_index: Option<usize>) -> ParseError {
        let unlocated = || self.error(None, ParseErrorReason::InvalidPod(fallback.to_string()));
        let Some(raw_index) = raw_index else {
            return unlocated();
        };
        match self.format {
            Format::Json => {
                let mut stream =
                    serde_json::Deserializer::from_slice(self.bytes).into_iter::<Pod>();
                match stream.nth(raw_index) {
                    Some(Err(e)) => self.error(
                        Some(Location {
                            line: e.line(),
                            column: e.column(),
                        }),
                        ParseErrorReason::InvalidPod(e.to_string()),
                    ),
                    _ => unlocated(),
                }
            }
            Format::Yaml => {
                let document = serde_yaml::Deserializer::from_slice(self.bytes).nth(raw_index);
                match document.map(Pod::deserialize) {
                    Some(Err(e)) => self.error(
                        e.location().map(|l| Location {
                            line: l.line(),
                            column: l.column(),
                        }),
                        ParseErrorReason::InvalidPod(e.to_string()),
                    ),
                    _ => unlocated(),
                }
            }
        }
    }

    fn yaml_error(&self, e: &serde_yaml::Error) -> ParseError {
        self.error(
            e.location().map(|l| Location {
                line: l.line(),
                column: l.column(),
            }),
            ParseErrorReason::Yaml(e.to_string()),
        )
    }

    fn json_error(&self, e: &serde_json::Error) -> ParseError {
        self.error(
            Some(Location {
                line: e.line(),
                column: e.column(),
            }),
            ParseErrorReason::Json(e.to_string()),
        )
    }

    fn error(&self, location: Option<Location>, reason: ParseErrorReason) -> ParseError {
        ParseError {
            origin: self.origin.to_owned(),
            index: self.documents.len(),
            location,
            reason,
        }
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
