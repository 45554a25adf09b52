//! A server-side SPDY/3.1 connection over an upgraded HTTP connection, as
//! spdystream's `Connection` behaves toward Kubernetes clients: every stream the
//! client opens is answered with a SYN_REPLY at once and handed over; its data frames
//! arrive in order, its FIN (or RST, or the connection's end) reads as the end; the
//! client's PINGs are echoed; WINDOW_UPDATE and SETTINGS are ignored.
//!
//! One task reads frames; writers share the write half behind a lock, since header
//! compression makes frame order matter. A stream whose reader has gone is dropped
//! silently, as spdystream drops data for unknown streams.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::spdy::{
    FLAG_FIN, Frame, HeaderDecoder, HeaderEncoder, Headers, RST_CANCEL, SpdyError, encode_frame,
    read_frame,
};

/// Frames of data buffered per stream before the reader waits for its consumer.
const STREAM_BUFFER: usize = 16;
/// Largest data frame we send (spdystream's reads are buffered the same way).
const WRITE_CHUNK: usize = 32 * 1024;
/// How long [`SpdyConn::close`] waits for the client to hang up after GOAWAY.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// How frames go on the wire: SPDY, or WebSocket channel messages
/// ([`super::websocket`]) for the same sessions.
pub(super) enum Codec {
    /// SPDY/3.1 with its compressed headers.
    Spdy(HeaderEncoder),
    /// WebSocket channel messages.
    Ws(super::websocket::Framing),
}

pub(super) struct Writer {
    inner: Mutex<(BoxWrite, Codec)>,
    activity: Arc<Activity>,
}

impl Writer {
    pub(super) async fn send(&self, frame: &Frame) -> Result<(), SpdyError> {
        let mut guard = self.inner.lock().await;
        let (io, codec) = &mut *guard;
        let bytes = match codec {
            Codec::Spdy(enc) => Some(encode_frame(frame, enc)?),
            Codec::Ws(framing) => framing.encode(frame),
        };
        if let Some(bytes) = bytes {
            io.write_all(&bytes).await?;
            io.flush().await?;
        }
        self.activity.touch();
        Ok(())
    }

    /// Marks activity (a frame read).
    pub(super) fn touch(&self) {
        self.activity.touch();
    }

    /// Writes bytes as they are (WebSocket control frames).
    pub(super) async fn send_raw(&self, bytes: &[u8]) -> Result<(), SpdyError> {
        let mut guard = self.inner.lock().await;
        guard.0.write_all(bytes).await?;
        guard.0.flush().await?;
        self.activity.touch();
        Ok(())
    }
}

/// When a frame last went either way (spdystream's idle-aware framer resets its
/// timer on every frame read or written).
pub(super) struct Activity {
    base: tokio::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: tokio::time::Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self) -> u64 {
        self.last_ms.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A stream the client opened.
pub struct SpdyStream {
    /// Its id.
    pub id: u32,
    /// The headers it was opened with (names lower case).
    pub headers: Headers,
    rx: mpsc::Receiver<Vec<u8>>,
    out: Arc<Writer>,
}

impl std::fmt::Debug for SpdyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyStream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl SpdyStream {
    /// A stream over `out` whose data arrives on `rx` (the WebSocket channels).
    pub(super) fn new(
        id: u32,
        headers: Headers,
        rx: mpsc::Receiver<Vec<u8>>,
        out: Arc<Writer>,
    ) -> Self {
        Self {
            id,
            headers,
            rx,
            out,
        }
    }

    /// The first value of a header (by lower-case name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next chunk of data from the client; `None` once it finished the stream
    /// (FIN or RST) or the connection ended.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }

    /// A handle writing to this stream.
    pub fn writer(&self) -> StreamWriter {
        StreamWriter {
            id: self.id,
            out: Arc::clone(&self.out),
        }
    }

    /// Splits into the receiving half and a writer.
    pub fn split(self) -> (mpsc::Receiver<Vec<u8>>, StreamWriter) {
        let w = self.writer();
        (self.rx, w)
    }
}

/// Writes to one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: Arc<Writer>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("id", &self.id)
            .finish()
    }
}

