//! `KubeProxyConfiguration` files: fields to flags, flags winning, strict decoding.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _};

use crate::cli::config_file::configure as configure_cli;
use crate::cli::{Cli, Command, ProxyArgs};

fn run(yaml: &str, flags: &[&str]) -> Result<(ProxyArgs, Vec<String>), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kube-proxy.yaml");
    std::fs::write(&path, yaml).expect("write");
    let mut argv = vec![
        "nodelet",
        "proxy",
        "--config",
        path.to_str().expect("utf-8"),
    ];
    argv.extend_from_slice(flags);
    let matches = Cli::command().try_get_matches_from(argv).expect("flags");
    let mut cli = Cli::from_arg_matches(&matches).expect("cli");
    let unsupported = configure_cli(&mut cli, &matches).map_err(|e| e.to_string())?;
    match cli.command {
        Some(Command::Proxy(p)) => Ok((*p, unsupported)),
        other => panic!("not proxy: {other:?}"),
    }
}

const FULL: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 192.0.2.5
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig
  qps: 5
clusterCIDR: 10.244.0.0/16,fd00:10::/64
hostnameOverride: node-a
healthzBindAddress: 0.0.0.0:20256
metricsBindAddress: ""
mode: nftables
nftables:
  masqueradeAll: true
  syncPeriod: 45s
  minSyncPeriod: 2s
nodePortAddresses: ["192.0.2.0/24"]
conntrack:
  maxPerCore: 0
  min: 4096
  tcpEstablishedTimeout: 2h0m0s
  tcpCloseWaitTimeout: 30m
  tcpBeLiberal: true
  udpTimeout: 45s
  udpStreamTimeout: 2m30s
detectLocalMode: ClusterCIDR
"#;

#[test]
fn file_fields_become_flags() {
    let (a, unsupported) = run(FULL, &[]).expect("config");
    assert_eq!(a.bind_address.to_string(), "192.0.2.5");
    assert_eq!(
        a.kubeconfig.as_deref(),
        Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig"))
    );
    assert_eq!(a.cluster_cidr, ["10.244.0.0/16", "fd00:10::/64"]);
    assert_eq!(a.hostname_override.as_deref(), Some("node-a"));
    assert_eq!(a.healthz_bind_address.as_deref(), Some("0.0.0.0:20256"));
    assert_eq!(
        a.metrics_bind_address, None,
        "empty is the default address, as upstream's defaulting"
    );
    assert!(a.masquerade_all);
    assert_eq!(a.sync_period, Duration::from_secs(45));
    assert_eq!(a.min_sync_period, Duration::from_secs(2));
    assert_eq!(a.nodeport_addresses, ["192.0.2.0/24"]);
    let ct = a.conntrack();
    assert_eq!(ct.max_per_core, 0, "0 turns the limit off");
    assert_eq!(ct.min, 4096);
    assert_eq!(ct.tcp_established_timeout, Duration::from_secs(7200));
    assert_eq!(ct.tcp_close_wait_timeout, Duration::from_secs(1800));
    assert!(ct.tcp_be_liberal);
    assert_eq!(ct.udp_timeout, Duration::from_secs(45));
    assert_eq!(ct.udp_stream_timeout, Duration::from_secs(150));
    assert_eq!(
        unsupported,
        ["clientConnection.qps"],
        "ignored fields are named"
    );
}

#[test]
fn command_line_flags_win_over_the_file() {
    let (a, _) = run(
        FULL,
        &[
            "--hostname-override",
            "node-b",
            "--min-sync-period",
            "5s",
            "--metrics-bind-address",
            "127.0.0.1:10249",
        ],
    )
    .expect("config");
    assert_eq!(a.hostname_override.as_deref(), Some("node-b"));
    assert_eq!(a.min_sync_period, Duration::from_secs(5));
    assert_eq!(a.sync_period, Duration::from_secs(45), "the file's");
    assert_eq!(a.metrics_bind_address.as_deref(), Some("127.0.0.1:10249"));
}

#[test]
fn defaults_stay_when_the_file_is_silent() {
    let (a, unsupported) = run(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n",
        &[],
    )
    .expect("config");
    assert_eq!(
        a.healthz_bind_address, None,
        "the default, resolved at start"
    );
    assert_eq!(a.metrics_bind_address, None);
    assert_eq!(a.sync_period, Duration::from_secs(30));
    // Upstream's conntrack defaults.
    assert_eq!(
        a.conntrack(),
        nodelet_netproxy::conntrack::sysctl::ConntrackSettings::default()
    );
    assert!(unsupported.is_empty());
}

#[test]
fn unknown_and_mistyped_fields_are_errors_with_their_path() {
    let e = run(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         nftables:\n  syncPeriodd: 1s\n  minSyncPeriod: soon\nfoo: 1\n",
        &[],
    )
    .expect_err("strict");
    assert!(e.contains("strict decoding error"), "{e}");
    assert!(e.contains("unknown field \"nftables.syncPeriodd\""), "{e}");
    assert!(e.contains("field \"nftables.minSyncPeriod\""), "{e}");
    assert!(e.contains("unknown field \"foo\""), "{e}");
    let e = run(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n",
        &[],
    )
    .expect_err("mode");
    assert!(e.contains("\"ipvs\" is not supported"), "{e}");
    let e = run(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n",
        &[],
    )
    .expect_err("type meta");
    assert!(e.contains("want apiVersion"), "{e}");
}
