//! Privileged integration tests of pod networking: real network namespaces
//! (`nodelet_cri::netns`) and the real CNI plugins in `/usr/lib/cni` driven by
//! `nodelet_cri::cni`.
//!
//! They need root. Each test runs on its own thread moved into a fresh network namespace
//! that stands in for the node's host namespace: the test's bridge, its veths, the
//! forwarding sysctl the bridge plugin turns on, and all test traffic live there, so the
//! machine's own interfaces, routes, sysctls and firewall are never touched. Inside it each
//! test still uses its own bridge name (`nlt<random>`) and a random /24 in 10.99.0.0/16,
//! `ipMasq` is off (no iptables), and IPAM state, the result cache and the netns pins live
//! in the test's temp dir. RAII guards remove the pins and the bridge even when a test
//! panics.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::sched::CloneFlags;
use nodelet_cri::cni::{
    Cni, CniCommand, CniConfig, CniError, CniRequest, DEFAULT_BIN_DIRS, DefaultNetwork,
};
use nodelet_cri::netns::NetNs;
use serde_json::Value;
use tempfile::TempDir;

#[path = "support/netns.rs"]
mod netns_util;
use netns_util::{ip_json_in, is_up, link, link_client, link_ips, listen_in, run, run_ok};

#[path = "cni/portmap.rs"]
mod portmap;

/// Where Debian's containernetworking-plugins live.
const DEBIAN_PLUGIN_DIR: &str = "/usr/lib/cni";

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((
        std::process::id(),
        SystemTime::now(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
    ))
}

/// Runs `body` in a node namespace of its own (see [`netns_util::in_node_netns`]), once
/// the CNI plugins are known to be installed.
fn in_node_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    assert!(
        Path::new(DEBIAN_PLUGIN_DIR).join("bridge").is_file(),
        "CNI plugins missing: install Debian's containernetworking-plugins ({DEBIAN_PLUGIN_DIR})"
    );
    netns_util::in_node_netns(
        "the CNI integration tests need root: they create network namespaces and run CNI plugins",
        body,
    );
}

/// `ip -j addr show` inside the pinned namespace.
fn addrs_in(pin: &Path) -> Vec<Value> {
    ip_json_in(pin, &["addr", "show"])
}

/// Polls `cond` until it holds, failing the test after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Proves the pod is reachable from the node: a TCP listener bound inside the pod's
/// namespace accepts a connection from the node namespace over the bridge and gets the
/// bytes sent. (ICMP `ping` is not installed on these machines; this checks more anyway.)
fn assert_reachable(pin: &Path, ip: IpAddr) {
    let ns = fs::File::open(pin).expect("open netns pin");
    let listener = std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).expect("setns into pod netns");
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind in pod netns")
    })
    .join()
    .expect("listener thread");
    let port = listener.local_addr().expect("local addr").port();
    let mut client = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to pod {ip}:{port} from the node: {e}"));
    client.write_all(b"hello pod").expect("send");
    drop(client);
    let (mut conn, peer) = listener.accept().expect("accept in pod");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut got = String::new();
    conn.read_to_string(&mut got).expect("read in pod");
    assert_eq!(got, "hello pod");
    assert_ne!(peer.ip(), ip, "the connection came from the node side");
}

/// One test's network: temp dirs, a bridge name, a /24 and the loaded `Cni`. Dropping it
/// removes the netns pins it made and the bridge it named.
struct TestNet {
    dir: TempDir,
    name: String,
    bridge: String,
    octet: u8,
    bin_dirs: Vec<PathBuf>,
    pins: Mutex<Vec<PathBuf>>,
}

impl TestNet {
    fn new() -> TestNet {
        let id = random_u64();
        let dir = tempfile::tempdir().expect("tempdir");
        let bridge = format!("nlt{:08x}", id as u32);
        assert!(
            !run(&["ip", "link", "show", "dev", &bridge])
                .status
                .success(),
            "bridge {bridge} already exists; refusing to touch it"
        );
        TestNet {
            dir,
            name: format!("nlt-test-{:06x}", (id >> 32) as u32 & 0xff_ffff),
            bridge,
            octet: (id >> 56) as u8,
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            pins: Mutex::new(Vec::new()),
        }
    }

