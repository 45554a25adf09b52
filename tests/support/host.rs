//! What the host offers or must have for a test: the crun handler for this host, the
//! cgroup v1 check, and a guard putting a sysctl back.

use std::path::Path;

/// The `crun` handler for this host: the shipped one (`/usr/bin/crun`), except on a
/// hybrid cgroup host whose cgroup2 mount still offers controllers, which crun 1.8
/// refuses; there crun runs through `scripts/crun-hybrid.sh` (see its header).
pub fn crun_handler_args() -> Vec<String> {
    let controllers =
        std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    if controllers.trim().is_empty() {
        return Vec::new();
    }
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/crun-hybrid.sh");
    vec![
        "--runtime-handlers".into(),
        format!(
            "crun=io.containerd.runc.v2,BinaryName={}",
            wrapper.display()
        ),
    ]
}

/// Fails the test unless the host has cgroup v1's memory hierarchy: the resource
/// and eviction tests read the kernel's v1 files (a green run means they ran).
pub fn require_cgroup_v1() {
    assert!(
        Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists(),
        "this test reads cgroup v1 memory files; this host has no v1 memory hierarchy \
         at /sys/fs/cgroup/memory"
    );
}

/// The host's `net.ipv6.conf.all.forwarding`, which the built-in network turns on with
/// an IPv6 range (as the bridge plugin does); dual-stack tests put back what they found.
pub const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Puts a sysctl back to what it was, when it changed, also when the test fails.
pub struct RestoreSysctl {
    path: &'static str,
    was: String,
}

impl RestoreSysctl {
    /// Remembers `path`'s value.
    pub fn new(path: &'static str) -> RestoreSysctl {
        let was = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_owned();
        RestoreSysctl { path, was }
    }
}

impl Drop for RestoreSysctl {
    fn drop(&mut self) {
        let now = std::fs::read_to_string(self.path).unwrap_or_default();
        if now.trim() != self.was
            && let Err(e) = std::fs::write(self.path, &self.was)
        {
            eprintln!("cannot restore {}: {e}", self.path);
        }
    }
}
