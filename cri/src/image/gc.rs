//! The image garbage-collection planner: which images to delete, decided exactly as
//! upstream's `pkg/kubelet/images/image_gc_manager.go` decides, as a pure function of
//! the images the agent tracks (size, first detected, last used, in use, pinned), the
//! image filesystem's capacity and free space, the policy and the clock. The agent
//! runs the plan with [`Containerd::remove_image`](crate::containerd::Containerd::remove_image).
//!
//! Upstream's order of work, reproduced here:
//! 1. Images in use and pinned images (the pause image) are never candidates. The
//!    rest are ordered least recently used first, ties broken by first detection.
//! 2. With `imageMaximumGCAge` set (and the GC running for longer than it), every
//!    candidate unused for longer than it goes.
//! 3. If the filesystem is at or above `imageGCHighThresholdPercent`, candidates go in
//!    order until enough is freed to reach `imageGCLowThresholdPercent`, skipping those
//!    used at or after `now` and those detected less than `imageMinimumGCAge` ago.
//!
//! Upstream re-reads the filesystem after step 2; a pure planner cannot, so it counts
//! the sizes freed by age as available space (what a synchronous delete gives back).

use std::time::{Duration, SystemTime};

use thiserror::Error;

/// The kubelet's image GC settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// `imageGCHighThresholdPercent`: disk usage that starts a collection (100
    /// disables image GC, as the kubelet does).
    pub high_threshold_percent: u32,
    /// `imageGCLowThresholdPercent`: disk usage a collection brings the disk down to.
    pub low_threshold_percent: u32,
    /// `imageMinimumGCAge`: an image detected more recently than this is kept.
    pub min_age: Duration,
    /// `imageMaximumGCAge`: an image unused for longer than this is deleted regardless
    /// of disk usage; zero turns it off.
    pub max_age: Duration,
}

impl Default for GcPolicy {
    fn default() -> Self {
        Self {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            min_age: Duration::from_secs(2 * 60),
            max_age: Duration::ZERO,
        }
    }
}

/// Errors of the planner, worded as upstream's.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GcError {
    /// A threshold above 100.
    #[error("invalid {name} {value}, must be in range [0-100]")]
    InvalidThreshold {
        /// `HighThresholdPercent` or `LowThresholdPercent`.
        name: &'static str,
        /// The value.
        value: u32,
    },
    /// Low above high.
    #[error("LowThresholdPercent {low} can not be higher than HighThresholdPercent {high}")]
    LowAboveHigh {
        /// The low threshold.
        low: u32,
        /// The high threshold.
        high: u32,
    },
    /// The image filesystem reports no capacity.
    #[error("invalid capacity 0 on image filesystem")]
    InvalidCapacity,
}

impl GcPolicy {
    /// Checks the thresholds as the kubelet does at start.
    ///
    /// # Errors
    /// [`GcError::InvalidThreshold`] above 100, [`GcError::LowAboveHigh`].
    pub fn validate(&self) -> Result<(), GcError> {
        if self.high_threshold_percent > 100 {
            return Err(GcError::InvalidThreshold {
                name: "HighThresholdPercent",
                value: self.high_threshold_percent,
            });
        }
        if self.low_threshold_percent > 100 {
            return Err(GcError::InvalidThreshold {
                name: "LowThresholdPercent",
                value: self.low_threshold_percent,
            });
        }
        if self.low_threshold_percent > self.high_threshold_percent {
            return Err(GcError::LowAboveHigh {
                low: self.low_threshold_percent,
                high: self.high_threshold_percent,
            });
        }
        Ok(())
    }
}

/// What the agent knows of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcImage {
    /// The image ID (config digest), what [`Containerd::remove_image`](crate::containerd::Containerd::remove_image) takes.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// When the agent first saw it.
    pub first_detected: SystemTime,
    /// When a container last used it (the agent sets it to now while one does).
    pub last_used: SystemTime,
    /// Whether a container (running or not) uses it now.
    pub in_use: bool,
    /// Pinned images (the pause image) are never collected.
    pub pinned: bool,
}

/// The image filesystem's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsUsage {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Available bytes.
    pub available: u64,
}

/// Which images to delete, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// Unused for longer than `imageMaximumGCAge`.
    pub by_age: Vec<String>,
    /// Freed for disk space, least recently used first.
    pub by_space: Vec<String>,
    /// Bytes the space phase wanted to free (0 below the high threshold).
    pub bytes_to_free: u64,
    /// Bytes the space phase's images add up to.
    pub bytes_planned: u64,
}

