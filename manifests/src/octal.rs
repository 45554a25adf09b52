//! YAML 1.1 octal integers in manifests: `defaultMode: 0400` is 256 to the kubelet.
//!
//! Upstream reads manifests with go-yaml v2 (through `sigs.k8s.io/yaml`), which
//! resolves plain scalars with YAML 1.1's rules: `0400` (and Go's `0o400`) is an
//! octal integer. serde_yaml follows YAML 1.2's core schema, where `0400` is the
//! string "0400", so a manifest written for the kubelet failed with "invalid type:
//! string". Only the scalar's *style* tells the two apart (a quoted `"0400"` stays
//! a string in both), and serde_yaml's `Value` does not keep it.
//!
//! So [`resolve_octals`] walks the text once with `saphyr-parser`'s event API, which
//! reports each scalar's style, tag and position, and rewrites every untagged plain
//! scalar in value position that go-yaml v2 reads as an octal integer into its
//! decimal value, padded with spaces to the same width so every later line and column
//! (serde_yaml's error positions) stays where it was. Keys are left as written
//! (serde_yaml refuses non-string keys either way). When the event parser fails or a
//! position does not hold the scalar it reported, what was found before is kept and
//! serde_yaml reports the document as it would have.

use std::borrow::Cow;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// The integer go-yaml v2 resolves a plain scalar to when it is an octal literal:
/// optional sign, then `0` followed by octal digits, or `0o` followed by them;
/// underscores are dropped first, as go-yaml does.
pub(crate) fn yaml11_octal(plain: &str) -> Option<i64> {
    let digits: String = plain.chars().filter(|&c| c != '_').collect();
    let (negative, rest) = match digits.as_bytes().first()? {
        b'-' => (true, &digits[1..]),
        b'+' => (false, &digits[1..]),
        _ => (false, digits.as_str()),
    };
    let octal = rest
        .strip_prefix("0o")
        .or_else(|| rest.strip_prefix('0'))
        .filter(|d| !d.is_empty())?;
    let value = i64::from_str_radix(octal, 8).ok()?;
    // from_str_radix takes a sign of its own; go-yaml's takes one only.
    if octal.starts_with(['+', '-']) {
        return None;
    }
    Some(if negative { -value } else { value })
}

/// Where a container node sits, to tell keys from values.
enum Frame {
    Sequence,
    /// A mapping; `true` while its next node is a key.
    Mapping(bool),
}