impl StreamWriter {
    /// Sends `data` in frames of at most 32 KiB.
    ///
    /// # Errors
    /// [`SpdyError::Io`] when the connection is gone.
    pub async fn write(&self, data: &[u8]) -> Result<(), SpdyError> {
        for chunk in data.chunks(WRITE_CHUNK) {
            self.out
                .send(&Frame::Data {
                    stream_id: self.id,
                    flags: 0,
                    data: chunk.to_vec(),
                })
                .await?;
        }
        Ok(())
    }

    /// Half-closes the stream from our side (an empty data frame with FIN).
    ///
    /// # Errors
    /// [`SpdyError::Io`] when the connection is gone.
    pub async fn close(&self) -> Result<(), SpdyError> {
        self.out
            .send(&Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Vec::new(),
            })
            .await
    }

    /// Resets the stream (RST_STREAM CANCEL).
    ///
    /// # Errors
    /// [`SpdyError::Io`] when the connection is gone.
    pub async fn reset(&self) -> Result<(), SpdyError> {
        self.out
            .send(&Frame::RstStream {
                stream_id: self.id,
                status: RST_CANCEL,
            })
            .await
    }
}

/// The server side of a SPDY connection.
pub struct SpdyConn {
    out: Arc<Writer>,
    incoming: mpsc::Receiver<SpdyStream>,
    closed: CancellationToken,
    last_stream: Arc<std::sync::atomic::AtomicU32>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SpdyConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyConn").finish_non_exhaustive()
    }
}

impl SpdyConn {
    /// Starts serving SPDY on `io` (the connection after the 101 response); with
    /// `idle`, a connection with no frame either way for that long is closed
    /// (GOAWAY, then the streams end), as upstream's
    /// `--streaming-connection-idle-timeout`.
    ///
    /// # Errors
    /// [`SpdyError::Compression`] when the header compressor can't be made.
    pub fn start<IO>(io: IO, idle: Option<Duration>) -> Result<Self, SpdyError>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let activity = Arc::new(Activity::new());
        let out = Arc::new(Writer {
            inner: Mutex::new((Box::new(wr), Codec::Spdy(HeaderEncoder::new()?))),
            activity: Arc::clone(&activity),
        });
        let (tx, incoming) = mpsc::channel(8);
        let closed = CancellationToken::new();
        let last_stream = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let reader = tokio::spawn(read_loop(
            rd,
            Arc::clone(&out),
            tx,
            closed.clone(),
            Arc::clone(&last_stream),
        ));
        if let Some(idle) = idle.filter(|d| !d.is_zero()) {
            tokio::spawn(watch_idle(
                idle,
                activity,
                Arc::clone(&out),
                closed.clone(),
                Arc::clone(&last_stream),
                reader.abort_handle(),
            ));
        }
        Ok(Self {
            out,
            incoming,
            closed,
            last_stream,
            reader,
        })
    }

    /// Serves the channels of a WebSocket (the connection after the 101 response)
    /// as streams: `channels` are handed to [`SpdyConn::accept`] at once, after the
    /// `initial` messages; messages to a readable channel arrive as its data. With
    /// `idle`, as [`SpdyConn::start`].
    pub(super) fn start_websocket<IO>(
        io: IO,
        framing: super::websocket::Framing,
        channels: Vec<super::websocket::Channel>,
        initial: Vec<(u8, Vec<u8>)>,
        idle: Option<Duration>,
    ) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let activity = Arc::new(Activity::new());
        let out = Arc::new(Writer {
            inner: Mutex::new((Box::new(wr), Codec::Ws(framing))),
            activity: Arc::clone(&activity),
        });
        let (tx, incoming) = mpsc::channel(channels.len().max(1));
        let closed = CancellationToken::new();
        let last_stream = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let reader = tokio::spawn(super::websocket::read_loop(
            rd,
            Arc::clone(&out),
            framing,
            channels,
            initial,
            tx,
            closed.clone(),
        ));
        if let Some(idle) = idle.filter(|d| !d.is_zero()) {
            tokio::spawn(watch_idle(
                idle,
                activity,
                Arc::clone(&out),
                closed.clone(),
                Arc::clone(&last_stream),
                reader.abort_handle(),
            ));
        }
        Self {
            out,
            incoming,
            closed,
            last_stream,
            reader,
        }
    }

    /// The next stream the client opens; `None` once the connection ended.
    pub async fn accept(&mut self) -> Option<SpdyStream> {
        self.incoming.recv().await
    }

    /// Refuses further streams (they are reset).
    pub fn stop_accepting(&mut self) {
        self.incoming.close();
    }

    /// Cancelled when the client hung up (or sent GOAWAY, or broke the protocol).
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// Sends GOAWAY, waits a little for the client to hang up, and drops the
    /// connection.
    pub async fn close(self) {
        let last = self.last_stream.load(std::sync::atomic::Ordering::Relaxed);
        let goaway = Frame::GoAway {
            last_good_stream_id: last,
            status: 0,
        };
        if self.out.send(&goaway).await.is_ok() {
            let mut guard = self.out.inner.lock().await;
            let _ = guard.0.shutdown().await;
            drop(guard);
            let _ = tokio::time::timeout(CLOSE_GRACE, self.closed.cancelled()).await;
        }
        self.reader.abort();
    }
}

