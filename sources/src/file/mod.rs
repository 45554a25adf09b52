//! The manifest file source (`--pod-manifest-path` / `staticPodPath`): a
//! directory, or a single file, of static pod manifests, watched with inotify
//! and fully rescanned every `--file-check-frequency` as a safety net.
//!
//! The scanner ([`scanner`]) keeps, per file, the pods the file last produced
//! successfully, so a half-written or broken edit never removes running pods; a
//! file that disappears takes its pods with it. Each change of the desired set is
//! sent as one complete [`SourceEvent::Snapshot`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use nodelet_manifests::{FILE_SOURCE, SourceEvent};

mod scanner;
#[cfg(test)]
mod testing;

use scanner::Scanner;

/// How long a burst of file events is collected before one rescan.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Lower bound on the rescan period (a zero period would spin).
const MIN_RESCAN: Duration = Duration::from_millis(100);

/// A digest of `pods` (of their `Debug` form, which shows every field), so that an
/// unchanged set is told apart without keeping a copy of it.
fn fingerprint(pods: &[Pod]) -> [u8; 32] {
    nodelet_manifests::debug_digest(&pods)
}

/// Watches a manifest directory (or file) and sends the static pods it holds.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    node_name: String,
    rescan: Duration,
}

impl FileSource {
    /// A source for `path` (directory or file) on node `node_name`, rescanned
    /// fully every `rescan` (upstream's `--file-check-frequency`, 20 s).
    pub fn new(path: impl Into<PathBuf>, node_name: impl Into<String>, rescan: Duration) -> Self {
        Self {
            path: path.into(),
            node_name: node_name.into(),
            rescan,
        }
    }

    /// Runs until `cancel` fires or the receiver of `tx` goes away. Sends one
    /// snapshot after the first scan (even if empty, so the consumer knows
    /// the source has been read), then one whenever the set of pods changes.
    pub async fn run(self, tx: mpsc::Sender<SourceEvent>, cancel: CancellationToken) {
        info!(path = %self.path.display(), "watching manifest path");
        // Capacity one: a pending wake-up already means "rescan soon", so
        // further events while it is queued are redundant.
        let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
        let mut watch = Watch::new(wake_tx);
        let mut scanner = Some(Scanner::new(self.path.clone(), self.node_name));
        // What was last sent, as a digest: the manager holds the pods themselves.
        let mut sent: Option<[u8; 32]> = None;
        let mut sent_objects: Option<Vec<nodelet_manifests::ApiObject>> = None;
        let mut ticker = tokio::time::interval(self.rescan.max(MIN_RESCAN));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // The first tick is immediate; the first scan is below.

        loop {
            let Some(mut current) = scanner.take() else {
                return;
            };
            // File reads block; keep them off the async workers.
            let scanned = tokio::task::spawn_blocking(move || {
                current.scan();
                current
            })
            .await;
            let mut current = match scanned {
                Ok(current) => current,
                Err(e) => {
                    warn!(path = %self.path.display(), error = %e, "manifest scan failed; file source stops");
                    return;
                }
            };
            let newly_watched = watch.follow(&self.path);
            let pods = current.pods();
            let objects = current.objects();
            scanner = Some(current);
            // The objects go first, so pods that use them find them.
            if sent_objects.as_ref() != Some(&objects)
                && !(sent_objects.is_none() && objects.is_empty())
            {
                debug!(path = %self.path.display(), objects = objects.len(), "configMap and secret documents changed");
                sent_objects = Some(objects.clone());
                let event = SourceEvent::Objects {
                    source: FILE_SOURCE,
                    objects,
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    result = tx.send(event) => if result.is_err() { return },
                }
            }
            let digest = fingerprint(&pods);
            if sent != Some(digest) {
                debug!(path = %self.path.display(), pods = pods.len(), "static pods changed");
                sent = Some(digest);
                let event = SourceEvent::Snapshot {
                    source: FILE_SOURCE,
                    pods,
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    result = tx.send(event) => if result.is_err() { return },
                }
            } else {
                // Not kept while the source waits for the next change.
                drop(pods);
            }
            if newly_watched {
                continue;
            }

            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {}
                Some(()) = wake_rx.recv() => {
                    // Let a burst of writes settle so it costs one rescan.
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(DEBOUNCE) => {}
                    }
                    while wake_rx.try_recv().is_ok() {}
                }
            }
        }
    }
}

