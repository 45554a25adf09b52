//! The image garbage collector: upstream's `pkg/kubelet/images/image_gc_manager.go`,
//! agent side. Every [`ImageGcConfig::period`] it detects the images in containerd,
//! remembers per image ID when it was first detected and last used (an image is used
//! while any container, running or dead, references it), measures the image
//! filesystem with `statvfs`, asks the pure planner
//! ([`plan_image_gc`](nodelet_cri::image::plan_image_gc)) what to delete, and deletes
//! it. The pause image ([`PAUSE_IMAGE`]) is pinned and never collected.
//!
//! The runtime calls go through the narrow [`ImageGcRuntime`] trait so the manager is
//! unit-tested against a recording fake.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nodelet_cri::image::{
    FsUsage, GcError, GcImage, GcPolicy, ImageError, ImageInfo, PAUSE_IMAGE, normalize_reference,
    plan_image_gc,
};
use nodelet_cri::runtime::{ContainerdRuntime, Runtime as _, RuntimeError};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::cli::parse_duration;

/// Upstream's `ImageGCPeriod`: how often images are detected and collected.
pub const IMAGE_GC_PERIOD: Duration = Duration::from_secs(5 * 60);

/// The longest one runtime call (list, remove) may take before the pass gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(2 * 60);

/// The image GC flags, upstream kubelet's names and defaults, to be flattened into
/// the agent's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageGcArgs {
    /// Disk usage percent of the image filesystem at or above which image GC runs;
    /// 100 disables image GC.
    #[arg(long, default_value_t = 85, allow_negative_numbers = true)]
    pub image_gc_high_threshold: i32,
    /// Disk usage percent image GC frees down to.
    #[arg(long, default_value_t = 80, allow_negative_numbers = true)]
    pub image_gc_low_threshold: i32,
    /// Minimum age of an unused image before it is garbage collected.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub minimum_image_ttl_duration: Duration,
    /// Maximum time an image may stay unused before it is garbage collected
    /// regardless of disk usage; 0 disables it.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub image_maximum_gc_age: Duration,
    /// containerd's root directory: the filesystem holding it is the image
    /// filesystem whose usage image GC measures.
    #[arg(long, default_value = "/var/lib/containerd")]
    pub containerd_root: PathBuf,
}

/// Bad image GC flags, worded as upstream's kubelet configuration validation.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageGcArgsError {
    /// A threshold outside 0..=100.
    #[error("invalid configuration: {field} ({flag}) {value} must be between 0 and 100, inclusive")]
    ThresholdRange {
        /// The configuration field, e.g. `imageGCHighThresholdPercent`.
        field: &'static str,
        /// The flag, e.g. `--image-gc-high-threshold`.
        flag: &'static str,
        /// The value given.
        value: i32,
    },
    /// The low threshold not below the high one.
    #[error(
        "invalid configuration: imageGCLowThresholdPercent (--image-gc-low-threshold) {low} must be less than imageGCHighThresholdPercent (--image-gc-high-threshold) {high}"
    )]
    LowNotBelowHigh {
        /// The low threshold.
        low: i32,
        /// The high threshold.
        high: i32,
    },
    /// A maximum age that is set but not above the minimum age.
    #[error(
        "invalid configuration: imageMaximumGCAge {max:?} must be greater than imageMinimumGCAge {min:?}"
    )]
    MaxAgeNotAboveMin {
        /// `--image-maximum-gc-age`.
        max: Duration,
        /// `--minimum-image-ttl-duration`.
        min: Duration,
    },
}

impl ImageGcArgs {
    /// Validates the flags as upstream does at start and builds the GC configuration
    /// (period [`IMAGE_GC_PERIOD`], image filesystem `--containerd-root`).
    ///
    /// # Errors
    /// The first [`ImageGcArgsError`] found.
    pub fn config(&self) -> Result<ImageGcConfig, ImageGcArgsError> {
        let percent = |value: i32, field, flag| {
            u32::try_from(value)
                .ok()
                .filter(|v| *v <= 100)
                .ok_or(ImageGcArgsError::ThresholdRange { field, flag, value })
        };
        let high = percent(
            self.image_gc_high_threshold,
            "imageGCHighThresholdPercent",
            "--image-gc-high-threshold",
        )?;
        let low = percent(
            self.image_gc_low_threshold,
            "imageGCLowThresholdPercent",
            "--image-gc-low-threshold",
        )?;
        if low >= high {
            return Err(ImageGcArgsError::LowNotBelowHigh {
                low: self.image_gc_low_threshold,
                high: self.image_gc_high_threshold,
            });
        }
        if !self.image_maximum_gc_age.is_zero()
            && self.image_maximum_gc_age <= self.minimum_image_ttl_duration
        {
            return Err(ImageGcArgsError::MaxAgeNotAboveMin {
                max: self.image_maximum_gc_age,
                min: self.minimum_image_ttl_duration,
            });
        }
        Ok(ImageGcConfig {
            policy: GcPolicy {
                high_threshold_percent: high,
                low_threshold_percent: low,
                min_age: self.minimum_image_ttl_duration,
                max_age: self.image_maximum_gc_age,
            },
            period: IMAGE_GC_PERIOD,
            image_fs: self.containerd_root.clone(),
        })
    }
}

