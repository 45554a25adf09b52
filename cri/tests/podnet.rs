//! Privileged integration tests of the built-in pod network (`nodelet_cri::podnet`): the
//! same checks the CNI tests make of the bridge + host-local chain, against the in-process
//! bridge, veth, addresses and routes over netlink, the persisted IP allocation and the
//! masquerade table; and hostPorts (what the `portmap` plugin gives) reached from
//! another namespace, from the node, from the pod itself, with `hostIP` honoured.
//!
//! Like the CNI tests, each runs on its own thread moved into a fresh network namespace
//! standing in for the node's: the bridge, the veths, the forwarding sysctl and the nft
//! table live there, so the machine's own network is never touched.
//!
//! IPv6 and dual-stack are in `podnet/dual_stack.rs`, a range switched while pods run in
//! `podnet/range_change.rs`.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::CloneFlags;
use nodelet_cri::netns::NetNs;
use nodelet_cri::podnet::{
    BuiltinNetwork, PodNetError, PodNetwork, PortMapping, Protocol, host_veth_name,
};
use serde_json::Value;
use tempfile::TempDir;

#[path = "support/netns.rs"]
mod netns_util;
use netns_util::{ip_json_in, is_up, link, link_client, link_ips, listen_in, run, run_ok};

#[path = "podnet/dual_stack.rs"]
mod dual_stack;
#[path = "podnet/range_change.rs"]
mod range_change;

/// Runs `body` in a node namespace of its own (see [`netns_util::in_node_netns`]).
fn in_node_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    netns_util::in_node_netns(
        "the built-in network tests need root: they create network namespaces",
        body,
    );
}

/// Connects to `ip:port` from inside `from` (or from the node when `None`).
fn connect_from(from: Option<&Path>, ip: IpAddr, port: u16) {
    let ns = from.map(|p| fs::File::open(p).expect("open netns pin"));
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
        }
        let mut c = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {ip}:{port}: {e}"));
        c.write_all(b"hello pod").expect("send");
    })
    .join()
    .expect("client thread");
}

fn assert_reachable(from: Option<&Path>, pin: &Path, ip: IpAddr) {
    let listener = listen_in(pin);
    let port = listener.local_addr().expect("addr").port();
    connect_from(from, ip, port);
    let (mut conn, _) = listener.accept().expect("accept in pod");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = String::new();
    conn.read_to_string(&mut got).expect("read");
    assert_eq!(got, "hello pod");
}

struct TestNet {
    dir: TempDir,
    bridge: String,
    octet: u8,
    pins: Vec<PathBuf>,
}

impl TestNet {
    fn new() -> TestNet {
        let n = std::process::id()
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()));
        TestNet {
            dir: tempfile::tempdir().expect("tempdir"),
            bridge: format!("nlb{:08x}", n),
            octet: (n % 250 + 1) as u8,
            pins: Vec::new(),
        }
    }

    fn config(&self, prefix: u8, ip_masq: bool) -> BuiltinNetwork {
        BuiltinNetwork {
            bridge: self.bridge.clone(),
            pod_cidr: format!("10.98.{}.0/{prefix}", self.octet),
            ip_masq,
            state_dir: self.dir.path().join("network"),
        }
    }

    fn network(&self, ip_masq: bool) -> PodNetwork {
        PodNetwork::new(self.config(24, ip_masq)).expect("network")
    }

    fn netns(&mut self, name: &str) -> PathBuf {
        let path = self.dir.path().join("netns").join(name);
        NetNs::create(&path).expect("create netns");
        self.pins.push(path.clone());
        path
    }

    fn reservation(&self, ip: IpAddr) -> PathBuf {
        self.dir
            .path()
            .join("network/ipam")
            .join(&self.bridge)
            .join(ip.to_string())
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for pin in &self.pins {
            let _ = NetNs::remove(pin);
        }
        // The bridge lives in the test's own namespace, which goes with its thread.
    }
}

fn id(n: u32) -> String {
    format!("{n:08x}{:056x}", 0xabcdef_u64)
}

