//! The netlink half of the built-in pod network: the bridge with the gateway address of
//! each range (IPv4, IPv6 or both), a veth pair per pod (its peer created straight
//! inside the pod's netns as `eth0`), the pod's address and default route per family,
//! and `lo`, all through `rtnetlink`. IPv6 addresses go on without DAD (`IFA_F_NODAD`),
//! and the namespace forwards IPv6 (`net.ipv6.conf.all.forwarding`), as the bridge
//! plugin sets them.
//!
//! Requests in the pod's namespace go over a netlink socket opened there: a short-lived
//! thread joins the namespace, opens the socket and exits (a socket stays in the
//! namespace it was made in), so no runtime thread ever changes namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use super::PodNetError;

const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    }
}

fn nl(op: &'static str, name: &str) -> impl FnOnce(rtnetlink::Error) -> PodNetError {
    let name = name.to_owned();
    move |source| PodNetError::Netlink {
        op,
        name,
        source: Box::new(source),
    }
}

/// A netlink connection in the agent's own namespace, its task running on the runtime.
pub(super) fn connect() -> Result<Handle, PodNetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| PodNetError::Socket {
        netns: "(host)".into(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink connection inside the namespace pinned at `netns`; dropped with the handle.
fn connect_in(netns: &Path) -> Result<(Handle, tokio::task::JoinHandle<()>), PodNetError> {
    let sock_err = |source| PodNetError::Socket {
        netns: netns.display().to_string(),
        source,
    };
    let file = File::open(netns).map_err(sock_err)?;
    let rt = tokio::runtime::Handle::current();
    let made = std::thread::spawn(move || {
        let _enter = rt.enter();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        rtnetlink::new_connection()
    })
    .join()
    .map_err(|_| sock_err(std::io::Error::other("netns thread panicked")))?;
    let (conn, handle, _) = made.map_err(sock_err)?;
    Ok((handle, tokio::spawn(conn)))
}

async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, PodNetError> {
    match handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl("get link", name)(e)),
    }
}

/// One of a pod's addresses (one per range): the address, the range's prefix length
/// and the gateway its default route of that family goes through.
#[derive(Debug, Clone, Copy)]
pub(super) struct PodAddr {
    /// The pod's address.
    pub ip: IpAddr,
    /// The range's prefix length.
    pub prefix: u8,
    /// The bridge's address in the range.
    pub gateway: IpAddr,
}

/// Adds an address; an IPv6 one without duplicate address detection (`IFA_F_NODAD`),
/// usable at once and never failed by hairpin's echo of its own solicitation (why the
/// bridge plugin turns `accept_dad` off on the pod's interface).
async fn add_address(
    handle: &Handle,
    index: u32,
    ip: IpAddr,
    prefix: u8,
) -> Result<(), rtnetlink::Error> {
    let mut req = handle.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await
}

