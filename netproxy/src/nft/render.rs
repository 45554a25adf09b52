//! Pure rendering of the wanted ruleset: the fixed base (hook chains, dispatch maps,
//! masquerading, reject helpers) and one `Fragment` per service port, following
//! upstream's `syncProxyRules` rule by rule.

use super::rule::{Dir, Match, Net, Rule, Verdict};
use super::{Container, MASQUERADE_MARK, RenderConfig, chain_base, endpoint_base};
use crate::model::{
    Endpoint, NodeTopology, ServicePortInfo, ServicePortName, categorize_endpoints,
};

/// Chains jumped to from the hooks and helpers, by name.
pub const SERVICES: &str = "services";
pub const MASQUERADING: &str = "masquerading";
pub const MARK_MASQ: &str = "mark-for-masquerade";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const FIREWALL_CHECK: &str = "firewall-check";
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub const NODEPORT_IPS: &str = "nodeport-ips";

/// One element of a map or set: key and, for maps, the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub container: Container,
    pub key: String,
    pub value: Option<String>,
}

/// A chain: its name, its base-chain spec (`type … hook … priority …`) if hooked, rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub hook: Option<String>,
    pub rules: Vec<Rule>,
}

/// A set or map definition: name, the body between braces and, for the endpoint
/// selection maps, the elements we own (affinity and dispatch containers: none here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDef {
    pub name: String,
    pub kind: &'static str,
    pub spec: String,
    pub elements: Vec<String>,
}

/// Everything one service port owns in the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub chains: Vec<Chain>,
    /// Affinity sets (elements are added by the packet path, never by us).
    pub sets: Vec<SetDef>,
    pub elements: Vec<Element>,
}

/// The fixed part of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base {
    pub chains: Vec<Chain>,
    pub sets: Vec<SetDef>,
    /// Elements of the fixed sets (node port IPs).
    pub set_elements: Vec<(String, String)>,
}

fn chain<R: Into<Rule>>(name: &str, hook: Option<String>, rules: Vec<R>) -> Chain {
    Chain {
        name: name.to_string(),
        hook,
        rules: rules.into_iter().map(Into::into).collect(),
    }
}

