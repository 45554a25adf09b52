//! Reading a table back over netlink for the consistency check, in place of
//! `nft -j list table` (which dumps and prints the whole table as JSON: minutes at 10k
//! services): chains, rules counted per chain, named sets and maps, and the elements of
//! the dispatch containers (decoded to the text `render` writes) and of the
//! endpoint-selection maps (counted), as the same `Observed` the JSON listing gives.
//! Anonymous sets are left out, as nft's listing does; the dynamic affinity sets are
//! listed but their elements (the packet path's) are not read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nix::errno::Errno;

use super::msg::Buf;
use super::msg::consts::*;
use super::{NetlinkError, Socket};
use crate::model::IpFamily;
use crate::nft::Container;
use crate::nft::listing::Observed;

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;

/// The attributes of one message or nest: (type without flags, payload).
pub(crate) fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        let next = (len + 3) & !3;
        b = if next >= b.len() { &[] } else { &b[next..] };
    }
    out
}

fn attr<'a>(a: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    a.iter().find(|(t, _)| *t == ty).map(|(_, p)| *p)
}

fn string(p: &[u8]) -> String {
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

/// Table `table` of `family` as the consistency check sees it; a table that is not
/// there reads as empty.
///
/// # Errors
/// As `observe_all`.
pub fn observe(sock: &Socket, family: IpFamily, table: &str) -> Result<Observed, NetlinkError> {
    let mut all = observe_all(sock, family, &[table.to_string()])?;
    Ok(all.pop().unwrap_or_default())
}

/// Tables `tables` of `family`, in that order.
///
/// The chains come from one dump for all of them: the kernel's chain dump has no table
/// filter and resumes each batch of answers by skipping the chains already sent, so it
/// costs O(chains²/batch) for the whole family, once rather than once per table (17
/// times at 30k services: minutes). Rules, sets and elements are dumped per table.
///
/// # Errors
/// The socket failed, or the kernel refused a dump for another reason than a missing
/// table.
pub fn observe_all(
    sock: &Socket,
    family: IpFamily,
    tables: &[String],
) -> Result<Vec<Observed>, NetlinkError> {
    let mut out: Vec<Observed> = tables.iter().map(|_| Observed::default()).collect();
    let nfproto = match family {
        IpFamily::V4 => NFPROTO_IPV4,
        IpFamily::V6 => NFPROTO_IPV6,
    };
    let dump = |msg: u16, b: Buf| match sock.dump(msg, nfproto, &b.bytes) {
        Err(NetlinkError::Dump(Errno::ENOENT)) => Ok(Vec::new()),
        other => other,
    };
    let position = |t: &str| tables.iter().position(|x| x == t);
    for m in dump(NFT_MSG_GETCHAIN, Buf::default())? {
        let a = attrs(&m);
        if let Some(i) = attr(&a, NFTA_CHAIN_TABLE).and_then(|t| position(&string(t)))
            && let Some(name) = attr(&a, NFTA_CHAIN_NAME)
        {
            out[i].chains.entry(string(name)).or_insert(0);
        }
    }
    for (o, table) in out.iter_mut().zip(tables) {
        observe_rest(&dump, o, family, table)?;
    }
    Ok(out)
}

/// `NFTA_TABLE_NAME` and `NFTA_TABLE_USE` (chains plus named sets, on 6.18: anonymous
/// sets are not counted).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USE: u16 = 3;

/// One table of `family`, read without the family-wide chain dump when it can be: the
/// rule dump (filtered by table in the kernel) names every chain that has rules, and the
/// table's use count (chains plus named sets) says whether any chain has none; only then
/// is the chain dump run (O(chains in the netns)², seconds at 30k services) to name them.
/// Our chains all have rules, so the per-shard consistency check reads one shard in
/// about the time of its size. A table that is not there reads as empty.
///
/// # Errors
/// As `observe_all`.
pub fn observe_one(sock: &Socket, family: IpFamily, table: &str) -> Result<Observed, NetlinkError> {
    observe_one_traced(sock, family, table).map(|(o, _)| o)
}

/// `observe_one`, and whether it had to run the chain dump (a chain without rules).
///
/// # Errors
/// As `observe_all`.
pub fn observe_one_traced(
    sock: &Socket,
    family: IpFamily,
    table: &str,
) -> Result<(Observed, bool), NetlinkError> {
    let nfproto = match family {
        IpFamily::V4 => NFPROTO_IPV4,
        IpFamily::V6 => NFPROTO_IPV6,
    };
    let dump = |msg: u16, b: Buf| match sock.dump(msg, nfproto, &b.bytes) {
        Err(NetlinkError::Dump(Errno::ENOENT)) => Ok(Vec::new()),
        other => other,
    };
    let uses = dump(NFT_MSG_GETTABLE, Buf::default())?
        .into_iter()
        .find_map(|m| {
            let a = attrs(&m);
            (attr(&a, NFTA_TABLE_NAME).map(string).as_deref() == Some(table))
                .then(|| attr(&a, NFTA_TABLE_USE).and_then(be32))
        });
    let Some(uses) = uses else {
        return Ok((Observed::default(), false));
    };
    let mut out = Observed::default();
    observe_rest(&dump, &mut out, family, table)?;
    let counted = out.chains.len() + out.sets.len();
    let dumped = uses.and_then(|u| usize::try_from(u).ok()) != Some(counted);
    if dumped {
        tracing::debug!(
            table,
            ?uses,
            counted,
            "chains without rules: dumping the chains"
        );
        for m in dump(NFT_MSG_GETCHAIN, Buf::default())? {
            let a = attrs(&m);
            if attr(&a, NFTA_CHAIN_TABLE).map(string).as_deref() == Some(table)
                && let Some(name) = attr(&a, NFTA_CHAIN_NAME)
            {
                out.chains.entry(string(name)).or_insert(0);
            }
        }
    }
    Ok((out, dumped))
}

/// Rules, sets and elements of one table into `out`.
fn observe_rest(
    dump: &impl Fn(u16, Buf) -> Result<Vec<Vec<u8>>, NetlinkError>,
    out: &mut Observed,
    family: IpFamily,
    table: &str,
) -> Result<(), NetlinkError> {
    let by_table = |ty: u16| {
        let mut b = Buf::default();
        b.put_str(ty, table);
        b
    };
    for m in dump(NFT_MSG_GETRULE, by_table(NFTA_RULE_TABLE))? {
        let a = attrs(&m);
        if attr(&a, NFTA_RULE_TABLE).map(string).as_deref() == Some(table)
            && let Some(chain) = attr(&a, NFTA_RULE_CHAIN)
        {
            *out.chains.entry(string(chain)).or_insert(0) += 1;
        }
    }
    let mut sets = Vec::new();
    for m in dump(NFT_MSG_GETSET, by_table(NFTA_SET_TABLE))? {
        let a = attrs(&m);
        if attr(&a, NFTA_SET_TABLE).map(string).as_deref() != Some(table) {
            continue;
        }
        let Some(name) = attr(&a, NFTA_SET_NAME).map(string) else {
            continue;
        };
        let flags = attr(&a, NFTA_SET_FLAGS).and_then(be32).unwrap_or(0);
        if flags & NFT_SET_ANONYMOUS != 0 {
            continue;
        }
        if flags & NFT_SET_MAP != 0 {
            out.maps.insert(name.clone());
        }
        out.sets.insert(name.clone());
        if Container::from_name(&name).is_some() || name.starts_with("vmap-") {
            sets.push(name);
        }
    }
    for name in sets {
        let mut b = by_table(NFTA_SET_ELEM_LIST_TABLE);
        b.put_str(NFTA_SET_ELEM_LIST_SET, &name);
        let container = Container::from_name(&name);
        if let Some(c) = container {
            // An empty container lists as such, as in the JSON listing.
            out.elements.entry(c).or_default();
        }
        let mut count = 0;
        for m in dump(NFT_MSG_GETSETELEM, b)? {
            let a = attrs(&m);
            let Some(list) = attr(&a, NFTA_SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for (_, el) in attrs(list) {
                count += 1;
                let Some(c) = container else {
                    continue;
                };
                let e = attrs(el);
                let key = attr(&e, NFTA_SET_ELEM_KEY)
                    .map(attrs)
                    .and_then(|k| attr(&k, NFTA_DATA_VALUE).map(<[u8]>::to_vec));
                let Some(key) = key.and_then(|k| decode_key(c, family, &k)) else {
                    // Something we never write: keep it visible so it is deleted.
                    out.elements
                        .entry(c)
                        .or_default()
                        .insert(format!("<undecodable {el:02x?}>"), None);
                    continue;
                };
                let value = attr(&e, NFTA_SET_ELEM_DATA).and_then(decode_verdict);
                out.elements.entry(c).or_default().insert(key, value);
            }
        }
        out.set_sizes.insert(name, count);
    }
    Ok(())
}

/// A dispatch container's key as `render` writes it: fields in 4-byte slots.
fn decode_key(c: Container, family: IpFamily, k: &[u8]) -> Option<String> {
    let alen = match family {
        IpFamily::V4 => 4,
        IpFamily::V6 => 16,
    };
    let addr = |b: &[u8]| -> Option<IpAddr> {
        Some(match family {
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?)),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?)),
        })
    };
    let proto_port = |b: &[u8]| -> Option<String> {
        let proto = match b.first()? {
            6 => "tcp",
            17 => "udp",
            132 => "sctp",
            _ => return None,
        };
        let port = u16::from_be_bytes([*b.get(4)?, *b.get(5)?]);
        (b.len() == 8).then(|| format!("{proto} . {port}"))
    };
    match c {
        Container::ClusterIps => (k.len() == alen)
            .then(|| addr(k))
            .flatten()
            .map(|a| a.to_string()),
        Container::ServiceIps | Container::NoEndpointServices | Container::FirewallIps => {
            let a = addr(k)?;
            Some(format!("{a} . {}", proto_port(k.get(alen..)?)?))
        }
        Container::ServiceNodePorts | Container::NoEndpointNodePorts => proto_port(k),
    }
}

