//! The built-in network's nftables table, of nodelet's own: the masquerade the bridge
//! plugin's `ipMasq` does with iptables (traffic from the pod range to anywhere but the
//! pod range and multicast leaves with the node's address), and the hostPorts the
//! `portmap` plugin sets up (priority -100, `dstnat`, spelled as a number for the
//! output hook, which older nft refuses by name): DNAT of a hostPort on the node's local addresses (or only
//! its `hostIP`) to the pod's IP and port, for traffic arriving (prerouting) and made on
//! the node itself (output), with `snat`'s masquerade of what comes from localhost or
//! from the pod itself (hairpin). The table is made with the first pod, rendered whole
//! from what pods hold, and deleted with the last; it never touches another table.
//!
//! Rendered as nft's own syntax and applied with `nft -f -`, one transaction per change,
//! rather than built from the `nftables` crate's JSON schema types: that crate applies
//! through the same `nft` binary (`nft -j -f`), every value put in a rule here is already
//! typed (`IpAddr`, `Cidr`, `u16` ports, a protocol enum), and the text is what the unit
//! tests compare and what an operator reads back with `nft list table`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use std::fmt::Write as _;
use std::net::IpAddr;

use super::PodNetError;
use super::hostport::PortMapping;
use super::ipam::Cidr;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The table's name for a network on `bridge` (one table per bridge, so two agents with
/// their own bridges never share one); the IPv4 table is `ip <name>`, the IPv6 one
/// `ip6 <name>`.
pub(super) fn table_name(bridge: &str) -> String {
    format!("nodelet-pods-{bridge}")
}

/// The nft family of a range's table, and its address keyword.
fn family(cidr: Cidr) -> (&'static str, &'static str) {
    if cidr.is_ipv6() {
        ("ip6", "ip6")
    } else {
        ("ip", "ip")
    }
}

