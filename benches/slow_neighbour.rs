//! Figures, not a test: how long a new pod waits while a big pod is being deleted
//! (issue 10: with the old single-loop manager, a one-container pod written while a
//! 300-container pod was deleted did not appear in `/pods` for about 100 s).
//!
//! A pod with `NODELET_BENCH_CONTAINERS` containers (default 300) is started; then its
//! manifest is removed and a one-container pod's manifest written at the same moment.
//! Printed: the time until the new pod is listed, until it runs, and until the big
//! pod is gone.
//!
//! `NODELET_TEST_CONTAINERD=$(scripts/containerd-private.sh start) cargo bench --bench slow_neighbour`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{BUSYBOX, World, phase};

fn big_pod(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: big}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n",
    );
    for i in 0..n {
        y.push_str(&format!(
            "  - name: c{i}\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
        ));
    }
    y
}

fn small_pod() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: small}}\nspec:\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '3600']\n"
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("NODELET_BENCH_CONTAINERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut w = World::new().await;
    w.log_filter = "info".into();
    w.start_agent().await;
    w.write_manifest("big.yaml", &big_pod(n));
    let started = Instant::now();
    support::wait_for("the big pod running", Duration::from_secs(900), || {
        let w = &w;
        async move {
            let pods = w.pods().await;
            pods.iter()
                .any(|p| {
                    phase(p) == "Running"
                        && p.status
                            .as_ref()
                            .and_then(|s| s.container_statuses.as_ref())
                            .is_some_and(|cs| cs.len() == n && cs.iter().all(|c| c.ready))
                })
                .then_some(())
        }
    })
    .await;
    println!(
        "{n} containers running after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    std::fs::remove_file(w.manifests.join("big.yaml")).expect("remove big manifest");
    w.write_manifest("small.yaml", &small_pod());
    let t0 = Instant::now();
    let (mut listed, mut running, mut gone) = (None, None, None);
    while (listed.is_none() || running.is_none() || gone.is_none())
        && t0.elapsed() < Duration::from_secs(600)
    {
        let pods = w.pods().await;
        let small = pods.iter().find(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("small"))
        });
        if listed.is_none() && small.is_some() {
            listed = Some(t0.elapsed());
        }
        if running.is_none() && small.is_some_and(|p| phase(p) == "Running") {
            running = Some(t0.elapsed());
        }
        if gone.is_none()
            && !pods.iter().any(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("big"))
            })
        {
            gone = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s =
        |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
    println!(
        "while a {n}-container pod is deleted: new pod listed after {}, running after {}; big pod gone after {}",
        s(listed),
        s(running),
        s(gone)
    );
    w.stop_agent();
}
