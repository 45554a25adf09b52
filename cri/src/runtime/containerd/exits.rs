//! Exited tasks are recorded and deleted, so their shims can exit.
//!
//! A pod's containers share one runc shim (the `io.containerd.runc.v2.group`
//! annotation), which lives as long as any task in it. An exited container was kept
//! with its task until the container was removed, for its exit code and time; after a
//! sandbox was replaced, the old containers' tasks kept the old shim (about 12 MB)
//! alive beside the new one. Like containerd's CRI plugin, which deletes a task once
//! it has exited and keeps the exit in its own store, nodelet records the exit code
//! and time in the record's labels ([`keys::EXIT_CODE`], [`keys::FINISHED_AT`]) and
//! then deletes the task; the record reads back the same
//! ([`records::container_info`]).
//!
//! The cgroup's OOM kill count is read first (the cgroup goes with the task), so an
//! OOM-killed container reads `OOMKilled` ([`keys::REASON`]) from its first listing
//! after the exit, whatever the order of containerd's exit and OOM events.
//!
//! The labels come first: a crash between the two leaves a labelled record with its
//! task, which still reads the same and is settled by the next listing. A listing
//! that read a record before a concurrent settle labelled it, and its tasks after the
//! task was deleted, would see a record with neither: such records are read again.

use std::collections::HashMap;

use containerd_client::services::v1::Container;
use containerd_client::types::v1::Process;
use futures::StreamExt as _;
use tracing::{debug, warn};

use super::{ContainerdRuntime, limit};
use crate::runtime::{RuntimeError, keys};
use crate::runtime::{oom_kill, records};

impl ContainerdRuntime {
    /// Records the end of every exited task of `records` in its record's labels (and
    /// in `records`), with `OOMKilled` when its cgroup counted an OOM kill, and
    /// deletes the task. Failures are logged: the next listing tries again.
    ///
    /// [`limit::PER_SHIM`] at a time: one by one, the 1,000 tasks a deleted pod of
    /// 1,000 containers left took two minutes (`runc delete` each); the deletes wait
    /// their turn for the shim anyway (see [`limit`]).
    pub(super) async fn settle_exited(
        &self,
        records: &mut [Container],
        tasks: &HashMap<String, Process>,
    ) {
        let mut settles = Vec::new();
        for c in records.iter_mut() {
            if let Some(labels) = tasks.get(&c.id).and_then(records::exit_labels) {
                settles.push(self.settle_one(c, labels));
            }
        }
        futures::stream::iter(settles)
            .buffer_unordered(limit::PER_SHIM)
            .collect::<Vec<()>>()
            .await;
    }

    /// Records one exited task's end (`labels`) and deletes the task.
    async fn settle_one(&self, c: &mut Container, mut labels: Vec<(String, String)>) {
        let id = c.id.clone();
        if !c.labels.contains_key(keys::EXIT_CODE) {
            let oom = c
                .spec
                .as_ref()
                .and_then(|s| oom_kill::cgroups_path(&s.value))
                .and_then(|p| oom_kill::oom_killed(&p));
            if oom == Some(true) {
                labels.push((keys::REASON.to_owned(), oom_kill::OOM_KILLED.to_owned()));
            }
            if let Err(e) = self.set_labels(c.clone(), labels.clone()).await {
                warn!(id, error = %e, "cannot record an exited container's end");
                return;
            }
            c.labels.extend(labels);
        }
        match self.delete_task(&super::shim_group(c), &id).await {
            Ok(()) => debug!(id, "exited task recorded and deleted"),
            Err(e) => warn!(id, error = %e, "cannot delete an exited container's task"),
        }
    }

    /// Reads again each record of `records` that has no task and no recorded end: a
    /// concurrent [`settle_exited`](Self::settle_exited) may have labelled it and
    /// deleted its task between the two listings.
    pub(super) async fn reread_taskless(
        &self,
        records: &mut [Container],
        tasks: &HashMap<String, Process>,
    ) -> Result<(), RuntimeError> {
        for c in records.iter_mut() {
            if tasks.contains_key(&c.id) || records::has_recorded_end(c) {
                continue;
            }
            if let Some(fresh) = self.get_container(&c.id).await? {
                *c = fresh;
            }
        }
        Ok(())
    }
}
