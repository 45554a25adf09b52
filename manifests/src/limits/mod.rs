//! The resource limits every manifest is held to before and while it is parsed, so
//! that a hostile or broken file, URL body or push body costs bounded memory and
//! linear time. A manifest that crosses one is rejected as a whole, with the limit
//! named in the error.
//!
//! What serde_yaml 0.9 enforces by itself, and why that is not enough:
//! - a recursion limit of 128 levels while deserialising, but only after its loader
//!   has read the whole document into a list of events. Reading a flow collection
//!   nested N deep costs libyaml O(N²) (its scanner walks the stack of possible
//!   simple keys, one per flow level, for every token), so `[[[…` 100,000 deep
//!   takes tens of seconds before the recursion limit is ever reached;
//! - a repetition limit on aliases: at most 100 alias jumps per event of the
//!   document. It bounds jumps, not what they expand to: ten 10,000-element lists
//!   referring to each other in 15 KB expand to gigabytes well within it;
//! - nothing on the size of the input, on the number of documents or on the number
//!   of events a document holds (the loader keeps every event, about 100 bytes
//!   each, before anything is deserialised).
//!
//! So before serde_yaml sees a byte, [`prescan`] makes one linear pass over the text
//! with libyaml's own tokenising rules (token starts, quotes, comments, block
//! scalars, simple keys and the block indentation stack), counting nesting depth
//! (flow levels plus block indentation levels), tokens and documents. It never
//! builds anything, so it costs no memory; it only has to agree with libyaml on
//! where tokens start, and where it cannot be exact it errs towards counting more
//! (a false rejection of a pathological file, never a missed bomb). When the text
//! has aliases, [`count_expanded`] then walks the documents once through serde_yaml
//! without building values, with a budget on the nodes and text the aliases expand
//! to, before the real parse builds them.

mod expand;
mod scan;

pub use expand::count_expanded;

/// The largest manifest, in bytes: upstream's apiserver refuses a request body
/// over 3 MiB (`MaxRequestBodyBytes`). Files are read up to one byte past it.
pub const MAX_MANIFEST_BYTES: usize = 3 * 1024 * 1024;
/// The most documents one manifest may hold (empty ones included): far more than
/// any set of static pods, few enough that a file of empty documents stays cheap.
pub const MAX_DOCUMENTS: usize = 1000;
/// The deepest nesting allowed: flow levels plus block indentation levels. A pod's
/// deepest field is about 10 levels down; 100 leaves room for `List`s and
/// annotations of any shape and stays below serde_yaml's and serde_json's
/// recursion limit of 128, so the error names this limit. (A block sequence
/// written under its key without indenting shares the key's level, as in libyaml's
/// indentation stack, so block nesting can exceed what is counted; it costs libyaml
/// nothing, and serde_yaml stops it at 128. Flow nesting, the quadratic kind, is
/// counted exactly.)
pub const MAX_NESTING: usize = 100;
/// The most nodes a manifest may hold: YAML tokens (scalars and indicators,
/// counted before parsing) and, when aliases are used, the nodes they expand to.
/// A pod with 1,000 containers takes about 10,000; each node costs a few hundred
/// bytes while parsing, so this bounds a parse at some tens of MiB.
pub const MAX_NODES: usize = 200_000;

/// Which limit a manifest crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// More bytes than [`MAX_MANIFEST_BYTES`].
    #[error("larger than {MAX_MANIFEST_BYTES} bytes, the limit for a manifest")]
    TooLarge,
    /// More documents than [`MAX_DOCUMENTS`].
    #[error("more than {MAX_DOCUMENTS} documents, the limit for a manifest")]
    TooManyDocuments,
    /// Nested deeper than [`MAX_NESTING`].
    #[error("nested deeper than {MAX_NESTING} levels, the limit for a manifest")]
    TooDeep,
    /// More tokens than [`MAX_NODES`].
    #[error("more than {MAX_NODES} values and indicators (YAML tokens), the limit for a manifest")]
    TooManyNodes,
    /// Aliases that expand to more than [`MAX_NODES`] nodes.
    #[error("aliases expand to more than {MAX_NODES} nodes, the limit for a manifest")]
    AliasNodes,
    /// Aliases that expand to more text than [`MAX_MANIFEST_BYTES`].
    #[error(
        "aliases expand to more than {MAX_MANIFEST_BYTES} bytes of text, the limit for a manifest"
    )]
    AliasText,
}

/// Where a limit was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossed {
    /// The limit.
    pub limit: LimitError,
    /// The document of the stream it was crossed in, from 0 (empty ones counted).
    pub document: usize,
    /// Line and column, from 1, where known.
    pub at: Option<(usize, usize)>,
}

/// What the pre-scan learnt about a text within the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Whether any alias (`*name`) occurs, so expansion must be measured.
    pub has_aliases: bool,
}

