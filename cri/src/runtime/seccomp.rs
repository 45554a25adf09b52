//! Seccomp profiles for containers: the runtime's default (`RuntimeDefault`) and
//! profiles read from the node (`Localhost`).
//!
//! The default profile is the one containerd's CRI plugin applies
//! (`contrib/seccomp/seccomp_default.go`), which tracks moby's
//! `profiles/seccomp/default.json`: deny with `EPERM` by default, an allow-list of
//! ordinary syscalls, per-architecture additions, rules that only apply with a
//! capability in the bounding set (`CAP_SYS_ADMIN` allows `mount`, `unshare`,
//! `setns`…; `CAP_SYS_PTRACE` allows `kcmp`, `pidfd_getfd`…), and argument
//! rules for `personality`, `socket` and `clone`. No crate ships this data, so
//! `seccomp_default.json` holds it in moby's format (`includes`/`excludes` by
//! architecture and capability), transcribed from moby's `default.json`; this
//! module filters it the way moby's `setupSeccomp` does. Moby's `minKernel: 4.8` on
//! the unprivileged `ptrace`/`process_vm_*` rule is taken as met (older kernels let
//! ptrace bypass seccomp, which is why moby gates it; nodelet doesn't support them).
//! Older containerd releases (before 1.5) gated `ptrace` on `CAP_SYS_PTRACE` too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;

use oci_spec::runtime::{Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSyscall};
use serde::Deserialize;

/// Errors reading a seccomp profile from the node.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile file could not be read.
    #[error("seccomp profile {path}: {source}")]
    Read {
        /// The profile file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The profile file is not an OCI `LinuxSeccomp` JSON document.
    #[error("seccomp profile {path}: {source}")]
    Parse {
        /// The profile file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Which seccomp filter a container runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// No filter (`Unconfined`, and upstream's default without `--seccomp-default`).
    #[default]
    Unconfined,
    /// The runtime's default profile ([`default_profile`]).
    RuntimeDefault,
    /// An OCI seccomp JSON file on the node (`<root-dir>/seccomp/<localhostProfile>`).
    Localhost(PathBuf),
}

/// The embedded default profile, in moby's format.
const DEFAULT_JSON: &str = include_str!("seccomp_default.json");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    arch_map: Vec<ArchMap>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    /// Go's name for the architecture, what `includes.arches` lists.
    goarch: String,
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    #[serde(flatten)]
    syscall: LinuxSyscall,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
struct Filter {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
}

/// Parsed once; the file is part of the binary and a unit test parses it.
static DEFAULT: LazyLock<Result<Profile, String>> =
    LazyLock::new(|| serde_json::from_str(DEFAULT_JSON).map_err(|e| e.to_string()));

/// Go's `GOARCH` for a Rust target architecture (`std::env::consts::ARCH`), the
/// names moby's profile filters on.
fn goarch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "loongarch64" => "loong64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn cap_of(name: &str) -> Option<Capability> {
    let bare = name.strip_prefix("CAP_").unwrap_or(name);
    Capability::from_str(bare).ok()
}

/// The runtime's default seccomp profile for a container on `arch` (a Rust target
/// architecture name, as `std::env::consts::ARCH`) whose bounding capability set is
/// `caps`.
///
/// An architecture the profile doesn't know gets no `architectures` list (the
/// runtime then filters the native one only) and none of the per-arch rules.
pub fn default_profile(arch: &str, caps: &HashSet<Capability>) -> LinuxSeccomp {
    let mut out = LinuxSeccomp::default();
    out.set_default_action(LinuxSeccompAction::ScmpActErrno);
    out.set_default_errno_ret(Some(libc::EPERM as u32));
    let profile = match &*DEFAULT {
        Ok(p) => p,
        // Unreachable while `seccomp_default.json` parses (unit-tested); deny
        // everything rather than run unconfined if it ever didn't.
        Err(_) => return out,
    };
    out.set_default_action(profile.default_action);
    out.set_default_errno_ret(profile.default_errno_ret);
    let go = goarch(arch);
    if let Some(m) = profile.arch_map.iter().find(|m| m.goarch == go) {
        let mut arches = vec![m.architecture];
        arches.extend(m.sub_architectures.iter().copied());
        out.set_architectures(Some(arches));
    }
    let has = |name: &String| cap_of(name).is_some_and(|c| caps.contains(&c));
    let syscalls = profile
        .syscalls
        .iter()
        .filter(|r| {
            !r.excludes.arches.iter().any(|a| a == go)
                && !r.excludes.caps.iter().any(has)
                && (r.includes.arches.is_empty() || r.includes.arches.iter().any(|a| a == go))
                && r.includes.caps.iter().all(has)
        })
        .map(|r| r.syscall.clone())
        .collect();
    out.set_syscalls(Some(syscalls));
    out
}

