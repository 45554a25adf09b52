//! OCI runtime specs for pause and app containers, built with `oci-spec` from the
//! sandbox and container configuration and the image's config, as containerd's CRI
//! plugin builds them. Pure functions: what reaches runc is unit-tested here.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilities, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType,
    LinuxResources, Mount as OciMount, Process, RootBuilder, Spec, User, get_default_maskedpaths,
    get_default_mounts, get_default_readonly_paths,
};

use super::seccomp::{self, SeccompMode};
use super::{ContainerConfig, Mount, RuntimeError, SandboxConfig, SandboxInfo, keys};
use crate::image::ImageRuntimeConfig;

/// The capabilities a non-privileged container gets, containerd's default set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The files every container of a pod gets from the sandbox, unless a volume mount
/// covers the same path (as upstream, where a user mount wins).
pub const POD_FILES: &[(&str, &str)] = &[
    ("/etc/hosts", "hosts"),
    ("/etc/resolv.conf", "resolv.conf"),
    ("/etc/hostname", "hostname"),
];

/// Builds the pause container's spec.
///
/// # Errors
/// [`RuntimeError::Spec`] if `oci-spec` rejects a value.
pub fn sandbox_spec(
    config: &SandboxConfig,
    id: &str,
    netns: Option<&Path>,
    image: &ImageRuntimeConfig,
) -> Result<Spec, RuntimeError> {
    let err = |reason: String| RuntimeError::Spec {
        name: "pause".to_owned(),
        reason,
    };
    let mut args: Vec<String> = image.entrypoint.clone();
    args.extend(image.cmd.iter().cloned());
    if args.is_empty() {
        args.push("/pause".to_owned());
    }
    let mut process = Process::default();
    process.set_args(Some(args));
    process.set_env(Some(image.env.clone()));
    process.set_cwd(PathBuf::from("/"));
    process.set_no_new_privileges(Some(true));
    process.set_rlimits(None);
    process.set_capabilities(Some(capabilities(&HashSet::new(), &[], &[], false)));
    // The pause image names its user (65535, as upstream's); run as that.
    let no_overrides = ContainerConfig {
        name: "pause".to_owned(),
        attempt: 0,
        image: String::new(),
        command: vec![],
        args: vec![],
        working_dir: None,
        env: vec![],
        mounts: vec![],
        log_path: PathBuf::new(),
        security: super::SecurityConfig::default(),
        resources: super::ContainerResources::default(),
    };
    process.set_user(user(&no_overrides, image).map_err(err)?);

    let mut namespaces = vec![ns(LinuxNamespaceType::Mount, None)];
    if !config.host_pid {
        namespaces.push(ns(LinuxNamespaceType::Pid, None));
    }
    if !config.host_ipc {
        namespaces.push(ns(LinuxNamespaceType::Ipc, None));
    }
    if !config.host_network {
        namespaces.push(ns(LinuxNamespaceType::Uts, None));
        namespaces.push(ns(LinuxNamespaceType::Network, netns));
    }
    let mut linux = linux_section(
        namespaces,
        config.cgroup_parent.as_deref(),
        id,
        false,
        false,
    )
    .map_err(|e| err(e.to_string()))?;
    if !config.sysctls.is_empty() {
        linux.set_sysctl(Some(config.sysctls.iter().cloned().collect()));
    }
    // As containerd's CRI plugin: the pause container gets the minimum CPU shares and
    // the OOM score of a guaranteed pod's infrastructure (the caller restricts it to
    // what the host allows).
    let pause_resources = super::ContainerResources {
        cpu_shares: Some(PAUSE_CPU_SHARES),
        oom_score_adj: Some(config.oom_score_adj.unwrap_or(PAUSE_OOM_SCORE_ADJ)),
        ..Default::default()
    };
    apply_resources(&mut linux, &pause_resources).map_err(|e| err(e.to_string()))?;
    process.set_oom_score_adj(pause_resources.oom_score_adj);

    let mut spec = Spec::default();
    spec.set_hostname((!config.host_network).then(|| config.hostname.clone()));
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(true)
            .build()
            .map_err(|e| err(e.to_string()))?,
    ));
    spec.set_mounts(Some(default_mounts()));
    spec.set_linux(Some(linux));
    spec.set_annotations(Some([(keys::SHIM_GROUP.to_owned(), id.to_owned())].into()));
    Ok(spec)
}