/// What the image GC runs with.
#[derive(Debug, Clone)]
pub struct ImageGcConfig {
    /// Thresholds and ages.
    pub policy: GcPolicy,
    /// How often a pass runs (upstream: 5 minutes).
    pub period: Duration,
    /// A path on the image filesystem (the containerd root), measured with `statvfs`.
    pub image_fs: PathBuf,
}

/// Errors of one GC pass.
#[derive(Debug, Error)]
pub enum ImageGcError {
    /// Listing the images failed.
    #[error("list images: {0}")]
    ListImages(#[source] ImageError),
    /// Listing the containers failed.
    #[error("list containers: {0}")]
    ListContainers(#[source] RuntimeError),
    /// Removing one image failed.
    #[error("remove image {image}: {source}")]
    Remove {
        /// The image ID.
        image: String,
        /// What containerd said.
        #[source]
        source: ImageError,
    },
    /// `statvfs` of the image filesystem failed.
    #[error("statvfs {}: {source}", path.display())]
    FsUsage {
        /// The path measured.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The planner refused the policy or the filesystem.
    #[error("plan image gc: {0}")]
    Plan(#[from] GcError),
    /// A runtime call took longer than allowed.
    #[error("{op} timed out after {after:?}")]
    Timeout {
        /// The call.
        op: &'static str,
        /// The limit.
        after: Duration,
    },
}

/// The runtime calls the image GC needs.
pub trait ImageGcRuntime: Send + Sync + 'static {
    /// Every image (one entry per name; names may share an ID).
    fn list_images(&self) -> impl Future<Output = Result<Vec<ImageInfo>, ImageError>> + Send;

    /// The image IDs of every container, running or dead.
    fn container_image_ids(&self)
    -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;

    /// Removes an image (every name) by ID.
    fn remove_image(&self, id: &str) -> impl Future<Output = Result<(), ImageError>> + Send;

    /// Capacity and available bytes of the filesystem holding `path`.
    ///
    /// # Errors
    /// The `statvfs` errno.
    fn image_fs_usage(&self, path: &Path) -> Result<FsUsage, nix::Error>;
}

impl ImageGcRuntime for ContainerdRuntime {
    async fn list_images(&self) -> Result<Vec<ImageInfo>, ImageError> {
        self.containerd().list_images().await
    }

    async fn container_image_ids(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self
            .list_containers(None)
            .await?
            .into_iter()
            .map(|c| c.image_id)
            .collect())
    }

    async fn remove_image(&self, id: &str) -> Result<(), ImageError> {
        self.containerd().remove_image(id).await
    }

    fn image_fs_usage(&self, path: &Path) -> Result<FsUsage, nix::Error> {
        statvfs_usage(path)
    }
}

impl<T: ImageGcRuntime> ImageGcRuntime for std::sync::Arc<T> {
    fn list_images(&self) -> impl Future<Output = Result<Vec<ImageInfo>, ImageError>> + Send {
        (**self).list_images()
    }

    fn container_image_ids(
        &self,
    ) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send {
        (**self).container_image_ids()
    }

    fn remove_image(&self, id: &str) -> impl Future<Output = Result<(), ImageError>> + Send {
        (**self).remove_image(id)
    }

    fn image_fs_usage(&self, path: &Path) -> Result<FsUsage, nix::Error> {
        (**self).image_fs_usage(path)
    }
}

/// Capacity and available bytes (those an unprivileged user may use, as the
/// kubelet's cadvisor reports) of the filesystem holding `path`.
///
/// # Errors
/// The `statvfs` errno.
pub fn statvfs_usage(path: &Path) -> Result<FsUsage, nix::Error> {
    let st = nix::sys::statvfs::statvfs(path)?;
    let frsize = st.fragment_size();
    Ok(FsUsage {
        capacity: st.blocks().saturating_mul(frsize),
        available: st.blocks_available().saturating_mul(frsize),
    })
}

/// What the manager remembers of one image ID (upstream's `imageRecord`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageRecord {
    first_detected: SystemTime,
    last_used: SystemTime,
    size: u64,
    names: Vec<String>,
    in_use: bool,
    pinned: bool,
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Image IDs removed.
    pub removed: Vec<String>,
    /// Bytes those images added up to.
    pub freed: u64,
    /// Removals that failed (the pass goes on past them).
    pub errors: Vec<ImageGcError>,
}

/// Upstream's `realImageGCManager`: the image records and the GC loop.
#[derive(Debug)]
pub struct ImageGcManager<R> {
    runtime: R,
    config: ImageGcConfig,
    records: HashMap<String, ImageRecord>,
    pause: String,
    /// Requests from the eviction manager to free what it can now; each gets the
    /// bytes freed.
    reclaim: Option<mpsc::Receiver<oneshot::Sender<u64>>>,
}

/// Asks the image GC manager to delete every unused image now (upstream's
/// `DeleteUnusedImages`, the eviction manager's node-level reclaim under disk pressure).
pub type ReclaimRequests = mpsc::Sender<oneshot::Sender<u64>>;

impl<R: ImageGcRuntime> ImageGcManager<R> {
    /// A manager with no images detected yet.
    pub fn new(runtime: R, config: ImageGcConfig) -> Self {
        let pause = normalize_reference(PAUSE_IMAGE).unwrap_or_else(|_| PAUSE_IMAGE.to_owned());
        Self {
            runtime,
            config,
            records: HashMap::new(),
            pause,
            reclaim: None,
        }
    }

