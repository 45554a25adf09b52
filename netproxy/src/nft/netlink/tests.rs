//! Byte-exact checks of the rule encoder against nft 1.0.6: `testdata/shapes.nft` was
//! applied with `strace -e sendmsg nft -f` and the `NFTA_RULE_EXPRESSIONS` payload of each
//! `NEWRULE` kept, one hex line per rule, in `testdata/nft-1.0.6-rules.hex`.

use super::expr::encode;
use crate::model::{IpFamily, Protocol};
use crate::nft::rule::{Dir, Match, Net, Rule, Verdict};

const NFT_RULES: &str = include_str!("testdata/nft-1.0.6-rules.hex");

fn host(a: &str) -> Net {
    Net::Host(a.parse().expect("ip"))
}

fn pfx(c: &str) -> Net {
    Net::Prefix(c.parse().expect("cidr"))
}

fn addr(dir: Dir, negate: bool, nets: Vec<Net>, braces: bool) -> Match {
    Match::Addr {
        dir,
        negate,
        nets,
        braces,
    }
}

fn rule(matches: Vec<Match>, verdict: Verdict) -> Rule {
    Rule::matching(IpFamily::V4, matches, verdict)
}

/// The rules of `testdata/shapes.nft`, in order, with the anonymous set id nft gave the
/// set-using ones (ids count up over the whole file).
fn shapes() -> Vec<(Rule, Option<u32>)> {
    let masq = || Verdict::Jump("mark-for-masquerade".into());
    let ep = || Verdict::Goto("ep".into());
    let dst = |proto, port| {
        vec![
            addr(Dir::Daddr, false, vec![host("172.30.0.41")], false),
            Match::Dport { proto, port },
        ]
    };
    let mut with_saddr = dst(Protocol::Tcp, 80);
    with_saddr.push(addr(Dir::Saddr, true, vec![pfx("10.0.0.0/8")], false));
    let mut with_set = dst(Protocol::Sctp, 80);
    with_set.push(addr(
        Dir::Saddr,
        true,
        vec![pfx("10.0.0.0/8"), pfx("11.0.0.0/8")],
        true,
    ));
    vec![
        (rule(with_saddr, masq()), None),
        (rule(dst(Protocol::Udp, 53), masq()), None),
        (rule(with_set, masq()), Some(0x0e)),
        (
            rule(
                vec![addr(Dir::Saddr, false, vec![pfx("10.0.0.0/8")], false)],
                ep(),
            )
            .with_comment("short-circuit pod traffic"),
            None,
        ),
        (
            rule(vec![Match::FibSaddrLocal], masq()).with_comment("masquerade local traffic"),
            None,
        ),
        (rule(Vec::new(), masq()), None),
        (rule(Vec::new(), ep()), None),
        (
            rule(
                vec![addr(Dir::Saddr, true, vec![pfx("203.0.113.0/25")], true)],
                Verdict::Drop,
            ),
            None,
        ),
        (
            rule(
                vec![addr(
                    Dir::Saddr,
                    true,
                    vec![pfx("203.0.113.0/25"), host("5.6.7.8")],
                    true,
                )],
                Verdict::Drop,
            ),
            Some(0x0f),
        ),
        (rule(vec![Match::SaddrIn("aff".into())], ep()), None),
        (
            Rule::NumgenVmap {
                modulus: 2,
                map: "vm".into(),
            },
            None,
        ),
        (
            rule(
                vec![addr(Dir::Saddr, false, vec![host("10.180.0.3")], false)],
                masq(),
            ),
            None,
        ),
        (
            Rule::UpdateSaddr {
                family: IpFamily::V4,
                set: "aff".into(),
            },
            None,
        ),
        (
            Rule::Dnat {
                proto: Protocol::Tcp,
                addr: "10.180.0.3".parse().expect("ip"),
                port: 80,
            },
            None,
        ),
    ]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn rules_encode_byte_for_byte_as_nft() {
    let expected: Vec<&str> = NFT_RULES.lines().filter(|l| !l.is_empty()).collect();
    let shapes = shapes();
    assert_eq!(expected.len(), shapes.len());
    for ((r, set_id), want) in shapes.iter().zip(expected) {
        let mut next = set_id.map_or(0, |id| id - 1);
        // The sets created before the rules, with nft's ids.
        let ids = |name: &str| match name {
            "vm" => 1,
            "aff" => 2,
            _ => 0,
        };
        let got = encode(r, &mut next, &ids).expect("encodable");
        assert_eq!(hex(&got.exprs), want, "rule `{r}`");
    }
}

#[test]
fn comments_are_rule_userdata() {
    let r =
        rule(vec![Match::FibSaddrLocal], Verdict::Drop).with_comment("masquerade local traffic");
    let ud = encode(&r, &mut 0, &|_| 0)
        .expect("encodable")
        .userdata
        .expect("userdata");
    // From nft's NEWRULE: TLV type 0, length 0x19, the text and its NUL.
    let mut want = vec![0x00, 0x19];
    want.extend_from_slice(b"masquerade local traffic\0");
    assert_eq!(ud, want);
}

#[test]
fn base_chain_text_is_refused() {
    assert!(encode(&Rule::Raw("jump services".into()), &mut 0, &|_| 0).is_err());
}
