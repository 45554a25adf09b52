//! End-to-end tests of pod lifecycle semantics (issue 3): init containers, env and
//! `$(VAR)` expansion, resolv.conf and /etc/hosts, termination messages, grace
//! periods and deadlines — the `nodelet` binary against real containerd.

mod support;

#[path = "lifecycle/hooks.rs"]
mod hooks;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use support::{BUSYBOX, World, condition, container_status, log_lines, phase, wait_for};

fn log_of(w: &World, pod: &Pod, container: &str, attempt: u32) -> std::path::PathBuf {
    w.logs
        .join(format!(
            "default_{}_{}",
            pod.metadata.name.as_deref().unwrap_or(""),
            pod.metadata.uid.as_deref().unwrap_or("")
        ))
        .join(container)
        .join(format!("{attempt}.log"))
}

fn texts(lines: Vec<(String, String)>) -> Vec<String> {
    lines.into_iter().map(|(_, t)| t).collect()
}

/// Init containers run one at a time, in order, before the app container; the order
/// is visible in a shared emptyDir. While they run the pod is Pending and Initialized
/// is False.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order() {
    let mut w = World::new().await;
    w.write_manifest(
        "init.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: init}}
spec:
  volumes: [{{name: shared, emptyDir: {{}}}}]
  initContainers:
  - name: first
    image: {BUSYBOX}
    command: [sh, -c, "sleep 1; echo first >> /shared/order"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: second
    image: {BUSYBOX}
    command: [sh, -c, "echo second >> /shared/order"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "echo main >> /shared/order; cat /shared/order; exec sleep 3600"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
"#
        ),
    );
    w.start_agent().await;
    let early = w
        .wait_pod("init", "initializing", |p| {
            p.status
                .as_ref()
                .and_then(|s| s.init_container_statuses.as_ref())
                .is_some()
        })
        .await;
    assert_eq!(phase(&early), "Pending");
    assert_eq!(condition(&early, "Initialized").as_deref(), Some("False"));
    let pod = w
        .wait_pod("init", "Running", |p| phase(p) == "Running")
        .await;
    assert_eq!(condition(&pod, "Initialized").as_deref(), Some("True"));
    let log = log_of(&w, &pod, "main", 0);
    let lines = wait_for("main's output", Duration::from_secs(20), || {
        let t = texts(log_lines(&log));
        async move { (t.len() >= 3).then_some(t) }
    })
    .await;
    assert_eq!(lines, ["first", "second", "main"]);
    for name in ["first", "second"] {
        let s = pod
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == name))
            .and_then(|c| c.state.as_ref()?.terminated.clone())
            .expect("terminated init container");
        assert_eq!((s.exit_code, s.reason.as_deref()), (0, Some("Completed")));
    }
    w.stop_agent();
}

/// A failing init container under `restartPolicy: Never` fails the pod; the app
/// container never starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_init_container_fails_the_pod() {
    let mut w = World::new().await;
    w.write_manifest(
        "badinit.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: badinit}}\nspec:\n  restartPolicy: Never\n  initContainers:\n  - name: setup\n    image: {BUSYBOX}\n    command: [sh, -c, 'exit 7']\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("badinit", "Failed", |p| phase(p) == "Failed")
        .await;
    assert!(
        container_status(&pod, "main")
            .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
            .is_some_and(|r| r == "PodInitializing")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodelet"))
        .args(["pods", "--read-only-port", &w.port.to_string()])
        .output()
        .expect("nodelet pods");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("Init:Error"), "{table}");
    w.stop_agent();
}

