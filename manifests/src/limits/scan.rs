//! The pre-scan: libyaml's tokenising rules (`yaml_parser_fetch_next_token` and the
//! scanners it calls in unsafe-libyaml's `scanner.rs`), kept to what decides where
//! tokens start, without building tokens: flow levels, the block indentation stack,
//! simple keys, quoted, plain and block scalars, comments and document markers.

use super::{Crossed, LimitError, MAX_DOCUMENTS, MAX_NESTING, MAX_NODES, Shape};

/// A cursor over the text that keeps libyaml's marks: line, column and index in
/// characters (libyaml counts characters, and its simple key rules use them).
pub(super) struct Scanner<'a> {
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
    pub(super) fn new(b: &'a [u8]) -> Self {
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

    pub(super) fn run(mut self) -> Result<Shape, Crossed> {
        loop {
            self.skip_to_next_token();
            if self.eof() {
                return Ok(Shape {
                    has_aliases: self.has_aliases,
                });
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
