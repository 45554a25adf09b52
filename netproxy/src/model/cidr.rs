//! CIDRs (`10.0.0.0/8`, `fd00::/64`) as the proxy's flags and `loadBalancerSourceRanges`
//! give them: parsing, family and containment.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::IpFamily;

/// Why a CIDR did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("invalid CIDR {0:?}: expected ADDRESS/PREFIX")]
    Syntax(String),
    #[error("invalid CIDR {0:?}: prefix length out of range")]
    Prefix(String),
}

/// An address and prefix length; the address is kept masked to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The family of the network.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr)
    }

    /// The network address (masked to the prefix).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside the network.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask4(u32::from(*ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask6(u128::from(*ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask4(v: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        v & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn mask6(v: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        v & (u128::MAX << (128 - u32::from(prefix)))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| CidrError::Syntax(s.to_string()))?;
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Syntax(s.to_string()))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| CidrError::Syntax(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError::Prefix(s.to_string()));
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(mask4(u32::from(a), prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask6(u128::from(a), prefix).into()),
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_masks_and_contains() {
        let c: Cidr = "10.1.2.3/8".parse().expect("cidr");
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(&"10.200.0.1".parse().expect("ip")));
        assert!(!c.contains(&"11.0.0.1".parse().expect("ip")));
        assert!(!c.contains(&"::1".parse().expect("ip")));
        let c6: Cidr = "fd00::1/64".parse().expect("cidr");
        assert_eq!(c6.to_string(), "fd00::/64");
        assert_eq!(c6.family(), IpFamily::V6);
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .expect("cidr")
                .contains(&"1.2.3.4".parse().expect("ip"))
        );
        assert_eq!(
            "1.2.3.4/33".parse::<Cidr>(),
            Err(CidrError::Prefix("1.2.3.4/33".into()))
        );
        assert!("1.2.3.4".parse::<Cidr>().is_err());
    }
}
