//! Unit tests of the image GC manager against a recording fake runtime.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use nodelet_cri::image::{FsUsage, GcPolicy, ImageError, ImageInfo, PAUSE_IMAGE};
use nodelet_cri::runtime::RuntimeError;

use super::*;

const MINUTE: Duration = Duration::from_secs(60);
const PAUSE_ID: &str = "sha256:pause";

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
}

/// One call the manager made.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    ListImages,
    ListContainers,
    Remove(String),
    FsUsage,
}

#[derive(Debug, Default)]
struct State {
    images: Vec<ImageInfo>,
    /// Image IDs of the containers (running or dead).
    containers: Vec<String>,
    capacity: u64,
    /// Bytes used by other things than images.
    other_used: u64,
    /// Image IDs whose removal fails.
    fail_remove: Vec<String>,
    calls: Vec<Call>,
}

/// A runtime whose image filesystem holds `other_used` plus the images' sizes.
#[derive(Debug, Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn new(capacity: u64, other_used: u64, images: &[(&str, u64)]) -> Self {
        let fake = Self::default();
        {
            let mut s = fake.state();
            s.capacity = capacity;
            s.other_used = other_used;
            s.images = images
                .iter()
                .map(|(id, size)| info(id, id, *size))
                .collect();
        }
        fake
    }

    fn use_images(&self, ids: &[&str]) {
        self.state().containers = ids.iter().map(|s| (*s).to_owned()).collect();
    }

    fn removed(&self) -> Vec<String> {
        self.state()
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Remove(id) => Some(id.clone()),
                _ => None,
            })
            .collect()
    }

    fn image_ids(&self) -> Vec<String> {
        self.state().images.iter().map(|i| i.id.clone()).collect()
    }
}

fn info(name: &str, id: &str, size: u64) -> ImageInfo {
    ImageInfo {
        name: name.to_owned(),
        id: id.to_owned(),
        repo_digest: String::new(),
        chain_id: String::new(),
        size,
        config: nodelet_cri::image::ImageRuntimeConfig::default(),
    }
}

impl ImageGcRuntime for Fake {
    async fn list_images(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let mut s = self.state();
        s.calls.push(Call::ListImages);
        Ok(s.images.clone())
    }

    async fn container_image_ids(&self) -> Result<Vec<String>, RuntimeError> {
        let mut s = self.state();
        s.calls.push(Call::ListContainers);
        Ok(s.containers.clone())
    }

    async fn remove_image(&self, id: &str) -> Result<(), ImageError> {
        let mut s = self.state();
        s.calls.push(Call::Remove(id.to_owned()));
        if s.fail_remove.iter().any(|f| f == id) {
            return Err(ImageError::InvalidReference {
                reference: id.to_owned(),
                reason: "fake failure",
            });
        }
        s.images.retain(|i| i.id != id);
        Ok(())
    }

    fn image_fs_usage(&self, _path: &Path) -> Result<FsUsage, nix::Error> {
        let mut s = self.state();
        s.calls.push(Call::FsUsage);
        let used = s.other_used + s.images.iter().map(|i| i.size).sum::<u64>();
        Ok(FsUsage {
            capacity: s.capacity,
            available: s.capacity.saturating_sub(used),
        })
    }
}

fn config(min_age: Duration, max_age: Duration) -> ImageGcConfig {
    ImageGcConfig {
        policy: GcPolicy {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            min_age,
            max_age,
        },
        period: IMAGE_GC_PERIOD,
        image_fs: PathBuf::from("/nonexistent/containerd"),
    }
}

/// Five 100-byte images besides 450 other bytes on a 1000-byte disk (95% used), the
/// pause image among them; `a`, `b`, `d` last used at 0, 1 and 2 minutes, `c` in use.
async fn crowded(other_used: u64) -> (Fake, ImageGcManager<Fake>) {
    let fake = Fake::new(
        1000,
        other_used,
        &[("a", 100), ("b", 100), ("c", 100), ("d", 100)],
    );
    fake.state().images.push(info(PAUSE_IMAGE, PAUSE_ID, 100));
    let mut gc = ImageGcManager::new(fake.clone(), config(2 * MINUTE, Duration::ZERO));
    for (minute, id) in [(0, "a"), (1, "b"), (2, "d")] {
        fake.use_images(&[id, PAUSE_ID]);
        gc.detect(t(minute * 60)).await.expect("detect");
    }
    fake.use_images(&["c"]);
    (fake, gc)
}

