//! The manifest file source (`--pod-manifest-path` / `staticPodPath`): a
//! directory, or a single file, of static pod manifests, watched with inotify
//! and fully rescanned every `--file-check-frequency` as a safety net.
//!
//! It keeps, per file, the
//! pods the file last produced successfully, so a half-written or broken edit
//! never removes running pods; a file that disappears takes its pods with it.
//! Each change of the desired set is sent as one complete [`SourceEvent::Snapshot`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use nodelet_manifests::{
    FILE_SOURCE, MAX_MANIFEST_BYTES, SourceEvent, keep_first_seen, load_static_pods,
};

/// How long a burst of file events is collected before one rescan.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Lower bound on the rescan period (a zero period would spin).
const MIN_RESCAN: Duration = Duration::from_millis(100);

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
        let mut sent: Option<Vec<Pod>> = None;
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
            scanner = Some(current);
            if sent.as_ref() != Some(&pods) {
                debug!(path = %self.path.display(), pods = pods.len(), "static pods changed");
                sent = Some(pods.clone());
                let event = SourceEvent::Snapshot {
                    source: FILE_SOURCE,
                    pods,
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    result = tx.send(event) => if result.is_err() { return },
                }
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

fn is_dotfile(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."))
}

/// Reads at most one byte more than [`MAX_MANIFEST_BYTES`]: enough for the parser
/// to refuse a larger file without the agent ever holding all of it.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let limit = u64::try_from(MAX_MANIFEST_BYTES)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// How many skipped documents of one file are logged one by one; the rest are
/// counted in one more line, so a file of many documents costs a few lines.
const SKIPPED_LOGGED: usize = 5;

/// What one manifest file last gave us.
struct FileState {
    /// Digest of the bytes last read, to skip re-parsing unchanged files.
    digest: [u8; 32],
    /// The pods of the last good version of the file.
    pods: Vec<Pod>,
    /// What was logged about the current version, to log each problem once.
    reported: Vec<String>,
}

/// The synchronous part of the source: reads the path and keeps per-file state.
struct Scanner {
    path: PathBuf,
    node_name: String,
    files: BTreeMap<PathBuf, FileState>,
    /// Path-level problems and notes already logged.
    noted: HashSet<String>,
    /// Name conflicts already logged, keyed by the losing file and pod.
    conflicts: HashSet<String>,
    /// The file each pod name (namespace, name) belongs to: the first file seen
    /// declaring it, for as long as that file still declares it.
    owners: HashMap<(String, String), PathBuf>,
}

impl Scanner {
    fn new(path: PathBuf, node_name: String) -> Self {
        Self {
            path,
            node_name,
            files: BTreeMap::new(),
            noted: HashSet::new(),
            conflicts: HashSet::new(),
            owners: HashMap::new(),
        }
    }

    /// Logs a path-level message the first time it occurs.
    fn note(&mut self, message: String) {
        if self.noted.insert(message.clone()) {
            warn!(path = %self.path.display(), "{message}");
        }
    }

    /// The manifest files to read, sorted, or `None` when the path cannot be
    /// listed right now (state is then kept as it is).
    fn list(&mut self) -> Option<Vec<PathBuf>> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Upstream treats a missing path as "no pods" and keeps looking.
                self.note("manifest path does not exist (yet)".to_owned());
                return Some(Vec::new());
            }
            Err(e) => {
                self.note(format!("cannot read manifest path: {e}"));
                return None;
            }
        };
        self.noted
            .retain(|m| !m.starts_with("manifest path does not exist"));
        if meta.is_file() {
            return Some(vec![self.path.clone()]);
        }
        if !meta.is_dir() {
            self.note("manifest path is not a directory or a regular file".to_owned());
            return Some(Vec::new());
        }
        let entries = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries,
            Err(e) => {
                self.note(format!("cannot list manifest directory: {e}"));
                return None;
            }
        };
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if is_dotfile(&path) {
                continue; // Editors' swap files and the like, as upstream's `[^.]*` glob.
            }
            // `fs::metadata` follows symlinks, as upstream's `os.Stat` does.
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => files.push(path),
                Ok(meta) if meta.is_dir() => {
                    self.note(format!(
                        "not recursing into manifest subdirectory {}",
                        path.display()
                    ));
                }
                Ok(_) => self.note(format!("ignoring {}: not a regular file", path.display())),
                // Gone since listing, or a dangling symlink: nothing to run.
                Err(_) => {}
            }
        }
        files.sort();
        Some(files)
    }

    fn scan(&mut self) {
        let Some(files) = self.list() else {
            return;
        };
        let present: HashSet<&PathBuf> = files.iter().collect();
        self.files.retain(|path, _| {
            let keep = present.contains(path);
            if !keep {
                info!(file = %path.display(), "manifest file removed; its pods go too");
            }
            keep
        });
        for file in files {
            self.scan_file(file);
        }
    }

    fn scan_file(&mut self, file: PathBuf) {
        let bytes = match read_bounded(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.files.remove(&file);
                return;
            }
            Err(e) => {
                // Keep whatever the file gave before; try again next scan.
                self.note(format!("cannot read manifest file {}: {e}", file.display()));
                return;
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if self
            .files
            .get(&file)
            .is_some_and(|state| state.digest == digest)
        {
            return;
        }
        let origin = file.to_string_lossy().into_owned();
        let load = load_static_pods(&bytes, &origin, &self.node_name);
        let (old_pods, already) = match self.files.remove(&file) {
            Some(previous) => (previous.pods, previous.reported),
            None => (Vec::new(), Vec::new()),
        };
        let mut reported: Vec<String> = load.errors.iter().map(ToString::to_string).collect();
        let fatal = load.has_fatal_errors();
        let mut skipped = 0usize;
        for (error, text) in load.errors.iter().zip(&reported) {
            if already.contains(text) {
                continue; // Logged when this version of the problem first appeared.
            }
            if error.is_fatal() {
                warn!(file = %file.display(), reason = %text, "manifest rejected; keeping the pods it last produced, if any");
            } else {
                skipped += 1;
                if skipped <= SKIPPED_LOGGED {
                    info!(file = %file.display(), reason = %text, "manifest document skipped");
                }
            }
        }
        if skipped > SKIPPED_LOGGED {
            info!(file = %file.display(), more = skipped - SKIPPED_LOGGED, "more manifest documents skipped");
        }
        // A file truncated to nothing is most likely being rewritten (open
        // with O_TRUNC, then write): keep its pods. Deleting the file is how
        // to remove them.
        let emptied =
            !fatal && load.pods.is_empty() && load.errors.is_empty() && !old_pods.is_empty();
        if emptied {
            const EMPTIED: &str =
                "manifest file has no documents; keeping its pods until it is fixed or removed";
            if !already.iter().any(|m| m == EMPTIED) {
                warn!(file = %file.display(), "{EMPTIED}");
            }
            reported.push(EMPTIED.to_owned());
        }
        let pods = if fatal || emptied {
            old_pods
        } else {
            keep_first_seen(load.pods, &old_pods)
        };
        self.files.insert(
            file,
            FileState {
                digest,
                pods,
                reported,
            },
        );
    }

    /// The desired pods: every file's pods in file-name order, except those whose
    /// namespace/name another file already holds. The file seen first with a name
    /// keeps it across rescans (so a new file can never replace a running pod),
    /// until it stops declaring it; among files seen in the same scan, the first
    /// in name order wins, and within a file the first document.
    fn pods(&mut self) -> Vec<Pod> {
        let key_of = |pod: &Pod| {
            (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            )
        };
        let files = &self.files;
        self.owners.retain(|key, owner| {
            files
                .get(owner)
                .is_some_and(|state| state.pods.iter().any(|pod| key_of(pod) == *key))
        });
        for (file, state) in files {
            for pod in &state.pods {
                self.owners
                    .entry(key_of(pod))
                    .or_insert_with(|| file.clone());
            }
        }
        let mut taken: HashSet<(String, String)> = HashSet::new();
        let mut pods = Vec::new();
        let mut conflicts = HashSet::new();
        for (file, state) in files {
            for pod in &state.pods {
                let key = key_of(pod);
                let owner = self
                    .owners
                    .get(&key)
                    .map_or(file.as_path(), PathBuf::as_path);
                if owner == file.as_path() && taken.insert(key.clone()) {
                    pods.push(pod.clone());
                    continue;
                }
                let message = format!(
                    "pod {}/{} from {} duplicates the one from {}, which keeps it; ignoring the one from {}",
                    key.0,
                    key.1,
                    file.display(),
                    owner.display(),
                    file.display(),
                );
                if !self.conflicts.contains(&message) {
                    warn!(file = %file.display(), kept_from = %owner.display(), namespace = %key.0, pod = %key.1, "{message}");
                }
                conflicts.insert(message);
            }
        }
        // Forget resolved conflicts so they are logged again if they return.
        self.conflicts = conflicts;
        pods
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs;
    use std::time::Instant;

    fn manifest(name: &str, image: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: {image}\n"
        )
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    fn uid(pods: &[Pod], name: &str) -> String {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
            .and_then(|p| p.metadata.uid.clone())
            .unwrap_or_else(|| panic!("no pod {name} in {:?}", names(pods)))
    }

    // --- the scanner, synchronously ---

    fn scanner(dir: &Path) -> Scanner {
        Scanner::new(dir.to_path_buf(), "node1".to_owned())
    }

    fn scan(scanner: &mut Scanner) -> Vec<Pod> {
        scanner.scan();
        scanner.pods()
    }

    #[test]
    fn broken_edit_keeps_last_good_pods_and_removal_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.yaml");
        let mut s = scanner(dir.path());
        assert!(scan(&mut s).is_empty());

        fs::write(&file, manifest("web", "busybox:1")).unwrap();
        let first = scan(&mut s);
        assert_eq!(names(&first), ["web-node1"]);

        for broken in [
            "apiVersion: v1\nkind: Pod\nspec: [",
            "",
            &manifest("web", "''"),
        ] {
            fs::write(&file, broken).unwrap();
            assert_eq!(
                scan(&mut s),
                first,
                "broken edit {broken:?} must keep the pod"
            );
        }

        fs::write(&file, manifest("web", "busybox:2")).unwrap();
        let edited = scan(&mut s);
        assert_ne!(uid(&edited, "web-node1"), uid(&first, "web-node1"));

        fs::remove_file(&file).unwrap();
        assert!(scan(&mut s).is_empty());
    }

    #[test]
    fn empty_file_is_broken_only_after_a_good_version() {
        // A new empty file parses to no documents: not an error, and no pods.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.yaml"), "").unwrap();
        let mut s = scanner(dir.path());
        assert!(scan(&mut s).is_empty());
    }

    #[test]
    fn unchanged_files_keep_identical_pods() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.yaml"), manifest("a", "x:1")).unwrap();
        let mut s = scanner(dir.path());
        let first = scan(&mut s);
        // Rewriting the same pod in a different layout re-parses but yields an
        // equal pod: config.seen is carried over.
        fs::write(
            dir.path().join("a.yaml"),
            format!("# comment\n{}", manifest("a", "x:1")),
        )
        .unwrap();
        assert_eq!(scan(&mut s), first);
    }

    #[test]
    fn dotfiles_subdirectories_and_other_kinds_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".hidden.yaml"), manifest("hidden", "x:1")).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/inner.yaml"), manifest("inner", "x:1")).unwrap();
        fs::write(
            dir.path().join("mixed.yaml"),
            format!(
                "apiVersion: v1\nkind: Service\n---\n{}",
                manifest("web", "x:1")
            ),
        )
        .unwrap();
        assert_eq!(names(&scan(&mut scanner(dir.path()))), ["web-node1"]);
    }

    #[test]
    fn first_file_wins_a_name_conflict() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b.yaml"), manifest("web", "from-b:1")).unwrap();
        fs::write(dir.path().join("a.yaml"), manifest("web", "from-a:1")).unwrap();
        let pods = scan(&mut scanner(dir.path()));
        assert_eq!(pods.len(), 1);
        let image = pods[0].spec.as_ref().unwrap().containers[0].image.clone();
        assert_eq!(image.as_deref(), Some("from-a:1"));
    }

    #[test]
    fn a_new_file_never_takes_a_running_pods_name() {
        let dir = tempfile::tempdir().unwrap();
        let image = |pods: &[Pod]| pods[0].spec.as_ref().unwrap().containers[0].image.clone();
        fs::write(dir.path().join("web.yaml"), manifest("web", "running:1")).unwrap();
        let mut s = scanner(dir.path());
        let first = scan(&mut s);
        assert_eq!(image(&first).as_deref(), Some("running:1"));

        // A later file sorting first declares the same name: the running pod stays,
        // unchanged, and the duplicate is reported naming both files.
        fs::write(dir.path().join("aaa.yaml"), manifest("web", "newcomer:1")).unwrap();
        for _ in 0..2 {
            assert_eq!(scan(&mut s), first, "rescans keep the first seen");
        }
        let aaa = dir.path().join("aaa.yaml");
        let web = dir.path().join("web.yaml");
        assert_eq!(
            s.conflicts.iter().cloned().collect::<Vec<_>>(),
            [format!(
                "pod default/web-node1 from {} duplicates the one from {}, which keeps it; ignoring the one from {}",
                aaa.display(),
                web.display(),
                aaa.display()
            )]
        );
        // An edit of the owner keeps its claim.
        fs::write(&web, manifest("web", "running:2")).unwrap();
        assert_eq!(image(&scan(&mut s)).as_deref(), Some("running:2"));

        // Once the owner goes, the other file's pod takes the name, and keeps it
        // when the first file comes back.
        fs::remove_file(&web).unwrap();
        assert_eq!(image(&scan(&mut s)).as_deref(), Some("newcomer:1"));
        fs::write(&web, manifest("web", "running:1")).unwrap();
        assert_eq!(image(&scan(&mut s)).as_deref(), Some("newcomer:1"));
        assert_eq!(s.conflicts.len(), 1);
    }

    #[test]
    fn files_past_the_size_limit_are_read_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        let mut text = manifest("big", "x:1");
        text.push_str(&format!("# {}\n", "x".repeat(10 << 20)));
        fs::write(&big, &text).unwrap();
        assert_eq!(read_bounded(&big).unwrap().len(), MAX_MANIFEST_BYTES + 1);
        fs::write(dir.path().join("ok.yaml"), manifest("ok", "x:1")).unwrap();
        let mut s = scanner(dir.path());
        assert_eq!(names(&scan(&mut s)), ["ok-node1"]);
        let reported = &s.files[&big].reported;
        assert!(
            reported[0]
                .ends_with("document 0: larger than 3145728 bytes, the limit for a manifest"),
            "{reported:?}"
        );
    }

    #[test]
    fn single_file_and_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("only.json");
        let mut s = scanner(&file);
        assert!(scan(&mut s).is_empty(), "missing file means no pods");
        fs::write(
            &file,
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j"},"spec":{"containers":[{"name":"c","image":"i:1"}]}}"#,
        )
        .unwrap();
        assert_eq!(names(&scan(&mut s)), ["j-node1"]);
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
        let SourceEvent::Snapshot { pods, .. } = next;
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
