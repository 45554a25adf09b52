//! The built-in pod network in IPv6 and dual-stack (`--pod-cidr` with an IPv6 range, or
//! one per family): addresses, routes and gateways per family (IPv6 without DAD),
//! pod to pod and pod to gateway over IPv6 across the bridge, the `ip` and `ip6` tables,
//! allocations kept over a restart, a small IPv6 range exhausted, and hostPorts over
//! IPv6 from a client namespace with `hostIP`'s family honoured. Same isolation as the
//! rest of `podnet.rs`: everything lives in the test's own node namespace.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nodelet_cri::podnet::{BuiltinNetwork, PodNetError, PodNetwork, PortMapping, Protocol};
use serde_json::Value;

use super::{
    TestNet, client_netns, id, in_node_netns, ip_json_in, link, link_ips, receive, run, run_ok,
    try_send_from,
};

impl TestNet {
    /// This test's IPv6 range.
    fn cidr6(&self, prefix: u8) -> String {
        format!("fd98:{:x}::/{prefix}", self.octet)
    }

    fn network_with(&self, pod_cidr: String, ip_masq: bool) -> PodNetwork {
        PodNetwork::new(BuiltinNetwork {
            pod_cidr,
            ..self.config(24, ip_masq)
        })
        .expect("network")
    }

    fn dual_stack(&self, ip_masq: bool) -> PodNetwork {
        self.network_with(
            format!("10.98.{}.0/24,{}", self.octet, self.cidr6(64)),
            ip_masq,
        )
    }

    fn gateway6(&self) -> IpAddr {
        format!("fd98:{:x}::1", self.octet).parse().expect("gw6")
    }
}

/// A TCP listener on every address of both families inside `pin` (or the node).
fn listen6_in(pin: Option<&Path>) -> TcpListener {
    let ns = pin.map(|p| fs::File::open(p).expect("open netns pin"));
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into pod netns");
        }
        TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)).expect("bind [::]")
    })
    .join()
    .expect("listener thread")
}

/// Sends a line to `ip:port` from `from` and checks `listener` gets it; the peer.
fn round_trip(from: Option<&Path>, listener: &TcpListener, ip: IpAddr, port: u16) -> IpAddr {
    try_send_from(from, ip, port).unwrap_or_else(|e| panic!("connect to [{ip}]:{port}: {e}"));
    let (got, peer) = receive(listener);
    assert_eq!(got, "hello pod");
    peer.to_canonical()
}

fn sysctl(path: &str) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .to_owned()
}

