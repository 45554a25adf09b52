//! End-to-end tests of probes (issue 3): readiness drives Ready, liveness restarts,
//! startup gates — real HTTP, TCP, exec and gRPC probes against real containers
//! (gRPC against `nodelet-agnhost grpc-health-checking` in the agnhost test image).

mod support;

use support::{AGNHOST, BUSYBOX, World, agnhost_image, condition, container_status, phase};

/// A pod running `nodelet-agnhost grpc-health-checking` on port 5000 for service
/// `svc`, its status file in the hostPath `dir` (mounted at `/status`), with `probes`
/// (YAML lines at container level).
fn agnhost_pod(name: &str, dir: &std::path::Path, probes: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: grpc
    image: {AGNHOST}
    args: [grpc-health-checking, --port, "5000", --service, svc, --status-file, /status/status]
    ports: [{{name: grpc, containerPort: 5000}}]
    volumeMounts: [{{name: status, mountPath: /status}}]
{probes}
  volumes: [{{name: status, hostPath: {{path: {dir}, type: DirectoryOrCreate}}}}]
"#,
        dir = dir.display()
    )
}

/// A gRPC readiness probe (grpc.health.v1 through the pod IP): Ready while the server
/// answers SERVING for the probe's service, not Ready once it answers NOT_SERVING,
/// and the container is not restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_readiness_flips_ready() {
    let mut w = World::new().await;
    w.import_image(&agnhost_image(), AGNHOST).await;
    let dir = w.dir.path().join("grpc-ready");
    w.write_manifest(
        "grpc-ready.yaml",
        &agnhost_pod(
            "grpc-ready",
            &dir,
            "    readinessProbe:\n      grpc: {port: 5000, service: svc}\n      periodSeconds: 1\n      failureThreshold: 1",
        ),
    );
    w.start_agent().await;
    w.wait_pod("grpc-ready", "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    std::fs::write(dir.join("status"), "NOT_SERVING").expect("flip the status");
    let unready = w
        .wait_pod("grpc-ready", "not Ready after NOT_SERVING", |p| {
            condition(p, "Ready").as_deref() == Some("False")
        })
        .await;
    let cs = container_status(&unready, "grpc").expect("status");
    assert!(!cs.ready);
    assert_eq!(cs.restart_count, 0, "readiness never restarts");
    assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    std::fs::write(dir.join("status"), "SERVING").expect("flip the status back");
    w.wait_pod("grpc-ready", "Ready again after SERVING", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    w.stop_agent();
}

/// A gRPC liveness probe that starts failing (NOT_SERVING) gets the container killed
/// and restarted; the restarted container passes again once the server serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_liveness_failure_restarts() {
    let mut w = World::new().await;
    w.import_image(&agnhost_image(), AGNHOST).await;
    let dir = w.dir.path().join("grpc-live");
    w.write_manifest(
        "grpc-live.yaml",
        &agnhost_pod(
            "grpc-live",
            &dir,
            "    livenessProbe:\n      grpc: {port: 5000}\n      periodSeconds: 1\n      failureThreshold: 2\n    readinessProbe:\n      grpc: {port: 5000}\n      periodSeconds: 1",
        ),
    );
    w.start_agent().await;
    let ready = w
        .wait_pod("grpc-live", "Ready", |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    assert_eq!(
        container_status(&ready, "grpc").map(|c| c.restart_count),
        Some(0),
        "no restart while SERVING"
    );
    std::fs::write(dir.join("status"), "NOT_SERVING").expect("flip the status");
    let pod = w
        .wait_pod("grpc-live", "restarted by its gRPC liveness probe", |p| {
            container_status(p, "grpc").is_some_and(|c| c.restart_count >= 1)
        })
        .await;
    let last =
        container_status(&pod, "grpc").and_then(|c| c.last_state.as_ref()?.terminated.clone());
    assert!(
        last.is_some(),
        "lastState.terminated of the killed container"
    );
    std::fs::write(dir.join("status"), "SERVING").expect("flip the status back");
    w.wait_pod("grpc-live", "Ready again after the restart", |p| {
        condition(p, "Ready").as_deref() == Some("True")
            && container_status(p, "grpc").is_some_and(|c| c.restart_count >= 1)
    })
    .await;
    w.stop_agent();
}

/// An HTTP readiness probe: the pod becomes Ready when the page appears and stops
/// being Ready when it goes, while the container keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_ready() {
    let mut w = World::new().await;
    w.write_manifest(
        "ready.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: ready}}
spec:
  containers:
  - name: web
    image: {BUSYBOX}
    ports: [{{name: http, containerPort: 8080}}]
    command: [sh, -c, "mkdir -p /www; httpd -f -p 8080 -h /www & sleep 2; echo ok > /www/ready.html; sleep 4; rm /www/ready.html; exec sleep 3600"]
    readinessProbe:
      httpGet: {{path: /ready.html, port: http}}
      periodSeconds: 1
      failureThreshold: 1
"#
        ),
    );
    w.start_agent().await;
    let first = w
        .wait_pod("ready", "Running", |p| phase(p) == "Running")
        .await;
    assert_eq!(
        condition(&first, "Ready").as_deref(),
        Some("False"),
        "not ready before the probe passes"
    );
    w.wait_pod("ready", "Ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let unready = w
        .wait_pod("ready", "not Ready again", |p| {
            condition(p, "Ready").as_deref() == Some("False")
        })
        .await;
    let cs = container_status(&unready, "web").expect("status");
    assert!(!cs.ready);
    assert_eq!(cs.restart_count, 0, "readiness never restarts");
    assert!(cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    w.stop_agent();
}

/// An exec liveness probe that starts failing gets the container killed and
/// restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_failure_restarts() {
    let mut w = World::new().await;
    w.write_manifest(
        "live.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: live}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 3600"]
    livenessProbe:
      exec: {{command: [cat, /tmp/healthy]}}
      periodSeconds: 1
      failureThreshold: 2
      terminationGracePeriodSeconds: 1
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("live", "restarted by its liveness probe", |p| {
            container_status(p, "main").is_some_and(|c| c.restart_count >= 1)
        })
        .await;
    let last = container_status(&pod, "main")
        .and_then(|c| c.last_state.as_ref()?.terminated.clone())
        .expect("lastState.terminated");
    assert_ne!(last.exit_code, 0, "killed, not exited by itself");
    w.stop_agent();
}

/// A TCP startup probe gates readiness: until the port opens the container is not
/// `started`, and the pod is not Ready even without a readiness probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_probe_gates() {
    let mut w = World::new().await;
    w.write_manifest(
        "startup.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: startup}}
spec:
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "sleep 3; mkdir -p /www; exec httpd -f -p 9090 -h /www"]
    startupProbe:
      tcpSocket: {{port: 9090}}
      periodSeconds: 1
      failureThreshold: 30
"#
        ),
    );
    w.start_agent().await;
    let early = w
        .wait_pod("startup", "Running", |p| phase(p) == "Running")
        .await;
    let cs = container_status(&early, "main").expect("status");
    assert_eq!(cs.started, Some(false));
    assert!(!cs.ready);
    let later = w
        .wait_pod("startup", "started and Ready", |p| {
            condition(p, "Ready").as_deref() == Some("True")
        })
        .await;
    assert_eq!(
        container_status(&later, "main").and_then(|c| c.started),
        Some(true)
    );
    w.stop_agent();
}
