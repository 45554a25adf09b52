//! Reading container logs back, as upstream's `ReadLogs`
//! (`pkg/kubelet/kuberuntime/logs/logs.go`): the CRI lines of one log file, with
//! `tailLines` (the last N lines), `sinceTime` (lines from that time on), `limitBytes`
//! (output cut after that many bytes), `timestamps` (each line prefixed with its
//! time), and `follow` (wait for new lines, across rotation, until the container has
//! exited and the file is read to its end).
//!
//! Unlike upstream, the pieces of a line split by the writer (`P` tags) are joined:
//! a line is shown once, with its first piece's timestamp.
//!
//! The reader is a [`Stream`] of byte chunks with no task of its own: dropping it
//! (the client went away) closes the file at once.

use std::collections::VecDeque;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};

use super::parse_line;

/// How often a follower looks for new lines and for a rotated file.
const POLL: Duration = Duration::from_millis(100);
/// How often a follower asks whether the container still runs (upstream's
/// `stateCheckPeriod` is 5 s).
const STATE_CHECK: Duration = Duration::from_secs(1);
/// The largest chunk handed out at once.
const CHUNK: usize = 64 * 1024;

/// What to read (the CRI's `LogOptions`, upstream's `PodLogOptions` in short).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Wait for new lines until the container has exited.
    pub follow: bool,
    /// Only the last N lines (`None`: all).
    pub tail_lines: Option<u64>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
    /// Only lines written at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Prefix each line with its RFC 3339 timestamp and a space.
    pub timestamps: bool,
}

/// Answers whether the container still runs (a follower stops at the end of the
/// file once it doesn't).
pub type Running = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// The output of [`read_logs`].
pub type LogStream = Pin<Box<dyn Stream<Item = io::Result<Vec<u8>>> + Send>>;

/// Reads the log file at `path` as `opts` asks.
///
/// # Errors
/// The error opening the file (upstream's `failed to open log file`); read errors
/// later end the stream with that error.
pub async fn read_logs(
    path: PathBuf,
    opts: ReadOptions,
    running: Running,
) -> io::Result<LogStream> {
    let file = tokio::fs::File::open(&path).await?;
    let ino = file.metadata().await?.ino();
    let mut reader = BufReader::with_capacity(CHUNK, file);
    if let Some(n) = opts.tail_lines {
        let start = tail_offset(&mut reader, n).await?;
        reader.seek(io::SeekFrom::Start(start)).await?;
    }
    let state = Reader {
        path,
        remaining: opts.limit_bytes,
        opts,
        reader,
        ino,
        pending: Vec::new(),
        in_line: false,
        skipping: false,
        running,
        last_check: Instant::now(),
        last_pass: false,
        rotated: false,
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(
        state,
        |mut s| async move {
            match s.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), s)),
                Ok(None) => None,
                Err(e) => {
                    s.done = true;
                    Some((Err(e), s))
                }
            }
        },
    )))
}

/// The offset of the first of the last `n` lines (lines end with an `F` piece).
async fn tail_offset(reader: &mut BufReader<tokio::fs::File>, n: u64) -> io::Result<u64> {
    let mut starts: VecDeque<u64> = VecDeque::new();
    let keep = usize::try_from(n).unwrap_or(usize::MAX);
    let mut offset = 0u64;
    let mut line_start = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).await?;
        if read == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        offset += read as u64;
        let full = std::str::from_utf8(&buf)
            .ok()
            .and_then(parse_line)
            .is_some_and(|l| l.full);
        if full {
            starts.push_back(line_start);
            if starts.len() > keep {
                starts.pop_front();
            }
            line_start = offset;
        }
    }
    Ok(if keep == 0 {
        offset
    } else {
        starts.front().copied().unwrap_or(line_start)
    })
}

