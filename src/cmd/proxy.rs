//! `nodelet proxy`: the service proxy on its own, as kube-proxy runs: flags to a
//! `RenderConfig`, the apiserver client, the node's zone, then `nodelet-netproxy`'s
//! watchers and sync loop until SIGINT/SIGTERM. The rules stay in place at exit (as
//! kube-proxy's do) so traffic keeps flowing across a restart; `--cleanup` removes them.
//! Only IPv4 is programmed for now. `/healthz` and `/livez` on `--healthz-bind-address`,
//! `/metrics` on `--metrics-bind-address`, health-check node ports for
//! `externalTrafficPolicy: Local` services, stale UDP conntrack entries deleted.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use nodelet_netproxy::Proxier;
use nodelet_netproxy::health::ProxyHealth;
use nodelet_netproxy::health::observer::HealthObserver;
use nodelet_netproxy::health::service::ServiceHealthServer;
use nodelet_netproxy::model::{Cidr, IpFamily, NodeTopology};
use nodelet_netproxy::nft::RenderConfig;
use nodelet_netproxy::nft::exec::{Nft, NftCommand};
use nodelet_netproxy::runner::Periods;

use crate::cli::ProxyArgs;

/// The node label with the node's zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Runs the proxy (or `--cleanup`).
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let nft = NftCommand::new();
    if args.cleanup {
        for family in ["ip", "ip6"] {
            // add + delete: deleting alone fails when the table is absent.
            let script = format!("add table {family} nodelet\ndelete table {family} nodelet\n");
            nft.apply(&script)
                .await
                .with_context(|| format!("removing table {family} nodelet"))?;
        }
        return Ok(());
    }
    let cfg = render_config(&args, local_addresses)?;
    let Some(kubeconfig) = &args.kubeconfig else {
        bail!("--kubeconfig is required (the proxy watches Services and EndpointSlices)");
    };
    let quota = crate::cluster::client::quota(0, 0)?;
    let client = crate::cluster::client::build(kubeconfig, quota).await?;
    let node_name = crate::node::node_name(args.hostname_override.as_deref());
    let zone = match Api::<Node>::all(client.clone()).get_opt(&node_name).await {
        Ok(node) => node.and_then(|n| n.metadata.labels?.get(ZONE_LABEL).cloned()),
        Err(e) => {
            tracing::warn!(node = %node_name, error = %e, "cannot read the node's zone; topology hints by zone are off");
            None
        }
    };
    tracing::info!(node = %node_name, ?zone, "service proxy starting (nftables, IPv4)");
    let health = ProxyHealth::new(2 * args.sync_period);
    let mut servers = Vec::new();
    if let Some(addr) = bind_address(&args.healthz_bind_address, 10256, "healthz")? {
        servers.push(health.serve_healthz(addr)?);
    }
    if let Some(addr) = bind_address(&args.metrics_bind_address, 10249, "metrics")? {
        servers.push(health.serve_metrics(addr)?);
    }
    let hc_addresses = cfg.nodeport_ips.clone().unwrap_or_default();
    let observer = HealthObserver::new(
        health.clone(),
        IpFamily::V4,
        Some(ServiceHealthServer::new(health, hc_addresses)),
    );
    let mut proxier = Proxier::new(nft, cfg, NodeTopology { node_name, zone })
        .with_conntrack(nodelet_netproxy::conntrack::netlink::NetlinkConntrack::new());
    let periods = Periods {
        min_sync_period: args.min_sync_period,
        sync_period: args.sync_period,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = nodelet_netproxy::watch::run_proxy(client, &mut proxier, periods, observer) => r?,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    for s in servers {
        s.abort();
    }
    Ok(())
}

/// `--healthz-bind-address`/`--metrics-bind-address`: `IP:port`, or an IP with the
/// default port; empty turns the server off.
fn bind_address(v: &str, default_port: u16, what: &str) -> anyhow::Result<Option<SocketAddr>> {
    if v.is_empty() {
        return Ok(None);
    }
    if let Ok(addr) = v.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    let ip: IpAddr = v
        .parse()
        .with_context(|| format!("--{what}-bind-address {v:?}: want IP:port"))?;
    Ok(Some(SocketAddr::new(ip, default_port)))
}

