//! Container log rotation, as upstream's container log manager does it
//! (`pkg/kubelet/logs/container_log_manager.go`), but done by the log driver itself:
//! once `N.log` passes `containerLogMaxSize` it is renamed `N.log.<YYYYMMDD-hhmmss>`
//! and a new `N.log` is opened; rotated files but the newest are gzip-compressed
//! (`.gz`, written as `.tmp` first), and at most `containerLogMaxFiles` files stay
//! (the current one included), the oldest removed first.
//!
//! Upstream checks sizes every 10 s from the kubelet and asks the runtime to reopen
//! the file; a fast writer then passes the limit many times over between checks.
//! Here the writer checks after every line, so the bound holds at any write rate, and
//! rotation keeps working while the agent is down (the driver outlives it). Readers
//! follow by name: when `N.log` is a new file they finish the old one and reopen.
//!
//! Compression runs in the writer, between two lines: the container's pipe fills
//! for that time, which is the back-pressure that keeps the directory bounded.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Upstream's default `containerLogMaxSize` (10 Mi).
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Upstream's default `containerLogMaxFiles`.
pub const DEFAULT_MAX_FILES: u32 = 5;
/// Suffix of compressed rotated files (upstream's `compressSuffix`).
pub const COMPRESS_SUFFIX: &str = ".gz";
/// Suffix of a file being compressed (upstream's `tmpSuffix`).
pub const TMP_SUFFIX: &str = ".tmp";
/// The rotated files' time stamp (upstream's `timestampFormat`, `20060102-150405`).
const TIMESTAMP_FORMAT: &str = "%Y%m%d-%H%M%S";

/// When to rotate and how many files to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Rotate once the current file reaches this many bytes; 0 never rotates
    /// (upstream disables rotation for a negative size).
    pub max_size: u64,
    /// Files kept per container, the current one included (at least 2).
    pub max_files: u32,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

impl RotationPolicy {
    /// Whether rotation is on.
    pub fn enabled(&self) -> bool {
        self.max_size > 0
    }
}

/// The rotated files of `log` (`<log>.*`), oldest first; `.tmp` files excluded.
///
/// # Errors
/// The error reading the directory.
pub fn rotated_files(log: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut out: Vec<(String, u32, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if rest.ends_with(TMP_SUFFIX) {
            continue;
        }
        let (stamp, seq) = sort_key(rest);
        out.push((stamp, seq, entry.path()));
    }
    out.sort();
    Ok(out.into_iter().map(|(_, _, p)| p).collect())
}

/// `<stamp>[.<seq>][.gz]` as (stamp, seq): a second rotation within one second gets
/// a sequence number, and compression must not change the order.
fn sort_key(rest: &str) -> (String, u32) {
    let rest = rest.strip_suffix(COMPRESS_SUFFIX).unwrap_or(rest);
    match rest.split_once('.') {
        Some((stamp, seq)) => (stamp.to_owned(), seq.parse().unwrap_or(0)),
        None => (rest.to_owned(), 0),
    }
}

/// A rotated name for `log` at `stamp` that sorts after every existing one:
/// `<log>.<stamp>`, or `<log>.<stamp>.<n>` past the highest `n` of that second
/// (compressed or not; a removed older name is never reused).
fn rotated_name(log: &Path, stamp: &str) -> io::Result<PathBuf> {
    let same_second: Vec<u32> = rotated_files(log)?
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let rest = name.strip_prefix(&format!("{}.", log.file_name()?.to_str()?))?;
            let (s, seq) = sort_key(rest);
            (s == stamp).then_some(seq)
        })
        .collect();
    let base = format!("{}.{stamp}", log.display());
    Ok(match same_second.iter().max() {
        None => PathBuf::from(base),
        Some(n) => PathBuf::from(format!("{base}.{}", n + 1)),
    })
}

