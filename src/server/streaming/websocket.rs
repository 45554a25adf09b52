//! Exec, attach and port-forward over WebSocket, as the kubelet's streaming server
//! serves them to direct clients (upstream's `remotecommand/websocket.go`,
//! `portforward/websocket.go` and apimachinery's `wsstream`); clients through the
//! apiserver reach the node over SPDY instead.
//!
//! - Handshake (RFC 6455): `Sec-WebSocket-Version: 13` and a key, else 400; the first
//!   subprotocol the client offers that we speak (none offered: the binary `""`),
//!   else 403 as Go's `x/net/websocket` answers a failed handshake.
//! - Every message carries one channel: binary messages start with the channel
//!   number, `base64.` protocols send text messages of the channel's digit and the
//!   data in base64. `v5.channel.k8s.io` adds the client's `[255, channel]` message
//!   closing a channel (stdin's end).
//! - Exec/attach channels: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; an empty
//!   message on the lowest writable channel tells the client the session is open.
//!   `v5`/`v4` protocols get a `metav1.Status` on the error channel, older ones
//!   the error's text.
//! - Port-forward: per `port` query value `i`, channel `2i` data (both ways) and
//!   `2i+1` error; each starts with the port as two little-endian bytes.
//!
//! The channels become [`SpdyStream`]s of a [`SpdyConn`] (headers `streamType`, and
//! for port-forward `port` and `requestID`), so the SPDY sessions serve them
//! unchanged; frames written to them become channel messages here.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use sha1::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::error;
use super::spdy::{Frame, Headers};
use super::spdy_conn::{SpdyStream, Writer};

/// RFC 6455's key suffix.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The largest message accepted from a client.
const MAX_MESSAGE: u64 = 16 << 20;
/// Data frames buffered per channel before the reader waits.
const CHANNEL_BUFFER: usize = 16;

/// Exec and attach subprotocols.
pub const REMOTECOMMAND_PROTOCOLS: &[&str] = &[
    "",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v5.channel.k8s.io",
];
/// Port-forward subprotocols.
pub const PORTFORWARD_PROTOCOLS: &[&str] = &["", "v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// The exec/attach channels.
pub const STDIN: u8 = 0;
/// stdout.
pub const STDOUT: u8 = 1;
/// stderr.
pub const STDERR: u8 = 2;
/// The error (status) channel.
pub const ERROR: u8 = 3;
/// Terminal sizes.
pub const RESIZE: u8 = 4;

/// A negotiated WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// `Sec-WebSocket-Accept`.
    pub accept: String,
    /// The subprotocol (`""`: none named).
    pub protocol: String,
}

/// The accept key for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1::Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Checks the upgrade request and picks the subprotocol.
///
/// # Errors
/// 400 for a bad WebSocket request, 403 when no offered subprotocol is ours.
#[expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, made once per request"
)]
pub fn handshake(headers: &HeaderMap, supported: &[&str]) -> Result<Handshake, Response> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if get("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(error(StatusCode::BAD_REQUEST, "Bad Request"));
    }
    let Some(key) = get("sec-websocket-key").filter(|k| !k.trim().is_empty()) else {
        return Err(error(StatusCode::BAD_REQUEST, "Bad Request"));
    };
    let mut offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        offered.push(String::new());
    }
    let Some(protocol) = offered.iter().find(|p| supported.contains(&p.as_str())) else {
        debug!(?offered, "requested protocol(s) are not supported");
        return Err(error(StatusCode::FORBIDDEN, "Forbidden"));
    };
    Ok(Handshake {
        accept: accept_key(key),
        protocol: protocol.clone(),
    })
}

/// Whether the request asks for a WebSocket.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.eq_ignore_ascii_case("websocket"))
}

/// How channel messages are written.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    /// Text messages with base64 data (`base64.` protocols).
    pub base64: bool,
    /// `v5.channel.k8s.io`: the client may close channels.
    pub v5: bool,
}

impl Framing {
    /// For a negotiated subprotocol.
    pub fn for_protocol(protocol: &str) -> Self {
        Self {
            base64: protocol.contains("base64."),
            v5: protocol == "v5.channel.k8s.io",
        }
    }

    /// One message of `data` on `channel`.
    pub fn message(self, channel: u8, data: &[u8]) -> Vec<u8> {
        if self.base64 {
            let mut text = vec![b'0'.saturating_add(channel)];
            text.extend(
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .as_bytes(),
            );
            frame(0x1, &text)
        } else {
            let mut payload = Vec::with_capacity(data.len() + 1);
            payload.push(channel);
            payload.extend_from_slice(data);
            frame(0x2, &payload)
        }
    }

