//! One nft transaction, built from fragment diffs and rendered as a script in an order
//! that never leaves a reference dangling: new chains and sets are declared first, changed
//! chains are flushed before elements and chains they pointed at are deleted, rules are
//! added once every chain exists, and dead chains are flushed all together before any of
//! them is deleted (service chains jump to endpoint chains).
//!
//! Map elements can be shared between service ports (every port of a service puts its
//! ClusterIP into `cluster-ips`), so the programmed elements are reference-counted in an
//! `ElementIndex` and a key is deleted only when its last owner goes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::Container;
use super::netlink::{Batch, EncodeError};
use super::render::{Chain, Element, Fragment, SetDef};
use super::rule::Rule;
use crate::model::IpFamily;

/// Elements as the kernel holds them: for each key, the values its owners want (the first
/// one is programmed).
#[derive(Debug, Default, Clone)]
pub struct ElementIndex {
    owners: HashMap<(Container, String), Vec<Option<String>>>,
}

impl ElementIndex {
    fn effective(&self, key: &(Container, String)) -> Option<Option<String>> {
        self.owners.get(key).and_then(|v| v.first().cloned())
    }

    /// Every programmed element: (container, key, value).
    pub fn iter(&self) -> impl Iterator<Item = (Container, &str, Option<&str>)> {
        self.owners
            .iter()
            .filter_map(|((c, k), v)| v.first().map(|first| (*c, k.as_str(), first.as_deref())))
    }

    /// How many distinct keys are programmed.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

/// A transaction being built.
#[derive(Debug, Default, Clone)]
pub struct Tx {
    /// Raw leading commands (table and base setup in a full sync).
    head: Vec<String>,
    add_chains: Vec<String>,
    add_sets: Vec<SetDef>,
    flush_chains: Vec<String>,
    /// Endpoint maps emptied before their elements are written again.
    flush_sets: Vec<SetDef>,
    replace_sets: Vec<SetDef>,
    del_elements: BTreeMap<Container, Vec<String>>,
    rules: Vec<(String, Vec<Rule>)>,
    /// Keys and values (None for sets).
    add_elements: BTreeMap<Container, Vec<(String, Option<String>)>>,
    /// Elements of endpoint maps, by map.
    set_elements: Vec<SetDef>,
    dead_chains: Vec<String>,
    del_sets: Vec<(&'static str, String)>,
    /// Element keys touched, with the value programmed before this transaction.
    touched: HashMap<(Container, String), Option<Option<String>>>,
}

impl Tx {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a raw command at the start.
    pub fn head(&mut self, cmd: String) {
        self.head.push(cmd);
    }

    /// Declares a chain (idempotent in nft) without flushing it.
    pub fn add_chain(&mut self, name: &str) {
        self.add_chains.push(name.to_string());
    }

    /// Declares a set (idempotent when its spec is unchanged); a set with elements of
    /// ours (an endpoint map) is also flushed and refilled.
    pub fn add_set(&mut self, set: SetDef) {
        if !set.elements.is_empty() {
            self.flush_sets.push(set.clone());
            self.set_elements.push(set.clone());
        }
        self.add_sets.push(set);
    }

    /// Empties a chain before its rules are added again.
    pub fn flush_chain(&mut self, name: &str) {
        self.flush_chains.push(name.to_string());
    }

    /// Adds a chain's rules (after every declaration and flush).
    pub fn rules(&mut self, chain: &Chain) {
        if !chain.rules.is_empty() {
            self.rules.push((chain.name.clone(), chain.rules.clone()));
        }
    }

    /// Removes a chain (flushed first, with the other dead chains).
    pub fn delete_chain(&mut self, name: &str) {
        self.dead_chains.push(name.to_string());
    }

    /// Removes a set (`kind` `set` or `map`) after the chains using it were flushed.
    pub fn delete_set(&mut self, kind: &'static str, name: &str) {
        self.del_sets.push((kind, name.to_string()));
    }

    /// Adds an element directly (full sync, after the containers were flushed).
    pub fn add_element(&mut self, e: &Element) {
        self.add_elements
            .entry(e.container)
            .or_default()
            .push((e.key.clone(), e.value.clone()));
    }

    /// Deletes an element by key directly (drift repair).
    pub fn delete_element(&mut self, container: Container, key: &str) {
        self.del_elements
            .entry(container)
            .or_default()
            .push(key.to_string());
    }

    /// Whether the transaction may change the table: anything recorded, elements
    /// included (those are resolved against the index only when encoded), so a
    /// transaction that nets to nothing may still count.
    pub fn touches(&self) -> bool {
        !self.is_empty() || !self.touched.is_empty()
    }

    /// Whether the transaction does nothing.
    pub fn is_empty(&self) -> bool {
        self.head.is_empty()
            && self.add_chains.is_empty()
            && self.add_sets.is_empty()
            && self.flush_chains.is_empty()
            && self.replace_sets.is_empty()
            && self.flush_sets.is_empty()
            && self.set_elements.is_empty()
            && self.del_elements.values().all(Vec::is_empty)
            && self.rules.is_empty()
            && self.add_elements.values().all(Vec::is_empty)
            && self.dead_chains.is_empty()
            && self.del_sets.is_empty()
    }

