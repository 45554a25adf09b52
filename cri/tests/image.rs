//! Image import, unpack and snapshots against a real containerd.
//!
//! Needs root and a containerd: run `scripts/containerd-private.sh start` and point
//! `NODELET_TEST_CONTAINERD` at the socket it prints (the default is the host's
//! `/run/containerd/containerd.sock`). Each test works in its own containerd namespace
//! `nodelet-test-<random>` and removes everything in it, then the namespace, even when
//! it fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::GetImageRequest;
use containerd_client::services::v1::images_client::ImagesClient;
use nodelet_cri::containerd::Containerd;
use nodelet_cri::image::{
    ImageError, ImageRuntimeConfig, Layer, OciImage, PAUSE_IMAGE, normalize_reference,
};

#[path = "image/pause.rs"]
mod pause;

const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// A containerd namespace of one test, emptied and removed on drop.
struct TestNs {
    socket: String,
    ns: String,
    client: Containerd,
}

impl TestNs {
    async fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let socket =
            std::env::var("NODELET_TEST_CONTAINERD").unwrap_or_else(|_| DEFAULT_SOCKET.to_owned());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let ns = format!(
            "nodelet-test-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let client = match Containerd::connect(&socket, &ns).await {
            Ok(client) => client,
            Err(e) => panic!(
                "cannot reach containerd at {socket} ({e}); start a private one with \
                 `scripts/containerd-private.sh start` and set NODELET_TEST_CONTAINERD to \
                 the socket it prints"
            ),
        };
        Self { socket, ns, client }
    }

    /// Runs `ctr` in this namespace, bounded in time.
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["120", "ctr", "--address", &self.socket, "-n", &self.ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Runs `ctr` and returns its stdout, failing the test if it fails.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The lines of a `ctr ... ls -q`-style output.
    fn ctr_lines(&self, args: &[&str]) -> Vec<String> {
        self.ctr_ok(args)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Committed and active snapshot keys.
    fn snapshots(&self) -> Vec<String> {
        self.ctr_lines(&["snapshots", "ls"])
            .into_iter()
            .skip(1) // header
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// Makes containerd collect garbage now: a lease deleted with `--sync` runs a GC.
    fn force_gc(&self) {
        let id = format!("{}-gc", self.ns);
        self.ctr_ok(&["leases", "create", "--id", &id]);
        self.ctr_ok(&["leases", "rm", "--sync", &id]);
    }

    /// Removes everything in the namespace, then the namespace; returns what failed.
    fn cleanup(&self) -> Vec<String> {
        let mut errors = nodelet_testkit::purge_namespace(&self.socket, &self.ns);
        // `ctr run` puts containers under containerd's default cgroup `/<namespace>`.
        if let Err((path, e)) = nodelet_testkit::remove_cgroup(&format!("/{}", self.ns)) {
            errors.push(format!("cgroup {}: {e}", path.display()));
        }
        errors
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let errors = self.cleanup();
        if !errors.is_empty() {
            if std::thread::panicking() {
                eprintln!(
                    "cleanup of containerd namespace {} failed: {errors:#?}",
                    self.ns
                );
            } else {
                panic!(
                    "cleanup of containerd namespace {} failed: {errors:#?}",
                    self.ns
                );
            }
        }
    }
}

/// The busybox image built by `scripts/build-busybox-image.sh` into `dir`.
fn busybox_archive(dir: &Path, name: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-busybox-image.sh");
    let out = dir.join("busybox.tar");
    let status = Command::new(&script)
        .arg(&out)
        .arg(name)
        .status()
        .expect("run build-busybox-image.sh");
    assert!(status.success(), "{} failed: {status}", script.display());
    out
}

/// Waits for `cond`, polling, up to `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_imports_of_one_image() {
    let t = TestNs::new().await;
    let other = Containerd::connect(&t.socket, &t.ns)
        .await
        .expect("connect");
    let two = two_layer_image();
    let (a, b, c) = tokio::join!(
        t.client.ensure_pause_image(),
        other.ensure_pause_image(),
        t.client.import_image(&two, "example.local/two:1"),
    );
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_eq!(a, b);
    c.expect("two-layer image");
    assert_eq!(
        t.snapshots().len(),
        3,
        "one pause layer, two others: no duplicates"
    );
    assert!(t.ctr_lines(&["leases", "ls", "-q"]).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn busybox_archive_imports_and_runs() {
    let t = TestNs::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = busybox_archive(dir.path(), "nodelet.local/busybox:1.35");

    let names = t.client.import_oci_archive(&archive).await.expect("import");
    assert_eq!(names, ["nodelet.local/busybox:1.35"]);
    let image = t
        .client
        .get_image("nodelet.local/busybox:1.35")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(image.config.cmd, ["sh"]);
    assert!(image.config.entrypoint.is_empty());
    assert_eq!(
        image.config.env,
        ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    );
    assert!(t.snapshots().contains(&image.chain_id));

    // Labels as containerd's own importer sets them.
    let content = t.ctr_ok(&["content", "ls"]);
    let line = |digest: &str| {
        content
            .lines()
            .find(|l| l.starts_with(digest))
            .unwrap_or_else(|| panic!("{digest} in content ls:\n{content}"))
            .to_owned()
    };
    assert!(
        line(&image.repo_digest)
            .contains(&format!("containerd.io/gc.ref.content.config={}", image.id))
    );
    assert!(line(&image.repo_digest).contains("containerd.io/gc.ref.content.l.0=sha256:"));
    assert!(line(&image.id).contains(&format!(
        "containerd.io/gc.ref.snapshot.overlayfs={}",
        image.chain_id
    )));

    // Importing again changes nothing.
    assert_eq!(
        t.client.import_oci_archive(&archive).await.expect("again"),
        names
    );
    assert_eq!(
        t.client
            .get_image("nodelet.local/busybox:1.35")
            .await
            .expect("get"),
        Some(image.clone())
    );

    // containerd's own importer reads the script's archive the same way.
    let out = t.ctr_ok(&[
        "images",
        "import",
        "--base-name",
        "nodelet.local/busybox",
        archive.to_str().expect("utf-8"),
    ]);
    assert!(
        out.contains(&format!(
            "nodelet.local/busybox:1.35 ({})",
            image.repo_digest
        )),
        "{out}"
    );

    // An archive `ctr images export` wrote (with containerd's name annotation) imports.
    let exported = dir.path().join("exported.tar");
    t.ctr_ok(&[
        "images",
        "export",
        exported.to_str().expect("utf-8"),
        "nodelet.local/busybox:1.35",
    ]);
    t.ctr_ok(&["images", "rm", "nodelet.local/busybox:1.35"]);
    assert_eq!(
        t.client
            .import_oci_archive(&exported)
            .await
            .expect("import export"),
        names
    );
    let reimported = t
        .client
        .get_image("nodelet.local/busybox:1.35")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        (&reimported.id, &reimported.chain_id),
        (&image.id, &image.chain_id)
    );

    // The unpacked root filesystem works.
    let out = t.ctr_ok(&[
        "run",
        "--rm",
        "nodelet.local/busybox:1.35",
        "bb-run",
        "sh",
        "-c",
        "echo ok; ls /bin/wget",
    ]);
    assert_eq!(
        out.replace('\r', "").lines().collect::<Vec<_>>(),
        ["ok", "/bin/wget"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_and_invalid_names() {
    let t = TestNs::new().await;
    assert_eq!(t.client.get_image("busybox").await.expect("get"), None);
    assert_eq!(
        t.client
            .get_image("nodelet.local/nothing:1")
            .await
            .expect("get"),
        None
    );
    assert!(matches!(
        t.client.get_image("Busybox").await,
        Err(ImageError::InvalidReference { .. })
    ));
    assert!(t.client.list_images().await.expect("list").is_empty());
    assert_eq!(
        normalize_reference("busybox").expect("valid"),
        "docker.io/library/busybox:latest"
    );
}

fn two_layer_image() -> OciImage {
    OciImage::new()
        .layer(
            Layer::new()
                .file("/etc/motd", b"hello\n".as_slice(), 0o644)
                .dir("/tmp", 0o1777),
        )
        .layer(
            Layer::new()
                .file("/etc/motd", b"hello again\n".as_slice(), 0o644)
                .symlink("/motd", "etc/motd"),
        )
        .config(ImageRuntimeConfig {
            entrypoint: vec!["/bin/true".into()],
            cmd: vec!["x".into()],
            env: vec!["A=b".into()],
            working_dir: "/tmp".into(),
            user: "1000:1000".into(),
            stop_signal: Some("SIGQUIT".into()),
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn import_is_idempotent_and_survives_gc() {
    let t = TestNs::new().await;
    let image = two_layer_image();
    let info = t
        .client
        .import_image(&image, "example.local/two:1")
        .await
        .expect("import");
    assert_eq!(info.name, "example.local/two:1");
    assert_eq!(&info.config, image.runtime_config());
    let again = t
        .client
        .import_image(&image, "example.local/two:1")
        .await
        .expect("again");
    assert_eq!(again, info);

    let content = t.ctr_lines(&["content", "ls", "-q"]);
    assert_eq!(
        content.len(),
        4,
        "manifest, config, two layers: {content:?}"
    );
    let snapshots = t.snapshots();
    assert_eq!(snapshots.len(), 2, "two committed layers: {snapshots:?}");
    assert!(snapshots.contains(&info.chain_id));
    assert!(t.ctr_lines(&["leases", "ls", "-q"]).is_empty());

    // With no lease left, only the GC labels keep the content and snapshots.
    t.force_gc();
    assert_eq!(t.ctr_lines(&["content", "ls", "-q"]), content);
    assert_eq!(t.snapshots(), snapshots);
    assert_eq!(
        t.client
            .get_image("example.local/two:1")
            .await
            .expect("get"),
        Some(info.clone())
    );
    assert_eq!(
        t.client.list_images().await.expect("list"),
        std::slice::from_ref(&info)
    );

    // The same image under a second name shares everything.
    let other = t
        .client
        .import_image(&image, "example.local/two:alias")
        .await
        .expect("alias");
    assert_eq!(
        (other.id, other.chain_id),
        (info.id.clone(), info.chain_id.clone())
    );
    assert_eq!(t.snapshots().len(), 2);

    // Once the images are gone, the GC takes it all: nothing was held by anything else.
    t.ctr_ok(&[
        "images",
        "rm",
        "example.local/two:1",
        "example.local/two:alias",
    ]);
    t.force_gc();
    assert!(t.ctr_lines(&["content", "ls", "-q"]).is_empty());
    assert!(t.snapshots().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_names() {
    let t = TestNs::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let image = OciImage::new().layer(Layer::new().file("/f", b"f".as_slice(), 0o644));

    let bare = dir.path().join("bare.tar");
    std::fs::write(&bare, image.to_oci_archive("1.35").expect("archive")).expect("write");
    match t.client.import_oci_archive(&bare).await {
        Err(ImageError::BareTagName { tag, .. }) => assert_eq!(tag, "1.35"),
        other => panic!("bare tag accepted: {other:?}"),
    }
    assert!(t.ctr_lines(&["images", "ls", "-q"]).is_empty());

    let full = dir.path().join("full.tar");
    std::fs::write(
        &full,
        image.to_oci_archive("example.local/f").expect("archive"),
    )
    .expect("write");
    let names = t.client.import_oci_archive(&full).await.expect("import");
    assert_eq!(names, ["example.local/f:latest"]);

    let not_layout = dir.path().join("not.tar");
    std::fs::write(&not_layout, Layer::new().to_tar().expect("tar")).expect("write");
    assert!(matches!(
        t.client.import_oci_archive(&not_layout).await,
        Err(ImageError::NotOciLayout { .. })
    ));
    let missing = dir.path().join("missing.tar");
    assert!(matches!(
        t.client.import_oci_archive(&missing).await,
        Err(ImageError::Io { .. })
    ));
    // `ctr` reads the archives nodelet writes, too.
    let out = t.ctr_ok(&["images", "import", full.to_str().expect("utf-8")]);
    assert!(out.contains("example.local/f"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_of_committed_layers() {
    let t = TestNs::new().await;
    let info = t
        .client
        .import_image(&two_layer_image(), "example.local/two:1")
        .await
        .expect("import");
    let out = t.ctr_ok(&["snapshots", "info", &info.chain_id]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("snapshot info json");
    assert_eq!(v["Kind"], "Committed");
    let labels: HashMap<String, String> =
        serde_json::from_value(v["Labels"].clone()).expect("labels");
    assert_eq!(
        labels.get("containerd.io/snapshot.ref"),
        Some(&info.chain_id)
    );
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// An archive whose index points to a nested multi-platform index, with a gzip layer,
/// named by containerd's own annotation: the other shapes real archives come in.
#[tokio::test(flavor = "multi_thread")]
async fn gzip_layer_behind_a_platform_index() {
    let t = TestNs::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let tar = Layer::new()
        .file("/hello", b"hi\n".as_slice(), 0o644)
        .to_tar()
        .expect("tar");
    let gz_path = dir.path().join("layer.tar");
    std::fs::write(&gz_path, &tar).expect("write");
    let status = Command::new("gzip")
        .args(["-n", "-f"])
        .arg(&gz_path)
        .status()
        .expect("gzip");
    assert!(status.success());
    let gz = std::fs::read(dir.path().join("layer.tar.gz")).expect("read gz");

    let arch = oci_spec::image::Arch::default().to_string();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/hello"], "StopSignal": "SIGQUIT"},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
    }))
    .expect("json");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(&gz), "size": gz.len()}],
    }))
    .expect("json");
    let missing = format!("sha256:{}", "0".repeat(64));
    let platforms = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            // Another platform first, its blobs not even in the archive.
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing,
             "size": 100, "platform": {"architecture": "s390x", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": sha256(&manifest), "size": manifest.len(),
             "platform": {"architecture": arch, "os": "linux"}},
        ],
    }))
    .expect("json");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                       "digest": sha256(&platforms), "size": platforms.len(),
                       "annotations": {"io.containerd.image.name": "example.local/gz:2",
                                       "org.opencontainers.image.ref.name": "2"}}],
    }))
    .expect("json");
    let mut layout = Layer::new()
        .file(
            "/oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#.as_slice(),
            0o644,
        )
        .file("/index.json", index, 0o644);
    for blob in [
        gz.clone(),
        config.clone(),
        manifest.clone(),
        platforms.clone(),
    ] {
        let path = format!("/blobs/sha256/{}", &sha256(&blob)["sha256:".len()..]);
        layout = layout.file(&path, blob, 0o644);
    }
    let archive = dir.path().join("gz.tar");
    std::fs::write(&archive, layout.to_tar().expect("tar")).expect("write");

    let names = t.client.import_oci_archive(&archive).await.expect("import");
    assert_eq!(names, ["example.local/gz:2"]);
    let image = t
        .client
        .get_image("example.local/gz:2")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(image.repo_digest, sha256(&platforms));
    assert_eq!(image.id, sha256(&config));
    assert_eq!(
        image.chain_id,
        sha256(&tar),
        "one layer: chain ID = diff ID"
    );
    assert_eq!(image.config.cmd, ["/hello"]);
    assert_eq!(image.config.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(
        image.size,
        (platforms.len() + manifest.len() + config.len() + gz.len()) as u64
    );
    let content = t.ctr_ok(&["content", "ls"]);
    let line = |digest: &str| {
        content
            .lines()
            .find(|l| l.starts_with(digest))
            .unwrap_or_else(|| panic!("{digest} in content ls:\n{content}"))
            .to_owned()
    };
    assert!(line(&sha256(&gz)).contains(&format!("containerd.io/uncompressed={}", sha256(&tar))));
    assert!(line(&sha256(&platforms)).contains(&format!(
        "containerd.io/gc.ref.content.m.0={}",
        sha256(&manifest)
    )));
    t.force_gc();
    assert_eq!(t.ctr_lines(&["content", "ls", "-q"]).len(), 4);
    assert!(t.snapshots().contains(&image.chain_id));

    let out = t.ctr_ok(&["snapshots", "info", &image.chain_id]);
    assert!(out.contains("Committed"), "{out}");
}
