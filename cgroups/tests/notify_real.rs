//! The memory notifiers against the real kernel. They need root, and a v1 memory
//! hierarchy (v1) or a cgroup2 mount with PSI (v2); without them they fail saying
//! which is missing, they never pass without running.
//!
//! - v1: a cgroup `/nodelet-notify-<pid>` in the memory hierarchy, a threshold of its
//!   usage + 20 MiB, and a shell child that moves itself in and writes 60 MB into a
//!   tmpfs file (`/dev/shm`), which is charged to the cgroup and only grows: the
//!   notification must arrive, and usage must be past the threshold when it does. The
//!   latency from the child's start is printed. (Holding the 60 MB in a shell variable
//!   instead made the test flaky: the shell grows its buffer by reallocation, so usage
//!   crossed the threshold while old and new buffers both existed and fell back below
//!   it, and the kernel signals crossings in both directions.)
//! - v2: on a cgroup2 mount (the host's `/sys/fs/cgroup/unified`, or `/sys/fs/cgroup` on
//!   a unified host), a PSI trigger on a cgroup's `memory.pressure` must register and
//!   its fd be pollable.
//!
//! Every cgroup made is removed by a guard, even when the test fails; the child is
//! killed by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nodelet_cgroups::notify::{MemoryNotifier, PsiTrigger, usage_threshold};
use nodelet_cgroups::{CgroupVersion, Layout};

const MI: u64 = 1024 * 1024;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Removes the cgroup directory on drop (retrying while its last task exits).
struct CgroupGuard(PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for _ in 0..100 {
            match std::fs::remove_dir(&self.0) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

/// Removes a file on drop (the tmpfs file whose pages are charged to the cgroup).
struct FileGuard(PathBuf);

impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Kills and reaps the child on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .expect("read cgroup file")
        .trim()
        .parse()
        .expect("number")
}

#[tokio::test(flavor = "current_thread")]
async fn v1_threshold_notification_arrives() {
    assert!(
        is_root(),
        "this test needs root: it creates a memory cgroup"
    );
    let layout = Layout::detect().expect("layout");
    assert_eq!(
        layout.version(),
        CgroupVersion::V1,
        "this test registers a v1 memory threshold; the host runs cgroup v2"
    );
    let root = layout
        .dir("memory", "/")
        .expect("this test needs the v1 memory hierarchy mounted");
    let cgroup = format!("/nodelet-notify-{}", std::process::id());
    let dir = root.join(cgroup.trim_start_matches('/'));
    std::fs::create_dir(&dir).expect("create cgroup");
    let _cg = CgroupGuard(dir.clone());

    let usage = read_u64(&dir.join("memory.usage_in_bytes"));
    let threshold = usage + 20 * MI;
    let mut notifier =
        MemoryNotifier::threshold_v1(&layout, &cgroup, threshold).expect("register threshold");
    // Re-arming replaces the registration (upstream re-registers every refresh).
    notifier.rearm_v1(threshold).expect("re-arm");

    let procs = dir.join("cgroup.procs");
    let shm = PathBuf::from(format!("/dev/shm/nodelet-notify-{}", std::process::id()));
    // Dropped before the cgroup guard: the file's pages are uncharged first.
    let _shm = FileGuard(shm.clone());
    let script = format!(
        "echo $$ > {}; head -c 60000000 /dev/zero > {}; sleep 30",
        procs.display(),
        shm.display()
    );
    let start = Instant::now();
    let child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .spawn()
        .expect("spawn child");
    let _child = ChildGuard(child);

    let got = tokio::time::timeout(Duration::from_secs(60), notifier.notified())
        .await
        .expect("notification within 60s")
        .expect("notification");
    let latency = start.elapsed();
    assert!(got >= 1);
    let now_usage = read_u64(&dir.join("memory.usage_in_bytes"));
    println!(
        "v1 memcg threshold {} MiB: notified after {:.1} ms (usage now {} MiB, {got} event(s))",
        threshold / MI,
        latency.as_secs_f64() * 1000.0,
        now_usage / MI
    );
    assert!(
        now_usage >= threshold,
        "notified before usage crossed the threshold"
    );
    // The arithmetic the eviction manager re-arms with.
    assert_eq!(
        usage_threshold(1000 * MI, 100 * MI, 300 * MI, 200 * MI),
        1000 * MI
    );
}

#[tokio::test(flavor = "current_thread")]
async fn v2_psi_trigger_registers() {
    assert!(
        is_root(),
        "this test needs root: it creates a cgroup2 cgroup"
    );
    let unified = match Layout::detect().expect("layout").version() {
        CgroupVersion::V2 => PathBuf::from("/sys/fs/cgroup"),
        CgroupVersion::V1 => PathBuf::from("/sys/fs/cgroup/unified"),
    };
    assert!(
        unified.join("cgroup.procs").exists(),
        "this test needs a cgroup2 mount at {}",
        unified.display()
    );
    let cgroup = format!("/nodelet-notify-{}", std::process::id());
    let dir = unified.join(cgroup.trim_start_matches('/'));
    std::fs::create_dir(&dir).expect("create cgroup");
    let _cg = CgroupGuard(dir.clone());
    assert!(
        dir.join("memory.pressure").exists(),
        "{} has no memory.pressure: this test needs a kernel with PSI",
        dir.display()
    );
    let layout = Layout::v2_at(&unified);
    let mut notifier = MemoryNotifier::psi_v2(&layout, &cgroup, PsiTrigger::default())
        .expect("register psi trigger");
    // Nothing runs in the cgroup: the fd is pollable and quiet.
    let waited = tokio::time::timeout(Duration::from_millis(300), notifier.notified()).await;
    match waited {
        Err(_elapsed) => println!(
            "v2 psi trigger registered on {}; no stall seen",
            dir.display()
        ),
        Ok(r) => {
            r.expect("poll psi fd");
            println!("v2 psi trigger registered on {}; fired", dir.display());
        }
    }
}
