//! configMap, secret and projected volumes through the manager.

use super::*;

#[tokio::test]
async fn config_map_content_items_and_modes() {
    let f = fixture();
    let mut cm = config_map("cfg", &[("a", "alpha"), ("b", "beta")]);
    cm.binary_data = Some([("bin".into(), ByteString(vec![0, 1, 2]))].into());
    f.issuer.objects.set_config_map(cm);
    f.issuer
        .objects
        .set_config_map(config_map("picked", &[("b", "beta"), ("c", "c")]));
    let mut all = cm_volume("cfg", None, None);
    if let Some(src) = all.config_map.as_mut() {
        src.default_mode = Some(0o600);
    }
    let picked = cm_volume(
        "picked",
        Some(vec![
            item("b", "sub/b.txt", Some(0o400)),
            item("c", "c.txt", None),
        ]),
        None,
    );
    let p = pod(vec![all, picked]);
    let paths = f.manager.setup(&ctx(&p)).await.expect("setup");
    let dir = &paths["cfg"];
    let pods = f.dir.path().join("pods");
    assert_eq!(
        *dir,
        pods.join(UID).join("volumes/kubernetes.io~configmap/cfg")
    );
    assert_eq!(visible(dir), ["a", "b", "bin"]);
    assert_eq!(read(&dir.join("a")), "alpha");
    assert_eq!(fs::read(dir.join("bin")).expect("read"), [0, 1, 2]);
    assert_eq!(mode(&dir.join("a")), 0o600);
    assert_eq!(mode(dir), 0o777);
    assert_eq!(mounted(dir), 0, "configMap volumes are on disk");
    let dir = &paths["picked"];
    assert_eq!(visible(dir), ["c.txt", "sub"]);
    assert_eq!(read(&dir.join("sub/b.txt")), "beta");
    assert_eq!(mode(&dir.join("sub/b.txt")), 0o400);
    assert_eq!(mode(&dir.join("c.txt")), 0o644);
}

#[tokio::test]
async fn config_map_with_fs_group() {
    let f = fixture();
    f.issuer
        .objects
        .set_config_map(config_map("cfg", &[("a", "1")]));
    let p = with_fs_group(pod(vec![cm_volume("cfg", None, None)]), 2345);
    let paths = f.manager.setup(&ctx(&p)).await.expect("setup");
    let file = fs::metadata(paths["cfg"].join("a")).expect("stat");
    assert_eq!((file.gid(), file.mode() & 0o7777), (2345, 0o644));
    let root = fs::metadata(&paths["cfg"]).expect("stat");
    assert_eq!((root.gid(), root.mode() & 0o7777), (2345, 0o2777));
}

#[tokio::test]
async fn config_map_updates_swap_data_once_per_sync_period() {
    let f = fixture();
    f.issuer
        .objects
        .set_config_map(config_map("cfg", &[("a", "1"), ("gone", "x")]));
    let p = pod(vec![cm_volume("cfg", None, None)]);
    let paths = f.manager.setup(&ctx(&p)).await.expect("setup");
    let dir = paths["cfg"].clone();
    let first = data_target(&dir);
    let inode = fs::metadata(first.join("a")).expect("stat").ino();

    // Changed object, inside the sync period: not read yet.
    f.issuer
        .objects
        .set_config_map(config_map("cfg", &[("a", "2")]));
    f.clock.advance(30);
    f.manager.setup(&ctx(&p)).await.expect("setup");
    assert_eq!(read(&dir.join("a")), "1");

    // Forced: read now; ..data swapped, old timestamp dir gone, stale key unlinked.
    f.manager.invalidate(UID);
    f.manager.setup(&ctx(&p)).await.expect("setup");
    assert_eq!(read(&dir.join("a")), "2");
    let second = data_target(&dir);
    assert_ne!(first, second);
    assert!(!first.exists());
    assert_eq!(visible(&dir), ["a"]);
    let inode2 = fs::metadata(second.join("a")).expect("stat").ino();
    assert_ne!(inode, inode2);

    // Period over, object unchanged: nothing rewritten.
    f.clock.advance(61);
    f.manager.setup(&ctx(&p)).await.expect("setup");
    assert_eq!(data_target(&dir), second);
    assert_eq!(fs::metadata(second.join("a")).expect("stat").ino(), inode2);

    // Period over, object changed: rewritten without being forced.
    f.issuer
        .objects
        .set_config_map(config_map("cfg", &[("a", "3")]));
    f.clock.advance(61);
    f.manager.setup(&ctx(&p)).await.expect("setup");
    assert_eq!(read(&dir.join("a")), "3");
    assert!(!second.exists());
}