/// The inotify watch. It follows the manifest directory itself, or the
/// parent directory when the path is a file (editors replace files by
/// renaming) or does not exist yet (so its creation is noticed).
struct Watch {
    wake: mpsc::Sender<()>,
    watcher: Option<RecommendedWatcher>,
    /// The watched directory and its inode, to notice it being replaced.
    target: Option<(PathBuf, u64, u64)>,
    last_error: Option<String>,
}

impl Watch {
    fn new(wake: mpsc::Sender<()>) -> Self {
        Self {
            wake,
            watcher: None,
            target: None,
            last_error: None,
        }
    }

    /// Points the watch at the right directory; returns true when a new
    /// watch was just established, since changes made before that moment
    /// were not seen and call for another scan.
    fn follow(&mut self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt as _;

        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => PathBuf::from("."),
            }
        };
        let Ok(meta) = std::fs::metadata(&dir) else {
            // Nothing to watch yet; the periodic rescan covers it.
            self.watcher = None;
            self.target = None;
            return false;
        };
        let target = (dir.clone(), meta.dev(), meta.ino());
        if self.target.as_ref() == Some(&target) {
            return false;
        }
        self.watcher = None;
        self.target = None;
        let wake = self.wake.clone();
        let watched = dir.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            if is_relevant(&event, &watched) {
                // Full means a rescan is already pending; closed means we are stopping.
                let _ = wake.try_send(());
            }
        };
        let result = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        match result {
            Ok(watcher) => {
                debug!(dir = %dir.display(), "watching for manifest changes");
                self.watcher = Some(watcher);
                self.target = Some(target);
                self.last_error = None;
                true
            }
            Err(e) => {
                let text = e.to_string();
                if self.last_error.as_ref() != Some(&text) {
                    warn!(dir = %dir.display(), error = %text, "cannot watch manifest directory; relying on periodic rescans");
                    self.last_error = Some(text);
                }
                false
            }
        }
    }
}

/// Whether an inotify event may change what the scan finds. Our own reads
/// produce open/close events, which must not trigger rescans (or we would
/// rescan forever), and dotfiles are never read.
fn is_relevant(event: &notify::Result<notify::Event>, watched: &Path) -> bool {
    let Ok(event) = event else {
        return true; // e.g. a queue overflow: rescan to be safe.
    };
    if let EventKind::Access(access) = event.kind {
        return matches!(access, AccessKind::Close(AccessMode::Write));
    }
    event.paths.is_empty() || event.paths.iter().any(|p| p == watched || !is_dotfile(p))
}

