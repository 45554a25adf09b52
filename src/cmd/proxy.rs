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
use nodelet_netproxy::nft::exec::NftCommand;
use nodelet_netproxy::runner::Periods;

use crate::cli::ProxyArgs;

/// The node label with the node's zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// Runs the proxy (or `--cleanup`).
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let nft = NftCommand::new();
    if args.cleanup {
        // The main table and every shard table, whatever number a previous run used.
        nodelet_netproxy::nft::shard::cleanup(&nft)
            .await
            .context("removing the nodelet nftables tables")?;
        return Ok(());
    }
    let Some(kubeconfig) = &args.kubeconfig else {
        bail!("--kubeconfig is required (the proxy watches Services and EndpointSlices)");
    };
    let quota = crate::cluster::client::quota(0, 0)?;
    let client = crate::cluster::client::build(kubeconfig, quota).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    serve(&args, client, shutdown).await
}

/// Runs the proxy over `client` until `shutdown` completes (the agent's
/// `--enable-proxy` calls this with its own client): one proxier per IP family the
/// node has addresses of (dual-stack), the health and metrics servers, health-check
/// node ports and conntrack cleanup.
///
/// # Errors
/// Bad flags, a server address that cannot be bound, or the watches ending.
pub async fn serve(
    args: &ProxyArgs,
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let families = families(&local_addresses()?);
    let node_name = crate::node::node_name(args.hostname_override.as_deref());
    let zone = match Api::<Node>::all(client.clone()).get_opt(&node_name).await {
        Ok(node) => node.and_then(|n| n.metadata.labels?.get(ZONE_LABEL).cloned()),
        Err(e) => {
            tracing::warn!(node = %node_name, error = %e, "cannot read the node's zone; topology hints by zone are off");
            None
        }
    };
    tracing::info!(node = %node_name, ?zone, ?families, "service proxy starting (nftables)");
    let health = ProxyHealth::new(2 * args.sync_period);
    let mut servers = Vec::new();
    if let Some(addr) = bind_address(&args.healthz_bind_address, 10256, "healthz")? {
        servers.push(health.serve_healthz(addr)?);
    }
    if let Some(addr) = bind_address(&args.metrics_bind_address, 10249, "metrics")? {
        servers.push(health.serve_metrics(addr)?);
    }
    let mut proxiers = Vec::new();
    let mut observers = Vec::new();
    for (i, family) in families.iter().enumerate() {
        let cfg = render_config(args, *family, local_addresses)?;
        // The first family serves the health-check node ports (on every address of
        // that family unless --nodeport-addresses narrows them).
        let hc = (i == 0).then(|| {
            ServiceHealthServer::new(health.clone(), cfg.nodeport_ips.clone().unwrap_or_default())
        });
        let observer = HealthObserver::new(health.clone(), *family, hc);
        let proxier = Proxier::new(
            NftCommand::new(),
            cfg,
            NodeTopology {
                node_name: node_name.clone(),
                zone: zone.clone(),
            },
        )
        .with_conntrack(nodelet_netproxy::conntrack::netlink::NetlinkConntrack::new());
        proxiers.push(proxier);
        observers.push(observer);
    }
    let periods = Periods {
        min_sync_period: args.min_sync_period,
        sync_period: args.sync_period,
    };
    let run = nodelet_netproxy::watch::run_proxies(
        client,
        proxiers.iter_mut().zip(observers).collect(),
        periods,
    );
    let result = tokio::select! {
        r = run => r.map_err(anyhow::Error::from),
        () = shutdown => Ok(()),
    };
    for s in servers {
        s.abort();
    }
    result
}

/// The proxy inside the agent (`nodelet --proxy-mode=nftables`): `nodelet proxy`'s
/// settings from `--proxy-config` (a `KubeProxyConfiguration`) with the agent's node
/// name, over the agent's client, until `cancel`. A failure is logged; the agent goes on.
///
/// # Errors
/// The proxy configuration cannot be used.
pub fn in_agent(
    agent: &crate::cli::AgentArgs,
    client: &kube::Client,
    node_name: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let mut argv = vec!["nodelet".to_owned(), "proxy".to_owned()];
    if let Some(c) = &agent.proxy_config {
        argv.extend(["--config".to_owned(), c.display().to_string()]);
    }
    argv.extend(["--hostname-override".to_owned(), node_name.to_owned()]);
    let matches = crate::cli::Cli::command()
        .try_get_matches_from(argv)
        .context("--proxy-config")?;
    let mut cli = crate::cli::Cli::from_arg_matches(&matches).context("--proxy-config")?;
    let unsupported =
        crate::cli::config_file::configure(&mut cli, &matches).context("--proxy-config")?;
    if !unsupported.is_empty() {
        tracing::warn!(fields = ?unsupported, "KubeProxyConfiguration fields nodelet ignores");
    }
    let Some(crate::cli::Command::Proxy(args)) = cli.command else {
        bail!("--proxy-config: not a proxy command line");
    };
    let client = client.clone();
    let cancel = cancel.clone();
    Ok(async move {
        if let Err(e) = serve(&args, client, cancel.cancelled_owned()).await {
            tracing::error!(
                error = format!("{e:#}"),
                "the in-agent service proxy stopped"
            );
        }
    })
}