#[tokio::test]
async fn missing_objects_and_keys() {
    let f = fixture();
    let p = pod(vec![cm_volume("opt", None, Some(true))]);
    let paths = f.manager.setup(&ctx(&p)).await.expect("optional");
    assert!(visible(&paths["opt"]).is_empty());

    let p = pod(vec![cm_volume("cfg", None, None)]);
    let err = f.manager.setup(&ctx(&p)).await.expect_err("missing");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"cfg\" not found"
    );
    assert_eq!((err.reason(), err.volume()), ("FailedMount", Some("cfg")));

    f.issuer
        .objects
        .set_config_map(config_map("cfg", &[("a", "1")]));
    let p = pod(vec![cm_volume(
        "cfg",
        Some(vec![item("nope", "n", None)]),
        None,
    )]);
    let err = f.manager.setup(&ctx(&p)).await.expect_err("missing key");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"cfg\" : configmap references non-existent config key: nope"
    );
    let p = pod(vec![cm_volume(
        "cfg",
        Some(vec![item("nope", "n", None)]),
        Some(true),
    )]);
    f.manager.setup(&ctx(&p)).await.expect("optional key");

    let sv = |optional| Volume {
        name: "creds".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some("s".into()),
            optional,
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = pod(vec![sv(None)]);
    let err = f.manager.setup(&ctx(&p)).await.expect_err("missing secret");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"creds\" : secret \"s\" not found"
    );
    let p = pod(vec![sv(Some(true))]);
    f.manager.setup(&ctx(&p)).await.expect("optional secret");
    f.manager.teardown(UID).expect("teardown");
}

#[tokio::test]
async fn bad_paths_uids_and_kinds_refused() {
    let f = fixture();
    f.issuer
        .objects
        .set_config_map(config_map("cfg", &[("a", "1")]));
    for (path, want) in [
        ("../x", "invalid path: must not contain '..': ../x"),
        ("/etc/x", "invalid path: must be relative path: /etc/x"),
        (
            "..data/x",
            "invalid path: must not start with '..': ..data/x",
        ),
    ] {
        let p = pod(vec![cm_volume(
            "cfg",
            Some(vec![item("a", path, None)]),
            None,
        )]);
        let err = f.manager.setup(&ctx(&p)).await.expect_err(path);
        assert_eq!(
            err.to_string(),
            format!("MountVolume.SetUp failed for volume \"cfg\" : {want}")
        );
    }
    let escaped = f.dir.path().join("pods").join(UID).join("volumes/x");
    assert!(!escaped.exists());

    let mut p = pod(vec![]);
    p.metadata.uid = Some("../evil".into());
    assert!(matches!(
        f.manager.setup(&ctx(&p)).await,
        Err(VolumeError::BadUid { .. })
    ));
    assert!(f.manager.teardown("").is_err());
    assert!(f.manager.teardown("..").is_err());

    let pvc = Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: "c".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = f
        .manager
        .setup(&ctx(&pod(vec![pvc])))
        .await
        .expect_err("pvc");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"data\" : persistentVolumeClaim volumes are not supported by nodelet yet"
    );
}

