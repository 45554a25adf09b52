//! Support shared by nodelet's integration and end-to-end tests: which containerd the
//! tests use, and emptying and removing a test's containerd namespace so that nothing
//! a test made outlives it, also when it fails. Uses `ctr`, containerd's own client,
//! so cleanup doesn't depend on the code under test.

use std::process::{Command, Output};

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
