//! App containers: created from an image into a sandbox, started with the CRI log
//! driver on their stdio, stopped with the image's stop signal and a grace period,
//! and removed with their logs.

use std::path::PathBuf;
use std::time::Duration;

use containerd_client::services::v1::Container;
use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::types::Mount;
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
        let mut record = match self
            .create_record(&id, &config.image, &spec, labels, handler)
            .await
        {
            Ok(record) => record,
            Err(e) => {
                let _ = self.containerd.remove_snapshot(&id).await;
                return Err(e);
            }
        };
        // Its start needs the labels and the mounts, not the spec.
        record.spec = None;
        self.created.keep(record, mounts);
        debug!(container = %config.name, id = %id, "container created");
        Ok(id)
    }

    /// [`Runtime::start_container`](crate::runtime::Runtime::start_container).
    pub(super) async fn container_start(&self, id: &str) -> Result<(), RuntimeError> {
        let (c, rootfs) = match self.created.take(id) {
            // Created by this process and never started: no task can exist, and the
            // record and mounts are those containerd answered the create with.
            Some(created) => created,
            None => self.created_elsewhere(id).await?,
        };
        let log_path = PathBuf::from(label(&c.labels, keys::LOG_PATH));
        let Some(rootfs) = rootfs else {
            // An interrupted start left a task that runs or ran.
            return self.record_started(c, &log_path).await;
        };
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

    /// The record and the root filesystem mounts of a container this process did not
    /// create (or started before): read from containerd. An agent killed half-way
    /// through a start left a task: one never started is made again (its process never
    /// ran, and creating it again would only say `already exists`); one that runs or
    /// ran is recorded as started (no mounts returned).
    async fn created_elsewhere(
        &self,
        id: &str,
    ) -> Result<(Container, Option<Vec<Mount>>), RuntimeError> {
        let c = self.get_container(id).await?.ok_or_else(|| {
            grpc("start container", id)(tonic::Status::not_found("no such container"))
        })?;
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
                return Ok((c, None));
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
        Ok((c, Some(rootfs)))
    }

    /// [`Runtime::stop_container`](crate::runtime::Runtime::stop_container): the
    /// grace period runs from this call, so time spent waiting for a turn to signal a
    /// busy shim (see [`limit`](super::limit)) is taken off it (see [`stop_task`]).
    pub(super) async fn container_stop(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let began = tokio::time::Instant::now();
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
        let task = ShimTask {
            rt: self,
            group: &group,
            id,
        };
        stop_task(&task, id, signal, grace, began).await
    }

    /// [`Runtime::remove_container`](crate::runtime::Runtime::remove_container).
    pub(super) async fn container_remove(&self, id: &str) -> Result<(), RuntimeError> {
        // Never started: what its start would have used goes.
        drop(self.created.take(id));
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

/// The least a container gets between its stop signal and SIGKILL when waiting for
/// its turn used up its grace period (upstream's `minimumGracePeriodInSeconds`); a
/// shorter grace period it was given stays as it was.
const MIN_GRACE_AFTER_WAIT: Duration = Duration::from_secs(2);

/// What is left of `grace` once `spent` of it went (waiting for a turn to signal the
/// shim): at least [`MIN_GRACE_AFTER_WAIT`], never more than `grace`.
fn grace_left(grace: Duration, spent: Duration) -> Duration {
    grace
        .saturating_sub(spent)
        .max(MIN_GRACE_AFTER_WAIT.min(grace))
}

/// The two task calls stopping a container makes.
trait StopCalls {
    /// Sends `signal`; `Ok(false)` when no live process was there.
    async fn kill(&self, signal: u32) -> Result<bool, RuntimeError>;
    /// Waits for the exit; `Ok(false)` when `timeout` passed first.
    async fn wait(&self, timeout: Duration) -> Result<bool, RuntimeError>;
}

/// A container's task in its shim.
struct ShimTask<'a> {
    rt: &'a ContainerdRuntime,
    group: &'a str,
    id: &'a str,
}

impl StopCalls for ShimTask<'_> {
    async fn kill(&self, signal: u32) -> Result<bool, RuntimeError> {
        self.rt.kill(self.group, self.id, signal).await
    }

    async fn wait(&self, timeout: Duration) -> Result<bool, RuntimeError> {
        self.rt.wait(self.id, timeout).await
    }
}

