//! Test images: the busybox archive, a busybox image with a given config, and the
//! agnhost image built from `nodelet-testkit`'s binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nodelet_cri::image::{ImageRuntimeConfig, Layer, OciImage};

/// The busybox test image archive, built once per test run.
pub fn busybox_archive() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = root.join("target/nodelet-test/busybox.tar");
        if !out.exists() {
            std::fs::create_dir_all(out.parent().unwrap()).unwrap();
            let tmp = out.with_extension(format!("tar.{}", std::process::id()));
            let status = Command::new(root.join("scripts/build-busybox-image.sh"))
                .arg(&tmp)
                .stdout(Stdio::null())
                .status()
                .expect("run scripts/build-busybox-image.sh");
            assert!(status.success(), "build-busybox-image.sh failed");
            std::fs::rename(&tmp, &out).unwrap();
        }
        out
    })
    .clone()
}

/// The busybox image name in the archive.
pub const BUSYBOX: &str = "nodelet.local/busybox:1.35";

/// The name the agnhost test image is imported under.
pub const AGNHOST: &str = "nodelet.local/agnhost:test";

/// The agnhost test image, like upstream's `agnhost`: `/agnhost`, the
/// `nodelet-agnhost` binary of `nodelet-testkit` (built beside this test binary:
/// `cargo build -p nodelet-testkit --bin nodelet-agnhost`, which `scripts/test.sh`
/// runs), stripped, plus the shared libraries `ldd` says it loads, at the same paths,
/// so the dynamic loader finds them. Entrypoint `/agnhost`.
pub fn agnhost_image() -> OciImage {
    // target/<profile>/deps/<test> -> target/<profile>/nodelet-agnhost
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("nodelet-agnhost");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p nodelet-testkit --bin nodelet-agnhost` (scripts/test.sh does)",
        bin.display()
    );
    let stripped = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("strip")
        .arg("-o")
        .arg(stripped.path())
        .arg(&bin)
        .status()
        .expect("run strip");
    assert!(status.success(), "strip {} failed", bin.display());
    let mut layer = Layer::new()
        .file("/agnhost", std::fs::read(stripped.path()).unwrap(), 0o755)
        .dir("/tmp", 0o1777);
    let ldd = Command::new("ldd").arg(&bin).output().expect("run ldd");
    assert!(ldd.status.success(), "ldd {} failed", bin.display());
    for lib in shared_libraries(&String::from_utf8_lossy(&ldd.stdout)) {
        let data = std::fs::read(&lib).unwrap_or_else(|e| panic!("read {lib}: {e}"));
        layer = layer.file(&lib, data, 0o755);
    }
    OciImage::new().layer(layer).config(ImageRuntimeConfig {
        entrypoint: vec!["/agnhost".into()],
        ..ImageRuntimeConfig::default()
    })
}

/// A minimal busybox image (Debian's static `/bin/busybox`, which
/// [`busybox_archive`] installs, with `sh` and `sleep` links, `/tmp`) whose config
/// carries `config`: for tests of image config fields the busybox archive doesn't set.
pub fn busybox_image(config: ImageRuntimeConfig) -> OciImage {
    busybox_archive();
    let layer = Layer::new()
        .file(
            "/bin/busybox",
            std::fs::read("/bin/busybox").unwrap(),
            0o755,
        )
        .symlink("/bin/sh", "busybox")
        .symlink("/bin/sleep", "busybox")
        .dir("/tmp", 0o1777);
    OciImage::new().layer(layer).config(config)
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; `linux-vdso.so.1 (0x...)` has none.
fn shared_libraries(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.split_once("=>").map_or(l, |(_, r)| r).trim();
            let path = l.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}
