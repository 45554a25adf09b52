//! End-to-end tests of container log rotation and retention with the `nodelet` binary
//! on real containerd and runc (issue 17's "container logs never rotate", issue 13's
//! `previous`): a container writing 200 MB as fast as it can keeps its log directory
//! under 60 MB (`--container-log-max-size` 10Mi × `--container-log-max-files` 5, the
//! older rotated files gzip-compressed), and the test prints the throughput the log
//! driver sustained; a follower reading while the driver rotates sees every line in
//! order; after a restart the previous instance and its log stay (and only it).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use nodelet_cri::logs::read::{ReadOptions, read_logs};
use support::{World, container_status, wait_for};

/// The pod's container log directory `<pod-logs-dir>/default_<name>_<uid>/<container>`.
fn container_log_dir(w: &World, pod: &Pod, container: &str) -> PathBuf {
    w.logs
        .join(format!(
            "default_{}_{}",
            pod.metadata.name.as_deref().unwrap_or(""),
            pod.metadata.uid.as_deref().unwrap_or("")
        ))
        .join(container)
}

/// The files in `dir` and their total size.
fn dir_files(dir: &Path) -> (Vec<String>, u64) {
    let mut names = Vec::new();
    let mut total = 0;
    for e in std::fs::read_dir(dir)
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        total += e.metadata().map(|m| m.len()).unwrap_or(0);
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    (names, total)
}

async fn running_pod(w: &World, name: &str) -> Pod {
    w.wait_pod(name, "running", |p| {
        container_status(p, "main")
            .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
    })
    .await
}