/// The ruleset of one family's table, for its ranges `cidrs` (the current one, and any
/// earlier one pods still hold addresses of; none empty, all of one family), replaced
/// whole in one transaction (add + delete + define is idempotent): the masquerade with
/// `masq`, and the hostPorts of each pod (its address in these ranges and the mappings
/// that apply to it).
pub(super) fn render(
    table: &str,
    cidrs: &[Cidr],
    masq: bool,
    pods: &[(IpAddr, Vec<PortMapping>)],
) -> String {
    let Some(first) = cidrs.first() else {
        return String::new();
    };
    let (fam, kw) = family(*first);
    let v6 = first.is_ipv6();
    let mut dnat = String::new();
    let mut snat = String::new();
    for (ip, ports) in pods
        .iter()
        .filter(|(ip, _)| cidrs.iter().any(|c| c.contains(*ip)))
    {
        let to = if v6 {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        for p in ports.iter().filter(|p| p.applies_to(*ip)) {
            let proto = p.protocol.nft();
            let daddr = p
                .host_ip
                .filter(|h| !h.is_unspecified())
                .map(|h| format!("{kw} daddr {h} "))
                .unwrap_or_default();
            let _ = writeln!(
                dnat,
                "\t\t{daddr}{proto} dport {} dnat to {to}:{}",
                p.host_port, p.container_port
            );
            // IPv6 never routes ::1 off the node, so (as portmap) only the pod's own
            // traffic is masqueraded there.
            let saddr = if v6 {
                ip.to_string()
            } else {
                format!("{{ 127.0.0.0/8, {ip} }}")
            };
            let line = format!(
                "\t\tct status dnat {kw} saddr {saddr} {kw} daddr {ip} {proto} dport {} masquerade\n",
                p.container_port
            );
            if !snat.contains(&line) {
                snat.push_str(&line);
            }
        }
    }
    let mut out =
        format!("add table {fam} {table}\ndelete table {fam} {table}\ntable {fam} {table} {{\n");
    if !dnat.is_empty() {
        let _ = write!(
            out,
            "\tchain hostports {{\n{dnat}\t}}\n\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority -100; policy accept;\n\
             \t\tfib daddr type local jump hostports\n\
             \t}}\n\
             \tchain output {{\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\tfib daddr type local jump hostports\n\
             \t}}\n"
        );
    }
    let _ = write!(
        out,
        "\tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n{snat}"
    );
    if masq {
        let multicast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
        // Several ranges (after a pod CIDR change) are one pod network: traffic between
        // them is not masqueraded either.
        let pod_net = match cidrs {
            [one] => one.to_string(),
            many => format!(
                "{{ {} }}",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let _ = writeln!(
            out,
            "\t\t{kw} saddr {pod_net} {kw} daddr != {pod_net} {kw} daddr != {multicast} masquerade"
        );
    }
    out.push_str("\t}\n}\n");
    out
}

/// Installs (or replaces) the table of each family of `cidrs`, and deletes the other
/// family's (its ranges are gone), in one transaction.
pub(super) async fn install(
    table: &str,
    cidrs: &[Cidr],
    masq: bool,
    pods: &[(IpAddr, Vec<PortMapping>)],
) -> Result<(), PodNetError> {
    run(&script(table, cidrs, masq, pods)).await
}

fn script(table: &str, cidrs: &[Cidr], masq: bool, pods: &[(IpAddr, Vec<PortMapping>)]) -> String {
    let mut script = String::new();
    for (v6, fam) in [(false, "ip"), (true, "ip6")] {
        let mut of_family: Vec<Cidr> = Vec::new();
        for c in cidrs.iter().filter(|c| c.is_ipv6() == v6) {
            if !of_family.contains(c) {
                of_family.push(*c);
            }
        }
        if of_family.is_empty() {
            let _ = writeln!(
                script,
                "add table {fam} {table}\ndelete table {fam} {table}"
            );
        } else {
            script.push_str(&render(table, &of_family, masq, pods));
        }
    }
    script
}

/// Deletes the tables of both families (whichever the ranges were); ones already gone
/// are fine.
pub(super) async fn remove(table: &str) -> Result<(), PodNetError> {
    run(&format!(
        "add table ip {table}\ndelete table ip {table}\n\
         add table ip6 {table}\ndelete table ip6 {table}\n"
    ))
    .await
}

async fn run(script: &str) -> Result<(), PodNetError> {
    let fail = |detail: String| PodNetError::Nft {
        detail,
        script: script.to_owned(),
    };
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| fail(format!("write to nft: {e}")))?;
    }
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| fail(format!("nft took more than {TIMEOUT:?}")))?
        .map_err(|e| fail(format!("wait for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "nft exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_only_traffic_leaving_the_pod_range() {
        let cidr = Cidr::parse("10.88.0.0/16").expect("cidr");
        let got = render(&table_name("nodelet0"), &[cidr], true, &[]);
        assert_eq!(
            got,
            "add table ip nodelet-pods-nodelet0\n\
             delete table ip nodelet-pods-nodelet0\n\
             table ip nodelet-pods-nodelet0 {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 ip daddr != 224.0.0.0/4 masquerade\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn hostports_dnat_on_local_addresses_and_masquerade_localhost_and_hairpin() {
        use super::super::hostport::Protocol;
        let cidr = Cidr::parse("10.88.0.0/16").expect("cidr");
        let pod: IpAddr = "10.88.0.5".parse().expect("ip");
        let ports = vec![
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
                host_ip: Some("192.168.1.10".parse().expect("ip")),
            },
            PortMapping {
                protocol: Protocol::Tcp,
                host_port: 8443,
                container_port: 443,
                host_ip: Some("2001:db8::1".parse().expect("ip")),
            },
        ];
        let got = render("t", &[cidr], false, &[(pod, ports)]);
        assert_eq!(
            got,
            "add table ip t\n\
             delete table ip t\n\
             table ip t {\n\
             \tchain hostports {\n\
             \t\ttcp dport 8080 dnat to 10.88.0.5:80\n\
             \t\tip daddr 192.168.1.10 udp dport 5353 dnat to 10.88.0.5:53\n\
             \t}\n\
             \tchain prerouting {\n\
             \t\ttype nat hook prerouting priority -100; policy accept;\n\
             \t\tfib daddr type local jump hostports\n\
             \t}\n\
             \tchain output {\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\tfib daddr type local jump hostports\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tct status dnat ip saddr { 127.0.0.0/8, 10.88.0.5 } ip daddr 10.88.0.5 tcp dport 80 masquerade\n\
             \t\tct status dnat ip saddr { 127.0.0.0/8, 10.88.0.5 } ip daddr 10.88.0.5 udp dport 53 masquerade\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn ipv6_table_masquerades_its_range_and_maps_unset_and_ipv6_host_ips() {
        use super::super::hostport::Protocol;
        let cidr = Cidr::parse("fd00:98::/64").expect("cidr");
        let v4: IpAddr = "10.88.0.5".parse().expect("ip");
        let v6: IpAddr = "fd00:98::5".parse().expect("ip");
        let m = |host_port, host_ip: Option<&str>| PortMapping {
            protocol: Protocol::Tcp,
            host_port,
            container_port: 80,
            host_ip: host_ip.map(|h| h.parse().expect("ip")),
        };
        let ports = vec![
            m(8080, None),
            m(8081, Some("192.168.1.10")),
            m(8082, Some("2001:db8::1")),
            m(8083, Some("::")),
        ];
        let got = render("t", &[cidr], true, &[(v4, ports.clone()), (v6, ports)]);
        assert_eq!(
            got,
            "add table ip6 t\n\
             delete table ip6 t\n\
             table ip6 t {\n\
             \tchain hostports {\n\
             \t\ttcp dport 8080 dnat to [fd00:98::5]:80\n\
             \t\tip6 daddr 2001:db8::1 tcp dport 8082 dnat to [fd00:98::5]:80\n\
             \t\ttcp dport 8083 dnat to [fd00:98::5]:80\n\
             \t}\n\
             \tchain prerouting {\n\
             \t\ttype nat hook prerouting priority -100; policy accept;\n\
             \t\tfib daddr type local jump hostports\n\
             \t}\n\
             \tchain output {\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\tfib daddr type local jump hostports\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tct status dnat ip6 saddr fd00:98::5 ip6 daddr fd00:98::5 tcp dport 80 masquerade\n\
             \t\tip6 saddr fd00:98::/64 ip6 daddr != fd00:98::/64 ip6 daddr != ff00::/8 masquerade\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn after_a_range_change_both_ranges_are_one_pod_network_and_a_gone_family_is_deleted() {
        use super::super::hostport::Protocol;
        let old = Cidr::parse("10.88.0.0/16").expect("cidr");
        let new = Cidr::parse("10.244.1.0/24").expect("cidr");
        let pods = vec![
            ("10.88.0.9".parse().expect("ip"), vec![]),
            (
                "10.244.1.2".parse().expect("ip"),
                vec![PortMapping {
                    protocol: Protocol::Tcp,
                    host_port: 8080,
                    container_port: 80,
                    host_ip: None,
                }],
            ),
        ];
        let got = script("t", &[new, old, new], true, &pods);
        assert!(
            got.contains(
                "ip saddr { 10.244.1.0/24, 10.88.0.0/16 } ip daddr != { 10.244.1.0/24, 10.88.0.0/16 } ip daddr != 224.0.0.0/4 masquerade"
            ),
            "{got}"
        );
        assert!(
            got.contains("tcp dport 8080 dnat to 10.244.1.2:80"),
            "{got}"
        );
        assert!(
            got.ends_with("add table ip6 t\ndelete table ip6 t\n"),
            "{got}"
        );
    }
}