/// Gzip-compresses `path` into `path.gz` (through `path.gz.tmp`) and removes it.
///
/// # Errors
/// The I/O error; the `.tmp` file is removed on failure.
pub fn compress(path: &Path) -> io::Result<()> {
    let gz = PathBuf::from(format!("{}{COMPRESS_SUFFIX}", path.display()));
    let tmp = PathBuf::from(format!("{}{TMP_SUFFIX}", gz.display()));
    let result = (|| {
        let mut input = File::open(path)?;
        let out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        // Fast compression: the container waits on its pipe meanwhile.
        let mut enc = flate2::write::GzEncoder::new(
            io::BufWriter::with_capacity(256 * 1024, out),
            flate2::Compression::fast(),
        );
        io::copy(&mut input, &mut enc)?;
        enc.finish()?.flush()?;
        std::fs::rename(&tmp, &gz)?;
        std::fs::remove_file(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes leftovers of an interrupted compression (upstream's `cleanupUnusedLogs`):
/// `.tmp` files, and uncompressed files whose `.gz` exists.
fn cleanup_unused(log: &Path) -> io::Result<()> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Ok(());
    };
    let prefix = format!("{name}.");
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if !file_name.starts_with(&prefix) {
            continue;
        }
        let path = entry.path();
        let twin = dir.join(format!("{file_name}{COMPRESS_SUFFIX}"));
        if file_name.ends_with(TMP_SUFFIX) || twin.exists() {
            remove_quietly(&path)?;
        }
    }
    Ok(())
}

fn remove_quietly(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Keeps the newest `max_files - 1` rotated files (the current file is the last one)
/// and compresses all of them but the newest.
///
/// # Errors
/// The first I/O error.
pub fn prune_and_compress(log: &Path, policy: RotationPolicy) -> io::Result<()> {
    cleanup_unused(log)?;
    let rotated = rotated_files(log)?;
    let keep = usize::try_from(policy.max_files.max(2) - 1).unwrap_or(usize::MAX);
    let excess = rotated.len().saturating_sub(keep);
    // Oldest first, so a reader of a recent file is not cut off.
    for old in &rotated[..excess] {
        remove_quietly(old)?;
    }
    let kept = &rotated[excess..];
    if let Some((_newest, older)) = kept.split_last() {
        for f in older {
            if !f.to_string_lossy().ends_with(COMPRESS_SUFFIX) {
                compress(f)?;
            }
        }
    }
    Ok(())
}

/// The log file as the driver writes it: closed until the runtime has made it (writes
/// before that are runc's own messages about a failed create, dropped), then
/// appended to and rotated by `policy`.
pub struct RotatingLog {
    path: PathBuf,
    policy: RotationPolicy,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    /// A sink for `path`, which the runtime creates when the container may run.
    pub fn new(path: PathBuf, policy: RotationPolicy) -> Self {
        Self {
            path,
            policy,
            file: None,
            size: 0,
        }
    }

    /// Whether the log file has been opened (the gate is open).
    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Renames the current file, opens a new one and prunes the rotated ones.
    fn rotate(&mut self) -> io::Result<()> {
        let stamp = jiff::Zoned::now().strftime(TIMESTAMP_FORMAT).to_string();
        let rotated = rotated_name(&self.path, &stamp)?;
        std::fs::rename(&self.path, &rotated)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)?;
        self.file = Some(file);
        self.size = 0;
        prune_and_compress(&self.path, self.policy)
    }
}

impl Write for RotatingLog {
    /// Writes all of `buf` (one CRI line or piece), so rotation falls between lines.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() {
            match OpenOptions::new().append(true).open(&self.path) {
                Ok(f) => {
                    self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(f);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(buf.len()),
                Err(e) => return Err(e),
            }
        }
        if self.policy.enabled() && self.size >= self.policy.max_size {
            // A failed rotation (the directory went with the pod, a rename refused)
            // keeps appending to the open file rather than losing output.
            let _ = self.rotate();
        }
        match &mut self.file {
            Some(f) => {
                f.write_all(buf)?;
                self.size += buf.len() as u64;
                Ok(buf.len())
            }
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rotates_compresses_and_keeps_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        std::fs::write(&path, b"").expect("create");
        let policy = RotationPolicy {
            max_size: 1000,
            max_files: 3,
        };
        let mut log = RotatingLog::new(path.clone(), policy);
        let line = [b'x'; 99];
        for i in 0..100u32 {
            let mut l = format!("{i:04} ").into_bytes();
            l.extend_from_slice(&line[..94]);
            l.push(b'\n');
            log.write_all(&l).expect("write");
        }
        let files = names(dir.path());
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files[0], "0.log");
        let rotated = rotated_files(&path).expect("rotated");
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(rotated[0].to_string_lossy().ends_with(".gz"), "{rotated:?}");
        assert!(
            !rotated[1].to_string_lossy().ends_with(".gz"),
            "{rotated:?}"
        );
        // The files, read oldest to newest, hold the newest lines in order.
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(&rotated[0]).expect("open"))
            .read_to_string(&mut text)
            .expect("gunzip");
        text.push_str(&std::fs::read_to_string(&rotated[1]).expect("read"));
        text.push_str(&std::fs::read_to_string(&path).expect("read"));
        let numbers: Vec<u32> = text
            .lines()
            .map(|l| l[..4].parse().expect("number"))
            .collect();
        assert_eq!(numbers.last(), Some(&99));
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        assert!(std::fs::metadata(&path).expect("stat").len() <= 1000);
    }

    #[test]
    fn gate_stays_closed_until_the_file_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut log = RotatingLog::new(path.clone(), RotationPolicy::default());
        log.write_all(b"runc error\n").expect("write");
        assert!(!path.exists() && !log.is_open());
    }

    #[test]
    fn sort_keeps_compressed_and_sequenced_names_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        for n in [
            "0.log.20261204-231500.gz",
            "0.log.20261204-231500.2",
            "0.log.20261204-231500.10.gz",
            "0.log.20261204-231459",
            "0.log.20261204-231500.1.gz.tmp",
            "1.log.20261204-231400",
        ] {
            std::fs::write(dir.path().join(n), b"").expect("write");
        }
        let names: Vec<String> = rotated_files(&log)
            .expect("list")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "0.log.20261204-231459",
                "0.log.20261204-231500.gz",
                "0.log.20261204-231500.2",
                "0.log.20261204-231500.10.gz",
            ]
        );
        cleanup_unused(&log).expect("cleanup");
        assert!(!dir.path().join("0.log.20261204-231500.1.gz.tmp").exists());
    }
}