/// Checks size, documents, nesting and tokens in one linear pass (see the module
/// documentation for why it runs before serde_yaml).
///
/// # Errors
/// [`Crossed`] names the first limit crossed and where.
pub fn prescan(bytes: &[u8]) -> Result<Shape, Crossed> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(Crossed {
            limit: LimitError::TooLarge,
            document: 0,
            at: None,
        });
    }
    scan::Scanner::new(bytes).run()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limit(text: &str) -> Option<LimitError> {
        prescan(text.as_bytes()).err().map(|c| c.limit)
    }

    /// Whether serde_yaml, with no pre-scan, reads the text as nested past its
    /// recursion limit: proof that a test's nesting is structure to libyaml.
    fn libyaml_sees_deep(text: &str) -> bool {
        // serde_yaml's iterator repeats a stream error forever: stop at the first.
        for d in serde_yaml::Deserializer::from_str(text) {
            if let Err(e) = <serde_yaml::Value as serde::Deserialize>::deserialize(d) {
                return e.to_string().contains("recursion limit exceeded");
            }
        }
        false
    }

    fn libyaml_parses(text: &str) -> bool {
        serde_yaml::Deserializer::from_str(text)
            .all(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).is_ok())
    }

    #[test]
    fn size() {
        let mut text = "#".repeat(MAX_MANIFEST_BYTES);
        assert_eq!(limit(&text), None);
        text.push('#');
        assert_eq!(limit(&text), Some(LimitError::TooLarge));
    }

    #[test]
    fn flow_nesting_is_cut_before_libyaml_reads_it() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(limit(&nested(MAX_NESTING)), None);
        assert!(libyaml_parses(&nested(MAX_NESTING)));
        assert_eq!(limit(&nested(MAX_NESTING + 1)), Some(LimitError::TooDeep));
        // 100,000 deep (200 KB) costs libyaml O(depth²); the pre-scan stops at 101.
        let crossed = prescan("[".repeat(100_000).as_bytes()).unwrap_err();
        assert_eq!(crossed.limit, LimitError::TooDeep);
        assert_eq!(crossed.at, Some((1, MAX_NESTING + 1)));
        let json = format!("{}1", r#"{"a":"#.repeat(100_000));
        assert_eq!(limit(&json), Some(LimitError::TooDeep));
    }

    #[test]
    fn block_nesting_counts_too() {
        let compact = format!("{}x\n", "- ".repeat(MAX_NESTING + 1));
        assert_eq!(limit(&compact), Some(LimitError::TooDeep));
        assert_eq!(limit(&format!("{}x\n", "- ".repeat(MAX_NESTING))), None);
        let indented = |levels: usize| -> String {
            (0..levels)
                .map(|level| format!("{}k{level}:\n", " ".repeat(level)))
                .collect()
        };
        assert_eq!(limit(&indented(MAX_NESTING)), None);
        assert_eq!(limit(&indented(MAX_NESTING + 1)), Some(LimitError::TooDeep));
        assert!(libyaml_sees_deep(&indented(200)));
        // Mixed: 60 block levels holding 60 flow levels.
        let mixed = format!("{}{}", "- ".repeat(60), "[".repeat(60));
        assert_eq!(limit(&mixed), Some(LimitError::TooDeep));
    }

    #[test]
    fn tokens_and_documents() {
        let list = |n: usize| format!("[{}x]", "x,".repeat(n));
        assert_eq!(limit(&list(MAX_NODES / 2 - 2)), None);
        assert_eq!(limit(&list(MAX_NODES)), Some(LimitError::TooManyNodes));
        let anchors: String = (0..100_000).map(|i| format!("- &a{i} x\n")).collect();
        assert_eq!(limit(&anchors), Some(LimitError::TooManyNodes));

        let docs = |n: usize| "---\n".repeat(n);
        assert_eq!(limit(&docs(MAX_DOCUMENTS)), None);
        let crossed = prescan(docs(10_000).as_bytes()).unwrap_err();
        assert_eq!(crossed.limit, LimitError::TooManyDocuments);
        assert_eq!(crossed.document, MAX_DOCUMENTS);
        // Documents with content, and `...` ends without a following `---`.
        let with_content = "a: 1\n...\n".repeat(MAX_DOCUMENTS + 1);
        assert_eq!(limit(&with_content), Some(LimitError::TooManyDocuments));
        assert_eq!(limit("%YAML 1.1\n---\na: 1\n"), None);
    }

    #[test]
    fn text_that_is_not_structure_is_not_counted() {
        let deep = "[".repeat(150);
        let cases = [
            format!("a: \"{deep}\"\n"),
            format!("a: '{deep}'\nb: 'it''s {deep}'\n"),
            format!("a: x{deep}\n"),
            format!("# {deep}\na: 1 # {deep}\n"),
            format!("a: |\n  {deep}\n  'x\n\n  \"y\nb: >-\n    {deep}\n"),
            format!("- - |\n    {deep}\n  - x\n"),
            format!("a: foo\n  {deep}\n  'x\nb: 1\n"),
            format!(
                "{{\"a\": \"{}\", \"b\": [1, \"\\\"{deep}\"]}}",
                "]".repeat(150)
            ),
        ];
        for text in &cases {
            assert!(libyaml_parses(text), "libyaml reads {text:?}");
            assert_eq!(limit(text), None, "{text:?}");
        }
    }

    #[test]
    fn structure_hidden_behind_look_alikes_is_counted() {
        // Each text holds real nesting, 200 deep, right after something that could be
        // mistaken for the start of a string, comment or block scalar.
        let deep = "[".repeat(200);
        let cases = [
            // A quote inside a plain scalar continued on the next line.
            format!("a: foo\n  \"bar\nb: {deep}\n"),
            // A quote at the start of a block scalar's content.
            format!("a: |\n  'x\nb: {deep}\n"),
            // A line indented past the outer sequence but not the inner one ends the
            // block scalar of the inner entry.
            format!("- - |\n    text\n  - {deep}\n"),
            // An explicit indentation indicator.
            format!("a: |4\n      text\nb: {deep}\n"),
            // `#` without a blank before it is not a comment.
            format!("a: b#c\nd: {deep}\n"),
            // A tag ends at `,` in flow context.
            format!("[!t,{deep}"),
            // An apostrophe inside a plain word.
            format!("a: it's\nb: {deep}\n"),
            // A quote in a key after an anchor.
            format!("&x k\"ey: {deep}\n"),
        ];
        for text in &cases {
            assert!(libyaml_sees_deep(text), "libyaml nests {text:?}");
            assert_eq!(limit(text), Some(LimitError::TooDeep), "{text:?}");
        }
    }
}