#[tokio::test]
async fn over_high_threshold_removes_lru_unused_down_to_low() {
    let (fake, mut gc) = crowded(450).await;
    let report = gc.collect(t(600), t(0)).await.expect("collect");
    // 150 bytes to free to reach 80%: the two least recently used.
    assert_eq!(fake.removed(), ["a", "b"]);
    assert_eq!(report.removed, ["a", "b"]);
    assert_eq!(report.freed, 200);
    assert!(report.errors.is_empty());
    let usage = fake.image_fs_usage(Path::new("/")).expect("usage");
    assert!(usage.available * 100 / usage.capacity >= 20, "{usage:?}");
    assert_eq!(fake.image_ids(), ["c", "d", PAUSE_ID]);
    assert!(!gc.records.contains_key("a"));
}

#[tokio::test]
async fn in_use_and_pause_never_removed() {
    // Everything else gone and still over the threshold: c and pause stay, with a
    // short-fall warning; the maximum age doesn't touch them either.
    let (fake, _) = crowded(800).await;
    let mut gc = ImageGcManager::new(fake.clone(), config(Duration::ZERO, 5 * MINUTE));
    fake.use_images(&["c"]);
    let report = gc.collect(t(3600), t(0)).await.expect("collect");
    let mut removed = fake.removed();
    removed.sort();
    assert_eq!(removed, ["a", "b", "d"]);
    assert_eq!(report.removed.len(), 3);
    assert_eq!(fake.image_ids(), ["c", PAUSE_ID]);
    // A dead container keeps its image in use: the fake lists it whatever its state.
    let report = gc.collect(t(7200), t(0)).await.expect("collect");
    assert!(report.removed.is_empty());
    assert!(gc.records[PAUSE_ID].pinned);
    assert!(gc.records["c"].in_use);
}

#[tokio::test]
async fn pause_image_pinned_under_any_of_its_names() {
    let fake = Fake::new(1000, 990, &[]);
    {
        let mut s = fake.state();
        s.images
            .push(info("docker.io/library/other:1", PAUSE_ID, 5));
        s.images.push(info(PAUSE_IMAGE, PAUSE_ID, 5));
    }
    let mut gc = ImageGcManager::new(fake.clone(), config(Duration::ZERO, Duration::ZERO));
    gc.collect(t(600), t(0)).await.expect("collect");
    assert!(fake.removed().is_empty());
    assert_eq!(gc.records.len(), 1);
    assert_eq!(gc.records[PAUSE_ID].names.len(), 2);
}

#[tokio::test]
async fn images_younger_than_min_age_kept() {
    let fake = Fake::new(1000, 900, &[("a", 50), ("b", 50)]);
    let mut gc = ImageGcManager::new(fake.clone(), config(2 * MINUTE, Duration::ZERO));
    let report = gc.collect(t(0), t(0)).await.expect("collect");
    assert!(report.removed.is_empty());
    let report = gc.collect(t(60), t(0)).await.expect("collect");
    assert!(report.removed.is_empty(), "detected 1 minute ago");
    assert!(fake.removed().is_empty());
    let report = gc.collect(t(121), t(0)).await.expect("collect");
    assert_eq!(report.removed.len(), 2, "old enough now");
}

/// Node-level reclaim under disk pressure (upstream's `DeleteUnusedImages`): below the
/// threshold, every unused image past the minimum age goes; in-use and pause stay.
#[tokio::test]
async fn delete_unused_frees_every_unused_image_whatever_the_usage() {
    let (fake, mut gc) = crowded(0).await;
    let report = gc.delete_unused(t(3600)).await.expect("reclaim");
    let mut removed = fake.removed();
    removed.sort();
    assert_eq!(removed, ["a", "b", "d"]);
    assert_eq!(report.freed, 300);
    assert_eq!(fake.image_ids(), ["c", PAUSE_ID]);
    // The thresholds are the configured ones again afterwards.
    assert_eq!(gc.config.policy.high_threshold_percent, 85);
}