impl Drop for SpdyConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Closes the connection once no frame went either way for `idle`.
async fn watch_idle(
    idle: Duration,
    activity: Arc<Activity>,
    out: Arc<Writer>,
    closed: CancellationToken,
    last_stream: Arc<std::sync::atomic::AtomicU32>,
    reader: tokio::task::AbortHandle,
) {
    loop {
        let last = activity.last();
        let deadline = activity.base + Duration::from_millis(last) + idle;
        tokio::select! {
            () = closed.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {}
        }
        if activity.last() != last {
            continue;
        }
        debug!(?idle, "streaming connection idle; closing it");
        let goaway = Frame::GoAway {
            last_good_stream_id: last_stream.load(std::sync::atomic::Ordering::Relaxed),
            status: 0,
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), out.send(&goaway)).await;
        if let Ok(mut guard) = tokio::time::timeout(Duration::from_secs(5), out.inner.lock()).await
        {
            let _ = tokio::time::timeout(Duration::from_secs(5), guard.0.shutdown()).await;
        }
        // The reader's end drops every stream's sender: the sessions see their end.
        reader.abort();
        closed.cancel();
        return;
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    out: Arc<Writer>,
    tx: mpsc::Sender<SpdyStream>,
    closed: CancellationToken,
    last_stream: Arc<std::sync::atomic::AtomicU32>,
) {
    let mut dec = HeaderDecoder::default();
    let mut streams: HashMap<u32, mpsc::Sender<Vec<u8>>> = HashMap::new();
    loop {
        let frame = match read_frame(&mut rd, &mut dec).await {
            Ok(Some(f)) => {
                out.activity.touch();
                f
            }
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "spdy connection ends");
                break;
            }
        };
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                last_stream.fetch_max(stream_id, std::sync::atomic::Ordering::Relaxed);
                let reply = Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                };
                if out.send(&reply).await.is_err() {
                    break;
                }
                let (stx, srx) = mpsc::channel(STREAM_BUFFER);
                if flags & FLAG_FIN == 0 {
                    streams.insert(stream_id, stx);
                }
                let stream = SpdyStream {
                    id: stream_id,
                    headers,
                    rx: srx,
                    out: Arc::clone(&out),
                };
                if tx.send(stream).await.is_err() {
                    streams.remove(&stream_id);
                    let rst = Frame::RstStream {
                        stream_id,
                        status: RST_CANCEL,
                    };
                    let _ = out.send(&rst).await;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if let Some(s) = streams.get(&stream_id)
                    && !data.is_empty()
                    && s.send(data).await.is_err()
                {
                    streams.remove(&stream_id);
                }
                if flags & FLAG_FIN != 0 {
                    streams.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                streams.remove(&stream_id);
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0 {
                    streams.remove(&stream_id);
                }
            }
            Frame::Ping { id } => {
                // Ours would be even; a client's are odd and get echoed.
                if id % 2 == 1 && out.send(&Frame::Ping { id }).await.is_err() {
                    break;
                }
            }
            Frame::GoAway { .. } => break,
            Frame::SynReply { .. } | Frame::Settings | Frame::WindowUpdate { .. } => {}
        }
    }
    drop(streams);
    closed.cancel();
}
