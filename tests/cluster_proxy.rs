//! End-to-end against the real kube-apiserver tier (issue 14): the agent joined to the
//! cluster runs the service proxy in-process by default. The agent runs inside a
//! network namespace the test creates (entered with `nsenter --net`, so mounts stay
//! the host's and containerd sees the pods' netns pins), so its nft table, the pods'
//! bridge and the proxy's health (10256) and metrics (10249) ports all live there; the
//! apiserver's loopback port and the agent's read-only port are relayed across the
//! namespace boundary by the test. The proxy's conntrack timeouts (upstream's defaults)
//! land in that namespace, not the host's. Two web pods and a Service are created
//! through the API; the EndpointSlice controller's slice is programmed, and a client pod
//! on the node reaches the ClusterIP and both backends. The namespace has no default route:
//! a ClusterIP without a rule is unreachable, never sent off the machine. Needs root,
//! `NODELET_TEST_KUBECONFIG` (see `support::cluster`) and the test containerd.

mod support;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};
use support::cluster::{TestNamespace, admin_client, admin_kubeconfig, joined_world, wait_ready};
use support::{BUSYBOX, log_lines, phase, wait_for};

/// A network namespace of the test's own, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip netns add")
            .success();
        assert!(ok, "ip netns add {name}");
        let ns = Self(name);
        assert!(ns.exec(&["ip", "link", "set", "lo", "up"]).status.success());
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Forwards TCP connections to `addr` in the namespace at `listen_ns` to the same
/// address in `connect_ns` (`None`: the test's own namespace). Its threads live as
/// long as the test process.
fn relay(listen_ns: Option<PathBuf>, connect_ns: Option<PathBuf>, addr: SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        if let Some(ns) = &listen_ns {
            enter(ns);
        }
        let listener = TcpListener::bind(addr);
        let listener = match listener {
            Ok(l) => {
                tx.send(Ok(())).expect("report");
                l
            }
            Err(e) => {
                tx.send(Err(e)).expect("report");
                return;
            }
        };
        // Sockets are made in the namespace of the thread that makes them.
        match &connect_ns {
            Some(ns) => enter(ns),
            None => nix::sched::setns(home, nix::sched::CloneFlags::CLONE_NEWNET).expect("back"),
        }
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { continue };
            let Ok(outbound) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
                continue;
            };
            for (mut from, mut to) in [
                (
                    inbound.try_clone().expect("clone"),
                    outbound.try_clone().expect("clone"),
                ),
                (outbound, inbound),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    rx.recv()
        .expect("relay thread")
        .unwrap_or_else(|e| panic!("relay on {addr}: {e}"));
}

/// `GET path` on `127.0.0.1:port` inside the namespace at `ns`: status line and body.
fn get_in(ns: &Path, port: u16, path: &str) -> std::io::Result<(String, String)> {
    let (ns, path) = (ns.to_owned(), path.to_owned());
    std::thread::spawn(move || {
        enter(&ns);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or_default().to_owned();
        Ok((status, body.to_owned()))
    })
    .join()
    .expect("http thread")
}

/// The apiserver's address in a kubeconfig (`server: https://127.0.0.1:PORT`).
fn apiserver_addr(kubeconfig: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).expect("read the kubeconfig");
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server line");
    let hostport = server
        .trim()
        .trim_start_matches("https://")
        .trim_end_matches('/');
    hostport.parse().expect("server is IP:port")
}

/// A ClusterRoleBinding of `system:node-proxier` to the node's user, deleted on drop.
struct ProxierBinding(PathBuf, String);

impl ProxierBinding {
    fn new(kubeconfig: &Path, node: &str) -> Self {
        let name = format!("nodelet-test-proxier-{node}");
        let out = support::cluster::kubectl(
            kubeconfig,
            &[
                "create",
                "clusterrolebinding",
                &name,
                "--clusterrole=system:node-proxier",
                &format!("--user=system:node:{node}"),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(kubeconfig.to_owned(), name)
    }
}

impl Drop for ProxierBinding {
    fn drop(&mut self) {
        let _ = support::cluster::kubectl(
            &self.0,
            &[
                "delete",
                "clusterrolebinding",
                &self.1,
                "--ignore-not-found",
            ],
        );
    }
}

/// A pod bound to `node`.
fn pod(name: &str, node: &str, labels: serde_json::Value, script: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script]}]
        }
    }))
    .expect("pod")
}