    /// Records the change of one service port's fragment from `old` to `new` (either may
    /// be empty), updating `index` to the elements programmed after the transaction.
    pub fn diff(&mut self, old: &Fragment, new: &Fragment, index: &mut ElementIndex) {
        let old_sets: HashMap<&str, &SetDef> =
            old.sets.iter().map(|s| (s.name.as_str(), s)).collect();
        let new_sets: HashSet<&str> = new.sets.iter().map(|s| s.name.as_str()).collect();
        let mut respec = false;
        for set in &new.sets {
            match old_sets.get(set.name.as_str()) {
                None => self.add_set(set.clone()),
                Some(o) if o.spec != set.spec => {
                    respec = true;
                    self.replace_sets.push(set.clone());
                    if !set.elements.is_empty() {
                        self.set_elements.push(set.clone());
                    }
                }
                Some(o) if o.elements != set.elements => {
                    self.flush_sets.push(set.clone());
                    self.set_elements.push(set.clone());
                }
                Some(_) => {}
            }
        }
        for set in &old.sets {
            if !new_sets.contains(set.name.as_str()) {
                self.del_sets.push((set.kind, set.name.clone()));
            }
        }
        let old_chains: HashMap<&str, &Chain> =
            old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
        let new_chains: HashSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
        for c in &new.chains {
            match old_chains.get(c.name.as_str()) {
                None => {
                    self.add_chains.push(c.name.clone());
                    self.rules(c);
                }
                Some(o) if respec || o.rules != c.rules => {
                    self.flush_chains.push(c.name.clone());
                    self.rules(c);
                }
                Some(_) => {}
            }
        }
        if respec {
            // Chains going away may still use a set being replaced: empty them first too.
            for c in &old.chains {
                if !new_chains.contains(c.name.as_str()) {
                    self.flush_chains.push(c.name.clone());
                }
            }
        }
        for c in &old.chains {
            if !new_chains.contains(c.name.as_str()) {
                self.dead_chains.push(c.name.clone());
            }
        }
        if old.elements != new.elements {
            for e in &old.elements {
                let key = (e.container, e.key.clone());
                self.touch(index, &key);
                if let Some(v) = index.owners.get_mut(&key)
                    && let Some(pos) = v.iter().position(|x| x == &e.value)
                {
                    v.remove(pos);
                    if v.is_empty() {
                        index.owners.remove(&key);
                    }
                }
            }
            for e in &new.elements {
                let key = (e.container, e.key.clone());
                self.touch(index, &key);
                index.owners.entry(key).or_default().push(e.value.clone());
            }
        }
    }

    fn touch(&mut self, index: &ElementIndex, key: &(Container, String)) {
        if !self.touched.contains_key(key) {
            self.touched.insert(key.clone(), index.effective(key));
        }
    }

    /// Turns the touched element keys into deletions and additions against `index`.
    fn settle_elements(&mut self, index: &ElementIndex) {
        let mut touched: Vec<_> = std::mem::take(&mut self.touched).into_iter().collect();
        touched.sort();
        for (key, before) in touched {
            let after = index.effective(&key);
            if before == after {
                continue;
            }
            if before.is_some() {
                self.del_elements
                    .entry(key.0)
                    .or_default()
                    .push(key.1.clone());
            }
            if let Some(v) = after {
                self.add_elements
                    .entry(key.0)
                    .or_default()
                    .push((key.1.clone(), v));
            }
        }
    }

    /// The commands in transaction order.
    fn commands(&self) -> Vec<Cmd<'_>> {
        let mut v = Vec::new();
        v.extend(self.head.iter().map(|c| Cmd::Raw(c)));
        v.extend(self.add_chains.iter().map(|c| Cmd::AddChain(c)));
        v.extend(self.add_sets.iter().map(Cmd::AddSet));
        v.extend(self.flush_chains.iter().map(|c| Cmd::FlushChain(c)));
        v.extend(
            self.flush_sets
                .iter()
                .map(|s| Cmd::FlushSet(s.kind, &s.name)),
        );
        for set in &self.replace_sets {
            v.push(Cmd::DeleteSet(set.kind, &set.name));
            v.push(Cmd::AddSet(set));
        }
        for (c, keys) in &self.del_elements {
            v.push(Cmd::DeleteElements(*c, keys));
        }
        for (chain, rules) in &self.rules {
            v.extend(rules.iter().map(|r| Cmd::AddRule(chain, r)));
        }
        for (c, elems) in &self.add_elements {
            v.push(Cmd::AddElements(*c, elems));
        }
        v.extend(self.set_elements.iter().map(Cmd::SetElements));
        v.extend(self.dead_chains.iter().map(|c| Cmd::FlushChain(c)));
        // Endpoint maps going away point at endpoint chains going away: empty them first.
        for (kind, set) in &self.del_sets {
            if *kind == "map" {
                v.push(Cmd::FlushSet(kind, set));
            }
        }
        v.extend(self.dead_chains.iter().map(|c| Cmd::DeleteChain(c)));
        v.extend(self.del_sets.iter().map(|(k, s)| Cmd::DeleteSet(k, s)));
        v
    }