/// The base ruleset: hook chains and the chains, maps and sets every service uses
/// (upstream's `setupNFTables`).
pub fn base(cfg: &RenderConfig) -> Base {
    let ip = cfg.ip();
    let addr = cfg.addr_type();
    let hook = |t: &str, h: &str, prio: i32| Some(format!("type {t} hook {h} priority {prio}"));
    let jump_new = |c: &str| format!("ct state new jump {c}");
    let mut chains = vec![
        chain(
            "filter-prerouting",
            hook("filter", "prerouting", -110),
            vec![jump_new(FIREWALL_CHECK)],
        ),
        chain(
            "filter-input",
            hook("filter", "input", -110),
            vec![
                jump_new(NODEPORT_ENDPOINTS_CHECK),
                jump_new(SERVICE_ENDPOINTS_CHECK),
            ],
        ),
        chain(
            "filter-forward",
            hook("filter", "forward", -110),
            vec![
                jump_new(SERVICE_ENDPOINTS_CHECK),
                jump_new(CLUSTER_IPS_CHECK),
            ],
        ),
        chain(
            "filter-output",
            hook("filter", "output", -110),
            vec![jump_new(SERVICE_ENDPOINTS_CHECK), jump_new(FIREWALL_CHECK)],
        ),
        chain(
            "filter-output-post-dnat",
            hook("filter", "output", -90),
            vec![jump_new(CLUSTER_IPS_CHECK)],
        ),
        chain(
            "nat-prerouting",
            hook("nat", "prerouting", -100),
            vec![format!("jump {SERVICES}")],
        ),
        chain(
            "nat-output",
            hook("nat", "output", -100),
            vec![format!("jump {SERVICES}")],
        ),
        chain(
            "nat-postrouting",
            hook("nat", "postrouting", 100),
            vec![format!("jump {MASQUERADING}")],
        ),
    ];
    let mut cluster_ips_check = vec![format!("{ip} daddr @cluster-ips reject")];
    let service_cidrs: Vec<String> = cfg
        .service_cidrs
        .iter()
        .filter(|c| c.family() == cfg.family)
        .map(ToString::to_string)
        .collect();
    if !service_cidrs.is_empty() {
        cluster_ips_check.push(format!(
            "{ip} daddr {{ {} }} drop",
            service_cidrs.join(", ")
        ));
    }
    let (nodeport_match, nodeport_sets) = match &cfg.nodeport_ips {
        None => (
            format!("fib daddr type local {}", cfg.no_localhost()),
            Vec::new(),
        ),
        Some(ips) => (
            format!("{ip} daddr @{NODEPORT_IPS}"),
            ips.iter()
                .filter(|a| crate::model::IpFamily::of(a) == cfg.family && !a.is_loopback())
                .map(|a| (NODEPORT_IPS.to_string(), a.to_string()))
                .collect(),
        ),
    };
    let nodeport_check = match &cfg.nodeport_ips {
        None => cfg.no_localhost().to_string(),
        Some(_) => format!("{ip} daddr @{NODEPORT_IPS}"),
    };
    chains.extend([
        chain(CLUSTER_IPS_CHECK, None, cluster_ips_check),
        chain(
            FIREWALL_CHECK,
            None,
            vec![format!(
                "{ip} daddr . meta l4proto . th dport vmap @firewall-ips"
            )],
        ),
        chain(
            MARK_MASQ,
            None,
            vec![format!("mark set mark or {MASQUERADE_MARK}")],
        ),
        chain(
            MASQUERADING,
            None,
            vec![
                format!("mark and {MASQUERADE_MARK} == 0 return"),
                format!("mark set mark xor {MASQUERADE_MARK}"),
                "masquerade fully-random".to_string(),
            ],
        ),
        chain(
            NODEPORT_ENDPOINTS_CHECK,
            None,
            vec![format!(
                "{nodeport_check} meta l4proto . th dport vmap @no-endpoint-nodeports"
            )],
        ),
        chain(REJECT_CHAIN, None, vec!["reject".to_string()]),
        chain(
            SERVICE_ENDPOINTS_CHECK,
            None,
            vec![format!(
                "{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services"
            )],
        ),
        chain(
            SERVICES,
            None,
            vec![
                format!("{ip} daddr . meta l4proto . th dport vmap @service-ips"),
                format!("{nodeport_match} meta l4proto . th dport vmap @service-nodeports"),
            ],
        ),
    ]);
    let ip_proto_port = format!("type {addr} . inet_proto . inet_service : verdict");
    let proto_port = "type inet_proto . inet_service : verdict".to_string();
    let mut sets = vec![
        SetDef {
            name: Container::ClusterIps.name().into(),
            kind: "set",
            spec: format!("type {addr}"),
            elements: Vec::new(),
        },
        SetDef {
            name: Container::ServiceIps.name().into(),
            kind: "map",
            spec: ip_proto_port.clone(),
            elements: Vec::new(),
        },
        SetDef {
            name: Container::ServiceNodePorts.name().into(),
            kind: "map",
            spec: proto_port.clone(),
            elements: Vec::new(),
        },
        SetDef {
            name: Container::NoEndpointServices.name().into(),
            kind: "map",
            spec: ip_proto_port.clone(),
            elements: Vec::new(),
        },
        SetDef {
            name: Container::NoEndpointNodePorts.name().into(),
            kind: "map",
            spec: proto_port,
            elements: Vec::new(),
        },
        SetDef {
            name: Container::FirewallIps.name().into(),
            kind: "map",
            spec: ip_proto_port,
            elements: Vec::new(),
        },
    ];
    if cfg.nodeport_ips.is_some() {
        sets.push(SetDef {
            name: NODEPORT_IPS.into(),
            kind: "set",
            spec: format!("type {addr}"),
            elements: Vec::new(),
        });
    }
    Base {
        chains,
        sets,
        set_elements: nodeport_sets,
    }
}

/// Whether a service port's fragment has a `firewall-` chain (`loadBalancerSourceRanges`
/// on a service with load-balancer IPs): the only chains of the main table.
pub fn has_firewall(svc: &ServicePortInfo) -> bool {
    !svc.load_balancer_vips.is_empty() && !svc.load_balancer_source_ranges.is_empty()
}