fn write_sysctl(path: &Path, value: &str) -> Result<(), PodNetError> {
    if std::fs::read_to_string(path).map_or(true, |v| v.trim() != value) {
        std::fs::write(path, value).map_err(|source| PodNetError::Sysctl {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Makes sure the bridge exists, is up and holds the gateway address of every range
/// (the bridge plugin's `isGateway`), and that the namespace forwards each family the
/// ranges have. Returns the bridge's index.
pub(super) async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    gateways: &[(IpAddr, u8)],
) -> Result<u32, PodNetError> {
    let index = match index_of(handle, name).await? {
        Some(i) => i,
        None => {
            match handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
                Err(e) if errno(&e) != Some(EEXIST) => return Err(nl("add bridge", name)(e)),
                _ => {}
            }
            index_of(handle, name)
                .await?
                .ok_or_else(|| PodNetError::Missing(name.to_owned()))?
        }
    };
    let v6 = gateways.iter().any(|(gw, _)| gw.is_ipv6());
    if v6 {
        // The bridge plugin's: the bridge's routes are its own, not a router's adverts.
        let _ = write_sysctl(
            &Path::new("/proc/sys/net/ipv6/conf")
                .join(name)
                .join("accept_ra"),
            "0",
        );
    }
    for (gateway, prefix) in gateways {
        match add_address(handle, index, *gateway, *prefix).await {
            Err(e) if errno(&e) != Some(EEXIST) => {
                return Err(nl("add gateway address", name)(e));
            }
            _ => {}
        }
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl("set bridge up", name))?;
    // /proc/sys/net is the reading task's namespace, as the bridge plugin relies on too.
    if gateways.iter().any(|(gw, _)| gw.is_ipv4()) {
        write_sysctl(Path::new("/proc/sys/net/ipv4/ip_forward"), "1")?;
    }
    if v6 {
        write_sysctl(Path::new("/proc/sys/net/ipv6/conf/all/forwarding"), "1")?;
    }
    Ok(index)
}

/// Lets the bridge route packets from 127.0.0.0/8 (the `portmap` plugin's
/// `route_localnet`): a hostPort reached on the node's localhost is DNATed to the pod,
/// then masqueraded.
pub(super) fn route_localnet(bridge: &str) -> Result<(), PodNetError> {
    write_sysctl(
        &Path::new("/proc/sys/net/ipv4/conf")
            .join(bridge)
            .join("route_localnet"),
        "1",
    )
}

/// Creates the pod's veth pair: `host` on the bridge (up, hairpin on, as the bridge
/// plugin's `hairpinMode`), and its peer as `eth0` inside `netns`, then gives the pod
/// its addresses, brings `eth0` and `lo` up and routes everything of each family
/// through that family's gateway.
pub(super) async fn attach(
    handle: &Handle,
    bridge: u32,
    host: &str,
    netns: &Path,
    addrs: &[PodAddr],
) -> Result<(), PodNetError> {
    let ns = File::open(netns).map_err(|source| PodNetError::Socket {
        netns: netns.display().to_string(),
        source,
    })?;
    let peer = LinkUnspec::new_with_name("eth0")
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host.to_owned())
        .controller(bridge)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    handle
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(nl("add veth", host))?;
    drop(ns);
    crate::failpoint::hit("podnet-after-veth");
    let index = index_of(handle, host)
        .await?
        .ok_or_else(|| PodNetError::Missing(host.to_owned()))?;
    handle
        .link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(nl("set hairpin", host))?;

    let (pod, conn) = connect_in(netns)?;
    let result = configure_pod(&pod, addrs).await;
    drop(pod);
    conn.abort();
    result
}

async fn configure_pod(pod: &Handle, addrs: &[PodAddr]) -> Result<(), PodNetError> {
    for name in ["lo", "eth0"] {
        let index = index_of(pod, name)
            .await?
            .ok_or_else(|| PodNetError::Missing(name.to_owned()))?;
        if name == "eth0" {
            for a in addrs {
                add_address(pod, index, a.ip, a.prefix)
                    .await
                    .map_err(nl("add pod address", name))?;
            }
        }
        pod.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl("set link up", name))?;
        if name == "eth0" {
            for a in addrs {
                let route = match a.gateway {
                    IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(gw)
                        .output_interface(index)
                        .build(),
                    IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                        .gateway(gw)
                        .output_interface(index)
                        .build(),
                };
                pod.route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(nl("add default route", name))?;
            }
        }
    }
    Ok(())
}

/// Deletes the host end of a pod's veth pair (which takes the peer with it); a link
/// already gone (its netns was removed first) is not an error.
pub(super) async fn detach(handle: &Handle, host: &str) -> Result<(), PodNetError> {
    let Some(index) = index_of(handle, host).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Err(e) if errno(&e) != Some(ENODEV) => Err(nl("delete veth", host)(e)),
        _ => Ok(()),
    }
}

/// Whether a link with this name exists (for tests and reclaim).
pub(super) async fn exists(handle: &Handle, name: &str) -> Result<bool, PodNetError> {
    Ok(index_of(handle, name).await?.is_some())
}
