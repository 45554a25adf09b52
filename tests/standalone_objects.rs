//! End-to-end, standalone (beyond upstream, issue 12): ConfigMap and Secret
//! documents beside static pods in a manifest directory, and in a `nodelet run`
//! file, are what the pods mount and reference, as cluster pods use the apiserver's;
//! an edit of a document reaches the running pod's volume.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use support::{BUSYBOX, World, phase, wait_for};

fn documents(greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata:\n  greeting: {greeting}\n  mode: fast\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\nstringData:\n  password: hunter2\n"
    )
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: cfg, configMap: {name: settings}}
  - {name: sec, secret: {secretName: creds, defaultMode: 256}}
  containers:
  - name: main
    image: IMAGE
    command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']
    envFrom:
    - {prefix: CFG_, configMapRef: {name: settings}}
    env:
    - {name: PW, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    volumeMounts:
    - {name: cfg, mountPath: /cfg}
    - {name: sec, mountPath: /sec}
";

fn container_id(p: &Pod) -> Option<String> {
    let id = p
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .clone()?;
    Some(id.trim_start_matches("containerd://").to_owned())
}

async fn sh(w: &World, id: &str, script: &str) -> String {
    let rt = w.runtime().await;
    let cmd = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let out = rt
        .exec_sync(id, &cmd, Duration::from_secs(10))
        .await
        .expect("exec");
    assert_eq!(
        out.exit_code,
        0,
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pods_use_config_map_and_secret_documents_and_follow_edits() {
    let mut w = World::new().await;
    // The objects in a file of their own, the pod in another.
    w.write_manifest("objects.yaml", &documents("hello"));
    w.write_manifest("app.yaml", &POD.replace("IMAGE", BUSYBOX));
    w.start_agent().await;
    let pod = w
        .wait_pod("app", "Running", |p| {
            phase(p) == "Running" && container_id(p).is_some()
        })
        .await;
    let id = container_id(&pod).unwrap();
    assert_eq!(sh(&w, &id, "cat /cfg/greeting").await, "hello");
    assert_eq!(sh(&w, &id, "cat /sec/password").await, "hunter2");
    assert_eq!(
        sh(&w, &id, "stat -L -c %a /sec/password").await.trim(),
        "400"
    );
    let env = sh(&w, &id, "env").await;
    assert!(env.lines().any(|l| l == "CFG_mode=fast"), "{env}");
    assert!(env.lines().any(|l| l == "PW=hunter2"), "{env}");
    // The secret lives in memory, as upstream's.
    let mounts = sh(&w, &id, "cat /proc/mounts").await;
    assert!(
        mounts.lines().any(|l| l.starts_with("tmpfs /sec ")),
        "{mounts}"
    );

    let edited = Instant::now();
    w.write_manifest("objects.yaml", &documents("bonjour"));
    wait_for(
        "the edited document in the volume",
        Duration::from_secs(30),
        || async { (sh(&w, &id, "cat /cfg/greeting").await == "bonjour").then_some(()) },
    )
    .await;
    eprintln!(
        "figure: ConfigMap document edited to the new content in the container: {:?}",
        edited.elapsed()
    );
    // The pod was not restarted for it.
    let now = w.pod("app").await.unwrap();
    assert_eq!(container_id(&now).as_deref(), Some(id.as_str()));
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_waits_for_its_config_map_document() {
    let mut w = World::new().await;
    w.write_manifest("app.yaml", &POD.replace("IMAGE", BUSYBOX));
    w.start_agent().await;
    let waiting = w
        .wait_pod("app", "ContainerCreating", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first()?.state.clone()?.waiting?.reason)
                .as_deref()
                == Some("ContainerCreating")
        })
        .await;
    assert_eq!(phase(&waiting), "Pending");
    let created = Instant::now();
    w.write_manifest("objects.yaml", &documents("late"));
    let pod = w
        .wait_pod("app", "Running", |p| {
            phase(p) == "Running" && container_id(p).is_some()
        })
        .await;
    eprintln!(
        "figure: ConfigMap document written to its pod Running: {:?}",
        created.elapsed()
    );
    let id = container_id(&pod).unwrap();
    assert_eq!(sh(&w, &id, "cat /cfg/greeting").await, "late");
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

/// `nodelet run` of one file holding a Pod, a ConfigMap and a Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodelet_run_takes_config_maps_and_secrets_from_its_file() {
    let w = World::new().await;
    let pod = "apiVersion: v1
kind: Pod
metadata: {name: once}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: cfg, configMap: {name: settings}}
  containers:
  - name: main
    image: IMAGE
    command: [sh, -c, 'echo \"greeting=$(cat /cfg/greeting) pw=$PW\"']
    env:
    - {name: PW, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    volumeMounts:
    - {name: cfg, mountPath: /cfg}
"
    .replace("IMAGE", BUSYBOX);
    let file = w.dir.path().join("all.yaml");
    std::fs::write(&file, format!("{}---\n{pod}", documents("hi"))).unwrap();
    // The world's agent flags minus the sources and ports `nodelet run` does not take.
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nodelet"));
    cmd.arg("run")
        .arg(&file)
        .args(["--timeout", "120s", "--logs"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run nodelet"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l == "[main] greeting=hi pw=hunter2"),
        "{stdout}"
    );
}
