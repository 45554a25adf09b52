//! Netlink message building: `nlmsghdr` + `nfgenmsg` headers and attributes (TLVs,
//! 4-byte aligned, nested ones flagged `NLA_F_NESTED` as libmnl does), and the nf_tables
//! constants from `linux/netfilter/nf_tables.h` this crate uses.

/// `NETLINK_NETFILTER` message types and nf_tables subsystem constants.
pub mod consts {
    pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
    pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
    pub const NFNL_MSG_BATCH_END: u16 = 0x11;

    pub const NFT_MSG_NEWCHAIN: u16 = 3;
    pub const NFT_MSG_DELCHAIN: u16 = 5;
    pub const NFT_MSG_NEWRULE: u16 = 6;
    pub const NFT_MSG_DELRULE: u16 = 8;
    pub const NFT_MSG_NEWSET: u16 = 9;
    pub const NFT_MSG_DELSET: u16 = 11;
    pub const NFT_MSG_NEWSETELEM: u16 = 12;
    pub const NFT_MSG_DELSETELEM: u16 = 14;

    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_CREATE: u16 = 0x400;
    pub const NLM_F_APPEND: u16 = 0x800;
    pub const NLMSG_ERROR: u16 = 0x2;
    pub const NLA_F_NESTED: u16 = 0x8000;

    pub const NFPROTO_IPV4: u8 = 2;
    pub const NFPROTO_IPV6: u8 = 10;

    // Chains, rules.
    pub const NFTA_CHAIN_TABLE: u16 = 1;
    pub const NFTA_CHAIN_NAME: u16 = 3;
    pub const NFTA_RULE_TABLE: u16 = 1;
    pub const NFTA_RULE_CHAIN: u16 = 2;
    pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
    pub const NFTA_RULE_USERDATA: u16 = 7;
    pub const NFTA_LIST_ELEM: u16 = 1;
    pub const NFTA_EXPR_NAME: u16 = 1;
    pub const NFTA_EXPR_DATA: u16 = 2;

    // Sets.
    pub const NFTA_SET_TABLE: u16 = 1;
    pub const NFTA_SET_NAME: u16 = 2;
    pub const NFTA_SET_FLAGS: u16 = 3;
    pub const NFTA_SET_KEY_TYPE: u16 = 4;
    pub const NFTA_SET_KEY_LEN: u16 = 5;
    pub const NFTA_SET_DATA_TYPE: u16 = 6;
    pub const NFTA_SET_DATA_LEN: u16 = 7;
    pub const NFTA_SET_ID: u16 = 10;
    pub const NFTA_SET_TIMEOUT: u16 = 11;
    pub const NFTA_SET_USERDATA: u16 = 13;
    pub const NFT_SET_ANONYMOUS: u32 = 0x1;
    pub const NFT_SET_CONSTANT: u32 = 0x2;
    pub const NFT_SET_INTERVAL: u32 = 0x4;
    pub const NFT_SET_MAP: u32 = 0x8;
    pub const NFT_SET_TIMEOUT: u32 = 0x10;
    pub const NFT_SET_EVAL: u32 = 0x20;

    // Set elements.
    pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
    pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
    pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
    pub const NFTA_SET_ELEM_KEY: u16 = 1;
    pub const NFTA_SET_ELEM_DATA: u16 = 2;
    pub const NFTA_SET_ELEM_FLAGS: u16 = 3;
    pub const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;

    // Data.
    pub const NFTA_DATA_VALUE: u16 = 1;
    pub const NFTA_DATA_VERDICT: u16 = 2;
    pub const NFTA_VERDICT_CODE: u16 = 1;
    pub const NFTA_VERDICT_CHAIN: u16 = 2;
    pub const NF_DROP: i32 = 0;
    pub const NFT_JUMP: i32 = -3;
    pub const NFT_GOTO: i32 = -4;
    /// `NFT_DATA_VERDICT`: the data type of a verdict map.
    pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

    // nft's datatypes (set key types).
    pub const TYPE_INTEGER: u32 = 4;
    pub const TYPE_IPADDR: u32 = 7;
    pub const TYPE_IP6ADDR: u32 = 8;
}

use consts::*;

/// A byte buffer with netlink attribute writers.
#[derive(Debug, Default, Clone)]
pub struct Buf {
    pub bytes: Vec<u8>,
}