/// The IPv4 rendering configuration the flags ask for; `addresses` lists the host's
/// addresses (for `--nodeport-addresses`).
fn render_config(
    args: &ProxyArgs,
    addresses: fn() -> anyhow::Result<Vec<IpAddr>>,
) -> anyhow::Result<RenderConfig> {
    let parse = |flag: &str, v: &Vec<String>| -> anyhow::Result<Vec<Cidr>> {
        v.iter()
            .map(|s| s.parse::<Cidr>().with_context(|| format!("--{flag}")))
            .collect()
    };
    let mut cfg = RenderConfig::new(IpFamily::V4);
    if args.bind_address.is_ipv4() && !args.bind_address.is_unspecified() {
        cfg.node_ip = Some(args.bind_address);
    }
    cfg.cluster_cidrs = parse("cluster-cidr", &args.cluster_cidr)?;
    cfg.masquerade_all = args.masquerade_all;
    let nodeport = parse("nodeport-addresses", &args.nodeport_addresses)?;
    if !nodeport.is_empty() {
        let ips = addresses()?
            .into_iter()
            .filter(|ip| nodeport.iter().any(|c| c.contains(ip)))
            .collect();
        cfg.nodeport_ips = Some(ips);
    }
    Ok(cfg)
}

/// The host's interface addresses.
fn local_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().context("listing interface addresses")?;
    Ok(addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn parse(args: &[&str]) -> ProxyArgs {
        let cli = Cli::try_parse_from(args).expect("parse");
        match cli.command {
            Some(Command::Proxy(a)) => *a,
            other => panic!("not proxy: {other:?}"),
        }
    }

    fn fake_addresses() -> anyhow::Result<Vec<IpAddr>> {
        Ok(vec![
            "127.0.0.1".parse()?,
            "192.0.2.5".parse()?,
            "198.51.100.7".parse()?,
        ])
    }

    #[test]
    fn flags_become_the_render_config() {
        let args = parse(&[
            "nodelet",
            "proxy",
            "--kubeconfig",
            "/k",
            "--cluster-cidr",
            "10.244.0.0/16,fd00::/64",
            "--nodeport-addresses",
            "192.0.2.0/24",
            "--masquerade-all",
            "--min-sync-period",
            "2s",
        ]);
        assert_eq!(args.min_sync_period, std::time::Duration::from_secs(2));
        assert_eq!(args.sync_period, std::time::Duration::from_secs(30));
        let cfg = render_config(&args, fake_addresses).expect("config");
        assert_eq!(cfg.cluster_cidrs.len(), 2);
        assert!(cfg.masquerade_all);
        assert_eq!(
            cfg.nodeport_ips,
            Some(vec!["192.0.2.5".parse::<IpAddr>().expect("ip")])
        );
        let args = parse(&["nodelet", "proxy", "--kubeconfig", "/k"]);
        assert_eq!(
            render_config(&args, fake_addresses)
                .expect("config")
                .nodeport_ips,
            None
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        let args = parse(&["nodelet", "proxy", "--cluster-cidr", "10.0.0.0/40"]);
        let e = render_config(&args, fake_addresses).expect_err("bad cidr");
        assert!(format!("{e:#}").contains("--cluster-cidr"), "{e:#}");
        assert!(Cli::try_parse_from(["nodelet", "proxy", "--proxy-mode", "ipvs"]).is_err());
    }

    #[test]
    fn bind_addresses_take_ip_port_ip_or_nothing() {
        assert_eq!(
            bind_address("0.0.0.0:10256", 1, "healthz").expect("ok"),
            Some("0.0.0.0:10256".parse().expect("addr"))
        );
        assert_eq!(
            bind_address("127.0.0.1", 10249, "metrics").expect("ok"),
            Some("127.0.0.1:10249".parse().expect("addr"))
        );
        assert_eq!(bind_address("", 1, "healthz").expect("ok"), None);
        assert!(bind_address("nope", 1, "healthz").is_err());
    }
}
