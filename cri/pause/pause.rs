//! The infra container's process: holds a pod's namespaces open and does nothing else.
//!
//! A Rust port of Kubernetes' `build/pause/linux/pause.c`. It exits 0 on SIGINT or
//! SIGTERM, reaps every zombie it inherits (it is PID 1 of the pod's PID namespace when
//! the pod shares one), and otherwise sleeps in `pause(2)`.
//!
//! Built by `cri/build.rs` with `rustc` directly, as a standalone static binary: no
//! crates, only `std` and the few libc functions declared below, so it runs in an image
//! that holds nothing but `/pause`.

#![no_main]

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;
const STDERR: c_int = 2;
/// `SIG_ERR` is `(sighandler_t) -1`.
const SIG_ERR: usize = usize::MAX;

extern "C" {
    /// glibc's `signal` has BSD semantics: the handler stays installed and interrupted
    /// system calls restart, which is what pause.c gets from `sigaction` with no flags.
    fn signal(signum: c_int, handler: usize) -> usize;
    fn pause() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn getpid() -> c_int;
    fn write(fd: c_int, buf: *const u8, count: usize) -> isize;
    fn _exit(status: c_int) -> !;
}

/// Writes to stderr with `write(2)` only, which is async-signal-safe (std's `eprintln!`
/// takes a lock and may allocate, so it must not run in a signal handler).
fn write_stderr(msg: &[u8]) {
    // SAFETY: `msg` is a valid buffer of `msg.len()` bytes for the whole call; a short
    // or failed write to stderr is not worth handling for a diagnostic line.
    unsafe {
        write(STDERR, msg.as_ptr(), msg.len());
    }
}

extern "C" fn sigdown(signo: c_int) {
    let msg: &[u8] = match signo {
        SIGINT => b"Shutting down, got signal: Interrupt\n",
        SIGTERM => b"Shutting down, got signal: Terminated\n",
        _ => b"Shutting down, got signal\n",
    };
    write_stderr(msg);
    // SAFETY: `_exit` is async-signal-safe and never returns; nothing needs flushing.
    unsafe { _exit(0) }
}

extern "C" fn sigreap(_signo: c_int) {
    // SAFETY: a null status pointer is allowed by waitpid(2); WNOHANG makes it return 0
    // once no exited child is left, and -1 (ECHILD) when there are no children at all.
    while unsafe { waitpid(-1, std::ptr::null_mut(), WNOHANG) } > 0 {}
}

/// The C `main`, not Rust's: std's runtime start-up (argument parsing, stdout locks,
/// the panic machinery it sets up) would triple the binary for nothing pause uses.
#[no_mangle]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    for i in 1..usize::try_from(argc).unwrap_or(0) {
        // SAFETY: the C runtime passes `argc` valid NUL-terminated strings in `argv`.
        let arg = unsafe { CStr::from_ptr(*argv.add(i)) };
        if arg.to_bytes().eq_ignore_ascii_case(b"-v") {
            let version = concat!("pause.rs (nodelet) ", env!("NODELET_PAUSE_VERSION"), "\n");
            // SAFETY: a valid buffer of the given length.
            unsafe { write(1, version.as_ptr(), version.len()) };
            return 0;
        }
    }

    // SAFETY: getpid(2) has no preconditions and cannot fail.
    if unsafe { getpid() } != 1 {
        // Not an error: pause is also used outside of infra containers.
        write_stderr(b"Warning: pause should be the first process\n");
    }

    let handlers: [(c_int, extern "C" fn(c_int), i32); 3] = [
        (SIGINT, sigdown, 1),
        (SIGTERM, sigdown, 2),
        (SIGCHLD, sigreap, 3),
    ];
    for (signum, handler, code) in handlers {
        // SAFETY: the handlers only call async-signal-safe functions (write, _exit,
        // waitpid) and touch no Rust state.
        if unsafe { signal(signum, handler as usize) } == SIG_ERR {
            return code;
        }
    }

    loop {
        // SAFETY: pause(2) only sleeps until a signal handler has run.
        unsafe {
            pause();
        }
    }
}
