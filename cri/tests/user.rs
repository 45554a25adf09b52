//! Image users given by name, resolved from the container's own `/etc/passwd` and
//! `/etc/group` as containerd's CRI does, against a real containerd and runc: the
//! process really runs as the IDs the names stand for (seen with `id` through exec).
//!
//! Needs root and a containerd (`scripts/containerd-private.sh start`,
//! `NODELET_TEST_CONTAINERD`). Works in its own containerd namespace with a
//! host-network sandbox under a cgroup parent of its own; all removed on drop.

#![allow(clippy::unwrap_used)]

mod support;

use support::TestRuntime;

use std::path::PathBuf;
use std::time::Duration;

use nodelet_cri::image::{ImageInfo, ImageRuntimeConfig, Layer, OciImage};
use nodelet_cri::runtime::{ContainerConfig, Runtime, RuntimeError, SandboxInfo, SecurityConfig};

/// The test's runtime (see `support::TestRuntime`), with the helpers below.
struct World(TestRuntime);

impl std::ops::Deref for World {
    type Target = TestRuntime;
    fn deref(&self) -> &TestRuntime {
        &self.0
    }
}

impl World {
    async fn new() -> Self {
        World(TestRuntime::new("user").await)
    }

    async fn sandbox(&self) -> SandboxInfo {
        self.host_network_sandbox("user").await
    }

    /// Imports busybox with `user` as the image's `User`: a base layer whose passwd
    /// has only root, and a second layer replacing passwd and adding group (so the
    /// lookup sees the layers merged, as the container does).
    async fn image(&self, name: &str, user: &str) -> ImageInfo {
        let busybox = std::fs::read("/bin/busybox").expect(
            "/bin/busybox (Debian busybox-static; scripts/build-busybox-image.sh installs it)",
        );
        let base = Layer::new()
            .file("/bin/busybox", busybox, 0o755)
            .symlink("/bin/sh", "busybox")
            .symlink("/bin/id", "busybox")
            .symlink("/bin/sleep", "busybox")
            .file(
                "/etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\n".as_slice(),
                0o644,
            )
            .dir("/tmp", 0o1777);
        let top = Layer::new()
            .file(
                "/etc/passwd",
                b"root:x:0:0:root:/root:/bin/sh\n\
                  nginx:x:101:102:nginx:/nonexistent:/bin/false\n\
                  app:x:1000:1000::/home/app:/bin/sh\n"
                    .as_slice(),
                0o644,
            )
            .file(
                "/etc/group",
                b"root:x:0:\nnginx:x:102:\nstaff:x:50:app\n".as_slice(),
                0o644,
            );
        let image = OciImage::new()
            .layer(base)
            .layer(top)
            .config(ImageRuntimeConfig {
                cmd: vec!["sh".into()],
                env: vec!["PATH=/bin".into()],
                user: user.into(),
                ..ImageRuntimeConfig::default()
            });
        self.runtime
            .containerd()
            .import_image(&image, name)
            .await
            .expect("import image")
    }

    async fn create(
        &self,
        sandbox: &SandboxInfo,
        name: &str,
        image: &ImageInfo,
        security: SecurityConfig,
    ) -> Result<String, RuntimeError> {
        let config = ContainerConfig {
            name: name.into(),
            attempt: 0,
            image: image.name.clone(),
            command: vec!["sleep".into(), "3600".into()],
            args: vec![],
            working_dir: None,
            env: vec![],
            mounts: vec![],
            log_path: PathBuf::from(format!("{name}/0.log")),
            security,
            resources: Default::default(),
        };
        self.runtime.create_container(sandbox, &config, image).await
    }

    /// `id -u` and `id -g` of a new container running `image`.
    async fn ids(
        &self,
        sandbox: &SandboxInfo,
        name: &str,
        image: &ImageInfo,
        security: SecurityConfig,
    ) -> (String, String) {
        let id = self
            .create(sandbox, name, image, security)
            .await
            .expect("create container");
        if let Err(e) = self.runtime.start_container(&id).await {
            let info = nodelet_testkit::ctr(&self.socket, &self.ns, &["containers", "info", &id]);
            panic!("start: {e}\n{}", String::from_utf8_lossy(&info.stdout));
        }
        let run = |flag: &'static str| {
            let id = id.clone();
            async move {
                let cmd = vec!["id".to_owned(), flag.to_owned()];
                let out = self
                    .runtime
                    .exec_sync(&id, &cmd, Duration::from_secs(10))
                    .await
                    .expect("exec id");
                assert_eq!(out.exit_code, 0, "{out:?}");
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
        };
        (run("-u").await, run("-g").await)
    }

    fn snapshots(&self) -> Vec<String> {
        nodelet_testkit::ctr_lines(&self.socket, &self.ns, &["snapshots", "ls"])
    }
}

fn ids(u: &str, g: &str) -> (String, String) {
    (u.to_owned(), g.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn image_user_names_resolve_from_the_rootfs() {
    let w = World::new().await;
    let sandbox = w.sandbox().await;

    let nginx = w.image("example.local/user:nginx", "nginx").await;
    assert_eq!(
        w.ids(&sandbox, "nginx", &nginx, SecurityConfig::default())
            .await,
        ids("101", "102"),
        "a user name: the passwd entry's uid and gid"
    );
    let app = w.image("example.local/user:app-staff", "app:staff").await;
    assert_eq!(
        w.ids(&sandbox, "app", &app, SecurityConfig::default())
            .await,
        ids("1000", "50"),
        "user:group names"
    );
    let mixed = w.image("example.local/user:uid-staff", "4242:staff").await;
    assert_eq!(
        w.ids(&sandbox, "mixed", &mixed, SecurityConfig::default())
            .await,
        ids("4242", "50"),
        "a uid with a group name"
    );
    let overridden = SecurityConfig {
        run_as_user: Some(7),
        ..SecurityConfig::default()
    };
    assert_eq!(
        w.ids(&sandbox, "override", &nginx, overridden).await,
        ids("7", "102"),
        "runAsUser replaces the uid; the name's gid stays"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_names_fail_the_container_and_leave_no_snapshot() {
    let w = World::new().await;
    let sandbox = w.sandbox().await;
    let before = w.snapshots().len();
    let ghost = w.image("example.local/user:ghost", "ghost").await;
    let with_image = w.snapshots().len();
    let err = w
        .create(&sandbox, "ghost", &ghost, SecurityConfig::default())
        .await
        .expect_err("no such user");
    assert_eq!(
        err.to_string(),
        "container ghost: unable to find user ghost: no matching entries in passwd file"
    );
    let group = w.image("example.local/user:bad-group", "app:wheel").await;
    let err = w
        .create(&sandbox, "badgroup", &group, SecurityConfig::default())
        .await
        .expect_err("no such group");
    assert_eq!(
        err.to_string(),
        "container badgroup: unable to find group wheel: no matching entries in group file"
    );
    // The image's layers are the only new snapshots: the failed containers' were
    // removed.
    assert!(with_image > before);
    assert_eq!(
        w.snapshots().len(),
        with_image,
        "no container snapshot left behind: {:?}",
        w.snapshots()
    );
    // Nothing of the lookups is left mounted on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("nodelet-user-"), "{mounts}");
}
