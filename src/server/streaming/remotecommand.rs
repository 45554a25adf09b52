//! Exec and attach over SPDY: the `channel.k8s.io` remote command protocols v2 to v4
//! (upstream's `pkg/kubelet/cri/streaming/remotecommand`).
//!
//! The client opens one stream per channel, each with a `streamType` header:
//! `error`, and as the query asked `stdin`, `stdout`, `stderr` and (with a TTY, v3+)
//! `resize`, whose data is a run of JSON `{"Width":w,"Height":h}` objects. When the
//! command ends its output is drained, the error stream gets the result (v4: a
//! `metav1.Status`, `NonZeroExitCode` with an `ExitCode` cause for a non-zero exit;
//! v2/v3: the error's text, nothing on success) and the connection closes.
//!
//! Exec runs through containerd's exec API ([`ContainerdRuntime::exec_streaming`]).
//! Attach can't reach the container's own stdio: the shim hands its stdout and
//! stderr to the log driver and the container was started without a stdin pipe.
//! So attach follows the container's CRI log file from its end (what the container
//! writes from now on, split back into stdout and stderr) until the container
//! exits; stdin sent to an attach is read and dropped, and resize is ignored.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use nodelet_cri::runtime::{ContainerState, ContainerdRuntime, ExecStreams, Runtime as _};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tracing::debug;

use super::spdy_conn::{SpdyConn, SpdyStream, StreamWriter};

/// The subprotocols we speak, newest first.
pub const PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];
/// How long the client gets to open its streams (upstream's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// After the command ended, how long its output may take to drain (a child it left
/// behind holding the pipe would otherwise hold the session).
const DRAIN: Duration = Duration::from_secs(2);
/// How long exec with a TTY waits for the client's first terminal size.
const FIRST_RESIZE: Duration = Duration::from_millis(500);
/// How often attach looks for new log lines and for the container's end.
const ATTACH_POLL: Duration = Duration::from_millis(100);

/// Which streams the request asked for (`input`, `output`, `error`, `tty` = `1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// stdin.
    pub stdin: bool,
    /// stdout.
    pub stdout: bool,
    /// stderr (dropped with a TTY, as upstream).
    pub stderr: bool,
    /// A terminal.
    pub tty: bool,
}

impl Options {
    /// Upstream's `NewOptions`.
    ///
    /// # Errors
    /// Upstream's message when no stream is asked for.
    pub fn from_query(req: &Request) -> Result<Self, String> {
        let flag = |k: &str| {
            super::query_values(req, k)
                .first()
                .is_some_and(|v| v == "1" || v == "true")
        };
        let tty = flag("tty");
        let o = Self {
            stdin: flag("input"),
            stdout: flag("output"),
            stderr: flag("error") && !tty,
            tty,
        };
        if !o.stdin && !o.stdout && !o.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".to_owned());
        }
        Ok(o)
    }
}

/// The negotiated protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `v2.channel.k8s.io`: no resize, text errors.
    V2,
    /// `v3.channel.k8s.io`: resize, text errors.
    V3,
    /// `v4.channel.k8s.io`: resize, `metav1.Status` on the error stream.
    V4,
}

impl Version {
    /// From the negotiated name.
    pub fn from_name(name: &str) -> Self {
        match name {
            "v4.channel.k8s.io" => Self::V4,
            "v3.channel.k8s.io" => Self::V3,
            _ => Self::V2,
        }
    }
}

/// What the session runs.
#[derive(Debug, Clone)]
pub enum What {
    /// A command.
    Exec(Vec<String>),
    /// The container's own output, followed from its log file.
    Attach,
}

/// One exec or attach.
pub struct Session {
    /// The runtime.
    pub runtime: Arc<ContainerdRuntime>,
    /// The target container.
    pub container_id: String,
    /// Its pod's UID (attach watches the container's state through it).
    pub pod_uid: String,
    /// Its CRI log file (attach follows it).
    pub log_path: PathBuf,
    /// The streams asked for.
    pub opts: Options,
    /// The protocol.
    pub version: Version,
}

