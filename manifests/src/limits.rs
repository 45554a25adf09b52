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

use serde::de::{self, DeserializeSeed, Visitor};

/// The largest manifest, in bytes: upstream's apiserver refuses a request body
/// over 3 MiB (`MaxRequestBodyBytes`). Files are read up to one byte past it.
pub const MAX_MANIFEST_BYTES: usize = 3 * 1024 * 1024;
/// The most documents one manifest may hold (empty ones included): far more than
/// any set of static pods, few enough that a file of empty documents stays cheap.
pub const MAX_DOCUMENTS: usize = 1000;
/// The deepest nesting allowed (flow and block collections together). A pod's
/// deepest field is about 10 levels down; 100 leaves room for `List`s and
/// annotations of any shape and stays below serde_yaml's and serde_json's
/// recursion limit of 128, so the error names this limit.
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
    let mut scanner = Scanner::new(bytes);
    scanner.run()?;
    Ok(Shape {
        has_aliases: scanner.has_aliases,
    })
}

/// A cursor over the text that keeps libyaml's marks: line, column and index in
/// characters (libyaml counts characters, and its simple key rules use them).
struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    line: usize,
    column: usize,
    chars: usize,
    flow: usize,
    /// libyaml's `indent` (-1 at the top) and the stack of enclosing ones.
    indent: isize,
    indents: Vec<isize>,
    simple_key_allowed: bool,
    /// The possible simple key of the block context: (line, char index, column).
    block_key: Option<(usize, usize, usize)>,
    tokens: usize,
    documents: usize,
    in_document: bool,
    has_aliases: bool,
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        let pos = if b.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
        Self {
            b,
            pos,
            line: 1,
            column: 0,
            chars: 0,
            flow: 0,
            indent: -1,
            indents: Vec::new(),
            simple_key_allowed: true,
            block_key: None,
            tokens: 0,
            documents: 0,
            in_document: false,
            has_aliases: false,
        }
    }

    fn at(&self, offset: usize) -> u8 {
        self.b.get(self.pos + offset).copied().unwrap_or(0)
    }

    fn is(&self, offset: usize, c: u8) -> bool {
        self.b.get(self.pos + offset) == Some(&c)
    }

    /// The length of the line break at `offset`, 0 if none (libyaml's `IS_BREAK`:
    /// CR, LF, NEL, LS, PS; CR LF is one break).
    fn break_len(&self, offset: usize) -> usize {
        match (self.at(offset), self.at(offset + 1), self.at(offset + 2)) {
            (b'\r', b'\n', _) => 2,
            (b'\r' | b'\n', _, _) => 1,
            (0xC2, 0x85, _) => 2,
            (0xE2, 0x80, 0xA8 | 0xA9) => 3,
            _ => 0,
        }
    }

    fn is_blank(&self, offset: usize) -> bool {
        matches!(self.at(offset), b' ' | b'\t')
    }

    /// libyaml's `IS_BLANKZ`: blank, break or the end.
    fn is_blankz(&self, offset: usize) -> bool {
        self.pos + offset >= self.b.len() || self.is_blank(offset) || self.break_len(offset) > 0
    }

    fn eof(&self) -> bool {
        self.pos >= self.b.len()
    }

    /// Moves past one character (not a line break).
    fn skip(&mut self) {
        let len = match self.at(0) {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        self.pos = (self.pos + len).min(self.b.len());
        self.column += 1;
        self.chars += 1;
    }

    /// Moves past the line break at the cursor.
    fn skip_break(&mut self) {
        self.pos += self.break_len(0).max(1);
        self.line += 1;
        self.column = 0;
        self.chars += 1;
    }

    fn skip_to_line_end(&mut self) {
        while !self.eof() && self.break_len(0) == 0 {
            self.skip();
        }
    }

    fn crossed(&self, limit: LimitError) -> Crossed {
        Crossed {
            limit,
            document: self.documents.saturating_sub(1),
            at: Some((self.line, self.column + 1)),
        }
    }

    fn depth(&self) -> usize {
        self.flow + self.indents.len()
    }

    fn check_depth(&self) -> Result<(), Crossed> {
        if self.depth() > MAX_NESTING {
            return Err(self.crossed(LimitError::TooDeep));
        }
        Ok(())
    }

    fn roll_indent(&mut self, column: usize) -> Result<(), Crossed> {
        let column = isize::try_from(column).unwrap_or(isize::MAX);
        if self.flow == 0 && self.indent < column {
            self.indents.push(self.indent);
            self.indent = column;
            self.check_depth()?;
        }
        Ok(())
    }

    fn unroll_indent(&mut self, column: isize) {
        if self.flow > 0 {
            return;
        }
        while self.indent > column {
            self.indent = self.indents.pop().unwrap_or(-1);
        }
    }

    fn save_simple_key(&mut self) {
        if self.flow == 0 && self.simple_key_allowed {
            self.block_key = Some((self.line, self.chars, self.column));
        }
    }

    /// libyaml's `yaml_parser_stale_simple_keys`: a key must end on its line and
    /// within 1024 characters.
    fn stale_simple_keys(&mut self) {
        if let Some((line, index, _)) = self.block_key
            && (line < self.line || index + 1024 < self.chars)
        {
            self.block_key = None;
        }
    }

    fn run(&mut self) -> Result<(), Crossed> {
        loop {
            self.skip_to_next_token();
            if self.eof() {
                return Ok(());
            }
            self.stale_simple_keys();
            self.unroll_indent(isize::try_from(self.column).unwrap_or(isize::MAX));
            self.tokens += 1;
            if self.tokens > MAX_NODES {
                return Err(self.crossed(LimitError::TooManyNodes));
            }
            let marker = self.column == 0
                && ((self.is(0, b'-') && self.is(1, b'-') && self.is(2, b'-'))
                    || (self.is(0, b'.') && self.is(1, b'.') && self.is(2, b'.')))
                && self.is_blankz(3);
            if marker {
                let start = self.at(0) == b'-';
                self.unroll_indent(-1);
                self.block_key = None;
                self.simple_key_allowed = false;
                for _ in 0..3 {
                    self.skip();
                }
                if start {
                    self.start_document()?;
                } else {
                    self.in_document = false;
                }
                continue;
            }
            if self.column == 0 && self.is(0, b'%') {
                self.skip_to_line_end(); // A directive, before its document's `---`.
                continue;
            }
            if !self.in_document {
                self.start_document()?;
            }
            self.fetch_token()?;
        }
    }

    fn start_document(&mut self) -> Result<(), Crossed> {
        self.documents += 1;
        self.in_document = true;
        if self.documents > MAX_DOCUMENTS {
            return Err(self.crossed(LimitError::TooManyDocuments));
        }
        Ok(())
    }

    /// libyaml's `yaml_parser_scan_to_next_token`. Tabs are skipped everywhere
    /// (libyaml stops with an error on some, after which nothing is read anyway).
    fn skip_to_next_token(&mut self) {
        loop {
            while self.is_blank(0) {
                self.skip();
            }
            if self.is(0, b'#') {
                self.skip_to_line_end();
            }
            if self.break_len(0) > 0 {
                self.skip_break();
                if self.flow == 0 {
                    self.simple_key_allowed = true;
                }
            } else {
                return;
            }
        }
    }

    /// One token of libyaml's `yaml_parser_fetch_next_token`.
    fn fetch_token(&mut self) -> Result<(), Crossed> {
        let c = self.at(0);
        match c {
            b'[' | b'{' => {
                self.save_simple_key();
                self.flow += 1;
                self.check_depth()?;
                self.simple_key_allowed = true;
                self.skip();
            }
            b']' | b'}' => {
                self.flow = self.flow.saturating_sub(1);
                self.simple_key_allowed = false;
                self.skip();
            }
            b',' => {
                if self.flow == 0 {
                    self.block_key = None;
                }
                self.simple_key_allowed = true;
                self.skip();
            }
            b'-' if self.is_blankz(1) => {
                if self.flow == 0 {
                    self.roll_indent(self.column)?;
                }
                self.block_key = None;
                self.simple_key_allowed = true;
                self.skip();
            }
            b'?' if self.flow > 0 || self.is_blankz(1) => {
                if self.flow == 0 {
                    self.roll_indent(self.column)?;
                }
                self.block_key = None;
                self.simple_key_allowed = self.flow == 0;
                self.skip();
            }
            b':' if self.flow > 0 || self.is_blankz(1) => {
                if self.flow == 0 {
                    match self.block_key.take() {
                        Some((_, _, column)) => {
                            self.roll_indent(column)?;
                            self.simple_key_allowed = false;
                        }
                        None => {
                            self.roll_indent(self.column)?;
                            self.simple_key_allowed = true;
                        }
                    }
                } else {
                    self.simple_key_allowed = false;
                }
                self.skip();
            }
            b'*' | b'&' => {
                self.has_aliases |= c == b'*';
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.skip();
                // libyaml's anchor names; anything else after one is its error.
                while self.at(0).is_ascii_alphanumeric() || matches!(self.at(0), b'_' | b'-') {
                    self.skip();
                }
            }
            b'!' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                // A tag ends at a blank, or at `,` in flow context; any other
                // character libyaml does not take into a tag is its error.
                self.skip();
                while !(self.is_blankz(0) || (self.flow > 0 && self.is(0, b','))) {
                    self.skip();
                }
            }
            b'|' | b'>' if self.flow == 0 => {
                self.block_key = None;
                self.simple_key_allowed = true;
                self.block_scalar();
            }
            b'\'' | b'"' => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.quoted_scalar(c);
            }
            _ => {
                self.save_simple_key();
                self.simple_key_allowed = false;
                self.plain_scalar();
            }
        }
        Ok(())
    }

    /// libyaml's `yaml_parser_scan_flow_scalar`, without its errors: to the closing
    /// quote (`''` and `\"` do not close) or the end.
    fn quoted_scalar(&mut self, quote: u8) {
        self.skip();
        while !self.eof() {
            if self.break_len(0) > 0 {
                self.skip_break();
                continue;
            }
            let c = self.at(0);
            if quote == b'\'' && c == b'\'' && self.is(1, b'\'') {
                self.skip();
                self.skip();
            } else if quote == b'"' && c == b'\\' {
                self.skip();
                if self.break_len(0) > 0 {
                    self.skip_break();
                } else if !self.eof() {
                    self.skip();
                }
            } else if c == quote {
                self.skip();
                return;
            } else {
                self.skip();
            }
        }
    }

    /// libyaml's `yaml_parser_scan_plain_scalar`: words up to `: `, ` #`, a flow
    /// indicator in flow context, or a line that is not indented past the block.
    fn plain_scalar(&mut self) {
        let min_column = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            let marker = self.column == 0
                && ((self.is(0, b'-') && self.is(1, b'-') && self.is(2, b'-'))
                    || (self.is(0, b'.') && self.is(1, b'.') && self.is(2, b'.')))
                && self.is_blankz(3);
            if marker || self.is(0, b'#') {
                break;
            }
            let mut stop = false;
            while !self.is_blankz(0) {
                let c = self.at(0);
                if (c == b':' && self.is_blankz(1))
                    || (self.flow > 0
                        && (matches!(c, b',' | b'[' | b']' | b'{' | b'}')
                            || (c == b':'
                                && matches!(self.at(1), b',' | b'?' | b'[' | b']' | b'{' | b'}'))))
                {
                    stop = true;
                    break;
                }
                self.skip();
            }
            if stop || !(self.is_blank(0) || self.break_len(0) > 0) {
                break;
            }
            while self.is_blank(0) || self.break_len(0) > 0 {
                if self.break_len(0) > 0 {
                    self.skip_break();
                    leading_blanks = true;
                } else {
                    self.skip();
                }
            }
            if self.flow == 0 && isize::try_from(self.column).unwrap_or(isize::MAX) < min_column {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
    }

    /// libyaml's `yaml_parser_scan_block_scalar`: the header, then every line that
    /// is empty or indented at least as far as the content.
    fn block_scalar(&mut self) {
        self.skip();
        let mut increment = 0usize;
        for _ in 0..2 {
            match self.at(0) {
                b'+' | b'-' => self.skip(),
                d @ b'1'..=b'9' => {
                    increment = usize::from(d - b'0');
                    self.skip();
                }
                _ => {}
            }
        }
        // The rest of the header line (a comment, or an error libyaml stops at).
        self.skip_to_line_end();
        let parent = self.indent;
        let mut indent = if increment > 0 {
            let base = if parent >= 0 { parent } else { 0 };
            usize::try_from(base).unwrap_or(0) + increment
        } else {
            0
        };
        let floor = usize::try_from(parent + 1).unwrap_or(0).max(1);
        loop {
            if self.break_len(0) == 0 {
                return; // The end.
            }
            // A line: its leading spaces, then content, a break or the end.
            let line_start = (self.pos, self.line, self.column, self.chars);
            self.skip_break();
            let mut spaces = 0usize;
            while self.is(0, b' ') && (indent == 0 || spaces < indent) {
                self.skip();
                spaces += 1;
            }
            if self.break_len(0) > 0 || self.eof() {
                continue; // An empty line belongs to the scalar.
            }
            if indent == 0 {
                // The first non-empty line sets the indentation (libyaml also
                // counts longer empty lines before it; fewer columns here only
                // ends the scalar sooner, which reads more as structure).
                while self.is(0, b' ') {
                    self.skip();
                    spaces += 1;
                }
                indent = spaces.max(floor);
            }
            if spaces < indent {
                // Less indented: the scalar ended with the previous line.
                (self.pos, self.line, self.column, self.chars) = line_start;
                return;
            }
            self.skip_to_line_end();
        }
    }
}

