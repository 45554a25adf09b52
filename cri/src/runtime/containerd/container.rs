//! App containers: created from an image into a sandbox, started with the CRI log
//! driver on their stdio, stopped with the image's stop signal and a grace period,
//! and removed with their logs.

use std::path::PathBuf;
use std::time::Duration;

use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::types::v1::Status as TaskStatus;
use tracing::{debug, info, warn};

use super::record::{STOP_SIGNAL_LABEL, parse_signal};
use super::{ContainerdRuntime, KILL_WAIT, SIGKILL, SIGTERM, grpc, io_err, new_id, shim_group};
use crate::image::ImageInfo;
use crate::logs;
use crate::runtime::records::{label, pod_labels, start_failure_labels};
use crate::runtime::{ContainerConfig, RuntimeError, SandboxInfo, keys, oom, spec, user};

impl ContainerdRuntime {
    /// [`Runtime::create_container`](crate::runtime::Runtime::create_container).
    pub(super) async fn container_create(
        &self,
        sandbox: &SandboxInfo,
        config: &ContainerConfig,
        image: &ImageInfo,
    ) -> Result<String, RuntimeError> {
        // A pod's containers share its sandbox's shim: the same handler.
        let handler = self.runtime_handler(&sandbox.runtime_handler)?;
        let id = new_id(32)?;
        let mut config = config.clone();
        config.resources.oom_score_adj = config
            .resources
            .oom_score_adj
            .map(|adj| oom::restrict(adj, self.lowest_oom_score_adj));
        let config = &config;
        let log_path = sandbox.log_directory.join(&config.log_path);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        // The snapshot first: user names in the image are resolved from its files.
        let mounts = self.containerd.prepare_snapshot(image, &id).await?;
        crate::failpoint::hit("container-after-snapshot");
        let spec = match build_spec(sandbox, config, image, &id, &mounts).await {
            Ok(spec) => spec,
            Err(e) => {
                let _ = self.containerd.remove_snapshot(&id).await;
                return Err(e);
            }
        };
        let mut labels = pod_labels(&sandbox.pod, keys::KIND_CONTAINER);
        labels.extend([
            (keys::CONTAINER_NAME.to_owned(), config.name.clone()),
            (keys::ATTEMPT.to_owned(), config.attempt.to_string()),
            (keys::SANDBOX_ID.to_owned(), sandbox.id.clone()),
            (keys::IMAGE_ID.to_owned(), image.id.clone()),
            (
                STOP_SIGNAL_LABEL.to_owned(),
                image.config.stop_signal.clone().unwrap_or_default(),
            ),
            (
                keys::LOG_PATH.to_owned(),
                log_path.to_string_lossy().into_owned(),
            ),
        ]);
        if let Err(e) = self
            .create_record(&id, &config.image, &spec, labels, handler)
            .await
        {
            let _ = self.containerd.remove_snapshot(&id).await;
            return Err(e);
        }
        debug!(container = %config.name, id = %id, "container created");
        Ok(id)
    }

    /// [`Runtime::start_container`](crate::runtime::Runtime::start_container).
    pub(super) async fn container_start(&self, id: &str) -> Result<(), RuntimeError> {
        let c = self.get_container(id).await?.ok_or_else(|| {
            grpc("start container", id)(tonic::Status::not_found("no such container"))
        })?;
        let log_path = PathBuf::from(label(&c.labels, keys::LOG_PATH));
        // An agent killed half-way through a start left a task: one never started is
        // made again (its process never ran, and creating it again would only say
        // `already exists`); one that runs or ran is recorded as started.
        match self.task_status(id).await? {
            None => {}
            Some(TaskStatus::Created) => {
                info!(id, "recreating a task an interrupted start left created");
                self.delete_task(&shim_group(&c), id).await?;
            }
            Some(_) => {
                info!(
                    id,
                    "recording the start of a task an interrupted start left running"
                );
                return self.record_started(c, &log_path).await;
            }
        }
        let mut snapshots = SnapshotsClient::new(self.containerd.channel());
        let req = self.containerd.request(MountsRequest {
            snapshotter: c.snapshotter.clone(),
            key: c.snapshot_key.clone(),
        });
        let rootfs = snapshots
            .mounts(req)
            .await
            .map_err(grpc("snapshot mounts", id))?
            .into_inner()
            .mounts;
        let stdio = logs::driver_uri(&self.config.log_driver, &log_path, self.config.log_rotation);
        if let Err(e) = self
            .create_and_start_task(&shim_group(&c), id, rootfs, &stdio, Some(&log_path))
            .await
        {
            let e = match e {
                RuntimeError::Containerd { op, id, status }
                    if op == "create task" || op == "start task" =>
                {
                    RuntimeError::Start {
                        id,
                        step: if op == "create task" {
                            "create"
                        } else {
                            "start"
                        },
                        message: status.message().to_owned(),
                    }
                }
                e => e,
            };
            // The instance stays, dead with the reason (as the CRI plugin keeps it):
            // its next attempt is a new instance, and `remove_container` takes it.
            let message = e.to_string();
            if let Err(le) = self
                .set_labels(c, start_failure_labels(&message, jiff::Timestamp::now()))
                .await
            {
                warn!(id, error = %le, "cannot record the start failure");
            }
            return Err(e);
        }
        self.record_started(c, &log_path).await
    }

