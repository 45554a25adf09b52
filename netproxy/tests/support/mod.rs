//! A throwaway two-namespace world for the proxy's kernel tests, removed on drop:
//!
//! - `<name>-node`: where our table lives; `vn` 192.168.77.1/24 towards the client, the
//!   endpoint addresses (10.180.0.N/32) on its loopback with TCP servers on them, and the
//!   service CIDR 172.30.0.0/16 routed on-link to `vn` (this host has no dummy driver):
//!   a packet that misses DNAT waits for an ARP answer nobody gives and is dropped;
//! - `<name>-client`: `vc` 192.168.77.2/24, the service CIDR routed to the node.
//!
//! Neither namespace has a default route or a link to the host, so no test packet can
//! leave them. Servers and clients run on threads that `setns` into a namespace.

#![allow(clippy::expect_used, clippy::unwrap_used, dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

pub mod cluster;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip ARGS`, panicking with its output on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command inside namespace `ns` and returns its stdout.
pub fn in_ns(ns: &str, cmd: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .expect("run ip netns exec");
    assert!(
        out.status.success(),
        "{}: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Enters namespace `ns` on the current thread.
pub fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// A TCP server answering each connection with its name, then closing.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    ns: String,
}

impl Server {
    fn start(ns: &str, addr: SocketAddr, name: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns_owned = ns.to_string();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&ns_owned);
            let listener = TcpListener::bind(addr).expect("bind");
            ready_tx.send(()).expect("ready");
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(mut c) = conn {
                    let _ = c.write_all(name.as_bytes());
                }
            }
        });
        ready_rx.recv().expect("server ready");
        Self {
            addr,
            stop,
            thread: Some(thread),
            ns: ns.to_string(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop from inside its namespace.
        let (ns, addr) = (self.ns.clone(), self.addr);
        let _ = std::thread::spawn(move || {
            enter(&ns);
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        })
        .join();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP server answering each datagram with its name, until dropped.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    fn start(ns: &str, addr: SocketAddr, name: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sock = udp_socket_in(ns, addr);
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop2.load(Ordering::SeqCst) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(name.as_bytes(), from);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP socket bound to `addr` inside namespace `ns` (a socket stays in the namespace
/// it was made in, whichever thread uses it).
pub fn udp_socket_in(ns: &str, addr: SocketAddr) -> UdpSocket {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        UdpSocket::bind(addr).expect("bind udp")
    })
    .join()
    .expect("udp socket thread")
}

/// Sends one datagram on `sock` to `addr:port` and returns the answer.
pub fn udp_ask(sock: &UdpSocket, addr: &str, port: u16) -> std::io::Result<String> {
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.send_to(
        b"?",
        SocketAddr::new(addr.parse::<IpAddr>().expect("ip"), port),
    )?;
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The two namespaces and the servers in them.
pub struct World {
    pub node: String,
    pub client: String,
    servers: Vec<Server>,
    udp_servers: Vec<UdpServer>,
}

pub const NODE_IP: &str = "192.168.77.1";
pub const CLIENT_IP: &str = "192.168.77.2";

impl World {
    /// A proxier programming the node namespace as `node-a` (no zone): IPv4, cluster CIDR
    /// 10.180.0.0/16 (the endpoints), service CIDR 172.30.0.0/16.
    pub fn proxier(&self) -> nodelet_netproxy::Proxier<nodelet_netproxy::nft::exec::NftCommand> {
        use nodelet_netproxy::model::{IpFamily, NodeTopology};
        let mut cfg = nodelet_netproxy::nft::RenderConfig::new(IpFamily::V4);
        cfg.cluster_cidrs = vec!["10.180.0.0/16".parse().expect("cidr")];
        cfg.service_cidrs = vec!["172.30.0.0/16".parse().expect("cidr")];
        nodelet_netproxy::Proxier::new(
            nodelet_netproxy::nft::exec::NftCommand::new().in_netns(&self.node),
            cfg,
            NodeTopology {
                node_name: "node-a".into(),
                zone: None,
            },
        )
    }

    /// Creates the namespaces; panics (fails the test) when not root.
    pub fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the proxy's kernel tests need root (network namespaces and nft)"
        );
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let node = format!("nodelet-test-{id}-node");
        let client = format!("nodelet-test-{id}-client");
        ip(&["netns", "add", &node]);
        let w = World {
            node: node.clone(),
            client: client.clone(),
            servers: Vec::new(),
            udp_servers: Vec::new(),
        };
        ip(&["netns", "add", &client]);
        for ns in [&node, &client] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &node, "link", "add", "vn", "type", "veth", "peer", "name", "vc", "netns",
            &client,
        ]);
        ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("{NODE_IP}/24"),
            "dev",
            "vn",
        ]);
        ip(&["-n", &node, "link", "set", "vn", "up"]);
        ip(&[
            "-n",
            &client,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "vc",
        ]);
        ip(&["-n", &client, "link", "set", "vc", "up"]);
        ip(&["-n", &node, "route", "add", "172.30.0.0/16", "dev", "vn"]);
        ip(&[
            "-n",
            &client,
            "route",
            "add",
            "172.30.0.0/16",
            "via",
            NODE_IP,
        ]);
        // Forwarding for the reject path; no redirects (the service CIDR leaves by the
        // interface it came in on) and no ICMP rate limit, which redirects would exhaust
        // before the port-unreachable a reject sends.
        in_ns(
            &node,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.vn.send_redirects=0",
                "net.ipv4.icmp_ratelimit=0",
            ],
        );
        w
    }

    /// Routes another service CIDR (the apiserver tier's 10.96.0.0/16) as the test one.
    pub fn route_services(&self, cidr: &str) {
        ip(&["-n", &self.node, "route", "add", cidr, "dev", "vn"]);
        ip(&["-n", &self.client, "route", "add", cidr, "via", NODE_IP]);
    }

    /// Adds endpoint address `ip` (IPv4 or IPv6) in the node namespace with a server on
    /// `port` answering `ip`.
    pub fn endpoint(&mut self, ip_addr: &str, port: u16) {
        let v6 = ip_addr.contains(':');
        let with_prefix = format!("{ip_addr}/{}", if v6 { 128 } else { 32 });
        let mut args = vec!["-n", &self.node, "addr", "add", &with_prefix, "dev", "lo"];
        if v6 {
            args.push("nodad");
        }
        ip(&args);
        let addr = SocketAddr::new(ip_addr.parse().expect("ip"), port);
        self.servers
            .push(Server::start(&self.node, addr, ip_addr.to_string()));
    }

    /// Adds endpoint address `ip` (if new) with a UDP server on `port` answering `ip`.
    pub fn udp_endpoint(&mut self, ip_addr: &str, port: u16) {
        let have = in_ns(&self.node, &["ip", "-o", "addr", "show", "dev", "lo"]);
        if !have.contains(&format!(" {ip_addr}/32")) {
            ip(&[
                "-n",
                &self.node,
                "addr",
                "add",
                &format!("{ip_addr}/32"),
                "dev",
                "lo",
            ]);
        }
        let addr = SocketAddr::new(ip_addr.parse().expect("ip"), port);
        self.udp_servers
            .push(UdpServer::start(&self.node, addr, ip_addr.to_string()));
    }

    /// A UDP socket of the client namespace.
    pub fn udp_client(&self) -> UdpSocket {
        udp_socket_in(&self.client, "0.0.0.0:0".parse().expect("addr"))
    }

    /// The node namespace's path (for netlink sockets opened inside it).
    pub fn node_path(&self) -> String {
        format!("/var/run/netns/{}", self.node)
    }

    /// Connects from namespace `ns` to `addr:port` and reads the answer.
    pub fn connect_from(ns: &str, addr: &str, port: u16) -> std::io::Result<String> {
        let ns = ns.to_string();
        let target = SocketAddr::new(addr.parse::<IpAddr>().expect("ip"), port);
        std::thread::spawn(move || {
            enter(&ns);
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .join()
        .expect("client thread")
    }

    /// Connects from the client namespace.
    pub fn connect(&self, addr: &str, port: u16) -> std::io::Result<String> {
        Self::connect_from(&self.client, addr, port)
    }

    /// `n` connections from the client; the answers counted by server.
    pub fn spread(
        &self,
        addr: &str,
        port: u16,
        n: usize,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..n {
            let who = self
                .connect(addr, port)
                .expect("connect through the service");
            *counts.entry(who).or_insert(0) += 1;
        }
        counts
    }

    /// `nft list ruleset ip` in the node namespace: our main table and its shards.
    pub fn table(&self) -> String {
        in_ns(&self.node, &["nft", "list", "ruleset", "ip"])
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.servers.clear();
        self.udp_servers.clear();
        for ns in [&self.node, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