/// The fragment of one service port (upstream's per-service body of `syncProxyRules`).
pub fn service_port(
    spn: &ServicePortName,
    svc: &ServicePortInfo,
    endpoints: &[Endpoint],
    node: &NodeTopology,
    cfg: &RenderConfig,
) -> Fragment {
    let family = cfg.family;
    let proto = svc.protocol.as_str();
    let port = svc.port;
    let base = chain_base(spn);
    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");
    let firewall_chain = format!("firewall-{base}");
    let cat = categorize_endpoints(endpoints, svc, node);
    let mut f = Fragment::default();

    let uses_cluster_chain = !cat.cluster.is_empty() && svc.uses_cluster_endpoints();
    let uses_local_chain = !cat.local.is_empty() && svc.uses_local_endpoints();
    let (internal_chain, has_internal) = if svc.internal_policy_local {
        (&local_chain, cat.has_any && !cat.local.is_empty())
    } else {
        (&cluster_chain, cat.has_any)
    };
    let (external_policy_chain, has_external) = if svc.external_policy_local {
        (&local_chain, cat.has_any && !cat.local.is_empty())
    } else {
        (&cluster_chain, cat.has_any)
    };
    let uses_external_chain = cat.has_any && svc.externally_accessible();
    let (internal_verdict, external_verdict) = if !cat.has_any {
        (
            format!("goto {REJECT_CHAIN}"),
            format!("goto {REJECT_CHAIN}"),
        )
    } else {
        ("drop".to_string(), "drop".to_string())
    };
    let key3 = |addr: &std::net::IpAddr| format!("{addr} . {proto} . {port}");
    let mut elem = |c: Container, key: String, value: Option<String>| {
        f.elements.push(Element {
            container: c,
            key,
            value,
        });
    };

    elem(Container::ClusterIps, svc.cluster_ip.to_string(), None);
    if has_internal {
        elem(
            Container::ServiceIps,
            key3(&svc.cluster_ip),
            Some(format!("goto {internal_chain}")),
        );
    } else {
        elem(
            Container::NoEndpointServices,
            key3(&svc.cluster_ip),
            Some(internal_verdict),
        );
    }
    for ext in &svc.external_ips {
        if cat.has_any {
            elem(
                Container::ServiceIps,
                key3(ext),
                Some(format!("goto {external_chain}")),
            );
        }
        if !has_external {
            elem(
                Container::NoEndpointServices,
                key3(ext),
                Some(external_verdict.clone()),
            );
        }
    }
    let uses_fw_chain = has_firewall(svc);
    for vip in &svc.load_balancer_vips {
        if cat.has_any {
            elem(
                Container::ServiceIps,
                key3(vip),
                Some(format!("goto {external_chain}")),
            );
        }
        if uses_fw_chain {
            elem(
                Container::FirewallIps,
                key3(vip),
                Some(format!("goto {firewall_chain}")),
            );
        }
        if !has_external {
            elem(
                Container::NoEndpointServices,
                key3(vip),
                Some(external_verdict.clone()),
            );
        }
    }
    if svc.node_port != 0 {
        let key = format!("{proto} . {}", svc.node_port);
        if cat.has_any {
            elem(
                Container::ServiceNodePorts,
                key.clone(),
                Some(format!("goto {external_chain}")),
            );
        }
        if !has_external {
            elem(Container::NoEndpointNodePorts, key, Some(external_verdict));
        }
    }

    // Internal traffic: masquerade what comes from off the cluster (or everything).
    let mut internal_rules = Vec::new();
    let masq = || Verdict::Jump(MARK_MASQ.to_string());
    if has_internal {
        let dest = vec![
            Match::Addr {
                dir: Dir::Daddr,
                negate: false,
                nets: vec![Net::Host(svc.cluster_ip)],
                braces: false,
            },
            Match::Dport {
                proto: svc.protocol,
                port,
            },
        ];
        if cfg.masquerade_all {
            internal_rules.push(Rule::matching(family, dest, masq()));
        } else if let Some(not_local) = cfg.if_local(true) {
            let mut m = dest;
            m.push(not_local);
            internal_rules.push(Rule::matching(family, m, masq()));
        }
    }

    if uses_external_chain {
        let mut rules = Vec::new();
        let to_cluster = || Verdict::Goto(cluster_chain.clone());
        if !svc.external_policy_local {
            rules.push(Rule::matching(family, Vec::new(), masq()));
        } else {
            if let Some(local) = cfg.if_local(false) {
                rules.push(
                    Rule::matching(family, vec![local], to_cluster())
                        .with_comment("short-circuit pod traffic"),
                );
            }
            rules.push(
                Rule::matching(family, vec![Match::FibSaddrLocal], masq())
                    .with_comment("masquerade local traffic"),
            );
            rules.push(
                Rule::matching(family, vec![Match::FibSaddrLocal], to_cluster())
                    .with_comment("short-circuit local traffic"),
            );
        }
        if has_external {
            rules.push(Rule::matching(
                family,
                Vec::new(),
                Verdict::Goto(external_policy_chain.clone()),
            ));
        }
        f.chains.push(chain(&external_chain, None, rules));
    }

    if uses_fw_chain {
        let mut sources: Vec<Net> = svc
            .load_balancer_source_ranges
            .iter()
            .map(|c| Net::Prefix(*c))
            .collect();
        let allow_from_node = cfg.node_ip.is_some_and(|n| {
            svc.load_balancer_source_ranges
                .iter()
                .any(|c| c.contains(&n))
        });
        if allow_from_node {
            sources.extend(svc.load_balancer_vips.iter().map(|a| Net::Host(*a)));
        }
        f.chains.push(chain(
            &firewall_chain,
            None,
            vec![Rule::matching(
                family,
                vec![Match::Addr {
                    dir: Dir::Saddr,
                    negate: true,
                    nets: sources,
                    braces: true,
                }],
                Verdict::Drop,
            )],
        ));
    }

    let ep_chain = |ep: &Endpoint| format!("endpoint-{}", endpoint_base(spn, ep));
    let affinity_set = |ep: &Endpoint| format!("affinity-{}", endpoint_base(spn, ep));
    if let Some(timeout) = svc.session_affinity_seconds {
        for ep in &cat.all_reachable {
            f.sets.push(SetDef {
                name: affinity_set(ep),
                kind: "set",
                spec: format!(
                    "type {}; flags dynamic,timeout; timeout {timeout}s",
                    cfg.addr_type()
                ),
                elements: Vec::new(),
            });
        }
    }
    // Endpoint selection: `numgen random mod N vmap` as upstream, but over a named map
    // per policy chain (`vmap-<chain>`) rather than an inline anonymous one: the kernel
    // names each anonymous set by scanning every set of the table, so N services cost
    // O(N²) (10k services: 3 minutes to load instead of 15 s with named maps).
    let dispatch = |chain_name: &str, eps: &[&Endpoint]| -> (Vec<Rule>, SetDef) {
        let mut rules = Vec::new();
        if svc.session_affinity_seconds.is_some() {
            for ep in eps {
                rules.push(Rule::matching(
                    family,
                    vec![Match::SaddrIn(affinity_set(ep))],
                    Verdict::Goto(ep_chain(ep)),
                ));
            }
        }
        let map = format!("vmap-{chain_name}");
        rules.push(Rule::NumgenVmap {
            modulus: u32::try_from(eps.len()).unwrap_or(u32::MAX),
            map: map.clone(),
        });
        let elements = eps
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto {}", ep_chain(ep)))
            .collect();
        let def = SetDef {
            name: map,
            kind: "map",
            spec: "typeof numgen random mod 1 : verdict".to_string(),
            elements,
        };
        (rules, def)
    };
    let mut internal_rules = Some(internal_rules);
    if uses_cluster_chain {
        let mut rules = if internal_chain == &cluster_chain {
            internal_rules.take().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (more, map) = dispatch(&cluster_chain, &cat.cluster);
        rules.extend(more);
        f.sets.push(map);
        f.chains.push(chain(&cluster_chain, None, rules));
    }
    if uses_local_chain {
        let mut rules = if internal_chain == &local_chain {
            internal_rules.take().unwrap_or_default()
        } else {
            Vec::new()
        };
        let (more, map) = dispatch(&local_chain, &cat.local);
        rules.extend(more);
        f.sets.push(map);
        f.chains.push(chain(&local_chain, None, rules));
    }
    for ep in &cat.all_reachable {
        let mut rules = vec![Rule::matching(
            family,
            vec![Match::Addr {
                dir: Dir::Saddr,
                negate: false,
                nets: vec![Net::Host(ep.ip)],
                braces: false,
            }],
            masq(),
        )];
        if svc.session_affinity_seconds.is_some() {
            rules.push(Rule::UpdateSaddr {
                family,
                set: affinity_set(ep),
            });
        }
        rules.push(Rule::Dnat {
            proto: svc.protocol,
            addr: ep.ip,
            port: ep.port,
        });
        f.chains.push(chain(&ep_chain(ep), None, rules));
    }
    f
}
