//! One nf_tables transaction as netlink messages (`NFNL_MSG_BATCH_BEGIN` … `BATCH_END`),
//! each message remembered with the nft command it stands for, so an error the kernel
//! returns for one sequence number names the failing command.
//!
//! Commands and their messages (as nft sends them):
//! - `add chain` → `NEWCHAIN` (create, idempotent); `delete chain` → `DELCHAIN`;
//! - `flush chain` → `DELRULE` with only table and chain;
//! - `add rule` → `NEWRULE` (create|append), after its anonymous sets (`NEWSET` +
//!   `NEWSETELEM` by set id);
//! - `add set/map` → `NEWSET` with nft's key/data types and userdata; `delete` → `DELSET`;
//! - `flush set/map` → `DELSETELEM` with no elements;
//! - `add/delete element` → `NEWSETELEM`/`DELSETELEM`, keys as nft lays out
//!   concatenations (every field padded to 4 bytes).

use std::net::IpAddr;

use super::expr::{self, EncodeError, anon_set_userdata};
use super::msg::consts::*;
use super::msg::{Buf, message};
use crate::model::IpFamily;
use crate::nft::render::SetDef;
use crate::nft::rule::Rule;

/// The `typeof numgen random mod 1 : verdict` userdata nft 1.0.6 writes (from strace):
/// host byte order key, the numgen expression (random, modulus 1, offset 0) as the key's
/// `typeof`, and a verdict as the data's.
const VMAP_USERDATA: [u8; 56] = [
    0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x1a, 0x00, 0x04,
    0x17, 0x00, 0x00, 0x00, 0x01, 0x12, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x00,
    0x00, 0x00, 0x02, 0x04, 0x00, 0x00, 0x00, 0x00, 0x04, 0x08, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00,
];

/// The spec `render` gives every endpoint-selection map.
pub const VMAP_SPEC: &str = "typeof numgen random mod 1 : verdict";

/// Elements per `NEWSETELEM` message: attributes have 16-bit lengths, and a verdict
/// element with a long chain name is a few hundred bytes.
const ELEMENTS_PER_MESSAGE: usize = 100;

/// A transaction being encoded.
#[derive(Debug)]
pub struct Batch {
    family: IpFamily,
    table: String,
    /// The messages between begin and end, sequence numbers to be set on send.
    messages: Vec<(u16, u16, Vec<u8>)>,
    /// The nft command each message stands for.
    commands: Vec<String>,
    next_set_id: u32,
    /// Ids of the named sets created in this batch.
    set_ids: std::collections::HashMap<String, u32>,
}

impl Batch {
    /// An empty transaction on table `family table`.
    pub fn new(family: IpFamily, table: &str) -> Self {
        Self {
            family,
            table: table.to_string(),
            messages: Vec::new(),
            commands: Vec::new(),
            next_set_id: 0,
            set_ids: std::collections::HashMap::new(),
        }
    }

    /// Sends the following messages to table `table` (one transaction may span tables).
    pub fn set_table(&mut self, table: &str) {
        if self.table != table {
            self.table = table.to_string();
            // Set ids stay unique over the batch; names are looked up per table.
            self.set_ids.clear();
        }
    }

    /// The nft commands, one per message.
    pub fn commands(&self) -> &[String] {
        &self.commands
    }

