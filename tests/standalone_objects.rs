//! End-to-end, standalone (beyond upstream, issue 12): ConfigMap and Secret
//! documents beside static pods in a manifest directory, and in a `nodelet run`
//! file, and pushed to `POST /pods`, are what the pods mount and reference, as
//! cluster pods use the apiserver's; an edit of a document reaches the running pod's
//! volume. Modes written as YAML 1.1 octals (`defaultMode: 0400`) are read as
//! upstream reads them, from every source; `nodelet validate` refuses a document whose
//! keys aren't file names or whose data is over 1 MiB, with the field path.

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
  - {name: sec, secret: {secretName: creds, defaultMode: 0400}}
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
  - {name: cfg, configMap: {name: settings, defaultMode: 0o440}}
  containers:
  - name: main
    image: IMAGE
    command: [sh, -c, 'echo \"greeting=$(cat /cfg/greeting) pw=$PW mode=$(stat -L -c %a /cfg/greeting)\"']
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
        stdout
            .lines()
            .any(|l| l == "[main] greeting=hi pw=hunter2 mode=440"),
        "{stdout}"
    );
}

/// ConfigMaps and Secrets pushed with the pods (`--enable-pod-push`): mounted and
/// referenced, an edit pushed again reaches the volume, `DELETE /configmaps/…` and
/// `/secrets/…` remove them (the running pod keeps what its volume holds, as when a
/// file's document is removed); an invalid one is refused with its field paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_config_maps_and_secrets_reach_pods_and_follow_edits() {
    let mut w = World::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    w.extra_args = vec![
        "--enable-pod-push".into(),
        "--pod-push-port".into(),
        port.to_string(),
    ];
    w.start_agent().await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let post = |body: String| {
        http.post(format!("{base}/pods"))
            .header("Content-Type", "application/yaml")
            .body(body)
            .send()
    };
    let body = format!(
        "{}---\n{}",
        documents("hello"),
        POD.replace("IMAGE", BUSYBOX)
    );
    let resp = post(body).await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let created: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(created["kind"], "List");
    let kinds: Vec<&str> = created["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds, ["Pod", "ConfigMap", "Secret"]);
    let pod = w
        .wait_pod("app", "Running", |p| {
            phase(p) == "Running" && container_id(p).is_some()
        })
        .await;
    let id = container_id(&pod).unwrap();
    assert_eq!(sh(&w, &id, "cat /cfg/greeting").await, "hello");
    assert_eq!(sh(&w, &id, "cat /sec/password").await, "hunter2");
    // `defaultMode: 0400` through the push source too.
    assert_eq!(
        sh(&w, &id, "stat -L -c %a /sec/password").await.trim(),
        "400"
    );
    let env = sh(&w, &id, "env").await;
    assert!(env.lines().any(|l| l == "PW=hunter2"), "{env}");

    // The ConfigMap alone, edited: one object back, and the volume follows.
    let edit = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata:\n  greeting: bonjour\n  mode: fast\n";
    let resp = post(edit.to_owned()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let created: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(created["kind"], "ConfigMap");
    let edited = Instant::now();
    wait_for(
        "the pushed edit in the volume",
        Duration::from_secs(30),
        || async { (sh(&w, &id, "cat /cfg/greeting").await == "bonjour").then_some(()) },
    )
    .await;
    eprintln!(
        "figure: pushed ConfigMap edit to the new content in the container: {:?}",
        edited.elapsed()
    );

    // Invalid: refused with field paths, nothing changes.
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {'a/b': x}\n";
    let resp = post(bad.to_owned()).await.unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let status: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status["details"]["causes"][0]["field"], "data[a/b]");

    // Deleted: the running pod keeps what it has; a second delete is a 404.
    let delete = |path: &str| http.delete(format!("{base}{path}")).send();
    let resp = delete("/configmaps/default/settings").await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = delete("/configmaps/default/settings").await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let status: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status["message"], "configmaps \"settings\" not found");
    assert_eq!(
        delete("/secrets/default/creds")
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(sh(&w, &id, "cat /cfg/greeting").await, "bonjour");
    let now = w.pod("app").await.unwrap();
    assert_eq!(container_id(&now).as_deref(), Some(id.as_str()));
    assert_eq!(phase(&now), "Running");
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}

/// `nodelet validate`: a YAML 1.1 octal is an integer (printed in decimal), a quoted
/// one a string (refused as upstream refuses it); ConfigMap and Secret documents with
/// keys that aren't file names or over 1 MiB of data are refused with field paths.
#[test]
fn validate_reads_octal_modes_and_refuses_bad_documents() {
    let dir = tempfile::tempdir().unwrap();
    let run = |file: &str, text: &str, extra: &[&str]| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_nodelet"))
            .arg("validate")
            .arg(&path)
            .args(["--node-name", "n1"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let pod = POD.replace("IMAGE", "busybox");
    let (code, out) = run("octal.yaml", &pod, &["--output", "yaml"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("defaultMode: 256"), "{out}");
    let (code, out) = run("quoted.yaml", &pod.replace("0400", "'0400'"), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("invalid type: string \"0400\""), "{out}");

    let big = "x".repeat(1024 * 1024 + 1);
    let bad = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: keys}}\ndata: {{'a/b': x}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: dots}}\nstringData: {{'..data': x}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{k: {big}}}\n"
    );
    let (code, out) = run("bad.yaml", &bad, &[]);
    assert_eq!(code, Some(1), "{out}");
    for want in [
        "document 0: invalid ConfigMap \"keys\": data[a/b]: Invalid value: \"a/b\"",
        "document 1: invalid Secret \"dots\": data[..data]: Invalid value: \"..data\": must not start with '..'",
        "document 2: invalid ConfigMap \"big\": []: Too long: may not be more than 1048576 bytes",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}
