//! Container logs in the CRI format, as upstream writes them under `/var/log/pods`.
//!
//! Each line is `<RFC 3339 nanosecond timestamp> <stdout|stderr> <F|P> <text>`: `F` ends a
//! line, `P` marks a piece of a longer one, split at [`MAX_LINE`] bytes as containerd does.
//!
//! The writer runs as a containerd *shim logging binary* (the `binary://` stdio scheme):
//! the runc shim starts it with the container's stdout and stderr pipes, so logs keep
//! flowing while the agent itself restarts, as conmon does for CRI-O.
//!
//! The driver never creates the log file: the runtime makes it once `runc create`
//! has succeeded ([`create_log_file`]), and the driver drops what arrives before
//! that. The shim hands runc the container's stdio pipes, so when `runc create` fails
//! runc prints its error on the container's stderr too; that error reaches the agent
//! through containerd's reply, and the workload's log stays empty.
//!
//! [`files`] owns the files around the logs: pod log directories and the
//! `/var/log/containers` symlinks; [`rotate`] rotates and compresses the files as
//! the driver writes them; [`read`] reads them back as upstream's `ReadLogs`
//! (tail, since, limit, follow across rotation).

pub mod files;
pub mod read;
pub mod rotate;

pub use self::rotate::{RotatingLog, RotationPolicy};

pub use self::files::{
    LogFileError, Pruned, create_log_symlink, log_symlink_path, pod_log_dir, prune_log_symlinks,
    prune_pod_log_dirs, remove_container_logs, remove_log_symlink, remove_pod_log_dir,
};

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use thiserror::Error;

/// The longest line written in one piece; longer lines are split into `P` pieces.
/// The same bound as containerd's CRI plugin (16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// The argument that tells the `nodelet` binary to run as a shim logging driver.
pub const DRIVER_ARG: &str = "cri-log";
/// The driver's argument for the rotation size in bytes (`containerLogMaxSize`).
pub const MAX_SIZE_ARG: &str = "max-size";
/// The driver's argument for the files kept (`containerLogMaxFiles`).
pub const MAX_FILES_ARG: &str = "max-files";

/// Errors of the log driver.
#[derive(Debug, Error)]
pub enum LogError {
    /// The driver was started without a log path.
    #[error("cri-log: missing log file path argument")]
    MissingPath,
    /// A rotation argument is not a number.
    #[error("cri-log: {key} {value:?} is not a number")]
    BadArg {
        /// The argument.
        key: &'static str,
        /// Its value.
        value: String,
    },
}

/// The driver's arguments: the log path and the rotation policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverArgs {
    /// The CRI log file.
    pub path: PathBuf,
    /// When to rotate it.
    pub policy: RotationPolicy,
}

/// Parses the driver's arguments (the program name excluded): `key value` pairs in
/// any order, as the runc shim makes them from the `binary://` URI's query (Go map
/// order). `None` when these are not the driver's arguments (no `cri-log` key, an
/// unknown key, or an odd count), so the binary runs as the agent.
///
/// # Errors
/// Inside the `Some`: [`LogError`] for a rotation value that is not a number.
pub fn driver_args(args: &[String]) -> Option<Result<DriverArgs, LogError>> {
    if !args.len().is_multiple_of(2) {
        return None;
    }
    let mut path = None;
    let mut policy = RotationPolicy {
        max_size: 0,
        max_files: rotate::DEFAULT_MAX_FILES,
    };
    for pair in args.chunks(2) {
        let [key, value] = pair else { return None };
        match key.as_str() {
            DRIVER_ARG => path = Some(PathBuf::from(value)),
            MAX_SIZE_ARG => match value.parse() {
                Ok(n) => policy.max_size = n,
                Err(_) => {
                    return Some(Err(LogError::BadArg {
                        key: MAX_SIZE_ARG,
                        value: value.clone(),
                    }));
                }
            },
            MAX_FILES_ARG => match value.parse() {
                Ok(n) => policy.max_files = n,
                Err(_) => {
                    return Some(Err(LogError::BadArg {
                        key: MAX_FILES_ARG,
                        value: value.clone(),
                    }));
                }
            },
            _ => return None,
        }
    }
    // Without the `cri-log` key these are not the driver's arguments.
    path.map(|path| Ok(DriverArgs { path, policy }))
}

/// Whether this process was started as the log driver (see [`driver_args`]).
pub fn is_driver_invocation() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    driver_args(&args).is_some()
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's standard output.
    Stdout,
    /// The container's standard error.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// One parsed CRI log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The timestamp as written (RFC 3339 with nanoseconds).
    pub time: String,
    /// The stream.
    pub stream: Stream,
    /// Whether this piece ends the line (`F`) or continues (`P`).
    pub full: bool,
    /// The text, without the trailing newline.
    pub text: String,
}