    /// What a session's frame becomes: data as its channel's message, GOAWAY as a
    /// close; the rest (stream ends, resets, replies) has no WebSocket form.
    pub fn encode(&self, f: &Frame) -> Option<Vec<u8>> {
        match f {
            Frame::Data {
                stream_id, data, ..
            } if !data.is_empty() => Some(self.message(u8::try_from(*stream_id).ok()?, data)),
            Frame::GoAway { .. } => Some(frame(0x8, &1000u16.to_be_bytes())),
            _ => None,
        }
    }
}

/// A server frame (unmasked) of `opcode` with `payload`.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(u8::try_from(n).unwrap_or(0)),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend(u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// One frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub struct WsFrame {
    /// The last of its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// The unmasked payload.
    pub payload: Vec<u8>,
}

/// Reads one frame; `None` at a clean end between frames.
///
/// # Errors
/// The connection fails mid-frame, or a frame is larger than 16 MiB.
pub async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> std::io::Result<Option<WsFrame>> {
    let mut head = [0u8; 2];
    match rd.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let [b0, b1] = head;
    let len = match b1 & 0x7f {
        126 => u64::from(rd.read_u16().await?),
        127 => rd.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("websocket frame of {len} bytes"),
        ));
    }
    let mask = if b1 & 0x80 != 0 {
        let mut m = [0u8; 4];
        rd.read_exact(&mut m).await?;
        Some(m)
    } else {
        None
    };
    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
    rd.read_exact(&mut payload).await?;
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Ok(Some(WsFrame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        payload,
    }))
}

/// A channel a session uses: its number, the headers its stream carries, and
/// whether the client writes to it.
pub type Channel = (u8, Headers, bool);

