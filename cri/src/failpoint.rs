//! Crash points for tests: a debug build of the agent started with
//! `NODELET_FAILPOINT=<name>[,<name>…]` kills itself with SIGKILL when it reaches
//! one of the named points, so a test can crash it at an exact step of sandbox or
//! container creation instead of guessing with sleeps.
//!
//! Release builds compile [`hit`] to nothing: the variable is never read there.

/// The environment variable naming the points to crash at.
pub const ENV: &str = "NODELET_FAILPOINT";

/// Crash here if this is a debug build and `name` is listed in [`ENV`]: SIGKILL, as
/// an operator's `kill -9` or the OOM killer would, so no destructor or `Drop` runs.
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var(ENV).is_ok_and(|v| v.split(',').any(|p| p.trim() == name)) {
        eprintln!("failpoint {name}: killing the agent");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