    /// [`Runtime::stop_container`](crate::runtime::Runtime::stop_container).
    pub(super) async fn container_stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        // The image's StopSignal, else SIGTERM, as the CRI plugin does.
        let record = self.get_container(id).await?;
        let group = record.as_ref().map_or_else(|| id.to_owned(), shim_group);
        let signal = record
            .and_then(|c| {
                c.labels
                    .get(STOP_SIGNAL_LABEL)
                    .and_then(|s| parse_signal(s))
            })
            .unwrap_or(SIGTERM);
        if grace.is_zero() {
            // No grace: straight to SIGKILL.
            if self.kill(&group, id, SIGKILL).await? && !self.wait(id, KILL_WAIT).await? {
                return Err(grpc("stop container", id)(
                    tonic::Status::deadline_exceeded("process did not exit after SIGKILL"),
                ));
            }
            return Ok(());
        }
        if !self.kill(&group, id, signal).await? {
            return Ok(());
        }
        if self.wait(id, grace).await? {
            return Ok(());
        }
        debug!(id, "grace period over, killing");
        self.kill(&group, id, SIGKILL).await?;
        if self.wait(id, KILL_WAIT).await? {
            Ok(())
        } else {
            Err(grpc("stop container", id)(
                tonic::Status::deadline_exceeded("process did not exit after SIGKILL"),
            ))
        }
    }

    /// [`Runtime::remove_container`](crate::runtime::Runtime::remove_container).
    pub(super) async fn container_remove(&self, id: &str) -> Result<(), RuntimeError> {
        let record = self.get_container(id).await?;
        let link = record.as_ref().map(|c| self.log_symlink(c));
        let log = record
            .as_ref()
            .map(|c| PathBuf::from(label(&c.labels, keys::LOG_PATH)))
            .filter(|p| p.is_absolute());
        let group = record.as_ref().map_or_else(|| id.to_owned(), shim_group);
        if self.kill(&group, id, SIGKILL).await? {
            self.wait(id, KILL_WAIT).await?;
        }
        self.delete_task(&group, id).await?;
        if let Some(link) = link {
            logs::remove_log_symlink(&link).map_err(|e| RuntimeError::Io {
                path: e.path,
                source: e.source,
            })?;
        }
        // The instance's log and its rotated files go with it, as upstream's
        // removeContainerLog (the container log manager's Clean).
        if let Some(log) = log {
            logs::remove_container_logs(&log).map_err(|e| RuntimeError::Io {
                path: e.path,
                source: e.source,
            })?;
        }
        self.delete_container_record(id).await?;
        self.containerd.remove_snapshot(id).await?;
        Ok(())
    }
}

/// The container's OCI spec. An image user with names (`USER nginx`) is first
/// resolved to numbers from the rootfs that `mounts` make, as containerd's CRI does.
async fn build_spec(
    sandbox: &SandboxInfo,
    config: &ContainerConfig,
    image: &ImageInfo,
    id: &str,
    mounts: &[containerd_client::types::Mount],
) -> Result<oci_spec::runtime::Spec, RuntimeError> {
    let security = &config.security;
    if !user::needs_lookup(
        &image.config.user,
        security.run_as_user.is_some(),
        security.run_as_group.is_some(),
    ) {
        return spec::container_spec(sandbox, config, &image.config, id);
    }
    let (uid, gid) = user::resolve_in_rootfs(&image.config.user, mounts)
        .await
        .map_err(|source| RuntimeError::User {
            name: config.name.clone(),
            source,
        })?;
    debug!(container = %config.name, user = %image.config.user, uid, gid, "image user resolved");
    let mut resolved = image.config.clone();
    resolved.user = format!("{uid}:{gid}");
    spec::container_spec(sandbox, config, &resolved, id)
}
