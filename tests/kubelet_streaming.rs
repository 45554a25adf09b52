//! End-to-end against the real apiserver tier (issue 13, streaming): `kubectl exec`,
//! `attach` and `port-forward` through the apiserver's node proxy to the agent's
//! secure port, with the newer kubectl (`/usr/bin/kubectl`, WebSocket to the
//! apiserver, which speaks SPDY/3.1 to the node) and kubectl 1.20 (SPDY end to end):
//! stdin reaches the command, exit codes come back, `-it` gets a terminal of the
//! client's size, attach sees the container's output, port-forward reaches busybox
//! `httpd` in the pod's network namespace. Bad requests to the node (no upgrade, an
//! unknown subprotocol, unknown pod or container) get clear HTTP errors. Needs
//! `NODELET_TEST_KUBECONFIG`, the test containerd and `script` (util-linux).

mod support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use support::cluster::{admin_client, admin_kubeconfig, joined_world, wait_ready};
use support::{BUSYBOX, phase};

fn kubectl_120() -> PathBuf {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kubectl-1.20.sh"))
        .output()
        .expect("scripts/kubectl-1.20.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs `kubectl args` with `stdin`, at most 60 s: (exit code, stdout, stderr).
fn run(kubectl: &Path, kubeconfig: &Path, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new("timeout")
        .arg("60")
        .arg(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("kubectl output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a shell command line under `script`, which gives it a terminal.
fn in_terminal(line: &str) -> String {
    let out = Command::new("timeout")
        .args(["60", "script", "-qec", line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn exec_checks(kubectl: &Path, kubeconfig: &Path, pod: &str) {
    let who = kubectl.display().to_string();
    // stdin to the command and back.
    let (code, out, err) = run(kubectl, kubeconfig, &["exec", "-i", pod, "--", "cat"], b"hi\n");
    assert_eq!((code, out.as_str()), (0, "hi\n"), "{who}: {err}");
    // A bigger stdin, all of it.
    let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let (code, out, err) = run(kubectl, kubeconfig, &["exec", "-i", pod, "--", "wc", "-c"], &big);
    assert_eq!((code, out.trim()), (0, "200000"), "{who}: {err}");
    // The exit code.
    let (code, _, err) = run(kubectl, kubeconfig, &["exec", pod, "--", "sh", "-c", "exit 3"], b"");
    assert_eq!(code, 3, "{who}: {err}");
    // stderr apart from stdout.
    let (code, out, err) = run(
        kubectl,
        kubeconfig,
        &["exec", pod, "--", "sh", "-c", "echo out; echo err >&2"],
        b"",
    );
    assert_eq!((code, out.as_str()), (0, "out\n"), "{who}");
    assert!(err.contains("err"), "{who}: {err:?}");
    // A TTY of the client's size.
    let line = format!(
        "stty cols 123 rows 45; {} --kubeconfig {} exec -it {pod} -- sh -c 'tty; stty size'",
        kubectl.display(),
        kubeconfig.display()
    );
    let out = in_terminal(&line);
    assert!(out.contains("/dev/pts/"), "{who}: {out:?}");
    assert!(out.contains("45 123"), "{who}: {out:?}");
    // An unknown container: the node's 404 comes through.
    let (code, _, err) = run(kubectl, kubeconfig, &["exec", pod, "-c", "nope", "--", "true"], b"");
    assert_ne!(code, 0, "{who}");
    assert!(err.contains("not") || err.contains("nope"), "{who}: {err}");
}

fn attach_check(kubectl: &Path, kubeconfig: &Path, pod: &str) {
    let who = kubectl.display().to_string();
    let out = Command::new("timeout")
        .arg("6")
        .arg(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["attach", pod, "-c", "ticker"])
        .output()
        .expect("kubectl attach");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tick"),
        "{who}: {stdout:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("tock"), "{who}: stderr apart: {stdout:?}");
    assert!(stderr.contains("tock"), "{who}: stderr lines too: {stderr:?}");
}

fn port_forward_check(kubectl: &Path, kubeconfig: &Path, pod: &str) {
    let who = kubectl.display().to_string();
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["port-forward", pod, ":8080"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    // "Forwarding from 127.0.0.1:43567 -> 8080"
    let port: u16 = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| {
            l.split("127.0.0.1:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("{who}: no forwarding line: {err}")
        });
    for round in 0..3 {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("local port");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        tcp.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").expect("request");
        let mut body = String::new();
        let _ = tcp.read_to_string(&mut body);
        assert!(body.contains("hello-from-pod"), "{who} round {round}: {body:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_attach_port_forward_with_both_kubectls() {
    let kubeconfig = admin_kubeconfig();
    let run_dir = kubeconfig.parent().expect("run dir").to_owned();
    let ca = run_dir.join("pki/ca.crt");
    let (_cleanup, mut w) = joined_world(
        &kubeconfig,
        &[
            "--client-ca-file",
            ca.to_str().expect("utf-8"),
            "--authentication-token-webhook",
            "--authorization-mode",
            "Webhook",
        ],
    )
    .await;
    w.write_manifest(
        "web.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, 'mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www']
  - name: ticker
    image: {BUSYBOX}
    command: [sh, -c, 'while true; do echo tick; echo tock >&2; sleep 0.5; done']
"#
        ),
    );
    w.start_agent().await;
    let admin = admin_client(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(admin.clone());
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    w.wait_pod("web", "Running", |p| phase(p) == "Running").await;
    let pod = format!("web-{}", w.node);
    // The mirror pod must be in the API for kubectl to find the node.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(admin.clone(), "default");
    support::wait_for("the mirror pod", Duration::from_secs(60), || async {
        pods.get_opt(&pod).await.ok().flatten()
    })
    .await;

    let new = PathBuf::from("/usr/bin/kubectl");
    let old = kubectl_120();
    for kubectl in [&new, &old] {
        let pod_main = format!("{pod}");
        exec_checks(kubectl, &kubeconfig, &pod_main);
        attach_check(kubectl, &kubeconfig, &pod);
        port_forward_check(kubectl, &kubeconfig, &pod);
    }
}