const MB: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200mb_writer_keeps_its_log_dir_under_60mb() {
    let mut w = World::new().await;
    w.extra_args.extend(
        [
            "--container-log-max-size",
            "10Mi",
            "--container-log-max-files",
            "5",
        ]
        .map(String::from),
    );
    // 79 characters and a newline per line; `head -c` stops at exactly 200 MB.
    w.write_manifest(
        "flood.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: flood}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {}
    command: [sh, -c, 'sleep 1; yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456 | head -c 200000000; echo; echo FLOOD-DONE; exec sleep 3600']
"#,
            support::BUSYBOX
        ),
    );
    w.start_agent().await;
    let pod = running_pod(&w, "flood").await;
    let dir = container_log_dir(&w, &pod, "main");
    let current = dir.join("0.log");
    let mut peak = 0u64;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let finished = loop {
        assert!(
            Instant::now() < deadline,
            "the writer did not finish in 300 s"
        );
        let (_, total) = dir_files(&dir);
        peak = peak.max(total);
        if started.is_none() && total > 0 {
            started = Some(Instant::now());
        }
        let tail = std::fs::read(&current).unwrap_or_default();
        let tail = &tail[tail.len().saturating_sub(4096)..];
        if String::from_utf8_lossy(tail).contains("FLOOD-DONE") {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (files, total) = dir_files(&dir);
    let secs = finished
        .duration_since(started.unwrap_or(finished))
        .as_secs_f64()
        .max(0.001);
    println!(
        "log driver with rotation (10Mi x 5): 200 MB of container output in {secs:.2} s = {:.1} MB/s of output ({:.1} MB/s of CRI log lines); directory peak {:.1} MB, now {:.1} MB: {files:?}",
        200.0 / secs,
        200.0 / secs * (80.0 + 36.0) / 80.0,
        peak as f64 / MB as f64,
        total as f64 / MB as f64,
    );
    assert!(peak < 60 * MB, "peak {peak} bytes");
    assert!(files.len() <= 5, "{files:?}");
    assert!(files.contains(&"0.log".to_owned()), "{files:?}");
    let gz = files.iter().filter(|f| f.ends_with(".gz")).count();
    assert_eq!(
        gz,
        files.len() - 2,
        "all rotated files but the newest are compressed: {files:?}"
    );
    assert!(
        files
            .iter()
            .all(|f| f == "0.log" || f.starts_with("0.log.20")),
        "{files:?}"
    );
    w.stop_agent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_every_line_in_order_across_rotations() {
    let mut w = World::new().await;
    w.extra_args.extend(
        [
            "--container-log-max-size",
            "512Ki",
            "--container-log-max-files",
            "3",
        ]
        .map(String::from),
    );
    const N: u32 = 60_000;
    // About 200 KB/s: a rotation every 2-3 s. A follower keeps up while the writer
    // rotates at most `max-files - 2` times between two of its looks (100 ms apart);
    // at the defaults (10Mi x 5) that is beyond the driver's throughput.
    w.write_manifest(
        "counter.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: counter}}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: main
    image: {}
    command: [sh, -c, 'sleep 2; i=1; while [ $i -le {N} ]; do echo "line $i of a counter that rotates"; if [ $((i % 500)) -eq 0 ]; then sleep 0.1; fi; i=$((i+1)); done']
"#,
            support::BUSYBOX
        ),
    );
    w.start_agent().await;
    let pod = running_pod(&w, "counter").await;
    let log = container_log_dir(&w, &pod, "main").join("0.log");
    wait_for("the log file", Duration::from_secs(20), || {
        let exists = log.exists();
        async move { exists.then_some(()) }
    })
    .await;
    let runtime = Arc::new(w.runtime().await);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let running: nodelet_cri::logs::read::Running = Arc::new(move || {
        let (runtime, uid) = (Arc::clone(&runtime), uid.clone());
        Box::pin(async move {
            use nodelet_cri::runtime::{ContainerState, Runtime};
            runtime
                .list_containers(Some(&uid))
                .await
                .map(|cs| cs.iter().any(|c| c.state == ContainerState::Running))
                .unwrap_or(false)
        })
    });
    let opts = ReadOptions {
        follow: true,
        ..ReadOptions::default()
    };
    let mut stream = read_logs(log.clone(), opts, running).await.expect("open");
    let mut text = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(chunk) = stream.next().await {
            text.extend(chunk.expect("read"));
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the follow did not end after the container exited"
    );
    let text = String::from_utf8(text).expect("utf-8");
    let numbers: Vec<u32> = text
        .lines()
        .map(|l| {
            l.strip_prefix("line ")
                .and_then(|l| l.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {l:?}"))
        })
        .collect();
    assert_eq!(numbers.len(), N as usize, "every line, once");
    assert!(numbers.iter().copied().eq(1..=N), "in order");
    let (files, _) = dir_files(log.parent().expect("dir"));
    assert!(files.len() >= 3, "the driver rotated: {files:?}");
    w.stop_agent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_instance_and_its_log_stay_after_a_restart() {
    let mut w = World::new().await;
    w.write_manifest(
        "crasher.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {}
    command: [sh, -c, 'echo "run $(cat /proc/sys/kernel/random/uuid)"; sleep 1; exit 3']
"#,
            support::BUSYBOX
        ),
    );
    w.start_agent().await;
    // The first restart is immediate, the second after 10 s of back-off.
    let pod = w
        .wait_pod("crasher", "restarted twice", |p| {
            container_status(p, "main").is_some_and(|c| c.restart_count >= 2)
        })
        .await;
    let status = container_status(&pod, "main").expect("status");
    let dir = container_log_dir(&w, &pod, "main");
    let n = status.restart_count;
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 3);
    let prev_id = last
        .container_id
        .as_deref()
        .and_then(|id| id.strip_prefix("containerd://"))
        .expect("lastState has the previous instance's ID");
    // The dead instance is still in the runtime, with its log; older ones are gone.
    let runtime = w.runtime().await;
    use nodelet_cri::runtime::Runtime;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let containers = runtime.list_containers(Some(&uid)).await.expect("list");
    let prev = containers
        .iter()
        .find(|c| c.id == prev_id)
        .expect("the previous instance is kept");
    assert_eq!(prev.log_path, dir.join(format!("{}.log", n - 1)));
    let text = std::fs::read_to_string(&prev.log_path).expect("previous log");
    assert!(text.contains("stdout F run "), "{text}");
    assert_eq!(containers.len(), 2, "one dead and one current instance");
    let (files, _) = dir_files(&dir);
    assert_eq!(files, [format!("{}.log", n - 1), format!("{n}.log")]);
    w.stop_agent();
}
