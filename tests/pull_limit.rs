//! End-to-end: `--registry-qps` / `--registry-burst` (issue 6). With a QPS but a burst
//! of 0 the bucket never holds a token (client-go's token bucket of size 0), so every
//! pull is refused with upstream's "pull QPS exceeded" before any registry is asked,
//! and the pod shows `ErrImagePull` / `ImagePullBackOff`.

mod support;

use support::{World, container_status};

const POD: &str = r"
apiVersion: v1
kind: Pod
metadata:
  name: throttled
spec:
  containers:
  - name: main
    # Loopback port 1: nothing is ever sent off the machine, and the limit refuses
    # the pull before it would connect anyway.
    image: 127.0.0.1:1/nodelet/never-pulled:1
    imagePullPolicy: Always
";

#[tokio::test]
async fn a_pull_over_the_limit_is_refused_with_pull_qps_exceeded() {
    let mut w = World::new().await;
    w.extra_args = vec!["--registry-qps=1".into(), "--registry-burst=0".into()];
    w.start_agent().await;
    w.write_manifest("throttled.yaml", POD);
    let pod = w
        .wait_pod("throttled", "refused by the pull limit", |p| {
            container_status(p, "main")
                .and_then(|c| c.state.as_ref()?.waiting.as_ref())
                .is_some_and(|w| {
                    w.reason.as_deref() == Some("ErrImagePull")
                        && w.message.as_deref() == Some("pull QPS exceeded")
                })
        })
        .await;
    let main = container_status(&pod, "main").expect("main's status");
    assert!(!main.ready);
    // Upstream's Failed event carries the refusal.
    let url = format!(
        "http://127.0.0.1:{}/api/v1/namespaces/default/events",
        w.port
    );
    let events: k8s_openapi::List<k8s_openapi::api::core::v1::Event> = reqwest::get(&url)
        .await
        .expect("GET events")
        .json()
        .await
        .expect("an EventList");
    let want = r#"Failed to pull image "127.0.0.1:1/nodelet/never-pulled:1": pull QPS exceeded"#;
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Failed") && e.message.as_deref() == Some(want)),
        "no Failed event with {want:?}"
    );
    let log = std::fs::read_to_string(w.agent_log()).expect("agent log");
    assert!(
        log.lines()
            .any(|l| l.contains("Failed to pull image") && l.contains("pull QPS exceeded")),
        "no refused pull in the agent log"
    );
}

#[test]
fn negative_limits_are_refused_at_start_with_upstreams_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args([
            "--registry-qps=-1",
            "--read-only-port=0",
            "--healthz-port=0",
        ])
        .output()
        .expect("run nodelet");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "invalid configuration: registryPullQPS (--registry-qps) -1 must not be a negative number"
        ),
        "{stderr}"
    );
}