/// Env values, fieldRefs and `$(VAR)` expansion in env, command and args are as
/// upstream's, and the pod's resolv.conf and /etc/hosts are what upstream writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_expansion_dns_and_hosts() {
    let mut w = World::new().await;
    w.write_manifest(
        "env.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: env, labels: {{app: demo}}}}
spec:
  restartPolicy: Never
  dnsPolicy: None
  dnsConfig:
    nameservers: [192.0.2.10]
    searches: [example.test]
    options: [{{name: ndots, value: "2"}}]
  hostAliases:
  - ip: 192.0.2.20
    hostnames: [alias-one, alias-two]
  containers:
  - name: main
    image: {BUSYBOX}
    env:
    - {{name: GREETING, value: hello}}
    - {{name: MESSAGE, value: "$(GREETING) world $$(GREETING) $(UNDEFINED)"}}
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    - name: APP
      valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['app']"}}}}
    command: [sh, -c]
    args: ["echo \"msg=$MESSAGE pod=$POD_NAME app=$APP arg=$(GREETING)\"; cat /etc/resolv.conf /etc/hosts"]
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("env", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    let lines = texts(log_lines(&log_of(&w, &pod, "main", 0)));
    let name = format!("env-{}", w.node);
    assert_eq!(
        lines[0],
        format!("msg=hello world $(GREETING) $(UNDEFINED) pod={name} app=demo arg=hello")
    );
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");
    let rest = lines[1..].join("\n");
    assert_eq!(
        rest,
        format!(
            "search example.test\nnameserver 192.0.2.10\noptions ndots:2\n# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n{ip}\t{name}\n\n# Entries added by HostAliases.\n192.0.2.20\talias-one\talias-two"
        )
    );
    w.stop_agent();
}

/// The termination message file reaches `state.terminated.message`; with
/// `FallbackToLogsOnError` a failed container's log tail does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_messages() {
    let mut w = World::new().await;
    w.write_manifest(
        "msg.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: msg}}
spec:
  restartPolicy: Never
  containers:
  - name: file
    image: {BUSYBOX}
    command: [sh, -c, "echo -n 'all done' > /dev/termination-log"]
  - name: custom
    image: {BUSYBOX}
    terminationMessagePath: /tmp/why
    command: [sh, -c, "echo -n 'custom path' > /tmp/why; exit 4"]
  - name: fallback
    image: {BUSYBOX}
    terminationMessagePolicy: FallbackToLogsOnError
    command: [sh, -c, "echo line one; echo line two; exit 2"]
"#
        ),
    );
    w.start_agent().await;
    let pod = w.wait_pod("msg", "Failed", |p| phase(p) == "Failed").await;
    let message = |c: &str| {
        container_status(&pod, c)
            .and_then(|s| s.state.as_ref()?.terminated.as_ref()?.message.clone())
    };
    assert_eq!(message("file").as_deref(), Some("all done"));
    assert_eq!(message("custom").as_deref(), Some("custom path"));
    assert_eq!(message("fallback").as_deref(), Some("line one\nline two\n"));
    w.stop_agent();
}

/// A container that ignores SIGTERM is killed after its grace period, not before;
/// `activeDeadlineSeconds` fails the pod with `DeadlineExceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_and_active_deadline() {
    let mut w = World::new().await;
    w.write_manifest(
        "stubborn.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: stubborn}}
spec:
  terminationGracePeriodSeconds: 3
  activeDeadlineSeconds: 2
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "trap 'echo got TERM' TERM; while true; do sleep 0.2; done"]
"#
        ),
    );
    w.start_agent().await;
    w.wait_pod("stubborn", "Running", |p| phase(p) == "Running")
        .await;
    let started = Instant::now();
    let pod = w
        .wait_pod("stubborn", "Failed", |p| phase(p) == "Failed")
        .await;
    let status = pod.status.clone().expect("status");
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(
        status.message.as_deref(),
        Some("Pod was active on the node longer than the specified deadline")
    );
    let t = container_status(&pod, "main")
        .and_then(|c| c.state.as_ref()?.terminated.clone())
        .expect("terminated");
    assert_eq!(t.exit_code, 137, "killed by SIGKILL after ignoring SIGTERM");
    let log = texts(log_lines(&log_of(&w, &pod, "main", 0)));
    assert!(
        log.contains(&"got TERM".to_owned()),
        "SIGTERM came first: {log:?}"
    );
    // It survived SIGTERM for the whole grace period (3 s) before SIGKILL.
    let started_at = t.started_at.expect("startedAt").0;
    let finished_at = t.finished_at.expect("finishedAt").0;
    let ran = finished_at.duration_since(started_at);
    assert!(
        ran >= jiff::SignedDuration::from_secs(4),
        "ran {ran:?}: deadline 2 s + grace 3 s, minus whole-second rounding"
    );
    let _ = started;
    w.stop_agent();
}