/// The budget of [`count_expanded`].
#[derive(Debug, Default)]
struct Budget {
    nodes: usize,
    text: usize,
    crossed: Option<LimitError>,
}

impl Budget {
    fn charge<E: de::Error>(&mut self, text: usize) -> Result<(), E> {
        self.nodes += 1;
        self.text = self.text.saturating_add(text);
        if self.nodes > MAX_NODES {
            self.crossed = Some(LimitError::AliasNodes);
        } else if self.text > MAX_MANIFEST_BYTES {
            self.crossed = Some(LimitError::AliasText);
        }
        match self.crossed {
            Some(limit) => Err(E::custom(limit)),
            None => Ok(()),
        }
    }
}

/// Walks every document of a YAML text through serde_yaml as a visitor that builds
/// nothing, following aliases, and stops once the nodes or the text they add up to
/// cross [`MAX_NODES`] or [`MAX_MANIFEST_BYTES`].
///
/// # Errors
/// `Err(Ok(crossed))` for a limit, `Err(Err(e))` for a YAML error met on the way
/// (the real parse would meet it too).
pub fn count_expanded(bytes: &[u8]) -> Result<(), Result<Crossed, serde_yaml::Error>> {
    let mut budget = Budget::default();
    for (document, de) in serde_yaml::Deserializer::from_slice(bytes).enumerate() {
        if let Err(e) = Count(&mut budget).deserialize(de) {
            return Err(match budget.crossed {
                Some(limit) => Ok(Crossed {
                    limit,
                    document,
                    at: e.location().map(|l| (l.line(), l.column())),
                }),
                None => Err(e),
            });
        }
    }
    Ok(())
}