/// `NFTA_SET_ELEM_DATA` { `NFTA_DATA_VERDICT` { code, chain } } as `goto X`, `drop`….
fn decode_verdict(data: &[u8]) -> Option<String> {
    let d = attrs(data);
    let v = attrs(attr(&d, NFTA_DATA_VERDICT)?);
    let code = i32::from_be_bytes(attr(&v, NFTA_VERDICT_CODE)?.get(..4)?.try_into().ok()?);
    let chain = attr(&v, NFTA_VERDICT_CHAIN).map(string);
    Some(match (code, chain) {
        (NFT_GOTO, Some(c)) => format!("goto {c}"),
        (NFT_JUMP, Some(c)) => format!("jump {c}"),
        (NF_DROP, _) => "drop".into(),
        (1, _) => "accept".into(),
        (-5, _) => "return".into(),
        (-1, _) => "continue".into(),
        (other, _) => format!("verdict {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_verdicts_decode_to_the_rendered_text() {
        let k = [10, 96, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0];
        assert_eq!(
            decode_key(Container::ServiceIps, IpFamily::V4, &k).as_deref(),
            Some("10.96.0.1 . tcp . 80")
        );
        assert_eq!(
            decode_key(Container::ServiceNodePorts, IpFamily::V4, &k[4..]).as_deref(),
            Some("tcp . 80")
        );
        assert_eq!(
            decode_key(Container::ClusterIps, IpFamily::V4, &k[..4]).as_deref(),
            Some("10.96.0.1")
        );
        assert_eq!(decode_key(Container::ClusterIps, IpFamily::V4, &k), None);
        let mut v6 = vec![0xfd, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
        v6.extend([17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(
            decode_key(Container::NoEndpointServices, IpFamily::V6, &v6).as_deref(),
            Some("fd00:30::11 . udp . 53")
        );
        let mut b = Buf::default();
        b.put_verdict(NFTA_SET_ELEM_DATA, NFT_GOTO, Some("service-X"));
        let a = attrs(&b.bytes);
        assert_eq!(decode_verdict(a[0].1).as_deref(), Some("goto service-X"));
        let mut b = Buf::default();
        b.put_verdict(NFTA_SET_ELEM_DATA, NF_DROP, None);
        assert_eq!(
            decode_verdict(attrs(&b.bytes)[0].1).as_deref(),
            Some("drop")
        );
    }
}
