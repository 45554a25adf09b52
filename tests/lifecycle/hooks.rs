//! Lifecycle hooks end to end: postStart and preStop (exec, httpGet, sleep), the
//! image's stop signal, and hooks that fail — part of the `lifecycle` test binary.

use std::time::Duration;

use nodelet_cri::image::ImageRuntimeConfig;

use crate::support::{BUSYBOX, World, busybox_image, condition, container_status, phase, wait_for};

/// postStart runs after the container starts; preStop runs before SIGTERM when the
/// pod goes (both seen in a host directory); a failing postStart kills the container,
/// which is then restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_hooks() {
    let mut w = World::new().await;
    let shared = w.dir.path().join("shared");
    w.write_manifest(
        "hooks.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hooks}}
spec:
  terminationGracePeriodSeconds: 10
  volumes: [{{name: shared, hostPath: {{path: {shared}, type: DirectoryOrCreate}}}}]
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "trap 'echo TERM >> /shared/log; exit 0' TERM; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, "echo postStart >> /shared/log"]}}}}
      preStop: {{exec: {{command: [sh, -c, "echo preStop >> /shared/log"]}}}}
"#,
            shared = shared.display()
        ),
    );
    w.write_manifest(
        "badhook.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: badhook}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sleep, "3600"]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, "exit 3"]}}}}
"#
        ),
    );
    w.start_agent().await;
    w.wait_pod("hooks", "Running", |p| phase(p) == "Running")
        .await;
    let log = shared.join("log");
    wait_for("the postStart hook's line", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains("postStart").then_some(()) }
    })
    .await;
    let bad = w
        .wait_pod("badhook", "restarted after its postStart failed", |p| {
            container_status(p, "main").is_some_and(|c| c.restart_count >= 1)
        })
        .await;
    assert!(
        container_status(&bad, "main")
            .and_then(|c| c.last_state.as_ref()?.terminated.clone())
            .is_some()
    );

    std::fs::remove_file(w.manifests.join("hooks.yaml")).expect("remove manifest");
    wait_for("the pod gone", Duration::from_secs(30), || {
        let w = &w;
        async move { w.pod("hooks").await.is_none().then_some(()) }
    })
    .await;
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        ["postStart", "preStop", "TERM"],
        "preStop runs before SIGTERM"
    );
    w.stop_agent();
}

/// The lines of `path` (none if it doesn't exist).
fn lines_of(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Deletes the pod's manifest and waits until the agent no longer reports the pod.
async fn delete_and_wait(w: &World, file: &str, name: &str) {
    std::fs::remove_file(w.manifests.join(file)).expect("remove manifest");
    wait_for("the pod gone", Duration::from_secs(60), || async move {
        w.pod(name).await.is_none().then_some(())
    })
    .await;
}

/// An image whose config says `StopSignal: SIGUSR1`: deleting the pod stops the
/// container with SIGUSR1, not SIGTERM (the container's traps write which one came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_stop_signal() {
    const IMAGE: &str = "nodelet.local/busybox-usr1:test";
    let mut w = World::new().await;
    let image = busybox_image(ImageRuntimeConfig {
        cmd: vec!["sh".into()],
        env: vec!["PATH=/bin".into()],
        stop_signal: Some("SIGUSR1".into()),
        ..ImageRuntimeConfig::default()
    });
    w.import_image(&image, IMAGE).await;
    let shared = w.dir.path().join("shared");
    w.write_manifest(
        "usr1.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: usr1}}
spec:
  terminationGracePeriodSeconds: 10
  volumes: [{{name: shared, hostPath: {{path: {shared}, type: DirectoryOrCreate}}}}]
  containers:
  - name: main
    image: {IMAGE}
    command: [sh, -c, "trap 'echo USR1 >> /shared/log; exit 0' USR1; trap 'echo TERM >> /shared/log; exit 0' TERM; echo up >> /shared/log; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
"#,
            shared = shared.display()
        ),
    );
    w.start_agent().await;
    let log = shared.join("log");
    wait_for("the container up", Duration::from_secs(30), || {
        let up = lines_of(&log).contains(&"up".to_owned());
        async move { up.then_some(()) }
    })
    .await;
    delete_and_wait(&w, "usr1.yaml", "usr1").await;
    assert_eq!(
        lines_of(&log),
        ["up", "USR1"],
        "stopped by the image's StopSignal"
    );
    w.stop_agent();
}

