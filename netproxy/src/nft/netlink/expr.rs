//! Rules (`rule::Rule`) encoded as nf_tables expressions exactly as nft 1.0.6 encodes the
//! same text (checked against `nft --debug=netlink` and strace of nft's `sendmsg`):
//!
//! - `ip daddr A` → `payload load 4b @ network header + 16 => reg 1; cmp eq reg 1 A`;
//! - a prefix on a byte boundary loads only its bytes (`/8` → 1 byte), any other prefix
//!   loads the whole address and masks it (`bitwise reg 1 = (reg 1 & M) ^ 0`);
//! - several networks become an anonymous interval set (`__set%d`, flags
//!   anonymous|constant|interval, elements as ranges with interval-end markers) looked up
//!   with the invert flag for `!=`;
//! - `tcp dport P` carries nft's implicit dependency `meta l4proto tcp` before it;
//! - verdicts are `immediate reg 0`; comments go in the rule's userdata (TLV type 0).

use std::net::IpAddr;

use super::msg::Buf;
use super::msg::consts::*;
use crate::model::{IpFamily, Protocol};
use crate::nft::rule::{Dir, Match, Net, Rule, Verdict};

/// Why a rule cannot be sent over netlink (it then goes through `nft -f`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("rule {0:?} is base-chain text, which only a full sync writes")]
    Raw(String),
    #[error("address {addr} does not belong to the table's family")]
    Family { addr: IpAddr },
    #[error("element {0:?} of {1} is not in a form this encoder knows")]
    Element(String, String),
    #[error("set {name} has a spec this encoder does not know: {spec}")]
    SetSpec { name: String, spec: String },
}

/// An anonymous interval set a rule needs, sent before the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnonSet {
    pub id: u32,
    pub family: IpFamily,
    pub dir: Dir,
    /// Elements as (key, interval end?), in nft's order.
    pub elements: Vec<(Vec<u8>, bool)>,
}

/// One encoded rule: its expressions, userdata and the anonymous sets it references.
#[derive(Debug, Clone, Default)]
pub struct EncodedRule {
    pub exprs: Vec<u8>,
    pub userdata: Option<Vec<u8>>,
    pub anon_sets: Vec<AnonSet>,
}

fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The bytes of an address in `family`.
pub fn addr_bytes(family: IpFamily, addr: IpAddr) -> Result<Vec<u8>, EncodeError> {
    match (family, addr) {
        (IpFamily::V4, IpAddr::V4(a)) => Ok(a.octets().to_vec()),
        (IpFamily::V6, IpAddr::V6(a)) => Ok(a.octets().to_vec()),
        _ => Err(EncodeError::Family { addr }),
    }
}

fn addr_offset(family: IpFamily, dir: Dir) -> u32 {
    match (family, dir) {
        (IpFamily::V4, Dir::Saddr) => 12,
        (IpFamily::V4, Dir::Daddr) => 16,
        (IpFamily::V6, Dir::Saddr) => 8,
        (IpFamily::V6, Dir::Daddr) => 24,
    }
}

fn addr_len(family: IpFamily) -> u32 {
    match family {
        IpFamily::V4 => 4,
        IpFamily::V6 => 16,
    }
}

/// The expressions list being written.
struct Exprs(Buf);

impl Exprs {
    fn expr(&mut self, name: &str, f: impl FnOnce(&mut Buf)) {
        self.0.nest(NFTA_LIST_ELEM, |e| {
            e.put_str(NFTA_EXPR_NAME, name);
            e.nest(NFTA_EXPR_DATA, f);
        });
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32) {
        self.expr("payload", |b| {
            b.put_be32(1, 1); // DREG reg 1
            b.put_be32(2, base); // BASE
            b.put_be32(3, offset);
            b.put_be32(4, len);
        });
    }

    fn cmp(&mut self, negate: bool, data: &[u8]) {
        self.expr("cmp", |b| {
            b.put_be32(1, 1); // SREG
            b.put_be32(2, u32::from(negate)); // OP eq/neq
            b.put_value(3, data);
        });
    }