#[test]
fn setup_gives_eth0_an_ip_lo_a_default_route_and_is_reachable() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let podnet = net.network(false);
        let pin = net.netns("pod-a");
        let ips = podnet.setup(&id(1), &pin, &[]).await.expect("setup");
        assert_eq!(ips.len(), 1);
        let ip = ips[0];
        let gw = format!("10.98.{}.1", net.octet);
        assert_eq!(ip.to_string(), format!("10.98.{}.2", net.octet));

        let addrs = ip_json_in(&pin, &["addr", "show"]);
        let eth0 = link(&addrs, "eth0").expect("eth0 in pod netns");
        assert!(is_up(eth0));
        assert!(link_ips(eth0).contains(&format!("{ip}/24")), "{eth0}");
        let lo = link(&addrs, "lo").expect("lo");
        assert!(is_up(lo) && link_ips(lo).contains(&"127.0.0.1/8".to_string()));
        let routes = ip_json_in(&pin, &["route", "show"]);
        assert!(
            routes.iter().any(|r| r["dst"] == "default"
                && r["gateway"] == gw.as_str()
                && r["dev"] == "eth0"),
            "{routes:?}"
        );

        // The node side: the bridge with the gateway address, the veth on it, hairpin on.
        let out = run_ok(&["ip", "-j", "addr", "show", "dev", &net.bridge]);
        let bridge: Vec<Value> = serde_json::from_str(&out).expect("json");
        assert!(link_ips(&bridge[0]).contains(&format!("{gw}/24")), "{out}");
        let veth = host_veth_name(&id(1));
        let out = run_ok(&["ip", "-j", "-d", "link", "show", "dev", &veth]);
        let v: Vec<Value> = serde_json::from_str(&out).expect("json");
        assert_eq!(v[0]["master"], net.bridge.as_str(), "{out}");
        assert_eq!(
            v[0]["linkinfo"]["info_slave_data"]["hairpin"], true,
            "{out}"
        );
        assert_eq!(
            fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .expect("sysctl")
                .trim(),
            "1"
        );

        assert!(net.reservation(ip).is_file());
        assert_eq!(
            fs::read_to_string(net.reservation(ip)).expect("reservation"),
            id(1)
        );
        assert_reachable(None, &pin, ip);
        podnet.teardown(&id(1)).await.expect("teardown");
    });
}

#[test]
fn two_pods_get_different_ips_and_reach_each_other_and_themselves() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let podnet = net.network(false);
        let (a, b) = (net.netns("pod-a"), net.netns("pod-b"));
        let ia = podnet.setup(&id(1), &a, &[]).await.expect("setup a")[0];
        let ib = podnet.setup(&id(2), &b, &[]).await.expect("setup b")[0];
        assert_ne!(ia, ib);
        assert_reachable(None, &a, ia);
        assert_reachable(Some(&a), &b, ib);
        assert_reachable(Some(&b), &a, ia);
        // A pod reaches its own IP (over lo; hairpin covers it through a service VIP).
        assert_reachable(Some(&a), &a, ia);
        podnet.teardown(&id(1)).await.expect("teardown a");
        podnet.teardown(&id(2)).await.expect("teardown b");
    });
}

#[test]
fn teardown_releases_the_ip_removes_the_veth_and_is_repeatable() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let podnet = net.network(false);
        let pin = net.netns("pod-a");
        let ip = podnet.setup(&id(1), &pin, &[]).await.expect("setup")[0];
        assert!(podnet.has_veth(&id(1)).await.expect("veth"));
        podnet.teardown(&id(1)).await.expect("teardown");
        assert!(!net.reservation(ip).exists());
        assert!(!podnet.has_veth(&id(1)).await.expect("veth"));
        assert!(link(&ip_json_in(&pin, &["addr", "show"]), "eth0").is_none());
        podnet.teardown(&id(1)).await.expect("second teardown");
        NetNs::remove(&pin).expect("remove netns");

        // Teardown after the netns went first still releases the address.
        let pin = net.netns("pod-b");
        let ip = podnet.setup(&id(2), &pin, &[]).await.expect("setup b")[0];
        NetNs::remove(&pin).expect("remove netns");
        podnet
            .teardown(&id(2))
            .await
            .expect("teardown without netns");
        assert!(!net.reservation(ip).exists());
        // A sandbox the network never saw tears down fine.
        podnet.teardown(&id(99)).await.expect("unknown teardown");
    });
}

