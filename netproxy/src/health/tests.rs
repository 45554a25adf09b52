//! Health state, upstream's bodies, the metrics text and the health-check node ports
//! served on loopback.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::service::{ServiceHealthServer, Wanted, body};
use super::*;
use crate::Proxier;
use crate::model::{NodeTopology, ServiceName};
use crate::nft::RenderConfig;
use crate::nft::exec::RecordingNft;
use crate::testing::{ep, service, slice};

/// `GET path` over HTTP/1.0 to `addr`: status and body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((code, body))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn a_change_waiting_longer_than_the_timeout_is_unhealthy() {
    let h = ProxyHealth::new(Duration::from_secs(60));
    let t0 = SystemTime::now();
    // Starting up with nothing queued: healthy.
    assert!(h.health_at(t0).0);
    h.queued(IpFamily::V4);
    assert!(h.health_at(t0 + Duration::from_secs(30)).0);
    assert!(!h.health_at(t0 + Duration::from_secs(61)).0, "never synced");
    h.updated(IpFamily::V4);
    assert!(h.health_at(t0 + Duration::from_secs(61)).0);
    h.queued(IpFamily::V4);
    h.updated(IpFamily::V6);
    let (ok, last) = h.health_at(SystemTime::now() + Duration::from_secs(120));
    assert!(!ok);
    assert!(last.is_some());
}

#[test]
fn bodies_are_upstreams() {
    let h = ProxyHealth::new(Duration::from_secs(60));
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_425_200_250);
    let (code, b) = h.healthz(now);
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        b,
        "{\"lastUpdated\":\"2026-12-04T23:00:00.25Z\",\"currentTime\":\"2026-12-04T23:00:00.25Z\",\"nodeEligible\":true,\"healthy\":true}"
    );
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["nodeEligible"], json!(true));
    h.set_node_eligible(false);
    let (code, b) = h.healthz(now);
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        b,
        "{\"lastUpdated\":\"0001-01-01T00:00:00Z\",\"currentTime\":\"2026-12-04T23:00:00.25Z\",\"nodeEligible\":false,\"healthy\":true}",
        "the proxiers are healthy; the node is not eligible"
    );
    let (code, b) = h.livez(now);
    assert_eq!(code, StatusCode::OK, "livez ignores eligibility");
    assert!(!b.contains("nodeEligible"));
    // Per-family status once proxiers synced; a late one makes both answers 503.
    let h2 = ProxyHealth::new(Duration::from_secs(60));
    h2.updated(IpFamily::V4);
    h2.updated(IpFamily::V6);
    h2.queued(IpFamily::V6);
    let later = SystemTime::now() + Duration::from_secs(61);
    let (code, b) = h2.livez(later);
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["healthy"], json!(false));
    assert_eq!(v["status"]["IPv4"]["healthy"], json!(true), "{b}");
    assert_eq!(v["status"]["IPv6"]["healthy"], json!(false), "{b}");
    let name = ServiceName {
        namespace: "ns".into(),
        name: "lb".into(),
    };
    assert_eq!(
        body(&name, 2, true),
        "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
    );
    let text = h.metrics.render();
    assert!(
        text.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_proxy_livez_total{code=\"200\"} 1"),
        "{text}"
    );
}

#[test]
fn metrics_use_upstream_names_and_buckets() {
    use crate::model::IpFamily::{V4, V6};
    let m = metrics::Metrics::default();
    m.synced(V4, true, 0.003);
    m.synced(V4, false, 0.0005);
    m.synced(V6, true, 0.02);
    m.conntrack_reconciled(V4, 0.003, 2);
    m.programmed(V4, SystemTime::now() - Duration::from_millis(1500));
    m.queued(V6, SystemTime::UNIX_EPOCH + Duration::from_secs(7));
    m.change(true);
    m.sync_failed(V4);
    let t = m.render();
    for line in [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.001\"} 1",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.004\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"16.384\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 2",
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 1",
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv6\",le=\"0.016\"} 0",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
        "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"1\"} 0",
        "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"2\"} 1",
        "kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"300\"} 1",
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 1",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total 1",
        "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 2",
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.002\"} 0",
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.004\"} 1",
        "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"} 1",
        "# HELP kubeproxy_conntrack_reconciler_sync_duration_seconds [ALPHA] ReconcileConntrackFlowsLatency latency in seconds",
        "# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds",
        "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0",
        "kubeproxy_sync_proxy_rules_service_changes_pending 0",
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv6\"} 7",
        "# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge",
    ] {
        assert!(t.lines().any(|l| l == line), "missing {line}:\n{t}");
    }
    assert!(
        t.lines().any(|l| l
            .starts_with("kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\"} ")),
        "{t}"
    );
    // Families without series are not written (client_golang's vectors).
    for absent in [
        "conntrack_reconciler_deleted_entries_total{ip_family=\"IPv6\"}",
        "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
        "kubeproxy_proxy_livez_total",
    ] {
        assert!(!t.contains(absent), "{absent}:\n{t}");
    }
}

