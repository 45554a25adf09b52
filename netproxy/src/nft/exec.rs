//! The seam to the kernel: `Nft` runs a script (`nft -f -`), lists our table
//! (`nft -j list table`) and sends incremental transactions as netlink batches.
//! `NftCommand` is the real one, optionally inside a named network namespace
//! (`ip netns exec`, for tests and benches); `RecordingNft` is the typed fake.

use std::future::Future;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::listing::Observed;
use super::netlink::{Batch, NetlinkError, Socket};
use crate::model::IpFamily;

/// A failed run of `nft`, with everything needed to see why.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the script to nft's stdin failed: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("`nft {args}` did not finish within {timeout:?}")]
    Timeout { args: String, timeout: Duration },
    #[error("`nft {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("waiting for nft failed: {0}")]
    Wait(#[source] std::io::Error),
}

impl NftError {
    /// Whether nft said the table does not exist (listing before the first sync).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NftError::Failed { stderr, .. } if stderr.contains("No such file or directory"))
    }
}

/// Runs nft.
pub trait Nft: Send + Sync + Clone + 'static {
    /// Applies `script` as one transaction (`nft -f -`).
    fn apply(&self, script: &str) -> impl Future<Output = Result<(), NftError>> + Send;
    /// Lists table `family table` as JSON (`nft -j list table`).
    fn list_table(
        &self,
        family: &str,
        table: &str,
    ) -> impl Future<Output = Result<String, NftError>> + Send;
    /// Lists the tables of `family` as JSON (`nft -j list tables`).
    fn list_tables(&self, family: &str) -> impl Future<Output = Result<String, NftError>> + Send;
    /// Applies `batch` as one transaction over netlink; `NetlinkError::Unavailable` (or
    /// any error whose `use_text` holds) asks the caller to send the text instead.
    fn apply_batch(&self, batch: &Batch) -> impl Future<Output = Result<(), NetlinkError>> + Send;
    /// Reads tables `tables` of `family` back over netlink (`netlink::dump`), in that
    /// order; an error asks the caller to list them with `list_table` instead.
    fn observe_tables(
        &self,
        family: IpFamily,
        tables: &[String],
    ) -> impl Future<Output = Result<Vec<Observed>, NetlinkError>> + Send;
    /// Reads table `table` back as `observe_tables` does, as a future that borrows
    /// nothing, so the per-table consistency check runs beside the syncs (`runner`).
    fn observe_table(
        &self,
        family: IpFamily,
        table: String,
    ) -> impl Future<Output = Result<Observed, NetlinkError>> + Send + 'static {
        let me = self.clone();
        async move {
            let mut read = me
                .observe_tables(family, std::slice::from_ref(&table))
                .await?;
            Ok(read.pop().unwrap_or_default())
        }
    }
}

/// The netlink side of `NftCommand`: on or off (shared by clones), and the socket,
/// opened on first use in the command's namespace.
#[derive(Debug, Default)]
struct NetlinkState {
    disabled: AtomicBool,
    socket: Mutex<Option<Arc<Socket>>>,
}

/// The real `nft`.
#[derive(Debug, Clone)]
pub struct NftCommand {
    program: String,
    netns: Option<String>,
    timeout: Duration,
    netlink: Arc<NetlinkState>,
}

impl NftCommand {
    /// `nft` from `$PATH`, in the current network namespace, with a 30 s timeout (a full
    /// ruleset of 10k services takes about a second).
    pub fn new() -> Self {
        Self {
            program: "nft".into(),
            netns: None,
            timeout: Duration::from_secs(30),
            netlink: Arc::default(),
        }
    }

    /// Turns the netlink path of incremental syncs on (the default) or off (every
    /// transaction through `nft -f`); clones share the switch.
    pub fn set_netlink(&self, on: bool) {
        self.netlink.disabled.store(!on, Ordering::SeqCst);
    }

    fn socket(&self) -> Result<Arc<Socket>, NetlinkError> {
        let mut guard = self
            .netlink
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(match &self.netns {
            Some(ns) => Socket::open_in_netns(ns)?,
            None => Socket::open()?,
        });
        *guard = Some(s.clone());
        Ok(s)
    }

    /// Runs nft inside the named network namespace (`ip netns exec NAME nft …`).
    pub fn in_netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Sets the timeout of one nft run.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &self.program]);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| NftError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        let joined = args.join(" ");
        let work = async move {
            if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(input.as_bytes())
                    .await
                    .map_err(NftError::Stdin)?;
                drop(pipe);
            }
            child.wait_with_output().await.map_err(NftError::Wait)
        };
        let out = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| NftError::Timeout {
                args: joined.clone(),
                timeout: self.timeout,
            })??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(NftError::Failed {
                args: joined,
                status: out.status,
                stdout,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(stdout)
    }
}

impl Default for NftCommand {
    fn default() -> Self {
        Self::new()
    }
}