impl GcPlan {
    /// Every image to delete: the old ones, then those for space.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.by_age.iter().chain(&self.by_space).map(String::as_str)
    }

    /// Whether the space phase falls short of its goal. Upstream then reports
    /// `Failed to garbage collect required amount of images. Attempted to free <to
    /// free> bytes, but only found <planned> bytes eligible to free.` (event
    /// `FreeDiskSpaceFailed`).
    pub fn falls_short(&self) -> bool {
        self.bytes_planned < self.bytes_to_free
    }
}

/// The candidates in eviction order: not in use, not pinned, least recently used
/// first, ties broken by first detection.
fn eviction_order(images: &[GcImage]) -> Vec<&GcImage> {
    let mut out: Vec<&GcImage> = images.iter().filter(|i| !i.in_use && !i.pinned).collect();
    out.sort_by(|a, b| {
        a.last_used
            .cmp(&b.last_used)
            .then(a.first_detected.cmp(&b.first_detected))
    });
    out
}

fn since(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

/// Plans one periodic image GC at `now`; `began_gc` is when the agent started GC (the
/// maximum age only applies once the GC has run longer than it).
///
/// # Errors
/// The policy's [`GcPolicy::validate`] errors, [`GcError::InvalidCapacity`] when the
/// filesystem reports a capacity of 0 (after any images planned by age).
pub fn plan_image_gc(
    policy: &GcPolicy,
    images: &[GcImage],
    fs: FsUsage,
    now: SystemTime,
    began_gc: SystemTime,
) -> Result<GcPlan, GcError> {
    policy.validate()?;
    let mut plan = GcPlan::default();
    if policy.high_threshold_percent == 100 {
        return Ok(plan);
    }
    let mut candidates = eviction_order(images);
    let mut freed_by_age: u64 = 0;
    if !policy.max_age.is_zero() && since(now, began_gc) > policy.max_age {
        candidates.retain(|image| {
            if since(now, image.last_used) > policy.max_age {
                plan.by_age.push(image.id.clone());
                freed_by_age = freed_by_age.saturating_add(image.size);
                false
            } else {
                true
            }
        });
    }

    if fs.capacity == 0 {
        return Err(GcError::InvalidCapacity);
    }
    let capacity = u128::from(fs.capacity);
    let available = u128::from(fs.available.saturating_add(freed_by_age)).min(capacity);
    let usage_percent = 100 - available * 100 / capacity;
    if usage_percent < u128::from(policy.high_threshold_percent) {
        return Ok(plan);
    }
    let goal = capacity * u128::from(100 - policy.low_threshold_percent) / 100;
    let to_free = u64::try_from(goal.saturating_sub(available)).unwrap_or(u64::MAX);
    plan.bytes_to_free = to_free;
    let (ids, freed) = free_space(policy, &candidates, to_free, now);
    plan.by_space = ids;
    plan.bytes_planned = freed;
    Ok(plan)
}

/// Upstream's `freeSpace`: candidates in order until `to_free` bytes are planned.
fn free_space(
    policy: &GcPolicy,
    candidates: &[&GcImage],
    to_free: u64,
    now: SystemTime,
) -> (Vec<String>, u64) {
    let mut ids = Vec::new();
    let mut freed: u64 = 0;
    for image in candidates {
        // Used at or after the GC's start: in use meanwhile.
        if image.last_used >= now {
            continue;
        }
        // Just pulled, likely about to be used.
        if since(now, image.first_detected) < policy.min_age {
            continue;
        }
        ids.push(image.id.clone());
        freed = freed.saturating_add(image.size);
        if freed >= to_free {
            break;
        }
    }
    (ids, freed)
}

/// Upstream's `DeleteUnusedImages` (what the eviction manager asks for under disk
/// pressure): every unused, unpinned image old enough, whatever the disk usage.
pub fn plan_delete_unused(policy: &GcPolicy, images: &[GcImage], now: SystemTime) -> Vec<String> {
    free_space(policy, &eviction_order(images), u64::MAX, now).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const MINUTE: Duration = Duration::from_secs(60);

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    /// Upstream's `makeImage(id, size)`: detected and last used at the zero time.
    fn image(id: u32, size: u64) -> GcImage {
        GcImage {
            id: format!("image-{id}"),
            size,
            first_detected: t(0),
            last_used: t(0),
            in_use: false,
            pinned: false,
        }
    }

    fn no_min_age() -> GcPolicy {
        GcPolicy {
            high_threshold_percent: 90,
            low_threshold_percent: 80,
            min_age: Duration::ZERO,
            max_age: Duration::ZERO,
        }
    }

    /// Upstream's `getImagesAndFreeSpace`: frees `to_free` bytes at `now`.
    fn free(
        policy: &GcPolicy,
        images: &[GcImage],
        to_free: u64,
        now: SystemTime,
    ) -> (Vec<String>, u64) {
        free_space(policy, &eviction_order(images), to_free, now)
    }

    #[test]
    fn free_space_cases_from_upstream() {
        let now = t(3600);
        let pinned = |mut i: GcImage| {
            i.pinned = true;
            i
        };
        let in_use = |mut i: GcImage| {
            i.in_use = true;
            i.last_used = now;
            i
        };
        // (upstream test, images, bytes to free, bytes freed, images left)
        let cases: Vec<(&str, Vec<GcImage>, u64, u64, usize)> = vec![
            (
                "TestDoNotDeletePinnedImage",
                vec![pinned(image(1, 1024)), image(2, 1024)],
                4096,
                1024,
                1,
            ),
            (
                "TestDeleteUnPinnedImage",
                vec![image(1, 1024), image(2, 1024)],
                2048,
                2048,
                0,
            ),
            (
                "TestAllPinnedImages",
                vec![pinned(image(1, 1024)), pinned(image(2, 1024))],
                2048,
                0,
                2,
            ),
            (
                "TestFreeSpaceImagesInUseContainersAreIgnored",
                vec![image(0, 1024), in_use(image(1, 2048))],
                2048,
                1024,
                1,
            ),
        ];
        for (name, images, to_free, want_freed, want_left) in cases {
            let (ids, freed) = free(&no_min_age(), &images, to_free, now);
            assert_eq!(freed, want_freed, "{name}");
            assert_eq!(images.len() - ids.len(), want_left, "{name}");
        }
    }

    #[test]
    fn delete_unused_removes_all_unused_but_the_pinned_sandbox_image() {
        // TestDeleteUnusedImagesRemoveAllUnusedImages, TestDeleteUnusedImagesExemptSandboxImage.
        let now = t(3600);
        let mut used = image(2, 2048);
        used.in_use = true;
        let images = vec![image(0, 1024), image(1, 2048), used];
        assert_eq!(
            plan_delete_unused(&GcPolicy::default(), &images, now),
            ["image-0", "image-1"]
        );
        let mut sandbox = image(9, 1024);
        sandbox.pinned = true;
        assert!(plan_delete_unused(&GcPolicy::default(), &[sandbox], now).is_empty());
        // TestDeleteUnusedImagesLimitByImageLiveTime: not old enough, nothing goes.
        let policy = GcPolicy {
            min_age: Duration::from_secs(3),
            ..GcPolicy::default()
        };
        assert!(plan_delete_unused(&policy, &images, t(1)).is_empty());
        assert_eq!(plan_delete_unused(&policy, &images, t(4)).len(), 2);
    }

    #[test]
    fn least_recently_used_first_ties_by_detection() {
        // TestFreeSpaceRemoveByLeastRecentlyUsed: image 0 used later than image 1.
        let mut a = image(0, 1024);
        a.last_used = t(20);
        let mut b = image(1, 2048);
        b.last_used = t(10);
        let (ids, freed) = free(&no_min_age(), &[a.clone(), b.clone()], 1024, t(100));
        assert_eq!((ids, freed), (vec!["image-1".to_owned()], 2048));
        // TestFreeSpaceTiesBrokenByDetectedTime: same last use, detected later goes last.
        let mut c = image(0, 1024);
        c.first_detected = t(5);
        let d = image(1, 2048);
        let (ids, _) = free(&no_min_age(), &[c, d], 1024, t(100));
        assert_eq!(ids, ["image-1"]);
        // Used at or after the GC time: skipped.
        let mut e = image(3, 10);
        e.last_used = t(100);
        assert!(free(&no_min_age(), &[e], 10, t(100)).0.is_empty());
    }

    #[test]
    fn garbage_collect_cases_from_upstream() {
        let policy = no_min_age();
        let now = t(3600);
        // TestGarbageCollectBelowLowThreshold: 50% used, nothing to do.
        let plan = plan_image_gc(
            &policy,
            &[image(0, 450)],
            FsUsage {
                capacity: 1000,
                available: 500,
            },
            now,
            t(0),
        )
        .expect("plan");
        assert_eq!(plan, GcPlan::default());
        // TestGarbageCollectBelowSuccess: 95% used, 150 bytes to free, a 450-byte image.
        let plan = plan_image_gc(
            &policy,
            &[image(0, 450)],
            FsUsage {
                capacity: 1_000,
                available: 50,
            },
            now,
            t(0),
        )
        .expect("plan");
        assert_eq!(plan.by_space, ["image-0"]);
        assert_eq!((plan.bytes_to_free, plan.bytes_planned), (150, 450));
        assert!(!plan.falls_short());
        // TestGarbageCollectNotEnoughFreed: only 50 bytes eligible.
        let plan = plan_image_gc(
            &policy,
            &[image(0, 50)],
            FsUsage {
                capacity: 1_000,
                available: 50,
            },
            now,
            t(0),
        )
        .expect("plan");
        assert!(plan.falls_short());
        // Exactly at the high threshold counts (>=).
        let plan = plan_image_gc(
            &policy,
            &[image(0, 100)],
            FsUsage {
                capacity: 1_000,
                available: 100,
            },
            now,
            t(0),
        )
        .expect("plan");
        assert_eq!((plan.bytes_to_free, plan.by_space.len()), (100, 1));
        // A capacity of 0 is an error.
        assert_eq!(
            plan_image_gc(
                &policy,
                &[],
                FsUsage {
                    capacity: 0,
                    available: 0
                },
                now,
                t(0)
            ),
            Err(GcError::InvalidCapacity)
        );
        // Available above capacity is clamped.
        let plan = plan_image_gc(
            &policy,
            &[image(0, 1)],
            FsUsage {
                capacity: 10,
                available: 20,
            },
            now,
            t(0),
        )
        .expect("plan");
        assert!(plan.by_space.is_empty());
    }

    #[test]
    fn image_not_old_enough() {
        // TestGarbageCollectImageNotOldEnough: one in use, the other detected at `now`.
        let policy = GcPolicy {
            high_threshold_percent: 90,
            low_threshold_percent: 80,
            min_age: MINUTE,
            max_age: Duration::ZERO,
        };
        let now = t(0);
        let mut used = image(1, 2048);
        used.in_use = true;
        let images = vec![image(0, 1024), used];
        assert_eq!(free(&policy, &images, 1024, now), (vec![], 0));
        let later = now + MINUTE;
        assert_eq!(
            free(&policy, &images, 1024, later),
            (vec!["image-0".to_owned()], 1024)
        );
    }

    #[test]
    fn maximum_age() {
        // TestGarbageCollectImageTooOld: max age 1 minute, one image in use.
        let policy = GcPolicy {
            high_threshold_percent: 90,
            low_threshold_percent: 80,
            min_age: Duration::ZERO,
            max_age: MINUTE,
        };
        let fs = FsUsage {
            capacity: 1_000_000,
            available: 999_000,
        };
        let mut used = image(1, 2048);
        used.in_use = true;
        let images = vec![image(0, 1024), used];
        let began = t(0);
        // Not yet past the max age since the GC began: nothing.
        let plan = plan_image_gc(&policy, &images, fs, began + MINUTE, began).expect("plan");
        assert!(plan.by_age.is_empty());
        let plan = plan_image_gc(&policy, &images, fs, began + 2 * MINUTE, began).expect("plan");
        assert_eq!(plan.by_age, ["image-0"]);
        assert!(plan.by_space.is_empty());
        // TestGarbageCollectImageMaxAgeDisabled.
        let off = GcPolicy {
            max_age: Duration::ZERO,
            ..policy
        };
        let plan = plan_image_gc(&off, &images, fs, began + 60 * MINUTE, began).expect("plan");
        assert!(plan.by_age.is_empty());
        // Space freed by age counts toward the space goal.
        let tight = FsUsage {
            capacity: 10_000,
            available: 500,
        };
        let mut fresh = image(2, 5_000);
        fresh.last_used = began + 119 * MINUTE;
        let plan = plan_image_gc(
            &policy,
            &[image(0, 9_000), fresh],
            tight,
            began + 120 * MINUTE,
            began,
        )
        .expect("plan");
        assert_eq!(plan.by_age, ["image-0"]);
        assert!(plan.by_space.is_empty(), "{plan:?}");
    }

    #[test]
    fn policy_validation_and_disabled() {
        // TestValidateImageGCPolicy.
        assert_eq!(GcPolicy::default().validate(), Ok(()));
        let bad = |high, low| GcPolicy {
            high_threshold_percent: high,
            low_threshold_percent: low,
            ..GcPolicy::default()
        };
        assert_eq!(
            bad(101, 80).validate().map_err(|e| e.to_string()),
            Err("invalid HighThresholdPercent 101, must be in range [0-100]".to_owned())
        );
        assert_eq!(
            bad(100, 101).validate().map_err(|e| e.to_string()),
            Err("invalid LowThresholdPercent 101, must be in range [0-100]".to_owned())
        );
        assert_eq!(
            bad(80, 85).validate().map_err(|e| e.to_string()),
            Err("LowThresholdPercent 85 can not be higher than HighThresholdPercent 80".to_owned())
        );
        // High threshold 100 disables image GC altogether.
        let plan = plan_image_gc(
            &bad(100, 80),
            &[image(0, 10)],
            FsUsage {
                capacity: 10,
                available: 0,
            },
            t(1000),
            t(0),
        )
        .expect("plan");
        assert_eq!(plan, GcPlan::default());
    }
}
