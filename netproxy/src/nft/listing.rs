//! The live table as `nft -j list table ip nodelet` shows it, reduced to what the
//! consistency check compares: chains and their rule counts, sets and maps by name, and
//! the elements of our dispatch maps in the same text form the renderer writes.
//!
//! Rules are compared by count, not content: nft normalises rule text (and its JSON is a
//! different shape from the script), so a content comparison would need a second
//! renderer. A rule deleted, added or a chain flushed by someone else changes the count;
//! a rule edited in place is not seen (noted in the crate's docs as a known limit).

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use super::Container;

/// Why a listing could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error("nft's JSON listing did not parse: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unexpected element {element} in {container}")]
    Element { container: String, element: String },
}

/// What the table holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Chain name → number of rules.
    pub chains: HashMap<String, usize>,
    /// Names of sets and maps.
    pub sets: HashSet<String>,
    /// Maps (not sets) by name: for deleting with the right keyword.
    pub maps: HashSet<String>,
    /// Number of elements of every set and map.
    pub set_sizes: HashMap<String, usize>,
    /// Elements of our dispatch containers: key → value (None for sets).
    pub elements: HashMap<Container, HashMap<String, Option<String>>>,
}

#[derive(Deserialize)]
struct Listing {
    nftables: Vec<Item>,
}

/// One object of the listing: exactly one of these keys is present (metainfo and table
/// objects have none of them).
#[derive(Deserialize)]
struct Item {
    chain: Option<ChainJ>,
    rule: Option<RuleJ>,
    set: Option<SetJ>,
    map: Option<SetJ>,
}

#[derive(Deserialize)]
struct ChainJ {
    name: String,
}

#[derive(Deserialize)]
struct RuleJ {
    chain: String,
}

#[derive(Deserialize)]
struct SetJ {
    name: String,
    #[serde(default)]
    elem: Vec<Value>,
}

/// Parses `nft -j list table` output.
///
/// # Errors
/// Malformed JSON, or an element of our maps in a shape we never write.
pub fn parse(json: &str) -> Result<Observed, ListingError> {
    let listing: Listing = serde_json::from_str(json)?;
    let mut out = Observed::default();
    for item in listing.nftables {
        if let Some(c) = item.chain {
            out.chains.entry(c.name).or_insert(0);
        }
        if let Some(r) = item.rule {
            *out.chains.entry(r.chain).or_insert(0) += 1;
        }
        if let Some(m) = &item.map {
            out.maps.insert(m.name.clone());
        }
        if let Some(s) = item.set.or(item.map) {
            out.set_sizes.insert(s.name.clone(), s.elem.len());
            {
                if let Some(container) = Container::from_name(&s.name) {
                    let elems = out.elements.entry(container).or_default();
                    for e in &s.elem {
                        let (k, v) = element(e).ok_or_else(|| ListingError::Element {
                            container: s.name.clone(),
                            element: e.to_string(),
                        })?;
                        elems.insert(k, v);
                    }
                }
                out.sets.insert(s.name);
            }
        }
    }
    Ok(out)
}

/// One element: a bare key (set), `[key, verdict]` (map), or either wrapped in
/// `{"elem": {"val": …}}` when it carries a timeout or comment.
fn element(v: &Value) -> Option<(String, Option<String>)> {
    match v {
        Value::Array(pair) if pair.len() == 2 => Some((expr(&pair[0])?, Some(verdict(&pair[1])?))),
        Value::Object(o) if o.contains_key("elem") => element(o.get("elem")?.get("val")?),
        _ => Some((expr(v)?, None)),
    }
}

fn expr(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(o) => {
            let parts = o.get("concat")?.as_array()?;
            let parts: Option<Vec<String>> = parts.iter().map(expr).collect();
            Some(parts?.join(" . "))
        }
        _ => None,
    }
}

fn verdict(v: &Value) -> Option<String> {
    let o = v.as_object()?;
    let (k, inner) = o.iter().next()?;
    match k.as_str() {
        "goto" | "jump" => Some(format!("{k} {}", inner.get("target")?.as_str()?)),
        "drop" | "accept" | "return" | "continue" => Some(k.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chains_rules_and_elements() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "ip", "name": "nodelet", "handle": 1}},
          {"map": {"family": "ip", "name": "service-ips", "table": "nodelet", "map": "verdict",
            "elem": [[{"concat": ["10.96.0.2", "udp", 53]}, {"drop": null}],
                     [{"concat": ["10.96.0.1", "tcp", 80]}, {"goto": {"target": "service-X-ns/s/tcp/p"}}]]}},
          {"set": {"family": "ip", "name": "cluster-ips", "table": "nodelet", "elem": ["10.96.0.1"]}},
          {"set": {"family": "ip", "name": "affinity-X", "table": "nodelet", "flags": ["timeout"], "timeout": 10800,
            "elem": [{"elem": {"val": "10.1.1.1", "timeout": 10800, "expires": 10000}}]}},
          {"chain": {"family": "ip", "table": "nodelet", "name": "reject-chain", "handle": 3}},
          {"chain": {"family": "ip", "table": "nodelet", "name": "empty", "handle": 4}},
          {"rule": {"family": "ip", "table": "nodelet", "chain": "reject-chain", "handle": 5, "expr": [{"reject": null}]}}
        ]}"#;
        let o = parse(json).expect("parse");
        assert_eq!(o.chains.get("reject-chain"), Some(&1));
        assert_eq!(o.chains.get("empty"), Some(&0));
        assert!(o.sets.contains("affinity-X") && o.sets.contains("service-ips"));
        let m = &o.elements[&Container::ServiceIps];
        assert_eq!(
            m.get("10.96.0.2 . udp . 53"),
            Some(&Some("drop".to_string()))
        );
        assert_eq!(
            m.get("10.96.0.1 . tcp . 80"),
            Some(&Some("goto service-X-ns/s/tcp/p".to_string()))
        );
        assert_eq!(
            o.elements[&Container::ClusterIps].get("10.96.0.1"),
            Some(&None)
        );
    }

    #[test]
    fn unknown_element_shapes_are_errors() {
        let json = r#"{"nftables": [{"map": {"name": "service-ips", "elem": [[{"prefix": {}}, {"drop": null}]]}}]}"#;
        assert!(matches!(parse(json), Err(ListingError::Element { .. })));
    }
}
