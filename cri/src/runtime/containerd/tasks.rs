//! containerd tasks: creating and starting, signalling, waiting for, deleting and
//! reading them.
//!
//! Reading task states for listed records:
//! containerd 1.6 asks a task's shim for its state with a 2 s timeout
//! (`io.containerd.timeout.task.state`). When a shim is too busy to answer, as one
//! serving a hundred exec sessions is, containerd logs `get state for <id>: context
//! deadline exceeded` and answers the task with status Unknown (a `ListTasks` may also
//! leave it out). Read as "not running", a running sandbox looks dead and the pod worker
//! replaces it, killing the pod (issue 13's 100 concurrent execs). So:
//! - a record missing from the list is asked for by itself: NotFound means it really has
//!   no task, any other error fails the listing;
//! - a pod's sandbox listing fails while a sandbox's state is Unknown, so its worker
//!   retries instead of replacing a sandbox it could not see. A shim that really died is
//!   cleaned up by containerd ("cleaning up after shim disconnected"), which ends its
//!   task: Unknown does not last.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use containerd_client::services::v1::{
    Container, CreateTaskRequest, DeleteTaskRequest, GetRequest, KillRequest, ListTasksRequest,
    StartRequest, WaitRequest,
};
use containerd_client::types::v1::Process;
use containerd_client::types::v1::Status as TaskStatus;
use tonic::Code;

use tracing::warn;

use super::{ContainerdRuntime, grpc, io_err};
use crate::logs;
use crate::runtime::RuntimeError;

/// Up to this many records, tasks are read with a `Get` each rather than listed
/// ([`ContainerdRuntime::tasks_of`]): a pod's sandbox and containers.
const GET_EACH_UP_TO: usize = 8;

