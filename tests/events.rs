//! End-to-end: pod and container events (issues 3 and 6) as the read-only port serves
//! them (`GET /events`, `GET /api/v1/namespaces/{ns}/events`), with upstream's
//! reasons, messages, types and involved objects.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use support::events::{events, wait_event};
use support::{World, wait_for};

/// [`wait_event`] for the container at `field` (`spec.containers{main}`).
async fn wait_container_event(
    w: &World,
    pod: &str,
    reason: &str,
    field: &str,
    message: &str,
) -> Event {
    let full = format!("{pod}-{}", w.node);
    let what = format!("a {reason} event of {pod} {field}");
    wait_for(&what, Duration::from_secs(60), || {
        let full = full.clone();
        async move {
            events(w, "/api/v1/namespaces/default/events")
                .await
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some(full.as_str())
                        && e.reason.as_deref() == Some(reason)
                        && field_path(e) == field
                        && e.message.as_deref() == Some(message)
                })
        }
    })
    .await
}

fn field_path(e: &Event) -> &str {
    e.involved_object.field_path.as_deref().unwrap_or("")
}

#[tokio::test]
async fn a_running_pod_shows_pulled_created_and_started() {
    let mut w = World::new().await;
    w.start_agent().await;
    w.write_manifest(
        "web.yaml",
        r"
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  initContainers:
  - name: setup
    image: nodelet.local/busybox:1.35
    command: [sh, -c, 'true']
  containers:
  - name: main
    image: nodelet.local/busybox:1.35
    command: [sh, -c, 'sleep 3600']
",
    );
    let pulled = wait_event(&w, "web", "Pulled", |m| {
        m == r#"Container image "nodelet.local/busybox:1.35" already present on machine"#
    })
    .await;
    assert_eq!(pulled.type_.as_deref(), Some("Normal"));
    let created = wait_container_event(
        &w,
        "web",
        "Created",
        "spec.containers{main}",
        "Container created",
    )
    .await;
    assert_eq!(field_path(&created), "spec.containers{main}");
    assert_eq!(created.type_.as_deref(), Some("Normal"));
    let started = wait_container_event(
        &w,
        "web",
        "Started",
        "spec.containers{main}",
        "Container started",
    )
    .await;
    assert_eq!(field_path(&started), "spec.containers{main}");
    assert_eq!(started.involved_object.kind.as_deref(), Some("Pod"));
    assert_eq!(
        started.involved_object.namespace.as_deref(),
        Some("default")
    );
    assert!(started.involved_object.uid.is_some());
    let source = started.source.clone().expect("source");
    assert_eq!(source.component.as_deref(), Some("kubelet"));
    assert_eq!(source.host.as_deref(), Some(w.node.as_str()));
    assert_eq!(started.count, Some(1));
    assert!(started.first_timestamp.is_some() && started.last_timestamp.is_some());
    let init = wait_container_event(
        &w,
        "web",
        "Started",
        "spec.initContainers{setup}",
        "Container started",
    )
    .await;
    assert_eq!(field_path(&init), "spec.initContainers{setup}");

    // All namespaces: the same events; another namespace: none of them.
    let all = events(&w, "/events").await;
    assert!(
        all.iter()
            .any(|e| e.message.as_deref() == Some("Container started")
                && field_path(e) == "spec.containers{main}")
    );
    assert!(
        events(&w, "/api/v1/namespaces/kube-system/events")
            .await
            .is_empty()
    );

    // Removing the pod stops its container: Killing.
    std::fs::remove_file(w.manifests.join("web.yaml")).expect("remove manifest");
    let killing = wait_event(&w, "web", "Killing", |m| m == "Stopping container main").await;
    assert_eq!(killing.type_.as_deref(), Some("Normal"));
}