struct Reader {
    path: PathBuf,
    opts: ReadOptions,
    remaining: Option<u64>,
    reader: BufReader<tokio::fs::File>,
    ino: u64,
    /// A raw line read up to the end of the file, not yet ended by its newline.
    pending: Vec<u8>,
    /// Inside a line split into pieces (its timestamp was written).
    in_line: bool,
    /// The line being read is before `since`.
    skipping: bool,
    running: Running,
    last_check: Instant,
    /// The container has exited: read to the end once more, then stop.
    last_pass: bool,
    /// The writer rotated: read the old file to its end once more, then reopen.
    rotated: bool,
    done: bool,
}

impl Reader {
    async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        while !self.done {
            let read = self.reader.read_until(b'\n', &mut self.pending).await?;
            if read > 0 && self.pending.last() == Some(&b'\n') {
                let raw = std::mem::take(&mut self.pending);
                self.emit(&raw, &mut out);
                if out.len() >= CHUNK || self.done {
                    break;
                }
                continue;
            }
            // The end of the file (perhaps inside a line still being written).
            if !out.is_empty() {
                break;
            }
            if !self.opts.follow || self.last_pass {
                self.done = true;
                break;
            }
            if self.rotated {
                // The old file is read to its end (nothing is written to it after
                // the rename): on to the new one.
                self.reopen().await?;
                continue;
            }
            if self.is_rotated().await {
                // Lines may have reached the old file between its end being read
                // and the rename: read it to its end once more first.
                self.rotated = true;
                continue;
            }
            if self.last_check.elapsed() >= STATE_CHECK {
                self.last_check = Instant::now();
                if !(self.running)().await {
                    // Lines written just before the exit are read in one last pass.
                    self.last_pass = true;
                    continue;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// Whether the name now holds another file than the one being read (the writer
    /// rotated). Reading a rotated file that is not the newest counts too.
    async fn is_rotated(&self) -> bool {
        tokio::fs::metadata(&self.path)
            .await
            .is_ok_and(|meta| meta.ino() != self.ino)
    }

    /// The file that followed the one being read: the next rotated file when the
    /// writer rotated more than once since (still uncompressed), else the current.
    fn successor(&self) -> PathBuf {
        let rotated = super::rotate::rotated_files(&self.path).unwrap_or_default();
        let ino_of = |p: &PathBuf| std::fs::metadata(p).map(|m| m.ino()).ok();
        let next = rotated
            .iter()
            .position(|p| ino_of(p) == Some(self.ino))
            .and_then(|i| rotated.get(i + 1))
            .filter(|p| {
                !p.to_string_lossy()
                    .ends_with(super::rotate::COMPRESS_SUFFIX)
            });
        next.cloned().unwrap_or_else(|| self.path.clone())
    }

    /// Continues with the file that followed, from its start.
    async fn reopen(&mut self) -> io::Result<()> {
        let next = self.successor();
        let file = match tokio::fs::File::open(&next).await {
            Ok(f) => f,
            // Between the rename and the new file: look again at the next end.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.rotated = false;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.ino = file.metadata().await?.ino();
        self.reader = BufReader::with_capacity(CHUNK, file);
        self.rotated = false;
        // The writer writes whole lines; a torn one at the old file's end is dropped.
        self.pending.clear();
        Ok(())
    }

    fn emit(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        let Some(line) = std::str::from_utf8(raw).ok().and_then(parse_line) else {
            return;
        };
        if !self.in_line {
            self.skipping = match self.opts.since {
                Some(since) => line
                    .time
                    .parse::<jiff::Timestamp>()
                    .is_ok_and(|t| t < since),
                None => false,
            };
        }
        let start = out.len();
        if !self.skipping {
            if self.opts.timestamps && !self.in_line {
                out.extend_from_slice(line.time.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.text.as_bytes());
            if line.full {
                out.push(b'\n');
            }
        }
        self.in_line = !line.full;
        if let Some(left) = &mut self.remaining {
            let written = (out.len() - start) as u64;
            if written >= *left {
                out.truncate(start + usize::try_from(*left).unwrap_or(0));
                *left = 0;
                self.done = true;
            } else {
                *left -= written;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn running(flag: Arc<AtomicBool>) -> Running {
        Arc::new(move || {
            let v = flag.load(Ordering::SeqCst);
            Box::pin(async move { v })
        })
    }

    fn write(path: &std::path::Path, lines: &[&str]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open");
        for l in lines {
            writeln!(f, "{l}").expect("write");
        }
    }

    async fn read_all(path: &std::path::Path, opts: ReadOptions) -> String {
        let mut s = read_logs(
            path.to_path_buf(),
            opts,
            running(Arc::new(AtomicBool::new(false))),
        )
        .await
        .expect("open");
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend(chunk.expect("chunk"));
        }
        String::from_utf8(out).expect("utf8")
    }

    const LINES: &[&str] = &[
        "2026-12-04T10:00:00.1Z stdout F one",
        "2026-12-04T10:00:01Z stderr P tw",
        "2026-12-04T10:00:01.5Z stderr F o",
        "2026-12-04T10:00:02Z stdout F three",
        "garbage",
        "2026-12-04T10:00:03Z stdout F four",
    ];

    #[tokio::test]
    async fn options_as_upstream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        write(&path, LINES);
        let o = ReadOptions::default;
        assert_eq!(read_all(&path, o()).await, "one\ntwo\nthree\nfour\n");
        let tail = |n| ReadOptions {
            tail_lines: Some(n),
            ..o()
        };
        assert_eq!(read_all(&path, tail(2)).await, "three\nfour\n");
        assert_eq!(read_all(&path, tail(3)).await, "two\nthree\nfour\n");
        assert_eq!(read_all(&path, tail(0)).await, "");
        assert_eq!(read_all(&path, tail(100)).await, "one\ntwo\nthree\nfour\n");
        let since = ReadOptions {
            since: Some("2026-12-04T10:00:01Z".parse().expect("time")),
            timestamps: true,
            ..o()
        };
        assert_eq!(
            read_all(&path, since).await,
            "2026-12-04T10:00:01Z two\n2026-12-04T10:00:02Z three\n2026-12-04T10:00:03Z four\n"
        );
        let limit = ReadOptions {
            limit_bytes: Some(6),
            ..o()
        };
        assert_eq!(read_all(&path, limit).await, "one\ntw");
    }

    #[tokio::test]
    async fn follow_sees_new_lines_across_rotation_and_stops_after_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        write(&path, &["2026-12-04T10:00:00Z stdout F a"]);
        let alive = Arc::new(AtomicBool::new(true));
        let opts = ReadOptions {
            follow: true,
            ..ReadOptions::default()
        };
        let mut s = read_logs(path.clone(), opts, running(Arc::clone(&alive)))
            .await
            .expect("open");
        assert_eq!(s.next().await.expect("chunk").expect("ok"), b"a\n");
        // Two rotations before the follower looks again: the middle file is read too.
        write(&path, &["2026-12-04T10:00:01Z stdout F b"]);
        std::fs::rename(&path, dir.path().join("0.log.20261204-100001")).expect("rotate");
        write(&path, &["2026-12-04T10:00:02Z stdout F c"]);
        std::fs::rename(&path, dir.path().join("0.log.20261204-100002")).expect("rotate");
        write(&path, &["2026-12-04T10:00:02Z stdout F c2"]);
        let mut got = Vec::new();
        while got.len() < b"b\nc\nc2\n".len() {
            got.extend(s.next().await.expect("chunk").expect("ok"));
        }
        assert_eq!(got, b"b\nc\nc2\n");
        alive.store(false, Ordering::SeqCst);
        write(&path, &["2026-12-04T10:00:03Z stdout F d"]);
        let mut rest = Vec::new();
        while let Some(chunk) = s.next().await {
            rest.extend(chunk.expect("ok"));
        }
        assert_eq!(rest, b"d\n");
    }
}