    /// Also serve node-level reclaim requests (see [`ReclaimRequests`]).
    #[must_use]
    pub fn with_reclaim(mut self) -> (Self, ReclaimRequests) {
        let (tx, rx) = mpsc::channel(4);
        self.reclaim = Some(rx);
        (self, tx)
    }

    /// Upstream's `DeleteUnusedImages`: removes every image no container uses that is
    /// past the minimum age, whatever the disk usage.
    ///
    /// # Errors
    /// As [`ImageGcManager::collect`].
    pub async fn delete_unused(&mut self, now: SystemTime) -> Result<GcReport, ImageGcError> {
        let policy = self.config.policy;
        // Thresholds that make the planner free all it can: start at 1 %, aim for 0 %.
        self.config.policy.high_threshold_percent = 1;
        self.config.policy.low_threshold_percent = 0;
        let report = self.collect_inner(now, now, false).await;
        self.config.policy = policy;
        report
    }

    /// Runs a pass now and then every period until `cancel` fires. Errors of a pass
    /// are logged; the next pass tries again.
    pub async fn run(mut self, cancel: CancellationToken) {
        let began_gc = SystemTime::now();
        let mut tick = tokio::time::interval(self.config.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            period = ?self.config.period,
            high = self.config.policy.high_threshold_percent,
            low = self.config.policy.low_threshold_percent,
            image_fs = %self.config.image_fs.display(),
            "image garbage collection started"
        );
        loop {
            let reclaim = async {
                match self.reclaim.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
                Some(reply) = reclaim => {
                    let freed = match self.delete_unused(SystemTime::now()).await {
                        Ok(report) => report.freed,
                        Err(error) => {
                            tracing::error!(%error, "node-level image reclaim failed");
                            0
                        }
                    };
                    let _ = reply.send(freed);
                    continue;
                }
            }
            let pass = self.collect(SystemTime::now(), began_gc);
            let report = tokio::select! {
                () = cancel.cancelled() => return,
                r = pass => r,
            };
            match report {
                Ok(report) => {
                    for error in &report.errors {
                        tracing::warn!(%error, "image garbage collection: removal failed");
                    }
                }
                Err(error) => tracing::error!(%error, "image garbage collection failed"),
            }
        }
    }

