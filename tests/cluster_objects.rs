//! End-to-end against the real kube-apiserver tier (issue 12): a container's env from
//! ConfigMaps and Secrets (`envFrom` with a prefix, `configMapKeyRef`,
//! `secretKeyRef`) and the service variables of a Service created before the pod; a
//! pod whose ConfigMap is missing waits in `ContainerCreating` with upstream's
//! `FailedMount` event and starts once the ConfigMap is created; an edit of the
//! ConfigMap reaches the mounted file (not the `subPath` one); fsGroup owns the
//! files; the `kube-api-access` token is a JWT the apiserver's TokenReview accepts,
//! bound to the pod; a projected volume with all four sources; a secret's items and
//! modes on tmpfs; a label change reaching a downwardAPI file; an immutable
//! ConfigMap no longer followed; a 600 s projected token refreshed after 480 s
//! (`cluster_objects/token_refresh.rs`); bad input (`cluster_objects/bad_input.rs`). Needs `NODELET_TEST_KUBECONFIG` (see `support::cluster`) and the test
//! containerd.

#[path = "cluster_objects/bad_input.rs"]
mod bad_input;
mod support;
#[path = "cluster_objects/token_refresh.rs"]
mod token_refresh;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret, Service};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use support::cluster::{TestNamespace, admin_client, admin_kubeconfig, joined_world, wait_ready};
use support::{BUSYBOX, World, phase, wait_for};

/// The tests share the apiserver's scheduler: one at a time.
static APISERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// Runs for 8 minutes, mostly waiting: its name sorts first so it starts first and
/// the other tests run beside it.
#[tokio::test(flavor = "multi_thread")]
async fn a_bound_token_is_refreshed_at_80_percent_of_its_life() {
    token_refresh::run().await;
}

/// Bad keys and sizes, an object deleted under a pod, a Secret changed while its pod
/// terminates, nothing left after it (`cluster_objects/bad_input.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_around_config_map_and_secret_volumes() {
    bad_input::run().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn env_comes_from_config_maps_secrets_and_services() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let ns = TestNamespace::new(&client, &kubeconfig, "nlo", &w.id).await;
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
    let ns = TestNamespace::new(&client, &kubeconfig, "nlo", &w.id).await;
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
    // The service account token belongs to the user every container runs as.
    let token = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    let stat = sh(&w, &id, &format!("stat -L -c '%u %g %a' {token}")).await;
    assert_eq!(stat.trim(), "1000 4321 640", "{stat}");

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