/// How many times a kill that timed out is made.
const KILL_ATTEMPTS: u32 = 4;
/// The pause before a kill is made again, times the attempts so far.
const KILL_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long one kill may take: `runc kill` answers in milliseconds, so one that takes
/// this long met a jammed shim and is better made again.
const KILL_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether a failed call may succeed if made again: it timed out (containerd reports
/// an expired deadline as `Unknown`) or containerd was unavailable.
fn transient(s: &tonic::Status) -> bool {
    match s.code() {
        Code::DeadlineExceeded | Code::Unavailable | Code::Cancelled => true,
        Code::Unknown => s.message().contains("deadline") || s.message().contains("timeout"),
        _ => false,
    }
}

impl ContainerdRuntime {
    /// Sends `signal` to a task of shim `group` (its sandbox's ID); `Ok(false)` when
    /// there is no live process to signal. The call waits for a turn (see
    /// [`limit`](super::limit)); one that timed out or found containerd unavailable is
    /// made again, up to [`KILL_ATTEMPTS`] times, rather than leaving the process
    /// running.
    pub(super) async fn kill(
        &self,
        group: &str,
        id: &str,
        signal: u32,
    ) -> Result<bool, RuntimeError> {
        let mut attempt = 1;
        loop {
            let result = {
                let _turn = self.shim_calls.acquire(group).await;
                let req = self.containerd.request_with_timeout(
                    KillRequest {
                        container_id: id.to_owned(),
                        exec_id: String::new(),
                        signal,
                        all: false,
                    },
                    KILL_TIMEOUT,
                );
                self.tasks().kill(req).await
            };
            match result {
                Ok(_) => return Ok(true),
                Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {
                    return Ok(false);
                }
                Err(s) if attempt < KILL_ATTEMPTS && transient(&s) => {
                    warn!(id, signal, attempt, error = %s.message(), "kill task failed, retrying");
                    tokio::time::sleep(KILL_RETRY_PAUSE * attempt).await;
                    attempt += 1;
                }
                Err(s) => return Err(grpc("kill task", id)(s)),
            }
        }
    }

    /// Waits for a task's exit; `Ok(false)` if `timeout` passed first.
    pub(super) async fn wait(&self, id: &str, timeout: Duration) -> Result<bool, RuntimeError> {
        // The local timeout decides; the request's own deadline only backs it up
        // (containerd reports an expired deadline as `Unknown`, not DeadlineExceeded).
        let req = self.containerd.request_with_timeout(
            WaitRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            },
            timeout + Duration::from_secs(30),
        );
        match tokio::time::timeout(timeout, self.tasks().wait(req)).await {
            Err(_) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(s)) if s.code() == Code::NotFound => Ok(true),
            Ok(Err(s)) => Err(grpc("wait task", id)(s)),
        }
    }

    /// Deletes a task of shim `group`, waiting for a turn (see [`limit`](super::limit)).
    pub(super) async fn delete_task(&self, group: &str, id: &str) -> Result<(), RuntimeError> {
        let _turn = self.shim_calls.acquire(group).await;
        let req = self.containerd.request(DeleteTaskRequest {
            container_id: id.to_owned(),
        });
        match self.tasks().delete(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(grpc("delete task", id)(s)),
        }
    }

    /// The status of a container's task, `None` when it has none.
    pub(super) async fn task_status(&self, id: &str) -> Result<Option<TaskStatus>, RuntimeError> {
        let req = self.containerd.request(GetRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        });
        match self.tasks().get(req).await {
            Ok(resp) => Ok(resp
                .into_inner()
                .process
                .map(|p| TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown))),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(grpc("get task", id)(s)),
        }
    }

    /// Creates and starts the task. `log_file`, when given, is created between the
    /// two: once `runc create` succeeded and before the process runs, which opens
    /// the log driver's gate (see [`logs`]), so runc's create errors stay out of it.
    pub(super) async fn create_and_start_task(
        &self,
        group: &str,
        id: &str,
        rootfs: Vec<containerd_client::types::Mount>,
        stdio: &str,
        log_file: Option<&Path>,
    ) -> Result<u32, RuntimeError> {
        let req = self.containerd.request(CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs,
            stdout: stdio.to_owned(),
            stderr: stdio.to_owned(),
            ..Default::default()
        });
        let pid = self
            .tasks()
            .create(req)
            .await
            .map_err(grpc("create task", id))?
            .into_inner()
            .pid;
        crate::failpoint::hit(if log_file.is_some() {
            "container-after-task-create"
        } else {
            "sandbox-after-task-create"
        });
        if let Some(path) = log_file
            && let Err(e) = logs::create_log_file(path)
        {
            let _ = self.delete_task(group, id).await;
            return Err(io_err(path)(e));
        }
        let req = self.containerd.request(StartRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        });
        if let Err(status) = self.tasks().start(req).await {
            // Leave no half-made task behind: the caller sees the start error.
            let _ = self.delete_task(group, id).await;
            return Err(grpc("start task", id)(status));
        }
        Ok(pid)
    }

    /// Every task of the namespace, by container ID, as `ListTasks` gives them.
    pub(super) async fn task_states(&self) -> Result<HashMap<String, Process>, RuntimeError> {
        let req = self.containerd.request(ListTasksRequest {
            filter: String::new(),
        });
        let tasks = self
            .tasks()
            .list(req)
            .await
            .map_err(grpc("list tasks", ""))?
            .into_inner()
            .tasks;
        Ok(tasks.into_iter().map(|t| (t.id.clone(), t)).collect())
    }

    /// The tasks of `records`, by container ID: for a few records (a pod's own
    /// listing) a `Get` each; otherwise the list, completed by a `Get` for each record
    /// the list left out (see the module doc).
    ///
    /// `ListTasks` has no filter and containerd asks every task's shim of the namespace
    /// for its state, so a pod's listing through it would cost a shim call per task on
    /// the node: O(N²) shim calls for a burst of N pods, each pod listing several times
    /// while it starts. A `Get` asks only that task's shim, with the same 2 s timeout and
    /// the same Unknown answer when the shim is busy.
    pub(super) async fn tasks_of(
        &self,
        records: &[Container],
    ) -> Result<HashMap<String, Process>, RuntimeError> {
        let mut tasks = if records.len() <= GET_EACH_UP_TO {
            HashMap::new()
        } else {
            self.task_states().await?
        };
        for c in records {
            if tasks.contains_key(&c.id) {
                continue;
            }
            let req = self.containerd.request(GetRequest {
                container_id: c.id.clone(),
                exec_id: String::new(),
            });
            match self.tasks().get(req).await {
                Ok(resp) => {
                    if let Some(p) = resp.into_inner().process {
                        tasks.insert(c.id.clone(), p);
                    }
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(grpc("get task", &c.id)(s)),
            }
        }
        Ok(tasks)
    }
}

/// Fails when a sandbox's task state is Unknown (its shim did not answer in time; see
/// the module doc), naming it.
pub(super) fn require_known_states(
    records: &[Container],
    tasks: &HashMap<String, Process>,
) -> Result<(), RuntimeError> {
    for c in records {
        if tasks
            .get(&c.id)
            .is_some_and(|t| t.status == TaskStatus::Unknown as i32)
        {
            return Err(grpc("read the state of task", &c.id)(
                tonic::Status::unavailable(
                    "containerd answered Unknown: its shim did not report the state within 2 s",
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_that_timed_out_is_made_again_and_a_refused_one_is_not() {
        for s in [
            tonic::Status::deadline_exceeded("deadline"),
            tonic::Status::unknown("kill task: context deadline exceeded"),
            tonic::Status::unavailable("connection reset"),
            tonic::Status::cancelled("Timeout expired"),
        ] {
            assert!(transient(&s), "{s:?} is retried");
        }
        for s in [
            tonic::Status::unknown("runc did not terminate successfully"),
            tonic::Status::invalid_argument("bad signal"),
            tonic::Status::permission_denied("no"),
        ] {
            assert!(!transient(&s), "{s:?} is not retried");
        }
    }
}