#[tokio::test]
async fn reclaim_requests_are_served_by_the_running_manager() {
    let (fake, gc) = crowded(0).await;
    let (gc, requests) = gc.with_reclaim();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(gc.run(cancel.clone()));
    let (tx, rx) = tokio::sync::oneshot::channel();
    requests.send(tx).await.expect("send");
    // The images were last used at 0–2 minutes of the fake's clock, long before now.
    assert_eq!(rx.await.expect("reply"), 300);
    assert_eq!(fake.image_ids(), ["c", PAUSE_ID]);
    cancel.cancel();
    task.await.expect("join");
}

#[tokio::test]
async fn below_threshold_nothing_removed() {
    let (fake, mut gc) = crowded(0).await;
    let report = gc.collect(t(3600), t(0)).await.expect("collect");
    assert!(report.removed.is_empty());
    assert!(fake.removed().is_empty());
    assert_eq!(fake.image_ids().len(), 5);
}

/// `--image-maximum-gc-age` below the threshold: nothing goes until GC has run
/// longer than the maximum age, then every unused image idle longer than it goes
/// (upstream's `freeOldImages`). The end-to-end test can't show this without
/// sleeping: passes run every 5 minutes (upstream's fixed `ImageGCPeriod`) and the
/// age counts from the agent's start.
#[tokio::test]
async fn max_age_removes_unused_images_idle_longer_even_below_the_threshold() {
    let (fake, mut gc) = crowded(0).await;
    gc.config.policy.max_age = 30 * MINUTE;
    let report = gc.collect(t(10 * 60), t(0)).await.expect("collect");
    assert!(report.removed.is_empty(), "GC younger than the maximum age");
    // 31.5 minutes in: `a` (idle since 0) and `b` (since 1 min) are over 30 minutes
    // idle; `d` (since 2 min) is not; `c` is in use; pause is pinned.
    let report = gc.collect(t(31 * 60 + 30), t(0)).await.expect("collect");
    assert_eq!(report.removed, ["a", "b"]);
    assert_eq!(fake.image_ids(), ["c", "d", PAUSE_ID]);
}

#[tokio::test]
async fn last_used_follows_containers() {
    let fake = Fake::new(1000, 0, &[("a", 10)]);
    let mut gc = ImageGcManager::new(fake.clone(), config(Duration::ZERO, Duration::ZERO));
    gc.detect(t(0)).await.expect("detect");
    let a = &gc.records["a"];
    assert_eq!((a.first_detected, a.in_use), (t(0), false));
    assert_eq!(a.last_used, UNIX_EPOCH, "never used");
    // A container starts using it.
    fake.use_images(&["a"]);
    gc.detect(t(60)).await.expect("detect");
    assert_eq!(
        (gc.records["a"].last_used, gc.records["a"].in_use),
        (t(60), true)
    );
    gc.detect(t(120)).await.expect("detect");
    assert_eq!(gc.records["a"].last_used, t(120));
    // The container is removed: last use stays, first detection never moves.
    fake.use_images(&[]);
    gc.detect(t(180)).await.expect("detect");
    let a = &gc.records["a"];
    assert_eq!(
        (a.first_detected, a.last_used, a.in_use),
        (t(0), t(120), false)
    );
    // An image gone from containerd is forgotten.
    fake.state().images.clear();
    gc.detect(t(240)).await.expect("detect");
    assert!(gc.records.is_empty());
}

#[tokio::test]
async fn failed_removal_reported_and_pass_goes_on() {
    let (fake, mut gc) = crowded(450).await;
    fake.state().fail_remove.push("a".to_owned());
    let report = gc.collect(t(600), t(0)).await.expect("collect");
    assert_eq!(fake.removed(), ["a", "b"]);
    assert_eq!(report.removed, ["b"]);
    assert!(matches!(&report.errors[..], [ImageGcError::Remove { image, .. }] if image == "a"));
    // Still recorded: the next pass tries it again.
    assert!(gc.records.contains_key("a"));
}

