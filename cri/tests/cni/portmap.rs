//! hostPorts on the CNI path: the pod's port mappings reach a configured `portmap`
//! plugin (the real one, `/usr/lib/cni/portmap`) as `runtimeConfig.portMappings`, on
//! `ADD` and (from the result cache) on `DEL`. The plugin's iptables rules live in the
//! test's own node namespace.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use nix::sched::CloneFlags;
use nodelet_cri::podnet::{PortMapping, Protocol};
use serde_json::{Value, json};

use super::{Pod, TestNet, in_node_netns, link_client, listen_in, run_ok};

/// A client namespace linked to the node by a veth: the node's end `192.168.78.1/30`,
/// the client `.2`.
fn client_netns(net: &TestNet) -> std::path::PathBuf {
    let pin = net.netns("client");
    link_client(&pin, "192.168.78.1/30", "192.168.78.2/30");
    pin
}

fn send_from(from: &Path, ip: IpAddr, port: u16) -> std::io::Result<()> {
    let ns = fs::File::open(from).expect("open netns pin");
    std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns");
        let mut c = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(3))?;
        c.write_all(b"hello pod")
    })
    .join()
    .expect("client thread")
}

#[test]
fn host_ports_reach_a_portmap_plugin_and_go_with_del() {
    in_node_netns(|| async {
        let net = TestNet::new();
        let cni = net.network(json!([
            net.bridge_plugin(),
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ]));
        let client = client_netns(&net);
        let pod = Pod::new(&net, "pod-a");
        let listener = listen_in(&pod.pin);
        let container_port = listener.local_addr().expect("addr").port();
        let ports = [PortMapping {
            protocol: Protocol::Tcp,
            host_port: 18180,
            container_port,
            host_ip: None,
        }];
        let mut req = pod.req();
        req.port_mappings = &ports;
        let result = cni.setup(&req).await.expect("setup");
        let pod_ip = result.ips[0];

        // The mapping went to portmap (its DNAT rules name the pod's address and port)
        // and is kept in the cache for DEL.
        let nat = run_ok(&["iptables-save", "-t", "nat"]);
        assert!(
            nat.contains(&format!("--to-destination {pod_ip}:{container_port}")),
            "{nat}"
        );
        let entry: Value =
            serde_json::from_slice(&fs::read(net.cache_file(&pod.container_id)).expect("cache"))
                .expect("json");
        assert_eq!(
            entry["capabilityArgs"]["portMappings"],
            json!([{"hostPort": 18180, "containerPort": container_port, "protocol": "tcp"}])
        );

        // From another namespace to the node's address: the pod gets it, and sees the
        // client (DNAT only).
        let node = IpAddr::V4(Ipv4Addr::new(192, 168, 78, 1));
        send_from(&client, node, 18180).expect("client to hostPort");
        let (mut conn, peer) = listener.accept().expect("accept in pod");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = String::new();
        conn.read_to_string(&mut got).expect("read");
        assert_eq!(got, "hello pod");
        assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(192, 168, 78, 2)));

        // DEL without the mappings (as after a restart): portmap gets them from the
        // cache and removes its rules; the hostPort is gone.
        cni.teardown(&pod.req()).await.expect("teardown");
        let nat = run_ok(&["iptables-save", "-t", "nat"]);
        assert!(!nat.contains(&pod_ip.to_string()), "{nat}");
        let err = send_from(&client, node, 18180).expect_err("hostPort gone");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    });
}