#[tokio::test]
async fn secret_is_a_tmpfs_and_teardown_unmounts_it() {
    let f = fixture();
    f.issuer
        .objects
        .set_secret(secret("s", &[("password", "hunter2"), ("user", "u")]));
    let v = Volume {
        name: "creds".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some("s".into()),
            items: Some(vec![item("password", "pw", Some(0o400))]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = pod(vec![v]);
    let paths = f.manager.setup(&ctx(&p)).await.expect("setup");
    let dir = &paths["creds"];
    assert!(dir.ends_with("volumes/kubernetes.io~secret/creds"));
    assert!(mount_line(dir).contains(" - tmpfs "), "{}", mount_line(dir));
    assert_eq!(visible(dir), ["pw"]);
    assert_eq!(read(&dir.join("pw")), "hunter2");
    assert_eq!(mode(&dir.join("pw")), 0o400);
    // Again, forced: still one mount.
    f.manager.invalidate(UID);
    f.manager.setup(&ctx(&p)).await.expect("setup again");
    assert_eq!(mounted(dir), 1);

    let pod_dir = f.manager.pod_dir(UID);
    f.manager.teardown(UID).expect("teardown");
    assert_eq!(mounted(&pod_dir), 0);
    assert!(!pod_dir.exists());
    f.manager.teardown(UID).expect("teardown twice");
}

#[tokio::test]
async fn projected_with_all_sources_and_token_refresh() {
    let f = fixture();
    f.issuer
        .objects
        .set_config_map(config_map("cfg", &[("ca.crt", "CA")]));
    f.issuer.objects.set_secret(secret("s", &[("key", "K")]));
    let source = |s: VolumeProjection| s;
    let v = Volume {
        name: "kube-api-access".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![
                source(VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some("api".into()),
                        expiration_seconds: Some(1000),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }),
                source(VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "default-token".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                source(VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "cfg".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                source(VolumeProjection {
                    secret: Some(SecretProjection {
                        name: "s".into(),
                        items: Some(vec![item("key", "tls/key", Some(0o600))]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                source(VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![field("namespace", "metadata.namespace")]),
                    }),
                    ..Default::default()
                }),
            ]),
        }),
        ..Default::default()
    };
    let p = pod(vec![v]);
    let paths = f.manager.setup(&ctx(&p)).await.expect("setup");
    let dir = &paths["kube-api-access"];
    assert!(dir.ends_with("volumes/kubernetes.io~projected/kube-api-access"));
    assert!(mount_line(dir).contains(" - tmpfs "));
    assert_eq!(
        visible(dir),
        ["ca.crt", "default-token", "namespace", "tls", "token"]
    );
    assert_eq!(read(&dir.join("token")), "token-1");
    assert_eq!(read(&dir.join("ca.crt")), "CA");
    assert_eq!(read(&dir.join("tls/key")), "K");
    assert_eq!(mode(&dir.join("tls/key")), 0o600);
    assert_eq!(read(&dir.join("namespace")), "prod");
    {
        let requests = f.issuer.requests.lock().expect("requests");
        assert_eq!(
            requests[0],
            TokenRequestSpec {
                namespace: "prod".into(),
                service_account: "builder".into(),
                audiences: vec!["api".into()],
                expiration_seconds: 1000,
                pod_name: "web".into(),
                pod_uid: UID.into(),
            }
        );
        assert!(requests[1].audiences.is_empty());
        assert_eq!(requests[1].expiration_seconds, 3600);
    }
    let token_two = read(&dir.join("default-token"));

    // Past the sync period, before 80% of the token's life: objects re-read, token kept.
    f.clock.advance(700);
    f.manager.setup(&ctx(&p)).await.expect("setup");
    assert_eq!(read(&dir.join("token")), "token-1");
    assert_eq!(f.issuer.requests.lock().expect("requests").len(), 2);

    // 80% of 1000 s passed: a new token for that source only.
    f.clock.advance(101);
    f.manager.setup(&ctx(&p)).await.expect("setup");
    assert_eq!(read(&dir.join("token")), "token-3");
    assert_eq!(read(&dir.join("default-token")), token_two);

    // Due by the token alone: 30 s after the last read, 800 s after token-3.
    f.clock.advance(770);
    f.manager.setup(&ctx(&p)).await.expect("setup");
    assert_eq!(read(&dir.join("token")), "token-3");
    f.clock.advance(30);
    f.manager.setup(&ctx(&p)).await.expect("setup");
    assert_eq!(read(&dir.join("token")), "token-4");

    // A refresh that fails keeps the token while it is valid, then fails the volume.
    f.issuer.down.store(true, Ordering::SeqCst);
    f.clock.advance(801);
    f.manager
        .setup(&ctx(&p))
        .await
        .expect("refresh failed, token valid");
    assert_eq!(read(&dir.join("token")), "token-4");
    f.clock.advance(200);
    let err = f.manager.setup(&ctx(&p)).await.expect_err("token expired");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"kube-api-access\" : apiserver down"
    );
    assert_eq!(read(&dir.join("token")), "token-4", "old content stays");

    let pod_dir = f.manager.pod_dir(UID);
    f.manager.teardown(UID).expect("teardown");
    assert_eq!(mounted(&pod_dir), 0);
}

