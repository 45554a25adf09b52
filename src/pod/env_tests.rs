use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};

use super::*;
use crate::pod::podspec::{ConfigError, FieldValues};
use crate::volume::{Services, StaticObjects};

fn service(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports}
        }))
        .expect("service"),
    )
}

fn vars(v: &[(String, String)]) -> BTreeMap<String, String> {
    v.iter().cloned().collect()
}

#[test]
fn env_var_names_as_upstream() {
    assert_eq!(env_var_name("my-svc"), "MY_SVC");
    assert_eq!(env_var_name("a-b-c1"), "A_B_C1");
    assert_eq!(env_var_name("kubernetes"), "KUBERNETES");
}

#[test]
fn docker_link_variables_as_upstream_envvars() {
    // Upstream's TestFromServices case "foo-bar" with one unnamed port.
    let s = service(
        "ns",
        "foo-bar",
        "1.2.3.4",
        serde_json::json!([{"port": 8080, "protocol": "TCP"}, {"name": "udp-dns", "port": 53, "protocol": "UDP"}]),
    );
    let got = vars(&from_service(&s));
    let want: BTreeMap<String, String> = [
        ("FOO_BAR_SERVICE_HOST", "1.2.3.4"),
        ("FOO_BAR_SERVICE_PORT", "8080"),
        ("FOO_BAR_SERVICE_PORT_UDP_DNS", "53"),
        ("FOO_BAR_PORT", "tcp://1.2.3.4:8080"),
        ("FOO_BAR_PORT_8080_TCP", "tcp://1.2.3.4:8080"),
        ("FOO_BAR_PORT_8080_TCP_PROTO", "tcp"),
        ("FOO_BAR_PORT_8080_TCP_PORT", "8080"),
        ("FOO_BAR_PORT_8080_TCP_ADDR", "1.2.3.4"),
        ("FOO_BAR_PORT_53_UDP", "udp://1.2.3.4:53"),
        ("FOO_BAR_PORT_53_UDP_PROTO", "udp"),
        ("FOO_BAR_PORT_53_UDP_PORT", "53"),
        ("FOO_BAR_PORT_53_UDP_ADDR", "1.2.3.4"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(got, want);
    // An IPv6 cluster IP is bracketed in the URLs (Go's JoinHostPort), a missing
    // protocol is TCP.
    let v6 = service("ns", "v6", "fd00::1", serde_json::json!([{"port": 80}]));
    let got = vars(&from_service(&v6));
    assert_eq!(got["V6_PORT"], "tcp://[fd00::1]:80");
    assert_eq!(got["V6_PORT_80_TCP_ADDR"], "fd00::1");
}

#[test]
fn service_env_picks_the_namespace_and_the_master_service() {
    let services = Services {
        synced: true,
        items: vec![
            service(
                "default",
                "kubernetes",
                "10.96.0.1",
                serde_json::json!([{"name": "https", "port": 443}]),
            ),
            service("ns", "web", "10.96.0.10", serde_json::json!([{"port": 80}])),
            service("ns", "headless", "None", serde_json::json!([{"port": 80}])),
            service(
                "other",
                "db",
                "10.96.0.11",
                serde_json::json!([{"port": 5432}]),
            ),
            service(
                "default",
                "web",
                "10.96.0.12",
                serde_json::json!([{"port": 81}]),
            ),
        ],
    };
    let env = service_env(&services, "ns", true);
    assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
    assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
    assert_eq!(env["WEB_SERVICE_HOST"], "10.96.0.10");
    assert!(!env.contains_key("HEADLESS_SERVICE_HOST"));
    assert!(!env.contains_key("DB_SERVICE_HOST"));
    // enableServiceLinks: false keeps the master service only.
    let env = service_env(&services, "ns", false);
    assert!(env.contains_key("KUBERNETES_SERVICE_HOST"));
    assert!(!env.contains_key("WEB_SERVICE_HOST"));
    // In `default` both kinds come from the one namespace.
    let env = service_env(&services, "default", true);
    assert_eq!(env["WEB_SERVICE_HOST"], "10.96.0.12");
}

fn pod_with(container: serde_json::Value) -> (Pod, Container) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u",
                     "annotations": {"kubernetes.io/config.source": "api"}},
        "spec": {"containers": [container]}
    }))
    .expect("pod");
    let c = pod.spec.as_ref().expect("spec").containers[0].clone();
    (pod, c)
}

fn objects() -> StaticObjects {
    let objects = StaticObjects::new();
    objects.set_config_map(
        serde_json::from_value::<ConfigMap>(serde_json::json!({
            "metadata": {"name": "cfg", "namespace": "ns"},
            "data": {"mode": "fast", "level": "3", "dotted.key": "x"}
        }))
        .expect("cm"),
    );
    objects.set_secret(
        serde_json::from_value::<Secret>(serde_json::json!({
            "metadata": {"name": "creds", "namespace": "ns"},
            "data": {"password": "aHVudGVyMg=="}
        }))
        .expect("secret"),
    );
    objects
}

async fn env_of(container: serde_json::Value) -> Result<BTreeMap<String, String>, ConfigError> {
    let (pod, c) = pod_with(container);
    let objects = objects();
    let env_objects = EnvObjects::fetch(&pod, &c, &objects).await?;
    let fields = FieldValues {
        env_objects,
        ..Default::default()
    };
    make_env(&pod, &c, &fields).map(|v| vars(&v))
}