    /// The script for `nft -f`, for table `family table`.
    pub fn render(mut self, family: &str, table: &str, index: &ElementIndex) -> String {
        self.settle_elements(index);
        let t = format!("{family} {table}");
        let mut s = String::new();
        for cmd in self.commands() {
            match cmd {
                Cmd::Raw(c) => {
                    s.push_str(c);
                    s.push('\n');
                }
                Cmd::AddChain(c) => {
                    let _ = writeln!(s, "add chain {t} {c}");
                }
                Cmd::AddSet(set) => {
                    let _ = writeln!(s, "add {} {t} {} {{ {}; }}", set.kind, set.name, set.spec);
                }
                Cmd::FlushChain(c) => {
                    let _ = writeln!(s, "flush chain {t} {c}");
                }
                Cmd::FlushSet(kind, name) => {
                    let _ = writeln!(s, "flush {kind} {t} {name}");
                }
                Cmd::DeleteSet(kind, name) => {
                    let _ = writeln!(s, "delete {kind} {t} {name}");
                }
                Cmd::DeleteElements(c, keys) => {
                    write_elements(&mut s, "delete", &t, c, keys, |k| k.clone());
                }
                Cmd::AddRule(chain, r) => {
                    let _ = writeln!(s, "add rule {t} {chain} {r}");
                }
                Cmd::AddElements(c, elems) => {
                    write_elements(&mut s, "add", &t, c, elems, |(k, v)| {
                        render_elem(k, v.as_deref())
                    });
                }
                Cmd::SetElements(set) => {
                    let _ = writeln!(
                        s,
                        "add element {t} {} {{ {} }}",
                        set.name,
                        set.elements.join(", ")
                    );
                }
                Cmd::DeleteChain(c) => {
                    let _ = writeln!(s, "delete chain {t} {c}");
                }
            }
        }
        s
    }

    /// The same transaction as a netlink batch on table `family nodelet`, command for
    /// command in the order of `render`.
    ///
    /// # Errors
    /// As `encode_into`.
    pub fn encode(self, family: IpFamily, index: &ElementIndex) -> Result<Batch, EncodeError> {
        let mut b = Batch::new(family, super::TABLE);
        self.encode_into(&mut b, index)?;
        Ok(b)
    }

    /// Appends the transaction to `b`, on the table `b` is set to.
    ///
    /// # Errors
    /// Something only `nft -f` text can carry: base-table commands of a full sync, or a
    /// rule, set or element outside the shapes the encoder knows.
    pub fn encode_into(mut self, b: &mut Batch, index: &ElementIndex) -> Result<(), EncodeError> {
        self.settle_elements(index);
        for cmd in self.commands() {
            match cmd {
                Cmd::Raw(c) => return Err(EncodeError::Raw(c.to_string())),
                Cmd::AddChain(c) => b.add_chain(c),
                Cmd::AddSet(set) => b.add_set(set)?,
                Cmd::FlushChain(c) => b.flush_chain(c),
                Cmd::FlushSet(kind, name) => b.flush_set(kind, name),
                Cmd::DeleteSet(kind, name) => b.delete_set(kind, name),
                Cmd::DeleteElements(c, keys) => b.delete_elements(c.name(), keys)?,
                Cmd::AddRule(chain, r) => b.add_rule(chain, r)?,
                Cmd::AddElements(c, elems) => b.add_elements(c.name(), elems)?,
                Cmd::SetElements(set) => b.add_vmap_elements(&set.name, &set.elements)?,
                Cmd::DeleteChain(c) => b.delete_chain(c),
            }
        }
        Ok(())
    }
}

/// One command of a transaction, borrowed from the `Tx`.
enum Cmd<'a> {
    Raw(&'a str),
    AddChain(&'a str),
    AddSet(&'a SetDef),
    FlushChain(&'a str),
    FlushSet(&'a str, &'a str),
    DeleteSet(&'a str, &'a str),
    DeleteElements(Container, &'a [String]),
    AddRule(&'a str, &'a Rule),
    AddElements(Container, &'a [(String, Option<String>)]),
    SetElements(&'a SetDef),
    DeleteChain(&'a str),
}

fn render_elem(key: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{key} : {v}"),
        None => key.to_string(),
    }
}

/// Elements in commands of up to 1000, which keeps lines bounded without costing nft a
/// command per element.
fn write_elements<T>(
    s: &mut String,
    verb: &str,
    table: &str,
    container: Container,
    items: &[T],
    text: impl Fn(&T) -> String,
) {
    for chunk in items.chunks(1000) {
        let items: Vec<String> = chunk.iter().map(&text).collect();
        let _ = writeln!(
            s,
            "{verb} element {table} {} {{ {} }}",
            container.name(),
            items.join(", ")
        );
    }
}