    /// Upstream's `detectImages`: records images new at `now`, marks those any
    /// container references as in use and last used `now`, forgets images gone.
    ///
    /// # Errors
    /// Listing images or containers failed (or timed out).
    pub async fn detect(&mut self, now: SystemTime) -> Result<(), ImageGcError> {
        let images = timed("list images", self.runtime.list_images())
            .await?
            .map_err(ImageGcError::ListImages)?;
        let in_use: BTreeSet<String> = timed("list containers", self.runtime.container_image_ids())
            .await?
            .map_err(ImageGcError::ListContainers)?
            .into_iter()
            .collect();
        let mut seen: HashMap<&str, Vec<&ImageInfo>> = HashMap::new();
        for image in &images {
            seen.entry(image.id.as_str()).or_default().push(image);
        }
        self.records.retain(|id, _| seen.contains_key(id.as_str()));
        for (id, infos) in seen {
            let record = self
                .records
                .entry(id.to_owned())
                .or_insert_with(|| ImageRecord {
                    first_detected: now,
                    last_used: SystemTime::UNIX_EPOCH,
                    size: 0,
                    names: Vec::new(),
                    in_use: false,
                    pinned: false,
                });
            record.size = infos.iter().map(|i| i.size).max().unwrap_or(0);
            record.names = infos.iter().map(|i| i.name.clone()).collect();
            record.names.sort();
            record.pinned = record.names.contains(&self.pause);
            record.in_use = in_use.contains(id);
            if record.in_use {
                record.last_used = now;
            }
        }
        Ok(())
    }

    /// One pass at `now`: detect, measure, plan, remove. `began_gc` is when GC
    /// started (the maximum age applies only once GC ran longer than it).
    ///
    /// # Errors
    /// Detection, `statvfs` or planning failed; failed removals are in the report.
    pub async fn collect(
        &mut self,
        now: SystemTime,
        began_gc: SystemTime,
    ) -> Result<GcReport, ImageGcError> {
        self.collect_inner(now, began_gc, true).await
    }

    async fn collect_inner(
        &mut self,
        now: SystemTime,
        began_gc: SystemTime,
        warn_short: bool,
    ) -> Result<GcReport, ImageGcError> {
        self.detect(now).await?;
        let fs = self
            .runtime
            .image_fs_usage(&self.config.image_fs)
            .map_err(|source| ImageGcError::FsUsage {
                path: self.config.image_fs.clone(),
                source,
            })?;
        let images: Vec<GcImage> = self
            .records
            .iter()
            .map(|(id, r)| GcImage {
                id: id.clone(),
                size: r.size,
                first_detected: r.first_detected,
                last_used: r.last_used,
                in_use: r.in_use,
                pinned: r.pinned,
            })
            .collect();
        let plan = plan_image_gc(&self.config.policy, &images, fs, now, began_gc)?;
        let mut report = GcReport::default();
        for id in plan.images() {
            let Some(record) = self.records.get(id) else {
                continue;
            };
            // The planner already excludes these; never trust a plan with them.
            if record.pinned || record.in_use {
                continue;
            }
            let (size, last_used) = (record.size, record.last_used);
            let result = match timed("remove image", self.runtime.remove_image(id)).await {
                Ok(r) => r.map_err(|source| ImageGcError::Remove {
                    image: id.to_owned(),
                    source,
                }),
                Err(timeout) => Err(timeout),
            };
            match result {
                Ok(()) => {
                    tracing::info!(
                        image = id,
                        names = ?record.names,
                        size,
                        last_used = %display_time(last_used),
                        "removing image to free bytes"
                    );
                    self.records.remove(id);
                    report.removed.push(id.to_owned());
                    report.freed = report.freed.saturating_add(size);
                }
                Err(error) => report.errors.push(error),
            }
        }
        if !report.removed.is_empty() {
            tracing::info!(
                images = report.removed.len(),
                freed = report.freed,
                "image garbage collection freed bytes"
            );
        }
        if warn_short && plan.falls_short() {
            tracing::warn!(
                bytes_to_free = plan.bytes_to_free,
                bytes_eligible = plan.bytes_planned,
                "Failed to garbage collect required amount of images. Attempted to free {} bytes, but only found {} bytes eligible to free.",
                plan.bytes_to_free,
                plan.bytes_planned
            );
        }
        Ok(report)
    }
}

async fn timed<T>(op: &'static str, fut: impl Future<Output = T>) -> Result<T, ImageGcError> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| ImageGcError::Timeout {
            op,
            after: CALL_TIMEOUT,
        })
}

fn display_time(t: SystemTime) -> String {
    if t == SystemTime::UNIX_EPOCH {
        return "never".to_owned();
    }
    jiff::Timestamp::try_from(t).map_or_else(|_| format!("{t:?}"), |ts| ts.to_string())
}

#[cfg(test)]
#[path = "gc_tests.rs"]
mod tests;
