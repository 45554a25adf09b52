//! What a container's log shows, against a real containerd and runc with the real
//! CRI log driver (`nodelet-cri-log`): an image without `Env` runs `sh` with
//! containerd's default `PATH`; the `/var/log/containers`-style symlink of an instance
//! resolves to that instance's log while it runs and goes with the container; a
//! container whose start fails leaves its log empty, the reason in the error and in
//! the dead instance the runtime keeps.
//!
//! Needs root and a containerd: run `scripts/containerd-private.sh start` and point
//! `NODELET_TEST_CONTAINERD` at the socket it prints. Each test works in its own
//! containerd namespace with a host-network sandbox (see `support::TestRuntime`),
//! removed on drop, also when it fails; the symlinks go to the test's temp dir.

#![allow(clippy::unwrap_used)]

mod support;

use support::TestRuntime;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nodelet_cri::image::{ImageInfo, ImageRuntimeConfig, Layer, OciImage};
use nodelet_cri::logs;
use nodelet_cri::runtime::spec::DEFAULT_PATH;
use nodelet_cri::runtime::{
    ContainerConfig, ContainerInfo, ContainerState, Runtime, START_ERROR_EXIT_CODE, SandboxInfo,
    SecurityConfig,
};

const IMAGE: &str = "nodelet.local/busybox-noenv:test";

/// A test runtime, a running sandbox and an image whose config has no `Env`.
struct LogWorld {
    rt: TestRuntime,
    sandbox: SandboxInfo,
    image: ImageInfo,
}

impl LogWorld {
    async fn new(name: &str) -> Self {
        let rt = TestRuntime::new(name).await;
        let busybox = std::fs::read("/bin/busybox").expect(
            "/bin/busybox (Debian busybox-static; scripts/build-busybox-image.sh installs it)",
        );
        let mut layer = Layer::new()
            .file("/bin/busybox", busybox, 0o755)
            .dir("/tmp", 0o1777);
        for applet in ["sh", "echo", "sleep"] {
            layer = layer.symlink(&format!("/bin/{applet}"), "busybox");
        }
        // No `env`: the image sets no PATH, as umoci and `FROM scratch` images do.
        let image = OciImage::new().layer(layer).config(ImageRuntimeConfig {
            cmd: vec!["sh".into()],
            ..ImageRuntimeConfig::default()
        });
        let image = rt
            .runtime
            .containerd()
            .import_image(&image, IMAGE)
            .await
            .expect("import image");
        assert!(image.config.env.is_empty(), "{:?}", image.config.env);
        let sandbox = rt.host_network_sandbox(name).await;
        LogWorld { rt, sandbox, image }
    }

