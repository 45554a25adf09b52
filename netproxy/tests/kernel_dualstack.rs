//! Dual-stack against the real kernel, in throwaway namespaces (see `support`): an IPv4
//! and an IPv6 proxier at once in the same node namespace, as `nodelet proxy` runs them on
//! a node with addresses of both families. One dual-stack LoadBalancer service with
//! `externalTrafficPolicy: Local` is programmed into `table ip nodelet` and `table ip6
//! nodelet`; the client reaches both ClusterIPs, and the service's health-check node port
//! answers on the node's IPv4 and IPv6 addresses, each family counting its own local
//! endpoints. Needs root.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nodelet_netproxy::Proxier;
use nodelet_netproxy::health::ProxyHealth;
use nodelet_netproxy::health::service::ServiceHealthServer;
use nodelet_netproxy::model::{IpFamily, NodeTopology};
use nodelet_netproxy::nft::RenderConfig;
use nodelet_netproxy::nft::exec::NftCommand;
use nodelet_netproxy::testing::{ep, service, slice};
use serde_json::json;
use support::{NODE_IP, World, enter, in_ns, ip};

const NODE_IP6: &str = "fd00:77::1";
const HC_PORT: u16 = 31999;

/// `GET /` from namespace `ns` to `addr`: status code and body.
fn get_from(ns: &str, addr: SocketAddr) -> std::io::Result<(u16, String)> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: node\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, text))
    })
    .join()
    .expect("client thread")
}

#[test]
fn both_families_are_programmed_and_serve_health_check_node_ports() {
    let mut w = World::new();
    // IPv6 beside the world's IPv4: node and client on the veth, the IPv6 service CIDR
    // routed to the node.
    ip(&[
        "-n",
        &w.node,
        "addr",
        "add",
        &format!("{NODE_IP6}/64"),
        "dev",
        "vn",
        "nodad",
    ]);
    ip(&[
        "-n",
        &w.client,
        "addr",
        "add",
        "fd00:77::2/64",
        "dev",
        "vc",
        "nodad",
    ]);
    ip(&["-n", &w.node, "route", "add", "fd00:30::/108", "dev", "vn"]);
    ip(&[
        "-n",
        &w.client,
        "route",
        "add",
        "fd00:30::/108",
        "via",
        NODE_IP6,
    ]);
    w.endpoint("10.180.0.71", 8080);
    w.endpoint("fd00:180::71", 8080);
    // The slice's remote endpoint (node-b) answers too: a ClusterIP uses every ready
    // endpoint, wherever it is (only the external traffic policy is Local).
    w.endpoint("fd00:180::72", 8080);

    let svc = service(
        "ns",
        "ds",
        json!({"type": "LoadBalancer", "clusterIP": "172.30.0.70",
               "clusterIPs": ["172.30.0.70", "fd00:30::70"], "ipFamilies": ["IPv4", "IPv6"],
               "ipFamilyPolicy": "RequireDualStack", "externalTrafficPolicy": "Local",
               "healthCheckNodePort": HC_PORT,
               "ports": [{"name": "http", "port": 80, "nodePort": 30870, "protocol": "TCP"}]}),
        None,
    );
    let slice4 = slice(
        "ns",
        "ds",
        "ds-4",
        "http",
        8080,
        &[ep("10.180.0.71", "node-a")],
    );
    let slice6: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": "ds-6", "labels": {"kubernetes.io/service-name": "ds"}},
        "addressType": "IPv6",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["fd00:180::71"], "nodeName": "node-a",
                       "conditions": {"ready": true}},
                      {"addresses": ["fd00:180::72"], "nodeName": "node-b",
                       "conditions": {"ready": true}}]
    }))
    .expect("slice");

    // The proxiers and their health-check servers live on a thread inside the node
    // namespace (the servers' sockets are made there), as the agent's would.
    let node = w.node.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy = std::thread::spawn(move || {
        enter(&node);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let health = ProxyHealth::new(Duration::from_secs(60));
            let mut kept = Vec::new();
            for (family, cidr, svc_cidr) in [
                (IpFamily::V4, "10.180.0.0/16", "172.30.0.0/16"),
                (IpFamily::V6, "fd00:180::/64", "fd00:30::/108"),
            ] {
                let mut cfg = RenderConfig::new(family);
                cfg.cluster_cidrs = vec![cidr.parse().expect("cidr")];
                cfg.service_cidrs = vec![svc_cidr.parse().expect("cidr")];
                let mut p = Proxier::new(
                    NftCommand::new().in_netns(&node),
                    cfg,
                    NodeTopology {
                        node_name: "node-a".into(),
                        zone: None,
                    },
                );
                p.service_updated(&svc);
                p.slice_updated(&slice4);
                p.slice_updated(&slice6);
                p.sync().await.expect("sync");
                health.updated(family);
                let mut hc = ServiceHealthServer::new(health.clone(), family, Vec::new());
                hc.sync(&p.health_check_node_ports());
                kept.push((p, hc));
            }
            ready_tx.send(()).expect("ready");
            let _ = stop_rx.await;
            drop(kept);
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("both proxiers synced");

    let tables = in_ns(&w.node, &["nft", "list", "tables"]);
    assert!(
        tables.contains("table ip nodelet") && tables.contains("table ip6 nodelet"),
        "{tables}"
    );
    assert_eq!(
        w.connect("172.30.0.70", 80).expect("IPv4 ClusterIP"),
        "10.180.0.71"
    );
    let answer = w.connect("fd00:30::70", 80).expect("IPv6 ClusterIP");
    assert!(
        ["fd00:180::71", "fd00:180::72"].contains(&answer.as_str()),
        "{answer}"
    );

    for addr in [
        SocketAddr::new(NODE_IP.parse().expect("ip"), HC_PORT),
        SocketAddr::new(NODE_IP6.parse().expect("ip"), HC_PORT),
    ] {
        let (code, text) = get_from(&w.client, addr)
            .unwrap_or_else(|e| panic!("health-check node port on {addr}: {e}"));
        assert_eq!(code, 200, "{addr}: {text}");
        assert!(text.contains("\"localEndpoints\": 1"), "{addr}: {text}");
        assert!(text.contains("\"name\": \"ds\""), "{addr}: {text}");
    }
    let _ = stop_tx.send(());
    proxy.join().expect("proxy thread");
}