/// The text the container `main` of pod `name` wrote, from its log file.
fn pod_output(logs: &Path, namespace: &str, name: &str) -> Vec<String> {
    let prefix = format!("{namespace}_{name}_");
    let Ok(dirs) = std::fs::read_dir(logs) else {
        return Vec::new();
    };
    dirs.flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|d| log_lines(&d.path().join("main/0.log")))
        .map(|(_, text)| text)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn in_agent_proxy_serves_cluster_ips_to_pods_on_the_node() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root (network namespaces)"
    );
    let kubeconfig = admin_kubeconfig();
    let host_established =
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")
            .expect("nf_conntrack loaded")
            .trim()
            .to_owned();
    // Declared first, so it goes after the World (and its agent) on drop.
    let netns = Netns::new(format!("nodelet-test-{}-proxy", std::process::id()));
    let (_cleanup, mut w) = joined_world(&kubeconfig, &["--proxy-mode", "nftables"]).await;
    let client = admin_client(&kubeconfig).await;
    let ns = TestNamespace::new(&client, &kubeconfig, "nlt-proxy", &w.id).await;
    // The node's credential may list Services but not EndpointSlices: a cluster running
    // the proxy in its agents grants the nodes kube-proxy's role (README).
    let _rbac = ProxierBinding::new(&kubeconfig, &w.node);

    // The default proxy mode is nftables: drop the explicit flag so the test runs the
    // default.
    let at = w
        .extra_args
        .iter()
        .position(|a| a == "--proxy-mode")
        .expect("the flag");
    w.extra_args.drain(at..at + 2);
    // The world's pod network, with a route to the service CIDR (10.96.0.0/16) through
    // the bridge: the only way out of a pod, into the node's namespace.
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": w.network,
        "plugins": [{
            "type": "bridge", "bridge": w.bridge, "isGateway": true, "ipMasq": false,
            "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": w.ipam,
                     "ranges": [[{"subnet": format!("10.99.{}.0/24", w.subnet)}]],
                     "routes": [{"dst": "10.96.0.0/16"}]}
        }]
    });
    std::fs::write(w.cni_conf.join("10-test.conflist"), conf.to_string()).expect("CNI config");
    // The agent inside the namespace; the apiserver and the read-only port relayed.
    let node_kubeconfig = w.dir.path().join("node.kubeconfig");
    relay(Some(netns.path()), None, apiserver_addr(&node_kubeconfig));
    relay(
        None,
        Some(netns.path()),
        SocketAddr::from(([127, 0, 0, 1], w.port)),
    );
    let wrapper = w.dir.path().join("nodelet-in-netns");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec nsenter --net={} -- {} \"$@\"\n",
            netns.path().display(),
            env!("CARGO_BIN_EXE_nodelet")
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the wrapper");
    w.start_agent_from(&wrapper).await;
    let nodes: Api<Node> = Api::all(client.clone());
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;

    // The proxy's health and metrics servers answer inside the namespace.
    let np = netns.path();
    let (status, body) = wait_for("/healthz on 10256", Duration::from_secs(30), || {
        let np = np.clone();
        async move { get_in(&np, 10256, "/healthz").ok() }
    })
    .await;
    assert!(status.contains("200"), "{status}: {body}");
    assert!(body.contains("lastUpdated"), "{body}");

    // Upstream's conntrack defaults were applied in the namespace (per-namespace
    // timeouts; the global limit is left to the initial namespace), never to the host.
    let sysctl = |ns: Option<&Netns>, name: &str| {
        let path = format!("/proc/sys/net/netfilter/{name}");
        let text = match ns {
            Some(ns) => String::from_utf8_lossy(&ns.exec(&["cat", &path]).stdout).into_owned(),
            None => std::fs::read_to_string(&path).expect("read the host's sysctl"),
        };
        text.trim().to_owned()
    };
    assert_eq!(
        sysctl(Some(&netns), "nf_conntrack_tcp_timeout_established"),
        "86400"
    );
    assert_eq!(
        sysctl(Some(&netns), "nf_conntrack_tcp_timeout_close_wait"),
        "3600"
    );
    assert_eq!(
        sysctl(None, "nf_conntrack_tcp_timeout_established"),
        host_established,
        "the host's value moved"
    );

    // Two web pods and a Service selecting them, through the API.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();
    for name in ["web-a", "web-b"] {
        let script = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www";
        pods.create(
            &pp,
            &pod(name, &w.node, serde_json::json!({"app": "web"}), script),
        )
        .await
        .expect("create a web pod");
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    }))
    .expect("service");
    let svc = services
        .create(&pp, &svc)
        .await
        .expect("create the Service");
    let vip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP allocated");

    // The EndpointSlice controller's slice for it lists both pods, ready.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns.name);
    let ips = wait_for(
        "an EndpointSlice with both web pods ready",
        Duration::from_secs(90),
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .ok()?;
            let ips: Vec<String> = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .flat_map(|e| e.addresses.clone())
                .collect();
            (ips.len() == 2).then_some(ips)
        },
    )
    .await;

    // Programmed into the namespace's IPv4 tables (`ip nodelet` and its NAT shards
    // `ip nodelet-<n>`): the VIP and both endpoints.
    wait_for("the Service programmed", Duration::from_secs(30), || {
        let out = netns.exec(&["nft", "list", "ruleset", "ip"]);
        let table = String::from_utf8_lossy(&out.stdout).into_owned();
        let done = table.contains(&vip) && ips.iter().all(|ip| table.contains(ip.as_str()));
        async move { done.then_some(()) }
    })
    .await;

    // A client pod on the node reaches the ClusterIP, and both backends answer.
    let script = format!(
        "i=0; while [ $i -lt 300 ]; do wget -qO- http://{vip}/ || echo FAIL; \
         i=$((i+1)); sleep 0.2; done; sleep 3600"
    );
    pods.create(&pp, &pod("client", &w.node, serde_json::json!({}), &script))
        .await
        .expect("create the client pod");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let seen = loop {
        let lines = pod_output(&w.logs, &ns.name, "client");
        if lines.iter().any(|l| l == "web-a") && lines.iter().any(|l| l == "web-b") {
            break lines;
        }
        if std::time::Instant::now() > deadline {
            let table = netns.exec(&["nft", "list", "ruleset"]);
            let tail = lines.len().saturating_sub(20);
            panic!(
                "the client pod did not reach web-a and web-b through {vip}; it wrote:\n{}\n\
                 ruleset in the node's netns:\n{}",
                lines[tail..].join("\n"),
                String::from_utf8_lossy(&table.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let client_pod = pods.get("client").await.expect("the client pod");
    assert_eq!(phase(&client_pod), "Running");
    eprintln!(
        "client pod: {} answers, {} from web-a, {} from web-b",
        seen.len(),
        seen.iter().filter(|l| *l == "web-a").count(),
        seen.iter().filter(|l| *l == "web-b").count()
    );

    // Metrics on 10249 (loopback only, inside the namespace) count the syncs.
    let (status, metrics) = get_in(&np, 10249, "/metrics").expect("/metrics on 10249");
    assert!(status.contains("200"), "{status}");
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // None of it reached the host: the agent's log names the proxy, and its health
    // port is only inside the namespace.
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], 10256)),
            Duration::from_millis(500)
        )
        .is_err(),
        "something answers on the host's 10256"
    );
    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    assert!(
        log.contains("service proxy starting"),
        "no proxy in the agent log"
    );
    w.stop_agent();
}