pub(crate) fn is_dotfile(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs;
    use std::time::Instant;

    use super::testing::{manifest, names, uid};

    #[test]
    fn fingerprint_tells_sets_apart() {
        let pod = |name: &str, label: &str| {
            let mut p = Pod::default();
            p.metadata.name = Some(name.to_owned());
            p.metadata.labels = Some([("app".to_owned(), label.to_owned())].into());
            p
        };
        let a = vec![pod("a", "x"), pod("b", "y")];
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&[pod("a", "x"), pod("b", "z")])
        );
        assert_ne!(fingerprint(&a), fingerprint(&a[..1]));
        assert_ne!(fingerprint(&[]), fingerprint(&a[..1]));
    }

    // --- the watching task ---

    struct Running {
        rx: mpsc::Receiver<SourceEvent>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        /// Starts a source whose periodic rescan is far away, so anything seen
        /// within the test's timeouts came through inotify.
        fn start(path: &Path) -> Self {
            let (tx, rx) = mpsc::channel(16);
            let cancel = CancellationToken::new();
            let source = FileSource::new(path, "node1", Duration::from_secs(3600));
            let task = tokio::spawn(source.run(tx, cancel.clone()));
            Self { rx, cancel, task }
        }

        /// Waits for a snapshot satisfying `done`, failing after one second.
        async fn until(&mut self, what: &str, done: impl Fn(&[Pod]) -> bool) -> Vec<Pod> {
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, self.rx.recv()).await {
                    Ok(Some(SourceEvent::Snapshot { source, pods })) => {
                        assert_eq!(source, "file");
                        if done(&pods) {
                            return pods;
                        }
                    }
                    Ok(Some(SourceEvent::Objects { .. })) => {}
                    Ok(None) => panic!("source stopped while waiting for {what}"),
                    Err(_) => panic!("no snapshot with {what} within a second"),
                }
            }
        }

        async fn stop(self) {
            self.cancel.cancel();
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("source stops on cancel")
                .expect("source task does not panic");
        }
    }

    #[tokio::test]
    async fn watches_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = Running::start(dir.path());
        source
            .until("the initial empty snapshot", <[Pod]>::is_empty)
            .await;

        let a = dir.path().join("a.yaml");
        fs::write(&a, manifest("web", "x:1")).unwrap();
        let added = source
            .until("web added", |p| names(p) == ["web-node1"])
            .await;
        let first_uid = uid(&added, "web-node1");

        fs::write(&a, manifest("web", "x:2")).unwrap();
        let edited = source
            .until("web edited", |p| {
                p.len() == 1 && uid(p, "web-node1") != first_uid
            })
            .await;
        let edited_uid = uid(&edited, "web-node1");

        // A broken edit and a dotfile change nothing; the next real change
        // shows web still there with the same UID.
        fs::write(&a, "kind: Pod\napiVersion: v1\nspec: {containers: [").unwrap();
        fs::write(dir.path().join(".b.yaml"), manifest("hidden", "x:1")).unwrap();
        fs::write(dir.path().join("c.yaml"), manifest("other", "x:1")).unwrap();
        let after = source.until("other added", |p| p.len() == 2).await;
        assert_eq!(names(&after), ["web-node1", "other-node1"]);
        assert_eq!(uid(&after, "web-node1"), edited_uid);

        // Renaming moves the pod to a new identity (the path is part of it).
        fs::write(&a, manifest("web", "x:2")).unwrap();
        fs::rename(&a, dir.path().join("d.yaml")).unwrap();
        let renamed = source
            .until("web renamed", |p| {
                p.len() == 2 && uid(p, "web-node1") != edited_uid
            })
            .await;
        assert_eq!(names(&renamed), ["other-node1", "web-node1"]);

        fs::remove_file(dir.path().join("d.yaml")).unwrap();
        source
            .until("web removed", |p| names(p) == ["other-node1"])
            .await;
        source.stop().await;
    }

    #[tokio::test]
    async fn config_map_and_secret_documents_go_before_the_pods() {
        let dir = tempfile::tempdir().unwrap();
        let objects = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {k: v}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns}\nstringData: {p: x}\n";
        fs::write(
            dir.path().join("a.yaml"),
            format!("{objects}---\n{}", manifest("web", "x:1")),
        )
        .unwrap();
        let mut source = Running::start(dir.path());
        let first = tokio::time::timeout(Duration::from_secs(1), source.rx.recv())
            .await
            .unwrap()
            .unwrap();
        let SourceEvent::Objects {
            source: from,
            objects,
        } = first
        else {
            panic!("the objects first: {first:?}")
        };
        assert_eq!(from, "file");
        assert_eq!(objects.len(), 2);
        let nodelet_manifests::ApiObject::Secret(secret) = &objects[1] else {
            panic!("a secret: {objects:?}")
        };
        assert_eq!(secret.data.as_ref().unwrap()["p"].0, b"x");
        source.until("web", |p| names(p) == ["web-node1"]).await;
        // The objects removed, the pod kept: an empty set is sent.
        fs::write(dir.path().join("a.yaml"), manifest("web", "x:1")).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(1), source.rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            next,
            SourceEvent::Objects {
                source: "file",
                objects: vec![]
            }
        );
        source.stop().await;
    }

    #[tokio::test]
    async fn a_directory_created_later_is_picked_up() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("manifests");
        let mut source = Running::start(&dir);
        source
            .until("the initial empty snapshot", <[Pod]>::is_empty)
            .await;
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("a.yaml"), manifest("late", "x:1")).unwrap();
        source
            .until("late added", |p| names(p) == ["late-node1"])
            .await;
        source.stop().await;
    }

    #[tokio::test]
    async fn periodic_rescan_catches_what_events_miss() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        // Watching a path inside a missing parent: no inotify watch is possible.
        let path = dir.path().join("missing/deeper");
        let task =
            tokio::spawn(FileSource::new(&path, "node1", MIN_RESCAN).run(tx, cancel.clone()));
        let first = rx.recv().await.unwrap();
        assert_eq!(
            first,
            SourceEvent::Snapshot {
                source: "file",
                pods: vec![]
            }
        );
        fs::create_dir_all(&path).unwrap();
        fs::write(path.join("a.yaml"), manifest("web", "x:1")).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let SourceEvent::Snapshot { pods, .. } = next else {
            panic!("a snapshot: {next:?}")
        };
        assert_eq!(names(&pods), ["web-node1"]);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn stops_when_the_receiver_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let task = tokio::spawn(
            FileSource::new(dir.path(), "n", Duration::from_secs(60))
                .run(tx, CancellationToken::new()),
        );
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