#[test]
fn ipv6_only_pods_reach_each_other_and_the_gateway_across_the_bridge() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        run_ok(&["ip", "link", "set", "lo", "up"]);
        let podnet = net.network_with(net.cidr6(64), false);
        let (a, b) = (net.netns("pod-a"), net.netns("pod-b"));
        let ia = podnet.setup(&id(1), &a, &[]).await.expect("setup a");
        let ib = podnet.setup(&id(2), &b, &[]).await.expect("setup b");
        assert_eq!(ia.len(), 1, "{ia:?}");
        let (ia, ib) = (ia[0], ib[0]);
        assert_eq!(ia.to_string(), format!("fd98:{:x}::2", net.octet));
        assert!(ib.is_ipv6() && ia != ib, "{ib}");

        let addrs = ip_json_in(&a, &["-6", "addr", "show", "dev", "eth0"]);
        let eth0 = link(&addrs, "eth0").expect("eth0");
        assert!(link_ips(eth0).contains(&format!("{ia}/64")), "{eth0}");
        // No DAD (IFA_F_NODAD): usable at once, never tentative.
        let info = eth0["addr_info"].as_array().expect("addr_info");
        let pod_addr = info
            .iter()
            .find(|i| i["local"] == ia.to_string().as_str())
            .expect("pod address");
        assert_eq!(pod_addr["nodad"], true, "{pod_addr}");
        assert!(pod_addr.get("tentative").is_none(), "{pod_addr}");
        let routes = ip_json_in(&a, &["-6", "route", "show"]);
        let gw = net.gateway6();
        assert!(
            routes.iter().any(|r| r["dst"] == "default"
                && r["gateway"] == gw.to_string().as_str()
                && r["dev"] == "eth0"),
            "{routes:?}"
        );
        // No IPv4 on a v6-only network.
        assert!(ip_json_in(&a, &["-4", "route", "show"]).is_empty());
        // The node side: the bridge holds the gateway, and the namespace forwards IPv6.
        let out = run_ok(&["ip", "-j", "-6", "addr", "show", "dev", &net.bridge]);
        let bridge: Vec<Value> = serde_json::from_str(&out).expect("json");
        assert!(link_ips(&bridge[0]).contains(&format!("{gw}/64")), "{out}");
        assert_eq!(sysctl("/proc/sys/net/ipv6/conf/all/forwarding"), "1");
        assert_eq!(
            sysctl(&format!("/proc/sys/net/ipv6/conf/{}/accept_ra", net.bridge)),
            "0"
        );
        assert!(net.reservation(ia).is_file());

        // Pod to pod across the bridge, both ways, and a pod to itself.
        let la = listen6_in(Some(&a));
        let lb = listen6_in(Some(&b));
        let (pa, pb) = (
            la.local_addr().expect("addr").port(),
            lb.local_addr().expect("addr").port(),
        );
        assert_eq!(round_trip(Some(&a), &lb, ib, pb), ia);
        assert_eq!(round_trip(Some(&b), &la, ia, pa), ib);
        assert_eq!(round_trip(Some(&a), &la, ia, pa), ia);
        // The node to a pod, and a pod to the node's gateway address.
        round_trip(None, &la, ia, pa);
        let node = listen6_in(None);
        let pn = node.local_addr().expect("addr").port();
        assert_eq!(round_trip(Some(&b), &node, gw, pn), ib);

        podnet.teardown(&id(1)).await.expect("teardown a");
        podnet.teardown(&id(2)).await.expect("teardown b");
        assert!(!net.reservation(ia).exists());
        assert!(!podnet.has_veth(&id(1)).await.expect("veth"));
    });
}

