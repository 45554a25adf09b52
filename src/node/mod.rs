//! The node: its identity (name, the IP reported as pods' `hostIP`), the Node object
//! it reports, usage stats, and node-pressure eviction.

pub mod eviction;
pub mod pressure;
pub mod status;
pub mod summary;
pub mod view;

use std::net::{IpAddr, Ipv4Addr};

/// The node name: `--hostname-override`, else the hostname, lower-cased as upstream.
pub fn node_name(override_: Option<&str>) -> String {
    override_
        .map(str::to_owned)
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_else(|| "localhost".to_owned())
        .trim()
        .to_lowercase()
}

/// The interface of the IPv4 default route, from `/proc/net/route` content.
pub fn default_route_interface(route_table: &str) -> Option<String> {
    route_table.lines().skip(1).find_map(|l| {
        let mut f = l.split_whitespace();
        let (iface, dest) = (f.next()?, f.next()?);
        (dest == "00000000").then(|| iface.to_owned())
    })
}

/// The node IP: `--node-ip`, else the first IPv4 address of the default route's
/// interface, else the first non-loopback IPv4 address, else 127.0.0.1.
pub fn node_ip(flag: Option<IpAddr>) -> IpAddr {
    if let Some(ip) = flag {
        return ip;
    }
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default_if = default_route_interface(&routes);
    let addrs: Vec<(String, Ipv4Addr)> = nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|a| {
                let ip = a.address?.as_sockaddr_in()?.ip();
                Some((a.interface_name, ip))
            })
            .collect()
        })
        .unwrap_or_default();
    addrs
        .iter()
        .find(|(name, _)| Some(name) == default_if.as_ref())
        .or_else(|| addrs.iter().find(|(_, ip)| !ip.is_loopback()))
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |(_, ip)| IpAddr::V4(*ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_default_route() {
        let table = "Iface\tDestination\tGateway\tFlags\nbr0\t0000A8C0\t00000000\t0001\neth0\t00000000\t0100A8C0\t0003\n";
        assert_eq!(default_route_interface(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn override_wins() {
        assert_eq!(node_name(Some("Node-A")), "node-a");
    }
}
