//! Incremental syncs over nf_tables netlink instead of the `nft` binary.
//!
//! Why: nft 1.0.6 dumps the whole table into its cache before applying anything, so every
//! `nft -f` run costs O(table): at 10k services (a table of ~110k chains) even adding one
//! set element takes 1.7 s and 130 MB. A netlink batch costs O(change). Full syncs (start,
//! recovery, drift repair) stay on `nft -f` text; only incremental syncs come here, and a
//! failed batch makes the proxier fall back to a full sync.
//!
//! Why hand-written: the `rustables` crate (0.8) has no numgen, dynset or fib expression,
//! no verdict-map data or `typeof` set userdata, and its `RawExpression` wraps a closed
//! enum of the expressions it knows, so there is no escape hatch for the rest; nor does it
//! build flush-chain or flush-set messages. The subset this proxy sends is small (chains,
//! rules of the shapes in `rule`, two kinds of sets, map elements), so it is encoded here
//! over a plain `NETLINK_NETFILTER` socket, byte for byte as nft sends the same commands.
//!
//! - `msg`: headers, attributes and the nf_tables constants;
//! - `expr`: rules as expressions;
//! - `batch`: a transaction's messages, each tagged with the nft command it stands for;
//! - `dump`: a table read back (chains, rule counts, sets, elements) for the consistency
//!   check, in place of `nft -j list table`;
//! - this module: the socket, sending a batch and mapping the kernel's answers.

pub mod batch;
pub mod dump;
pub mod expr;
pub mod msg;
#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};

pub use batch::Batch;
pub use expr::EncodeError;

use msg::consts::{NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST, NLMSG_ERROR};

/// `NLM_F_ROOT | NLM_F_MATCH`: a dump request.
const NLM_F_DUMP: u16 = 0x300;
/// The end of a dump.
const NLMSG_DONE: u16 = 3;