/// Builds an app container's spec, joining the sandbox's namespaces by path.
///
/// # Errors
/// [`RuntimeError::Spec`] for a command that resolves to nothing, a non-numeric image
/// user, an unknown capability, or a value `oci-spec` rejects.
pub fn container_spec(
    sandbox: &SandboxInfo,
    config: &ContainerConfig,
    image: &ImageRuntimeConfig,
    id: &str,
) -> Result<Spec, RuntimeError> {
    let err = |reason: String| RuntimeError::Spec {
        name: config.name.clone(),
        reason,
    };
    let args = command_line(config, image);
    if args.is_empty() {
        return Err(err(
            "no command specified: the pod gives no command and the image has no entrypoint or cmd"
                .to_owned(),
        ));
    }

    let mut process = Process::default();
    process.set_args(Some(args));
    process.set_env(Some(environment(&sandbox_hostname(sandbox), image, config)));
    let cwd = config
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_owned());
    process.set_cwd(PathBuf::from(cwd));
    process.set_user(user(config, image).map_err(err)?);
    process.set_no_new_privileges(Some(config.security.no_new_privileges));
    // Like the CRI plugin: no rlimits in the spec, the container inherits the shim's.
    process.set_rlimits(None);
    let sec = &config.security;
    let caps = if sec.privileged {
        capabilities(&HashSet::new(), &[], &[], true)
    } else {
        let defaults: HashSet<Capability> = DEFAULT_CAPABILITIES
            .iter()
            .filter_map(|c| Capability::from_str(c).ok())
            .collect();
        for c in sec.add_capabilities.iter().chain(&sec.drop_capabilities) {
            if !c.eq_ignore_ascii_case("ALL") && parse_capability(c).is_none() {
                return Err(err(format!("unknown capability {c:?}")));
            }
        }
        capabilities(
            &defaults,
            &sec.add_capabilities,
            &sec.drop_capabilities,
            false,
        )
    };
    let seccomp = if sec.privileged {
        None
    } else {
        match &sec.seccomp {
            SeccompMode::Unconfined => None,
            SeccompMode::RuntimeDefault => {
                let bounding = caps.bounding().clone().unwrap_or_default();
                Some(seccomp::default_profile(std::env::consts::ARCH, &bounding))
            }
            SeccompMode::Localhost(path) => {
                Some(seccomp::load_localhost(path).map_err(|e| err(e.to_string()))?)
            }
        }
    };
    process.set_capabilities(Some(caps));

    let pause_ns = |kind: &str| PathBuf::from(format!("/proc/{}/ns/{kind}", sandbox.pid));
    let net_path = sandbox.netns.clone().unwrap_or_else(|| pause_ns("net"));
    let mut namespaces = vec![
        ns(LinuxNamespaceType::Mount, None),
        ns(LinuxNamespaceType::Network, Some(&net_path)),
        ns(LinuxNamespaceType::Ipc, Some(&pause_ns("ipc"))),
        ns(LinuxNamespaceType::Uts, Some(&pause_ns("uts"))),
    ];
    if sandbox.share_pid {
        namespaces.push(ns(LinuxNamespaceType::Pid, Some(&pause_ns("pid"))));
    } else {
        namespaces.push(ns(LinuxNamespaceType::Pid, None));
    }
    let mut linux = linux_section(
        namespaces,
        sandbox.cgroup_parent.as_deref(),
        id,
        sec.privileged,
        sec.unmasked_proc,
    )
    .map_err(|e| err(e.to_string()))?;
    linux.set_seccomp(seccomp);
    apply_resources(&mut linux, &config.resources).map_err(|e| err(e.to_string()))?;
    process.set_oom_score_adj(config.resources.oom_score_adj);

    let mut spec = Spec::default();
    spec.set_hostname(None);
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(sec.readonly_rootfs)
            .build()
            .map_err(|e| err(e.to_string()))?,
    ));
    spec.set_mounts(Some(container_mounts(
        &sandbox.files_dir,
        &config.mounts,
        sec.privileged,
    )));
    spec.set_linux(Some(linux));
    spec.set_annotations(Some(
        [(keys::SHIM_GROUP.to_owned(), sandbox.id.clone())].into(),
    ));
    Ok(spec)
}

/// The process arguments, by Kubernetes' rules: `command` replaces the image's
/// entrypoint (and drops its cmd), `args` replaces the image's cmd.
pub fn command_line(config: &ContainerConfig, image: &ImageRuntimeConfig) -> Vec<String> {
    let mut out = if config.command.is_empty() {
        image.entrypoint.clone()
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        out.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        out.extend(image.cmd.iter().cloned());
    }
    out
}

/// The `PATH` of containerd's default spec (`oci.WithDefaultPathEnv`), which the
/// image's `Env` and the container's replace: an image without `PATH` still finds
/// `sh`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment: containerd's default `PATH`, `HOSTNAME`, then the image's, then
/// the container's, a later definition of a name replacing an earlier one in place
/// (containerd's CRI order, so `PATH` comes first whoever sets it).
pub fn environment(
    hostname: &str,
    image: &ImageRuntimeConfig,
    config: &ContainerConfig,
) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        if values.insert(k.to_owned(), v.to_owned()).is_none() {
            order.push(k.to_owned());
        }
    };
    set("PATH", DEFAULT_PATH);
    set("HOSTNAME", hostname);
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v);
    }
    for (k, v) in &config.env {
        set(k, v);
    }
    order
        .into_iter()
        .map(|k| {
            let v = values.get(&k).map(String::as_str).unwrap_or("");
            format!("{k}={v}")
        })
        .collect()
}