#[tokio::test]
async fn servers_answer_over_http() {
    let h = ProxyHealth::new(Duration::from_secs(60));
    let hz = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let task = h.serve_healthz(hz).expect("healthz");
    let (code, b) = get(hz, "/healthz").await.expect("get");
    assert_eq!(code, 200, "{b}");
    assert!(b.contains("nodeEligible"), "{b}");
    assert_eq!(get(hz, "/livez").await.expect("get").0, 200);
    assert!(h.serve_healthz(hz).is_err(), "a taken port is an error");
    task.abort();
    let ms = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let task = h.serve_metrics(ms).expect("metrics");
    let (code, b) = get(ms, "/metrics").await.expect("get");
    assert_eq!(code, 200);
    assert!(
        b.contains("kubeproxy_proxy_healthz_total{code=\"200\"} 1"),
        "{b}"
    );
    task.abort();
}

#[tokio::test]
async fn health_check_node_ports_follow_local_endpoints() {
    let mut p = Proxier::new(
        RecordingNft::default(),
        RenderConfig::new(crate::model::IpFamily::V4),
        NodeTopology {
            node_name: "node-a".into(),
            zone: None,
        },
    );
    let port = free_port();
    let lb = service(
        "ns",
        "lb",
        json!({"type": "LoadBalancer", "clusterIP": "172.30.0.9", "externalTrafficPolicy": "Local",
               "healthCheckNodePort": port,
               "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                         {"name": "https", "port": 443, "nodePort": 30443}]}),
        None,
    );
    p.service_updated(&lb);
    p.service_updated(&service(
        "ns",
        "cluster",
        json!({"type": "LoadBalancer", "clusterIP": "172.30.0.8", "healthCheckNodePort": 30999,
               "ports": [{"name": "http", "port": 80, "nodePort": 30081}]}),
        None,
    ));
    let mut s = slice(
        "ns",
        "lb",
        "lb-1",
        "http",
        8080,
        &[ep("10.0.0.1", "node-a"), ep("10.0.0.2", "node-b")],
    );
    p.slice_updated(&s);
    p.sync().await.expect("sync");
    let wanted = p.health_check_node_ports();
    let name = ServiceName {
        namespace: "ns".into(),
        name: "lb".into(),
    };
    assert_eq!(
        wanted,
        Wanted::from([(name.clone(), (port, 1))]),
        "only the Local service, its local ready addresses"
    );

    let health = ProxyHealth::new(Duration::from_secs(60));
    let mut servers = ServiceHealthServer::new(
        health,
        crate::model::IpFamily::V4,
        vec!["127.0.0.1".parse().expect("ip")],
    );
    servers.sync(&wanted);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (code, b) = get(addr, "/").await.expect("get");
    assert_eq!(code, 200, "{b}");
    assert!(b.contains("\"localEndpoints\": 1"), "{b}");

    // The local endpoint goes: 503, same server.
    s.endpoints
        .retain(|e| e.node_name.as_deref() == Some("node-b"));
    p.slice_updated(&s);
    p.sync().await.expect("sync");
    servers.sync(&p.health_check_node_ports());
    let (code, b) = get(addr, "/anything").await.expect("get");
    assert_eq!(code, 503, "{b}");
    assert!(b.contains("\"localEndpoints\": 0"), "{b}");

    // The service goes: the port closes.
    p.service_deleted(&lb);
    p.sync().await.expect("sync");
    servers.sync(&p.health_check_node_ports());
    assert!(servers.ports().is_empty());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(get(addr, "/").await.is_err(), "closed");
}