/// The IP families to program: IPv4 when the host has a non-loopback IPv4 address (or
/// no global IPv6 one), IPv6 when it has a global IPv6 address; both: dual-stack.
fn families(addresses: &[IpAddr]) -> Vec<IpFamily> {
    let v4 = addresses
        .iter()
        .any(|a| matches!(a, IpAddr::V4(ip) if !ip.is_loopback()));
    let v6 = addresses
        .iter()
        .any(|a| matches!(a, IpAddr::V6(ip) if !ip.is_loopback() && !ip.is_unicast_link_local()));
    let mut out = Vec::new();
    if v4 || !v6 {
        out.push(IpFamily::V4);
    }
    if v6 {
        out.push(IpFamily::V6);
    }
    out
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

/// The rendering configuration of `family` the flags ask for; `addresses` lists the
/// host's addresses (for `--nodeport-addresses`). CIDRs of the other family are left
/// to the other family's proxier.
fn render_config(
    args: &ProxyArgs,
    family: IpFamily,
    addresses: fn() -> anyhow::Result<Vec<IpAddr>>,
) -> anyhow::Result<RenderConfig> {
    let parse = |flag: &str, v: &Vec<String>| -> anyhow::Result<Vec<Cidr>> {
        let all = v
            .iter()
            .map(|s| s.parse::<Cidr>().with_context(|| format!("--{flag}")))
            .collect::<anyhow::Result<Vec<Cidr>>>()?;
        Ok(all.into_iter().filter(|c| c.family() == family).collect())
    };
    let mut cfg = RenderConfig::new(family);
    if IpFamily::of(&args.bind_address) == family && !args.bind_address.is_unspecified() {
        cfg.node_ip = Some(args.bind_address);
    }
    cfg.cluster_cidrs = parse("cluster-cidr", &args.cluster_cidr)?;
    cfg.masquerade_all = args.masquerade_all;
    // As upstream's NodePortAddresses: no CIDR of this family means every address.
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
        let cfg = render_config(&args, IpFamily::V4, fake_addresses).expect("config");
        assert_eq!(cfg.cluster_cidrs.len(), 1);
        assert!(cfg.masquerade_all);
        assert_eq!(
            cfg.nodeport_ips,
            Some(vec!["192.0.2.5".parse::<IpAddr>().expect("ip")])
        );
        let args = parse(&["nodelet", "proxy", "--kubeconfig", "/k"]);
        assert_eq!(
            render_config(&args, IpFamily::V4, fake_addresses)
                .expect("config")
                .nodeport_ips,
            None
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        let args = parse(&["nodelet", "proxy", "--cluster-cidr", "10.0.0.0/40"]);
        let e = render_config(&args, IpFamily::V4, fake_addresses).expect_err("bad cidr");
        assert!(format!("{e:#}").contains("--cluster-cidr"), "{e:#}");
        assert!(Cli::try_parse_from(["nodelet", "proxy", "--proxy-mode", "ipvs"]).is_err());
    }

    #[test]
    fn dual_stack_when_the_host_has_both_families() {
        let ips = |v: &[&str]| {
            v.iter()
                .map(|s| s.parse().expect("ip"))
                .collect::<Vec<IpAddr>>()
        };
        assert_eq!(
            families(&ips(&["127.0.0.1", "::1", "fe80::1"])),
            [IpFamily::V4]
        );
        assert_eq!(
            families(&ips(&["127.0.0.1", "192.0.2.5", "2001:db8::5"])),
            [IpFamily::V4, IpFamily::V6]
        );
        assert_eq!(families(&ips(&["::1", "2001:db8::5"])), [IpFamily::V6]);
        // Each family's proxier takes its own CIDRs and node-port addresses.
        let args = parse(&[
            "nodelet",
            "proxy",
            "--cluster-cidr",
            "10.244.0.0/16,fd00::/64",
            "--nodeport-addresses",
            "192.0.2.0/24",
            "--bind-address",
            "2001:db8::5",
        ]);
        let v6 = render_config(&args, IpFamily::V6, fake_addresses).expect("v6");
        assert_eq!(v6.cluster_cidrs.len(), 1);
        assert_eq!(v6.cluster_cidrs[0].to_string(), "fd00::/64");
        assert_eq!(v6.nodeport_ips, None, "no IPv6 CIDR given: every address");
        assert_eq!(v6.node_ip, Some("2001:db8::5".parse().expect("ip")));
        let v4 = render_config(&args, IpFamily::V4, fake_addresses).expect("v4");
        assert_eq!(v4.cluster_cidrs.len(), 1);
        assert_eq!(v4.node_ip, None);
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
