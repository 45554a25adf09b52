//! End-to-end: image garbage collection (issue 6) through the `nodelet` binary against
//! the test's containerd. The thresholds are set relative to the filesystem holding
//! containerd's root, so that GC must run and cannot reach its goal: every unused
//! image goes, the in-use image and the pinned pause image stay, and the agent warns
//! as upstream's `image_gc_manager.go` does.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nodelet_cri::image::PAUSE_IMAGE;
use support::{BUSYBOX, World, phase, wait_for};

/// The directory of containerd's root: the private test containerd keeps it next to
/// its socket (`scripts/containerd-private.sh`).
fn containerd_root(w: &World) -> PathBuf {
    let sock = Path::new(&w.socket);
    let root = sock.parent().map(|d| d.join("root"));
    root.filter(|r| r.is_dir())
        .unwrap_or_else(|| PathBuf::from("/var/lib/containerd"))
}

/// Used percent of the filesystem holding `path`, as image GC computes it
/// (capacity minus what an unprivileged user may still use).
fn used_percent(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs of containerd's root");
    let cap = st.blocks() * st.fragment_size();
    let avail = st.blocks_available() * st.fragment_size();
    (cap - avail) * 100 / cap
}

/// Writes a one-layer OCI image archive named `name` whose content (and so its config
/// digest, the image ID) is unique to `tag`, and returns its path.
fn unique_image_archive(dir: &Path, name: &str, tag: &str) -> PathBuf {
    let out = dir.join(format!("{tag}.tar"));
    let script = r#"
set -euo pipefail
out=$1 name=$2 tag=$3
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs" "$work/layout/blobs/sha256"
echo "$tag" >"$work/rootfs/tag"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" .
put() { digest=$(sha256sum "$1" | cut -d' ' -f1); size=$(wc -c <"$1" | tr -d ' '); mv "$1" "$work/layout/blobs/sha256/$digest"; }
put "$work/layer.tar"; ld=$digest ls=$size
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/tag"],"Labels":{"tag":"%s"}},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$tag" "$ld" >"$work/config.json"
sed -i "s/\"amd64\"/\"$(dpkg --print-architecture)\"/" "$work/config.json"
put "$work/config.json"; cd=$digest cs=$size
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" >"$work/manifest.json"
put "$work/manifest.json"; md=$digest ms=$size
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' "$md" "$ms" "$name" >"$work/layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
tar -C "$work/layout" -cf "$out" .
"#;
    let status = Command::new("bash")
        .args(["-c", script, "bash"])
        .arg(&out)
        .args([name, tag])
        .status()
        .expect("run bash");
    assert!(status.success(), "building the test image archive failed");
    out
}

/// The image names in the test's namespace.
fn image_names(w: &World) -> Vec<String> {
    nodelet_testkit::ctr_lines(&w.socket, &w.namespace, &["images", "ls", "-q"])
}

const POD: &str = r"
apiVersion: v1
kind: Pod
metadata:
  name: user
spec:
  containers:
  - name: main
    image: nodelet.local/busybox:1.35
    command: [sh, -c, 'sleep 3600']
";

#[tokio::test]
async fn image_gc_deletes_unused_images_and_warns_when_it_falls_short() {
    let mut w = World::new().await;
    let croot = containerd_root(&w);
    let unused = format!("nodelet.local/unused-{}:1", w.id);
    let archive = unique_image_archive(w.dir.path(), &unused, &w.id);
    let containerd = nodelet_cri::containerd::Containerd::connect(&w.socket, &w.namespace)
        .await
        .expect("connect to containerd");
    containerd
        .import_oci_archive(&archive)
        .await
        .expect("import the unused image");

    // First run without GC (100 disables it), so the pod's image is in use before
    // the aggressive pass at the next start.
    w.extra_args = vec![
        "--image-gc-high-threshold=100".into(),
        "--containerd-root".into(),
        croot.display().to_string(),
    ];
    w.start_agent().await;
    w.write_manifest("user.yaml", POD);
    w.wait_pod("user", "Running", |p| phase(p) == "Running")
        .await;
    assert!(image_names(&w).contains(&unused), "{:?}", image_names(&w));
    w.stop_agent();

    // Thresholds well below the current usage (half of it, so other tests freeing
    // space meanwhile change nothing): GC must run and cannot reach the goal.
    let used = used_percent(&croot);
    assert!(used >= 2, "the test filesystem is almost empty ({used}%)");
    let high = used / 2;
    let low = high - 1;
    w.extra_args = vec![
        format!("--image-gc-high-threshold={high}"),
        format!("--image-gc-low-threshold={low}"),
        "--minimum-image-ttl-duration=0s".into(),
        "--containerd-root".into(),
        croot.display().to_string(),
    ];
    w.start_agent().await;
    let log = w.agent_log();
    wait_for("the image GC warning", Duration::from_secs(60), || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log).ok().filter(|l| {
                l.contains("Failed to garbage collect required amount of images. Attempted to free")
            })
        }
    })
    .await;
    let names = image_names(&w);
    assert!(!names.contains(&unused), "unused image kept: {names:?}");
    assert!(
        names.iter().any(|n| n == BUSYBOX),
        "in-use image removed: {names:?}"
    );
    let pause = nodelet_cri::image::normalize_reference(PAUSE_IMAGE).expect("pause reference");
    assert!(names.contains(&pause), "pause image removed: {names:?}");
    // The pod is untouched.
    let pod = w.pod("user").await.expect("pod still listed");
    assert_eq!(phase(&pod), "Running");
}
