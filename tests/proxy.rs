//! `nodelet proxy` as a process: `--cleanup` inside a throwaway network namespace removes
//! the proxy's tables there (and only there), and a missing `--kubeconfig` is refused.
//! The watch-and-program path runs against the real apiserver tier in
//! `netproxy/tests/apiserver.rs` (this binary would program the namespace it runs in,
//! and the apiserver's loopback is not reachable from a test namespace). Needs root.

use std::process::Command;

/// A network namespace deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn in_ns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

#[test]
fn cleanup_removes_the_tables_in_its_namespace() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (network namespaces)"
    );
    let ns = Netns(format!("nodelet-test-{}-proxycli", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .expect("ip")
            .success()
    );
    let made = in_ns(
        &ns.0,
        &[
            "nft",
            "add table ip nodelet; add table ip6 nodelet; add table ip other",
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let bin = env!("CARGO_BIN_EXE_nodelet");
    let out = in_ns(&ns.0, &[bin, "proxy", "--cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables =
        String::from_utf8_lossy(&in_ns(&ns.0, &["nft", "list", "tables"]).stdout).into_owned();
    assert_eq!(tables.trim(), "table ip other", "only ours removed");
    // Twice is fine: nothing left to remove.
    assert!(in_ns(&ns.0, &[bin, "proxy", "--cleanup"]).status.success());
}

#[test]
fn kubeconfig_is_required() {
    let out = Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args(["proxy", "--cluster-cidr", "10.244.0.0/16"])
        .output()
        .expect("run nodelet");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kubeconfig is required"));
}