#[tokio::test(flavor = "multi_thread")]
async fn service_account_tokens_projected_volumes_and_secret_modes() {
    use k8s_openapi::api::authentication::v1::TokenReview;
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let ns = TestNamespace::new(&client, &kubeconfig, "nlo", &w.id).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .create(
            &pp,
            &from_json(serde_json::json!({
                "metadata": {"name": "keys"},
                "stringData": {"id": "abc", "other": "x"}
            })),
        )
        .await
        .expect("secret");
    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .create(
            &pp,
            &from_json(serde_json::json!({"metadata": {"name": "conf"}, "data": {"c": "1"}})),
        )
        .await
        .expect("configmap");
    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    // The apiserver's ServiceAccount admission adds the kube-api-access volume.
    let pod: Pod = from_json(serde_json::json!({
        "metadata": {"name": "tokens", "labels": {"app": "t"}},
        "spec": {
            "nodeName": w.node, "terminationGracePeriodSeconds": 1,
            "volumes": [
                {"name": "sec", "secret": {"secretName": "keys", "defaultMode": 0o440,
                    "items": [{"key": "id", "path": "dir/id", "mode": 0o400}]}},
                {"name": "all", "projected": {"sources": [
                    {"configMap": {"name": "conf"}},
                    {"secret": {"name": "keys", "items": [{"key": "other", "path": "other"}]}},
                    {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                    {"serviceAccountToken": {"path": "aud-token", "audience": "example.com", "expirationSeconds": 3600}}
                ]}}
            ],
            "containers": [{
                "name": "main", "image": BUSYBOX,
                "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                "volumeMounts": [
                    {"name": "sec", "mountPath": "/sec"},
                    {"name": "all", "mountPath": "/all"}
                ]
            }]
        }
    }));
    pods.create(&pp, &pod).await.expect("pod");
    let running = wait_running(&pods, "tokens", Duration::from_secs(60)).await;
    let id = container_id(&running).expect("id");
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(sh(&w, &id, &format!("cat {sa}/namespace")).await, ns.name);
    let ca = sh(&w, &id, &format!("cat {sa}/ca.crt")).await;
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let token = sh(&w, &id, &format!("cat {sa}/token")).await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    // The apiserver accepts the token, bound to this pod.
    let review: TokenReview = from_json(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token}
    }));
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&pp, &review)
        .await
        .expect("token review");
    let status = reviewed.status.expect("status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.expect("user");
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{}:default", ns.name).as_str())
    );
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec!["tokens".to_owned()])
    );
    // The projected token has its own audience: the apiserver's own audience refuses it.
    let aud_token = sh(&w, &id, "cat /all/aud-token").await;
    assert_ne!(aud_token, token);
    let review: TokenReview = from_json(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": aud_token, "audiences": ["example.com"]}
    }));
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&pp, &review)
        .await
        .expect("token review");
    let status = reviewed.status.expect("status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    assert_eq!(status.audiences, Some(vec!["example.com".to_owned()]));

    // The projected volume's other sources.
    assert_eq!(sh(&w, &id, "cat /all/c").await, "1");
    assert_eq!(sh(&w, &id, "cat /all/other").await, "x");
    assert_eq!(sh(&w, &id, "cat /all/labels").await, "app=\"t\"");
    // The secret: only the item asked for, with its mode, on tmpfs.
    assert_eq!(sh(&w, &id, "ls /sec").await.trim(), "dir");
    assert_eq!(sh(&w, &id, "cat /sec/dir/id").await, "abc");
    assert_eq!(sh(&w, &id, "stat -L -c %a /sec/dir/id").await.trim(), "400");
    let mounts = sh(&w, &id, "cat /proc/mounts").await;
    assert!(
        mounts.lines().any(|l| l.starts_with("tmpfs /sec ")),
        "{mounts}"
    );
    // A label change reaches the downwardAPI file.
    pods.patch(
        "tokens",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"app": "u"}}})),
    )
    .await
    .expect("relabel");
    wait_for(
        "the new label in the volume",
        Duration::from_secs(30),
        || async { (sh(&w, &id, "cat /all/labels").await == "app=\"u\"").then_some(()) },
    )
    .await;
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_immutable_config_map_is_not_followed() {
    let kubeconfig = admin_kubeconfig();
    let _turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let ns = TestNamespace::new(&client, &kubeconfig, "nlo", &w.id).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let pp = PostParams::default();
    let cm = |name: &str, value: &str, immutable: bool| -> ConfigMap {
        from_json(serde_json::json!({
            "metadata": {"name": name}, "data": {"v": value}, "immutable": immutable
        }))
    };
    config_maps
        .create(&pp, &cm("fixed", "one", true))
        .await
        .expect("configmap");
    config_maps
        .create(&pp, &cm("moving", "one", false))
        .await
        .expect("configmap");
    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    let pod: Pod = from_json(serde_json::json!({
        "metadata": {"name": "reader"},
        "spec": {
            "nodeName": w.node, "terminationGracePeriodSeconds": 1,
            "volumes": [
                {"name": "fixed", "configMap": {"name": "fixed"}},
                {"name": "moving", "configMap": {"name": "moving"}}
            ],
            "containers": [{
                "name": "main", "image": BUSYBOX,
                "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                "volumeMounts": [
                    {"name": "fixed", "mountPath": "/fixed"},
                    {"name": "moving", "mountPath": "/moving"}
                ]
            }]
        }
    }));
    pods.create(&pp, &pod).await.expect("pod");
    let running = wait_running(&pods, "reader", Duration::from_secs(60)).await;
    let id = container_id(&running).expect("id");
    assert_eq!(sh(&w, &id, "cat /fixed/v /moving/v").await, "oneone");

    // An immutable object can only be replaced: deleted and created again. The
    // agent stopped following it once it saw it immutable (upstream's manager
    // too), so the volume keeps what it had while the mutable one follows.
    config_maps
        .delete("fixed", &Default::default())
        .await
        .expect("delete");
    config_maps
        .create(&pp, &cm("fixed", "two", false))
        .await
        .expect("recreate");
    config_maps
        .patch(
            "moving",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"v": "two"}})),
        )
        .await
        .expect("edit");
    wait_for("the mutable edit", Duration::from_secs(30), || async {
        (sh(&w, &id, "cat /moving/v").await == "two").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sh(&w, &id, "cat /fixed/v").await, "one");
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}