    fn cidr(&self) -> String {
        format!("10.99.{}.0/24", self.octet)
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn cni_config(&self) -> CniConfig {
        CniConfig {
            conf_dir: self.conf_dir(),
            bin_dirs: self.bin_dirs.clone(),
            cache_dir: self.cache_dir(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The default bridge + host-local + portmap network, written the way the agent
    /// writes it, with masquerading off.
    fn default_network(&self) -> Cni {
        let written = Cni::write_default_config(
            &self.conf_dir(),
            &DefaultNetwork {
                name: self.name.clone(),
                bridge: self.bridge.clone(),
                pod_cidr: self.cidr(),
                ip_masq: false,
                ipam_data_dir: Some(self.ipam_dir()),
            },
        )
        .expect("write default config");
        assert!(written.is_some(), "conf dir was empty");
        Cni::load(self.cni_config()).expect("load default config")
    }

    /// A network from an explicit plugin list.
    fn network(&self, plugins: Value) -> Cni {
        let list = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": plugins,
        });
        fs::create_dir_all(self.conf_dir()).expect("conf dir");
        fs::write(self.conf_dir().join("10-test.conflist"), list.to_string())
            .expect("write conflist");
        Cni::load(self.cni_config()).expect("load conflist")
    }

    fn bridge_plugin(&self) -> Value {
        serde_json::json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": self.cidr() }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.ipam_dir(),
            },
        })
    }

    /// A new pinned pod namespace, removed when the `TestNet` drops.
    fn netns(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join("netns").join(name);
        self.pins.lock().expect("pins").push(path.clone());
        NetNs::create(&path).expect("create netns");
        assert!(NetNs::is_pinned(&path));
        path
    }

    fn in_cidr(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [10, 99, self.octet] && v4.octets()[3] > 1)
    }

    /// host-local's reservation file for `ip`.
    fn reservation(&self, ip: IpAddr) -> PathBuf {
        self.ipam_dir().join(&self.name).join(ip.to_string())
    }

    fn cache_file(&self, container_id: &str) -> PathBuf {
        self.cache_dir()
            .join("results")
            .join(format!("{}-{container_id}-eth0", self.name))
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let pins = self.pins.get_mut().map(std::mem::take).unwrap_or_default();
        for pin in pins {
            if let Err(e) = NetNs::remove(&pin) {
                eprintln!("cleanup: {e}");
            }
        }
        // Only the bridge this test named (and the plugin created); it lives in the test's
        // own node namespace in any case.
        if run(&["ip", "link", "show", "dev", &self.bridge])
            .status
            .success()
        {
            let out = run(&["ip", "link", "del", "dev", &self.bridge]);
            if !out.status.success() {
                eprintln!(
                    "cleanup: ip link del {}: {}",
                    self.bridge,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

struct Pod {
    container_id: String,
    pin: PathBuf,
}

impl Pod {
    fn new(net: &TestNet, name: &str) -> Pod {
        Pod {
            container_id: format!("{:016x}{:016x}", random_u64(), random_u64()),
            pin: net.netns(name),
        }
    }

    fn req(&self) -> CniRequest<'_> {
        CniRequest {
            container_id: &self.container_id,
            netns: &self.pin,
            ifname: "eth0",
            pod_namespace: "default",
            pod_name: "web-0",
            pod_uid: "5f0e6c1c-1b0e-4c57-9d1e-0c4f4d2b7a10",
            port_mappings: &[],
        }
    }
}

#[test]
fn setup_gives_eth0_an_ip_brings_up_lo_and_is_reachable() {
    in_node_netns(|| async {
        let net = TestNet::new();
        let cni = net.default_network();
        let pod = Pod::new(&net, "pod-a");
        let before = addrs_in(&pod.pin);
        assert!(!is_up(link(&before, "lo").expect("lo")), "lo starts down");

        let result = cni.setup(&pod.req()).await.expect("setup");
        assert_eq!(result.ips.len(), 1, "{:?}", result.ips);
        let ip = result.ips[0];
        assert!(net.in_cidr(ip), "{ip} not in {}", net.cidr());
        assert_eq!(result.raw["cniVersion"], "1.0.0");

        let addrs = addrs_in(&pod.pin);
        let eth0 = link(&addrs, "eth0").expect("eth0 in pod netns");
        assert!(is_up(eth0));
        let eth0_ips = link_ips(eth0);
        assert!(eth0_ips.contains(&format!("{ip}/24")), "{eth0_ips:?}");
        let lo = link(&addrs, "lo").expect("lo");
        assert!(is_up(lo), "lo is up: {lo}");
        assert!(link_ips(lo).contains(&"127.0.0.1/8".to_string()));

        assert!(net.reservation(ip).is_file(), "host-local reserved {ip}");
        let cached: Value = serde_json::from_slice(
            &fs::read(net.cache_file(&pod.container_id)).expect("cached result"),
        )
        .expect("cache json");
        assert_eq!(cached["kind"], "cniCacheV1");
        assert_eq!(cached["result"], result.raw);

        assert_reachable(&pod.pin, ip);
        cni.teardown(&pod.req()).await.expect("teardown");
    });
}

#[test]
fn two_pods_get_different_ips() {
    in_node_netns(|| async {
        let net = TestNet::new();
        let cni = net.default_network();
        let a = Pod::new(&net, "pod-a");
        let b = Pod::new(&net, "pod-b");
        let ra = cni.setup(&a.req()).await.expect("setup a");
        let rb = cni.setup(&b.req()).await.expect("setup b");
        assert_ne!(ra.ips, rb.ips);
        assert!(net.in_cidr(ra.ips[0]) && net.in_cidr(rb.ips[0]));
        assert_reachable(&a.pin, ra.ips[0]);
        assert_reachable(&b.pin, rb.ips[0]);
        cni.teardown(&a.req()).await.expect("teardown a");
        cni.teardown(&b.req()).await.expect("teardown b");
    });
}

#[test]
fn teardown_releases_the_ip_and_the_netns_can_then_be_removed() {
    in_node_netns(|| async {
        let net = TestNet::new();
        let cni = net.default_network();
        let pod = Pod::new(&net, "pod-a");
        let ip = cni.setup(&pod.req()).await.expect("setup").ips[0];
        assert!(net.reservation(ip).is_file());

        cni.teardown(&pod.req()).await.expect("teardown");
        assert!(!net.reservation(ip).exists(), "host-local released {ip}");
        assert!(
            !net.cache_file(&pod.container_id).exists(),
            "cache entry removed"
        );
        let addrs = addrs_in(&pod.pin);
        assert!(link(&addrs, "eth0").is_none(), "eth0 deleted: {addrs:?}");
        assert!(!is_up(link(&addrs, "lo").expect("lo")), "lo down again");

        // Teardown is repeatable, and the namespace goes away cleanly afterwards.
        cni.teardown(&pod.req()).await.expect("second teardown");
        NetNs::remove(&pod.pin).expect("remove netns");
        assert!(!pod.pin.exists());
        assert!(!NetNs::is_pinned(&pod.pin));
        NetNs::remove(&pod.pin).expect("second remove");

        // The released IP is reusable by the next pod.
        let next = Pod::new(&net, "pod-b");
        let again = cni.setup(&next.req()).await.expect("setup next");
        assert!(net.in_cidr(again.ips[0]));
        cni.teardown(&next.req()).await.expect("teardown next");
    });
}

#[test]
fn teardown_after_the_netns_is_gone_still_releases_the_ip() {
    in_node_netns(|| async {
        let net = TestNet::new();
        let cni = net.default_network();
        let pod = Pod::new(&net, "pod-a");
        let ip = cni.setup(&pod.req()).await.expect("setup").ips[0];

        NetNs::remove(&pod.pin).expect("remove netns");
        cni.teardown(&pod.req())
            .await
            .expect("teardown without netns");
        assert!(!net.reservation(ip).exists(), "host-local released {ip}");
        assert!(!net.cache_file(&pod.container_id).exists());

        // With the namespace gone the kernel removes the veth pair; the bridge ends up with
        // no ports.
        wait_for(
            "the pod's veth to leave the bridge",
            Duration::from_secs(10),
            || {
                let out = run_ok(&["ip", "-j", "link", "show", "master", &net.bridge]);
                serde_json::from_str::<Vec<Value>>(&out).is_ok_and(|l| l.is_empty())
            },
        );
    });
}

#[test]
fn broken_config_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("10-broken.conflist"), "{\"cniVersion\": ").expect("write");
    let err = Cni::load(CniConfig {
        conf_dir: dir.path().to_path_buf(),
        bin_dirs: vec![DEBIAN_PLUGIN_DIR.into()],
        cache_dir: dir.path().join("cache"),
        timeout: Duration::from_secs(5),
    })
    .expect_err("invalid JSON must not load");
    let msg = err.to_string();
    assert!(matches!(err, CniError::NoValidConfig { .. }), "{msg}");
    assert!(msg.contains("10-broken.conflist"), "{msg}");
    assert!(msg.contains("invalid JSON"), "{msg}");

    // The agent does not overwrite a config it cannot read: the admin owns it.
    let written = Cni::write_default_config(
        dir.path(),
        &DefaultNetwork {
            name: "nodelet".into(),
            bridge: "nlt-unused".into(),
            pod_cidr: "10.99.0.0/24".into(),
            ip_masq: false,
            ipam_data_dir: None,
        },
    )
    .expect("write_default_config");
    assert_eq!(written, None);
}

#[test]
fn missing_plugin_binary_fails_before_anything_runs() {
    in_node_netns(|| async {
        let net = TestNet::new();
        let cni = net.network(serde_json::json!([
            net.bridge_plugin(),
            { "type": "nlt-no-such-plugin" },
        ]));
        let pod = Pod::new(&net, "pod-a");
        let err = cni.setup(&pod.req()).await.expect_err("missing plugin");
        let msg = err.to_string();
        assert!(
            matches!(&err, CniError::PluginNotFound { plugin, .. } if plugin == "nlt-no-such-plugin"),
            "{msg}"
        );
        assert!(
            msg.contains("/usr/lib/cni") && msg.contains("/opt/cni/bin"),
            "{msg}"
        );
        // Nothing ran: lo is still down, no bridge, no IP reserved.
        let addrs = addrs_in(&pod.pin);
        assert!(!is_up(link(&addrs, "lo").expect("lo")));
        assert!(
            !run(&["ip", "link", "show", "dev", &net.bridge])
                .status
                .success()
        );
        assert!(!net.ipam_dir().join(&net.name).exists());
    });
}

#[test]
fn plugin_failure_carries_the_cni_error_and_setup_cleans_up() {
    in_node_netns(|| async {
        let net = TestNet::new();
        let mut bridge = net.bridge_plugin();
        // A gateway outside the subnet: host-local accepts it, then the bridge plugin fails
        // to add the default route through it (code 999, "network is unreachable").
        bridge["ipam"]["ranges"] =
            serde_json::json!([[{ "subnet": net.cidr(), "gateway": "10.98.0.1" }]]);
        let cni = net.network(serde_json::json!([bridge, { "type": "portmap" }]));
        let pod = Pod::new(&net, "pod-a");
        let err = cni.setup(&pod.req()).await.expect_err("bad ipam");
        let msg = err.to_string();
        let CniError::PluginFailed {
            plugin,
            command,
            error,
            ..
        } = &err
        else {
            panic!("expected PluginFailed, got {msg}");
        };
        assert_eq!(plugin, "bridge");
        assert_eq!(*command, CniCommand::Add);
        let error = error.as_ref().expect("the plugin printed a CNI error");
        assert!(error.code > 0, "{error}");
        assert!(!error.msg.is_empty(), "{error}");
        assert!(msg.contains("CNI plugin bridge ADD failed"), "{msg}");
        eprintln!("plugin failure as reported: {msg}");

        // The failed ADD was undone: no interface, lo down again, nothing cached.
        let addrs = addrs_in(&pod.pin);
        assert!(link(&addrs, "eth0").is_none(), "{addrs:?}");
        assert!(!is_up(link(&addrs, "lo").expect("lo")));
        assert!(!net.cache_file(&pod.container_id).exists());
    });
}

/// Writes an executable shell script plugin into `dir`.
fn script_plugin(dir: &Path, name: &str, body: &str) {
    fs::create_dir_all(dir).expect("bin dir");
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write plugin");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn plugins_get_the_spec_environment_and_prev_result() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let bin = net.dir.path().join("bin");
        let rec = net.dir.path().join("rec");
        fs::create_dir_all(&rec).expect("rec dir");
        let fixed = format!(
            r#"{{"cniVersion":"1.0.0","ips":[{{"address":"10.99.{}.250/24"}}]}}"#,
            net.octet
        );
        script_plugin(
            &bin,
            "nlt-record",
            &format!(
                "cat > '{rec}/stdin-'\"$CNI_COMMAND\"\n\
                 env | grep '^CNI_' | sort > '{rec}/env-'\"$CNI_COMMAND\"\n\
                 [ \"$CNI_COMMAND\" = ADD ] && printf '%s' '{fixed}'\n\
                 exit 0\n",
                rec = rec.display()
            ),
        );
        net.bin_dirs.push(bin.clone());
        let cni = net.network(serde_json::json!([
            net.bridge_plugin(),
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "nlt-record", "marker": 42 },
        ]));
        let pod = Pod::new(&net, "pod-a");
        let result = cni.setup(&pod.req()).await.expect("setup");
        // The last plugin's result is the chain's result.
        assert_eq!(
            result.ips,
            vec![
                format!("10.99.{}.250", net.octet)
                    .parse::<IpAddr>()
                    .expect("ip")
            ]
        );

        let stdin: Value =
            serde_json::from_slice(&fs::read(rec.join("stdin-ADD")).expect("stdin")).expect("json");
        assert_eq!(stdin["name"], net.name.as_str());
        assert_eq!(stdin["cniVersion"], "1.0.0");
        assert_eq!(stdin["marker"], 42);
        // bridge's result, passed through portmap unchanged.
        let prev_ip = stdin["prevResult"]["ips"][0]["address"]
            .as_str()
            .expect("prevResult ip");
        assert!(
            prev_ip.starts_with(&format!("10.99.{}.", net.octet)),
            "{prev_ip}"
        );
        assert_eq!(stdin["prevResult"]["interfaces"][2]["name"], "eth0");

        let env = fs::read_to_string(rec.join("env-ADD")).expect("env");
        let cni_path = format!("/opt/cni/bin:/usr/lib/cni:{}", bin.display());
        for line in [
            format!(
                "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                 K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=5f0e6c1c-1b0e-4c57-9d1e-0c4f4d2b7a10",
                pod.container_id
            ),
            "CNI_COMMAND=ADD".to_string(),
            format!("CNI_CONTAINERID={}", pod.container_id),
            "CNI_IFNAME=eth0".to_string(),
            format!("CNI_NETNS={}", pod.pin.display()),
            format!("CNI_PATH={cni_path}"),
        ] {
            assert!(env.lines().any(|l| l == line), "{line:?} not in\n{env}");
        }

        // DEL runs the chain in reverse with the cached final result as prevResult.
        let real_ip: IpAddr = prev_ip
            .split('/')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("bridge ip");
        cni.teardown(&pod.req()).await.expect("teardown");
        let del: Value =
            serde_json::from_slice(&fs::read(rec.join("stdin-DEL")).expect("stdin")).expect("json");
        assert_eq!(del["prevResult"], result.raw);
        assert!(
            !net.reservation(real_ip).exists(),
            "bridge DEL released {real_ip}"
        );
    });
}