    fn meta_l4proto(&mut self, proto: Protocol) {
        self.expr("meta", |b| {
            b.put_be32(2, 16); // KEY l4proto
            b.put_be32(1, 1); // DREG
        });
        self.cmp(false, &[proto_number(proto)]);
    }

    fn verdict(&mut self, v: &Verdict) {
        let (code, chain) = match v {
            Verdict::Jump(c) => (NFT_JUMP, Some(c.as_str())),
            Verdict::Goto(c) => (NFT_GOTO, Some(c.as_str())),
            Verdict::Drop => (NF_DROP, None),
        };
        self.expr("immediate", |b| {
            b.put_be32(1, 0); // DREG verdict
            b.put_verdict(2, code, chain);
        });
    }

    fn immediate(&mut self, reg: u32, data: &[u8]) {
        self.expr("immediate", |b| {
            b.put_be32(1, reg);
            b.put_value(2, data);
        });
    }
}

/// `len` bytes of the address, masked to `prefix` bits.
fn mask(len: usize, prefix: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let bits = usize::from(prefix).saturating_sub(i * 8).min(8);
            if bits == 0 { 0 } else { 0xffu8 << (8 - bits) }
        })
        .collect()
}

fn net_range(family: IpFamily, net: &Net) -> Result<(u128, u128), EncodeError> {
    let (addr, prefix) = match net {
        Net::Host(a) => (*a, if a.is_ipv4() { 32 } else { 128 }),
        Net::Prefix(c) => (c.addr(), c.prefix()),
    };
    let bits: u32 = if family == IpFamily::V4 { 32 } else { 128 };
    let start = match (family, addr) {
        (IpFamily::V4, IpAddr::V4(a)) => u128::from(u32::from(a)),
        (IpFamily::V6, IpAddr::V6(a)) => u128::from(a),
        _ => return Err(EncodeError::Family { addr }),
    };
    let host_bits = bits - u32::from(prefix);
    let span = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    Ok((start, start | span))
}

fn range_bytes(family: IpFamily, v: u128) -> Vec<u8> {
    match family {
        IpFamily::V4 => u32::try_from(v).unwrap_or(u32::MAX).to_be_bytes().to_vec(),
        IpFamily::V6 => v.to_be_bytes().to_vec(),
    }
}

/// The elements of an anonymous interval set of `nets`: merged ranges, each a start and
/// (unless it runs to the end of the address space) an interval-end one past its last
/// address, after a leading interval-end at zero when the first range starts above it.
pub fn interval_elements(
    family: IpFamily,
    nets: &[Net],
) -> Result<Vec<(Vec<u8>, bool)>, EncodeError> {
    let mut ranges = nets
        .iter()
        .map(|n| net_range(family, n))
        .collect::<Result<Vec<_>, _>>()?;
    ranges.sort();
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let max = match family {
        IpFamily::V4 => u128::from(u32::MAX),
        IpFamily::V6 => u128::MAX,
    };
    let mut out = Vec::new();
    if merged.first().is_some_and(|(s, _)| *s > 0) {
        out.push((range_bytes(family, 0), true));
    }
    for (s, e) in merged {
        out.push((range_bytes(family, s), false));
        if e < max {
            out.push((range_bytes(family, e + 1), true));
        }
    }
    Ok(out)
}