/// Parses one CRI log line (as written by [`format_line`]).
pub fn parse_line(line: &str) -> Option<LogLine> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?.to_owned();
    let stream = match parts.next()? {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        "F" => true,
        "P" => false,
        _ => return None,
    };
    let text = parts.next().unwrap_or("").trim_end_matches('\n').to_owned();
    Some(LogLine {
        time,
        stream,
        full,
        text,
    })
}

/// Formats `text` (one line, without its newline) as CRI log lines, splitting pieces
/// longer than [`MAX_LINE`].
pub fn format_line(out: &mut Vec<u8>, time: &str, stream: Stream, text: &[u8], ends_line: bool) {
    let mut chunks = text.chunks(MAX_LINE).peekable();
    if chunks.peek().is_none() {
        push_piece(out, time, stream, b"", ends_line);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        push_piece(out, time, stream, chunk, last && ends_line);
    }
}

fn push_piece(out: &mut Vec<u8>, time: &str, stream: Stream, text: &[u8], full: bool) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Copies `input` into `sink` as CRI log lines until end of file.
///
/// The lines that one read of the pipe brought are formatted with one timestamp and
/// written with one write (rotation falls between writes), so a chatty container
/// costs a syscall per pipe read, not per line.
///
/// # Errors
/// The first write error; read errors end the copy (the pipe closed).
pub fn copy_stream<R: Read, W: Write>(
    input: R,
    stream: Stream,
    sink: &Mutex<W>,
    now: impl Fn() -> String,
) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(4 * MAX_LINE, input);
    let mut buf = Vec::with_capacity(256);
    let mut out = Vec::with_capacity(8 * MAX_LINE);
    loop {
        out.clear();
        // A read of the pipe (blocking only when the buffer is empty), then every
        // line already in the buffer.
        let time = {
            let available = reader.fill_buf()?;
            if available.is_empty() {
                return Ok(());
            }
            now()
        };
        loop {
            buf.clear();
            // At most MAX_LINE bytes so a line without newlines can't grow without bound.
            let n = (&mut reader)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf)?;
            if n == 0 {
                break;
            }
            let ends_line = buf.last() == Some(&b'\n');
            if ends_line {
                buf.pop();
            }
            format_line(&mut out, &time, stream, &buf, ends_line);
            if reader.buffer().is_empty() || out.len() >= 4 * MAX_LINE {
                break;
            }
        }
        // One write under the lock keeps stdout and stderr lines whole.
        let mut w = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        w.write_all(&out)?;
    }
}

/// The current time as CRI logs write it.
pub fn timestamp() -> String {
    jiff::Timestamp::now().to_string()
}

/// The shim logging driver: writes the container's stdout and stderr to the log file
/// given as the argument after [`DRIVER_ARG`].
pub struct CriLogDriver {
    args: DriverArgs,
    config: containerd_shim_logging::Config,
}

impl containerd_shim_logging::Driver for CriLogDriver {
    type Error = LogError;

    fn new(config: containerd_shim_logging::Config) -> Result<Self, LogError> {
        // The shim passes the `binary://` URI's query as `key value` arguments.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let args = driver_args(&args).unwrap_or(Err(LogError::MissingPath))?;
        Ok(Self { args, config })
    }

    fn run(self) -> Result<(), LogError> {
        let sink = Arc::new(Mutex::new(RotatingLog::new(
            self.args.path,
            self.args.policy,
        )));
        let err_sink = Arc::clone(&sink);
        let stderr = self.config.stderr;
        let errs = thread::spawn(move || copy_stream(stderr, Stream::Stderr, &err_sink, timestamp));
        // A write error (disk full) ends the copy; the pipe then fills and the container
        // blocks on output, which is what containerd's CRI plugin does too.
        let _ = copy_stream(self.config.stdout, Stream::Stdout, &sink, timestamp);
        let _ = errs.join();
        Ok(())
    }
}

/// Creates a container's (empty) log file with containerd's mode, opening the
/// driver's gate: called once `runc create` has succeeded, before the task starts.
///
/// # Errors
/// The I/O error when the file can't be created.
pub fn create_log_file(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map(drop)
}

/// Runs the shim logging driver; never returns. Called by the binary's `main` when it
/// is started as `nodelet cri-log <path>`.
///
/// SIGTERM is ignored: the runc shim sends it when the task is deleted, right after
/// closing its ends of the pipes, and the driver ends on its own once it has written
/// what is left in them (the shim kills it after 12 s if not). Exited tasks are
/// deleted as soon as their exit is recorded, so the last lines a container wrote
/// would otherwise be lost.
pub fn run_driver() -> ! {
    // SAFETY: no handler is installed, only the disposition set to ignore.
    if let Err(e) = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::SigHandler::SigIgn,
        )
    } {
        eprintln!("cri-log: cannot ignore SIGTERM: {e}");
    }
    containerd_shim_logging::run::<CriLogDriver>();
    std::process::exit(0)
}

/// The name of the log driver's own binary, installed beside `nodelet`.
pub const DRIVER_BINARY: &str = "nodelet-log-driver";

