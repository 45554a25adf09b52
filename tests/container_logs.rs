//! End-to-end tests of what issue 16 found a user meets in container logs, with the
//! `nodelet` binary on real containerd and runc: a pod on an image whose config has no
//! `Env` runs `sh` with containerd's default `PATH`; while it runs, its
//! `--container-logs-dir` symlink (`<pod>_<namespace>_<container>-<id>.log`, the
//! test's own directory, never the host's `/var/log/containers`) resolves to the
//! instance's log, and it goes with the pod; a container whose command doesn't exist
//! reports the reason in its status and leaves its log without runc's error.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use nodelet_cri::image::ImageRuntimeConfig;
use support::{World, busybox_image, container_status, log_lines, wait_for};

const NOENV: &str = "nodelet.local/busybox-noenv:test";

/// The pod's log directory `<pod-logs-dir>/default_<name>_<uid>`.
fn pod_log_dir(w: &World, pod: &k8s_openapi::api::core::v1::Pod) -> PathBuf {
    w.logs.join(format!(
        "default_{}_{}",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    ))
}

/// The symlinks in the test's container logs directory.
fn symlinks(w: &World) -> Vec<PathBuf> {
    let mut links: Vec<PathBuf> = std::fs::read_dir(&w.container_logs)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    links.sort();
    links
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_without_env_runs_sh_and_its_log_is_linked_while_it_runs() {
    let mut w = World::new().await;
    // No `env` in the image config: no PATH of its own.
    let image = busybox_image(ImageRuntimeConfig {
        cmd: vec!["sh".into()],
        ..ImageRuntimeConfig::default()
    });
    w.import_image(&image, NOENV).await;
    w.write_manifest(
        "noenv.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: noenv}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {NOENV}
    command: [sh, -c, 'echo "$PATH"; exec sleep 3600']
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("noenv", "running", |p| {
            container_status(p, "main")
                .is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
        .await;
    let log = pod_log_dir(&w, &pod).join("main/0.log");
    let lines = wait_for("the PATH in the log", Duration::from_secs(20), || {
        let lines = log_lines(&log);
        async move { (!lines.is_empty()).then_some(lines) }
    })
    .await;
    assert_eq!(
        lines,
        [(
            "stdout".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()
        )]
    );

    // The link names the pod, namespace, container and container ID, and resolves
    // to the running instance's log.
    let status = container_status(&pod, "main").expect("status");
    let id = status
        .container_id
        .as_deref()
        .and_then(|id| id.strip_prefix("containerd://"))
        .expect("a containerd:// container ID");
    let full_name = pod.metadata.name.clone().expect("name");
    let link = w
        .container_logs
        .join(format!("{full_name}_default_main-{id}.log"));
    assert_eq!(symlinks(&w), std::slice::from_ref(&link));
    assert_eq!(std::fs::read_link(&link).expect("read link"), log);
    assert_eq!(
        std::fs::read_to_string(&link).expect("read through the link"),
        std::fs::read_to_string(&log).expect("read the log")
    );

    // Gone with the pod.
    std::fs::remove_file(w.manifests.join("noenv.yaml")).expect("remove manifest");
    wait_for("the pod gone", Duration::from_secs(60), || async {
        w.pod("noenv").await.is_none().then_some(())
    })
    .await;
    wait_for("the link gone", Duration::from_secs(30), || {
        let links = symlinks(&w);
        async move { links.is_empty().then_some(()) }
    })
    .await;
    // And the pod's log directory, as upstream's container GC removes it.
    let dir = pod_log_dir(&w, &pod);
    wait_for(
        "the pod log directory gone",
        Duration::from_secs(60),
        || {
            let gone = !dir.exists();
            async move { gone.then_some(()) }
        },
    )
    .await;
    w.stop_agent();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_reports_the_reason_and_keeps_the_log_clean() {
    let mut w = World::new().await;
    w.write_manifest(
        "badcmd.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: badcmd}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: {}
    command: [/nonexistent]
"#,
            support::BUSYBOX
        ),
    );
    w.start_agent().await;
    w.wait_pod("badcmd", "the start failure in its status", |p| {
        container_status(p, "main").is_some_and(|c| {
            let state = c.state.as_ref();
            let waiting = state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|s| s.message.as_deref());
            let terminated = state
                .and_then(|s| s.terminated.as_ref())
                .and_then(|s| s.message.as_deref());
            waiting
                .or(terminated)
                .is_some_and(|m| m.contains("/nonexistent"))
        })
    })
    .await;
    // The failed instance (never restarted: restartPolicy Never) shows as
    // containerd's CRI plugin reports it.
    let pod = w
        .wait_pod("badcmd", "terminated with StartError", |p| {
            container_status(p, "main").is_some_and(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| {
                        t.reason.as_deref() == Some("StartError")
                            && t.exit_code == 128
                            && t.message
                                .as_deref()
                                .is_some_and(|m| m.contains("/nonexistent"))
                    })
            })
        })
        .await;
    let dir = pod_log_dir(&w, &pod).join("main");
    // Every attempt's log is empty (or absent): runc's error is in the status only.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for entry in std::fs::read_dir(&dir)
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let content = std::fs::read_to_string(entry.path()).unwrap_or_default();
        assert!(
            content.is_empty(),
            "{} has runtime errors in it: {content}",
            entry.path().display()
        );
    }
    assert!(
        symlinks(&w).is_empty(),
        "a container that never ran has no link"
    );
    w.stop_agent();
}
