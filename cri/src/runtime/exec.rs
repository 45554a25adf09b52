//! Running a command in a running container and collecting its output (the CRI's
//! `ExecSync`), through containerd's task service: exec probes and, later, exec hooks.
//!
//! The process gets the container's own process settings (environment, working
//! directory, user, capabilities) with only its arguments replaced, as containerd's
//! CRI plugin does. Its stdout and stderr reach us through two FIFOs in a private
//! directory under the runtime's state dir: the runc shim opens plain paths as FIFOs
//! and copies the process's output into them. (The shim's `file://` scheme would write
//! both streams into one file, losing which was which.)

use std::fs::OpenOptions as StdOpenOptions;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest,
    WaitRequest,
};
use nix::sys::stat::Mode;
use tokio::io::AsyncReadExt as _;
use tokio::net::unix::pipe;
use tonic::Code;
use tracing::{debug, warn};

use super::containerd::{grpc, io_err, new_id};
use super::{ContainerdRuntime, RuntimeError};

/// The most of each stream an [`ExecResult`] keeps; the rest is read and dropped, so
/// a chatty command never blocks on a full pipe.
pub const EXEC_OUTPUT_LIMIT: usize = 16 * 1024;

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const SIGKILL: u32 = 9;
/// How long a killed exec process gets to go before we stop waiting for it.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// After the process ended, how long its output may take to drain. A child it left
/// behind holding the pipe (`sh -c 'daemon &'`) would otherwise hold the call forever.
const DRAIN: Duration = Duration::from_secs(2);
/// Margin of containerd's own deadline over ours on a wait: the local timeout decides.
const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// What a command run in a container did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// Its exit code (128 + signal number when a signal ended it).
    pub exit_code: i32,
    /// Its stdout, at most [`EXEC_OUTPUT_LIMIT`] bytes.
    pub stdout: Vec<u8>,
    /// Its stderr, at most [`EXEC_OUTPUT_LIMIT`] bytes.
    pub stderr: Vec<u8>,
}

/// Reads a FIFO to its end, keeping the first `limit` bytes.
async fn read_capped(mut rx: pipe::Receiver, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        let keep = n.min(limit.saturating_sub(out.len()));
        out.extend_from_slice(&buf[..keep]);
    }
}

/// One exec's FIFOs and their directory, removed on drop.
struct ExecIo {
    dir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ExecIo {
    fn create(dir: PathBuf) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let io = Self {
            stdout: dir.join("stdout"),
            stderr: dir.join("stderr"),
            dir,
        };
        for path in [&io.stdout, &io.stderr] {
            nix::unistd::mkfifo(path.as_path(), Mode::S_IRUSR | Mode::S_IWUSR)
                .map_err(|e| io_err(path)(e.into()))?;
        }
        Ok(io)
    }

    /// Opens the read end of a FIFO, and a write end we hold until the shim has
    /// opened its own: a FIFO read with no writer at all reads as ended.
    fn open(path: &Path) -> Result<(pipe::Receiver, std::fs::File), RuntimeError> {
        let rx = pipe::OpenOptions::new()
            .open_receiver(path)
            .map_err(io_err(path))?;
        let tx = StdOpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io_err(path))?;
        Ok((rx, tx))
    }
}

impl Drop for ExecIo {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %self.dir.display(), error = %e, "exec fifo directory not removed");
        }
    }
}

impl ContainerdRuntime {
    /// Runs `cmd` in the running container `container_id` and waits for it, at most
    /// `timeout`: the CRI's `ExecSync`. The process runs with the container's
    /// environment, working directory and user. Each stream is kept up to
    /// [`EXEC_OUTPUT_LIMIT`] bytes.
    ///
    /// # Errors
    /// - [`RuntimeError::ExecTimeout`] when the command ran past `timeout`; it has
    ///   been killed with SIGKILL (upstream treats this as a failed probe).
    /// - [`RuntimeError::Spec`] for an empty command or a container record without a
    ///   usable process spec.
    /// - [`RuntimeError::Containerd`] when the container doesn't exist or doesn't run
    ///   (containerd's `exec` fails), or another containerd call fails.
    /// - [`RuntimeError::Io`] when the FIFOs can't be made.
    pub async fn exec_sync(
        &self,
        container_id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        if cmd.is_empty() {
            return Err(RuntimeError::Spec {
                name: container_id.to_owned(),
                reason: "exec needs a command".to_owned(),
            });
        }
        let process = self
            .exec_process_spec(container_id, cmd, false, None)
            .await?;
        let exec_id = new_id(16)?;
        let io = ExecIo::create(self.config().state_dir.join("exec").join(&exec_id))?;
        let (out_rx, out_tx) = ExecIo::open(&io.stdout)?;
        let (err_rx, err_tx) = ExecIo::open(&io.stderr)?;
        let mut stdout = tokio::spawn(read_capped(out_rx, EXEC_OUTPUT_LIMIT));
        let mut stderr = tokio::spawn(read_capped(err_rx, EXEC_OUTPUT_LIMIT));

        let started = self.start_exec(container_id, &exec_id, &io, process).await;
        // Once started, the shim holds its own write ends (it opens them before
        // answering Start); on failure nothing will write. Either way ours must go so
        // the readers see the end.
        drop((out_tx, err_tx));
        let exited = match started {
            Ok(()) => self.wait_exec(container_id, &exec_id, timeout).await,
            Err(e) => Err(e),
        };

        let output = if matches!(exited, Ok(Some(_))) {
            let drain = async {
                let out = (&mut stdout).await.ok().and_then(Result::ok);
                let err = (&mut stderr).await.ok().and_then(Result::ok);
                (out.unwrap_or_default(), err.unwrap_or_default())
            };
            tokio::time::timeout(DRAIN, drain).await.ok()
        } else {
            None
        };
        // A reader still waiting holds nothing we need any more.
        stdout.abort();
        stderr.abort();
        if output.is_none() {
            debug!(
                container = container_id,
                exec_id, "exec output not collected"
            );
        }
        if let Err(e) = self.delete_exec(container_id, &exec_id).await {
            warn!(container = container_id, exec_id, error = %e, "exec process not deleted");
        }
        drop(io);

        match exited? {
            Some(exit_code) => {
                let (stdout, stderr) = output.unwrap_or_default();
                Ok(ExecResult {
                    exit_code,
                    stdout,
                    stderr,
                })
            }
            None => Err(RuntimeError::ExecTimeout {
                id: container_id.to_owned(),
                command: cmd.join(" "),
                timeout,
            }),
        }
    }

