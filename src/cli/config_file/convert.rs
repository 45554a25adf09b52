//! One `KubeletConfiguration` field's JSON value converted to the type of the flag
//! it sets (a string, a path, a Go duration, an IP, a `key=value` list …), each
//! error a reason that [`super::apply`] reports with the field's path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::cli::parse_duration;

pub(super) fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => {
            s.is_empty() || (s.starts_with('0') && parse_duration(s).is_ok_and(|d| d.is_zero()))
        }
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

pub(super) fn text(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("want a string, got {v}"))
}

pub(super) fn path(v: &Value) -> Result<PathBuf, String> {
    text(v).map(PathBuf::from)
}

pub(super) fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("want a boolean, got {v}"))
}

pub(super) fn int<T: TryFrom<i64>>(v: &Value) -> Result<T, String> {
    v.as_i64()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{v} is out of range"))
}

pub(super) fn port(v: &Value) -> Result<u16, String> {
    int(v).map_err(|_| format!("{v} must be between 0 and 65535, inclusive"))
}

pub(super) fn duration(v: &Value) -> Result<Duration, String> {
    parse_duration(&text(v)?)
}

pub(super) fn ip(v: &Value) -> Result<IpAddr, String> {
    let s = text(v)?;
    s.parse()
        .map_err(|_| format!("{s:?} is not a valid IP address"))
}

pub(super) fn list(v: &Value) -> Result<&Vec<Value>, String> {
    v.as_array().ok_or_else(|| format!("want a list, got {v}"))
}

pub(super) fn map(v: &Value) -> Result<&Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("want a map, got {v}"))
}

/// A `map[string]string` as the flag's `key<sep>value` entries, sorted by key.
pub(super) fn pairs(v: &Value, sep: &str) -> Result<Vec<String>, String> {
    let sorted: BTreeMap<&String, &Value> = map(v)?.iter().collect();
    sorted
        .into_iter()
        .map(|(k, v)| Ok(format!("{k}{sep}{}", text(v)?)))
        .collect()
}

/// `staticPodURLHeader` (`map[string][]string`) as `--manifest-url-header` entries.
pub(super) fn headers(v: &Value) -> Result<Vec<String>, String> {
    let sorted: BTreeMap<&String, &Value> = map(v)?.iter().collect();
    let mut out = Vec::new();
    for (name, values) in sorted {
        for value in list(values)? {
            let value = text(value)?;
            // The flag splits on commas; a value holding one cannot pass through it.
            if value.contains(',') || name.contains([',', ':']) {
                return Err(format!(
                    "header {name:?}: {value:?}: a comma in a header value (or a comma or colon in its name) is not supported"
                ));
            }
            out.push(format!("{name}:{value}"));
        }
    }
    Ok(out)
}

/// A `v1.Taint` as a `--register-with-taints` entry (`key=value:Effect`).
pub(super) fn taint(v: &Value) -> Result<String, String> {
    let t = map(v)?;
    let get = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("");
    let (key, value, effect) = (get("key"), get("value"), get("effect"));
    Ok(match value {
        "" => format!("{key}:{effect}"),
        value => format!("{key}={value}:{effect}"),
    })
}

/// klog's verbosity as a tracing filter: 0–1 info (upstream's default is 0), 2–4
/// debug (klog's "useful steady state" to "debug" levels), 5 and up trace.
pub(super) fn verbosity_filter(level: u32) -> &'static str {
    match level {
        0 | 1 => "info",
        2..=4 => "debug",
        _ => "trace",
    }
}
