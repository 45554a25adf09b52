//! The files a pod's containers share: `hosts`, `resolv.conf` and `hostname`, written
//! once per sandbox into its directory and bind-mounted into every container.
//! The content matches what the kubelet (`hosts`) and containerd (the other two) write.

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::Path;

use super::{DnsConfig, RuntimeError, SandboxConfig};

/// Renders `/etc/hosts` as the kubelet does (`managedHostsFileContent`).
pub fn hosts_file(config: &SandboxConfig, ips: &[IpAddr], host_hosts: Option<&str>) -> String {
    let mut out = String::new();
    if config.host_network {
        out.push_str("# Kubernetes-managed hosts file (host network).\n");
        out.push_str(host_hosts.unwrap_or(""));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    } else {
        out.push_str("# Kubernetes-managed hosts file.\n");
        out.push_str("127.0.0.1\tlocalhost\n");
        out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
        out.push_str("fe00::0\tip6-localnet\n");
        out.push_str("fe00::0\tip6-mcastprefix\n");
        out.push_str("fe00::1\tip6-allnodes\n");
        out.push_str("fe00::2\tip6-allrouters\n");
        for ip in ips {
            match &config.fqdn {
                Some(fqdn) => {
                    let _ = writeln!(out, "{ip}\t{fqdn}\t{}", config.hostname);
                }
                None => {
                    let _ = writeln!(out, "{ip}\t{}", config.hostname);
                }
            }
        }
    }
    if !config.host_aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in &config.host_aliases {
            let _ = writeln!(out, "{ip}\t{}", names.join("\t"));
        }
    }
    out
}

/// Renders `resolv.conf` from explicit DNS settings.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        let _ = writeln!(out, "search {}", dns.searches.join(" "));
    }
    for s in &dns.servers {
        let _ = writeln!(out, "nameserver {s}");
    }
    if !dns.options.is_empty() {
        let _ = writeln!(out, "options {}", dns.options.join(" "));
    }
    out
}

/// Writes the pod files into `dir`.
///
/// # Errors
/// [`RuntimeError::Io`] naming the file that could not be read or written.
pub fn write(dir: &Path, config: &SandboxConfig, ips: &[IpAddr]) -> Result<(), RuntimeError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RuntimeError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let host_hosts = if config.host_network {
        Some(fs::read_to_string("/etc/hosts").unwrap_or_default())
    } else {
        None
    };
    let hosts = dir.join("hosts");
    fs::write(&hosts, hosts_file(config, ips, host_hosts.as_deref())).map_err(io(&hosts))?;
    let resolv = dir.join("resolv.conf");
    let content = match &config.dns {
        Some(dns) => resolv_conf(dns),
        None => {
            let host = Path::new("/etc/resolv.conf");
            fs::read_to_string(host).map_err(io(host))?
        }
    };
    fs::write(&resolv, content).map_err(io(&resolv))?;
    let hostname = dir.join("hostname");
    let name = if config.host_network {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| config.hostname.clone())
    } else {
        config.hostname.clone()
    };
    fs::write(&hostname, format!("{name}\n")).map_err(io(&hostname))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::PodRef;

    fn config() -> SandboxConfig {
        SandboxConfig {
            pod: PodRef {
                uid: "u".into(),
                name: "web".into(),
                namespace: "default".into(),
            },
            attempt: 0,
            hostname: "web".into(),
            host_network: false,
            host_ipc: false,
            host_pid: false,
            share_process_namespace: false,
            log_directory: "/l".into(),
            cgroup_parent: None,
            dns: None,
            host_aliases: vec![("10.1.2.3".into(), vec!["foo".into(), "bar".into()])],
            fqdn: None,
            sysctls: vec![],
            oom_score_adj: None,
            runtime_handler: String::new(),
        }
    }

    #[test]
    fn hosts_file_matches_kubelet() {
        let ips = ["10.88.0.5".parse().expect("ip")];
        assert_eq!(
            hosts_file(&config(), &ips, None),
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n10.88.0.5\tweb\n\n# Entries added by HostAliases.\n10.1.2.3\tfoo\tbar\n"
        );
    }

    #[test]
    fn subdomain_adds_the_fqdn() {
        let mut c = config();
        c.host_aliases.clear();
        c.fqdn = Some("web.sub.default.svc.cluster.local".into());
        let ips = ["10.88.0.5".parse().expect("ip")];
        assert!(
            hosts_file(&c, &ips, None)
                .ends_with("10.88.0.5\tweb.sub.default.svc.cluster.local\tweb\n")
        );
    }

    #[test]
    fn host_network_copies_host_hosts() {
        let mut c = config();
        c.host_network = true;
        c.host_aliases.clear();
        assert_eq!(
            hosts_file(&c, &[], Some("127.0.0.1 localhost")),
            "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n"
        );
    }

    #[test]
    fn resolv_conf_lines() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }
}
