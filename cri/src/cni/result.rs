//! Reading a plugin chain's result: the pod's IPs on its interface.

use std::net::IpAddr;

use serde_json::Value;

/// Parses `addr/prefix` and returns the address.
pub(super) fn parse_cidr(s: &str) -> Result<IpAddr, &'static str> {
    let (addr, prefix) = s.split_once('/').ok_or("is not in addr/prefix form")?;
    let addr: IpAddr = addr.parse().map_err(|_| "has an invalid address")?;
    let prefix: u8 = prefix.parse().map_err(|_| "has an invalid prefix length")?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err("has a prefix length too long for its family");
    }
    Ok(addr)
}

/// The IPs a result (0.3.0 and later: `ips[].address` in CIDR form) gives to `ifname`,
/// IPv4 first. As go-cni does, an IP without an `interface` index belongs to the pod's
/// interface.
pub(super) fn pod_ips(result: &Value, ifname: &str) -> Result<Vec<IpAddr>, String> {
    let interfaces = match result.get("interfaces") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("\"interfaces\" is not an array".into()),
    };
    let ips = match result.get("ips") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("\"ips\" is not an array".into()),
    };
    let mut out = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let Some(address) = ip.get("address").and_then(Value::as_str) else {
            return Err(format!("ips[{i}] has no \"address\""));
        };
        let addr = parse_cidr(address).map_err(|r| format!("ips[{i}].address {address:?} {r}"))?;
        if let Some(index) = ip.get("interface").filter(|v| !v.is_null()) {
            let iface = index
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| interfaces.get(n))
                .ok_or_else(|| format!("ips[{i}].interface {index} is not in \"interfaces\""))?;
            if iface.get("name").and_then(Value::as_str) != Some(ifname) {
                continue;
            }
        }
        out.push(addr);
    }
    // Stable: each family keeps the plugins' order.
    out.sort_by_key(IpAddr::is_ipv6);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_ips_for_1_0_0_and_0_4_0_results() {
        let v100 = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
                {"address": "10.1.0.1/24", "interface": 0},
            ],
        });
        assert_eq!(
            pod_ips(&v100, "eth0").expect("ips"),
            vec![
                "10.1.0.5".parse::<IpAddr>().expect("ip"),
                "fd00::5".parse().expect("ip")
            ]
        );
        let v040 = json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.2.0.7/16"}],
        });
        assert_eq!(
            pod_ips(&v040, "eth0").expect("ips"),
            vec!["10.2.0.7".parse::<IpAddr>().expect("ip")]
        );
        let bad_index = json!({"ips": [{"address": "10.2.0.7/16", "interface": 3}]});
        assert!(pod_ips(&bad_index, "eth0").is_err());
        let bad_addr = json!({"ips": [{"address": "10.2.0.7"}]});
        assert!(pod_ips(&bad_addr, "eth0").is_err());
        assert!(pod_ips(&json!({}), "eth0").expect("empty").is_empty());
    }
}