/// Encodes `rule`; `next_set_id` numbers the anonymous sets it creates, and `set_id`
/// gives the id of a named set created earlier in the same batch (0 for one already in
/// the kernel: nft sends the id it has, which is 0 for sets it only listed).
///
/// # Errors
/// A `Raw` rule, or an address of the other family.
pub fn encode(
    rule: &Rule,
    next_set_id: &mut u32,
    set_id: &dyn Fn(&str) -> u32,
) -> Result<EncodedRule, EncodeError> {
    let mut x = Exprs(Buf::default());
    let mut out = EncodedRule::default();
    match rule {
        Rule::Raw(text) => return Err(EncodeError::Raw(text.clone())),
        Rule::Match {
            family,
            matches,
            verdict,
            comment,
        } => {
            for m in matches {
                encode_match(&mut x, *family, m, next_set_id, set_id, &mut out.anon_sets)?;
            }
            x.verdict(verdict);
            if let Some(c) = comment {
                let mut ud = vec![0u8, u8::try_from(c.len() + 1).unwrap_or(u8::MAX)];
                ud.extend_from_slice(c.as_bytes());
                ud.push(0);
                out.userdata = Some(ud);
            }
        }
        Rule::NumgenVmap { modulus, map } => {
            x.expr("numgen", |b| {
                b.put_be32(1, 1); // DREG
                b.put_be32(2, *modulus); // MODULUS
                b.put_be32(3, 1); // TYPE random
                b.put_be32(4, 0); // OFFSET
            });
            x.expr("lookup", |b| {
                b.put_be32(2, 1); // SREG
                b.put_be32(3, 0); // DREG verdict
                b.put_str(1, map); // SET
                b.put_be32(4, set_id(map)); // SET_ID
            });
        }
        Rule::UpdateSaddr { family, set } => {
            x.payload(1, addr_offset(*family, Dir::Saddr), addr_len(*family));
            x.expr("dynset", |b| {
                b.put_be32(4, 1); // SREG_KEY
                b.put_be32(3, 1); // OP update
                b.put_str(1, set); // SET_NAME
                b.put_be32(2, set_id(set)); // SET_ID
            });
        }
        Rule::Dnat { proto, addr, port } => {
            let family = IpFamily::of(addr);
            x.meta_l4proto(*proto);
            x.immediate(1, &addr_bytes(family, *addr)?);
            x.immediate(2, &port.to_be_bytes());
            x.expr("nat", |b| {
                b.put_be32(1, 1); // TYPE dnat
                b.put_be32(
                    2,
                    u32::from(match family {
                        IpFamily::V4 => NFPROTO_IPV4,
                        IpFamily::V6 => NFPROTO_IPV6,
                    }),
                );
                b.put_be32(3, 1); // REG_ADDR_MIN
                b.put_be32(5, 2); // REG_PROTO_MIN
                b.put_be32(7, 2); // FLAGS: NF_NAT_RANGE_PROTO_SPECIFIED
            });
        }
    }
    out.exprs = x.0.bytes;
    Ok(out)
}

fn encode_match(
    x: &mut Exprs,
    family: IpFamily,
    m: &Match,
    next_set_id: &mut u32,
    set_id: &dyn Fn(&str) -> u32,
    anon: &mut Vec<AnonSet>,
) -> Result<(), EncodeError> {
    match m {
        Match::Addr {
            dir, negate, nets, ..
        } => {
            let off = addr_offset(family, *dir);
            let full = addr_len(family);
            if let [net] = nets.as_slice() {
                let (addr, prefix) = match net {
                    Net::Host(a) => (*a, u8::try_from(full * 8).unwrap_or(u8::MAX)),
                    Net::Prefix(c) => (c.addr(), c.prefix()),
                };
                let bytes = addr_bytes(family, addr)?;
                if prefix > 0 && prefix % 8 == 0 {
                    let n = usize::from(prefix / 8);
                    x.payload(1, off, u32::from(prefix / 8));
                    x.cmp(*negate, &bytes[..n]);
                } else {
                    let len = bytes.len();
                    x.payload(1, off, full);
                    let m = mask(len, prefix);
                    x.expr("bitwise", |b| {
                        b.put_be32(1, 1); // SREG
                        b.put_be32(2, 1); // DREG
                        b.put_be32(3, full); // LEN
                        b.put_value(4, &m); // MASK
                        b.put_value(5, &vec![0u8; len]); // XOR
                    });
                    let masked: Vec<u8> = bytes.iter().zip(&m).map(|(a, b)| a & b).collect();
                    x.cmp(*negate, &masked);
                }
            } else {
                *next_set_id += 1;
                let id = *next_set_id;
                anon.push(AnonSet {
                    id,
                    family,
                    dir: *dir,
                    elements: interval_elements(family, nets)?,
                });
                x.payload(1, off, full);
                x.expr("lookup", |b| {
                    b.put_be32(2, 1); // SREG
                    b.put_str(1, "__set%d"); // SET
                    b.put_be32(4, id); // SET_ID
                    b.put_be32(5, u32::from(*negate)); // FLAGS: invert
                });
            }
        }
        Match::Dport { proto, port } => {
            x.meta_l4proto(*proto);
            x.payload(2, 2, 2);
            x.cmp(false, &port.to_be_bytes());
        }
        Match::FibSaddrLocal => {
            x.expr("fib", |b| {
                b.put_be32(3, 1); // FLAGS saddr
                b.put_be32(2, 3); // RESULT addrtype
                b.put_be32(1, 1); // DREG
            });
            x.cmp(false, &2u32.to_ne_bytes()); // RTN_LOCAL, host order
        }
        Match::SaddrIn(set) => {
            x.payload(1, addr_offset(family, Dir::Saddr), addr_len(family));
            x.expr("lookup", |b| {
                b.put_be32(2, 1); // SREG
                b.put_str(1, set); // SET
                b.put_be32(4, set_id(set)); // SET_ID
            });
        }
    }
    Ok(())
}

