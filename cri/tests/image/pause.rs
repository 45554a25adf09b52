//! The pause image and what a handle keeps in process: imported once, kept until
//! removed, lookups counted by containerd call; the pause snapshot and the pause
//! process itself.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn pause_image_is_imported_once() {
    let t = TestNs::new().await;
    assert_eq!(t.client.get_image(PAUSE_IMAGE).await.expect("get"), None);

    let first = t.client.ensure_pause_image().await.expect("import pause");
    assert_eq!(first.name, PAUSE_IMAGE);
    assert_eq!(first.config.entrypoint, ["/pause"]);
    assert_eq!(first.config.user, "65535:65535");
    assert!(first.id.starts_with("sha256:") && first.repo_digest.starts_with("sha256:"));
    assert!(
        t.snapshots().contains(&first.chain_id),
        "chain snapshot committed"
    );

    let record = || async {
        ImagesClient::new(t.client.channel())
            .get(t.client.request(GetImageRequest {
                name: PAUSE_IMAGE.to_owned(),
            }))
            .await
            .expect("image get")
            .into_inner()
            .image
            .expect("image record")
    };
    let before = record().await;
    let content_before = t.ctr_lines(&["content", "ls", "-q"]);

    let second = t.client.ensure_pause_image().await.expect("ensure again");
    assert_eq!(second, first);
    assert_eq!(record().await, before, "the image record is untouched");
    assert_eq!(t.ctr_lines(&["content", "ls", "-q"]), content_before);
    assert_eq!(t.ctr_lines(&["images", "ls", "-q"]), [PAUSE_IMAGE]);
    assert!(
        t.ctr_lines(&["leases", "ls", "-q"]).is_empty(),
        "import lease deleted"
    );
}

/// Calls made between two readings of a handle's counts, by method.
fn calls_since(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    after
        .iter()
        .map(|(m, n)| (m.clone(), n - before.get(m).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_image_is_kept_until_removed() {
    let t = TestNs::new().await;
    let first = t.client.ensure_pause_image().await.expect("import pause");
    let before = t.client.calls();
    assert!(!before.is_empty(), "the import was counted");
    // Kept: every sandbox after the first asks containerd nothing for it.
    let clone = t.client.clone();
    for _ in 0..3 {
        assert_eq!(clone.ensure_pause_image().await.expect("kept"), first);
    }
    assert_eq!(calls_since(&before, &t.client.calls()), Default::default());

    // Removed through the handle: looked up (and imported) again.
    t.client.remove_image(PAUSE_IMAGE).await.expect("remove");
    assert!(t.ctr_lines(&["images", "ls", "-q"]).is_empty());
    let again = t.client.ensure_pause_image().await.expect("import again");
    assert_eq!(again.repo_digest, first.repo_digest);
    assert_eq!(again.chain_id, first.chain_id);
    assert_eq!(t.ctr_lines(&["images", "ls", "-q"]), [PAUSE_IMAGE]);

    // Removed behind the agent's back: kept until forgotten (what a failed sandbox
    // does), then imported again.
    t.ctr_ok(&["images", "rm", PAUSE_IMAGE]);
    assert_eq!(t.client.ensure_pause_image().await.expect("kept"), again);
    t.client.forget_pause_image().await;
    t.client
        .ensure_pause_image()
        .await
        .expect("import after forget");
    assert_eq!(t.ctr_lines(&["images", "ls", "-q"]), [PAUSE_IMAGE]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_looked_up_again_costs_its_record_and_a_snapshot_stat() {
    let t = TestNs::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let name = "nodelet.local/busybox:1.35";
    let archive = busybox_archive(dir.path(), name);
    t.client.import_oci_archive(&archive).await.expect("import");
    let first = t
        .client
        .get_image(name)
        .await
        .expect("get")
        .expect("present");
    let before = t.client.calls();
    let second = t
        .client
        .get_image(name)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(second, first);
    assert_eq!(
        calls_since(&before, &t.client.calls()),
        std::collections::BTreeMap::from([
            ("containerd.services.images.v1.Images/Get".to_owned(), 1),
            (
                "containerd.services.snapshots.v1.Snapshots/Stat".to_owned(),
                1
            ),
        ])
    );
    // Removed: gone, however much was resolved before.
    t.client.remove_image(name).await.expect("remove");
    assert_eq!(t.client.get_image(name).await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_snapshot_prepares_idempotently() {
    let t = TestNs::new().await;
    let pause = t.client.ensure_pause_image().await.expect("import pause");

    let key = "nodelet-test-rootfs";
    let mounts = t
        .client
        .prepare_snapshot(&pause, key)
        .await
        .expect("prepare");
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    let lower = match m.r#type.as_str() {
        "overlay" => m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .and_then(|l| l.split(':').next())
            .expect("lowerdir option")
            .to_owned(),
        "bind" => m.source.clone(),
        other => panic!("unexpected mount type {other}: {m:?}"),
    };
    let pause_bin = Path::new(&lower).join("pause");
    let meta = std::fs::metadata(&pause_bin).expect("pause in the lower dir");
    assert_eq!(meta.len(), nodelet_cri::image::PAUSE_BINARY.len() as u64);
    assert!(t.snapshots().iter().any(|k| k == key));

    // Again, as after an agent restart half-way through creating a container.
    let again = t
        .client
        .prepare_snapshot(&pause, key)
        .await
        .expect("prepare again");
    assert_eq!(again, mounts);

    t.client.remove_snapshot(key).await.expect("remove");
    assert!(!t.snapshots().iter().any(|k| k == key));
    t.client
        .remove_snapshot(key)
        .await
        .expect("remove of a missing snapshot is ok");
    assert!(
        t.ctr_lines(&["leases", "ls", "-q"]).is_empty(),
        "rootfs lease deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_runs_and_exits_zero_on_sigterm() {
    let t = TestNs::new().await;
    t.client.ensure_pause_image().await.expect("import pause");

    let id = "pause-run";
    let child = Command::new("timeout")
        .args([
            "60",
            "ctr",
            "--address",
            &t.socket,
            "-n",
            &t.ns,
            "run",
            "--rm",
            PAUSE_IMAGE,
            id,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run");
    wait_for("the pause task to run", Duration::from_secs(30), || {
        t.ctr_ok(&["tasks", "ls"])
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
    });
    t.ctr_ok(&["tasks", "kill", "-s", "SIGTERM", id]);
    let out = child.wait_with_output().expect("wait for ctr run");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "pause exited {}: {output}",
        out.status
    );
    assert!(
        output.contains("Shutting down, got signal: Terminated"),
        "{output}"
    );
    assert!(
        !output.contains("should be the first process"),
        "pause is PID 1 in its container: {output}"
    );
    assert!(
        t.ctr_lines(&["containers", "ls", "-q"]).is_empty(),
        "--rm removed it"
    );
}