#[tokio::test(start_paused = true)]
async fn run_passes_every_period_until_cancelled() {
    let fake = Fake::new(1000, 0, &[("a", 10)]);
    let gc = ImageGcManager::new(fake.clone(), config(Duration::ZERO, Duration::ZERO));
    let cancel = CancellationToken::new();
    let task = tokio::spawn(gc.run(cancel.clone()));
    let passes = || {
        fake.state()
            .calls
            .iter()
            .filter(|c| **c == Call::ListImages)
            .count()
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(passes(), 1, "a pass at start");
    tokio::time::sleep(IMAGE_GC_PERIOD).await;
    assert_eq!(passes(), 2);
    cancel.cancel();
    task.await.expect("run ends");
}

#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    gc: ImageGcArgs,
}

fn parse(args: &[&str]) -> Result<ImageGcConfig, ImageGcArgsError> {
    let mut argv = vec!["nodelet"];
    argv.extend_from_slice(args);
    Flags::try_parse_from(argv)
        .expect("flags parse")
        .gc
        .config()
}

#[test]
fn flags_default_to_upstream() {
    let config = parse(&[]).expect("valid");
    assert_eq!(config.policy, GcPolicy::default());
    assert_eq!(config.period, Duration::from_secs(300));
    assert_eq!(config.image_fs, PathBuf::from("/var/lib/containerd"));
    let config = parse(&[
        "--image-gc-high-threshold=100",
        "--image-gc-low-threshold",
        "50",
        "--minimum-image-ttl-duration=1h",
        "--image-maximum-gc-age=2h",
        "--containerd-root=/srv/containerd",
    ])
    .expect("valid");
    assert_eq!(
        config.policy,
        GcPolicy {
            high_threshold_percent: 100,
            low_threshold_percent: 50,
            min_age: 60 * MINUTE,
            max_age: 120 * MINUTE,
        }
    );
    assert_eq!(config.image_fs, PathBuf::from("/srv/containerd"));
}

#[test]
fn flags_validated_with_upstream_messages() {
    let err = |args: &[&str]| parse(args).expect_err("invalid").to_string();
    assert_eq!(
        err(&["--image-gc-high-threshold=101"]),
        "invalid configuration: imageGCHighThresholdPercent (--image-gc-high-threshold) 101 must be between 0 and 100, inclusive"
    );
    assert_eq!(
        err(&["--image-gc-low-threshold=-1"]),
        "invalid configuration: imageGCLowThresholdPercent (--image-gc-low-threshold) -1 must be between 0 and 100, inclusive"
    );
    assert_eq!(
        err(&[
            "--image-gc-high-threshold=80",
            "--image-gc-low-threshold=80"
        ]),
        "invalid configuration: imageGCLowThresholdPercent (--image-gc-low-threshold) 80 must be less than imageGCHighThresholdPercent (--image-gc-high-threshold) 80"
    );
    assert!(matches!(
        parse(&["--image-maximum-gc-age=1m"]),
        Err(ImageGcArgsError::MaxAgeNotAboveMin { .. })
    ));
}

#[test]
fn statvfs_measures_a_real_filesystem() {
    let usage = statvfs_usage(Path::new("/")).expect("statvfs /");
    assert!(
        usage.capacity > 0 && usage.available <= usage.capacity,
        "{usage:?}"
    );
    assert!(statvfs_usage(Path::new("/nonexistent/nodelet-image-gc")).is_err());
}

#[tokio::test]
async fn shared_runtime_collects_too() {
    // The agent holds its runtime in an `Arc`; the manager takes that as it is.
    let fake = Arc::new(Fake::new(1000, 950, &[("a", 100)]));
    let mut gc = ImageGcManager::new(Arc::clone(&fake), config(Duration::ZERO, Duration::ZERO));
    let report = gc.collect(t(600), t(0)).await.expect("collect");
    assert_eq!(report.removed, ["a"]);
    assert_eq!(fake.removed(), ["a"]);
}
