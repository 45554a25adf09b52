//! What reading one pod's usage stats costs on this host's real cgroup v1 hierarchies:
//! a pod cgroup with two container cgroups (each running a `sleep` this bench starts),
//! created as `/nodelet-stats-bench-<pid>/pod{,/c1,/c2}` in the cpu, cpuacct, memory and
//! pids hierarchies. Prints wall-clock and CPU time per pod read, and the CPU a stats
//! loop would spend per pod at 10 s and 1 s sampling intervals. Never asserts on time.
//!
//! Needs root and cgroup v1; prints why and exits otherwise. The cgroups are removed
//! and the children killed (by PID) when it ends, even on panic.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nodelet_cgroups::{CgroupVersion, Layout, stats};

const CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];
const ROUNDS: u32 = 5_000;

/// Created directories (parents first) and started children; Drop undoes both.
struct Guard {
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for child in &mut self.children {
            // kill(2) by PID of a process this bench spawned and has not reaped.
            let _ = child.kill();
            let _ = child.wait();
        }
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            if d.exists() {
                eprintln!("could not remove {}", d.display());
            }
        }
    }
}

/// User + system CPU time this process has used (nix's `resource` feature isn't
/// enabled in this workspace, so libc's clock directly).
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(
        ts.tv_sec.unsigned_abs(),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("stats_read: skipped: not root");
        return;
    }
    let layout = Layout::detect().expect("cgroup layout");
    if layout.version() != CgroupVersion::V1 {
        println!("stats_read: skipped: the host runs cgroup v2");
        return;
    }
    let mounted: Vec<&str> = layout.v1_controllers().collect();
    if let Some(c) = CONTROLLERS.iter().find(|c| !mounted.contains(c)) {
        println!("stats_read: skipped: the {c} controller is not mounted");
        return;
    }

    let top = format!("/nodelet-stats-bench-{}", std::process::id());
    let pod = format!("{top}/pod");
    let containers = [format!("{pod}/c1"), format!("{pod}/c2")];
    let mut guard = Guard {
        dirs: Vec::new(),
        children: Vec::new(),
    };
    for cg in [&top, &pod, &containers[0], &containers[1]] {
        for c in CONTROLLERS {
            let d = layout.dir(c, cg).expect("mounted");
            std::fs::create_dir(&d).expect("create a bench cgroup");
            guard.dirs.push(d);
        }
    }
    for cg in &containers {
        let child = Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        guard.children.push(child);
        for c in CONTROLLERS {
            let d = layout.dir(c, cg).expect("mounted");
            std::fs::write(d.join("cgroup.procs"), pid.to_string()).expect("move sleep");
        }
    }

    let read_pod = || {
        black_box(stats::read(&layout, &pod).expect("pod stats"));
        for c in &containers {
            black_box(stats::read(&layout, c).expect("container stats"));
        }
    };
    for _ in 0..200 {
        read_pod();
    }
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    for _ in 0..ROUNDS {
        read_pod();
    }
    let wall = t0.elapsed();
    let cpu = cpu_time() - cpu0;

    let wall_ns = wall.as_nanos() / u128::from(ROUNDS);
    let cpu_ns = cpu.as_nanos() / u128::from(ROUNDS);
    println!("stats_read: one pod (pod cgroup + 2 container cgroups, cgroup v1), {ROUNDS} reads");
    println!(
        "  wall per pod read: {wall_ns} ns ({} ns per cgroup)",
        wall_ns / 3
    );
    println!("  cpu  per pod read: {cpu_ns} ns (user+sys)");
    // Where the time goes: each file of one container cgroup, read on its own.
    let files = [
        ("cpuacct", "cpuacct.usage"),
        ("memory", "memory.usage_in_bytes"),
        ("memory", "memory.stat"),
        ("memory", "memory.limit_in_bytes"),
        ("memory", "memory.oom_control"),
        ("pids", "pids.current"),
    ];
    for (controller, file) in files {
        let path = layout
            .dir(controller, &containers[0])
            .expect("mounted")
            .join(file);
        let t = Instant::now();
        for _ in 0..1000 {
            black_box(std::fs::read_to_string(&path).expect("read a cgroup file"));
        }
        println!(
            "  {file:<24} {:>8} ns per read",
            t.elapsed().as_nanos() / 1000
        );
    }
    for interval_s in [10u128, 1] {
        let per_sec = cpu_ns / interval_s;
        // ns of CPU per second of wall time = parts per billion of one core.
        println!(
            "  at a {interval_s:>2} s interval: {per_sec} ns CPU per pod per second = {:.5}% of one core; 100 pods: {:.3}%",
            per_sec as f64 / 1e7,
            per_sec as f64 * 100.0 / 1e7,
        );
    }
}