fn sandbox_hostname(sandbox: &SandboxInfo) -> String {
    std::fs::read_to_string(sandbox.files_dir.join("hostname"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The process user: the image's `User`, numeric by now (names were resolved from
/// the rootfs, `user::resolve_in_rootfs`), with `runAsUser`/`runAsGroup` replacing
/// its parts.
fn user(config: &ContainerConfig, image: &ImageRuntimeConfig) -> Result<User, String> {
    let (u, g) = image
        .user
        .split_once(':')
        .map_or((image.user.as_str(), None), |(u, g)| (u, Some(g)));
    let uid = match config.security.run_as_user {
        Some(uid) => uid,
        None if u.is_empty() => 0,
        None => u.parse().map_err(|_| {
            format!(
                "image user {:?} is not numeric; set securityContext.runAsUser",
                image.user
            )
        })?,
    };
    let gid = match (config.security.run_as_group, g) {
        (Some(gid), _) => gid,
        (None, None) => 0,
        (None, Some(g)) => g.parse().map_err(|_| {
            format!(
                "image group in user {:?} is not numeric; set securityContext.runAsGroup",
                image.user
            )
        })?,
    };
    let mut user = User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    if !config.security.supplemental_groups.is_empty() {
        user.set_additional_gids(Some(config.security.supplemental_groups.clone()));
    }
    Ok(user)
}

/// Parses `NET_ADMIN` or `CAP_NET_ADMIN` (any case).
pub fn parse_capability(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).ok()
}

/// Every capability runc knows, for privileged containers and `add: [ALL]`.
const ALL_CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETGID",
    "SETFCAP",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

fn all_capabilities() -> HashSet<Capability> {
    ALL_CAPABILITIES
        .iter()
        .filter_map(|c| Capability::from_str(c).ok())
        .collect()
}

fn capabilities(
    defaults: &HashSet<Capability>,
    add: &[String],
    drop: &[String],
    all: bool,
) -> LinuxCapabilities {
    let mut set = if all {
        all_capabilities()
    } else {
        defaults.clone()
    };
    if !all {
        if add.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
            set = all_capabilities();
        } else {
            set.extend(add.iter().filter_map(|c| parse_capability(c)));
        }
        if drop.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
            // Upstream: drop ALL, then add back what `add` names.
            set = add.iter().filter_map(|c| parse_capability(c)).collect();
        } else {
            for c in drop.iter().filter_map(|c| parse_capability(c)) {
                set.remove(&c);
            }
        }
    }
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(None);
    caps.set_ambient(None);
    caps
}

fn ns(typ: LinuxNamespaceType, path: Option<&Path>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ);
    n.set_path(path.map(Path::to_path_buf));
    n
}

/// The prefix of a container's systemd scope (`cri-containerd-<id>.scope`).
pub const SYSTEMD_SCOPE_PREFIX: &str = "cri-containerd";

/// runc's `cgroupsPath` for container `id` under the pod cgroup `parent`, as
/// containerd's CRI `getCgroupsPath`: a systemd slice (its last component ends in
/// `.slice`) gives runc's systemd form `<slice>:cri-containerd:<id>`; a cgroupfs
/// path gives `<parent>/<id>`.
#[must_use]
pub fn cgroups_path(parent: &str, id: &str) -> String {
    let parent = parent.trim_end_matches('/');
    let base = parent.rsplit('/').next().unwrap_or(parent);
    if base.ends_with(".slice") {
        format!("{base}:{SYSTEMD_SCOPE_PREFIX}:{id}")
    } else {
        format!("{parent}/{id}")
    }
}

/// Whether a `cgroupsPath` is runc's systemd form (`slice:prefix:name`), which runc
/// only understands with the systemd cgroup driver.
#[must_use]
pub fn is_systemd_cgroups_path(path: &str) -> bool {
    path.split(':').count() == 3 && !path.starts_with('/')
}

