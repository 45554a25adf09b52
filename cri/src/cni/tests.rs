//! Unit tests of `cni/mod.rs`.

use super::*;
use serde_json::json;

pub(super) fn cfg(dir: &Path) -> CniConfig {
    CniConfig {
        conf_dir: dir.to_path_buf(),
        bin_dirs: vec!["/nonexistent".into()],
        cache_dir: dir.join("cache"),
        timeout: Duration::from_secs(5),
    }
}

pub(super) fn req<'a>(netns: &'a Path) -> CniRequest<'a> {
    CniRequest {
        container_id: "abc123",
        netns,
        ifname: "eth0",
        pod_namespace: "default",
        pod_name: "web-0",
        pod_uid: "0b2e-11",
        port_mappings: &[],
    }
}

pub(super) const LIST: &str =
    r#"{"cniVersion":"1.0.0","name":"net1","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#;

#[test]
fn stdin_injects_name_version_and_prev_result() {
    let plugin = PluginConf {
        plugin_type: "portmap".into(),
        conf: json!({"type": "portmap", "name": "ignored", "snat": true})
            .as_object()
            .cloned()
            .expect("object"),
    };
    let prev = json!({"cniVersion": "1.0.0", "ips": []});
    let stdin = plugin_stdin(&plugin, "net1", "1.0.0", Some(&prev), &Map::new()).expect("stdin");
    let v: Value = serde_json::from_slice(&stdin).expect("json");
    assert_eq!(v["name"], "net1");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["snat"], true);
    assert_eq!(v["prevResult"], prev);
    let v: Value = serde_json::from_slice(
        &plugin_stdin(&plugin, "n", "0.4.0", None, &Map::new()).expect("stdin"),
    )
    .expect("json");
    assert!(v.get("prevResult").is_none());
    assert!(v.get("runtimeConfig").is_none());
}

#[test]
fn port_mappings_go_only_to_plugins_with_the_capability() {
    use crate::podnet::{PortMapping, Protocol};
    let ports = [
        PortMapping {
            protocol: Protocol::Tcp,
            host_port: 8080,
            container_port: 80,
            host_ip: None,
        },
        PortMapping {
            protocol: Protocol::Udp,
            host_port: 5353,
            container_port: 53,
            host_ip: Some("fd00::1".parse().expect("ip")),
        },
    ];
    let caps = capability_args(&ports);
    let want = json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "fd00::1"},
    ]);
    assert_eq!(caps["portMappings"], want);
    assert!(capability_args(&[]).is_empty());
    let conf = |v: Value| PluginConf {
        plugin_type: "x".into(),
        conf: v.as_object().cloned().expect("object"),
    };
    let stdin = |p: &PluginConf| -> Value {
        serde_json::from_slice(&plugin_stdin(p, "n", "1.0.0", None, &caps).expect("stdin"))
            .expect("json")
    };
    let portmap = conf(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    assert_eq!(
        stdin(&portmap)["runtimeConfig"],
        json!({"portMappings": want})
    );
    for other in [
        json!({"type": "bridge"}),
        json!({"type": "portmap", "capabilities": {"portMappings": false}}),
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
    ] {
        assert!(stdin(&conf(other)).get("runtimeConfig").is_none());
    }
}

#[test]
fn versions_compare_numerically() {
    assert!(version_at_least("0.4.0", (0, 4, 0)));
    assert!(version_at_least("1.0.0", (0, 4, 0)));
    assert!(!version_at_least("0.3.1", (0, 4, 0)));
}

#[test]
fn plugin_error_display() {
    let e: PluginError =
        serde_json::from_str(r#"{"code":7,"msg":"bad config","details":"no subnet"}"#)
            .expect("parse");
    assert_eq!(e.to_string(), "code 7: bad config (no subnet)");
}
