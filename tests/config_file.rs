//! End-to-end tests of `--config` and `--config-dir` (issue 11, "Client"): the
//! `nodelet` binary started with a `KubeletConfiguration` file and a drop-in, a flag
//! overriding the file, checked through the read-only API and the static pod it
//! runs; and bad files stopping the binary before it starts, with the file and field
//! path in the message and the usage exit code.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{BUSYBOX, World, container_status, phase, wait_for};

const HEAD: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `args` without the flags (and their values) named in `drop`.
fn without(args: Vec<String>, drop: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if drop.contains(&a.as_str()) {
            it.next();
        } else {
            out.push(a);
        }
    }
    out
}

/// The file gives the static pod directory (relative to itself), a read-only port
/// and a healthz port; a drop-in replaces the healthz port; `--read-only-port` on the
/// command line replaces the file's. The static pod runs and is served on the flag's
/// port, the file's port stays closed, healthz answers on the drop-in's port, and the
/// unsupported fields are named in one warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_and_drop_in_configure_the_agent_under_the_flags() {
    let mut w = World::new().await;
    let file_port = free_port();
    let etc = w.dir.path().join("etc");
    let drop_ins = etc.join("kubelet.conf.d");
    std::fs::create_dir_all(&drop_ins).expect("mkdir");
    let config = etc.join("kubelet.yaml");
    std::fs::write(
        &config,
        format!(
            "{HEAD}staticPodPath: ../manifests\nreadOnlyPort: {file_port}\nhealthzPort: {}\nfileCheckFrequency: 1m0s\nsyncFrequency: 30s\nrotateCertificates: true\n",
            free_port()
        ),
    )
    .expect("write config");
    std::fs::write(
        drop_ins.join("10-healthz.conf"),
        format!("{HEAD}healthzPort: {}\n", w.healthz),
    )
    .expect("write drop-in");
    let mut args = without(
        w.agent_args(),
        &["--pod-manifest-path", "--read-only-port", "--healthz-port"],
    );
    args.extend([
        "--config".to_owned(),
        config.display().to_string(),
        "--config-dir".to_owned(),
        drop_ins.display().to_string(),
        "--read-only-port".to_owned(),
        w.port.to_string(),
        // v1beta1 defaults to webhook authn/authz, which needs an apiserver.
        "--authorization-mode".to_owned(),
        "AlwaysAllow".to_owned(),
        "--authentication-token-webhook=false".to_owned(),
    ]);
    w.write_manifest(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ),
    );
    let log = std::fs::File::create(w.agent_log()).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args(&args)
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start nodelet");
    w.agent = Some(child);

    let pod = w
        .wait_pod("web", "Running", |p| {
            phase(p) == "Running" && container_status(p, "main").is_some_and(|c| c.ready)
        })
        .await;
    assert_eq!(
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/config.source"))
            .map(String::as_str),
        Some("file")
    );
    let http = reqwest::Client::new();
    let healthz = format!("http://127.0.0.1:{}/healthz", w.healthz);
    wait_for(
        "healthz on the drop-in's port",
        Duration::from_secs(10),
        || {
            let (http, url) = (http.clone(), healthz.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        },
    )
    .await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", file_port)).is_err(),
        "the file's read-only port {file_port} must be closed: the flag replaced it"
    );
    let text = std::fs::read_to_string(w.agent_log()).expect("agent log");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("kubelet config fields nodelet does not support"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains("fields=syncFrequency, rotateCertificates"),
        "{}",
        warnings[0]
    );
    w.stop_agent();
}

/// Runs the binary with `args` and returns its exit code and stderr.
fn run_nodelet(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nodelet");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A bad file is refused before anything starts: nothing listens, the message names
/// the file and each bad field, and the exit code is clap's usage code (2).
#[test]
fn bad_config_files_stop_the_agent_with_the_file_and_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = tmp.path().join("kubelet.yaml");
    std::fs::write(
        &config,
        format!("{HEAD}readOnlyPort: {port}\nstaticPodPth: /etc/kubernetes/manifests\nauthentication: {{x509: {{clientCA: /ca.crt}}}}\n"),
    )
    .expect("write");
    let root = tmp.path().join("root");
    let c = config.display().to_string();
    let r = root.display().to_string();
    let (code, stderr) = run_nodelet(&["--config", &c, "--root-dir", &r]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "nodelet: kubelet config file {c}: strict decoding error: unknown field \"authentication.x509.clientCA\", unknown field \"staticPodPth\""
        )
    );
    assert!(
        !root.exists(),
        "nothing may start: {} was made",
        root.display()
    );

    std::fs::write(&config, format!("{HEAD}maxPods: lots\n")).expect("write");
    let (code, stderr) = run_nodelet(&["--config", &c, "--root-dir", &r]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{c}: strict decoding error: field \"maxPods\": want a 32-bit integer, got string \"lots\""
        )),
        "{stderr}"
    );

    // A drop-in without its type meta.
    let dir = tmp.path().join("conf.d");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let drop_in = dir.join("10-x.conf");
    std::fs::write(&drop_in, "maxPods: 3\n").expect("write");
    let d = dir.display().to_string();
    let (code, stderr) = run_nodelet(&["--config-dir", &d, "--root-dir", &r]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "kubelet config file {}: apiVersion \"\", kind \"\"",
            drop_in.display()
        )),
        "{stderr}"
    );
    assert!(!Path::new(&r).exists());
}

/// `nodelet validate --config` checks the file as the agent would read it (strict
/// decoding, then the flag checks) and validates the static pods it names.
#[test]
fn validate_checks_a_config_file_and_its_static_pods() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::write(
        manifests.join("web.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  containers:\n  - name: main\n    image: {BUSYBOX}\n"
        ),
    )
    .expect("write");
    let config = tmp.path().join("kubelet.yaml");
    std::fs::write(
        &config,
        format!("{HEAD}staticPodPath: manifests\nrotateCertificates: true\n"),
    )
    .expect("write");
    let c = config.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args(["validate", "--config", &c, "--node-name", "n1"])
        .output()
        .expect("run nodelet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{c}: fields nodelet does not support (ignored): rotateCertificates\n{c}: valid\n"
        )),
        "{stdout}"
    );

    // A bad pod in the static pod directory, and a threshold the agent would refuse.
    std::fs::write(
        manifests.join("bad.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec: {containers: []}\n",
    )
    .expect("write");
    std::fs::write(
        &config,
        format!("{HEAD}staticPodPath: manifests\nevictionHard: {{memory.free: 1Gi}}\n"),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args(["validate", "--config", &c, "--node-name", "n1"])
        .output()
        .expect("run nodelet");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("{c}: ")) && stdout.contains("memory.free"),
        "{stdout}"
    );
    assert!(stdout.contains("bad.yaml"), "{stdout}");
}