/// The userdata nft gives an anonymous address set (key byte order, auto-merge, and the
/// `typeof` of `ip saddr`/`ip daddr` so listings print addresses).
pub fn anon_set_userdata(family: IpFamily, dir: Dir) -> Vec<u8> {
    let (proto, field) = match (family, dir) {
        (IpFamily::V4, Dir::Saddr) => (0x0c, 0x0b),
        (IpFamily::V4, Dir::Daddr) => (0x0c, 0x0c),
        (IpFamily::V6, Dir::Saddr) => (0x0d, 0x08),
        (IpFamily::V6, Dir::Daddr) => (0x0d, 0x09),
    };
    vec![
        0x00, 0x04, 0x02, 0x00, 0x00, 0x00, // key byte order: big endian
        0x02, 0x04, 0x01, 0x00, 0x00, 0x00, // merge elements
        0x03, 0x14, // key typeof
        0x00, 0x04, 0x07, 0x00, 0x00, 0x00, // expression: payload
        0x01, 0x0c, // its data
        0x00, 0x04, proto, 0x00, 0x00, 0x00, // protocol header
        0x01, 0x04, field, 0x00, 0x00, 0x00, // field
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_follow_the_prefix() {
        assert_eq!(mask(4, 25), [0xff, 0xff, 0xff, 0x80]);
        assert_eq!(mask(4, 9), [0xff, 0x80, 0, 0]);
        assert_eq!(mask(4, 0), [0, 0, 0, 0]);
        assert_eq!(mask(16, 63)[7], 0xfe);
    }

    #[test]
    fn intervals_as_nft_sends_them() {
        // `{ 203.0.113.0/25, 5.6.7.8 }`: nft's elements, from strace.
        let nets = [
            Net::Prefix("203.0.113.0/25".parse().expect("cidr")),
            Net::Host("5.6.7.8".parse().expect("ip")),
        ];
        let e = interval_elements(IpFamily::V4, &nets).expect("elements");
        assert_eq!(
            e,
            vec![
                (vec![0, 0, 0, 0], true),
                (vec![5, 6, 7, 8], false),
                (vec![5, 6, 7, 9], true),
                (vec![203, 0, 113, 0], false),
                (vec![203, 0, 113, 128], true),
            ]
        );
    }

    #[test]
    fn comment_rule_userdata() {
        let r = Rule::matching(
            IpFamily::V4,
            vec![Match::FibSaddrLocal],
            Verdict::Jump("x".into()),
        )
        .with_comment("masquerade local traffic");
        let e = encode(&r, &mut 0, &|_| 0).expect("encode");
        let ud = e.userdata.expect("userdata");
        assert_eq!(&ud[..2], &[0, 0x19]);
        assert_eq!(ud.last(), Some(&0));
    }
}