/// How a session ended, as the error stream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0 (or attach's container ended).
    Success,
    /// The command exited non-zero.
    ExitCode(i32),
    /// Something failed.
    Error(String),
}

/// The JSON of the `metav1.Status` the v4 error stream carries.
pub fn status_json(outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Success => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::ExitCode(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: command terminated with exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Error(msg) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {msg}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": msg}]},
            "code": 500,
        }),
    }
}

/// The streams of a session, by type.
#[derive(Default)]
struct Streams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl Session {
    fn expected(&self) -> usize {
        1 + usize::from(self.opts.stdin)
            + usize::from(self.opts.stdout)
            + usize::from(self.opts.stderr)
            + usize::from(self.opts.tty && self.version >= Version::V3)
    }

    async fn wait_for_streams(&self, conn: &mut SpdyConn) -> Option<Streams> {
        let mut s = Streams::default();
        let mut received = 0;
        let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
        tokio::pin!(deadline);
        while received < self.expected() {
            let stream = tokio::select! {
                s = conn.accept() => s?,
                () = &mut deadline => {
                    debug!("timed out waiting for client to create streams");
                    return None;
                }
            };
            let slot = match stream.header("streamtype") {
                Some("error") => &mut s.error,
                Some("stdin") => &mut s.stdin,
                Some("stdout") => &mut s.stdout,
                Some("stderr") => &mut s.stderr,
                Some("resize") => &mut s.resize,
                other => {
                    debug!(stream_type = ?other, "unexpected stream type");
                    continue;
                }
            };
            *slot = Some(stream);
            received += 1;
        }
        Some(s)
    }

    /// Serves the session on an upgraded connection, to its end.
    pub async fn serve(self, mut conn: SpdyConn, what: What) {
        let Some(mut streams) = self.wait_for_streams(&mut conn).await else {
            conn.close().await;
            return;
        };
        conn.stop_accepting();
        let closed = conn.closed();
        let error = streams.error.take().map(|s| s.writer());
        let outcome = tokio::select! {
            o = self.run(&mut streams, what) => o,
            () = closed.cancelled() => {
                debug!(container = %self.container_id, "client went away mid-stream");
                return;
            }
        };
        if let Some(error) = error {
            let msg = match (&outcome, self.version) {
                (_, Version::V4) => Some(status_json(&outcome).to_string()),
                (Outcome::Success, _) => None,
                (Outcome::ExitCode(c), _) => Some(format!(
                    "command terminated with non-zero exit code: command terminated with exit code {c}"
                )),
                (Outcome::Error(m), _) => Some(format!("Internal error occurred: {m}")),
            };
            if let Some(msg) = msg {
                let _ = error.write(msg.as_bytes()).await;
            }
            let _ = error.close().await;
        }
        conn.close().await;
    }

    async fn run(&self, streams: &mut Streams, what: What) -> Outcome {
        match what {
            What::Exec(cmd) => self.exec(streams, &cmd).await,
            What::Attach => self.attach(streams).await,
        }
    }

