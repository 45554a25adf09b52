//! The conntrack table over ctnetlink (`NETLINK_NETFILTER`, subsystem
//! `NFNL_SUBSYS_CTNETLINK`), what libnetfilter_conntrack and upstream's vishvananda/netlink
//! send: a dump (`IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`) of one family's entries, parsed
//! down to the original tuple, the reply source and the zone, and one
//! `IPCTNL_MSG_CT_DELETE` per stale entry keyed by its original tuple (and zone).
//!
//! Blocking socket calls: the proxier makes them after a sync that touched UDP services,
//! a dump of a few thousand entries takes about a millisecond. With a network namespace
//! path the socket is opened by a thread that entered that namespace (a socket stays in
//! the namespace it was made in), for tests in throwaway namespaces.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Conntrack, ConntrackError, Flow, IPPROTO_UDP};
use crate::model::IpFamily;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

static SEQ: AtomicU32 = AtomicU32::new(1);

/// The real conntrack table, of the current network namespace or of a named one.
#[derive(Debug, Clone, Default)]
pub struct NetlinkConntrack {
    netns: Option<PathBuf>,
}

impl NetlinkConntrack {
    /// The table of the current network namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// The table of the network namespace at `path` (e.g. `/var/run/netns/NAME`).
    pub fn in_netns(path: impl Into<PathBuf>) -> Self {
        Self {
            netns: Some(path.into()),
        }
    }

    fn socket(&self) -> Result<OwnedFd, ConntrackError> {
        let Some(path) = self.netns.clone() else {
            return open_socket();
        };
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).map_err(|source| ConntrackError::Netns {
                path: path.display().to_string(),
                source,
            })?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                ConntrackError::Netns {
                    path: path.display().to_string(),
                    source: e.into(),
                }
            })?;
            open_socket()
        })
        .join()
        .map_err(|_| ConntrackError::Malformed("the netns thread panicked".into()))?
    }
}

fn open_socket() -> Result<OwnedFd, ConntrackError> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(ConntrackError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn af(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => libc::AF_INET as u8,
        IpFamily::V6 => libc::AF_INET6 as u8,
    }
}

/// A netlink message: header, `nfgenmsg`, attributes.
fn message(kind: u16, flags: u16, family: IpFamily, attrs: &[u8]) -> (u32, Vec<u8>) {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[af(family), 0, 0, 0]);
    m.extend_from_slice(attrs);
    (seq, m)
}

/// Appends attribute `kind` with `payload`, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

/// The `CTA_TUPLE_ORIG` (and `CTA_ZONE`) attributes that name `flow` in a delete.
pub fn delete_attrs(flow: &Flow) -> Vec<u8> {
    let mut ip = Vec::new();
    match (flow.orig_src, flow.orig_dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            attr(&mut ip, CTA_IP_V4_SRC, &s.octets());
            attr(&mut ip, CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            attr(&mut ip, CTA_IP_V6_SRC, &v6(s).octets());
            attr(&mut ip, CTA_IP_V6_DST, &v6(d).octets());
        }
    }
    let mut proto = Vec::new();
    attr(&mut proto, CTA_PROTO_NUM, &[flow.proto]);
    attr(
        &mut proto,
        CTA_PROTO_SRC_PORT,
        &flow.orig_sport.to_be_bytes(),
    );
    attr(
        &mut proto,
        CTA_PROTO_DST_PORT,
        &flow.orig_dport.to_be_bytes(),
    );
    let mut tuple = Vec::new();
    attr(&mut tuple, CTA_TUPLE_IP | NLA_F_NESTED, &ip);
    attr(&mut tuple, CTA_TUPLE_PROTO | NLA_F_NESTED, &proto);
    let mut out = Vec::new();
    attr(&mut out, CTA_TUPLE_ORIG | NLA_F_NESTED, &tuple);
    if flow.zone != 0 {
        attr(&mut out, CTA_ZONE, &flow.zone.to_be_bytes());
    }
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Iterates `(type without flags, payload)` over a run of attributes.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

#[derive(Default)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    sport: u16,
    dport: u16,
}