/// A sidecar (an init container with `restartPolicy: Always`) starts before the next
/// init container and keeps running beside the app; when the app finishes, the
/// sidecar is stopped and the pod succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_runs_beside_the_app() {
    let mut w = World::new().await;
    w.write_manifest(
        "sidecar.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: sidecar}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 2
  volumes: [{{name: shared, emptyDir: {{}}}}]
  initContainers:
  - name: helper
    image: {BUSYBOX}
    restartPolicy: Always
    command: [sh, -c, "echo helper-up > /shared/helper; trap 'exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  - name: setup
    image: {BUSYBOX}
    command: [sh, -c, "until [ -f /shared/helper ]; do sleep 0.1; done; cat /shared/helper"]
    volumeMounts: [{{name: shared, mountPath: /shared}}]
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sh, -c, "sleep 3; echo done"]
"#
        ),
    );
    w.start_agent().await;
    let running = w
        .wait_pod("sidecar", "Running with its sidecar", |p| {
            phase(p) == "Running"
                && p.status
                    .as_ref()
                    .and_then(|s| s.init_container_statuses.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.name == "helper"))
                    .is_some_and(|c| c.ready)
        })
        .await;
    let setup_log = texts(log_lines(&log_of(&w, &running, "setup", 0)));
    assert_eq!(
        setup_log,
        ["helper-up"],
        "setup ran after the sidecar was up"
    );
    let done = w
        .wait_pod("sidecar", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    let helper = done
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "helper"))
        .and_then(|c| c.state.as_ref()?.terminated.clone())
        .expect("the sidecar was stopped");
    assert_eq!(helper.exit_code, 0, "it got SIGTERM and exited");
    w.stop_agent();
}

/// `runAsNonRoot` with an image that runs as root is refused with upstream's
/// message; with a non-root runAsUser the same image runs. sysctls reach the pod,
/// fsGroup owns emptyDirs and joins the supplemental groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_context() {
    let mut w = World::new().await;
    w.write_manifest(
        "secure.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: secure}}
spec:
  hostname: box
  subdomain: sub
  securityContext:
    fsGroup: 2000
    supplementalGroups: [3000]
    sysctls: [{{name: net.ipv4.ip_local_port_range, value: "40000 50000"}}]
  volumes: [{{name: data, emptyDir: {{}}}}]
  containers:
  - name: rooty
    image: {BUSYBOX}
    command: [sleep, "3600"]
    securityContext: {{runAsNonRoot: true}}
  - name: nonroot
    image: {BUSYBOX}
    securityContext: {{runAsNonRoot: true, runAsUser: 1000, allowPrivilegeEscalation: false}}
    volumeMounts: [{{name: data, mountPath: /data}}]
    command: [sh, -c, "id -u; id -G; stat -c %g /data; touch /data/f && stat -c %g /data/f; cat /proc/sys/net/ipv4/ip_local_port_range; hostname; grep box /etc/hosts; grep NoNewPrivs /proc/self/status; exec sleep 3600"]
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("secure", "refusing the root container", |p| {
            container_status(p, "rooty")
                .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .is_some_and(|r| r == "CreateContainerConfigError")
                && container_status(p, "nonroot").is_some_and(|c| c.ready)
        })
        .await;
    let msg = container_status(&pod, "rooty")
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.message.clone())
        .unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    assert_eq!(
        msg,
        format!(
            "container has runAsNonRoot and image will run as root (pod: \"secure-{}_default({uid})\", container: rooty)",
            w.node
        )
    );
    let log = log_of(&w, &pod, "nonroot", 0);
    let lines = wait_for("nonroot's output", Duration::from_secs(20), || {
        let t = texts(log_lines(&log));
        async move { (t.len() >= 8).then_some(t) }
    })
    .await;
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    assert_eq!(lines[0], "1000");
    let groups: Vec<&str> = lines[1].split_whitespace().collect();
    assert!(
        groups.contains(&"2000") && groups.contains(&"3000"),
        "{groups:?}"
    );
    assert_eq!(
        lines[2..4],
        ["2000", "2000"],
        "the volume and new files belong to fsGroup"
    );
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["40000", "50000"]
    );
    assert_eq!(lines[5], "box");
    assert_eq!(lines[6], format!("{ip}\tbox.sub.default.svc\tbox"));
    assert_eq!(
        lines[7].split_whitespace().collect::<Vec<_>>(),
        ["NoNewPrivs:", "1"]
    );
    w.stop_agent();
}