struct Count<'b>(&'b mut Budget);

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.charge(v.len())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.0.charge(v.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.0.charge(0)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.charge::<D::Error>(0)?;
        d.deserialize_any(Count(self.0))
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.charge::<D::Error>(0)?;
        d.deserialize_any(Count(self.0))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.charge::<A::Error>(0)?;
        while seq.next_element_seed(Count(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.charge::<A::Error>(0)?;
        while map.next_key_seed(Count(&mut *self.0))?.is_some() {
            map.next_value_seed(Count(&mut *self.0))?;
        }
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess as _;
        self.0.charge::<A::Error>(0)?;
        let ((), variant) = data.variant_seed(Count(&mut *self.0))?;
        variant.newtype_variant_seed(Count(self.0))
    }
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
        serde_yaml::Deserializer::from_str(text).any(|d| {
            <serde_yaml::Value as serde::Deserialize>::deserialize(d)
                .is_err_and(|e| e.to_string().contains("recursion limit exceeded"))
        })
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

    #[test]
    fn alias_expansion_is_budgeted() {
        let count = |text: &str| match count_expanded(text.as_bytes()) {
            Ok(()) => Ok(()),
            Err(Ok(crossed)) => Err(Ok(crossed.limit)),
            Err(Err(e)) => Err(Err(e.to_string())),
        };
        // Ten thousand aliases of a ten-thousand-element list: 10^8 nodes from
        // 50 KB, within serde_yaml's repetition limit.
        let wide = format!(
            "a: &a [{}x]\nb: [{}*a]\n",
            "x,".repeat(10_000),
            "*a,".repeat(10_000)
        );
        assert_eq!(count(&wide), Err(Ok(LimitError::AliasNodes)));
        let long = format!(
            "a: &a {}\nb: [{}*a]\n",
            "x".repeat(100_000),
            "*a,".repeat(100)
        );
        assert_eq!(count(&long), Err(Ok(LimitError::AliasText)));
        // Billion laughs: serde_yaml's own repetition limit or ours, never the memory.
        let mut laughs = String::from("a0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 9].join(",");
            laughs.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        assert!(count(&laughs).is_err());
        // Merge keys, the usual use of aliases, are fine.
        assert_eq!(count("x: &c {name: app}\ny:\n  <<: *c\n"), Ok(()));
    }
}
