//! `exec_sync` against a real containerd and runc: output and exit codes, the
//! container's process settings, the timeout kill, and failures that must not hang.
//!
//! Needs root and a containerd: run `scripts/containerd-private.sh start` and point
//! `NODELET_TEST_CONTAINERD` at the socket it prints (the default is the host's
//! `/run/containerd/containerd.sock`). Each test works in its own containerd namespace
//! `nodelet-test-<random>` with a host-network sandbox (no CNI) under a cgroup parent
//! of its own, and removes all of it on drop, also when it fails.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nodelet_cri::cni::CniConfig;
use nodelet_cri::runtime::{
    ContainerConfig, ContainerdRuntime, EXEC_OUTPUT_LIMIT, PodRef, Runtime, RuntimeConfig,
    RuntimeError, SandboxConfig, SecurityConfig,
};

const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
const BUSYBOX: &str = "nodelet.local/busybox:1.35";

/// One test's containerd namespace, state directory and cgroup parent, holding a
/// running busybox container; everything is removed on drop.
struct TestPod {
    socket: String,
    ns: String,
    cgroup_parent: String,
    dir: tempfile::TempDir,
    runtime: ContainerdRuntime,
    container: String,
}

impl TestPod {
    /// A running `sleep` container in a host-network sandbox, with `FOO=bar`, working
    /// directory `/tmp` and user 65534.
    async fn start() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let socket =
            std::env::var("NODELET_TEST_CONTAINERD").unwrap_or_else(|_| DEFAULT_SOCKET.to_owned());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id = format!(
            "{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns = format!("nodelet-test-{id}");
        let dir = tempfile::Builder::new()
            .prefix("nodelet-exec-")
            .tempdir()
            .unwrap();
        let driver = dir.path().join("log-driver");
        // The shim's binary:// log driver: signal ready (close fd 5) and drain the
        // container's stdout (fd 3) and stderr (fd 4); the agent binary isn't built
        // for this crate's tests.
        std::fs::write(
            &driver,
            "#!/bin/sh\nexec 5>&-\ncat <&3 >/dev/null &\ncat <&4 >/dev/null\nwait\n",
        )
        .unwrap();
        std::fs::set_permissions(&driver, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = RuntimeConfig {
            endpoint: socket.clone(),
            namespace: ns.clone(),
            state_dir: dir.path().join("runtime"),
            log_driver: driver,
            registries: Default::default(),
            runtime_name: "io.containerd.runc.v2".into(),
            cni: CniConfig {
                conf_dir: dir.path().join("cni"),
                cache_dir: dir.path().join("cni-cache"),
                ..CniConfig::default()
            },
        };
        let runtime = match ContainerdRuntime::connect(config).await {
            Ok(r) => r,
            Err(e) => panic!(
                "cannot reach containerd at {socket} ({e}); start a private one with \
                 `scripts/containerd-private.sh start` and set NODELET_TEST_CONTAINERD to \
                 the socket it prints"
            ),
        };
        let mut pod = TestPod {
            socket,
            ns,
            cgroup_parent: format!("/nodelet-test-exec-{id}"),
            dir,
            runtime,
            container: String::new(),
        };
        let archive = busybox_archive(pod.dir.path());
        pod.runtime
            .containerd()
            .import_oci_archive(&archive)
            .await
            .expect("import busybox");
        let image = pod
            .runtime
            .image(BUSYBOX)
            .await
            .expect("image lookup")
            .expect("busybox imported");
        let sandbox = pod
            .runtime
            .run_sandbox(&SandboxConfig {
                pod: PodRef {
                    uid: format!("uid-{id}"),
                    name: "exec".into(),
                    namespace: "default".into(),
                },
                attempt: 0,
                hostname: "exec".into(),
                host_network: true,
                host_ipc: false,
                host_pid: false,
                share_process_namespace: false,
                log_directory: pod.dir.path().join("logs"),
                cgroup_parent: Some(pod.cgroup_parent.clone()),
                dns: None,
                host_aliases: vec![],
                fqdn: None,
                sysctls: vec![],
                oom_score_adj: None,
            })
            .await
            .expect("run sandbox");
        let config = ContainerConfig {
            name: "main".into(),
            attempt: 0,
            image: BUSYBOX.into(),
            command: vec!["sleep".into(), "3600".into()],
            args: vec![],
            working_dir: Some("/tmp".into()),
            env: vec![("FOO".into(), "bar".into())],
            mounts: vec![],
            log_path: PathBuf::from("main/0.log"),
            security: SecurityConfig {
                run_as_user: Some(65534),
                run_as_group: Some(65534),
                ..SecurityConfig::default()
            },
            resources: Default::default(),
        };
        pod.container = pod
            .runtime
            .create_container(&sandbox, &config, &image)
            .await
            .expect("create container");
        pod.runtime
            .start_container(&pod.container)
            .await
            .expect("start container");
        pod
    }

    fn exec_dir(&self) -> PathBuf {
        self.dir.path().join("runtime/exec")
    }

    /// The exec FIFO directories left behind (there should be none).
    fn leftover_exec_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.exec_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn exec(&self, cmd: &[&str], timeout: Duration) -> Result<ExecOut, RuntimeError> {
        let cmd: Vec<String> = cmd.iter().map(|s| (*s).to_owned()).collect();
        let r = self
            .runtime
            .exec_sync(&self.container, &cmd, timeout)
            .await?;
        Ok(ExecOut {
            code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            stdout_len: r.stdout.len(),
        })
    }

    /// Removes everything in the namespace, then the namespace and the cgroup parent;
    /// returns what failed.
    fn cleanup(&self) -> Vec<String> {
        let mut errors = nodelet_testkit::purge_namespace(&self.socket, &self.ns);
        if let Err((path, e)) = nodelet_testkit::remove_cgroup(&self.cgroup_parent) {
            errors.push(format!("cgroup {}: {e}", path.display()));
        }
        errors
    }
}

impl Drop for TestPod {
    fn drop(&mut self) {
        let errors = self.cleanup();
        if !errors.is_empty() {
            if std::thread::panicking() {
                eprintln!("cleanup of namespace {} failed: {errors:#?}", self.ns);
            } else {
                panic!("cleanup of namespace {} failed: {errors:#?}", self.ns);
            }
        }
    }
}

#[derive(Debug)]
struct ExecOut {
    code: i32,
    stdout: String,
    stderr: String,
    stdout_len: usize,
}

/// The busybox image built by `scripts/build-busybox-image.sh` into `dir`.
fn busybox_archive(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-busybox-image.sh");
    let out = dir.join("busybox.tar");
    let status = Command::new(&script)
        .arg(&out)
        .arg(BUSYBOX)
        .stdout(Stdio::null())
        .status()
        .expect("run build-busybox-image.sh");
    assert!(status.success(), "{} failed: {status}", script.display());
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_returns_exit_code_and_both_streams() {
    let pod = TestPod::start().await;
    let out = pod
        .exec(
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");

    // The container's environment, working directory and user, as CRI exec gives.
    let out = pod
        .exec(
            &["sh", "-c", "echo $FOO; pwd; id -u; id -g"],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "bar\n/tmp\n65534\n65534\n", "")
    );

    // Output past the limit is cut there, and the command still ends normally.
    let out = pod
        .exec(
            &["sh", "-c", "yes 0123456789 | head -c 100000; echo done >&2"],
            Duration::from_secs(10),
        )
        .await
        .expect("exec");
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout_len, EXEC_OUTPUT_LIMIT);
    assert_eq!(out.stderr, "done\n");
    assert!(
        pod.leftover_exec_dirs().is_empty(),
        "{:?}",
        pod.leftover_exec_dirs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_past_its_timeout_is_killed() {
    let pod = TestPod::start().await;
    let start = Instant::now();
    let err = pod
        .exec(&["sleep", "31"], Duration::from_secs(1))
        .await
        .expect_err("times out");
    let took = start.elapsed();
    match &err {
        RuntimeError::ExecTimeout {
            id,
            command,
            timeout,
        } => {
            assert_eq!(id, &pod.container);
            assert_eq!(command, "sleep 31");
            assert_eq!(*timeout, Duration::from_secs(1));
        }
        other => panic!("want ExecTimeout, got {other:?}"),
    }
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "took {took:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "container {}: command \"sleep 31\" timed out after 1s",
            pod.container
        )
    );
    // The process is gone from the container.
    let ps = pod
        .exec(&["ps", "-o", "args"], Duration::from_secs(10))
        .await
        .expect("ps");
    assert_eq!(ps.code, 0, "{ps:?}");
    assert!(ps.stdout.contains("sleep 3600"), "{}", ps.stdout);
    assert!(!ps.stdout.contains("sleep 31"), "{}", ps.stdout);
    assert!(
        pod.leftover_exec_dirs().is_empty(),
        "{:?}",
        pod.leftover_exec_dirs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_failures_return_errors_without_hanging() {
    let pod = TestPod::start().await;
    let limit = Duration::from_secs(20);

    // runc can't start a missing binary: an error, promptly.
    let missing = tokio::time::timeout(
        limit,
        pod.exec(&["/no/such/binary"], Duration::from_secs(10)),
    )
    .await
    .expect("returns");
    assert!(
        matches!(missing, Err(RuntimeError::Containerd { .. })),
        "{missing:?}"
    );

    let gone = tokio::time::timeout(
        limit,
        pod.runtime.exec_sync(
            "no-such-container",
            &["true".to_owned()],
            Duration::from_secs(5),
        ),
    )
    .await
    .expect("returns");
    assert!(
        matches!(&gone, Err(RuntimeError::Containerd { status, .. }) if status.code() == tonic::Code::NotFound),
        "{gone:?}"
    );

    let empty = pod
        .runtime
        .exec_sync(&pod.container, &[], Duration::from_secs(5))
        .await;
    assert!(matches!(empty, Err(RuntimeError::Spec { .. })), "{empty:?}");

    // Still usable afterwards, and nothing left behind.
    let out = pod
        .exec(&["true"], Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(out.code, 0);
    assert!(
        pod.leftover_exec_dirs().is_empty(),
        "{:?}",
        pod.leftover_exec_dirs()
    );

    // A stopped container: exec is an error, not a hang.
    pod.runtime
        .stop_container(&pod.container, Duration::from_secs(2))
        .await
        .expect("stop");
    let stopped = tokio::time::timeout(limit, pod.exec(&["true"], Duration::from_secs(5)))
        .await
        .expect("returns");
    assert!(stopped.is_err(), "{stopped:?}");
}