/// `seccompProfile`: the pod's `RuntimeDefault` puts a container in filter mode
/// (`Seccomp: 2`), a container's `Unconfined` overrides it (`Seccomp: 0`), and a
/// `Localhost` profile under `<root-dir>/seccomp` is applied (its denied `mkdir`
/// fails with EPERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profiles() {
    let mut w = World::new().await;
    let profiles = w.root.join("seccomp/profiles");
    std::fs::create_dir_all(&profiles).expect("seccomp dir");
    std::fs::write(
        profiles.join("deny-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .expect("write profile");
    w.write_manifest(
        "seccomp.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: seccomp}}
spec:
  securityContext:
    seccompProfile: {{type: RuntimeDefault}}
  containers:
  - name: confined
    image: {BUSYBOX}
    command: [sh, -c, "grep Seccomp: /proc/self/status; exec sleep 3600"]
  - name: unconfined
    image: {BUSYBOX}
    securityContext:
      seccompProfile: {{type: Unconfined}}
    command: [sh, -c, "grep Seccomp: /proc/self/status; exec sleep 3600"]
  - name: localhost
    image: {BUSYBOX}
    securityContext:
      seccompProfile: {{type: Localhost, localhostProfile: profiles/deny-mkdir.json}}
    command: [sh, -c, "grep Seccomp: /proc/self/status; mkdir /tmp/made 2>&1 || true; exec sleep 3600"]
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("seccomp", "all containers ready", |p| {
            ["confined", "unconfined", "localhost"]
                .iter()
                .all(|c| container_status(p, c).is_some_and(|s| s.ready))
        })
        .await;
    let output = |name: &'static str, want: usize| {
        let log = log_of(&w, &pod, name, 0);
        wait_for(name, Duration::from_secs(20), move || {
            let t = texts(log_lines(&log));
            async move { (t.len() >= want).then_some(t) }
        })
    };
    assert_eq!(output("confined", 1).await[0], "Seccomp:\t2");
    assert_eq!(output("unconfined", 1).await[0], "Seccomp:\t0");
    let lines = output("localhost", 2).await;
    assert_eq!(lines[0], "Seccomp:\t2");
    assert!(lines[1].contains("Operation not permitted"), "{lines:?}");
    w.stop_agent();
}

/// `resourceFieldRef` in env and the downward API volume, as upstream writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downward_api() {
    let mut w = World::new().await;
    w.write_manifest(
        "downward.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: downward
  labels: {{app: web, tier: front}}
  annotations: {{note: "hello"}}
spec:
  restartPolicy: Never
  volumes:
  - name: info
    downwardAPI:
      items:
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
      - {{path: sub/name, fieldRef: {{fieldPath: metadata.name}}}}
      - {{path: cpu, resourceFieldRef: {{containerName: main, resource: limits.cpu, divisor: 1m}}}}
  containers:
  - name: main
    image: {BUSYBOX}
    resources:
      requests: {{cpu: 250m, memory: 32Mi}}
      limits: {{cpu: 500m, memory: 64Mi}}
    env:
    - name: MEM_MI
      valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}
    - name: CPU_REQ
      valueFrom: {{resourceFieldRef: {{resource: requests.cpu, divisor: 1m}}}}
    volumeMounts: [{{name: info, mountPath: /info}}]
    command: [sh, -c, "echo mem=$MEM_MI cpu=$CPU_REQ; cat /info/labels; echo; cat /info/sub/name; echo; cat /info/cpu; echo; touch /info/x 2>/dev/null || echo read-only"]
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod("downward", "Succeeded", |p| phase(p) == "Succeeded")
        .await;
    let lines = texts(log_lines(&log_of(&w, &pod, "main", 0)));
    assert_eq!(
        lines,
        [
            "mem=64 cpu=250".to_owned(),
            "app=\"web\"".to_owned(),
            "tier=\"front\"".to_owned(),
            format!("downward-{}", w.node),
            "500".to_owned(),
            "read-only".to_owned(),
        ]
    );
    w.stop_agent();
}