#[test]
fn a_restart_never_hands_out_an_address_twice() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let first = net.network(false);
        let a = net.netns("pod-a");
        let ia = first.setup(&id(1), &a, &[]).await.expect("setup a")[0];
        drop(first);
        // A new agent on the same root dir (and a second one beside it).
        let again = net.network(false);
        let other = net.network(false);
        let b = net.netns("pod-b");
        let c = net.netns("pod-c");
        let ib = again.setup(&id(2), &b, &[]).await.expect("setup b")[0];
        let ic = other.setup(&id(3), &c, &[]).await.expect("setup c")[0];
        assert!(ia != ib && ib != ic && ia != ic, "{ia} {ib} {ic}");
        assert!(again.holds(&id(1)).await.expect("holds"));
        again.teardown(&id(1)).await.expect("teardown a");
        again.teardown(&id(2)).await.expect("teardown b");
        other.teardown(&id(3)).await.expect("teardown c");
    });
}

#[test]
fn an_exhausted_range_fails_clearly_and_leaks_nothing() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        // A /30: the gateway and one pod address.
        let podnet = PodNetwork::new(net.config(30, false)).expect("network");
        let a = net.netns("pod-a");
        let b = net.netns("pod-b");
        podnet.setup(&id(1), &a, &[]).await.expect("setup a");
        let err = podnet
            .setup(&id(2), &b, &[])
            .await
            .expect_err("range is full");
        assert!(matches!(err, PodNetError::Exhausted { .. }), "{err}");
        assert!(
            err.to_string().contains("no IP addresses available"),
            "{err}"
        );
        assert!(!podnet.has_veth(&id(2)).await.expect("veth"));
        assert!(link(&ip_json_in(&b, &["addr", "show"]), "eth0").is_none());
        podnet.teardown(&id(1)).await.expect("teardown");
        podnet
            .setup(&id(2), &b, &[])
            .await
            .expect("setup b after a left");
        podnet.teardown(&id(2)).await.expect("teardown b");
    });
}

#[test]
fn masquerade_table_comes_with_the_first_pod_and_goes_with_the_last() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let podnet = net.network(true);
        let table = format!("nodelet-pods-{}", net.bridge);
        let has_table = || {
            run(&["nft", "list", "table", "ip", &table])
                .status
                .success()
        };
        assert!(!has_table());
        let (a, b) = (net.netns("pod-a"), net.netns("pod-b"));
        podnet.setup(&id(1), &a, &[]).await.expect("setup a");
        podnet.setup(&id(2), &b, &[]).await.expect("setup b");
        let rules = run_ok(&["nft", "list", "table", "ip", &table]);
        let cidr = format!("10.98.{}.0/24", net.octet);
        assert!(
            rules.contains(&format!("ip saddr {cidr} ip daddr != {cidr}"))
                && rules.contains("masquerade"),
            "{rules}"
        );
        podnet.teardown(&id(1)).await.expect("teardown a");
        assert!(has_table(), "one pod is left");
        podnet.teardown(&id(2)).await.expect("teardown b");
        assert!(!has_table(), "removed with the last pod");
    });
}

/// Connects to `ip:port` from inside `from` (or the node) and sends a line; the error
/// when the connection fails.
fn try_send_from(from: Option<&Path>, ip: IpAddr, port: u16) -> std::io::Result<()> {
    let ns = from.map(|p| fs::File::open(p).expect("open netns pin"));
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
        }
        let mut c = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(3))?;
        c.write_all(b"hello pod")
    })
    .join()
    .expect("client thread")
}

/// What the pod's listener gets next, and from where.
fn receive(listener: &TcpListener) -> (String, IpAddr) {
    listener.set_nonblocking(false).expect("blocking");
    let (mut conn, peer) = listener.accept().expect("accept in pod");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = String::new();
    conn.read_to_string(&mut got).expect("read");
    (got, peer.ip())
}

/// A UDP socket inside `pin`'s namespace.
fn udp_in(pin: &Path) -> UdpSocket {
    let ns = fs::File::open(pin).expect("open netns pin");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into pod netns");
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind udp in pod netns")
    })
    .join()
    .expect("udp thread")
}

/// A client namespace linked to the node by a veth: the node's end `192.168.77.1/30`
/// (a node address, the way an external client reaches it), the client `.2`.
fn client_netns(net: &mut TestNet) -> PathBuf {
    let pin = net.netns("client");
    link_client(&pin, "192.168.77.1/30", "192.168.77.2/30");
    pin
}

