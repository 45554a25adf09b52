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
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: app
    image: busybox:1.36
    ports:
    - containerPort: 80
";

    fn kinds(docs: &[Document]) -> Vec<(usize, &str, bool)> {
        docs.iter()
            .map(|d| (d.index, d.kind.as_str(), d.pod.is_some()))
            .collect()
    }

    #[test]
    fn non_string_keys_are_located() {
        let e = parse_manifests(b"apiVersion: v1\nkind: Pod\n[a]: x\n", "f.yaml")
            .expect_err("an integer key");
        assert!(e.location.is_some(), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_failing_document() {
        let input = b"apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\n---\nmetadata: {name: [\n";
        let e = parse_manifests(input, "f.yaml").expect_err("broken third document");
        assert_eq!(e.index, 2);
        assert!(e.location.is_some_and(|l| l.line >= 9), "{e}");
    }

    #[test]
    fn single_yaml_pod() {
        let docs = parse_manifests(POD.as_bytes(), "/m/web.yaml").unwrap();
        assert_eq!(kinds(&docs), [(0, "Pod", true)]);
        let pod = docs[0].pod.as_ref().unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].image.as_deref(), Some("busybox:1.36"));
    }

    #[test]
    fn table_of_shapes() {
        let json = r#"  {"apiVersion":"v1","kind":"Pod","metadata":{"name":"j"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#;
        // (case name, input, expected (index, kind, decoded as a pod) per document)
        type Case = (&'static str, String, Vec<(usize, &'static str, bool)>);
        let cases: &[Case] = &[
            ("empty file", String::new(), vec![]),
            ("only separators and comments", "---\n# nothing\n---\n".into(), vec![]),
            ("json", json.into(), vec![(0, "Pod", true)]),
            (
                "multi-document with empty ones",
                format!("---\n{POD}---\n---\napiVersion: v1\nkind: Service\n---\n{POD}"),
                vec![(0, "Pod", true), (1, "Service", false), (2, "Pod", true)],
            ),
            (
                "list expanded",
                format!(
                    "apiVersion: v1\nkind: List\nitems:\n- {}\n- {{apiVersion: v1, kind: Service}}\n",
                    json.trim()
                ),
                vec![(0, "Pod", true), (1, "Service", false)],
            ),
            (
                "podlist items need no kind",
                "kind: PodList\napiVersion: v1\nitems:\n- metadata: {name: a}\n  spec: {containers: []}\n".into(),
                vec![(0, "Pod", true)],
            ),
            (
                "other api version is not decoded",
                "apiVersion: v2\nkind: Pod\n".into(),
                vec![(0, "Pod", false)],
            ),
            ("no kind", "metadata: {name: x}\n".into(), vec![(0, "", false)]),
            (
                "merge keys",
                "x: &c {name: app, image: busybox}\napiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - <<: *c\n".into(),
                vec![(0, "Pod", true)],
            ),
        ];
        for (name, input, expected) in cases {
            let docs =
                parse_manifests(input.as_bytes(), "f").unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&kinds(&docs), expected, "{name}");
        }
    }

    #[test]
    fn yaml_1_1_octals_are_integers_and_quoted_ones_strings() {
        let pod = |mode: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  volumes:\n  - name: s\n    secret: {{secretName: s, defaultMode: {mode}, items: [{{key: k, path: k, mode: 0o440}}]}}\n  containers: [{{name: app, image: i}}]\n"
            )
        };
        for (mode, want) in [("0400", 256), ("0o644", 420), ("256", 256), ("0x1FF", 511)] {
            let docs = parse_manifests(pod(mode).as_bytes(), "f").unwrap();
            let spec = docs[0].pod.as_ref().unwrap().spec.as_ref().unwrap();
            let secret = spec.volumes.as_ref().unwrap()[0].secret.as_ref().unwrap();
            assert_eq!(secret.default_mode, Some(want), "{mode}");
            assert_eq!(secret.items.as_ref().unwrap()[0].mode, Some(0o440));
        }
        // Quoted, it is a string, refused at its own line and column as before.
        for quoted in ["'0400'", "\"0400\""] {
            let e = parse_manifests(pod(quoted).as_bytes(), "f").unwrap_err();
            assert!(
                e.to_string().contains("invalid type: string \"0400\""),
                "{quoted}: {e}"
            );
            assert_eq!(e.location.map(|l| l.line), Some(7), "{e}");
        }
        // Positions after a rewritten octal stay where they were.
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {a: 0400}}\nspec:\n  containers: 3\n";
        let e = parse_manifests(text.as_bytes(), "f").unwrap_err();
        assert_eq!(
            e.location,
            Some(Location {
                line: 5,
                column: 15
            }),
            "{e}"
        );
        // Upstream reads an unquoted 0400 label value as the number 256 too, and
        // refuses it where a string is wanted.
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {a: 0400}}\nspec:\n  containers: [{name: app, image: i}]\n";
        let e = parse_manifests(text.as_bytes(), "f").unwrap_err();
        assert!(e.to_string().contains("invalid type: integer `256`"), "{e}");
        // JSON has no octals: untouched.
        let json = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"m": "0400"}}"#;
        let docs = parse_manifests(json.as_bytes(), "f.json").unwrap();
        assert!(docs[0].object.is_some());
    }

    #[test]
    fn merge_keys_are_applied() {
        let input = "x: &c {name: app, image: busybox}\napiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - <<: *c\n";
        let docs = parse_manifests(input.as_bytes(), "f").unwrap();
        let spec = docs[0].pod.as_ref().unwrap().spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].name, "app");
    }

    #[test]
    fn errors_name_file_document_and_position() {
        let bad_type = format!(
            "{POD}---\n{}",
            POD.replace("containerPort: 80", "containerPort: eighty")
        );
        let cases: &[(&str, &str, usize, Option<usize>, &str)] = &[
            (
                "syntax",
                "apiVersion: v1\nkind: Pod\nmetadata: [\n",
                0,
                Some(4),
                "invalid YAML",
            ),
            (
                "type error is located",
                &bad_type,
                1,
                Some(21),
                "containerPort",
            ),
            (
                "scalar document",
                "just words\n",
                0,
                None,
                "expected an object, found a string",
            ),
            ("json syntax", "{\"kind\": ", 0, Some(1), "invalid JSON"),
            (
                "kind not a string",
                "kind: [Pod]\n",
                0,
                None,
                "`kind` must be a string",
            ),
            (
                "bad list items",
                "kind: List\nitems: 3\n",
                0,
                None,
                "`items` of a List",
            ),
        ];
        for (name, input, index, line, needle) in cases {
            let err =
                parse_manifests(input.as_bytes(), "/etc/kubernetes/manifests/x.yaml").unwrap_err();
            assert_eq!(err.index, *index, "{name}: {err}");
            assert_eq!(err.location.map(|l| l.line), *line, "{name}: {err}");
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "/etc/kubernetes/manifests/x.yaml: document {index}: "
                )),
                "{name}: {text}"
            );
            assert!(text.contains(needle), "{name}: {text}");
        }
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let json = serde_json::to_string(&serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 1}]}]}
        }))
        .unwrap();
        for source in [POD.as_bytes(), json.as_bytes()] {
            for end in 0..=source.len() {
                let _ = parse_manifests(&source[..end], "t");
            }
        }
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2_000 {
            let len = round % 200;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Bias towards YAML punctuation so the parser goes deep.
                    b"{}[]:-,&*!|>'\"#\n \t?abc01\xff"[(state % 25) as usize]
                })
                .collect();
            let _ = parse_manifests(&bytes, "garbage");
        }
        // Alias bombs and deep nesting hit the parsers' limits, not the stack.
        let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
        let _ = parse_manifests(bomb.as_bytes(), "bomb");
        let _ = parse_manifests("[".repeat(100_000).as_bytes(), "deep");
        let _ = parse_manifests(
            format!("{}{}", "{\"a\":".repeat(100_000), "1").as_bytes(),
            "deep",
        );
    }

    #[test]
    fn limits_name_file_document_and_limit() {
        let origin = "/etc/kubernetes/manifests/x.yaml";
        let text = |input: &[u8]| parse_manifests(input, origin).unwrap_err().to_string();
        assert_eq!(
            text("---\n".repeat(10_000).as_bytes()),
            format!(
                "{origin}: document 1000: more than 1000 documents, the limit for a manifest (at line 1001 column 4)"
            )
        );
        let json_stream = "{}\n".repeat(MAX_DOCUMENTS + 1);
        assert_eq!(
            text(json_stream.as_bytes()),
            format!("{origin}: document 1000: more than 1000 documents, the limit for a manifest")
        );
        let deep = format!("{POD}---\n{POD}---\nx: {}", "[".repeat(200_000));
        assert_eq!(
            text(deep.as_bytes()),
            format!(
                "{origin}: document 2: nested deeper than 100 levels, the limit for a manifest (at line 23 column 103)"
            )
        );
        let big = format!("{POD}# {}\n", "x".repeat(crate::MAX_MANIFEST_BYTES));
        assert_eq!(
            text(big.as_bytes()),
            format!("{origin}: document 0: larger than 3145728 bytes, the limit for a manifest")
        );
        let bomb = format!(
            "a: &a [{}x]\nb: [{}*a]\n",
            "x,".repeat(10_000),
            "*a,".repeat(10_000)
        );
        assert!(
            text(bomb.as_bytes()).starts_with(&format!(
                "{origin}: document 0: aliases expand to more than 200000 nodes, the limit for a manifest"
            )),
            "{}",
            text(bomb.as_bytes())
        );
        // Within the limits, the same shapes parse: merge keys through aliases, and
        // a thousand documents.
        let pods = vec![POD; MAX_DOCUMENTS].join("---\n");
        assert_eq!(
            parse_manifests(pods.as_bytes(), origin).unwrap().len(),
            MAX_DOCUMENTS
        );
    }
}
