//! Unit tests of `podspec.rs`.

use super::*;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
    let map = |kv: &[(&str, &str)]| {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                .collect()
        })
    };
    Container {
        name: "c".into(),
        resources: Some(ResourceRequirements {
            requests: map(requests),
            limits: map(limits),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn dns_spec(policy: &str, host_network: bool) -> PodSpec {
    PodSpec {
        dns_policy: Some(policy.into()),
        host_network: Some(host_network),
        ..Default::default()
    }
}

const HOST: &str =
    "# host\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example\noptions edns0\n";

#[test]
fn dns_policies_as_upstream() {
    let cluster = DnsSettings {
        cluster_dns: vec!["10.96.0.10".into()],
        cluster_domain: "cluster.local".into(),
        resolv_conf: None,
    };
    let first = dns_config(&dns_spec("ClusterFirst", false), "web", &cluster, HOST);
    assert_eq!(first.servers, ["10.96.0.10"]);
    assert_eq!(
        first.searches,
        [
            "web.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "corp.example"
        ]
    );
    assert_eq!(first.options, ["ndots:5"]);

    let default = dns_config(&dns_spec("Default", false), "web", &cluster, HOST);
    assert_eq!(default.servers, ["192.0.2.53", "192.0.2.54"]);
    assert_eq!(default.searches, ["corp.example"]);
    assert_eq!(default.options, ["edns0"]);

    // Host network: ClusterFirst means Default, ClusterFirstWithHostNet means cluster.
    assert_eq!(
        dns_config(&dns_spec("ClusterFirst", true), "web", &cluster, HOST),
        default
    );
    assert_eq!(
        dns_config(
            &dns_spec("ClusterFirstWithHostNet", true),
            "web",
            &cluster,
            HOST
        ),
        first
    );
    // No cluster DNS: ClusterFirst falls back to the host's.
    let standalone = DnsSettings::default();
    assert_eq!(
        dns_config(&dns_spec("ClusterFirst", false), "web", &standalone, HOST),
        default
    );
}

#[test]
fn dns_config_merges() {
    use k8s_openapi::api::core::v1::{PodDNSConfig, PodDNSConfigOption};
    let mut spec = dns_spec("None", false);
    spec.dns_config = Some(PodDNSConfig {
        nameservers: Some(vec!["1.2.3.4".into()]),
        searches: Some(vec!["ns1.svc.cluster-domain.example".into()]),
        options: Some(vec![
            PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            },
            PodDNSConfigOption {
                name: Some("edns0".into()),
                value: None,
            },
        ]),
    });
    let dns = dns_config(&spec, "web", &DnsSettings::default(), HOST);
    assert_eq!(dns.servers, ["1.2.3.4"]);
    assert_eq!(dns.searches, ["ns1.svc.cluster-domain.example"]);
    assert_eq!(dns.options, ["ndots:2", "edns0"]);

    spec.dns_policy = Some("ClusterFirst".into());
    let cluster = DnsSettings {
        cluster_dns: vec!["10.96.0.10".into()],
        cluster_domain: "cluster.local".into(),
        resolv_conf: None,
    };
    let dns = dns_config(&spec, "web", &cluster, HOST);
    assert_eq!(dns.servers, ["10.96.0.10", "1.2.3.4"]);
    assert_eq!(
        dns.options,
        ["ndots:2", "edns0"],
        "the pod's ndots replaces the default"
    );
}

#[test]
fn resource_field_refs_as_upstream() {
    use k8s_openapi::api::core::v1::ResourceFieldSelector;
    let c = container(
        &[("cpu", "250m"), ("memory", "32Mi")],
        &[("cpu", "1500m"), ("memory", "64Mi")],
    );
    let node = NodeCapacity {
        cpu_millis: 2000,
        memory_bytes: 8 << 30,
    };
    let get = |resource: &str, divisor: Option<&str>, c: &Container| {
        resource_field(
            c,
            &ResourceFieldSelector {
                resource: resource.into(),
                divisor: divisor.map(|d| Quantity(d.into())),
                container_name: None,
            },
            &node,
        )
    };
    assert_eq!(get("limits.cpu", None, &c).as_deref(), Ok("2"), "ceil(1.5)");
    assert_eq!(get("limits.cpu", Some("1m"), &c).as_deref(), Ok("1500"));
    assert_eq!(get("requests.cpu", Some("1m"), &c).as_deref(), Ok("250"));
    assert_eq!(get("limits.memory", Some("1Mi"), &c).as_deref(), Ok("64"));
    assert_eq!(get("requests.memory", None, &c).as_deref(), Ok("33554432"));
    let bare = container(&[], &[]);
    assert_eq!(
        get("limits.cpu", None, &bare).as_deref(),
        Ok("2"),
        "node capacity"
    );
    assert_eq!(get("limits.memory", Some("1Gi"), &bare).as_deref(), Ok("8"));
    assert_eq!(get("requests.cpu", None, &bare).as_deref(), Ok("0"));
    assert!(get("limits.gpu", None, &c).is_err());
}

#[test]
fn maps_formatted_as_upstream() {
    let map: BTreeMap<String, String> = [
        ("b".into(), "two".into()),
        ("a".into(), "say \"hi\"".into()),
    ]
    .into();
    assert_eq!(format_map(Some(&map)), "a=\"say \\\"hi\\\"\"\nb=\"two\"");
    assert_eq!(format_map(None), "");
}

#[test]
fn sub_paths_must_stay_inside() {
    assert!(relative_clean("a/b").is_ok());
    assert!(relative_clean("../x").is_err());
    assert!(relative_clean("/x").is_err());
}

#[test]
fn field_refs() {
    let mut pod = Pod::default();
    pod.metadata.name = Some("p".into());
    pod.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    let f = FieldValues {
        pod_ip: "10.0.0.1".into(),
        ..Default::default()
    };
    assert_eq!(field_ref(&pod, "metadata.name", &f).as_deref(), Some("p"));
    assert_eq!(
        field_ref(&pod, "metadata.labels['app']", &f).as_deref(),
        Some("web")
    );
    assert_eq!(
        field_ref(&pod, "status.podIP", &f).as_deref(),
        Some("10.0.0.1")
    );
    assert_eq!(field_ref(&pod, "spec.nope", &f), None);
}

#[test]
fn seccomp_profile_container_over_pod() {
    use k8s_openapi::api::core::v1::{PodSecurityContext, SeccompProfile, SecurityContext};
    let profile = |t: &str, l: Option<&str>| SeccompProfile {
        type_: t.to_owned(),
        localhost_profile: l.map(str::to_owned),
    };
    let root = Path::new("/var/lib/nodelet/seccomp");
    let mut pod = PodSpec::default();
    let mut c = Container::default();
    let mode = |pod: &PodSpec, c: &Container| security(pod, c, root).map(|s| s.seccomp);
    assert_eq!(mode(&pod, &c).expect("ok"), SeccompMode::Unconfined);

    pod.security_context = Some(PodSecurityContext {
        seccomp_profile: Some(profile("RuntimeDefault", None)),
        ..Default::default()
    });
    assert_eq!(mode(&pod, &c).expect("ok"), SeccompMode::RuntimeDefault);

    c.security_context = Some(SecurityContext {
        seccomp_profile: Some(profile("Localhost", Some("profiles/audit.json"))),
        ..Default::default()
    });
    assert_eq!(
        mode(&pod, &c).expect("ok"),
        SeccompMode::Localhost(root.join("profiles/audit.json"))
    );

    c.security_context = Some(SecurityContext {
        seccomp_profile: Some(profile("Unconfined", None)),
        ..Default::default()
    });
    assert_eq!(mode(&pod, &c).expect("ok"), SeccompMode::Unconfined);

    for bad in [
        profile("Localhost", None),
        profile("Localhost", Some("../escape.json")),
        profile("Localhost", Some("/etc/abs.json")),
        profile("Strict", None),
    ] {
        c.security_context = Some(SecurityContext {
            seccomp_profile: Some(bad.clone()),
            ..Default::default()
        });
        assert!(
            matches!(mode(&pod, &c), Err(ConfigError::BadSeccompProfile(_))),
            "{bad:?}"
        );
    }
}

/// upstream `verifyRunAsNonRoot` (pkg/kubelet/kuberuntime/security_context_others.go):
/// an image user that is a name can't be checked, so runAsNonRoot refuses it
/// unless runAsUser says who runs; without runAsNonRoot the name is resolved by
/// the runtime.
#[test]
fn run_as_non_root_refuses_a_named_image_user() {
    use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};
    let mut pod = Pod::default();
    pod.metadata.name = Some("web".into());
    pod.metadata.namespace = Some("default".into());
    pod.metadata.uid = Some("u1".into());
    let mut c = Container {
        name: "app".into(),
        ..Default::default()
    };
    assert_eq!(verify_run_as_non_root(&pod, &c, "nginx"), Ok(()));
    pod.spec = Some(PodSpec {
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(
        verify_run_as_non_root(&pod, &c, "nginx:staff"),
        Err("container has runAsNonRoot and image has non-numeric user (nginx), cannot verify user is non-root (pod: \"web_default(u1)\", container: app)".to_owned())
    );
    assert_eq!(verify_run_as_non_root(&pod, &c, "1000:staff"), Ok(()));
    c.security_context = Some(SecurityContext {
        run_as_user: Some(1000),
        ..Default::default()
    });
    assert_eq!(verify_run_as_non_root(&pod, &c, "nginx"), Ok(()));
}

#[test]
fn host_ports_become_port_mappings_once_each() {
    use nodelet_cri::podnet::{PortMapping, Protocol};
    let spec: PodSpec = serde_json::from_value(serde_json::json!({
        "containers": [
            {"name": "a", "ports": [
                {"containerPort": 80, "hostPort": 8080, "protocol": "TCP"},
                {"containerPort": 80, "hostPort": 8080, "protocol": "TCP"},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "10.0.0.1"},
                {"containerPort": 81},
                {"containerPort": 82, "hostPort": 0},
                {"containerPort": 83, "hostPort": 8083, "hostIP": "fd00::1"},
                {"containerPort": 84, "hostPort": 8084, "hostIP": "not-an-ip"}
            ]},
            {"name": "b", "ports": [{"containerPort": 9000, "hostPort": 9000, "hostIP": "0.0.0.0"}]}
        ],
        "initContainers": [{"name": "i", "ports": [{"containerPort": 1, "hostPort": 1}]}]
    }))
    .expect("spec");
    let tcp = |host_port, container_port, host_ip| PortMapping {
        protocol: Protocol::Tcp,
        host_port,
        container_port,
        host_ip,
    };
    assert_eq!(
        port_mappings(&spec),
        vec![
            tcp(8080, 80, None),
            PortMapping {
                protocol: Protocol::Udp,
                host_port: 5353,
                container_port: 53,
                host_ip: Some(std::net::Ipv4Addr::new(10, 0, 0, 1).into()),
            },
            tcp(8083, 83, Some("fd00::1".parse().expect("ip"))),
            tcp(9000, 9000, Some(std::net::Ipv4Addr::UNSPECIFIED.into())),
        ]
    );
}
