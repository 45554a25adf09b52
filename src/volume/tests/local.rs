//! downwardAPI, emptyDir and hostPath volumes, and teardown, through the manager.

use super::*;

#[tokio::test]
async fn downward_api_follows_label_changes() {
    let f = fixture();
    let v = Volume {
        name: "info".into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![
                field("labels", "metadata.labels"),
                field("name", "metadata.name"),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut p = pod(vec![v]);
    let paths = f.manager.setup(&ctx(&p)).await.expect("setup");
    let dir = paths["info"].clone();
    assert!(dir.ends_with("volumes/kubernetes.io~downward-api/info"));
    assert!(mount_line(&dir).contains(" - tmpfs "));
    assert_eq!(read(&dir.join("labels")), "app=\"web\"");
    let first = data_target(&dir);

    f.manager.setup(&ctx(&p)).await.expect("unchanged");
    assert_eq!(data_target(&dir), first);

    p.metadata.labels = Some(BTreeMap::from([
        ("app".into(), "web".into()),
        ("tier".into(), "front".into()),
    ]));
    f.manager.setup(&ctx(&p)).await.expect("relabelled");
    assert_eq!(read(&dir.join("labels")), "app=\"web\"\ntier=\"front\"");
    assert_ne!(data_target(&dir), first);
    assert!(!first.exists());
    f.manager.teardown(UID).expect("teardown");
}

#[tokio::test]
async fn empty_dirs_on_disk_and_in_memory() {
    let f = fixture();
    let ed = |name: &str, medium: Option<&str>, size: Option<&str>| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(Into::into),
            size_limit: size.map(|s| Quantity(s.into())),
        }),
        ..Default::default()
    };
    let p = with_fs_group(
        pod(vec![
            ed("scratch", None, None),
            ed("cache", Some("Memory"), Some("64Ki")),
        ]),
        3456,
    );
    let paths = f.manager.setup(&ctx(&p)).await.expect("setup");
    let scratch = &paths["scratch"];
    assert!(scratch.ends_with("volumes/kubernetes.io~empty-dir/scratch"));
    let meta = fs::metadata(scratch).expect("stat");
    assert_eq!((meta.gid(), meta.mode() & 0o7777), (3456, 0o2777));
    assert_eq!(mounted(scratch), 0);
    let cache = &paths["cache"];
    let line = mount_line(cache);
    assert!(
        line.contains(" - tmpfs ") && line.contains("size=64k"),
        "{line}"
    );
    let meta = fs::metadata(cache).expect("stat");
    assert_eq!((meta.gid(), meta.mode() & 0o7777), (3456, 0o2777));
    fs::write(cache.join("f"), "x").expect("write into the tmpfs");

    f.manager.invalidate(UID);
    f.manager.setup(&ctx(&p)).await.expect("again");
    assert_eq!(mounted(cache), 1);
    assert!(
        cache.join("f").exists(),
        "setup keeps an emptyDir's content"
    );
}

#[tokio::test]
async fn host_paths_checked() {
    let f = fixture();
    let host = f.dir.path().join("host");
    fs::create_dir(&host).expect("mkdir");
    let hp = |path: &Path, kind: &str| Volume {
        name: "hp".into(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string_lossy().into_owned(),
            type_: Some(kind.into()),
        }),
        ..Default::default()
    };
    let paths = f
        .manager
        .setup(&ctx(&pod(vec![hp(&host, "Directory")])))
        .await
        .expect("dir");
    assert_eq!(paths["hp"], host);
    let err = f
        .manager
        .setup(&ctx(&pod(vec![hp(&host, "File")])))
        .await
        .expect_err("not a file");
    assert_eq!(
        err.to_string(),
        format!(
            "MountVolume.SetUp failed for volume \"hp\" : hostPath type check failed: {} is not a file",
            host.display()
        )
    );
    let made = host.join("made");
    f.manager
        .setup(&ctx(&pod(vec![hp(&made, "DirectoryOrCreate")])))
        .await
        .expect("made");
    assert!(made.is_dir());
    f.manager.teardown(UID).expect("teardown");
    assert!(made.is_dir(), "teardown leaves host paths alone");
}

#[tokio::test]
async fn teardown_leaves_no_mounts_and_no_dir() {
    let f = fixture();
    f.issuer
        .objects
        .set_config_map(config_map("cfg", &[("a", "1")]));
    f.issuer.objects.set_secret(secret("s", &[("k", "v")]));
    let p = pod(vec![
        cm_volume("cfg", None, None),
        Volume {
            name: "creds".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("s".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "mem".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "info".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![field("name", "metadata.name")]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]);
    assert!(f.manager.pods_on_disk().expect("ls").is_empty());
    f.manager.setup(&ctx(&p)).await.expect("setup");
    let pod_dir = f.manager.pod_dir(UID);
    assert_eq!(mounted(&pod_dir), 3);
    assert_eq!(f.manager.pods_on_disk().expect("ls"), [UID]);
    f.manager.teardown(UID).expect("teardown");
    assert_eq!(mounted(&pod_dir), 0);
    assert!(!pod_dir.exists());
    assert!(f.manager.pods_on_disk().expect("ls").is_empty());
    // State went with it: a new setup makes everything again.
    f.manager
        .setup(&ctx(&p))
        .await
        .expect("setup after teardown");
    assert_eq!(mounted(&pod_dir), 3);
    f.manager.teardown(UID).expect("teardown");
    assert_eq!(mounted(&pod_dir), 0);
}

#[tokio::test]
async fn the_first_service_list_wakes_every_worker_and_an_object_its_pods() {
    use crate::pod::router::Routed;
    let f = fixture();
    let p = pod(vec![cm_volume("cfg", None, None)]);
    let _ = f.manager.setup(&ctx(&p)).await;
    let manager = Arc::new(f.manager);
    let (changes, rx) = tokio::sync::broadcast::channel(4);
    let (wake, mut woken) = tokio::sync::mpsc::channel(4);
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(follow_changes(
        Arc::clone(&manager),
        rx,
        wake,
        cancel.clone(),
    ));
    // Pods waiting for their service variables reference no object: all look again.
    changes.send(ObjectKey::services_listed()).expect("send");
    assert!(matches!(woken.recv().await, Some(Routed::Resync)));
    changes
        .send(ObjectKey {
            kind: "configmap",
            namespace: "prod".into(),
            name: "cfg".into(),
        })
        .expect("send");
    assert!(matches!(woken.recv().await, Some(Routed::Sync { uid }) if uid == UID));
    cancel.cancel();
    task.await.expect("follow_changes");
}