    async fn exec(&self, streams: &mut Streams, cmd: &[String]) -> Outcome {
        // kubectl sends the terminal's size first thing: the process starts with it
        // rather than resized just after (a quick `stty size` would see 0 0).
        let mut sizes = ResizeDecoder::default();
        let mut first = Vec::new();
        if let Some(resize) = streams.resize.as_mut() {
            let _ = tokio::time::timeout(FIRST_RESIZE, async {
                while first.is_empty() {
                    match resize.recv().await {
                        Some(chunk) => first = sizes.push(&chunk),
                        None => break,
                    }
                }
            })
            .await;
        }
        let wanted = ExecStreams {
            stdin: streams.stdin.is_some(),
            stdout: streams.stdout.is_some(),
            stderr: streams.stderr.is_some(),
            tty: self.opts.tty,
            console: first.last().map(|s| (s.width, s.height)),
        };
        let mut session = match self
            .runtime
            .exec_streaming(&self.container_id, cmd, wanted)
            .await
        {
            Ok(s) => s,
            Err(e) => return Outcome::Error(format!("error executing command in container: {e}")),
        };
        let control = session.control();
        let mut tasks = tokio::task::JoinSet::new();
        if let (Some(stream), Some(pipe)) = (streams.stdin.take(), session.stdin.take()) {
            let control = control.clone();
            tasks.spawn(async move {
                copy_stdin(stream, pipe).await;
                if let Err(e) = control.close_stdin().await {
                    debug!(error = %e, "exec stdin not closed");
                }
            });
        }
        if let Some(stream) = streams.resize.take() {
            let control = control.clone();
            tasks.spawn(async move {
                let (mut rx, _) = stream.split();
                while let Some(chunk) = rx.recv().await {
                    for size in sizes.push(&chunk) {
                        if let Err(e) = control.resize(size.width, size.height).await {
                            debug!(error = %e, "exec terminal not resized");
                        }
                    }
                }
            });
        }
        let mut outputs = tokio::task::JoinSet::new();
        for (stream, pipe) in [
            (streams.stdout.take(), session.stdout.take()),
            (streams.stderr.take(), session.stderr.take()),
        ] {
            if let (Some(stream), Some(pipe)) = (stream, pipe) {
                outputs.spawn(copy_output(pipe, stream.writer()));
            }
        }
        let code = session.wait().await;
        let drained = tokio::time::timeout(DRAIN, async {
            while outputs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            debug!(container = %self.container_id, "exec output not drained");
        }
        outputs.abort_all();
        tasks.abort_all();
        session.finish().await;
        match code {
            Ok(0) => Outcome::Success,
            Ok(c) => Outcome::ExitCode(c),
            Err(e) => Outcome::Error(format!("error executing command in container: {e}")),
        }
    }

    async fn attach(&self, streams: &mut Streams) -> Outcome {
        // Stdin can't reach the container (see the module doc): read and drop it.
        let mut tasks = tokio::task::JoinSet::new();
        for s in [streams.stdin.take(), streams.resize.take()]
            .into_iter()
            .flatten()
        {
            tasks.spawn(async move {
                let (mut rx, _) = s.split();
                while rx.recv().await.is_some() {}
            });
        }
        let stdout = streams.stdout.take().map(|s| s.writer());
        let stderr = streams.stderr.take().map(|s| s.writer());
        let out = follow_log(
            &self.runtime,
            &self.pod_uid,
            &self.container_id,
            &self.log_path,
            self.opts.tty,
            stdout.as_ref(),
            stderr.as_ref(),
        )
        .await;
        for w in [stdout, stderr].into_iter().flatten() {
            let _ = w.close().await;
        }
        tasks.abort_all();
        out
    }
}

async fn copy_stdin(stream: SpdyStream, mut pipe: pipe::Sender) {
    let (mut rx, _) = stream.split();
    while let Some(chunk) = rx.recv().await {
        if pipe.write_all(&chunk).await.is_err() {
            break;
        }
    }
}

async fn copy_output(mut pipe: pipe::Receiver, out: StreamWriter) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write(buf.get(..n).unwrap_or_default()).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = out.close().await;
}

