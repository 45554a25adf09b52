//! `exec_sync` against a real containerd and runc: output and exit codes, the
//! container's process settings, the timeout kill, and failures that must not hang.
//!
//! Needs root and a containerd: run `scripts/containerd-private.sh start` and point
//! `NODELET_TEST_CONTAINERD` at the socket it prints (the default is the host's
//! `/run/containerd/containerd.sock`). Each test works in its own containerd namespace
//! `nodelet-test-<random>` with a host-network sandbox (no CNI) under a cgroup parent
//! of its own, and removes all of it on drop, also when it fails.

#![allow(clippy::unwrap_used)]

mod support;

use support::TestRuntime;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodelet_cri::runtime::{
    ContainerConfig, EXEC_OUTPUT_LIMIT, Runtime, RuntimeError, SecurityConfig,
};

const BUSYBOX: &str = "nodelet.local/busybox:1.35";

/// One test's runtime (see `support::TestRuntime`) holding a running busybox
/// container; everything is removed on drop.
struct TestPod {
    rt: TestRuntime,
    container: String,
}

impl TestPod {
    /// A running `sleep` container in a host-network sandbox, with `FOO=bar`, working
    /// directory `/tmp` and user 65534.
    async fn start() -> Self {
        let mut pod = TestPod {
            rt: TestRuntime::new("exec").await,
            container: String::new(),
        };
        let archive = busybox_archive(pod.rt.dir.path());
        pod.rt
            .runtime
            .containerd()
            .import_oci_archive(&archive)
            .await
            .expect("import busybox");
        let image = pod
            .rt
            .runtime
            .image(BUSYBOX)
            .await
            .expect("image lookup")
            .expect("busybox imported");
        let sandbox = pod.rt.host_network_sandbox("exec").await;
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
            .rt
            .runtime
            .create_container(&sandbox, &config, &image)
            .await
            .expect("create container");
        pod.rt
            .runtime
            .start_container(&pod.container)
            .await
            .expect("start container");
        pod
    }

    fn exec_dir(&self) -> PathBuf {
        self.rt.dir.path().join("runtime/exec")
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
            .rt
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
        pod.rt.runtime.exec_sync(
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
        .rt
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
    pod.rt
        .runtime
        .stop_container(&pod.container, Duration::from_secs(2))
        .await
        .expect("stop");
    let stopped = tokio::time::timeout(limit, pod.exec(&["true"], Duration::from_secs(5)))
        .await
        .expect("returns");
    assert!(stopped.is_err(), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_created_by_this_process_starts_without_lookups() {
    let rt = TestRuntime::new("startcalls").await;
    let archive = busybox_archive(rt.dir.path());
    let containerd = rt.runtime.containerd();
    containerd
        .import_oci_archive(&archive)
        .await
        .expect("import busybox");
    let image = rt
        .runtime
        .image(BUSYBOX)
        .await
        .expect("image lookup")
        .expect("busybox imported");
    let sandbox = rt.host_network_sandbox("startcalls").await;
    let config = ContainerConfig {
        name: "main".into(),
        attempt: 0,
        image: BUSYBOX.into(),
        command: vec!["sleep".into(), "3600".into()],
        args: vec![],
        working_dir: None,
        env: vec![],
        mounts: vec![],
        log_path: PathBuf::from("main/0.log"),
        security: SecurityConfig::default(),
        resources: Default::default(),
    };
    let id = rt
        .runtime
        .create_container(&sandbox, &config, &image)
        .await
        .expect("create container");
    let before = containerd.calls();
    rt.runtime.start_container(&id).await.expect("start");
    let after = containerd.calls();
    let made: std::collections::BTreeMap<String, u64> = after
        .iter()
        .map(|(m, n)| (m.clone(), n - before.get(m).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    // The task made and started and the start time recorded: no record, task or
    // mounts read back for a container this process just created.
    assert_eq!(
        made,
        std::collections::BTreeMap::from([
            (
                "containerd.services.containers.v1.Containers/Update".to_owned(),
                1
            ),
            ("containerd.services.tasks.v1.Tasks/Create".to_owned(), 1),
            ("containerd.services.tasks.v1.Tasks/Start".to_owned(), 1),
        ])
    );
    let listed = rt.runtime.list_containers(None).await.expect("list");
    let c = listed.iter().find(|c| c.id == id).expect("listed");
    assert_eq!(c.state, nodelet_cri::runtime::ContainerState::Running);
    assert!(c.started_at.is_some(), "start time recorded");
    // A pod's own listing asks for its tasks one by one: `ListTasks` would have
    // containerd ask every shim of the namespace for every task's state.
    let before = containerd.calls();
    let mine = rt
        .runtime
        .list_containers(Some(&sandbox.pod.uid))
        .await
        .expect("list the pod's containers");
    let sandboxes = rt
        .runtime
        .list_sandboxes(Some(&sandbox.pod.uid))
        .await
        .expect("list the pod's sandbox");
    let after = containerd.calls();
    let task_calls = |method: &str| {
        let m = format!("containerd.services.tasks.v1.Tasks/{method}");
        after.get(&m).copied().unwrap_or(0) - before.get(&m).copied().unwrap_or(0)
    };
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].state, nodelet_cri::runtime::ContainerState::Running);
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    assert_eq!(task_calls("List"), 0);
    assert_eq!(task_calls("Get"), 2, "one per record");
    // A second start takes the long way and finds the task running.
    rt.runtime.start_container(&id).await.expect("start again");
    rt.runtime
        .stop_container(&id, Duration::from_secs(1))
        .await
        .expect("stop");
}
