//! End-to-end against the real kube-apiserver tier (issue 12): a container's env from
//! ConfigMaps and Secrets (`envFrom` with a prefix, `configMapKeyRef`,
//! `secretKeyRef`) and the service variables of a Service created before the pod; a
//! pod whose ConfigMap is missing waits in `ContainerCreating` with upstream's
//! `FailedMount` event and starts once the ConfigMap is created; an edit of the
//! ConfigMap reaches the mounted file (not the `subPath` one); fsGroup owns the
//! files. Needs `NODELET_TEST_KUBECONFIG` (see `support::cluster`) and the test
//! containerd.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, Service};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use support::cluster::{admin_client, admin_kubeconfig, joined_world, kubectl, wait_ready};
use support::{BUSYBOX, World, phase, wait_for};

/// The tests share the apiserver's scheduler: one at a time.
static APISERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A namespace of the test's own, deleted (without waiting) when dropped.
struct TestNamespace {
    kubeconfig: std::path::PathBuf,
    name: String,
}

impl TestNamespace {
    async fn new(client: &kube::Client, kubeconfig: &std::path::Path, id: &str) -> Self {
        let name = format!("nlo-{id}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the test namespace");
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &name);
        wait_for(
            "the namespace's default ServiceAccount",
            Duration::from_secs(60),
            || async { accounts.get_opt("default").await.ok()? },
        )
        .await;
        Self {
            kubeconfig: kubeconfig.to_owned(),
            name,
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl(
            &self.kubeconfig,
            &["delete", "namespace", &self.name, "--wait=false"],
        );
    }
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("object")
}

fn container_id(p: &Pod) -> Option<String> {
    let id = p
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .clone()?;
    Some(id.trim_start_matches("containerd://").to_owned())
}

async fn wait_running(pods: &Api<Pod>, name: &str, limit: Duration) -> Pod {
    wait_for(&format!("{name} Running in the API"), limit, || async {
        let p = pods.get_opt(name).await.ok()??;
        (phase(&p) == "Running" && container_id(&p).is_some()).then_some(p)
    })
    .await
}