/// Why a netlink transaction failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("no netlink writer configured")]
    Unavailable,
    #[error("opening the netfilter netlink socket failed: {0}")]
    Socket(#[source] Errno),
    #[error("entering network namespace {name} failed: {reason}")]
    Netns { name: String, reason: String },
    #[error("sending the batch of {messages} messages failed: {source}")]
    Send {
        messages: usize,
        #[source]
        source: Errno,
    },
    #[error("receiving the kernel's answers failed: {0}")]
    Recv(#[source] Errno),
    #[error("the kernel rejected `{command}`: {errno}")]
    Rejected { command: String, errno: Errno },
    #[error("the kernel rejected the batch: {0}")]
    Batch(Errno),
    #[error("the kernel refused the dump: {0}")]
    Dump(Errno),
    #[error("{missing} of {messages} messages were not acknowledged")]
    MissingAck { missing: usize, messages: usize },
    #[error("the batch of {bytes} bytes is over the {limit}-byte limit of one send")]
    TooLarge { bytes: usize, limit: usize },
    #[error("the transaction cannot be encoded for netlink: {0}")]
    Encode(#[from] EncodeError),
}

impl NetlinkError {
    /// Whether the error means "send this as text instead" rather than "the kernel's
    /// table is not what we think" (which needs a full sync).
    pub fn use_text(&self) -> bool {
        matches!(
            self,
            NetlinkError::Unavailable
                | NetlinkError::Encode(_)
                | NetlinkError::TooLarge { .. }
                | NetlinkError::Socket(_)
                | NetlinkError::Netns { .. }
        )
    }
}

/// A `NETLINK_NETFILTER` socket, bound to the network namespace it was opened in.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: Mutex<u32>,
}

/// Socket buffers big enough for a large incremental batch and its acknowledgements.
const BUFFER: usize = 16 << 20;

impl Socket {
    /// Opens the socket in the current network namespace.
    ///
    /// # Errors
    /// The socket could not be created or bound.
    pub fn open() -> Result<Self, NetlinkError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(NetlinkError::Socket)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NetlinkError::Socket)?;
        // Larger buffers when allowed (CAP_NET_ADMIN); the defaults do for small batches.
        if setsockopt(&fd, sockopt::SndBufForce, &BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::SndBuf, &BUFFER);
        }
        if setsockopt(&fd, sockopt::RcvBufForce, &BUFFER).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &BUFFER);
        }
        // Dumps wait for the kernel's answers; a stuck dump fails instead of hanging.
        let _ = setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(10, 0),
        );
        Ok(Self {
            fd,
            seq: Mutex::new(std::process::id().wrapping_mul(1000)),
        })
    }

    /// Opens the socket inside the named network namespace (`/var/run/netns/NAME`), from
    /// a short-lived thread, so the caller's namespace is unchanged.
    ///
    /// # Errors
    /// The namespace could not be entered or the socket opened.
    pub fn open_in_netns(name: &str) -> Result<Self, NetlinkError> {
        let path = format!("/var/run/netns/{name}");
        let netns_err = |reason: String| NetlinkError::Netns {
            name: name.to_string(),
            reason,
        };
        let file = std::fs::File::open(&path).map_err(|e| netns_err(e.to_string()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| netns_err(e.to_string()))?;
                Self::open()
            })
            .join()
            .unwrap_or_else(|_| Err(netns_err("the thread opening the socket panicked".into())))
        })
    }

    /// Runs one nf_tables dump request (`ty`, e.g. `NFT_MSG_GETCHAIN`, with `attrs` as
    /// filter) and returns the attributes of every answer (after `nfgenmsg`).
    ///
    /// # Errors
    /// The socket failed or the kernel answered with an error (`Dump`, e.g. `ENOENT`
    /// for a table that is not there).
    pub fn dump(&self, ty: u16, nfproto: u8, attrs: &[u8]) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let mut seq_guard = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        let seq = *seq_guard;
        *seq_guard = seq.wrapping_add(1);
        let mut wire = Vec::new();
        msg::message(
            &mut wire,
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            nfproto,
            0,
            attrs,
        );
        send(self.fd.as_raw_fd(), &wire, MsgFlags::empty()).map_err(|source| {
            NetlinkError::Send {
                messages: 1,
                source,
            }
        })?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let len = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(0) => return Err(NetlinkError::Recv(Errno::EIO)),
                Ok(len) => len,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(NetlinkError::Recv(e)),
            };
            for m in msg::received(&buf[..len]).filter(|m| m.seq == seq) {
                match m.ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => match m.error_code() {
                        Some(0) | None => {}
                        Some(code) => return Err(NetlinkError::Dump(Errno::from_raw(-code))),
                    },
                    // The attributes after the 4-byte `nfgenmsg`.
                    _ => out.extend(m.payload.get(4..).map(<[u8]>::to_vec)),
                }
            }
        }
    }

    /// Sends `batch` as one transaction and checks every acknowledgement.
    ///
    /// The kernel processes a netlink batch synchronously inside `sendmsg`, so once the
    /// send returns every answer is already queued on the socket.
    ///
    /// # Errors
    /// The kernel rejected a command (named in the error; the whole transaction is then
    /// void), or the socket failed.
    pub fn apply(&self, batch: &Batch) -> Result<(), NetlinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut seq_guard = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        let first = *seq_guard;
        let n = batch.len();
        *seq_guard = first.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX).wrapping_add(2));
        let wire = batch.encode(first);
        // A change this big (thousands of services at once) costs nft about what a full
        // table read does anyway; the text path takes it.
        if wire.len() > BUFFER / 2 {
            return Err(NetlinkError::TooLarge {
                bytes: wire.len(),
                limit: BUFFER / 2,
            });
        }
        let sent = send(self.fd.as_raw_fd(), &wire, MsgFlags::empty()).map_err(|source| {
            NetlinkError::Send {
                messages: n,
                source,
            }
        })?;
        if sent != wire.len() {
            return Err(NetlinkError::Send {
                messages: n,
                source: Errno::EMSGSIZE,
            });
        }
        let mut acked = vec![false; n];
        let mut failure: Option<NetlinkError> = None;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let len = match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(len) => len,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(NetlinkError::Recv(e)),
            };
            for m in msg::received(&buf[..len]).filter(|m| m.ty == NLMSG_ERROR) {
                let (Some(code), Some(seq)) = (m.error_code(), m.acked_seq()) else {
                    continue;
                };
                let idx = seq.wrapping_sub(first).wrapping_sub(1) as usize;
                if code != 0 && failure.is_none() {
                    let errno = Errno::from_raw(-code);
                    failure = Some(match batch.commands().get(idx) {
                        Some(c) => NetlinkError::Rejected {
                            command: c.clone(),
                            errno,
                        },
                        None => NetlinkError::Batch(errno),
                    });
                }
                if let Some(a) = acked.get_mut(idx) {
                    *a = true;
                }
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        let missing = acked.iter().filter(|a| !**a).count();
        if missing > 0 {
            return Err(NetlinkError::MissingAck {
                missing,
                messages: n,
            });
        }
        Ok(())
    }
}