    /// Whether nothing is in it.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    fn nfproto(&self) -> u8 {
        match self.family {
            IpFamily::V4 => NFPROTO_IPV4,
            IpFamily::V6 => NFPROTO_IPV6,
        }
    }

    fn tname(&self) -> String {
        let ip = crate::nft::rule::ip_keyword(self.family);
        format!("{ip} {}", self.table)
    }

    fn push(&mut self, ty: u16, flags: u16, attrs: Buf, command: String) {
        self.messages.push((ty, flags, attrs.bytes));
        self.commands.push(command);
    }

    /// The wire bytes with sequence numbers from `seq` (the begin message) on; every
    /// message between begin and end asks for an acknowledgement.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let mut out = Vec::new();
        message(
            &mut out,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let mut s = seq;
        for (ty, flags, attrs) in &self.messages {
            s = s.wrapping_add(1);
            message(
                &mut out,
                (NFNL_SUBSYS_NFTABLES << 8) | ty,
                NLM_F_REQUEST | NLM_F_ACK | flags,
                s,
                self.nfproto(),
                0,
                attrs,
            );
        }
        message(
            &mut out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            s.wrapping_add(1),
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        out
    }

    /// `add chain` (a regular chain).
    pub fn add_chain(&mut self, name: &str) {
        let mut b = Buf::default();
        b.put_str(NFTA_CHAIN_TABLE, &self.table);
        b.put_str(NFTA_CHAIN_NAME, name);
        let cmd = format!("add chain {} {name}", self.tname());
        self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, b, cmd);
    }

    /// `delete chain`.
    pub fn delete_chain(&mut self, name: &str) {
        let mut b = Buf::default();
        b.put_str(NFTA_CHAIN_TABLE, &self.table);
        b.put_str(NFTA_CHAIN_NAME, name);
        let cmd = format!("delete chain {} {name}", self.tname());
        self.push(NFT_MSG_DELCHAIN, 0, b, cmd);
    }

    /// `flush chain`: every rule of the chain deleted.
    pub fn flush_chain(&mut self, name: &str) {
        let mut b = Buf::default();
        b.put_str(NFTA_RULE_TABLE, &self.table);
        b.put_str(NFTA_RULE_CHAIN, name);
        let cmd = format!("flush chain {} {name}", self.tname());
        self.push(NFT_MSG_DELRULE, 0, b, cmd);
    }

    /// `add rule`, preceded by the anonymous sets it uses.
    ///
    /// # Errors
    /// The rule is base-chain text or mixes families.
    pub fn add_rule(&mut self, chain: &str, rule: &Rule) -> Result<(), EncodeError> {
        let ids = &self.set_ids;
        let enc = expr::encode(rule, &mut self.next_set_id, &|name| {
            ids.get(name).copied().unwrap_or(0)
        })?;
        for set in &enc.anon_sets {
            let key_len: u32 = if set.family == IpFamily::V4 { 4 } else { 16 };
            let mut b = Buf::default();
            b.put_str(NFTA_SET_TABLE, &self.table);
            b.put_str(NFTA_SET_NAME, "__set%d");
            b.put_be32(
                NFTA_SET_FLAGS,
                NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_INTERVAL,
            );
            b.put_be32(
                NFTA_SET_KEY_TYPE,
                if set.family == IpFamily::V4 {
                    TYPE_IPADDR
                } else {
                    TYPE_IP6ADDR
                },
            );
            b.put_be32(NFTA_SET_KEY_LEN, key_len);
            b.put_be32(NFTA_SET_ID, set.id);
            let size = u32::try_from(set.elements.len()).unwrap_or(u32::MAX);
            b.nest(9, |d| d.put_be32(1, size)); // NFTA_SET_DESC { SIZE }
            b.put(NFTA_SET_USERDATA, &anon_set_userdata(set.family, set.dir));
            let cmd = format!(
                "add rule {} {chain} {rule} (its anonymous set)",
                self.tname()
            );
            self.push(NFT_MSG_NEWSET, NLM_F_CREATE, b, cmd.clone());
            let mut e = Buf::default();
            e.put_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
            e.put_str(NFTA_SET_ELEM_LIST_SET, "__set%d");
            e.put_be32(NFTA_SET_ELEM_LIST_SET_ID, set.id);
            e.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                for (key, end) in &set.elements {
                    l.nest(NFTA_LIST_ELEM, |el| {
                        if *end {
                            el.put_be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                        }
                        el.put_value(NFTA_SET_ELEM_KEY, key);
                    });
                }
            });
            self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, e, cmd);
        }
        let mut b = Buf::default();
        b.put_str(NFTA_RULE_TABLE, &self.table);
        b.put_str(NFTA_RULE_CHAIN, chain);
        b.nest(NFTA_RULE_EXPRESSIONS, |l| {
            l.bytes.extend_from_slice(&enc.exprs)
        });
        if let Some(ud) = &enc.userdata {
            b.put(NFTA_RULE_USERDATA, ud);
        }
        let cmd = format!("add rule {} {chain} {rule}", self.tname());
        self.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, b, cmd);
        Ok(())
    }

    /// `add set|map` of a per-service set: an endpoint-selection vmap or an affinity set.
    ///
    /// # Errors
    /// A spec other than those two shapes.
    pub fn add_set(&mut self, set: &SetDef) -> Result<(), EncodeError> {
        self.next_set_id += 1;
        let mut b = Buf::default();
        b.put_str(NFTA_SET_TABLE, &self.table);
        b.put_str(NFTA_SET_NAME, &set.name);
        if set.spec == VMAP_SPEC {
            b.put_be32(NFTA_SET_FLAGS, NFT_SET_MAP);
            b.put_be32(NFTA_SET_KEY_TYPE, TYPE_INTEGER);
            b.put_be32(NFTA_SET_KEY_LEN, 4);
            b.put_be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
            b.put_be32(NFTA_SET_DATA_LEN, 0);
            b.put_be32(NFTA_SET_ID, self.next_set_id);
            b.put(NFTA_SET_USERDATA, &VMAP_USERDATA);
        } else {
            let timeout =
                affinity_timeout(self.family, &set.spec).ok_or_else(|| EncodeError::SetSpec {
                    name: set.name.clone(),
                    spec: set.spec.clone(),
                })?;
            let (ty, len) = match self.family {
                IpFamily::V4 => (TYPE_IPADDR, 4),
                IpFamily::V6 => (TYPE_IP6ADDR, 16),
            };
            b.put_be32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL);
            b.put_be32(NFTA_SET_KEY_TYPE, ty);
            b.put_be32(NFTA_SET_KEY_LEN, len);
            b.put_be32(NFTA_SET_ID, self.next_set_id);
            b.put_be64(NFTA_SET_TIMEOUT, timeout.saturating_mul(1000));
            b.put(NFTA_SET_USERDATA, &[0x00, 0x04, 0x02, 0x00, 0x00, 0x00]);
        }
        let cmd = format!(
            "add {} {} {} {{ {}; }}",
            set.kind,
            self.tname(),
            set.name,
            set.spec
        );
        self.set_ids.insert(set.name.clone(), self.next_set_id);
        self.push(NFT_MSG_NEWSET, NLM_F_CREATE, b, cmd);
        Ok(())
    }

    /// `delete set|map`.
    pub fn delete_set(&mut self, kind: &str, name: &str) {
        let mut b = Buf::default();
        b.put_str(NFTA_SET_TABLE, &self.table);
        b.put_str(NFTA_SET_NAME, name);
        let cmd = format!("delete {kind} {} {name}", self.tname());
        self.push(NFT_MSG_DELSET, 0, b, cmd);
    }

    /// `flush set|map`: every element deleted.
    pub fn flush_set(&mut self, kind: &str, name: &str) {
        let mut b = Buf::default();
        b.put_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
        b.put_str(NFTA_SET_ELEM_LIST_SET, name);
        let cmd = format!("flush {kind} {} {name}", self.tname());
        self.push(NFT_MSG_DELSETELEM, 0, b, cmd);
    }

    /// `add element` of keys (text as `render` writes them) and verdicts.
    ///
    /// # Errors
    /// A key or verdict in a form this encoder does not know.
    pub fn add_elements(
        &mut self,
        set: &str,
        elems: &[(String, Option<String>)],
    ) -> Result<(), EncodeError> {
        self.elements(set, elems, true)
    }

    /// `delete element` of keys.
    ///
    /// # Errors
    /// A key in a form this encoder does not know.
    pub fn delete_elements(&mut self, set: &str, keys: &[String]) -> Result<(), EncodeError> {
        let elems: Vec<(String, Option<String>)> = keys.iter().map(|k| (k.clone(), None)).collect();
        self.elements(set, &elems, false)
    }

    /// The elements `i : goto chain` of an endpoint-selection map.
    ///
    /// # Errors
    /// An element not of that form.
    pub fn add_vmap_elements(&mut self, set: &str, elems: &[String]) -> Result<(), EncodeError> {
        let bad = |e: &String| EncodeError::Element(e.clone(), set.to_string());
        let mut parsed = Vec::new();
        for e in elems {
            let (k, v) = e.split_once(" : ").ok_or_else(|| bad(e))?;
            let k: u32 = k.parse().map_err(|_| bad(e))?;
            let verdict = verdict(v).ok_or_else(|| bad(e))?;
            parsed.push((k.to_ne_bytes().to_vec(), Some(verdict)));
        }
        let cmd = format!(
            "add element {} {set} {{ {} }}",
            self.tname(),
            elems.join(", ")
        );
        self.element_messages(set, &parsed, true, &cmd);
        Ok(())
    }

    fn elements(
        &mut self,
        set: &str,
        elems: &[(String, Option<String>)],
        add: bool,
    ) -> Result<(), EncodeError> {
        let bad = |e: &str| EncodeError::Element(e.to_string(), set.to_string());
        let mut parsed = Vec::new();
        for (k, v) in elems {
            let key = self.key(k).ok_or_else(|| bad(k))?;
            let data = match v {
                Some(v) => Some(verdict(v).ok_or_else(|| bad(v))?),
                None => None,
            };
            parsed.push((key, if add { data } else { None }));
        }
        let items: Vec<String> = elems
            .iter()
            .map(|(k, v)| match v {
                Some(v) if add => format!("{k} : {v}"),
                _ => k.clone(),
            })
            .collect();
        let verb = if add { "add" } else { "delete" };
        let cmd = format!(
            "{verb} element {} {set} {{ {} }}",
            self.tname(),
            items.join(", ")
        );
        self.element_messages(set, &parsed, add, &cmd);
        Ok(())
    }

    fn element_messages(
        &mut self,
        set: &str,
        elems: &[(Vec<u8>, Option<VerdictData>)],
        add: bool,
        cmd: &str,
    ) {
        for chunk in elems.chunks(ELEMENTS_PER_MESSAGE) {
            let mut b = Buf::default();
            b.put_str(NFTA_SET_ELEM_LIST_TABLE, &self.table);
            b.put_str(NFTA_SET_ELEM_LIST_SET, set);
            b.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                for (key, data) in chunk {
                    l.nest(NFTA_LIST_ELEM, |el| {
                        el.put_value(NFTA_SET_ELEM_KEY, key);
                        if let Some((code, chain)) = data {
                            el.put_verdict(NFTA_SET_ELEM_DATA, *code, chain.as_deref());
                        }
                    });
                }
            });
            if add {
                self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, b, cmd.to_string());
            } else {
                self.push(NFT_MSG_DELSETELEM, 0, b, cmd.to_string());
            }
        }
    }

    /// A key as nft lays it out: each field of a concatenation in a 4-byte-aligned slot
    /// (addresses as they are, protocol numbers and ports padded).
    fn key(&self, text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for part in text.split(" . ") {
            if let Ok(a) = part.parse::<IpAddr>() {
                out.extend(expr::addr_bytes(self.family, a).ok()?);
            } else if let Some(p) = match part {
                "tcp" => Some(6u8),
                "udp" => Some(17),
                "sctp" => Some(132),
                _ => None,
            } {
                out.extend([p, 0, 0, 0]);
            } else {
                let port: u16 = part.parse().ok()?;
                let [hi, lo] = port.to_be_bytes();
                out.extend([hi, lo, 0, 0]);
            }
        }
        Some(out)
    }
}