/// `sh -c script` in the container; its stdout.
async fn sh(w: &World, id: &str, script: &str) -> String {
    let rt = w.runtime().await;
    let cmd = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let out = rt
        .exec_sync(id, &cmd, Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(
        out.exit_code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn env_map(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn env_comes_from_config_maps_secrets_and_services() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let ns = TestNamespace::new(&client, &kubeconfig, &w.id).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(
            &pp,
            &from_json(serde_json::json!({
                "metadata": {"name": "settings"},
                "data": {"mode": "fast", "level": "3"}
            })),
        )
        .await
        .expect("configmap");
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(
            &pp,
            &from_json(serde_json::json!({
                "metadata": {"name": "creds"},
                "stringData": {"password": "hunter2"}
            })),
        )
        .await
        .expect("secret");
    let svc = Api::<Service>::namespaced(client.clone(), &ns.name)
        .create(
            &pp,
            &from_json(serde_json::json!({
                "metadata": {"name": "my-web"},
                "spec": {"ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "dns", "port": 53, "protocol": "UDP"}
                ]}
            })),
        )
        .await
        .expect("service");
    let svc_ip = svc.spec.and_then(|s| s.cluster_ip).expect("a cluster IP");
    let master_ip = Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .expect("the kubernetes service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("its cluster IP");

    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    let pod = |name: &str, links: bool| -> Pod {
        from_json(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": w.node, "terminationGracePeriodSeconds": 1,
                "enableServiceLinks": links,
                "containers": [{
                    "name": "main", "image": BUSYBOX,
                    "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                    "envFrom": [
                        {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
                        {"secretRef": {"name": "creds"}},
                        {"configMapRef": {"name": "absent", "optional": true}}
                    ],
                    "env": [
                        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
                        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                        {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
                        {"name": "URL", "value": "http://$(MY_WEB_SERVICE_HOST):$(MY_WEB_SERVICE_PORT)/$(CFG_mode)"}
                    ]
                }]
            }
        }))
    };
    pods.create(&pp, &pod("linked", true)).await.expect("pod");
    pods.create(&pp, &pod("unlinked", false))
        .await
        .expect("pod");
    let linked = wait_running(&pods, "linked", Duration::from_secs(60)).await;
    let unlinked = wait_running(&pods, "unlinked", Duration::from_secs(60)).await;

    let env = env_map(&sh(&w, &container_id(&linked).expect("id"), "env").await);
    assert_eq!(env.get("CFG_mode").map(String::as_str), Some("fast"));
    assert_eq!(env.get("CFG_level").map(String::as_str), Some("3"));
    assert_eq!(env.get("password").map(String::as_str), Some("hunter2"));
    assert_eq!(env.get("LEVEL").map(String::as_str), Some("3"));
    assert_eq!(env.get("PW").map(String::as_str), Some("hunter2"));
    assert!(!env.contains_key("MAYBE"));
    assert_eq!(env["MY_WEB_SERVICE_HOST"], svc_ip);
    assert_eq!(env["MY_WEB_SERVICE_PORT"], "80");
    assert_eq!(env["MY_WEB_SERVICE_PORT_HTTP"], "80");
    assert_eq!(env["MY_WEB_SERVICE_PORT_DNS"], "53");
    assert_eq!(env["MY_WEB_PORT"], format!("tcp://{svc_ip}:80"));
    assert_eq!(env["MY_WEB_PORT_53_UDP"], format!("udp://{svc_ip}:53"));
    assert_eq!(env["MY_WEB_PORT_53_UDP_PROTO"], "udp");
    assert_eq!(env["MY_WEB_PORT_80_TCP_ADDR"], svc_ip);
    assert_eq!(env["URL"], format!("http://{svc_ip}:80/fast"));
    assert_eq!(env["KUBERNETES_SERVICE_HOST"], master_ip);
    assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");

    // enableServiceLinks: false keeps only the master service.
    let env = env_map(&sh(&w, &container_id(&unlinked).expect("id"), "env").await);
    assert_eq!(env["KUBERNETES_SERVICE_HOST"], master_ip);
    assert!(!env.contains_key("MY_WEB_SERVICE_HOST"), "{env:?}");
    assert_eq!(
        env["URL"],
        "http://$(MY_WEB_SERVICE_HOST):$(MY_WEB_SERVICE_PORT)/fast"
    );

    // A missing non-optional key holds the container with upstream's message.
    let mut bad = pod("badkey", true);
    bad.spec.as_mut().expect("spec").containers[0].env = Some(vec![from_json(
        serde_json::json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope"}}}),
    )]);
    pods.create(&pp, &bad).await.expect("pod");
    let waiting = wait_for(
        "badkey in CreateContainerConfigError",
        Duration::from_secs(60),
        || async {
            let p = pods.get_opt("badkey").await.ok()??;
            let st = p.status?.container_statuses?.first()?.state.clone()?;
            let w = st.waiting?;
            (w.reason.as_deref() == Some("CreateContainerConfigError")).then_some(w)
        },
    )
    .await;
    assert_eq!(
        waiting.message.as_deref(),
        Some(format!("couldn't find key nope in ConfigMap {}/settings", ns.name).as_str())
    );
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_config_map_holds_the_pod_until_created_and_edits_reach_the_volume() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let ns = TestNamespace::new(&client, &kubeconfig, &w.id).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();
    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;

    let pod: Pod = from_json(serde_json::json!({
        "metadata": {"name": "waiter"},
        "spec": {
            "nodeName": w.node, "terminationGracePeriodSeconds": 1,
            "securityContext": {"fsGroup": 4321, "runAsUser": 1000},
            "volumes": [{"name": "cfg", "configMap": {"name": "later"}}],
            "containers": [{
                "name": "main", "image": BUSYBOX,
                "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/cfg"},
                    {"name": "cfg", "mountPath": "/pinned", "subPath": "greeting"}
                ]
            }]
        }
    }));
    pods.create(&pp, &pod).await.expect("pod");
    let want = "MountVolume.SetUp failed for volume \"cfg\" : configmap \"later\" not found";
    let event = wait_for("the FailedMount event", Duration::from_secs(60), || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=waiter"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedMount"))
    })
    .await;
    assert_eq!(event.message.as_deref(), Some(want));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let waiting = pods.get("waiter").await.expect("pod");
    assert_eq!(phase(&waiting), "Pending");
    let reason = waiting
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.first()?.state.clone()?.waiting?.reason);
    assert_eq!(reason.as_deref(), Some("ContainerCreating"));

    let created = Instant::now();
    config_maps
        .create(
            &pp,
            &from_json(serde_json::json!({
                "metadata": {"name": "later"},
                "data": {"greeting": "hello"}
            })),
        )
        .await
        .expect("configmap");
    let running = wait_running(&pods, "waiter", Duration::from_secs(60)).await;
    eprintln!(
        "figure: ConfigMap created to its pod Running in the API: {:?}",
        created.elapsed()
    );
    let id = container_id(&running).expect("id");
    assert_eq!(sh(&w, &id, "cat /cfg/greeting").await, "hello");
    assert_eq!(sh(&w, &id, "cat /pinned").await, "hello");
    // fsGroup owns the files; the container's user (1000, not the owner) reads them.
    assert_eq!(sh(&w, &id, "id -u").await.trim(), "1000");
    let stat = sh(&w, &id, "stat -L -c '%g %a' /cfg/greeting").await;
    assert_eq!(stat.trim(), "4321 644", "{stat}");
    let groups = sh(&w, &id, "id -G").await;
    assert!(groups.split_whitespace().any(|g| g == "4321"), "{groups}");

    let edited = Instant::now();
    config_maps
        .patch(
            "later",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"greeting": "bonjour"}})),
        )
        .await
        .expect("edit the configmap");
    wait_for(
        "the edit in the mounted file",
        Duration::from_secs(90),
        || async { (sh(&w, &id, "cat /cfg/greeting").await == "bonjour").then_some(()) },
    )
    .await;
    eprintln!(
        "figure: ConfigMap edited to the new content in the container: {:?}",
        edited.elapsed()
    );
    // A subPath mount keeps what it was started with, as upstream's.
    assert_eq!(sh(&w, &id, "cat /pinned").await, "hello");
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}