#[tokio::test]
async fn env_from_with_prefix_then_env_over_it() {
    let env = env_of(serde_json::json!({
        "name": "c",
        "envFrom": [
            {"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
            {"secretRef": {"name": "creds"}},
            {"configMapRef": {"name": "absent", "optional": true}}
        ],
        "env": [
            {"name": "CFG_mode", "value": "slow"},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "level"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
            {"name": "OPT2", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}},
            {"name": "BOTH", "value": "$(LEVEL)-$(password)-$(LATER)"},
            {"name": "LATER", "value": "l"}
        ]
    }))
    .await
    .expect("env");
    assert_eq!(env["CFG_mode"], "slow");
    assert_eq!(env["CFG_level"], "3");
    assert_eq!(env["CFG_dotted.key"], "x");
    assert_eq!(env["password"], "hunter2");
    assert_eq!(env["LEVEL"], "3");
    assert_eq!(env["PW"], "hunter2");
    assert_eq!(env["BOTH"], "3-hunter2-$(LATER)");
    assert!(!env.contains_key("OPT") && !env.contains_key("OPT2"));
}

#[tokio::test]
async fn missing_objects_and_keys_are_upstream_errors() {
    let cases = [
        (
            serde_json::json!({"name": "c", "envFrom": [{"configMapRef": {"name": "nope"}}]}),
            "configmap \"nope\" not found",
        ),
        (
            serde_json::json!({"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]}),
            "secret \"nope\" not found",
        ),
        (
            serde_json::json!({"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}]}),
            "couldn't find key k in ConfigMap ns/cfg",
        ),
        (
            serde_json::json!({"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]}),
            "couldn't find key k in Secret ns/creds",
        ),
    ];
    for (container, want) in cases {
        let got = env_of(container).await.map(|_| ());
        assert_eq!(got.map_err(|e| e.to_string()), Err(want.to_owned()));
    }
}

#[derive(Debug)]
struct Unsynced(StaticObjects);

impl ObjectSource for Unsynced {
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> futures::future::BoxFuture<'_, Result<Option<ConfigMap>, crate::volume::ObjectError>> {
        self.0.config_map(namespace, name)
    }
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> futures::future::BoxFuture<'_, Result<Option<Secret>, crate::volume::ObjectError>> {
        self.0.secret(namespace, name)
    }
    fn service_account_token(
        &self,
        req: crate::volume::TokenRequestSpec,
    ) -> futures::future::BoxFuture<
        '_,
        Result<crate::volume::IssuedToken, crate::volume::ObjectError>,
    > {
        self.0.service_account_token(req)
    }
    fn services(&self) -> Services {
        Services {
            synced: false,
            items: vec![service(
                "default",
                "kubernetes",
                "10.96.0.1",
                serde_json::json!([{"port": 443}]),
            )],
        }
    }
}

#[tokio::test]
async fn api_pods_wait_for_the_first_service_list_static_pods_do_not() {
    let objects = Unsynced(StaticObjects::new());
    let (mut pod, c) = pod_with(serde_json::json!({"name": "c"}));
    let got = EnvObjects::fetch(&pod, &c, &objects).await.map(|_| ());
    assert!(
        matches!(got, Err(ConfigError::ServicesNotSynced)),
        "{got:?}"
    );
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("kubernetes.io/config.source".into(), "file".into());
    let got = EnvObjects::fetch(&pod, &c, &objects)
        .await
        .expect("static pod");
    assert_eq!(got.services["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
}

#[tokio::test]
async fn service_variables_come_last_and_never_replace_the_containers() {
    let (pod, c) = pod_with(serde_json::json!({"name": "c", "env": [
        {"name": "KUBERNETES_SERVICE_HOST", "value": "mine"},
        {"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"}
    ]}));
    let fields = FieldValues {
        env_objects: EnvObjects {
            services: service_env(
                &Services {
                    synced: true,
                    items: vec![service(
                        "default",
                        "kubernetes",
                        "10.96.0.1",
                        serde_json::json!([{"port": 443}]),
                    )],
                },
                "ns",
                true,
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    let env = make_env(&pod, &c, &fields).expect("env");
    assert_eq!(env[0], ("KUBERNETES_SERVICE_HOST".into(), "mine".into()));
    assert_eq!(env[1], ("URL".into(), "https://mine:443".into()));
    assert_eq!(
        env.iter()
            .filter(|(k, _)| k == "KUBERNETES_SERVICE_HOST")
            .count(),
        1
    );
    assert!(
        env.iter()
            .any(|(k, v)| k == "KUBERNETES_PORT" && v == "tcp://10.96.0.1:443")
    );
}

#[test]
fn values_from_fields_are_not_expanded() {
    // Upstream expands literal values only.
    let (mut pod, c) = pod_with(serde_json::json!({"name": "c", "env": [
        {"name": "A", "value": "1"},
        {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['x']"}}}
    ]}));
    pod.metadata.labels = Some([("x".to_owned(), "$(A)".to_owned())].into());
    let env = vars(&make_env(&pod, &c, &FieldValues::default()).expect("env"));
    assert_eq!(env["N"], "$(A)");
}
