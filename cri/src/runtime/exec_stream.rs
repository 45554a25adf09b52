//! Interactive exec: a command run in a running container with its stdin, stdout and
//! stderr (or one terminal) handed to the caller as pipes, for the kubelet API's
//! `/exec` streams (the CRI's streaming `Exec`, which containerd's CRI plugin serves
//! the same way through its task service).
//!
//! Each stream is a FIFO in a private directory under the runtime's state dir: the
//! runc shim opens the paths we give it and copies between them and the process (or
//! the terminal it allocates when `tty`). Closing stdin is our write end going away
//! plus a `CloseIO`, as containerd's `StdinOnce`. The session's [`ExecSession::finish`]
//! (or its drop, in a spawned task) deletes the exec process and the FIFOs, so a
//! client that disconnects leaves nothing behind: a still-running process is killed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CloseIoRequest, ExecProcessRequest, KillRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use nix::sys::stat::Mode;
use tokio::io::AsyncReadExt as _;
use tokio::net::unix::pipe;
use tonic::Code;
use tracing::warn;

use super::containerd::{grpc, io_err, new_id};
use super::{ContainerdRuntime, RuntimeError};

const SIGKILL: u32 = 9;
/// How long a process killed on cleanup gets to go.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// The deadline of the wait for an interactive process (30 days).
const SESSION_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);
/// How many exec starts go to containerd at once.
static EXEC_STARTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Which of the process's streams the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExecStreams {
    /// Feed the process's stdin.
    pub stdin: bool,
    /// Read its stdout (with `tty`, the terminal's output).
    pub stdout: bool,
    /// Read its stderr (never with `tty`: the terminal merges it).
    pub stderr: bool,
    /// Give it a terminal.
    pub tty: bool,
    /// The terminal's initial columns and rows.
    pub console: Option<(u16, u16)>,
}

/// A started interactive exec. Take the pipes, [`wait`](Self::wait) for the exit
/// code, then [`finish`](Self::finish); dropping it unfinished cleans up in the
/// background.
pub struct ExecSession {
    runtime: Arc<ContainerdRuntime>,
    container_id: String,
    exec_id: String,
    dir: PathBuf,
    /// The process's stdin (when asked for).
    pub stdin: Option<pipe::Sender>,
    /// The process's stdout or terminal output (when asked for).
    pub stdout: Option<pipe::Receiver>,
    /// The process's stderr (when asked for, without a terminal).
    pub stderr: Option<pipe::Receiver>,
    finished: bool,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("container_id", &self.container_id)
            .field("exec_id", &self.exec_id)
            .finish_non_exhaustive()
    }
}

fn fifo(dir: &std::path::Path, name: &str) -> Result<PathBuf, RuntimeError> {
    let path = dir.join(name);
    nix::unistd::mkfifo(path.as_path(), Mode::S_IRUSR | Mode::S_IWUSR)
        .map_err(|e| io_err(&path)(e.into()))?;
    Ok(path)
}