fn pad(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

impl Buf {
    /// Appends one attribute with a raw payload.
    pub fn put(&mut self, ty: u16, payload: &[u8]) {
        let len = u16::try_from(4 + payload.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes.extend_from_slice(&ty.to_ne_bytes());
        self.bytes.extend_from_slice(payload);
        pad(&mut self.bytes);
    }

    /// A NUL-terminated string attribute.
    pub fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v);
    }

    /// A big-endian u32 attribute (nf_tables' `NLA_U32`s are network order).
    pub fn put_be32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_be_bytes());
    }

    /// A big-endian u64 attribute.
    pub fn put_be64(&mut self, ty: u16, v: u64) {
        self.put(ty, &v.to_be_bytes());
    }

    /// A nested attribute whose content `f` writes.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Buf)) {
        let mut inner = Buf::default();
        f(&mut inner);
        let len = u16::try_from(4 + inner.bytes.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&len.to_ne_bytes());
        self.bytes
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self.bytes.extend_from_slice(&inner.bytes);
    }

    /// `NFTA_DATA_VALUE` nested in attribute `ty`.
    pub fn put_value(&mut self, ty: u16, value: &[u8]) {
        self.nest(ty, |b| b.put(NFTA_DATA_VALUE, value));
    }

    /// `NFTA_DATA_VERDICT` nested in attribute `ty`.
    pub fn put_verdict(&mut self, ty: u16, code: i32, chain: Option<&str>) {
        self.nest(ty, |b| {
            b.nest(NFTA_DATA_VERDICT, |v| {
                v.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
                if let Some(c) = chain {
                    v.put_str(NFTA_VERDICT_CHAIN, c);
                }
            });
        });
    }
}

/// Appends one whole message (`nlmsghdr`, `nfgenmsg`, attributes) to `out`.
pub fn message(
    out: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = u32::try_from(16 + 4 + attrs.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

/// One netlink message of a received buffer: its type, sequence number and payload
/// (what follows the 16-byte `nlmsghdr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    pub ty: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

impl Received<'_> {
    /// The error code of an `NLMSG_ERROR` message (0 for an acknowledgement), from its
    /// first four payload bytes.
    pub fn error_code(&self) -> Option<i32> {
        Some(i32::from_ne_bytes(self.payload.get(..4)?.try_into().ok()?))
    }

    /// The sequence number of the request an `NLMSG_ERROR` message answers (in the
    /// request's header that follows the error code).
    pub fn acked_seq(&self) -> Option<u32> {
        Some(u32::from_ne_bytes(
            self.payload.get(12..16)?.try_into().ok()?,
        ))
    }
}

/// The whole messages in `buf`, as one `recv` returned them (4-byte aligned); a
/// truncated or malformed tail ends the walk.
pub fn received(buf: &[u8]) -> impl Iterator<Item = Received<'_>> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        let word = |o: usize| Some(u32::from_ne_bytes(buf.get(o..o + 4)?.try_into().ok()?));
        let mlen = word(off)? as usize;
        if mlen < 16 || off + mlen > buf.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let msg = Received {
            ty,
            seq: word(off + 8)?,
            payload: &buf[off + 16..off + mlen],
        };
        off += (mlen + 3) & !3;
        Some(msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut b = Buf::default();
        b.put_str(1, "t3");
        assert_eq!(b.bytes, [7, 0, 1, 0, b't', b'3', 0, 0]);
        let mut n = Buf::default();
        n.nest(2, |i| i.put_be32(1, 6));
        assert_eq!(n.bytes, [12, 0, 2, 0x80, 8, 0, 1, 0, 0, 0, 0, 6]);
    }

    #[test]
    fn received_walks_whole_messages_and_stops_at_a_truncated_tail() {
        let mut buf = Vec::new();
        message(&mut buf, 0x0a03, 0, 7, 2, 0, &[1, 2, 3, 4]);
        // An acknowledgement of request 9: code 0, then the request's header.
        let mut ack = 0i32.to_ne_bytes().to_vec();
        message(&mut ack, 0x0a06, 0, 9, 2, 0, &[]);
        let len = u32::try_from(16 + ack.len()).expect("len");
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&9u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ack);
        // A header announcing more than the buffer holds.
        buf.extend_from_slice(&64u32.to_ne_bytes());
        buf.extend_from_slice(&[0; 12]);

        let got: Vec<Received<'_>> = received(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].ty, got[0].seq), (0x0a03, 7));
        assert_eq!(got[0].payload, [2, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!((got[1].ty, got[1].error_code()), (NLMSG_ERROR, Some(0)));
        assert_eq!(got[1].acked_seq(), Some(9));
        assert_eq!(received(&buf[..10]).count(), 0);
    }
}