/// Hands the channels to the session as streams, sends `initial` messages, then
/// routes the client's messages to their channels until the connection ends.
pub(super) async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    out: Arc<Writer>,
    framing: Framing,
    channels: Vec<Channel>,
    initial: Vec<(u8, Vec<u8>)>,
    tx: mpsc::Sender<SpdyStream>,
    closed: CancellationToken,
) {
    let mut senders: HashMap<u8, mpsc::Sender<Vec<u8>>> = HashMap::new();
    for (ch, data) in initial {
        if out.send_raw(&framing.message(ch, &data)).await.is_err() {
            closed.cancel();
            return;
        }
    }
    for (ch, headers, readable) in channels {
        let (stx, srx) = mpsc::channel(CHANNEL_BUFFER);
        if readable {
            senders.insert(ch, stx);
        }
        if tx
            .send(SpdyStream::new(
                u32::from(ch),
                headers,
                srx,
                Arc::clone(&out),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut message: Vec<u8> = Vec::new();
    let mut message_op = 0u8;
    loop {
        let f = match read_frame(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "websocket connection ends");
                break;
            }
        };
        out.touch();
        match f.opcode {
            0x8 => {
                let _ = out.send_raw(&frame(0x8, &1000u16.to_be_bytes())).await;
                break;
            }
            0x9 => {
                if out.send_raw(&frame(0xA, &f.payload)).await.is_err() {
                    break;
                }
                continue;
            }
            0xA => continue,
            0x1 | 0x2 => {
                message = f.payload;
                message_op = f.opcode;
            }
            0x0 => {
                if message.len() as u64 + f.payload.len() as u64 > MAX_MESSAGE {
                    debug!("websocket message too large");
                    break;
                }
                message.extend(f.payload);
            }
            other => {
                debug!(opcode = other, "websocket protocol error");
                break;
            }
        }
        if !f.fin {
            continue;
        }
        let msg = std::mem::take(&mut message);
        let Some((ch, data)) = decode(framing, message_op, &msg) else {
            continue;
        };
        if framing.v5 && ch == 255 {
            // The client closes a channel (stdin's end).
            if let Some(closing) = data.first() {
                senders.remove(closing);
            }
            continue;
        }
        if data.is_empty() {
            continue;
        }
        if let Some(s) = senders.get(&ch)
            && s.send(data).await.is_err()
        {
            senders.remove(&ch);
        }
    }
    drop(senders);
    drop(tx);
    closed.cancel();
}

/// A complete message's channel and data.
fn decode(framing: Framing, opcode: u8, msg: &[u8]) -> Option<(u8, Vec<u8>)> {
    let (&first, rest) = msg.split_first()?;
    if opcode == 0x1 || framing.base64 {
        let ch = first.checked_sub(b'0')?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        Some((ch, data))
    } else {
        Some((first, rest.to_vec()))
    }
}

/// The exec/attach channels a session with these options uses, and the message that
/// announces the session (empty, on the lowest writable channel).
pub fn remotecommand_channels(
    opts: &super::remotecommand::Options,
) -> (Vec<Channel>, Vec<(u8, Vec<u8>)>) {
    let h = |t: &str| vec![("streamtype".to_owned(), t.to_owned())];
    let mut channels = vec![(ERROR, h("error"), false)];
    if opts.stdin {
        channels.push((STDIN, h("stdin"), true));
    }
    if opts.stdout {
        channels.push((STDOUT, h("stdout"), false));
    }
    if opts.stderr {
        channels.push((STDERR, h("stderr"), false));
    }
    if opts.tty {
        channels.push((RESIZE, h("resize"), true));
    }
    let hello = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    (channels, vec![(hello, Vec::new())])
}

/// The port-forward channels for `ports`, each pair announced with its port.
pub fn portforward_channels(ports: &[u16]) -> (Vec<Channel>, Vec<(u8, Vec<u8>)>) {
    let mut channels = Vec::new();
    let mut initial = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let Ok(data) = u8::try_from(i * 2) else { break };
        let err = data.saturating_add(1);
        let h = |t: &str| {
            vec![
                ("streamtype".to_owned(), t.to_owned()),
                ("port".to_owned(), port.to_string()),
                ("requestid".to_owned(), i.to_string()),
            ]
        };
        channels.push((data, h("data"), true));
        channels.push((err, h("error"), false));
        initial.push((data, port.to_le_bytes().to_vec()));
        initial.push((err, port.to_le_bytes().to_vec()));
    }
    (channels, initial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn the_handshake_picks_the_first_offered_protocol_we_speak() {
        let mut h = HeaderMap::new();
        h.insert("sec-websocket-version", "13".parse().expect("v"));
        h.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().expect("k"),
        );
        let none = handshake(&h, REMOTECOMMAND_PROTOCOLS).expect("ok");
        assert_eq!(none.protocol, "");
        h.insert(
            "sec-websocket-protocol",
            "v9.channel.k8s.io, v5.channel.k8s.io, v4.channel.k8s.io"
                .parse()
                .expect("p"),
        );
        assert_eq!(
            handshake(&h, REMOTECOMMAND_PROTOCOLS).expect("ok").protocol,
            "v5.channel.k8s.io"
        );
        h.insert(
            "sec-websocket-protocol",
            "v9.channel.k8s.io".parse().expect("p"),
        );
        assert_eq!(
            handshake(&h, REMOTECOMMAND_PROTOCOLS)
                .map(|_| ())
                .expect_err("403")
                .status(),
            StatusCode::FORBIDDEN
        );
        h.remove("sec-websocket-key");
        assert_eq!(
            handshake(&h, REMOTECOMMAND_PROTOCOLS)
                .map(|_| ())
                .expect_err("400")
                .status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn messages_frame_and_parse_in_both_encodings() {
        let bin = Framing::for_protocol("v5.channel.k8s.io");
        assert!(bin.v5 && !bin.base64);
        let b = bin.message(1, b"hi");
        assert_eq!(b, [0x82, 3, 1, b'h', b'i']);
        let txt = Framing::for_protocol("v4.base64.channel.k8s.io");
        assert_eq!(
            txt.message(2, b"hi"),
            [0x81, 5, b'2', b'a', b'G', b'k', b'=']
        );
        // A masked client frame in two fragments.
        let mask = [1u8, 2, 3, 4];
        let masked = |first: bool, fin: bool, data: &[u8]| {
            let mut f = vec![
                if fin { 0x80 } else { 0 } | if first { 0x2 } else { 0 },
                0x80 | u8::try_from(data.len()).expect("short"),
            ];
            f.extend(mask);
            f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        let mut wire = masked(true, false, &[0, b'a']);
        wire.extend(masked(false, true, b"bc"));
        let mut rd = &wire[..];
        let one = read_frame(&mut rd).await.expect("read").expect("frame");
        assert_eq!(
            (one.fin, one.opcode, one.payload.as_slice()),
            (false, 2, &[0, b'a'][..])
        );
        let two = read_frame(&mut rd).await.expect("read").expect("frame");
        assert_eq!(
            (two.fin, two.opcode, two.payload.as_slice()),
            (true, 0, &b"bc"[..])
        );
        assert_eq!(read_frame(&mut rd).await.expect("end"), None);
        assert_eq!(decode(bin, 2, &[0, b'x']), Some((0, b"x".to_vec())));
        assert_eq!(decode(txt, 1, b"0aGk="), Some((0, b"hi".to_vec())));
        // 300 bytes take the 16-bit length.
        let long = frame(0x2, &[7u8; 300]);
        assert_eq!(&long[..4], &[0x82, 126, 1, 44]);
    }

    #[test]
    fn port_forward_channels_pair_data_and_error_per_port() {
        let (channels, initial) = portforward_channels(&[8080, 53]);
        let ids: Vec<(u8, bool)> = channels.iter().map(|(c, _, r)| (*c, *r)).collect();
        assert_eq!(ids, [(0, true), (1, false), (2, true), (3, false)]);
        assert_eq!(initial[0], (0, 8080u16.to_le_bytes().to_vec()));
        assert_eq!(initial[3], (3, 53u16.to_le_bytes().to_vec()));
    }
}