fn linux_section(
    namespaces: Vec<LinuxNamespace>,
    cgroup_parent: Option<&str>,
    id: &str,
    privileged: bool,
    unmasked_proc: bool,
) -> Result<oci_spec::runtime::Linux, oci_spec::OciSpecError> {
    let mut resources = LinuxResources::default();
    let mut dev = LinuxDeviceCgroup::default();
    dev.set_allow(privileged);
    dev.set_access(Some("rwm".to_owned()));
    resources.set_devices(Some(vec![dev]));
    let mut b = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources);
    if let Some(parent) = cgroup_parent {
        b = b.cgroups_path(PathBuf::from(cgroups_path(parent, id)));
    }
    if !privileged && !unmasked_proc {
        b = b
            .masked_paths(get_default_maskedpaths())
            .readonly_paths(get_default_readonly_paths());
    }
    b.build()
}

/// The pause container's CPU shares (containerd's `DefaultSandboxCPUshares`).
pub const PAUSE_CPU_SHARES: u64 = 2;
/// The pause container's OOM score adjustment (containerd's `defaultSandboxOOMAdj`).
pub const PAUSE_OOM_SCORE_ADJ: i32 = -998;

/// Writes a container's CPU, memory, hugepage and unified limits into the spec's
/// `linux.resources` (the device rules already there are kept).
fn apply_resources(
    linux: &mut oci_spec::runtime::Linux,
    r: &super::ContainerResources,
) -> Result<(), oci_spec::OciSpecError> {
    let mut resources = linux.resources().clone().unwrap_or_default();
    if r.cpu_shares.is_some() || r.cpu_quota.is_some() || r.cpu_period.is_some() {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(v) = r.cpu_shares {
            cpu = cpu.shares(v);
        }
        if let Some(v) = r.cpu_quota {
            cpu = cpu.quota(v);
        }
        if let Some(v) = r.cpu_period {
            cpu = cpu.period(v);
        }
        resources.set_cpu(Some(cpu.build()?));
    }
    if let Some(limit) = r.memory_limit {
        resources.set_memory(Some(LinuxMemoryBuilder::default().limit(limit).build()?));
    }
    if !r.hugepage_limits.is_empty() {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|(size, limit)| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(hugepage_size_name(*size))
                    .limit(i64::try_from(*limit).unwrap_or(i64::MAX))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        resources.set_hugepage_limits(Some(limits));
    }
    if !r.unified.is_empty() {
        resources.set_unified(Some(r.unified.iter().cloned().collect()));
    }
    linux.set_resources(Some(resources));
    Ok(())
}

/// A hugepage size as runc and the kernel's `hugetlb.<size>.*` files name it: `2MB`,
/// `1GB`, `64KB`.
fn hugepage_size_name(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let (mut value, mut unit) = (bytes, 0);
    while unit + 1 < UNITS.len() && value >= 1024 && value % 1024 == 0 {
        value /= 1024;
        unit += 1;
    }
    format!("{value}{}", UNITS[unit])
}

fn default_mounts() -> Vec<OciMount> {
    let mut mounts = get_default_mounts();
    let mut cgroup = OciMount::default();
    cgroup.set_destination(PathBuf::from("/sys/fs/cgroup"));
    cgroup.set_typ(Some("cgroup".to_owned()));
    cgroup.set_source(Some(PathBuf::from("cgroup")));
    cgroup.set_options(Some(
        ["nosuid", "noexec", "nodev", "relatime", "ro"]
            .map(String::from)
            .to_vec(),
    ));
    mounts.push(cgroup);
    mounts
}

fn bind(destination: &str, source: &Path, readonly: bool) -> OciMount {
    let mut m = OciMount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some("bind".to_owned()));
    m.set_source(Some(source.to_path_buf()));
    let mut opts = vec!["rbind".to_owned(), "rprivate".to_owned()];
    opts.push(if readonly { "ro" } else { "rw" }.to_owned());
    m.set_options(Some(opts));
    m
}

/// The default mounts, then the pod files, then the volumes, parents before children
/// (runc mounts in order, so `/data` must come before `/data/sub`).
pub fn container_mounts(files_dir: &Path, mounts: &[Mount], privileged: bool) -> Vec<OciMount> {
    let mut out = default_mounts();
    if privileged {
        for m in &mut out {
            if m.destination() == Path::new("/sys")
                || m.destination() == Path::new("/sys/fs/cgroup")
            {
                let opts: Vec<String> = m
                    .options()
                    .iter()
                    .flatten()
                    .filter(|o| o.as_str() != "ro")
                    .cloned()
                    .collect();
                m.set_options(Some(opts));
            }
        }
    }
    let user_paths: HashSet<&str> = mounts.iter().map(|m| m.container_path.as_str()).collect();
    for (dest, file) in POD_FILES {
        if !user_paths.contains(dest) {
            out.push(bind(dest, &files_dir.join(file), false));
        }
    }
    let mut user: Vec<&Mount> = mounts.iter().collect();
    user.sort_by_key(|m| Path::new(&m.container_path).components().count());
    out.extend(
        user.into_iter()
            .map(|m| bind(&m.container_path, &m.host_path, m.readonly)),
    );
    out
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