#[test]
fn dual_stack_pods_get_both_addresses_in_the_ranges_order_and_keep_them_over_a_restart() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let podnet = net.dual_stack(true);
        let table = format!("nodelet-pods-{}", net.bridge);
        let has_table = |family: &str| {
            run(&["nft", "list", "table", family, &table])
                .status
                .success()
        };
        let (a, b) = (net.netns("pod-a"), net.netns("pod-b"));
        let ia = podnet.setup(&id(1), &a, &[]).await.expect("setup a");
        assert_eq!(ia.len(), 2, "{ia:?}");
        assert!(
            ia[0].is_ipv4() && ia[1].is_ipv6(),
            "first range first: {ia:?}"
        );
        assert_eq!(ia[0].to_string(), format!("10.98.{}.2", net.octet));
        assert_eq!(ia[1].to_string(), format!("fd98:{:x}::2", net.octet));
        let addrs = ip_json_in(&a, &["addr", "show", "dev", "eth0"]);
        let ips = link_ips(link(&addrs, "eth0").expect("eth0"));
        assert!(
            ips.contains(&format!("{}/24", ia[0])) && ips.contains(&format!("{}/64", ia[1])),
            "{ips:?}"
        );
        for family in ["-4", "-6"] {
            let routes = ip_json_in(&a, &[family, "route", "show", "default"]);
            assert_eq!(routes.len(), 1, "{family}: {routes:?}");
        }
        // The masquerade per family, in an ip and an ip6 table of one name.
        let rules4 = run_ok(&["nft", "list", "table", "ip", &table]);
        assert!(
            rules4.contains(&format!("ip saddr 10.98.{}.0/24", net.octet)),
            "{rules4}"
        );
        let rules6 = run_ok(&["nft", "list", "table", "ip6", &table]);
        let cidr6 = net.cidr6(64);
        assert!(
            rules6.contains(&format!(
                "ip6 saddr {cidr6} ip6 daddr != {cidr6} ip6 daddr != ff00::/8 masquerade"
            )),
            "{rules6}"
        );

        // A restart (a new network on the same state) and a second agent beside it:
        // no address is handed out twice, in either family.
        drop(podnet);
        let again = net.dual_stack(true);
        let other = net.dual_stack(true);
        let ib = again.setup(&id(2), &b, &[]).await.expect("setup b");
        let c = net.netns("pod-c");
        let ic = other.setup(&id(3), &c, &[]).await.expect("setup c");
        let mut all: Vec<IpAddr> = ia.iter().chain(&ib).chain(&ic).copied().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6, "{ia:?} {ib:?} {ic:?}");
        assert!(again.holds(&id(1)).await.expect("holds"));
        assert_eq!(again.allocated_ids().await.expect("ids").len(), 3);
        // Both families work for the restarted agent's pod.
        let la = listen6_in(Some(&a));
        let pa = la.local_addr().expect("addr").port();
        assert_eq!(round_trip(Some(&b), &la, ia[0], pa), ib[0]);
        assert_eq!(round_trip(Some(&b), &la, ia[1], pa), ib[1]);

        again.teardown(&id(1)).await.expect("teardown a");
        again.teardown(&id(2)).await.expect("teardown b");
        assert!(has_table("ip") && has_table("ip6"), "one pod is left");
        other.teardown(&id(3)).await.expect("teardown c");
        assert!(
            !has_table("ip") && !has_table("ip6"),
            "both tables go with the last pod"
        );
        for ip in all {
            assert!(!net.reservation(ip).exists(), "{ip} released");
        }
    });
}

#[test]
fn an_exhausted_ipv6_range_fails_clearly_and_gives_the_ipv4_address_back() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        // A /126: the gateway and two pod addresses (no broadcast in IPv6).
        let cidr6 = net.cidr6(126);
        let podnet = net.network_with(format!("10.98.{}.0/24,{cidr6}", net.octet), false);
        let pins: Vec<PathBuf> = (0..3).map(|i| net.netns(&format!("pod-{i}"))).collect();
        let first = podnet.setup(&id(0), &pins[0], &[]).await.expect("setup 0");
        podnet.setup(&id(1), &pins[1], &[]).await.expect("setup 1");
        assert_eq!(first[1].to_string(), format!("fd98:{:x}::2", net.octet));
        let err = podnet
            .setup(&id(2), &pins[2], &[])
            .await
            .expect_err("the IPv6 range is full");
        assert!(matches!(err, PodNetError::Exhausted { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("no IP addresses available in range set: {cidr6}")
        );
        // Nothing of the attempt is left: not its IPv4 address, not a veth.
        assert!(!podnet.holds(&id(2)).await.expect("holds"));
        assert_eq!(podnet.allocated_ids().await.expect("ids").len(), 2);
        assert!(!podnet.has_veth(&id(2)).await.expect("veth"));
        assert!(link(&ip_json_in(&pins[2], &["addr", "show"]), "eth0").is_none());
        podnet.teardown(&id(0)).await.expect("teardown 0");
        let got = podnet
            .setup(&id(2), &pins[2], &[])
            .await
            .expect("setup after one left");
        assert_eq!(got[1], first[1], "the freed IPv6 address");
        podnet.teardown(&id(1)).await.expect("teardown 1");
        podnet.teardown(&id(2)).await.expect("teardown 2");
    });
}

#[test]
fn two_ranges_of_one_family_are_refused_naming_the_flag() {
    let net = TestNet::new();
    for cidr in ["10.1.0.0/16,10.2.0.0/16", "fd00:1::/64,fd00:2::/64"] {
        let err = PodNetwork::new(BuiltinNetwork {
            pod_cidr: cidr.into(),
            ..net.config(24, false)
        })
        .expect_err("two of one family");
        assert!(
            err.to_string().contains("--pod-cidr") && err.to_string().contains("per IP family"),
            "{err}"
        );
    }
}