/// A verdict as element data: code and target chain.
type VerdictData = (i32, Option<String>);

/// `goto X`, `jump X`, `drop`.
fn verdict(text: &str) -> Option<VerdictData> {
    if text == "drop" {
        return Some((NF_DROP, None));
    }
    let (verb, chain) = text.split_once(' ')?;
    match verb {
        "goto" => Some((NFT_GOTO, Some(chain.to_string()))),
        "jump" => Some((NFT_JUMP, Some(chain.to_string()))),
        _ => None,
    }
}

/// The timeout (seconds) of an affinity set's spec
/// `type ipv4_addr; flags dynamic,timeout; timeout Ns`.
fn affinity_timeout(family: IpFamily, spec: &str) -> Option<u64> {
    let ty = match family {
        IpFamily::V4 => "ipv4_addr",
        IpFamily::V6 => "ipv6_addr",
    };
    let rest = spec.strip_prefix(&format!("type {ty}; flags dynamic,timeout; timeout "))?;
    rest.strip_suffix('s')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_keys_are_padded() {
        let b = Batch::new(IpFamily::V4, "nodelet");
        assert_eq!(
            b.key("172.30.0.41 . tcp . 80"),
            Some(vec![172, 30, 0, 41, 6, 0, 0, 0, 0, 80, 0, 0])
        );
        assert_eq!(
            b.key("udp . 3001"),
            Some(vec![17, 0, 0, 0, 0x0b, 0xb9, 0, 0])
        );
        assert_eq!(b.key("fd00::1"), None);
        assert_eq!(
            affinity_timeout(
                IpFamily::V4,
                "type ipv4_addr; flags dynamic,timeout; timeout 60s"
            ),
            Some(60)
        );
    }

    #[test]
    fn messages_are_framed_with_sequence_numbers() {
        let mut b = Batch::new(IpFamily::V4, "t3");
        b.add_chain("c");
        let wire = b.encode(100);
        // begin (20) + NEWCHAIN (36, as nft sends it) + end (20).
        assert_eq!(wire.len(), 76);
        let newchain = &wire[20..56];
        assert_eq!(u32::from_ne_bytes(newchain[..4].try_into().expect("4")), 36);
        assert_eq!(
            u32::from_ne_bytes(newchain[8..12].try_into().expect("4")),
            101
        );
        // Table "t3" and chain "c" exactly as nft's NEWCHAIN (strace).
        assert_eq!(
            &newchain[20..],
            b"\x07\x00\x01\x00t3\x00\x00\x06\x00\x03\x00c\x00\x00\x00"
        );
    }
}
