//! End-to-end tests of probes (issue 3): readiness drives Ready, liveness restarts,
//! startup gates — real HTTP, TCP and exec probes against real containers.

mod support;

use support::{BUSYBOX, World, condition, container_status, phase};

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
