//! Usage stats read from this host's real cgroup v1 hierarchies: a child process that
//! fills 30 MB of memory runs in a cgroup the test creates (`/nodelet-stats-<pid>` in
//! the cpu, cpuacct, memory and pids hierarchies), and its figures must show it.
//!
//! Needs root and cgroup v1 with those controllers mounted; without them it fails
//! saying which is missing (it never passes without running). The cgroups are
//! removed and the child killed (by PID) by a guard, even when an assertion fails.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nodelet_cgroups::{CgroupVersion, Layout, StatsError, node_memory, stats};

const CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];

/// Bytes the child keeps in a shell variable.
const FILL: u64 = 30_000_000;

/// The test's cgroup in each hierarchy, and the child in it. Drop kills the child
/// (by its PID) and reaps it, kills any process left in the cgroup (the child's
/// descendants), then removes the cgroup directories.
struct Guard {
    dirs: Vec<PathBuf>,
    child: Option<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // kill(2) by PID of a process this test spawned and has not reaped.
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything still in the cgroup descends from that child (only it was moved
        // in): kill those by PID too, or the directories stay busy.
        for d in &self.dirs {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for d in &self.dirs {
            // The kernel may report EBUSY for a moment after the last task exits.
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

/// The host layout; fails the test saying what this host lacks.
fn usable_layout() -> Layout {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it creates cgroups in the host's v1 hierarchies"
    );
    let layout = Layout::detect().unwrap_or_else(|e| panic!("no cgroup layout here: {e}"));
    assert_eq!(
        layout.version(),
        CgroupVersion::V1,
        "this test reads cgroup v1 files; the host runs cgroup v2"
    );
    let mounted: Vec<&str> = layout.v1_controllers().collect();
    if let Some(c) = CONTROLLERS.iter().find(|c| !mounted.contains(c)) {
        panic!("this test needs the v1 {c} controller mounted; it is not");
    }
    layout
}

#[test]
fn a_child_filling_memory_shows_in_its_cgroup() {
    let layout = usable_layout();
    let cgroup = format!("/nodelet-stats-{}", std::process::id());
    let mut guard = Guard {
        dirs: Vec::new(),
        child: None,
    };
    for c in CONTROLLERS {
        let d = layout.dir(c, &cgroup).expect("controller is mounted");
        std::fs::create_dir(&d).expect("create the test cgroup");
        guard.dirs.push(d);
    }

    // Nothing allocated before it is in the cgroup: it waits for a line on stdin.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"read go; x=$(head -c 30000000 /dev/zero | tr "\0" a); echo ready; sleep 60"#)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    guard.child = Some(child);

    let before = stats::read(&layout, &cgroup).expect("stats of the empty cgroup");
    assert_eq!(before.pids, Some(0));
    assert_eq!(before.memory_usage, Some(0));

    for d in &guard.dirs {
        std::fs::write(d.join("cgroup.procs"), pid.to_string()).expect("move the child");
    }
    writeln!(stdin, "go").expect("start the child");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the child's output");
    assert_eq!(line.trim(), "ready");

    let s = stats::read(&layout, &cgroup).expect("stats");
    eprintln!("{s:?}");
    let usage = s.memory_usage.expect("usage");
    let ws = s.memory_working_set.expect("working set");
    assert!(usage >= FILL, "usage {usage} < {FILL}");
    assert!(ws >= FILL && ws <= usage, "working set {ws}, usage {usage}");
    assert!(s.memory_rss.expect("rss") >= FILL);
    assert!(s.page_faults.expect("page faults") > 0);
    assert!(s.major_page_faults.is_some());
    assert!(s.cpu_usage_nanos.expect("cpu") > 0);
    assert!(s.pids.expect("pids") >= 1);
    assert_eq!(s.memory_limit, None, "no limit was set");
    assert_eq!(s.oom_kills, Some(0));

    // A limit shows as such.
    let mem_dir = layout.dir("memory", &cgroup).expect("memory");
    std::fs::write(mem_dir.join("memory.limit_in_bytes"), "1073741824").expect("set a limit");
    let s = stats::read(&layout, &cgroup).expect("stats");
    assert_eq!(s.memory_limit, Some(1_073_741_824));

    // The node's memory, from the real root cgroup and /proc/meminfo.
    let n = node_memory(&layout, std::path::Path::new("/proc")).expect("node memory");
    eprintln!("{n:?}");
    assert!(n.capacity > 0);
    assert!(n.working_set <= n.usage && n.working_set >= FILL);
    assert_eq!(n.available, n.capacity.saturating_sub(n.working_set));

    drop(guard);
    assert!(matches!(
        stats::read(&layout, &cgroup),
        Err(StatsError::Gone { .. })
    ));
}
