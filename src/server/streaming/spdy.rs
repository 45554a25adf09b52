//! SPDY/3.1 framing, as the kubelet's streaming endpoints speak it (kubectl's and the
//! apiserver's `k8s.io/apimachinery/pkg/util/httpstream/spdy`, on moby/spdystream and
//! its copy of Go's SPDY/3 framer).
//!
//! Hand-written because no maintained Rust crate speaks SPDY: the protocol was
//! withdrawn in favour of HTTP/2 and the old Rust `spdy` crates are abandoned
//! pre-1.0 code on hyper 0.x. The subset Kubernetes uses is small: the nine SPDY/3
//! frame types, with header blocks compressed by one zlib stream per direction
//! primed with SPDY/3's dictionary ([`super::spdy_dict`]) and sync-flushed per
//! frame. spdystream ignores flow control (WINDOW_UPDATE and SETTINGS are read and
//! dropped), so this does too.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::spdy_dict::DICTIONARY;

/// The SPDY version in every control frame.
pub const VERSION: u16 = 3;
/// The largest payload a frame's 24-bit length can say.
pub const MAX_FRAME_LEN: usize = 0x00ff_ffff;
/// The most a header block may inflate to: a bound against zlib bombs far above
/// anything Kubernetes sends (a handful of short headers).
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// FLAG_FIN on data, SYN_STREAM, SYN_REPLY and HEADERS frames.
pub const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: CANCEL.
pub const RST_CANCEL: u32 = 5;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// Header names (lower case, as SPDY requires) and their values.
pub type Headers = Vec<(String, String)>;

/// A SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A new stream from the peer.
    SynStream {
        /// Odd from a client.
        stream_id: u32,
        /// 0 for none.
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// FLAG_FIN / FLAG_UNIDIRECTIONAL.
        flags: u8,
        /// Its headers.
        headers: Headers,
    },
    /// The answer to a SYN_STREAM.
    SynReply {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// Its headers.
        headers: Headers,
    },
    /// A stream's abnormal end.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why.
        status: u32,
    },
    /// Connection settings (read and ignored, as spdystream does).
    Settings,
    /// A liveness probe; the receiver echoes the peer's.
    Ping {
        /// Odd from a client, even from a server.
        id: u32,
    },
    /// The connection's end.
    GoAway {
        /// The last stream the sender handled.
        last_good_stream_id: u32,
        /// 0 OK.
        status: u32,
    },
    /// More headers on a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// The headers.
        headers: Headers,
    },
    /// Flow control (ignored, as spdystream does).
    WindowUpdate {
        /// The stream.
        stream_id: u32,
        /// The window's growth.
        delta: u32,
    },
    /// Stream data.
    Data {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        flags: u8,
        /// The bytes.
        data: Vec<u8>,
    },
}

/// What can go wrong reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// The connection failed or ended inside a frame.
    #[error("spdy connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not SPDY/3.
    #[error("spdy protocol error: {0}")]
    Protocol(String),
    /// A header block did not inflate.
    #[error("spdy header block: {0}")]
    Compression(String),
}

fn protocol(msg: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(msg.into())
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, SpdyError> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| protocol("frame shorter than its fields"))
}

/// Inflates header blocks: one zlib stream for the whole connection.
pub struct HeaderDecoder {
    z: Decompress,
}

impl std::fmt::Debug for HeaderDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderDecoder")
    }
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }
}

impl HeaderDecoder {
    /// Inflates one frame's header block and parses it.
    ///
    /// # Errors
    /// [`SpdyError::Compression`] for bad zlib data, [`SpdyError::Protocol`] for a
    /// malformed block.
    pub fn decode(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(256);
        let mut input = compressed;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::Compression("header block too large".into()));
                }
                out.reserve(out.len().max(256));
            }
            let before_in = self.z.total_in();
            let before_out = out.len();
            match self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(status) => {
                    let used = usize::try_from(self.z.total_in() - before_in).unwrap_or(0);
                    input = input.get(used..).unwrap_or_default();
                    let progressed = used > 0 || out.len() > before_out;
                    if status == Status::StreamEnd
                        || (input.is_empty() && out.len() < out.capacity())
                        || !progressed
                    {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    let used = usize::try_from(self.z.total_in() - before_in).unwrap_or(0);
                    input = input.get(used..).unwrap_or_default();
                    self.z
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
        }
        parse_header_block(&out)
    }
}