/// Stops task `id`: `signal`, then what is left of `grace` measured from `began`
/// (upstream's kubelet gives a container its grace period from when the kill began:
/// a signal that waited for its turn behind a busy shim does not get a full one
/// after it, see [`grace_left`]), then SIGKILL. No grace: SIGKILL at once.
async fn stop_task(
    task: &impl StopCalls,
    id: &str,
    signal: u32,
    grace: Duration,
    began: tokio::time::Instant,
) -> Result<(), RuntimeError> {
    let not_dead = || {
        Err(grpc("stop container", id)(
            tonic::Status::deadline_exceeded("process did not exit after SIGKILL"),
        ))
    };
    if grace.is_zero() {
        if task.kill(SIGKILL).await? && !task.wait(KILL_WAIT).await? {
            return not_dead();
        }
        return Ok(());
    }
    if !task.kill(signal).await? {
        return Ok(());
    }
    let spent = began.elapsed();
    let left = grace_left(grace, spent);
    if left < grace {
        debug!(
            id,
            ?spent,
            ?left,
            "the stop signal waited for its turn: grace period shortened"
        );
    }
    if task.wait(left).await? {
        return Ok(());
    }
    debug!(id, "grace period over, killing");
    task.kill(SIGKILL).await?;
    if task.wait(KILL_WAIT).await? {
        Ok(())
    } else {
        not_dead()
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::super::limit::{PER_SHIM, ShimLimiter};
    use super::*;

    /// A task in a shim whose calls go through a real limiter: it ignores the stop
    /// signal (as `sleep` as PID 1 does) and dies of SIGKILL.
    struct Stubborn {
        limiter: Arc<ShimLimiter>,
        signals: Mutex<Vec<u32>>,
        waits: Mutex<Vec<Duration>>,
    }

    impl StopCalls for Stubborn {
        async fn kill(&self, signal: u32) -> Result<bool, RuntimeError> {
            let _turn = self.limiter.acquire("sandbox").await;
            self.signals.lock().expect("signals").push(signal);
            Ok(true)
        }

        async fn wait(&self, timeout: Duration) -> Result<bool, RuntimeError> {
            self.waits.lock().expect("waits").push(timeout);
            let killed = self.signals.lock().expect("signals").last() == Some(&SIGKILL);
            if killed {
                return Ok(true);
            }
            tokio::time::sleep(timeout).await;
            Ok(false)
        }
    }

    /// Stops a container with `grace` while its shim is saturated for `queued`;
    /// returns the grace it got after its signal and the whole stop's length.
    async fn stop_behind_a_busy_shim(grace: Duration, queued: Duration) -> (Duration, Duration) {
        let limiter = Arc::new(ShimLimiter::default());
        let mut busy = Vec::new();
        for _ in 0..PER_SHIM {
            busy.push(limiter.acquire("sandbox").await);
        }
        let task = Arc::new(Stubborn {
            limiter: Arc::clone(&limiter),
            signals: Mutex::new(Vec::new()),
            waits: Mutex::new(Vec::new()),
        });
        let stopping = {
            let task = Arc::clone(&task);
            tokio::spawn(async move {
                let began = Instant::now();
                stop_task(&*task, "c", SIGTERM, grace, began)
                    .await
                    .expect("stopped");
                began.elapsed()
            })
        };
        tokio::time::sleep(queued).await;
        assert!(
            task.signals.lock().expect("signals").is_empty(),
            "the signal waits for the shim"
        );
        drop(busy);
        let took = stopping.await.expect("stop task");
        assert_eq!(
            *task.signals.lock().expect("signals"),
            vec![SIGTERM, SIGKILL]
        );
        let waits = task.waits.lock().expect("waits").clone();
        assert_eq!(waits.len(), 2, "{waits:?}");
        assert_eq!(waits[1], KILL_WAIT);
        (waits[0], took)
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_for_a_kill_slot_is_taken_off_the_grace_period() {
        let (left, took) = stop_behind_a_busy_shim(secs(30), secs(10)).await;
        assert_eq!(left, secs(20), "30 s of grace, 10 s of it queued");
        assert_eq!(took, secs(30), "the stop takes its grace period, no more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_queued_past_its_grace_still_gets_the_minimum() {
        let (left, took) = stop_behind_a_busy_shim(secs(30), secs(29)).await;
        assert_eq!(left, MIN_GRACE_AFTER_WAIT);
        assert_eq!(took, secs(31));
        let (left, _) = stop_behind_a_busy_shim(secs(30), secs(300)).await;
        assert_eq!(left, MIN_GRACE_AFTER_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grace_shorter_than_the_minimum_is_not_lengthened() {
        let (left, took) = stop_behind_a_busy_shim(secs(1), secs(5)).await;
        assert_eq!(left, secs(1));
        assert_eq!(took, secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unqueued_container_gets_its_whole_grace_period() {
        let (left, took) = stop_behind_a_busy_shim(secs(30), Duration::ZERO).await;
        assert_eq!(left, secs(30));
        assert_eq!(took, secs(30));
    }

    #[test]
    fn grace_left_keeps_the_minimum_and_never_lengthens() {
        assert_eq!(grace_left(secs(30), Duration::ZERO), secs(30));
        assert_eq!(grace_left(secs(30), secs(12)), secs(18));
        assert_eq!(grace_left(secs(30), secs(40)), secs(2));
        assert_eq!(grace_left(secs(1), secs(40)), secs(1));
        assert_eq!(
            grace_left(Duration::from_millis(2500), Duration::from_secs(1)),
            Duration::from_millis(2000)
        );
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }
}