fn path_string(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl ContainerdRuntime {
    /// Starts `cmd` in the running container `container_id` with the streams asked
    /// for, as an interactive session.
    ///
    /// # Errors
    /// [`RuntimeError::Spec`] for an empty command; [`RuntimeError::Containerd`] when
    /// the container doesn't exist or doesn't run; [`RuntimeError::Io`] when the
    /// FIFOs can't be made.
    pub async fn exec_streaming(
        self: &Arc<Self>,
        container_id: &str,
        cmd: &[String],
        streams: ExecStreams,
    ) -> Result<ExecSession, RuntimeError> {
        if cmd.is_empty() {
            return Err(RuntimeError::Spec {
                name: container_id.to_owned(),
                reason: "exec needs a command".to_owned(),
            });
        }
        let process = self
            .exec_process_spec(container_id, cmd, streams.tty, streams.console)
            .await?;
        let exec_id = new_id(16)?;
        let dir = self.config().state_dir.join("exec").join(&exec_id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut session = ExecSession {
            runtime: Arc::clone(self),
            container_id: container_id.to_owned(),
            exec_id: exec_id.clone(),
            dir: dir.clone(),
            stdin: None,
            stdout: None,
            stderr: None,
            finished: false,
        };
        let stdin_path = streams.stdin.then(|| fifo(&dir, "stdin")).transpose()?;
        // The shim wants both output paths (an empty one fails its start), so an
        // output nobody asked for still gets a FIFO, read and dropped below.
        let stdout_path = Some(fifo(&dir, "stdout")?);
        let stderr_path = (!streams.tty).then(|| fifo(&dir, "stderr")).transpose()?;
        // Our ends are opened first, read-write where a plain open would wait for
        // the other side: a FIFO read with no writer at all reads as ended, so each
        // read end keeps a write end of ours until the shim has opened its own.
        let mut holds = Vec::new();
        if let Some(p) = &stdin_path {
            session.stdin = Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .map_err(io_err(p))?,
            );
        }
        for (path, slot) in [
            (&stdout_path, &mut session.stdout),
            (&stderr_path, &mut session.stderr),
        ] {
            if let Some(p) = path {
                *slot = Some(
                    pipe::OpenOptions::new()
                        .open_receiver(p)
                        .map_err(io_err(p))?,
                );
                holds.push(pipe::OpenOptions::new().open_sender(p).map_err(io_err(p))?);
            }
        }
        let containerd = self.containerd();
        let mut tasks = TasksClient::new(containerd.channel());
        // containerd 1.6's runc shim can miss the exit of a `runc exec` it runs while
        // many others start at once (containerd issue 7561): that Start never
        // answers. Starts are few at a time; the sessions themselves still run in
        // parallel.
        let _starting = EXEC_STARTS.acquire().await;
        let req = containerd.request(ExecProcessRequest {
            container_id: container_id.to_owned(),
            stdin: path_string(&stdin_path),
            stdout: path_string(&stdout_path),
            stderr: path_string(&stderr_path),
            terminal: streams.tty,
            spec: Some(process),
            exec_id: exec_id.clone(),
        });
        tasks.exec(req).await.map_err(grpc("exec", container_id))?;
        let req = containerd.request(StartRequest {
            container_id: container_id.to_owned(),
            exec_id: exec_id.clone(),
        });
        tasks
            .start(req)
            .await
            .map_err(grpc("start exec", container_id))?;
        drop(_starting);
        // The shim holds its write ends now (it opens them before answering Start).
        drop(holds);
        for (wanted, slot) in [
            (streams.stdout, &mut session.stdout),
            (streams.stderr, &mut session.stderr),
        ] {
            if !wanted && let Some(mut rx) = slot.take() {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(rx.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        }
        Ok(session)
    }
}

impl ExecSession {
    /// Ends the process's stdin: drops our end and tells the shim.
    ///
    /// # Errors
    /// [`RuntimeError::Containerd`] when containerd refuses (not when the process
    /// has gone).
    pub async fn close_stdin(&mut self) -> Result<(), RuntimeError> {
        self.stdin = None;
        close_stdin(&self.runtime, &self.container_id, &self.exec_id).await
    }

    /// A handle to resize the terminal and close stdin from another task.
    pub fn control(&self) -> ExecControl {
        ExecControl {
            runtime: Arc::clone(&self.runtime),
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
        }
    }

    /// Waits for the process to end: its exit code (128 + signal when a signal
    /// ended it).
    ///
    /// # Errors
    /// [`RuntimeError::Containerd`] when the wait fails.
    pub async fn wait(&self) -> Result<i32, RuntimeError> {
        let containerd = self.runtime.containerd();
        // A session lasts as long as its user keeps it: no deadline of the usual
        // request length.
        let req = containerd.request_with_timeout(
            WaitRequest {
                container_id: self.container_id.clone(),
                exec_id: self.exec_id.clone(),
            },
            SESSION_WAIT,
        );
        let status = TasksClient::new(containerd.channel())
            .wait(req)
            .await
            .map_err(grpc("wait exec", &self.container_id))?
            .into_inner()
            .exit_status;
        Ok(i32::try_from(status).unwrap_or(i32::MAX))
    }

    /// Kills the process if it still runs, deletes it and removes the FIFOs.
    pub async fn finish(mut self) {
        self.finished = true;
        self.stdin = None;
        self.stdout = None;
        self.stderr = None;
        cleanup(
            Arc::clone(&self.runtime),
            self.container_id.clone(),
            self.exec_id.clone(),
            self.dir.clone(),
        )
        .await;
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (runtime, id, exec_id, dir) = (
            Arc::clone(&self.runtime),
            self.container_id.clone(),
            self.exec_id.clone(),
            self.dir.clone(),
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(cleanup(runtime, id, exec_id, dir));
        } else {
            warn!(container = %id, exec_id, "exec session dropped outside the runtime");
        }
    }
}

/// Resizes the terminal and closes stdin of a running [`ExecSession`].
#[derive(Clone)]
pub struct ExecControl {
    runtime: Arc<ContainerdRuntime>,
    container_id: String,
    exec_id: String,
}

impl std::fmt::Debug for ExecControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecControl")
            .field("exec_id", &self.exec_id)
            .finish_non_exhaustive()
    }
}

impl ExecControl {
    /// Resizes the terminal.
    ///
    /// # Errors
    /// [`RuntimeError::Containerd`] when containerd refuses.
    pub async fn resize(&self, width: u16, height: u16) -> Result<(), RuntimeError> {
        let containerd = self.runtime.containerd();
        let req = containerd.request(ResizePtyRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            width: u32::from(width),
            height: u32::from(height),
        });
        TasksClient::new(containerd.channel())
            .resize_pty(req)
            .await
            .map_err(grpc("resize exec pty", &self.container_id))?;
        Ok(())
    }

    /// Tells the shim stdin has ended (the caller drops its write end).
    ///
    /// # Errors
    /// [`RuntimeError::Containerd`] when containerd refuses.
    pub async fn close_stdin(&self) -> Result<(), RuntimeError> {
        close_stdin(&self.runtime, &self.container_id, &self.exec_id).await
    }
}