/// Reads a `Localhost` profile: an OCI `LinuxSeccomp` JSON document (the
/// `linux.seccomp` section of a runtime spec, as the kubelet and containerd expect).
///
/// # Errors
/// [`SeccompError::Read`] if the file can't be read, [`SeccompError::Parse`] if it
/// isn't a valid profile.
pub fn load_localhost(path: &Path) -> Result<LinuxSeccomp, SeccompError> {
    let text = std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| SeccompError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Whether `profile` lets `name` through unconditionally (an `SCMP_ACT_ALLOW` rule
/// without argument filters). For tests and diagnostics.
pub fn allows(profile: &LinuxSeccomp, name: &str) -> bool {
    profile.syscalls().iter().flatten().any(|s| {
        s.action() == LinuxSeccompAction::ScmpActAllow
            && s.args().as_ref().is_none_or(Vec::is_empty)
            && s.names().iter().any(|n| n == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(names: &[&str]) -> HashSet<Capability> {
        names.iter().filter_map(|n| cap_of(n)).collect()
    }

    #[test]
    fn embedded_profile_parses() {
        let p = DEFAULT.as_ref().expect("seccomp_default.json parses");
        assert!(p.syscalls.len() > 40);
    }

    #[test]
    fn default_denies_with_eperm_and_allows_ordinary_syscalls() {
        let p = default_profile("x86_64", &HashSet::new());
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(1));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        for name in ["read", "write", "execve", "openat", "arch_prctl", "futex"] {
            assert!(allows(&p, name), "{name} allowed");
        }
        for name in ["mount", "unshare", "setns", "kcmp", "reboot", "kexec_load"] {
            assert!(!allows(&p, name), "{name} denied");
        }
        // Plain clone only without namespace flags; clone3 answers ENOSYS.
        let clone = p
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names() == &["clone"])
            .expect("clone rule");
        assert_eq!(clone.args().as_ref().map(Vec::len), Some(1));
        let clone3 = p
            .syscalls()
            .iter()
            .flatten()
            .find(|s| s.names() == &["clone3"])
            .expect("clone3 rule");
        assert_eq!(clone3.errno_ret(), Some(38));
        let personalities = p
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| s.names() == &["personality"])
            .count();
        assert_eq!(personalities, 5);
    }

    #[test]
    fn capabilities_add_rules() {
        let p = default_profile("x86_64", &caps(&["CAP_SYS_ADMIN", "SYS_PTRACE"]));
        for name in ["mount", "umount2", "unshare", "setns", "clone", "clone3"] {
            assert!(allows(&p, name), "{name} allowed with CAP_SYS_ADMIN");
        }
        for name in ["ptrace", "process_vm_readv", "kcmp"] {
            assert!(allows(&p, name), "{name} allowed with CAP_SYS_PTRACE");
        }
        assert!(!p.syscalls().iter().flatten().any(|s| s.names() == &["clone3"]
            && s.action() == LinuxSeccompAction::ScmpActErrno));
        assert!(!allows(&p, "reboot"));
    }

    #[test]
    fn aarch64_gets_its_arches_and_calls() {
        let p = default_profile("aarch64", &HashSet::new());
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        assert!(allows(&p, "set_tls"));
        assert!(!allows(&p, "arch_prctl"));
    }

    #[test]
    fn localhost_profile_is_read_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.json");
        std::fs::write(
            &path,
            r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        )
        .expect("write");
        let p = load_localhost(&path).expect("loads");
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActLog);
        assert_eq!(p.syscalls().as_ref().map(Vec::len), Some(1));

        let missing = dir.path().join("nope.json");
        let err = load_localhost(&missing).expect_err("missing file");
        assert!(matches!(err, SeccompError::Read { .. }));
        assert!(err.to_string().contains("nope.json"), "{err}");

        std::fs::write(&path, "{not json").expect("write");
        assert!(matches!(
            load_localhost(&path),
            Err(SeccompError::Parse { .. })
        ));
    }
}
