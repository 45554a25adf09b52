//! End-to-end test of what the packages promise an operator about running pods (issue 18):
//! stopping `nodelet.service` and removing the package leaves every pod running and
//! logging, and a reinstalled agent adopts them unchanged.
//!
//! There is no systemd on the test machines, so the test does what systemd does on
//! `systemctl stop` under the unit's own `KillMode=` and `KillSignal=` (read from
//! `packaging/systemd/nodelet.service`, the file both packages ship): with
//! `KillMode=process` only the main process gets the signal. What dpkg does on removal
//! after the prerm stopped the unit is deleting `/usr/bin/nodelet`; the agent here runs
//! from a copy of its binary at `usr/bin/nodelet` in the test's directory, and the
//! copy is deleted. The containers' log drivers were started from that binary by their
//! shims, so the test also proves they keep writing after it is gone.

mod support;

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nodelet_cri::runtime::{ContainerState, Runtime as _};
use support::{BUSYBOX, World, container_status, log_lines, phase, wait_for};

/// The stop behaviour the unit file declares, with systemd's defaults.
struct UnitStop {
    kill_mode: String,
    kill_signal: Signal,
}

fn unit_stop(unit: &Path) -> UnitStop {
    let text = std::fs::read_to_string(unit).expect("read the unit");
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .next_back()
            .map(|v| v.trim().to_owned())
    };
    let kill_signal = value("KillSignal").map_or(Signal::SIGTERM, |s| {
        let name = if s.starts_with("SIG") {
            s
        } else {
            format!("SIG{s}")
        };
        name.parse().expect("KillSignal names a signal")
    });
    UnitStop {
        kill_mode: value("KillMode").unwrap_or_else(|| "control-group".into()),
        kill_signal,
    }
}

fn log_len(path: &Path) -> usize {
    log_lines(path).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_unit_and_removing_the_package_keeps_pods_running() {
    let unit = unit_stop(&Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd/nodelet.service"));
    assert_eq!(
        unit.kill_mode, "process",
        "the unit must stop only the agent: any other KillMode would take the pods' helpers with it"
    );

    let mut w = World::new().await;
    let installed = w.root.parent().expect("test dir").join("usr/bin/nodelet");
    std::fs::create_dir_all(installed.parent().expect("usr/bin")).expect("usr/bin");
    std::fs::copy(env!("CARGO_BIN_EXE_nodelet"), &installed).expect("install the binary");
    w.write_manifest(
        "ticker.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: ticker}}\nspec:\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sh, -c, 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done']\n"
        ),
    );
    w.start_agent_from(&installed).await;
    let pod = w
        .wait_pod("ticker", "Running", |p| {
            phase(p) == "Running" && container_status(p, "main").is_some_and(|c| c.ready)
        })
        .await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let container_id = container_status(&pod, "main")
        .and_then(|c| c.container_id.clone())
        .expect("container ID");
    let log = w
        .logs
        .join(format!("default_ticker_{uid}"))
        .join("main/0.log");

    // `systemctl stop nodelet` (the prerm's `deb-systemd-invoke stop`), as the unit says.
    let agent = w.agent.take().expect("agent");
    let pid = Pid::from_raw(i32::try_from(agent.id()).expect("pid"));
    kill(pid, unit.kill_signal).expect("signal the agent");
    let mut agent = agent;
    let status = wait_for("the agent to exit", Duration::from_secs(30), || {
        let done = agent.try_wait().ok().flatten();
        async move { done }
    })
    .await;
    assert!(status.success(), "the agent stopped cleanly: {status}");
    // dpkg then removes the binary.
    std::fs::remove_file(&installed).expect("remove the binary");

    let runtime = w.runtime().await;
    let before = log_len(&log);
    wait_for(
        "the container to keep logging with the agent gone",
        Duration::from_secs(20),
        || {
            let grown = log_len(&log) >= before + 5;
            async move { grown.then_some(()) }
        },
    )
    .await;
    let containers = runtime.list_containers(Some(&uid)).await.expect("list");
    let main = containers
        .iter()
        .find(|c| c.name == "main")
        .expect("the container is still there");
    assert_eq!(main.state, ContainerState::Running, "the pod outlived the agent");
    assert!(
        container_id.ends_with(&main.id),
        "{container_id} is still the container"
    );

    // Reinstalled, the agent adopts the pod: same container, no restart.
    w.start_agent().await;
    let adopted = w
        .wait_pod("ticker", "adopted", |p| {
            container_status(p, "main").is_some_and(|c| {
                c.ready && c.container_id.as_deref() == Some(container_id.as_str())
            })
        })
        .await;
    let status = container_status(&adopted, "main").expect("status");
    assert_eq!(status.restart_count, 0, "the container never restarted");
    let ticks = log_lines(&log);
    let numbers: Vec<u64> = ticks
        .iter()
        .filter_map(|(_, t)| t.strip_prefix("tick ")?.trim().parse().ok())
        .collect();
    assert!(
        numbers.windows(2).all(|p| p[1] == p[0] + 1),
        "no line was lost while the agent was away: {numbers:?}"
    );
    w.stop_agent();
}