fn tuple(buf: &[u8]) -> Tuple {
    let mut t = Tuple::default();
    for (kind, p) in attrs(buf) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, a) in attrs(p) {
                    let ip = match (k, a.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            let mut o = [0u8; 16];
                            o.copy_from_slice(a);
                            Some(IpAddr::V6(Ipv6Addr::from(o)))
                        }
                        _ => None,
                    };
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => t.src = ip,
                        CTA_IP_V4_DST | CTA_IP_V6_DST => t.dst = ip,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, a) in attrs(p) {
                    match (k, a) {
                        (CTA_PROTO_NUM, [n, ..]) => t.proto = Some(*n),
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => t.sport = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => t.dport = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// One conntrack message's attributes (after `nfgenmsg`) to a `Flow`; `None` when a
/// tuple is incomplete.
pub fn parse_flow(buf: &[u8]) -> Option<Flow> {
    let (mut orig, mut reply, mut zone) = (None, None, 0);
    for (kind, p) in attrs(buf) {
        match kind {
            CTA_TUPLE_ORIG => orig = Some(tuple(p)),
            CTA_TUPLE_REPLY => reply = Some(tuple(p)),
            CTA_ZONE if p.len() >= 2 => zone = u16::from_be_bytes([p[0], p[1]]),
            _ => {}
        }
    }
    let (orig, reply) = (orig?, reply?);
    Some(Flow {
        proto: orig.proto?,
        orig_src: orig.src?,
        orig_dst: orig.dst?,
        orig_sport: orig.sport,
        orig_dport: orig.dport,
        reply_src: reply.src?,
        zone,
    })
}

fn send(fd: &OwnedFd, msg: &[u8], op: &'static str) -> Result<(), ConntrackError> {
    // SAFETY: msg is a valid buffer of msg.len() bytes; the kernel is the destination
    // (an unbound netlink socket sends to pid 0).
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(ConntrackError::Io {
            op,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn recv<'a>(fd: &OwnedFd, buf: &'a mut [u8], op: &'static str) -> Result<&'a [u8], ConntrackError> {
    loop {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ConntrackError::Io { op, source: e });
        }
        let n = usize::try_from(n).unwrap_or(0);
        return Ok(&buf[..n]);
    }
}

/// Iterates `(type, seq, payload)` over the messages of one datagram.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if len < 16 || len > buf.len() {
            return None;
        }
        let payload = &buf[16..len];
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        Some((kind, seq, payload))
    })
}

/// The errno of an `NLMSG_ERROR` payload (0: an ACK).
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(libc::EIO)
}

/// The addresses of the current thread's network namespace.
fn interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

impl Conntrack for NetlinkConntrack {
    fn local_addresses(&self) -> Vec<IpAddr> {
        let Some(path) = self.netns.clone() else {
            return interface_addresses();
        };
        std::thread::spawn(move || {
            let f = std::fs::File::open(path).ok()?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            Some(interface_addresses())
        })
        .join()
        .ok()
        .flatten()
        .unwrap_or_default()
    }

    fn list_udp(&self, family: IpFamily) -> Result<Vec<Flow>, ConntrackError> {
        let fd = self.socket()?;
        let (seq, msg) = message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, family, &[]);
        send(&fd, &msg, "conntrack dump")?;
        let mut buf = vec![0u8; 1 << 17];
        let mut out = Vec::new();
        loop {
            let data = recv(&fd, &mut buf, "conntrack dump")?;
            if data.is_empty() {
                return Err(ConntrackError::Malformed("empty datagram in a dump".into()));
            }
            for (kind, s, payload) in messages(data) {
                if s != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = error_code(payload);
                        if code != 0 {
                            return Err(ConntrackError::Io {
                                op: "conntrack dump",
                                source: io::Error::from_raw_os_error(code),
                            });
                        }
                    }
                    _ => {
                        if let Some(flow) = payload.get(4..).and_then(parse_flow)
                            && flow.proto == IPPROTO_UDP
                        {
                            out.push(flow);
                        }
                    }
                }
            }
        }
    }

    fn delete(&self, family: IpFamily, flows: &[Flow]) -> Result<usize, ConntrackError> {
        if flows.is_empty() {
            return Ok(0);
        }
        let fd = self.socket()?;
        let mut buf = vec![0u8; 8192];
        let mut deleted = 0;
        for flow in flows {
            let (seq, msg) = message(
                IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                family,
                &delete_attrs(flow),
            );
            send(&fd, &msg, "conntrack delete")?;
            'ack: loop {
                let data = recv(&fd, &mut buf, "conntrack delete")?;
                for (kind, s, payload) in messages(data) {
                    if s != seq || kind != NLMSG_ERROR {
                        continue;
                    }
                    match error_code(payload) {
                        0 => deleted += 1,
                        libc::ENOENT => {}
                        code => {
                            return Err(ConntrackError::Io {
                                op: "conntrack delete",
                                source: io::Error::from_raw_os_error(code),
                            });
                        }
                    }
                    break 'ack;
                }
            }
        }
        Ok(deleted)
    }
}
