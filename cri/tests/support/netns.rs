//! Commands and sockets in network namespaces, shared by the pod network tests
//! (`podnet.rs`, `cni.rs`): commands run with a time limit, a TCP listener inside a
//! pinned namespace, a client namespace linked to the node by a veth, a test body run
//! in a node namespace of its own, and `ip -j` output read inside a namespace.

use std::fs;
use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};

use nix::sched::CloneFlags;
use serde_json::Value;

/// Runs a command with a time limit (10 s) and returns its output.
pub fn run(args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("10")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP listener inside `pin`'s namespace.
pub fn listen_in(pin: &Path) -> TcpListener {
    let ns = fs::File::open(pin).expect("open netns pin");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into pod netns");
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind in pod netns")
    })
    .join()
    .expect("listener thread")
}

/// Links the (empty) namespace pinned at `pin` to the current one by a veth: the
/// current namespace's end `nlc0` gets `node_addr` (e.g. `192.168.77.1/30`, a node
/// address, the way an external client reaches the node), the client's `eth0` gets
/// `client_addr`; both ends and the client's `lo` are up.
pub fn link_client(pin: &Path, node_addr: &str, client_addr: &str) {
    let pin_s = pin.display().to_string();
    run_ok(&[
        "ip", "link", "add", "nlc0", "type", "veth", "peer", "name", "eth0", "netns", &pin_s,
    ]);
    run_ok(&["ip", "addr", "add", node_addr, "dev", "nlc0"]);
    run_ok(&["ip", "link", "set", "nlc0", "up"]);
    let net_arg = format!("--net={pin_s}");
    for args in [
        &["ip", "addr", "add", client_addr, "dev", "eth0"][..],
        &["ip", "link", "set", "eth0", "up"],
        &["ip", "link", "set", "lo", "up"],
    ] {
        let mut full = vec!["nsenter", net_arg.as_str()];
        full.extend_from_slice(args);
        run_ok(&full);
    }
}

/// Runs `body` on a new thread moved into a fresh network namespace (the test's stand-in
/// for the node's host namespace), on a current-thread runtime so that every process
/// the test spawns inherits that namespace. A panic in `body` fails the test; without
/// root the test fails saying so (`why` tells what the tests need root for).
pub fn in_node_netns<F, Fut>(why: &str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    assert!(nix::unistd::geteuid().is_root(), "{why}");
    let handle = std::thread::spawn(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare the test's node netns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(body());
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// `ip -j ARGS` inside the pinned namespace (pins are not under /run/netns, so `ip -n`
/// cannot name them), parsed.
pub fn ip_json_in(pin: &Path, args: &[&str]) -> Vec<Value> {
    let net = format!("--net={}", pin.display());
    let mut full = vec!["nsenter", &net, "ip", "-j"];
    full.extend_from_slice(args);
    let out = run_ok(&full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args:?}: {e}: {out}"))
}

/// The link named `name` in `ip -j addr` output.
pub fn link<'a>(addrs: &'a [Value], name: &str) -> Option<&'a Value> {
    addrs.iter().find(|l| l["ifname"] == name)
}

/// Whether an `ip -j addr` link is up.
pub fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "UP"))
}

/// An `ip -j addr` link's addresses as `ip/prefix`.
pub fn link_ips(link: &Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| Some(format!("{}/{}", i["local"].as_str()?, i["prefixlen"])))
                .collect()
        })
        .unwrap_or_default()
}
