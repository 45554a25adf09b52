//! hostPorts of the built-in pod network: what the CNI `portmap` plugin does for a pod
//! (its `portMappings` capability, with `snat` on), kept per pod so the network's nft
//! table can be rendered whole from what is on disk.
//!
//! A pod's mappings are saved under `<state>/hostports/<sandbox ID>` before its rules
//! are installed and removed at teardown, so a restarted agent (or the reclaim after a
//! crash) renders the same rules and never leaves a DNAT to an address handed to
//! another pod.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PodNetError;

/// A hostPort's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// From a container port's `protocol` (`TCP` when empty, as defaulting makes it).
    pub fn from_k8s(s: &str) -> Option<Protocol> {
        match s {
            "" | "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The nft keyword.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One hostPort of a pod (CRI `PortMapping` with a host port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The protocol.
    pub protocol: Protocol,
    /// The port on the node.
    pub host_port: u16,
    /// The pod's port it reaches.
    pub container_port: u16,
    /// Only this node address (`hostIP`, either family: it maps only the pod's
    /// address of that family, an unspecified one on every local address of it);
    /// `None` is every local address of both families.
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    /// Whether this mapping applies to the pod's address `pod_ip`: as the `portmap`
    /// plugin, a `hostIP` (even `0.0.0.0` or `::`) only to the address of its family.
    pub fn applies_to(&self, pod_ip: IpAddr) -> bool {
        self.host_ip.is_none_or(|h| h.is_ipv6() == pod_ip.is_ipv6())
    }
}

/// The per-pod mappings on disk.
#[derive(Debug)]
pub(super) struct Store {
    dir: PathBuf,
}

impl Store {
    pub(super) fn new(dir: PathBuf) -> Self {
        Store { dir }
    }

    fn err(path: &Path) -> impl FnOnce(io::Error) -> PodNetError {
        let path = path.to_path_buf();
        move |source| PodNetError::Ipam { path, source }
    }

    /// Saves `id`'s mappings (written to a temporary name and renamed).
    pub(super) fn save(&self, id: &str, ports: &[PortMapping]) -> Result<(), PodNetError> {
        fs::create_dir_all(&self.dir).map_err(Self::err(&self.dir))?;
        let path = self.dir.join(id);
        let tmp = self.dir.join(format!(".{id}.{}.tmp", std::process::id()));
        let body = serde_json::to_vec(ports).map_err(|e| Self::err(&path)(e.into()))?;
        fs::write(&tmp, body).map_err(Self::err(&tmp))?;
        fs::rename(&tmp, &path).map_err(Self::err(&path))
    }

    /// Removes `id`'s mappings; whether it had any.
    pub(super) fn remove(&self, id: &str) -> Result<bool, PodNetError> {
        let path = self.dir.join(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Self::err(&path)(e)),
        }
    }

    /// Every pod's mappings, by sandbox ID; unreadable or half-written files are skipped
    /// (and temporary files of a crashed write removed).
    pub(super) fn load_all(&self) -> Result<Vec<(String, Vec<PortMapping>)>, PodNetError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                if name.ends_with(".tmp") && !name.contains(&format!(".{}.", std::process::id())) {
                    let _ = fs::remove_file(entry.path());
                }
                continue;
            }
            let Some(ports) = fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<Vec<PortMapping>>(&b).ok())
            else {
                continue;
            };
            out.push((name, ports));
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn saved_mappings_load_back_and_go_with_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path().join("hostports"));
        assert!(s.load_all().unwrap().is_empty());
        let m = PortMapping {
            protocol: Protocol::Udp,
            host_port: 5353,
            container_port: 53,
            host_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
        };
        s.save("a", &[m]).unwrap();
        fs::write(dir.path().join("hostports/.b.1.tmp"), "{").unwrap();
        assert_eq!(s.load_all().unwrap(), vec![("a".to_owned(), vec![m])]);
        assert!(!dir.path().join("hostports/.b.1.tmp").exists());
        assert!(s.remove("a").unwrap());
        assert!(!s.remove("a").unwrap());
        assert!(s.load_all().unwrap().is_empty());
        assert_eq!(Protocol::from_k8s(""), Some(Protocol::Tcp));
        assert_eq!(Protocol::from_k8s("SCTP"), Some(Protocol::Sctp));
        assert_eq!(Protocol::from_k8s("ICMP"), None);
        // Files written before hostIP took either family still load.
        fs::write(
            dir.path().join("hostports/old"),
            r#"[{"protocol":"Tcp","host_port":80,"container_port":8080,"host_ip":"10.0.0.1"}]"#,
        )
        .unwrap();
        assert_eq!(s.load_all().unwrap()[0].1[0].host_ip, m.host_ip);
    }

    #[test]
    fn a_host_ip_maps_only_its_family_and_none_maps_both() {
        let v4: IpAddr = "10.0.0.5".parse().unwrap();
        let v6: IpAddr = "fd00::5".parse().unwrap();
        let mut m = PortMapping {
            protocol: Protocol::Tcp,
            host_port: 80,
            container_port: 80,
            host_ip: None,
        };
        assert!(m.applies_to(v4) && m.applies_to(v6));
        m.host_ip = Some("192.168.1.1".parse().unwrap());
        assert!(m.applies_to(v4) && !m.applies_to(v6));
        m.host_ip = Some("2001:db8::1".parse().unwrap());
        assert!(!m.applies_to(v4) && m.applies_to(v6));
        m.host_ip = Some("::".parse().unwrap());
        assert!(!m.applies_to(v4) && m.applies_to(v6));
    }
}
