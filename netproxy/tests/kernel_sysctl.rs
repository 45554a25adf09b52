//! The conntrack sysctls (`KubeProxyConfiguration.conntrack`) against the real kernel,
//! applied from a thread inside a network namespace the test creates: the per-namespace
//! timeouts and `tcp_be_liberal` are set there, `nf_conntrack_max` (global, writable only
//! from the initial namespace) is reported and left alone, and the host's values do not
//! move. Never run in the host's namespace: the test checks it is elsewhere before
//! writing anything. Needs root.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use nodelet_netproxy::conntrack::sysctl::{
    ConntrackSettings, MAX_LIMIT, Outcome, Sysctls, apply, in_init_netns,
};

const ENTRIES: &[&str] = &[
    "nf_conntrack_max",
    "nf_conntrack_tcp_timeout_established",
    "nf_conntrack_tcp_timeout_close_wait",
    "nf_conntrack_tcp_be_liberal",
    "nf_conntrack_udp_timeout",
    "nf_conntrack_udp_timeout_stream",
];

/// The calling thread's namespace's values of `ENTRIES`.
fn values() -> Vec<u64> {
    ENTRIES
        .iter()
        .map(|e| {
            std::fs::read_to_string(format!("/proc/sys/net/netfilter/{e}"))
                .expect("read sysctl")
                .trim()
                .parse()
                .expect("number")
        })
        .collect()
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn conntrack_settings_apply_inside_a_namespace_and_never_to_the_host() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (network namespaces)"
    );
    // The conntrack sysctls exist once nf_conntrack is loaded (it is on a proxy node).
    assert!(
        std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists(),
        "nf_conntrack is not loaded on this host"
    );
    let ns = Netns(format!("nodelet-test-{}-sysctl", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .expect("ip")
            .success()
    );
    let host_before = values();
    let path = format!("/var/run/netns/{}", ns.0);
    let (outcomes, inside) = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        assert!(
            !in_init_netns(),
            "the thread must be outside the host's netns"
        );
        let settings = ConntrackSettings {
            // Asks for more than any host has set: the global limit must stay.
            max_per_core: MAX_LIMIT,
            min: 0,
            tcp_established_timeout: Duration::from_secs(7200),
            tcp_close_wait_timeout: Duration::from_secs(1800),
            tcp_be_liberal: true,
            udp_timeout: Duration::from_secs(45),
            udp_stream_timeout: Duration::from_secs(150),
        };
        let out = apply(&settings, &Sysctls::host(), 2).expect("apply in the namespace");
        (out, values())
    })
    .join()
    .expect("thread");
    assert_eq!(
        inside[1..],
        [7200, 1800, 1, 45, 150],
        "set in the namespace"
    );
    assert!(
        outcomes.iter().any(
            |o| matches!(o, Outcome::NotInInitNetns { entry, .. } if entry == "nf_conntrack_max")
        ),
        "{outcomes:?}"
    );
    assert_eq!(values(), host_before, "the host's values moved");
}
