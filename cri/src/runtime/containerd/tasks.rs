//! Reading task states for listed records.
//!
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

use containerd_client::services::v1::{Container, GetRequest, ListTasksRequest};
use containerd_client::types::v1::Process;
use containerd_client::types::v1::Status as TaskStatus;
use tonic::Code;

use super::{ContainerdRuntime, grpc};
use crate::runtime::RuntimeError;

impl ContainerdRuntime {
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

    /// The tasks of `records`, by container ID: the list, completed by a `Get` for each
    /// record the list left out (see the module doc).
    pub(super) async fn tasks_of(
        &self,
        records: &[Container],
    ) -> Result<HashMap<String, Process>, RuntimeError> {
        let mut tasks = self.task_states().await?;
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