#[tokio::test]
async fn projected_errors_aggregate_and_static_objects_issue_no_tokens() {
    let dir = TestDir::new();
    let manager = VolumeManager::new(dir.path().join("pods"), Arc::new(StaticObjects::new()));
    let v = Volume {
        name: "p".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "missing".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    cluster_trust_bundle: Some(ClusterTrustBundleProjection {
                        path: "ca.pem".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = manager
        .setup(&ctx(&pod(vec![v])))
        .await
        .expect_err("no apiserver");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"p\" : [no apiserver: service account tokens need --kubeconfig, configmap \"missing\" not found, \
         projected clusterTrustBundle sources are not supported by nodelet yet]"
    );
    manager.teardown(UID).expect("teardown");
    assert_eq!(mounted(dir.path()), 0);
}

#[tokio::test]
async fn a_changed_object_invalidates_the_pods_using_it_and_failures_back_off() {
    let f = fixture();
    let mut p = pod(vec![cm_volume("cfg", None, None)]);
    if let Some(spec) = p.spec.as_mut() {
        spec.containers = vec![
            serde_json::from_value(serde_json::json!({
                "name": "c",
                "envFrom": [{"secretRef": {"name": "env-secret"}}],
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}}]
            }))
            .expect("container"),
        ];
    }
    let refs = references(&p);
    let key = |kind, name: &str| ObjectKey {
        kind,
        namespace: "prod".into(),
        name: name.into(),
    };
    for k in [
        key("configmap", "cfg"),
        key("secret", "env-secret"),
        key("configmap", "env-cm"),
    ] {
        assert!(refs.contains(&k), "{k:?} in {refs:?}");
    }
    assert_eq!(refs.len(), 3);

    // Missing: each failure doubles the wait, from 500 ms.
    assert_eq!(f.manager.retry_in(UID), Duration::ZERO);
    let mut waits = Vec::new();
    for _ in 0..3 {
        let _ = f.manager.setup(&ctx(&p)).await;
        waits.push(f.manager.retry_in(UID));
    }
    assert_eq!(
        waits,
        [
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_secs(2)
        ]
    );
    for _ in 0..20 {
        let _ = f.manager.setup(&ctx(&p)).await;
    }
    assert_eq!(f.manager.retry_in(UID), Duration::from_secs(122));

    // Created: its announcement names this pod, and the next setup succeeds.
    f.issuer
        .objects
        .set_config_map(config_map("cfg", &[("a", "1")]));
    assert_eq!(f.manager.object_changed(&key("configmap", "cfg")), [UID]);
    assert!(
        f.manager
            .object_changed(&key("configmap", "other"))
            .is_empty()
    );
    let paths = f.manager.setup(&ctx(&p)).await.expect("set up");
    assert_eq!(f.manager.retry_in(UID), Duration::ZERO);
    assert_eq!(read(&paths["cfg"].join("a")), "1");

    // Changed within the sync period: an announcement makes the next setup re-read.
    f.issuer
        .objects
        .set_config_map(config_map("cfg", &[("a", "2")]));
    f.manager.setup(&ctx(&p)).await.expect("set up");
    assert_eq!(read(&paths["cfg"].join("a")), "1", "the sync period holds");
    assert_eq!(f.manager.object_changed_all(), [UID]);
    f.manager.setup(&ctx(&p)).await.expect("set up");
    assert_eq!(read(&paths["cfg"].join("a")), "2");
}

#[tokio::test]
async fn a_projected_token_belongs_to_the_user_every_container_runs_as() {
    let f = fixture();
    let v = Volume {
        name: "tok".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    path: "token".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    };
    let mut p = pod(vec![v]);
    let container = |name: &str, user: Option<i64>| -> k8s_openapi::api::core::v1::Container {
        serde_json::from_value(serde_json::json!({
            "name": name,
            "securityContext": {"runAsUser": user}
        }))
        .expect("container")
    };
    if let Some(spec) = p.spec.as_mut() {
        spec.security_context = Some(PodSecurityContext {
            run_as_user: Some(1000),
            ..Default::default()
        });
        spec.init_containers = Some(vec![container("init", Some(1000))]);
        spec.containers = vec![container("a", None), container("b", None)];
    }
    let paths = f.manager.setup(&ctx(&p)).await.expect("setup");
    let meta = fs::metadata(paths["tok"].join("token")).expect("stat");
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (1000, 0o600));

    // Two users: nobody owns it but root, with the volume's mode.
    if let Some(spec) = p.spec.as_mut() {
        spec.containers[1] = container("b", Some(2000));
    }
    f.manager.invalidate(UID);
    let paths = f.manager.setup(&ctx(&p)).await.expect("setup");
    let meta = fs::metadata(paths["tok"].join("token")).expect("stat");
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o644));
}