#[test]
fn a_hung_plugin_is_killed_at_the_timeout() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let bin = net.dir.path().join("bin");
        let rec = net.dir.path().join("rec");
        fs::create_dir_all(&rec).expect("rec dir");
        script_plugin(
            &bin,
            "nlt-hang",
            &format!(
                "echo $$ > '{}/pid-'\"$CNI_COMMAND\"\nexec sleep 60\n",
                rec.display()
            ),
        );
        net.bin_dirs.push(bin);
        net.network(serde_json::json!([{ "type": "nlt-hang" }]));
        let cni = Cni::load(CniConfig {
            timeout: Duration::from_millis(500),
            ..net.cni_config()
        })
        .expect("load with a short timeout");
        let pod = Pod::new(&net, "pod-a");
        let started = Instant::now();
        let err = cni.setup(&pod.req()).await.expect_err("hung plugin");
        assert!(
            matches!(&err, CniError::Timeout { plugin, command: CniCommand::Add, .. } if plugin == "nlt-hang"),
            "{err}"
        );
        // ADD timed out, then the cleanup DEL timed out too: two limits, not 60 s.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        for command in ["ADD", "DEL"] {
            let pid = fs::read_to_string(rec.join(format!("pid-{command}")))
                .expect("plugin pid")
                .trim()
                .to_string();
            wait_for(
                &format!("hung {command} plugin {pid} to die"),
                Duration::from_secs(10),
                || {
                    // Gone, or a zombie waiting to be reaped: either way no longer running.
                    fs::read_to_string(format!("/proc/{pid}/stat"))
                        .map(|s| {
                            s.rsplit_once(')')
                                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                        })
                        .unwrap_or(true)
                },
            );
        }
    });
}