/// A client namespace linked to the node over IPv6 (and IPv4): the node's end
/// `fd77::1/64` and `192.168.77.1/30`, the client `fd77::2` and `.2`.
fn client_netns6(net: &mut TestNet) -> PathBuf {
    let pin = client_netns(net);
    run_ok(&["ip", "addr", "add", "fd77::1/64", "dev", "nlc0", "nodad"]);
    let net_arg = format!("--net={}", pin.display());
    run_ok(&[
        "nsenter",
        &net_arg,
        "ip",
        "addr",
        "add",
        "fd77::2/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    pin
}

#[test]
fn ipv6_host_ports_reach_the_pod_from_a_client_and_honour_the_host_ips_family() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let podnet = net.dual_stack(true);
        run_ok(&["ip", "link", "set", "lo", "up"]);
        let client = client_netns6(&mut net);
        let pin = net.netns("pod-a");
        let listener = listen6_in(Some(&pin));
        let container_port = listener.local_addr().expect("addr").port();
        let node6: IpAddr = "fd77::1".parse().expect("ip");
        let node4 = IpAddr::V4(Ipv4Addr::new(192, 168, 77, 1));
        let tcp = |host_port, host_ip: Option<&str>| PortMapping {
            protocol: Protocol::Tcp,
            host_port,
            container_port,
            host_ip: host_ip.map(|h| h.parse().expect("ip")),
        };
        let ports = [
            tcp(18090, None),
            tcp(18091, Some("fd77::1")),
            tcp(18092, Some("192.168.77.1")),
        ];
        let ips = podnet.setup(&id(1), &pin, &ports).await.expect("setup");
        let (ip4, ip6) = (ips[0], ips[1]);
        let table = format!("nodelet-pods-{}", net.bridge);
        let rules6 = run_ok(&["nft", "list", "table", "ip6", &table]);
        assert!(
            rules6.contains(&format!("tcp dport 18090 dnat to [{ip6}]:{container_port}")),
            "{rules6}"
        );
        assert!(
            !rules6.contains("18092"),
            "an IPv4 hostIP maps no IPv6: {rules6}"
        );
        let rules4 = run_ok(&["nft", "list", "table", "ip", &table]);
        assert!(
            !rules4.contains("18091"),
            "an IPv6 hostIP maps no IPv4: {rules4}"
        );

        // An unset hostIP maps both families: the client reaches the pod over either,
        // and the pod sees the client (DNAT, no SNAT).
        let client6: IpAddr = "fd77::2".parse().expect("ip");
        assert_eq!(round_trip(Some(&client), &listener, node6, 18090), client6);
        assert_eq!(
            round_trip(Some(&client), &listener, node4, 18090),
            IpAddr::V4(Ipv4Addr::new(192, 168, 77, 2))
        );
        // Each hostIP only in its family.
        round_trip(Some(&client), &listener, node6, 18091);
        round_trip(Some(&client), &listener, node4, 18092);
        for (ip, port) in [(node6, 18092), (node4, 18091)] {
            let err = try_send_from(Some(&client), ip, port).expect_err("not mapped");
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{ip} {port}: {err}"
            );
        }
        // From the node to its IPv6 gateway address, and hairpin over IPv6.
        round_trip(None, &listener, net.gateway6(), 18090);
        assert_eq!(
            round_trip(Some(&pin), &listener, node6, 18090),
            net.gateway6(),
            "hairpin traffic is masqueraded to the bridge"
        );
        let _ = ip4;

        podnet.teardown(&id(1)).await.expect("teardown");
        let err = try_send_from(Some(&client), node6, 18090).expect_err("unmapped");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        for family in ["ip", "ip6"] {
            assert!(
                !run(&["nft", "list", "table", family, &table])
                    .status
                    .success()
            );
        }
    });
}