/// The log driver to start for containers: [`DRIVER_BINARY`] beside `exe` (the
/// agent's binary) when there is one, else `exe` itself, which runs the driver when
/// started as `nodelet cri-log`. The small binary saves each container's driver the
/// agent binary's relocated data (about 2.6 MB of private memory in a debug build).
pub fn driver_binary(exe: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    exe.parent()
        .map(|dir| dir.join(DRIVER_BINARY))
        .filter(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| exe.to_path_buf())
}

/// Builds the stdio URI that makes the runc shim start `binary` as the log driver of
/// a container writing to `log_path`, rotated by `policy`.
pub fn driver_uri(binary: &Path, log_path: &Path, policy: RotationPolicy) -> String {
    format!(
        "binary://{}?{DRIVER_ARG}={}&{MAX_SIZE_ARG}={}&{MAX_FILES_ARG}={}",
        percent_encode(&binary.to_string_lossy()),
        percent_encode(&log_path.to_string_lossy()),
        policy.max_size,
        policy.max_files,
    )
}

/// Percent-encodes a path for a URI path or query value (`/` kept: Go's url.Parse
/// accepts it in both). Hand-written: a dozen lines don't justify a URL crate here.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Vec<LogLine> {
        let sink = Mutex::new(Vec::new());
        copy_stream(input, Stream::Stdout, &sink, || "T".to_owned()).expect("copy");
        let out = sink.into_inner().expect("lock");
        String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| parse_line(l).expect("parses"))
            .collect()
    }

    #[test]
    fn full_and_partial_lines() {
        let lines = run(b"hello\nworld");
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            LogLine {
                time: "T".into(),
                stream: Stream::Stdout,
                full: true,
                text: "hello".into()
            }
        );
        assert!(!lines[1].full, "an unterminated last line is a P piece");
        assert_eq!(lines[1].text, "world");
    }

    #[test]
    fn long_lines_are_split() {
        let mut input = vec![b'x'; MAX_LINE * 2 + 10];
        input.push(b'\n');
        let lines = run(&input);
        assert_eq!(lines.len(), 3);
        assert!(!lines[0].full && !lines[1].full && lines[2].full);
        assert_eq!(lines[2].text.len(), 10);
    }

    #[test]
    fn empty_line_is_kept() {
        let lines = run(b"\n");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].full);
        assert_eq!(lines[0].text, "");
    }

    #[test]
    fn nothing_is_written_before_the_runtime_makes_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let sink = Mutex::new(RotatingLog::new(path.clone(), RotationPolicy::default()));
        copy_stream(
            &b"runc create failed: exec: /nonexistent\n"[..],
            Stream::Stderr,
            &sink,
            || "T".to_owned(),
        )
        .expect("copy");
        assert!(!path.exists(), "the driver must not create the log file");
        create_log_file(&path).expect("create");
        copy_stream(&b"hello\n"[..], Stream::Stdout, &sink, || "T".to_owned()).expect("copy");
        assert!(sink.lock().expect("lock").is_open());
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "T stdout F hello\n"
        );
    }

    #[test]
    fn the_driver_binary_beside_the_agent_is_preferred() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("nodelet");
        assert_eq!(
            driver_binary(&exe),
            exe,
            "none beside: the agent's own binary"
        );
        let driver = dir.path().join(DRIVER_BINARY);
        std::fs::write(&driver, b"").expect("write");
        assert_eq!(driver_binary(&exe), exe, "not executable");
        std::fs::set_permissions(&driver, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(driver_binary(&exe), driver);
    }

    #[test]
    fn uri_encodes_query() {
        let uri = driver_uri(
            Path::new("/usr/bin/nodelet"),
            Path::new("/var/log/pods/a b/c/0.log"),
            RotationPolicy::default(),
        );
        assert_eq!(
            uri,
            "binary:///usr/bin/nodelet?cri-log=/var/log/pods/a%20b/c/0.log&max-size=10485760&max-files=5"
        );
    }

    #[test]
    fn driver_args_come_in_any_order() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let parsed = driver_args(&args(&[
            "max-files",
            "3",
            "cri-log",
            "/l/0.log",
            "max-size",
            "100",
        ]))
        .expect("driver")
        .expect("valid");
        assert_eq!(parsed.path, Path::new("/l/0.log"));
        assert_eq!(
            parsed.policy,
            RotationPolicy {
                max_size: 100,
                max_files: 3
            }
        );
        let old = driver_args(&args(&["cri-log", "/l/0.log"]))
            .expect("driver")
            .expect("valid");
        assert_eq!(
            old.policy.max_size, 0,
            "a driver started without a size doesn't rotate"
        );
        assert!(driver_args(&args(&["run", "--manifest", "x"])).is_none());
        assert!(driver_args(&args(&[])).is_none());
        assert!(
            driver_args(&args(&["max-size", "x", "cri-log", "p"]))
                .expect("driver")
                .is_err()
        );
    }
}