/// `text` with every plain, untagged value scalar that YAML 1.1 reads as an octal
/// integer replaced by its decimal value (see the module documentation); borrowed
/// when there is none.
pub fn resolve_octals(text: &str) -> Cow<'_, str> {
    // The event parser costs more than serde_yaml's own parse: run it only when some
    // token looks like an octal (it then decides which are plain values).
    if !has_candidate(text.as_bytes()) {
        return Cow::Borrowed(text);
    }
    let mut found: Vec<(usize, usize, i64)> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else { break };
        // Whether this node is a mapping key; a node flips its mapping to the
        // other side.
        let mut node = || match stack.last_mut() {
            Some(Frame::Mapping(key)) => {
                let was = *key;
                *key = !was;
                was
            }
            _ => false,
        };
        match event {
            Event::Scalar(value, ScalarStyle::Plain, _, None) => {
                let is_key = node();
                if is_key || span.start.line() != span.end.line() {
                    continue;
                }
                if let Some(n) = yaml11_octal(&value)
                    && let Some(at) = byte_offset(text, span.start.line(), span.start.col())
                    && text[at..].starts_with(value.as_ref())
                {
                    found.push((at, value.len(), n));
                }
            }
            Event::Scalar(..) | Event::Alias(_) => {
                node();
            }
            Event::SequenceStart(..) => {
                node();
                stack.push(Frame::Sequence);
            }
            Event::MappingStart(..) => {
                node();
                stack.push(Frame::Mapping(true));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                stack.pop();
            }
            _ => {}
        }
    }
    if found.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, len, n) in found {
        if at < copied {
            continue;
        }
        out.push_str(&text[copied..at]);
        let decimal = n.to_string();
        out.push_str(&decimal);
        // A decimal is never longer than its octal with the leading `0`.
        out.extend(std::iter::repeat_n(' ', len.saturating_sub(decimal.len())));
        copied = at + len;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Whether `text` holds a token shaped like a YAML 1.1 octal: after a separator (or a
/// sign), `0`, an optional `o`, octal digits or `_`, then a separator or the end.
fn has_candidate(text: &[u8]) -> bool {
    let separator = |b: u8| b" \t\r\n[]{},:#".contains(&b);
    text.iter().enumerate().any(|(i, &b)| {
        if b != b'0' {
            return false;
        }
        // After a separator, or after a sign that is after one.
        let at = |j: Option<usize>| j.map(|j| text[j]);
        let ok = match at(i.checked_sub(1)) {
            None => true,
            Some(b'-' | b'+') => at(i.checked_sub(2)).is_none_or(separator),
            Some(p) => separator(p),
        };
        if !ok {
            return false;
        }
        let mut rest = &text[i + 1..];
        if rest.first() == Some(&b'o') {
            rest = &rest[1..];
        }
        let digits = rest
            .iter()
            .take_while(|&&d| (b'0'..=b'7').contains(&d) || d == b'_')
            .count();
        digits > 0 && rest.get(digits).is_none_or(|&t| separator(t))
    })
}

/// The byte offset of `line` (from 1) and `col` (characters, from 0) in `text`.
fn byte_offset(text: &str, line: usize, col: usize) -> Option<usize> {
    let mut start = 0;
    for _ in 1..line {
        start += text[start..].find('\n')? + 1;
    }
    let line_text = &text[start..];
    let within = line_text
        .char_indices()
        .nth(col)
        .map_or(line_text.len(), |(i, _)| i);
    Some(start + within)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn go_yaml_v2_octals() {
        for (plain, want) in [
            ("0400", Some(256)),
            ("0644", Some(420)),
            ("0o400", Some(256)),
            ("00", Some(0)),
            ("-010", Some(-8)),
            ("+0_400", Some(256)),
            ("0", None),
            ("400", None),
            ("08", None),
            ("0x10", None),
            ("0o", None),
            ("0-1", None),
            ("0+1", None),
            ("0400a", None),
            ("", None),
        ] {
            assert_eq!(yaml11_octal(plain), want, "{plain}");
        }
    }

    #[test]
    fn plain_values_are_rewritten_in_place() {
        let text = "a: 0400\nb: '0400'\nc: \"0644\"\nd: !!str 0400\n0600: k\ne: [0o10, x, 07]\nf: {g: 0755}\n";
        let out = resolve_octals(text);
        assert_eq!(
            out,
            "a: 256 \nb: '0400'\nc: \"0644\"\nd: !!str 0400\n0600: k\ne: [8   , x, 7 ]\nf: {g: 493 }\n"
        );
    }

    #[test]
    fn keys_and_values_are_told_apart_in_nesting() {
        let text = "m:\n  0400: 0400\n  s:\n  - 0600\n  - k: 0700\n    0100: v\nn: 0500\n";
        assert_eq!(
            resolve_octals(text),
            "m:\n  0400: 256 \n  s:\n  - 384 \n  - k: 448 \n    0100: v\nn: 320 \n"
        );
    }

    #[test]
    fn multibyte_text_before_keeps_positions() {
        let text = "# héllo wörld\nname: ünï\nmode: 0400 # ÿ\n---\nx: 0o7\n";
        assert_eq!(
            resolve_octals(text),
            "# héllo wörld\nname: ünï\nmode: 256  # ÿ\n---\nx: 7  \n"
        );
    }

    #[test]
    fn only_octal_shaped_tokens_start_the_event_parser() {
        for text in [
            "a: 0400",
            "a: [0o7]",
            "a: -01\n",
            "a: {b: 00}",
            "0400",
            "a: 0_4 # c",
        ] {
            assert!(has_candidate(text.as_bytes()), "{text}");
        }
        for text in [
            "a: 100",
            "a: 2024-01-02",
            "a: 0",
            "a: 08",
            "a: 0400a",
            "a: 1.05",
            "a: x0400",
            "a: 0x10",
            "image: busybox:1.36",
        ] {
            assert!(!has_candidate(text.as_bytes()), "{text}");
        }
    }

    #[test]
    fn nothing_to_do_borrows_and_bad_yaml_is_left_to_serde_yaml() {
        assert!(matches!(resolve_octals("a: 1\nb: x\n"), Cow::Borrowed(_)));
        assert!(matches!(resolve_octals("a: '0400'\n"), Cow::Borrowed(_)));
        // Found before the syntax error: rewritten; serde_yaml reports the error.
        assert_eq!(resolve_octals("a: 0400\nb: [\n"), "a: 256 \nb: [\n");
        // Block scalars and multi-line plain scalars stay text.
        assert!(matches!(
            resolve_octals("a: |\n  0400\nb: 0400\n  0500\n"),
            Cow::Borrowed(_)
        ));
    }
}