    fn config(name: &str, attempt: u32, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            attempt,
            image: IMAGE.into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            args: vec![],
            working_dir: None,
            env: vec![],
            mounts: vec![],
            log_path: PathBuf::from(format!("{name}/{attempt}.log")),
            security: SecurityConfig::default(),
            resources: Default::default(),
        }
    }

    async fn create(&self, name: &str, attempt: u32, command: &[&str]) -> String {
        self.rt
            .runtime
            .create_container(
                &self.sandbox,
                &Self::config(name, attempt, command),
                &self.image,
            )
            .await
            .expect("create container")
    }

    fn log_file(&self, name: &str, attempt: u32) -> PathBuf {
        self.sandbox
            .log_directory
            .join(format!("{name}/{attempt}.log"))
    }

    fn symlink(&self, name: &str, id: &str) -> PathBuf {
        logs::log_symlink_path(
            &self.rt.runtime.config().container_logs_dir,
            &self.sandbox.pod.name,
            &self.sandbox.pod.namespace,
            name,
            id,
        )
    }

    async fn info(&self, id: &str) -> Option<ContainerInfo> {
        self.rt
            .runtime
            .list_containers(Some(&self.sandbox.pod.uid))
            .await
            .expect("list containers")
            .into_iter()
            .find(|c| c.id == id)
    }

    async fn wait_exited(&self, id: &str) -> ContainerInfo {
        let start = Instant::now();
        loop {
            let info = self.info(id).await.expect("container listed");
            if info.state == ContainerState::Exited {
                return info;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "container {id} did not exit: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The text of each line of a CRI log file.
fn log_texts(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| logs::parse_line(l).expect("a CRI log line").text)
        .collect()
}

/// Waits until the log file has `want` (the driver writes asynchronously).
async fn wait_for_line(path: &Path, want: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        let lines = log_texts(path);
        if lines.iter().any(|l| l == want) {
            return lines;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} never showed {want:?}: {lines:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn image_without_env_runs_sh_with_containerds_default_path() {
    let w = LogWorld::new("path").await;
    let id = w.create("main", 0, &["sh", "-c", "echo $PATH"]).await;
    w.rt.runtime
        .start_container(&id)
        .await
        .expect("sh is found through the default PATH");
    let info = w.wait_exited(&id).await;
    assert_eq!(info.exit_code, Some(0), "{info:?}");
    let lines = wait_for_line(&w.log_file("main", 0), DEFAULT_PATH).await;
    assert_eq!(
        lines,
        ["/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn log_symlink_resolves_to_the_running_instance_and_goes_with_it() {
    let w = LogWorld::new("symlink").await;
    let first = w.create("app", 0, &["sh", "-c", "echo first"]).await;
    w.rt.runtime.start_container(&first).await.expect("start 0");
    w.wait_exited(&first).await;
    let second = w
        .create("app", 1, &["sh", "-c", "echo second; exec sleep 3600"])
        .await;
    w.rt.runtime
        .start_container(&second)
        .await
        .expect("start 1");

    // `<pod>_<namespace>_<container>-<id>.log`, as upstream names it.
    let link = w.symlink("app", &second);
    assert_eq!(
        link.file_name().and_then(|n| n.to_str()).unwrap(),
        format!("symlink_default_app-{second}.log")
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), w.log_file("app", 1));
    wait_for_line(&link, "second").await;
    assert_eq!(log_texts(&link), ["second"], "the current instance's log");
    let first_link = w.symlink("app", &first);
    assert_eq!(
        std::fs::read_link(&first_link).unwrap(),
        w.log_file("app", 0)
    );

    // Removing a container removes its link, and only its link.
    w.rt.runtime
        .remove_container(&first)
        .await
        .expect("remove 0");
    assert!(std::fs::symlink_metadata(&first_link).is_err());
    assert!(std::fs::symlink_metadata(&link).is_ok());

    // A link whose log is gone is swept; the live one stays.
    let dangling = w.symlink("gone", "0123456789ab");
    logs::create_log_symlink(&dangling, &w.sandbox.log_directory.join("gone/0.log"))
        .expect("dangling link");
    let pruned =
        logs::prune_log_symlinks(&w.rt.runtime.config().container_logs_dir).expect("prune");
    assert!(pruned.errors.is_empty(), "{:?}", pruned.errors);
    assert_eq!(pruned.removed, [dangling]);
    assert!(std::fs::symlink_metadata(&link).is_ok());

    w.rt.runtime
        .stop_container(&second, Duration::ZERO)
        .await
        .expect("stop 1");
    w.rt.runtime
        .remove_container(&second)
        .await
        .expect("remove 1");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link left after removal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_start_leaves_the_log_empty_and_the_reason_in_the_error() {
    let w = LogWorld::new("badcmd").await;
    let id = w.create("app", 0, &["/nonexistent"]).await;
    let err =
        w.rt.runtime
            .start_container(&id)
            .await
            .expect_err("a missing command can't start");
    let message = err.to_string();
    // The CRI plugin's words, runc's reason inside.
    assert!(
        message.starts_with("failed to create containerd task: ")
            && message.contains("runc create failed")
            && message.contains("/nonexistent"),
        "{message}"
    );

    // runc printed its error on the container's stderr too; the driver dropped it.
    let log = w.log_file("app", 0);
    let content = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        content.is_empty(),
        "{} has runtime errors in it: {content}",
        log.display()
    );
    // Give a late writer a moment: the log must stay empty.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_to_string(&log).unwrap_or_default(), "");
    assert!(std::fs::symlink_metadata(w.symlink("app", &id)).is_err());

    // The instance stays, dead with the reason, as the CRI plugin reports it.
    let info = w.info(&id).await.expect("the failed instance is listed");
    assert_eq!(info.state, ContainerState::Exited);
    assert_eq!(info.exit_code, Some(START_ERROR_EXIT_CODE));
    assert!(info.finished_at.is_some());
    assert!(info.started_at.is_none());
    assert!(
        info.start_error()
            .is_some_and(|m| m.contains("/nonexistent")),
        "{:?}",
        info.start_error()
    );

    // The next attempt is a new instance with its own log; the failed one goes.
    w.rt.runtime.remove_container(&id).await.expect("remove");
    assert!(w.info(&id).await.is_none());
    let next = w.create("app", 1, &["sh", "-c", "echo retried"]).await;
    w.rt.runtime.start_container(&next).await.expect("start 1");
    wait_for_line(&w.log_file("app", 1), "retried").await;
}
