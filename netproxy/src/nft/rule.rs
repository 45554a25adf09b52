//! The rules of the per-service chains as typed values: exactly the shapes `render`
//! produces for a fragment, each rendering to the text `nft -f` reads (the snapshots) and
//! encoded by `netlink::expr` to the expressions nft itself would send for that text.
//!
//! The fixed base chains (hooks, dispatch, masquerading) stay text (`Rule::Raw`): they are
//! only written by a full sync, which goes through `nft -f`; an incremental sync never
//! touches them, so the netlink encoder refuses `Raw`.

use std::fmt;
use std::net::IpAddr;

use crate::model::{Cidr, IpFamily, Protocol};

/// An address or a network in an address match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Net {
    Host(IpAddr),
    Prefix(Cidr),
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Net::Host(a) => write!(f, "{a}"),
            Net::Prefix(c) => write!(f, "{c}"),
        }
    }
}

/// Which address of the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    Saddr,
    Daddr,
}

impl Dir {
    fn as_str(self) -> &'static str {
        match self {
            Dir::Saddr => "saddr",
            Dir::Daddr => "daddr",
        }
    }
}

/// The end of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    Jump(String),
    Goto(String),
    Drop,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
            Verdict::Drop => f.write_str("drop"),
        }
    }
}

/// One match of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    /// `ip saddr 10.0.0.0/8`, `ip daddr != { a, b }`: one network, or an anonymous set
    /// when there are several or `braces` asks for the set syntax.
    Addr {
        dir: Dir,
        negate: bool,
        nets: Vec<Net>,
        braces: bool,
    },
    /// `tcp dport 80` (nft adds the `meta l4proto tcp` dependency).
    Dport { proto: Protocol, port: u16 },
    /// `fib saddr type local`.
    FibSaddrLocal,
    /// `ip saddr @set`.
    SaddrIn(String),
}

/// A rule of a per-service chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Text of a base chain (full syncs only).
    Raw(String),
    /// Matches, then a verdict, with an optional comment.
    Match {
        family: IpFamily,
        matches: Vec<Match>,
        verdict: Verdict,
        comment: Option<String>,
    },
    /// `numgen random mod N vmap @map`.
    NumgenVmap { modulus: u32, map: String },
    /// `update @set { ip saddr }`.
    UpdateSaddr { family: IpFamily, set: String },
    /// `meta l4proto tcp dnat to 10.0.0.1:80`.
    Dnat {
        proto: Protocol,
        addr: IpAddr,
        port: u16,
    },
}

impl Rule {
    /// A rule of matches and a verdict, without comment.
    pub fn matching(family: IpFamily, matches: Vec<Match>, verdict: Verdict) -> Self {
        Rule::Match {
            family,
            matches,
            verdict,
            comment: None,
        }
    }

    /// The same rule with a comment (only for `Match` rules; others are unchanged).
    pub fn with_comment(self, text: &str) -> Self {
        match self {
            Rule::Match {
                family,
                matches,
                verdict,
                ..
            } => Rule::Match {
                family,
                matches,
                verdict,
                comment: Some(text.to_string()),
            },
            other => other,
        }
    }
}

/// `ip` or `ip6`.
pub fn ip_keyword(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

fn write_match(f: &mut fmt::Formatter<'_>, family: IpFamily, m: &Match) -> fmt::Result {
    let ip = ip_keyword(family);
    match m {
        Match::Addr {
            dir,
            negate,
            nets,
            braces,
        } => {
            write!(f, "{ip} {} ", dir.as_str())?;
            if *negate {
                f.write_str("!= ")?;
            }
            if nets.len() == 1 && !braces {
                write!(f, "{}", nets[0])
            } else {
                let items: Vec<String> = nets.iter().map(ToString::to_string).collect();
                write!(f, "{{ {} }}", items.join(", "))
            }
        }
        Match::Dport { proto, port } => write!(f, "{} dport {port}", proto.as_str()),
        Match::FibSaddrLocal => f.write_str("fib saddr type local"),
        Match::SaddrIn(set) => write!(f, "{ip} saddr @{set}"),
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Raw(text) => f.write_str(text),
            Rule::Match {
                family,
                matches,
                verdict,
                comment,
            } => {
                for m in matches {
                    write_match(f, *family, m)?;
                    f.write_str(" ")?;
                }
                write!(f, "{verdict}")?;
                if let Some(c) = comment {
                    write!(f, " comment \"{c}\"")?;
                }
                Ok(())
            }
            Rule::NumgenVmap { modulus, map } => {
                write!(f, "numgen random mod {modulus} vmap @{map}")
            }
            Rule::UpdateSaddr { family, set } => {
                write!(f, "update @{set} {{ {} saddr }}", ip_keyword(*family))
            }
            Rule::Dnat { proto, addr, port } => {
                let to = match addr {
                    IpAddr::V4(a) => format!("{a}:{port}"),
                    IpAddr::V6(a) => format!("[{a}]:{port}"),
                };
                write!(f, "meta l4proto {} dnat to {to}", proto.as_str())
            }
        }
    }
}

impl From<String> for Rule {
    fn from(text: String) -> Self {
        Rule::Raw(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_as_nft_text() {
        let cidr: Cidr = "10.0.0.0/8".parse().expect("cidr");
        let r = Rule::matching(
            IpFamily::V4,
            vec![
                Match::Addr {
                    dir: Dir::Daddr,
                    negate: false,
                    nets: vec![Net::Host("172.30.0.1".parse().expect("ip"))],
                    braces: false,
                },
                Match::Dport {
                    proto: Protocol::Tcp,
                    port: 80,
                },
                Match::Addr {
                    dir: Dir::Saddr,
                    negate: true,
                    nets: vec![Net::Prefix(cidr)],
                    braces: false,
                },
            ],
            Verdict::Jump("mark-for-masquerade".into()),
        );
        assert_eq!(
            r.to_string(),
            "ip daddr 172.30.0.1 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade"
        );
        let fw = Rule::matching(
            IpFamily::V6,
            vec![Match::Addr {
                dir: Dir::Saddr,
                negate: true,
                nets: vec![Net::Prefix("2001:db8::/48".parse().expect("cidr"))],
                braces: true,
            }],
            Verdict::Drop,
        );
        assert_eq!(fw.to_string(), "ip6 saddr != { 2001:db8::/48 } drop");
        let c = Rule::matching(
            IpFamily::V4,
            vec![Match::FibSaddrLocal],
            Verdict::Goto("x".into()),
        )
        .with_comment("short-circuit local traffic");
        assert_eq!(
            c.to_string(),
            "fib saddr type local goto x comment \"short-circuit local traffic\""
        );
        let d = Rule::Dnat {
            proto: Protocol::Udp,
            addr: "fd00::1".parse().expect("ip"),
            port: 53,
        };
        assert_eq!(d.to_string(), "meta l4proto udp dnat to [fd00::1]:53");
        let u = Rule::UpdateSaddr {
            family: IpFamily::V6,
            set: "a".into(),
        };
        assert_eq!(u.to_string(), "update @a { ip6 saddr }");
    }
}
