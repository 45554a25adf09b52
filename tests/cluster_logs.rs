//! End-to-end against the real kube-apiserver tier (issue 13, logs): `kubectl logs`
//! through the apiserver to the agent's secure port (x509 client certificate of the
//! apiserver, `SubjectAccessReview` authorization): `--tail`, `-f` seeing new lines
//! across the driver's rotations (every line, in order), `--previous` (upstream's
//! error before a restart, the previous instance's output after one), and the node's
//! `/logs/` through the apiserver's node proxy; with `/usr/bin/kubectl` and with
//! kubectl 1.20 (`scripts/kubectl-1.20.sh`). Needs `NODELET_TEST_KUBECONFIG` (see
//! `support::cluster`) and the test containerd.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::PostParams;
use support::cluster::{admin_client, admin_kubeconfig, joined_world, kubectl, wait_ready};
use support::{BUSYBOX, wait_for};
use tokio::io::AsyncBufReadExt;

/// Both kubectls: the one on the machine and Debian's 1.20 (SPDY-era) one.
fn kubectls() -> Vec<PathBuf> {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/kubectl-1.20.sh"
    ))
    .output()
    .expect("run scripts/kubectl-1.20.sh");
    assert!(
        out.status.success(),
        "kubectl 1.20: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    vec![PathBuf::from("/usr/bin/kubectl"), PathBuf::from(old)]
}

fn run(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pod(name: &str, node: &str, script: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["sh", "-c", script]}]
        }
    }))
    .expect("pod")
}

fn status(p: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "main")
}