fn parse_header_block(b: &[u8]) -> Result<Headers, SpdyError> {
    let count = u32_at(b, 0)?;
    let mut at = 4;
    let mut headers = Vec::new();
    let field = |at: &mut usize| -> Result<String, SpdyError> {
        let len = usize::try_from(u32_at(b, *at)?).unwrap_or(usize::MAX);
        *at += 4;
        let bytes = b
            .get(*at..at.saturating_add(len))
            .ok_or_else(|| protocol("header block shorter than its lengths"))?;
        *at += len;
        String::from_utf8(bytes.to_vec()).map_err(|_| protocol("header not UTF-8"))
    };
    for _ in 0..count {
        let name = field(&mut at)?.to_ascii_lowercase();
        let value = field(&mut at)?;
        // Several values of one name are NUL-separated.
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_owned()));
        }
    }
    Ok(headers)
}

/// Deflates header blocks: one zlib stream for the whole connection.
pub struct HeaderEncoder {
    z: Compress,
}

impl std::fmt::Debug for HeaderEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderEncoder")
    }
}

impl HeaderEncoder {
    /// A compressor primed with the dictionary.
    ///
    /// # Errors
    /// [`SpdyError::Compression`] when zlib refuses the dictionary (it never does).
    pub fn new() -> Result<Self, SpdyError> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(&DICTIONARY)
            .map_err(|e| SpdyError::Compression(e.to_string()))?;
        Ok(Self { z })
    }

    /// Serializes and compresses a header block (names lower-cased), sync-flushed so
    /// the peer can inflate it on its own.
    ///
    /// # Errors
    /// [`SpdyError::Compression`] when zlib fails.
    pub fn encode(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
        // Values of one name go together, NUL-separated.
        let mut grouped: Vec<(String, Vec<&str>)> = Vec::new();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match grouped.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => grouped.push((name, vec![value])),
            }
        }
        let mut raw = Vec::new();
        let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
        raw.extend_from_slice(&len(grouped.len()));
        for (name, values) in &grouped {
            let value = values.join("\0");
            raw.extend_from_slice(&len(name.len()));
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(&len(value.len()));
            raw.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = raw.as_slice();
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            let used = usize::try_from(self.z.total_in() - before).unwrap_or(0);
            input = input.get(used..).unwrap_or_default();
            // Done once all input is in and the flush fitted with room to spare.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Reads one frame; `Ok(None)` at a clean end of the connection (between frames).
///
/// # Errors
/// [`SpdyError`] for an I/O failure, a truncated or malformed frame, or an unknown
/// control frame type.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    headers: &mut HeaderDecoder,
) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = head[4];
    let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if first & 0x8000_0000 == 0 {
        let stream_id = first & 0x7fff_ffff;
        if stream_id == 0 {
            return Err(protocol("data frame on stream 0"));
        }
        return Ok(Some(Frame::Data {
            stream_id,
            flags,
            data: payload,
        }));
    }
    let version = u16::try_from((first >> 16) & 0x7fff).unwrap_or(0);
    if version != VERSION {
        return Err(protocol(format!("unsupported SPDY version {version}")));
    }
    let kind = u16::try_from(first & 0xffff).unwrap_or(0);
    let p = payload.as_slice();
    let id = |at| u32_at(p, at).map(|v| v & 0x7fff_ffff);
    let frame = match kind {
        TYPE_SYN_STREAM => {
            let priority = p.get(8).map(|b| b >> 5).unwrap_or(0);
            Frame::SynStream {
                stream_id: nonzero(id(0)?)?,
                associated_to: id(4)?,
                priority,
                flags,
                headers: headers.decode(p.get(10..).unwrap_or_default())?,
            }
        }
        TYPE_SYN_REPLY => Frame::SynReply {
            stream_id: nonzero(id(0)?)?,
            flags,
            headers: headers.decode(p.get(4..).unwrap_or_default())?,
        },
        TYPE_HEADERS => Frame::Headers {
            stream_id: nonzero(id(0)?)?,
            flags,
            headers: headers.decode(p.get(4..).unwrap_or_default())?,
        },
        TYPE_RST_STREAM => Frame::RstStream {
            stream_id: nonzero(id(0)?)?,
            status: u32_at(p, 4)?,
        },
        TYPE_SETTINGS => Frame::Settings,
        TYPE_PING => Frame::Ping { id: u32_at(p, 0)? },
        TYPE_GOAWAY => Frame::GoAway {
            last_good_stream_id: id(0)?,
            status: u32_at(p, 4).unwrap_or(0),
        },
        TYPE_WINDOW_UPDATE => Frame::WindowUpdate {
            stream_id: id(0)?,
            delta: u32_at(p, 4)? & 0x7fff_ffff,
        },
        other => return Err(protocol(format!("unknown control frame type {other}"))),
    };
    Ok(Some(frame))
}

