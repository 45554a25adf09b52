//! Support shared by nodelet's integration and end-to-end tests: which containerd the
//! tests use, and emptying and removing a test's containerd namespace so that nothing
//! a test made outlives it (including its cgroups), also when it fails. Uses `ctr`, containerd's own client,
//! so cleanup doesn't depend on the code under test.

use std::process::{Command, Output};

/// A number no other caller in this process got: test binaries that compile a support
/// module more than once (one copy per included test file) still name their worlds
/// apart.
pub fn next_in_process() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// The containerd socket tests use: `NODELET_TEST_CONTAINERD` (which
/// `scripts/test.sh` sets to a containerd private to the tests), else the default.
pub fn containerd_socket() -> String {
    std::env::var("NODELET_TEST_CONTAINERD")
        .unwrap_or_else(|_| "/run/containerd/containerd.sock".to_owned())
}

/// Runs `ctr` against `socket` in namespace `ns`, bounded in time.
///
/// # Panics
/// When `timeout` or `ctr` can't be started at all (the test machine is broken).
pub fn ctr(socket: &str, ns: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["60", "ctr", "--address", socket, "-n", ns])
        .args(args)
        .output()
        .expect("run ctr")
}

/// The non-empty lines `ctr` prints for `args`.
pub fn ctr_lines(socket: &str, ns: &str, args: &[&str]) -> Vec<String> {
    String::from_utf8_lossy(&ctr(socket, ns, args).stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Removes everything in namespace `ns`: tasks (killed), containers, images, leases,
/// content, snapshots (children before parents). Returns what failed.
pub fn purge_objects(socket: &str, ns: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let mut check = |what: &str, out: Output| {
        if !out.status.success() {
            errors.push(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    };
    let run = |args: &[&str]| ctr(socket, ns, args);
    let list = |args: &[&str]| ctr_lines(socket, ns, args);
    for task in list(&["tasks", "ls", "-q"]) {
        let _ = run(&["tasks", "kill", "-s", "SIGKILL", &task]);
        check("task rm", run(&["tasks", "rm", "-f", &task]));
    }
    for container in list(&["containers", "ls", "-q"]) {
        check("container rm", run(&["containers", "rm", &container]));
    }
    for image in list(&["images", "ls", "-q"]) {
        check("image rm", run(&["images", "rm", &image]));
    }
    for lease in list(&["leases", "ls", "-q"]) {
        check("lease rm", run(&["leases", "rm", &lease]));
    }
    let digests = list(&["content", "ls", "-q"]);
    if !digests.is_empty() {
        let mut args = vec!["content", "rm"];
        args.extend(digests.iter().map(String::as_str));
        check("content rm", run(&args));
    }
    // Children before parents: retry until nothing is left or nothing moves.
    for _ in 0..16 {
        let keys: Vec<String> = list(&["snapshots", "ls"])
            .into_iter()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        if keys.is_empty() {
            break;
        }
        for key in keys {
            let _ = run(&["snapshots", "rm", &key]);
        }
    }
    errors
}

/// Removes the (empty) namespace `ns`; the error `ctr` gave, if any.
///
/// # Panics
/// When `timeout` or `ctr` can't be started at all.
pub fn remove_namespace(socket: &str, ns: &str) -> Option<String> {
    let out = Command::new("timeout")
        .args(["60", "ctr", "--address", socket, "namespaces", "rm", ns])
        .output()
        .expect("run ctr");
    (!out.status.success())
        .then(|| format!("namespace rm: {}", String::from_utf8_lossy(&out.stderr)))
}

/// [`purge_objects`] then [`remove_namespace`]; returns what failed.
pub fn purge_namespace(socket: &str, ns: &str) -> Vec<String> {
    let mut errors = purge_objects(socket, ns);
    errors.extend(remove_namespace(socket, ns));
    errors
}

/// The mount points of every cgroup hierarchy (v1 controllers and the v2 unified one),
/// read from `mounts` (normally `/proc/self/mounts`).
fn hierarchies(mounts: &str) -> Vec<std::path::PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_, target, fstype) = (f.next()?, f.next()?, f.next()?);
            matches!(fstype, "cgroup" | "cgroup2").then(|| std::path::PathBuf::from(target))
        })
        .collect()
}

/// Removes the test's cgroup `parent` (and the child cgroups left in it) from every
/// hierarchy, deepest first. It is plain `rmdir`, independent of the code under test. A missing
/// directory is fine; a non-empty one (a process still in it) is an error.
///
/// # Errors
/// The first `rmdir` failure other than "not found", with its path.
pub fn remove_cgroup(parent: &str) -> Result<(), (std::path::PathBuf, std::io::Error)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| (std::path::PathBuf::from("/proc/self/mounts"), e))?;
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return Ok(());
    }
    let mut first_err = None;
    for root in hierarchies(&mounts) {
        let dir = root.join(rel);
        if let Err(e) = remove_tree(&dir) {
            first_err.get_or_insert((dir, e));
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Removes a cgroup directory and any child cgroups left in it (cgroup directories are
/// removed with rmdir, children first; their control files go with them).
fn remove_tree(dir: &std::path::Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
