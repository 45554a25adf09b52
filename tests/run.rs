//! End-to-end tests of `nodelet run FILE`: the binary runs a pod through real
//! containerd, runc and CNI plugins in the test's world (see `support`), reports how
//! it ended through its exit code, and leaves nothing behind.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::PodStatus;
use nodelet_cri::runtime::Runtime as _;
use support::{BUSYBOX, World};

/// The world's agent flags without the sources and ports `nodelet run` does not take.
fn run_args(w: &World) -> Vec<String> {
    let mut args = Vec::new();
    let mut flags = w.agent_args().into_iter();
    while let Some(flag) = flags.next() {
        if matches!(
            flag.as_str(),
            "--pod-manifest-path" | "--read-only-port" | "--healthz-port" | "--address"
        ) {
            flags.next();
            continue;
        }
        args.push(flag);
    }
    args
}

fn pod_file(w: &World, name: &str, body: &str) -> PathBuf {
    let path = w.dir.path().join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n{body}"
        ),
    )
    .unwrap();
    path
}

fn one_shot(w: &World, name: &str, script: &str) -> PathBuf {
    pod_file(
        w,
        name,
        &format!(
            "  restartPolicy: Never\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", {script:?}]\n"
        ),
    )
}

/// Runs `nodelet run FILE <extra>` in the world; `--timeout` bounds it.
async fn nodelet_run(w: &World, file: &PathBuf, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodelet"));
    cmd.arg("run")
        .arg(file)
        .args(["--timeout", "120s"])
        .args(extra)
        .args(run_args(w));
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run nodelet"))
        .await
        .unwrap();
    eprintln!(
        "--- nodelet run {extra:?}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn assert_nothing_left(w: &World) {
    let rt = w.runtime().await;
    assert_eq!(
        rt.list_containers(None).await.unwrap().len(),
        0,
        "containers left"
    );
    assert_eq!(
        rt.list_sandboxes(None).await.unwrap().len(),
        0,
        "sandboxes left"
    );
    assert!(w.allocated_ips().is_empty(), "pod IPs left allocated");
}

/// A pod whose container exits 0 makes `nodelet run` exit 0 after printing its
/// status changes and, with `--logs`, its output; then it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_pod_exits_zero_with_logs() {
    let w = World::new().await;
    let file = one_shot(&w, "hello", "echo hello; echo bye >&2");
    let out = nodelet_run(&w, &file, &["--logs"]).await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pod = format!("hello-{}", w.node);
    assert!(stdout.lines().any(|l| l == "[main] hello"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "[main] bye"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.ends_with(&format!(" {pod} Succeeded Completed"))),
        "{stdout}"
    );
    assert_nothing_left(&w).await;
}

/// `--logs` follows the container's log across the driver's rotations: every line,
/// in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_across_rotation() {
    let w = World::new().await;
    // ~75 KB/s against 64 KiB files: a rotation every second or so, several polls
    // apart.
    let script = "pad=$(head -c 100 /dev/zero | tr '\\0' x); i=1; \
                  while [ $i -le 4000 ]; do echo \"n $i $pad\"; \
                  if [ $((i % 50)) -eq 0 ]; then sleep 0.1; fi; i=$((i+1)); done";
    let file = one_shot(&w, "rotating", script);
    let out = nodelet_run(
        &w,
        &file,
        &[
            "--logs",
            "--container-log-max-size",
            "64Ki",
            "--container-log-max-files",
            "2",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<u32> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("[main] n ")?.split(' ').next()?.parse().ok())
        .collect();
    assert!(numbers.iter().copied().eq(1..=4000), "{numbers:?}");
    assert_nothing_left(&w).await;
}

/// A container exiting 2 fails the pod, and the run exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pod_exits_one() {
    let w = World::new().await;
    let file = one_shot(&w, "fails", "exit 2");
    let out = nodelet_run(&w, &file, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.ends_with(&format!(" fails-{} Failed Error", w.node))),
        "{stdout}"
    );
    assert_nothing_left(&w).await;
}

/// `--until ready` returns once the pod is Running and Ready, and tears it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_ready_returns_and_tears_down() {
    let w = World::new().await;
    let file = pod_file(
        &w,
        "sleeper",
        &format!(
            "  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [\"sleep\", \"3600\"]\n"
        ),
    );
    let out = nodelet_run(&w, &file, &["--until", "ready"]).await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.ends_with(&format!(" sleeper-{} Running Running", w.node))),
        "{stdout}"
    );
    assert_nothing_left(&w).await;
}

/// `--output json` prints the final PodStatus, and only that, on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_is_the_final_pod_status() {
    let w = World::new().await;
    let file = one_shot(&w, "json", "echo hi");
    let out = nodelet_run(&w, &file, &["--output", "json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let status: PodStatus = serde_json::from_slice(&out.stdout).expect("a PodStatus");
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let cs = status.container_statuses.expect("container statuses");
    assert_eq!(cs.len(), 1);
    let terminated = cs[0].state.as_ref().and_then(|s| s.terminated.as_ref());
    assert_eq!(terminated.map(|t| t.exit_code), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(" Succeeded Completed"),
        "progress goes to stderr"
    );
}

/// An invalid FILE is reported like `nodelet validate` and nothing runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_exits_one_with_every_error() {
    let w = World::new().await;
    let file = pod_file(
        &w,
        "bad",
        "  containers:\n  - name: main\n    image: ''\n  - name: main\n    image: x\n",
    );
    let out = nodelet_run(&w, &file, &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    assert!(
        stderr.contains(&format!(
            "{f}: document 0: spec.containers[0].image: Required value"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{f}: document 0: spec.containers[1].name: Duplicate value: \"main\""
        )),
        "{stderr}"
    );
    assert_nothing_left(&w).await;
}

/// SIGINT (Ctrl-C) ends the run with 130 and still tears the pod down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_tears_down() {
    use std::io::BufRead as _;
    let w = World::new().await;
    let file = pod_file(
        &w,
        "sleeper",
        &format!(
            "  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [\"sleep\", \"3600\"]\n"
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .arg("run")
        .arg(&file)
        .args(["--timeout", "120s"])
        .args(run_args(&w))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nodelet run");
    let stdout = child.stdout.take().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            if line.unwrap().ends_with(" Running Running") {
                break;
            }
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        for _ in lines {}
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(130));
    assert_nothing_left(&w).await;
}