#[tokio::test]
async fn a_bad_image_shows_failed_and_back_off() {
    let mut w = World::new().await;
    w.start_agent().await;
    // Loopback port 1: the pull fails at once and nothing leaves the machine.
    let image = "127.0.0.1:1/nodelet/missing:1";
    w.write_manifest(
        "bad.yaml",
        &format!(
            r"
apiVersion: v1
kind: Pod
metadata:
  name: bad
spec:
  containers:
  - name: main
    image: {image}
"
        ),
    );
    let pulling = wait_event(&w, "bad", "Pulling", |m| {
        m == format!("Pulling image {image:?}")
    })
    .await;
    assert_eq!(pulling.type_.as_deref(), Some("Normal"));
    assert_eq!(field_path(&pulling), "spec.containers{main}");
    let prefix = format!("Failed to pull image {image:?}: ");
    let failed = wait_event(&w, "bad", "Failed", |m| m.starts_with(&prefix)).await;
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    let back_off = wait_event(&w, "bad", "BackOff", |m| {
        m == format!("Back-off pulling image {image:?}")
    })
    .await;
    assert_eq!(back_off.type_.as_deref(), Some("Normal"));
    // The back-off is seen again on later syncs: one event, counted.
    let again = wait_for(
        "the BackOff event counted",
        Duration::from_secs(30),
        || async {
            events(&w, "/events")
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("BackOff") && e.count.is_some_and(|c| c > 1))
        },
    )
    .await;
    assert!(again.last_timestamp >= again.first_timestamp);
    let backoffs = events(&w, "/events")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("BackOff"))
        .count();
    assert_eq!(
        backoffs, 1,
        "the same BackOff event is counted, not repeated"
    );
}

#[tokio::test]
async fn a_crashing_container_shows_back_off_and_a_failing_liveness_probe_unhealthy() {
    let mut w = World::new().await;
    w.start_agent().await;
    w.write_manifest(
        "crash.yaml",
        r"
apiVersion: v1
kind: Pod
metadata:
  name: crash
spec:
  containers:
  - name: crash
    image: nodelet.local/busybox:1.35
    command: [sh, -c, 'exit 1']
  - name: sick
    image: nodelet.local/busybox:1.35
    command: [sh, -c, 'sleep 3600']
    livenessProbe:
      exec:
        command: [sh, -c, 'echo not well; exit 1']
      periodSeconds: 1
      failureThreshold: 1
",
    );
    let pod = format!("crash-{}_default(", w.node);
    let back_off = wait_event(&w, "crash", "BackOff", |m| {
        m.starts_with("Back-off restarting failed container crash in pod ") && m.contains(&pod)
    })
    .await;
    assert_eq!(back_off.type_.as_deref(), Some("Warning"));
    assert_eq!(field_path(&back_off), "spec.containers{crash}");
    let unhealthy = wait_event(&w, "crash", "Unhealthy", |m| {
        m.starts_with("Liveness probe failed: ")
    })
    .await;
    assert_eq!(unhealthy.type_.as_deref(), Some("Warning"));
    assert_eq!(field_path(&unhealthy), "spec.containers{sick}");
    let killing = wait_event(&w, "crash", "Killing", |m| {
        m == "Container sick failed liveness probe, will be restarted"
    })
    .await;
    assert_eq!(field_path(&killing), "spec.containers{sick}");
}

#[tokio::test]
async fn failing_hooks_show_failed_post_start_and_pre_stop_hook() {
    let mut w = World::new().await;
    w.start_agent().await;
    w.write_manifest(
        "hooks.yaml",
        r"
apiVersion: v1
kind: Pod
metadata:
  name: hooks
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: post
    image: nodelet.local/busybox:1.35
    command: [sh, -c, 'sleep 3600']
    lifecycle:
      postStart: {exec: {command: [sh, -c, 'echo secret; exit 3']}}
  - name: pre
    image: nodelet.local/busybox:1.35
    command: [sh, -c, 'sleep 3600']
    lifecycle:
      preStop: {exec: {command: [sh, -c, 'echo secret; exit 4']}}
",
    );
    let post = wait_event(&w, "hooks", "FailedPostStartHook", |m| {
        m == "PostStartHook failed"
    })
    .await;
    assert_eq!(post.type_.as_deref(), Some("Warning"));
    assert_eq!(field_path(&post), "spec.containers{post}");
    let killing = wait_event(&w, "hooks", "Killing", |m| m == "FailedPostStartHook").await;
    assert_eq!(field_path(&killing), "spec.containers{post}");
    wait_container_event(
        &w,
        "hooks",
        "Started",
        "spec.containers{pre}",
        "Container started",
    )
    .await;
    std::fs::remove_file(w.manifests.join("hooks.yaml")).expect("remove manifest");
    let pre = wait_event(&w, "hooks", "FailedPreStopHook", |m| {
        m == "PreStopHook failed"
    })
    .await;
    assert_eq!(pre.type_.as_deref(), Some("Warning"));
    assert_eq!(field_path(&pre), "spec.containers{pre}");
}