impl Nft for NftCommand {
    async fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(script)).await.map(|_| ())
    }

    async fn list_table(&self, family: &str, table: &str) -> Result<String, NftError> {
        self.run(&["-j", "list", "table", family, table], None)
            .await
    }

    async fn list_tables(&self, family: &str) -> Result<String, NftError> {
        self.run(&["-j", "list", "tables", family], None).await
    }

    /// Sends the batch on the calling thread: the kernel applies it inside `sendmsg`, in
    /// about the time of the change (milliseconds), so it is not worth a blocking task.
    async fn apply_batch(&self, batch: &Batch) -> Result<(), NetlinkError> {
        if self.netlink.disabled.load(Ordering::SeqCst) {
            return Err(NetlinkError::Unavailable);
        }
        self.socket()?.apply(batch)
    }

    /// Dumps on the calling thread, as `apply_batch` sends: the kernel answers in about
    /// the time of the table's size, without `nft`'s parse and print.
    async fn observe_tables(
        &self,
        family: IpFamily,
        tables: &[String],
    ) -> Result<Vec<Observed>, NetlinkError> {
        if self.netlink.disabled.load(Ordering::SeqCst) {
            return Err(NetlinkError::Unavailable);
        }
        let sock = self.socket()?;
        super::netlink::dump::observe_all(&sock, family, tables)
    }

    /// On a blocking thread and a socket of its own (the batch socket stays free for the
    /// syncs), without the family-wide chain dump when the table allows
    /// (`dump::observe_one`).
    fn observe_table(
        &self,
        family: IpFamily,
        table: String,
    ) -> impl Future<Output = Result<Observed, NetlinkError>> + Send + 'static {
        let disabled = self.netlink.disabled.load(Ordering::SeqCst);
        let netns = self.netns.clone();
        async move {
            if disabled {
                return Err(NetlinkError::Unavailable);
            }
            tokio::task::spawn_blocking(move || {
                let sock = match &netns {
                    Some(ns) => Socket::open_in_netns(ns)?,
                    None => Socket::open()?,
                };
                super::netlink::dump::observe_one(&sock, family, &table)
            })
            .await
            .unwrap_or(Err(NetlinkError::Unavailable))
        }
    }
}

/// One call the fake saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftCall {
    Apply(String),
    List(String),
    /// A netlink batch, as the nft commands of its messages.
    Batch(Vec<String>),
}

/// What the fake does with netlink batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FakeNetlink {
    /// Answers `Unavailable`: every transaction goes through `apply` as text.
    #[default]
    Off,
    /// Records and accepts batches.
    Accept,
    /// Records batches and rejects them, as the kernel would a stale command.
    Reject,
}

/// A fake `Nft` recording every call; listings answer with a preset JSON of the whole
/// ruleset, reduced to the items of the table asked for (or "no table").
#[derive(Debug, Clone, Default)]
pub struct RecordingNft {
    pub calls: Arc<Mutex<Vec<NftCall>>>,
    pub listing: Arc<Mutex<Option<String>>>,
    pub netlink: Arc<Mutex<FakeNetlink>>,
}

impl RecordingNft {
    /// The scripts applied so far.
    pub fn scripts(&self) -> Vec<String> {
        self.calls
            .lock()
            .map(|c| {
                c.iter()
                    .filter_map(|c| match c {
                        NftCall::Apply(s) => Some(s.clone()),
                        NftCall::List(_) | NftCall::Batch(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl RecordingNft {
    /// The preset listing's items for which `keep(kind, body)` holds, metainfo always.
    fn items(&self, keep: impl Fn(&str, &serde_json::Value) -> bool) -> String {
        let listing = self.listing.lock().ok().and_then(|l| l.clone());
        let Some(v) = listing.and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        else {
            return r#"{"nftables": [{"metainfo": {}}]}"#.to_string();
        };
        let items: Vec<serde_json::Value> = v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| {
                i.as_object()
                    .and_then(|o| o.iter().next())
                    .is_some_and(|(k, b)| k == "metainfo" || keep(k, b))
            })
            .cloned()
            .collect();
        serde_json::json!({ "nftables": items }).to_string()
    }
}

impl Nft for RecordingNft {
    async fn apply(&self, script: &str) -> Result<(), NftError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(NftCall::Apply(script.to_string()));
        }
        Ok(())
    }

    async fn list_table(&self, family: &str, table: &str) -> Result<String, NftError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(NftCall::List(format!("{family} {table}")));
        }
        Ok(self.items(|kind, body| {
            let of = if kind == "table" {
                &body["name"]
            } else {
                &body["table"]
            };
            of.as_str().is_none_or(|t| t == table)
        }))
    }

    async fn list_tables(&self, family: &str) -> Result<String, NftError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(NftCall::List(family.to_string()));
        }
        Ok(self.items(|kind, _| kind == "table"))
    }

    /// The fake reads nothing back: listings come from the preset JSON.
    async fn observe_tables(
        &self,
        _: IpFamily,
        _: &[String],
    ) -> Result<Vec<Observed>, NetlinkError> {
        Err(NetlinkError::Unavailable)
    }

    async fn apply_batch(&self, batch: &Batch) -> Result<(), NetlinkError> {
        let mode = self.netlink.lock().map(|m| *m).unwrap_or_default();
        if mode == FakeNetlink::Off {
            return Err(NetlinkError::Unavailable);
        }
        if let Ok(mut c) = self.calls.lock() {
            c.push(NftCall::Batch(batch.commands().to_vec()));
        }
        match mode {
            FakeNetlink::Reject => Err(NetlinkError::Rejected {
                command: batch.commands().first().cloned().unwrap_or_default(),
                errno: nix::errno::Errno::ENOENT,
            }),
            _ => Ok(()),
        }
    }
}