async fn close_stdin(
    runtime: &ContainerdRuntime,
    container_id: &str,
    exec_id: &str,
) -> Result<(), RuntimeError> {
    let containerd = runtime.containerd();
    let req = containerd.request(CloseIoRequest {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
        stdin: true,
    });
    match TasksClient::new(containerd.channel()).close_io(req).await {
        Ok(_) => Ok(()),
        Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
        Err(s) => Err(grpc("close exec stdin", container_id)(s)),
    }
}

async fn cleanup(
    runtime: Arc<ContainerdRuntime>,
    container_id: String,
    exec_id: String,
    dir: PathBuf,
) {
    let containerd = runtime.containerd();
    let mut tasks = TasksClient::new(containerd.channel());
    let req = containerd.request(KillRequest {
        container_id: container_id.clone(),
        exec_id: exec_id.clone(),
        signal: SIGKILL,
        all: false,
    });
    let killed = match tasks.kill(req).await {
        Ok(_) => true,
        Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => false,
        Err(s) => {
            warn!(container = %container_id, exec_id, error = %s, "exec process not killed");
            false
        }
    };
    if killed {
        let req = containerd.request(WaitRequest {
            container_id: container_id.clone(),
            exec_id: exec_id.clone(),
        });
        if tokio::time::timeout(KILL_WAIT, tasks.wait(req))
            .await
            .is_err()
        {
            warn!(container = %container_id, exec_id, "exec process still there after SIGKILL");
        }
    }
    if let Err(e) = runtime.delete_exec(&container_id, &exec_id).await {
        warn!(container = %container_id, exec_id, error = %e, "exec process not deleted");
    }
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), error = %e, "exec fifo directory not removed");
    }
}