    /// The container's process spec with `cmd` as its arguments, with a terminal
    /// when `tty` (of `console` columns and rows when given).
    pub(super) async fn exec_process_spec(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        console: Option<(u16, u16)>,
    ) -> Result<prost_types::Any, RuntimeError> {
        let containerd = self.containerd();
        let req = containerd.request(GetContainerRequest {
            id: container_id.to_owned(),
        });
        let record = ContainersClient::new(containerd.channel())
            .get(req)
            .await
            .map_err(grpc("get container", container_id))?
            .into_inner()
            .container;
        let spec_err = |reason: String| RuntimeError::Spec {
            name: container_id.to_owned(),
            reason,
        };
        let any = record
            .and_then(|c| c.spec)
            .ok_or_else(|| spec_err("the container record has no spec".to_owned()))?;
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(&any.value)
            .map_err(|e| spec_err(format!("the container's spec: {e}")))?;
        let mut process = spec
            .process()
            .clone()
            .ok_or_else(|| spec_err("the container's spec has no process".to_owned()))?;
        process.set_args(Some(cmd.to_vec()));
        process.set_terminal(Some(tty));
        let size = console.filter(|_| tty).and_then(|(w, h)| {
            oci_spec::runtime::BoxBuilder::default()
                .width(u32::from(w))
                .height(u32::from(h))
                .build()
                .ok()
        });
        process.set_console_size(size);
        let value = serde_json::to_vec(&process)
            .map_err(|e| spec_err(format!("exec process spec: {e}")))?;
        Ok(prost_types::Any {
            type_url: PROCESS_TYPE_URL.to_owned(),
            value,
        })
    }

    async fn start_exec(
        &self,
        container_id: &str,
        exec_id: &str,
        io: &ExecIo,
        process: prost_types::Any,
    ) -> Result<(), RuntimeError> {
        let containerd = self.containerd();
        let mut tasks = TasksClient::new(containerd.channel());
        let req = containerd.request(ExecProcessRequest {
            container_id: container_id.to_owned(),
            stdin: String::new(),
            stdout: io.stdout.to_string_lossy().into_owned(),
            stderr: io.stderr.to_string_lossy().into_owned(),
            terminal: false,
            spec: Some(process),
            exec_id: exec_id.to_owned(),
        });
        tasks.exec(req).await.map_err(grpc("exec", container_id))?;
        let req = containerd.request(StartRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        });
        tasks
            .start(req)
            .await
            .map_err(grpc("start exec", container_id))?;
        Ok(())
    }

    /// Waits for the exec process; `Ok(None)` when `timeout` passed first, after it
    /// was killed.
    async fn wait_exec(
        &self,
        container_id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<Option<i32>, RuntimeError> {
        let containerd = self.containerd();
        let tasks = TasksClient::new(containerd.channel());
        let wait = |limit: Duration| {
            let req = containerd.request_with_timeout(
                WaitRequest {
                    container_id: container_id.to_owned(),
                    exec_id: exec_id.to_owned(),
                },
                limit + DEADLINE_MARGIN,
            );
            let mut tasks = tasks.clone();
            async move { tokio::time::timeout(limit, tasks.wait(req)).await }
        };
        match wait(timeout).await {
            Ok(Ok(resp)) => {
                let status = resp.into_inner().exit_status;
                return Ok(Some(i32::try_from(status).unwrap_or(i32::MAX)));
            }
            Ok(Err(status)) => return Err(grpc("wait exec", container_id)(status)),
            Err(_elapsed) => {}
        }
        debug!(
            container = container_id,
            exec_id,
            ?timeout,
            "exec timed out, killing"
        );
        let req = containerd.request(KillRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            signal: SIGKILL,
            all: false,
        });
        match tasks.clone().kill(req).await {
            Ok(_) => {}
            // It ended on its own meanwhile.
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {}
            Err(s) => return Err(grpc("kill exec", container_id)(s)),
        }
        match wait(KILL_WAIT).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) if s.code() == Code::NotFound => {}
            Ok(Err(s)) => return Err(grpc("wait exec", container_id)(s)),
            Err(_elapsed) => {
                warn!(
                    container = container_id,
                    exec_id, "exec process still there after SIGKILL"
                );
            }
        }
        Ok(None)
    }

    pub(super) async fn delete_exec(
        &self,
        container_id: &str,
        exec_id: &str,
    ) -> Result<(), RuntimeError> {
        let containerd = self.containerd();
        let req = containerd.request(DeleteProcessRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        });
        match TasksClient::new(containerd.channel())
            .delete_process(req)
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(grpc("delete exec", container_id)(s)),
        }
    }
}