/// Writes a busybox httpd CGI script at `<www>/cgi-bin/<name>` that appends `line` to
/// `/shared/log` (in the container) and answers 200.
fn cgi_marker(www: &std::path::Path, name: &str, line: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = www.join("cgi-bin");
    std::fs::create_dir_all(&dir).expect("mkdir cgi-bin");
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho {line} >> /shared/log\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'\n"),
    )
    .expect("write cgi script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `httpGet` and `sleep` hooks: a postStart httpGet reaches its server (a handler
/// pod, as upstream's e2e test does: the container's own server may not listen yet
/// when postStart fires); a preStop httpGet to the container's own busybox `httpd`
/// runs before its SIGTERM; a preStop `sleep` delays its container's SIGTERM, so a
/// container without hooks, stopped at the same time, gets SIGTERM first. Each
/// request and signal appends a line to a shared host file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_sleep_hooks() {
    let mut w = World::new().await;
    let shared = w.dir.path().join("shared");
    let www = shared.join("www");
    cgi_marker(&www, "poststart", "postStart-http");
    cgi_marker(&www, "prestop", "preStop-http");
    let volume = format!(
        "volumes: [{{name: shared, hostPath: {{path: {}, type: Directory}}}}]",
        shared.display()
    );
    w.write_manifest(
        "handler.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: handler}}
spec:
  {volume}
  containers:
  - name: httpd
    image: {BUSYBOX}
    command: [httpd, -f, -p, "8080", -h, /shared/www]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    readinessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
"#
        ),
    );
    w.start_agent().await;
    let handler = w
        .wait_pod("handler", "Ready", |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    let handler_ip = handler
        .status
        .and_then(|s| s.pod_ip)
        .expect("handler pod IP");

    // Each container traps TERM and writes "<name> TERM".
    let trap = |name: &str| {
        format!(
            "trap 'echo {name} TERM >> /shared/log; exit 0' TERM; while true; do sleep 0.1; done"
        )
    };
    w.write_manifest(
        "hooks.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hooks}}
spec:
  terminationGracePeriodSeconds: 20
  {volume}
  containers:
  - name: web
    image: {BUSYBOX}
    command: [sh, -c, "httpd -p 8080 -h /shared/www; {web}"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    lifecycle:
      postStart: {{httpGet: {{host: "{handler_ip}", port: 8080, path: /cgi-bin/poststart}}}}
      preStop: {{httpGet: {{port: 8080, path: /cgi-bin/prestop}}}}
  - name: sleeper
    image: {BUSYBOX}
    command: [sh, -c, "{sleeper}"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    lifecycle:
      preStop: {{sleep: {{seconds: 3}}}}
  - name: plain
    image: {BUSYBOX}
    command: [sh, -c, "{plain}"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
"#,
            web = trap("web"),
            sleeper = trap("sleeper"),
            plain = trap("plain"),
        ),
    );
    let log = shared.join("log");
    let pod = w
        .wait_pod("hooks", "Running with every container started", |p| {
            phase(p) == "Running"
                && ["web", "sleeper", "plain"]
                    .iter()
                    .all(|c| container_status(p, c).is_some_and(|s| s.started == Some(true)))
        })
        .await;
    assert_eq!(
        container_status(&pod, "web").map(|c| c.restart_count),
        Some(0),
        "the postStart hook passed"
    );
    assert_eq!(lines_of(&log), ["postStart-http"]);

    delete_and_wait(&w, "hooks.yaml", "hooks").await;
    let lines = lines_of(&log);
    let at = |l: &str| {
        lines
            .iter()
            .position(|x| x == l)
            .unwrap_or_else(|| panic!("{l:?} missing from {lines:?}"))
    };
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(
        at("preStop-http") < at("web TERM"),
        "preStop httpGet before SIGTERM: {lines:?}"
    );
    assert!(
        at("plain TERM") < at("sleeper TERM"),
        "preStop sleep delays SIGTERM: {lines:?}"
    );
    w.stop_agent();
}
