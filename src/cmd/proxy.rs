//! `nodelet proxy`: the service proxy on its own, as kube-proxy runs: flags to a
//! `RenderConfig`, the apiserver client, the node's zone, then `nodelet-netproxy`'s
//! watchers and sync loop until SIGINT/SIGTERM. The rules stay in place at exit (as
//! kube-proxy's do) so traffic keeps flowing across a restart; `--cleanup` removes them.
//! One proxier per IP family the node has addresses of. `/healthz` and `/livez` on
//! `--healthz-bind-address` (503 also while the node is being deleted), `/metrics` on
//! `--metrics-bind-address`, health-check node ports for `externalTrafficPolicy: Local`
//! services on every family, stale UDP conntrack entries deleted, and the conntrack
//! sysctls of `KubeProxyConfiguration.conntrack` set at start.

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
    // The conntrack sysctls first, as upstream (a failure stops the proxy there too).
    use nodelet_netproxy::conntrack::sysctl;
    sysctl::apply(
        &args.conntrack(),
        &sysctl::Sysctls::host(),
        sysctl::online_cpus(),
    )
    .context("could not set conntrack parameters from kube-proxy configuration")?;
    let health = ProxyHealth::new(2 * args.sync_period);
    // /healthz answers 503 while this node is being deleted (upstream's nodeEligible).
    let node_watch = tokio::spawn(nodelet_netproxy::health::node::watch_eligibility(
        client.clone(),
        node_name.clone(),
        health.clone(),
    ));
    let mut servers = Vec::new();
    let v6 = args.bind_address.is_ipv6();
    let healthz = server_address(
        args.healthz_bind_address.as_deref(),
        args.healthz_port,
        if v6 { "::" } else { "0.0.0.0" },
        "healthz",
    )?;
    if let Some(addr) = healthz {
        servers.push(health.serve_healthz(addr)?);
    }
    let metrics = server_address(
        args.metrics_bind_address.as_deref(),
        args.metrics_port,
        if v6 { "::1" } else { "127.0.0.1" },
        "metrics",
    )?;
    if let Some(addr) = metrics {
        servers.push(health.serve_metrics(addr)?);
    }
    let mut proxiers = Vec::new();
    let mut observers = Vec::new();
    for family in &families {
        let cfg = render_config(args, *family, local_addresses)?;
        // Every family serves its health-check node ports (with its own local endpoint
        // counts), on every address of that family unless --nodeport-addresses narrows
        // them.
        let hc = ServiceHealthServer::new(
            health.clone(),
            *family,
            cfg.nodeport_ips.clone().unwrap_or_default(),
        );
        let observer = HealthObserver::new(health.clone(), *family, Some(hc));
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
    node_watch.abort();
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
        // `clientConnection.kubeconfig` gives the proxy a credential of its own (as
        // kube-proxy's service account); otherwise the node's, which then needs
        // `system:node-proxier` (EndpointSlices are not a node's to list).
        let client = match &args.kubeconfig {
            Some(path) => {
                let quota = crate::cluster::client::quota(0, 0);
                match quota {
                    Ok(q) => match crate::cluster::client::build(path, q).await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::error!(error = format!("{e:#}"), path = %path.display(), "the in-agent service proxy's kubeconfig");
                            return;
                        }
                    },
                    Err(e) => {
                        tracing::error!(
                            error = format!("{e:#}"),
                            "the in-agent service proxy's client"
                        );
                        return;
                    }
                }
            }
            None => client,
        };
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

/// `--healthz-bind-address`/`--metrics-bind-address` as upstream v1.37 resolves them:
/// `IP:port`; a bare IP takes `port` (`--healthz-port`/`--metrics-port`); unset or empty
/// is `default_host` with `port`; port 0 (of the port flag) turns the server off. No
/// CIDR forms: v1.37's kube-proxy accepts none (its `--*-bind-addresses` CIDR lists are
/// not in that release).
fn server_address(
    v: Option<&str>,
    port: u16,
    default_host: &str,
    what: &str,
) -> anyhow::Result<Option<SocketAddr>> {
    if port == 0 {
        return Ok(None);
    }
    let v = v.filter(|v| !v.is_empty()).unwrap_or(default_host);
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, port)));
    }
    let addr: SocketAddr = v
        .parse()
        .with_context(|| format!("--{what}-bind-address {v:?}: must be IP:port"))?;
    if addr.port() == 0 {
        bail!("--{what}-bind-address {v:?}: must be a valid port");
    }
    Ok(Some(addr))
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
    fn server_addresses_as_upstream_v1_37() {
        let a = |s: &str| Some(s.parse::<SocketAddr>().expect("addr"));
        let f = server_address;
        assert_eq!(
            f(Some("0.0.0.0:10256"), 10256, "0.0.0.0", "healthz").expect("ok"),
            a("0.0.0.0:10256")
        );
        assert_eq!(
            f(Some("127.0.0.1"), 10249, "127.0.0.1", "metrics").expect("ok"),
            a("127.0.0.1:10249"),
            "a bare IP takes the port flag"
        );
        assert_eq!(
            f(Some("[fd00::1]:9999"), 10249, "::1", "metrics").expect("ok"),
            a("[fd00::1]:9999")
        );
        assert_eq!(
            f(None, 10256, "::", "healthz").expect("ok"),
            a("[::]:10256"),
            "unset: the default host of --bind-address's family"
        );
        assert_eq!(
            f(Some(""), 10249, "127.0.0.1", "metrics").expect("ok"),
            a("127.0.0.1:10249"),
            "empty is the default, not off"
        );
        assert_eq!(
            f(Some("0.0.0.0:10256"), 0, "0.0.0.0", "healthz").expect("ok"),
            None,
            "port 0 turns the server off"
        );
        for bad in ["nope", "10.0.0.0/8:10256", "10.0.0.1:0", "10.0.0.1:70000"] {
            assert!(f(Some(bad), 10256, "0.0.0.0", "healthz").is_err(), "{bad}");
        }
    }
}