/// A terminal size as kubectl sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Splits the resize stream's bytes into JSON objects (they may arrive cut anywhere).
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    /// Adds bytes; returns the sizes now complete. Garbage is dropped.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<TerminalSize> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut consumed = 0;
        {
            let mut it =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<TerminalSize>();
            loop {
                match it.next() {
                    Some(Ok(size)) => {
                        out.push(size);
                        consumed = it.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(_)) => {
                        // Not a size: drop everything buffered.
                        consumed = self.buf.len();
                        break;
                    }
                    None => {
                        consumed = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        // A client sending endless garbage without a closing brace.
        if self.buf.len() > 64 * 1024 {
            self.buf.clear();
        }
        out
    }
}

/// Follows a CRI log file from its end, writing new lines' content to the streams,
/// until the container is no longer running.
async fn follow_log(
    runtime: &ContainerdRuntime,
    pod_uid: &str,
    container_id: &str,
    path: &std::path::Path,
    tty: bool,
    stdout: Option<&StreamWriter>,
    stderr: Option<&StreamWriter>,
) -> Outcome {
    let open = |p: PathBuf| async move {
        let mut f = tokio::fs::File::open(&p).await?;
        let end = f.seek(std::io::SeekFrom::End(0)).await?;
        let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().await?);
        Ok::<_, std::io::Error>((f, end, ino))
    };
    let (mut file, mut pos, mut ino) = match open(path.to_owned()).await {
        Ok(x) => x,
        Err(e) => return Outcome::Error(format!("open log {}: {e}", path.display())),
    };
    let mut pending = Vec::new();
    let mut ticks = 0u32;
    let mut ending = false;
    loop {
        let mut buf = Vec::new();
        if let Err(e) = (&mut file).take(1 << 20).read_to_end(&mut buf).await {
            return Outcome::Error(format!("read log {}: {e}", path.display()));
        }
        pos += buf.len() as u64;
        pending.extend_from_slice(&buf);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            if let Some((is_stderr, content)) = parse_cri_line(&line) {
                let w = if is_stderr && !tty { stderr } else { stdout };
                if let Some(w) = w
                    && w.write(&content).await.is_err()
                {
                    return Outcome::Success;
                }
            }
        }
        if !buf.is_empty() {
            continue;
        }
        if ending {
            return Outcome::Success;
        }
        tokio::time::sleep(ATTACH_POLL).await;
        ticks += 1;
        // Rotated (a new file at the path) or truncated: start the new one.
        if let Ok(meta) = tokio::fs::metadata(path).await {
            let new_ino = std::os::unix::fs::MetadataExt::ino(&meta);
            if (new_ino != ino || meta.len() < pos)
                && let Ok(f) = tokio::fs::File::open(path).await
            {
                file = f;
                pos = 0;
                ino = new_ino;
            }
        }
        if ticks.is_multiple_of(10) {
            let running = runtime
                .list_containers(Some(pod_uid))
                .await
                .map(|l| {
                    l.iter()
                        .any(|c| c.id == container_id && c.state == ContainerState::Running)
                })
                .unwrap_or(true);
            // One more read after the end, for what the log driver wrote last.
            ending = !running;
        }
    }
}

/// One CRI log line, `<time> <stream> <P|F> <content>\n`: whether it is stderr and
/// its content (with its newline unless partial).
pub fn parse_cri_line(line: &[u8]) -> Option<(bool, Vec<u8>)> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |&b| b == b' ');
    let _time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    let mut out = content.to_vec();
    if tag != b"P" {
        out.push(b'\n');
    }
    Some((stream == b"stderr", out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_objects_split_anywhere() {
        let mut d = ResizeDecoder::default();
        assert!(d.push(br#"{"Width":80,"He"#).is_empty());
        let got = d.push(br#"ight":24}{"Width":100,"Height":40}"#);
        assert_eq!(
            got,
            vec![
                TerminalSize {
                    width: 80,
                    height: 24
                },
                TerminalSize {
                    width: 100,
                    height: 40
                }
            ]
        );
        assert!(d.push(b"not json").is_empty());
        assert_eq!(d.push(br#"{"Width":1,"Height":2}"#).len(), 1);
    }

    #[test]
    fn v4_status_for_a_non_zero_exit_is_upstreams_shape() {
        let s = status_json(&Outcome::ExitCode(3));
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(status_json(&Outcome::Success)["status"], "Success");
        assert_eq!(status_json(&Outcome::Error("x".into()))["code"], 500);
    }

    #[test]
    fn cri_lines_split_back_into_streams() {
        assert_eq!(
            parse_cri_line(b"2024-01-01T00:00:00.000000000Z stdout F hello world\n"),
            Some((false, b"hello world\n".to_vec()))
        );
        assert_eq!(
            parse_cri_line(b"2024-01-01T00:00:00Z stderr P part"),
            Some((true, b"part".to_vec()))
        );
        assert_eq!(parse_cri_line(b"garbage"), None);
    }
}