/// A sidecar that stops after the app containers have started is restarted: sidecars
/// are kept for the pod's whole life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_is_restarted_while_the_app_runs() {
    let mut w = World::new().await;
    w.write_manifest(
        "flaky.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: flaky}}
spec:
  initContainers:
  - name: helper
    image: {BUSYBOX}
    restartPolicy: Always
    command: [sh, -c, "sleep 2; exit 1"]
  containers:
  - name: main
    image: {BUSYBOX}
    command: [sleep, "3600"]
"#
        ),
    );
    w.start_agent().await;
    let pod = w
        .wait_pod(
            "flaky",
            "the sidecar restarted beside the running app",
            |p| {
                let helper = p
                    .status
                    .as_ref()
                    .and_then(|s| s.init_container_statuses.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.name == "helper"))
                    .map_or(0, |c| c.restart_count);
                helper >= 1 && container_status(p, "main").is_some_and(|c| c.ready)
            },
        )
        .await;
    assert_eq!(phase(&pod), "Running");
    assert_eq!(
        container_status(&pod, "main").map(|c| c.restart_count),
        Some(0)
    );
    w.stop_agent();
}

/// Crash-loop back-off end to end: a container exiting 1 under `Always` is restarted
/// at once the first time, then waits in `CrashLoopBackOff` with upstream's message,
/// `back-off 10s restarting failed container=…`, and after the next crash
/// `back-off 20s …`; `restartCount` and `lastState.terminated` follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backoff_grows() {
    let mut w = World::new().await;
    w.write_manifest(
        "crash.yaml",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: crash}}
spec:
  restartPolicy: Always
  containers:
  - name: crasher
    image: {BUSYBOX}
    command: [sh, -c, "exit 1"]
"#
        ),
    );
    w.start_agent().await;
    let pod_name = format!("crash-{}", w.node);
    let waiting = |p: &Pod| {
        container_status(p, "crasher")
            .and_then(|c| c.state.as_ref()?.waiting.clone())
            .filter(|wt| wt.reason.as_deref() == Some("CrashLoopBackOff"))
            .and_then(|wt| wt.message)
    };
    let backoff = |delay: &'static str| {
        let prefix =
            format!("back-off {delay} restarting failed container=crasher pod={pod_name}_default(");
        move |p: &Pod| waiting(p).is_some_and(|m| m.starts_with(&prefix))
    };
    let first = w
        .wait_pod("crash", "in CrashLoopBackOff for 10s", backoff("10s"))
        .await;
    let cs = container_status(&first, "crasher").expect("status");
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert_eq!(
        phase(&first),
        "Running",
        "a crash-looping pod stays Running"
    );
    let first_count = cs.restart_count;
    assert!(first_count >= 1);

    let second = w
        .wait_pod("crash", "in CrashLoopBackOff for 20s", backoff("20s"))
        .await;
    let count = container_status(&second, "crasher").map(|c| c.restart_count);
    assert!(
        count > Some(first_count),
        "restarted after the 10s back-off: {count:?} after {first_count}"
    );
    w.stop_agent();
}
