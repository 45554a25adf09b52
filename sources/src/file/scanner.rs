//! The synchronous half of the file source: lists the manifest path, reads each
//! file (to at most one byte past the manifest size limit), keeps per file the pods
//! of its last good version, and decides which file holds each pod name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use nodelet_manifests::{ApiObject, MAX_MANIFEST_BYTES, keep_first_seen, load_static_pods};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::is_dotfile;

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
    /// Its ConfigMap and Secret documents, likewise.
    objects: Vec<ApiObject>,
    /// What was logged about the current version, to log each problem once.
    reported: Vec<String>,
}

/// The synchronous part of the source: reads the path and keeps per-file state.
pub(super) struct Scanner {
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
    pub(super) fn new(path: PathBuf, node_name: String) -> Self {
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

    pub(super) fn scan(&mut self) {
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
        let (old_pods, old_objects, already) = match self.files.remove(&file) {
            Some(previous) => (previous.pods, previous.objects, previous.reported),
            None => (Vec::new(), Vec::new(), Vec::new()),
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
        let emptied = !fatal
            && load.pods.is_empty()
            && load.objects.is_empty()
            && load.errors.is_empty()
            && (!old_pods.is_empty() || !old_objects.is_empty());
        if emptied {
            const EMPTIED: &str =
                "manifest file has no documents; keeping its pods until it is fixed or removed";
            if !already.iter().any(|m| m == EMPTIED) {
                warn!(file = %file.display(), "{EMPTIED}");
            }
            reported.push(EMPTIED.to_owned());
        }
        let (pods, objects) = if fatal || emptied {
            (old_pods, old_objects)
        } else {
            (keep_first_seen(load.pods, &old_pods), load.objects)
        };
        self.files.insert(
            file,
            FileState {
                digest,
                pods,
                objects,
                reported,
            },
        );
    }

    /// The ConfigMap and Secret documents of every file, in file-name order; the
    /// first of a kind, namespace and name wins.
    pub(super) fn objects(&self) -> Vec<ApiObject> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for object in self.files.values().flat_map(|f| &f.objects) {
            let (kind, meta) = match object {
                ApiObject::ConfigMap(c) => ("ConfigMap", &c.metadata),
                ApiObject::Secret(s) => ("Secret", &s.metadata),
            };
            if seen.insert((kind, meta.namespace.clone(), meta.name.clone())) {
                out.push(object.clone());
            }
        }
        out
    }

    /// The desired pods: every file's pods in file-name order, except those whose
    /// namespace/name another file already holds. The file seen first with a name
    /// keeps it across rescans (so a new file can never replace a running pod),
    /// until it stops declaring it; among files seen in the same scan, the first
    /// in name order wins, and within a file the first document.
    pub(super) fn pods(&mut self) -> Vec<Pod> {
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

    use crate::file::testing::{manifest, names, uid};

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
}