fn running(p: &Pod) -> bool {
    status(p).is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// The tick numbers of `text`'s lines (`tick <n> xxx…`).
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.split(' ').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_tail_follow_across_rotation_and_previous() {
    let kubeconfig = admin_kubeconfig();
    let ca = kubeconfig.parent().expect("run dir").join("pki/ca.crt");
    let ca = ca.to_str().expect("utf-8 path");
    let (_cleanup, mut w) = joined_world(
        &kubeconfig,
        &[
            "--client-ca-file",
            ca,
            "--authorization-mode",
            "Webhook",
            "--container-log-max-size",
            "64Ki",
            "--container-log-max-files",
            "3",
        ],
    )
    .await;
    w.start_agent().await;
    let client = admin_client(&kubeconfig).await;
    wait_ready(
        &Api::<Node>::all(client.clone()),
        &w.node,
        Duration::from_secs(60),
    )
    .await;
    let ns_name = format!("nlt-{}", w.id);
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns_name}
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &ns_name);
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || async { accounts.get_opt("default").await.ok()? },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns_name);
    // ~40 KB/s: the driver rotates its 64 KiB file every second or two.
    let talker = "pad=$(head -c 2000 /dev/zero | tr '\\0' x); i=0; \
                  while true; do echo \"tick $i $pad\"; i=$((i+1)); sleep 0.05; done";
    let crasher = "echo \"run $(cat /proc/sys/kernel/random/uuid)\"; sleep 15; exit 3";
    for (name, script) in [("talker", talker), ("crasher", crasher)] {
        pods.create(&PostParams::default(), &pod(name, &w.node, script))
            .await
            .expect("create pod");
    }
    let running_pod = |name: &'static str| {
        let pods = pods.clone();
        async move {
            wait_for("the pod running", Duration::from_secs(90), || async {
                pods.get_opt(name).await.ok()?.filter(running)
            })
            .await
        }
    };
    running_pod("talker").await;
    let crashing = running_pod("crasher").await;
    let ns = ns_name.as_str();
    let kc = kubeconfig.as_path();
    // --previous before any restart (the first run lasts 15 s): upstream's error.
    assert!(status(&crashing).is_some_and(|c| c.restart_count == 0));
    for kubectl_bin in kubectls() {
        let (ok, _, err) = run(
            &kubectl_bin,
            kc,
            &["-n", ns, "logs", "--previous", "crasher"],
        );
        assert!(!ok);
        assert!(
            err.contains("previous terminated container \"main\" in pod \"crasher\" not found"),
            "{err}"
        );
    }

    for kubectl_bin in kubectls() {
        let version = kubectl_bin.display().to_string();
        // --tail: the last lines, consecutive. As upstream, tail reads the current file
        // only, so just after a rotation it holds fewer lines: ask again then.
        let mut t = Vec::new();
        let mut out = String::new();
        for _ in 0..10 {
            let (ok, o, err) = run(&kubectl_bin, kc, &["-n", ns, "logs", "--tail=3", "talker"]);
            assert!(ok, "{version} logs --tail: {err}");
            t = ticks(&o);
            out = o;
            if t.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(t.len(), 3, "{version}: {out:.300}");
        assert!(t.windows(2).all(|p| p[1] == p[0] + 1), "{version}: {t:?}");

        // -f: new lines keep coming, across several rotations, none lost or repeated.
        let mut child = tokio::process::Command::new(&kubectl_bin)
            .arg("--kubeconfig")
            .arg(kc)
            .args(["-n", ns, "logs", "-f", "--tail=1", "talker"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("kubectl logs -f");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            match tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await {
                Ok(Ok(Some(l))) => seen.extend(ticks(&l)),
                other => panic!("{version} logs -f stalled or ended: {other:?}"),
            }
        }
        child.kill().await.expect("stop kubectl");
        let bytes = seen.len() * 2010;
        assert!(
            bytes > 3 * 65536,
            "{version}: {} lines in 8 s span less than three rotations",
            seen.len()
        );
        assert!(
            seen.windows(2).all(|p| p[1] == p[0] + 1),
            "{version}: a follow across rotations lost or repeated lines: {seen:?}"
        );
    }

    let restarted = wait_for("crasher restarted", Duration::from_secs(60), || async {
        pods.get_opt("crasher")
            .await
            .ok()?
            .filter(|p| status(p).is_some_and(|c| c.restart_count >= 1))
    })
    .await;
    let (prev_id, prev_count) = {
        let c = status(&restarted).expect("status");
        (
            c.last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.container_id.clone()),
            c.restart_count,
        )
    };
    assert!(prev_id.is_some(), "lastState names the previous instance");
    for kubectl_bin in kubectls() {
        let version = kubectl_bin.display().to_string();
        let (ok, out, err) = run(
            &kubectl_bin,
            kc,
            &["-n", ns, "logs", "--previous", "crasher"],
        );
        assert!(ok, "{version} logs --previous: {err}");
        assert!(out.starts_with("run "), "{version}: {out}");
        let (ok, now, err) = run(&kubectl_bin, kc, &["-n", ns, "logs", "crasher"]);
        assert!(ok, "{version} logs: {err}");
        assert!(now.starts_with("run "), "{version}: {now}");
        // Another restart in between would make them one instance apart still.
        let again = pods.get_opt("crasher").await.ok().flatten();
        if again.as_ref().and_then(status).map(|c| c.restart_count) == Some(prev_count) {
            assert_ne!(
                out, now,
                "{version}: previous and current are different runs"
            );
        }
    }

    // The node's /logs/ with the apiserver's kubelet client certificate (the
    // apiserver's node proxy refuses loopback addresses, so straight to the port):
    // authenticated by the client CA, authorized (nodes/log) by a SubjectAccessReview.
    let pki = kubeconfig.parent().expect("run dir").join("pki");
    let curl = |path: &str, cert: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "-o", "/dev/stderr", "-w", "%{http_code}"]);
        if cert {
            cmd.arg("--cert")
                .arg(pki.join("apiserver-kubelet-client.crt"))
                .arg("--key")
                .arg(pki.join("apiserver-kubelet-client.key"));
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{}{path}", w.secure_port))
            .output()
            .expect("curl");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, listing) = curl("/logs/", true);
    assert_eq!(code, "200", "{listing:.300}");
    assert!(listing.contains("<pre>"), "{listing:.300}");
    assert_eq!(curl("/logs/", false).0, "401", "no credential");
    let (code, body) = curl(&format!("/containerLogs/{ns}/talker/nope"), true);
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("404", "container \"nope\" not found in pod \"talker\"")
    );

    let _ = kubectl(kc, &["delete", "namespace", ns, "--wait=false"]);
    w.stop_agent();
}