#[test]
fn host_ports_reach_the_pod_from_outside_the_node_and_the_pod_itself() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let podnet = net.network(true);
        // A node has its loopback up (a fresh namespace does not).
        run_ok(&["ip", "link", "set", "lo", "up"]);
        let client = client_netns(&mut net);
        let pin = net.netns("pod-a");
        let listener = listen_in(&pin);
        let container_port = listener.local_addr().expect("addr").port();
        let udp = udp_in(&pin);
        let udp_port = udp.local_addr().expect("addr").port();
        let node = IpAddr::V4(Ipv4Addr::new(192, 168, 77, 1));
        let ports = [
            PortMapping {
                protocol: Protocol::Tcp,
                host_port: 18080,
                container_port,
                host_ip: None,
            },
            PortMapping {
                protocol: Protocol::Tcp,
                host_port: 18081,
                container_port,
                host_ip: Some(Ipv4Addr::new(192, 168, 77, 1).into()),
            },
            PortMapping {
                protocol: Protocol::Udp,
                host_port: 15353,
                container_port: udp_port,
                host_ip: None,
            },
        ];
        let ip = podnet.setup(&id(1), &pin, &ports).await.expect("setup")[0];
        let table = format!("nodelet-pods-{}", net.bridge);
        let rules = run_ok(&["nft", "list", "table", "ip", &table]);
        assert!(
            rules.contains(&format!("tcp dport 18080 dnat to {ip}:{container_port}")),
            "{rules}"
        );

        // From another namespace, to a node address: DNAT, no SNAT (the pod sees the
        // client), as portmap does.
        try_send_from(Some(&client), node, 18080).expect("client to hostPort");
        assert_eq!(
            receive(&listener),
            ("hello pod".into(), "192.168.77.2".parse().expect("ip"))
        );
        try_send_from(Some(&client), node, 18081).expect("client to hostIP:hostPort");
        assert_eq!(receive(&listener).0, "hello pod");
        // From the node itself: its localhost (masqueraded, route_localnet on the
        // bridge) and the gateway address.
        try_send_from(None, IpAddr::V4(Ipv4Addr::LOCALHOST), 18080).expect("node localhost");
        assert_eq!(receive(&listener).0, "hello pod");
        let gw: IpAddr = format!("10.98.{}.1", net.octet).parse().expect("gw");
        try_send_from(None, gw, 18080).expect("node to gateway:hostPort");
        assert_eq!(receive(&listener).0, "hello pod");
        // Hairpin: the pod through its own hostPort, masqueraded so the reply returns.
        try_send_from(Some(&pin), node, 18080).expect("hairpin");
        let (got, from) = receive(&listener);
        assert_eq!(got, "hello pod");
        assert_eq!(from, gw, "hairpin traffic is masqueraded to the bridge");
        // hostIP honoured: 18081 only on 192.168.77.1, so localhost has nothing there.
        let err = try_send_from(None, IpAddr::V4(Ipv4Addr::LOCALHOST), 18081)
            .expect_err("hostPort bound to another hostIP");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        // UDP from the client.
        let ns = fs::File::open(&client).expect("pin");
        std::thread::spawn(move || {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
            s.send_to(b"dns?", (Ipv4Addr::new(192, 168, 77, 1), 15353))
                .expect("send");
        })
        .join()
        .expect("udp client");
        udp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        let (n, _) = udp.recv_from(&mut buf).expect("udp through the hostPort");
        assert_eq!(&buf[..n], b"dns?");

        // A new agent on the same state (a restart) keeps the pod's hostPorts when
        // another pod comes, and removes them with the pod.
        drop(podnet);
        let again = net.network(true);
        let b = net.netns("pod-b");
        again.setup(&id(2), &b, &[]).await.expect("setup b");
        try_send_from(Some(&client), node, 18080).expect("still mapped after a restart");
        assert_eq!(receive(&listener).0, "hello pod");
        again.teardown(&id(1)).await.expect("teardown a");
        let rules = run_ok(&["nft", "list", "table", "ip", &table]);
        assert!(!rules.contains("dnat"), "{rules}");
        let err = try_send_from(Some(&client), node, 18080).expect_err("unmapped");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        again.teardown(&id(2)).await.expect("teardown b");
        assert!(
            !run(&["nft", "list", "table", "ip", &table])
                .status
                .success()
        );
    });
}
