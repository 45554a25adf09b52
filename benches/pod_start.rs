//! Figures, not a test: pod start latency for 1, 10 and 30 static pods (manifest file
//! written → container started, images present), and the agent's RSS and CPU at idle
//! with 0 and 30 pods. Runs the release `nodelet` binary against real containerd, in
//! the same private world the end-to-end tests use.
//!
//! `NODELET_TEST_CONTAINERD=$(scripts/containerd-private.sh start) cargo bench --bench pod_start`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use support::{BUSYBOX, World, container_status, phase};

fn manifest(i: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: bench-{i}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
    )
}

fn running(p: &Pod) -> bool {
    phase(p) == "Running" && container_status(p, "main").is_some_and(|c| c.ready)
}

/// RSS in KiB and CPU time in nanoseconds, summed over the agent's threads
/// (`schedstat` counts nanoseconds; `stat`'s clock ticks are too coarse at idle).
fn proc_stats(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cpu_ns = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    (rss_kb, cpu_ns)
}

async fn idle(w: &World, label: &str) {
    let pid = w.agent.as_ref().map_or(0, std::process::Child::id);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, t0) = proc_stats(pid);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (rss, t1) = proc_stats(pid);
    let cpu = t1.saturating_sub(t0) as f64 / 1e9 / start.elapsed().as_secs_f64() * 100.0;
    println!(
        "idle with {label}: agent RSS {:.1} MiB, CPU {cpu:.3}% of one core (over 30 s)",
        rss as f64 / 1024.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("pod start latency: manifest file written -> container started (images present)");
    for n in [1usize, 10, 30] {
        let mut w = World::new().await;
        w.log_filter = "info".into();
        w.start_agent().await;
        if n == 30 {
            idle(&w, "0 pods").await;
        }
        let written = jiff::Timestamp::now();
        for i in 0..n {
            w.write_manifest(&format!("bench-{i}.yaml"), &manifest(i));
        }
        let pods = support::wait_for("all pods running", Duration::from_secs(300), || {
            let w = &w;
            async move {
                let pods = w.pods().await;
                (pods.len() == n && pods.iter().all(running)).then_some(pods)
            }
        })
        .await;
        // From the moment the files were written to each container's start as recorded
        // in containerd (nanoseconds; the API's startedAt has whole seconds only).
        use nodelet_cri::runtime::Runtime as _;
        let written = std::time::SystemTime::from(written);
        let uids: Vec<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let containers = w.runtime().await.list_containers(None).await.expect("list");
        let mut lat: Vec<Duration> = containers
            .iter()
            .filter(|c| uids.contains(&c.pod_uid))
            .filter_map(|c| c.started_at?.duration_since(written).ok())
            .collect();
        lat.sort();
        let ms = |d: Option<&Duration>| d.copied().unwrap_or_default().as_secs_f64() * 1e3;
        println!(
            "  {n:>2} pods: file written -> container started: first {:>7.1} ms, median {:>7.1} ms, all {:>7.1} ms",
            ms(lat.first()),
            ms(lat.get(lat.len() / 2)),
            ms(lat.last()),
        );
        if n == 30 {
            idle(&w, "30 pods").await;
        }
        w.stop_agent();
    }
}
