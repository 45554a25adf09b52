//! Upstream's `field.Error`: one problem with one field, rendered as the apiserver and
//! the kubelet print it, and Go's `%q` quoting for the values in it.

use std::fmt;

/// A rejected value, printed as upstream prints it (strings quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadValue {
    /// A string value.
    Str(String),
    /// An integer value.
    Int(i64),
    /// A list of strings, printed as upstream prints one (`["a","b"]`).
    List(Vec<String>),
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => f.write_str(&go_quote(s)),
            Self::Int(i) => write!(f, "{i}"),
            Self::List(items) => {
                let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
                write!(f, "[{}]", quoted.join(","))
            }
        }
    }
}

impl From<&str> for BadValue {
    fn from(s: &str) -> Self {
        Self::Str(s.to_owned())
    }
}

impl From<i64> for BadValue {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<i32> for BadValue {
    fn from(i: i32) -> Self {
        Self::Int(i.into())
    }
}

/// The kind of a field error (upstream `field.ErrorType`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// "Required value".
    Required,
    /// "Invalid value".
    Invalid {
        /// The rejected value.
        value: BadValue,
    },
    /// "Duplicate value".
    Duplicate {
        /// The repeated value.
        value: BadValue,
    },
    /// "Unsupported value"; the detail lists `allowed`.
    NotSupported {
        /// The rejected value.
        value: BadValue,
        /// The accepted values.
        allowed: Vec<String>,
    },
    /// "Not found": a reference to something that does not exist.
    NotFound {
        /// The dangling reference.
        value: BadValue,
    },
    /// "Forbidden".
    Forbidden,
    /// "Too long": the value is omitted, the detail gives the limit.
    TooLong {
        /// The largest size allowed, in bytes.
        max: usize,
    },
}

/// One problem with one field, e.g. `spec.containers[0].image: Required value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    /// Upstream's field path (`spec.containers[1].ports[0].containerPort`).
    pub path: String,
    /// What kind of problem.
    pub kind: FieldErrorKind,
    /// The explanation, possibly empty.
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, value) = match &self.kind {
            FieldErrorKind::Required => ("Required value", None),
            FieldErrorKind::Invalid { value } => ("Invalid value", Some(value)),
            FieldErrorKind::Duplicate { value } => ("Duplicate value", Some(value)),
            FieldErrorKind::NotSupported { value, .. } => ("Unsupported value", Some(value)),
            FieldErrorKind::NotFound { value } => ("Not found", Some(value)),
            FieldErrorKind::Forbidden => ("Forbidden", None),
            FieldErrorKind::TooLong { .. } => ("Too long", None),
        };
        write!(f, "{}: {name}", self.path)?;
        if let Some(value) = value {
            write!(f, ": {value}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl FieldError {
    /// `field.Required`.
    pub fn required(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Required,
            detail: detail.into(),
        }
    }

    /// `field.Invalid`.
    pub fn invalid(
        path: impl Into<String>,
        value: impl Into<BadValue>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Invalid {
                value: value.into(),
            },
            detail: detail.into(),
        }
    }

    /// `field.Duplicate`.
    pub fn duplicate(path: impl Into<String>, value: impl Into<BadValue>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Duplicate {
                value: value.into(),
            },
            detail: String::new(),
        }
    }

    /// `field.NotSupported`: the detail lists the quoted allowed values.
    pub fn not_supported(
        path: impl Into<String>,
        value: impl Into<BadValue>,
        allowed: &[&str],
    ) -> Self {
        let detail = if allowed.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = allowed.iter().map(|v| go_quote(v)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self {
            path: path.into(),
            kind: FieldErrorKind::NotSupported {
                value: value.into(),
                allowed: allowed.iter().map(|s| (*s).to_owned()).collect(),
            },
            detail,
        }
    }

    /// `field.NotFound`.
    pub fn not_found(path: impl Into<String>, value: impl Into<BadValue>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::NotFound {
                value: value.into(),
            },
            detail: String::new(),
        }
    }

    /// `field.TooLong` (with the value omitted, as upstream does for sizes).
    pub fn too_long(path: impl Into<String>, max: usize) -> Self {
        let unit = if max == 1 { "byte" } else { "bytes" };
        Self {
            path: path.into(),
            kind: FieldErrorKind::TooLong { max },
            detail: format!("may not be more than {max} {unit}"),
        }
    }

    /// `field.Forbidden`.
    pub fn forbidden(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: FieldErrorKind::Forbidden,
            detail: detail.into(),
        }
    }
}

/// Quotes like Go's `%q`: double quotes, backslash escapes for quotes,
/// backslashes and control characters; printable Unicode kept as is.
#[must_use]
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