fn nonzero(id: u32) -> Result<u32, SpdyError> {
    if id == 0 {
        Err(protocol("stream id 0"))
    } else {
        Ok(id)
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Result<Vec<u8>, SpdyError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(protocol("control frame too large"));
    }
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    let len = u32::try_from(payload.len()).unwrap_or(0);
    out.extend_from_slice(&(u32::from(flags) << 24 | len).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Serializes a frame; header blocks go through `headers`, whose state the peer
/// tracks, so frames must be written in the order they are encoded.
///
/// # Errors
/// [`SpdyError::Protocol`] for data over [`MAX_FRAME_LEN`] (callers chunk) or a
/// stream id 0; [`SpdyError::Compression`] when zlib fails.
pub fn encode_frame(frame: &Frame, headers: &mut HeaderEncoder) -> Result<Vec<u8>, SpdyError> {
    let be = u32::to_be_bytes;
    match frame {
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            if data.len() > MAX_FRAME_LEN || *stream_id == 0 {
                return Err(protocol("data frame too large or on stream 0"));
            }
            let mut out = Vec::with_capacity(8 + data.len());
            out.extend_from_slice(&be(stream_id & 0x7fff_ffff));
            let len = u32::try_from(data.len()).unwrap_or(0);
            out.extend_from_slice(&be(u32::from(*flags) << 24 | len));
            out.extend_from_slice(data);
            Ok(out)
        }
        Frame::SynStream {
            stream_id,
            associated_to,
            priority,
            flags,
            headers: h,
        } => {
            let mut p = Vec::new();
            p.extend_from_slice(&be(*stream_id));
            p.extend_from_slice(&be(*associated_to));
            p.push((priority & 7) << 5);
            p.push(0);
            p.extend(headers.encode(h)?);
            control(TYPE_SYN_STREAM, *flags, &p)
        }
        Frame::SynReply {
            stream_id,
            flags,
            headers: h,
        } => {
            let mut p = be(*stream_id).to_vec();
            p.extend(headers.encode(h)?);
            control(TYPE_SYN_REPLY, *flags, &p)
        }
        Frame::Headers {
            stream_id,
            flags,
            headers: h,
        } => {
            let mut p = be(*stream_id).to_vec();
            p.extend(headers.encode(h)?);
            control(TYPE_HEADERS, *flags, &p)
        }
        Frame::RstStream { stream_id, status } => {
            control(TYPE_RST_STREAM, 0, &[be(*stream_id), be(*status)].concat())
        }
        Frame::Settings => control(TYPE_SETTINGS, 0, &be(0)),
        Frame::Ping { id } => control(TYPE_PING, 0, &be(*id)),
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => control(
            TYPE_GOAWAY,
            0,
            &[be(*last_good_stream_id), be(*status)].concat(),
        ),
        Frame::WindowUpdate { stream_id, delta } => control(
            TYPE_WINDOW_UPDATE,
            0,
            &[be(*stream_id), be(*delta)].concat(),
        ),
    }
}

#[cfg(test)]
#[path = "spdy_tests.rs"]
mod tests;
