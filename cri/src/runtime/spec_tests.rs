//! Unit tests of `spec.rs`.

use super::*;
use crate::runtime::{PodRef, SecurityConfig};
use std::time::SystemTime;

// containerd CRI getCgroupsPath: a slice parent gives runc's systemd form.
#[test]
fn cgroups_paths_per_driver() {
    assert_eq!(
        cgroups_path("/kubepods/burstable/podab-cd/", "c0ffee"),
        "/kubepods/burstable/podab-cd/c0ffee"
    );
    let slice = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab_cd.slice";
    let p = cgroups_path(slice, "c0ffee");
    assert_eq!(p, "kubepods-burstable-podab_cd.slice:cri-containerd:c0ffee");
    assert!(is_systemd_cgroups_path(&p));
    assert!(!is_systemd_cgroups_path("/kubepods/podab-cd/c0ffee"));
}

fn image() -> ImageRuntimeConfig {
    ImageRuntimeConfig {
        entrypoint: vec!["/bin/entry".into()],
        cmd: vec!["default".into()],
        env: vec!["PATH=/bin".into(), "A=image".into()],
        working_dir: "/work".into(),
        user: String::new(),
        stop_signal: None,
    }
}

fn config() -> ContainerConfig {
    ContainerConfig {
        name: "app".into(),
        attempt: 0,
        image: "x".into(),
        command: vec![],
        args: vec![],
        working_dir: None,
        env: vec![],
        mounts: vec![],
        log_path: "app/0.log".into(),
        security: SecurityConfig::default(),
        resources: crate::runtime::ContainerResources::default(),
    }
}

fn sandbox() -> SandboxInfo {
    SandboxInfo {
        id: "sb".into(),
        pod: PodRef {
            uid: "u".into(),
            name: "p".into(),
            namespace: "default".into(),
        },
        attempt: 0,
        ready: true,
        pid: 42,
        ips: vec![],
        netns: Some("/run/netns/x".into()),
        host_network: false,
        share_pid: false,
        cgroup_parent: Some("/kubepods/podu".into()),
        files_dir: "/nonexistent".into(),
        log_directory: "/var/log/pods/x".into(),
        created_at: SystemTime::UNIX_EPOCH,
        runtime_handler: String::new(),
    }
}

#[test]
fn command_rules_follow_kubernetes() {
    let img = image();
    let mut c = config();
    assert_eq!(command_line(&c, &img), ["/bin/entry", "default"]);
    c.args = vec!["a".into()];
    assert_eq!(command_line(&c, &img), ["/bin/entry", "a"]);
    c.command = vec!["/bin/sh".into()];
    assert_eq!(command_line(&c, &img), ["/bin/sh", "a"]);
    c.args.clear();
    assert_eq!(
        command_line(&c, &img),
        ["/bin/sh"],
        "command drops the image cmd"
    );
}

#[test]
fn env_overrides_in_place() {
    let mut c = config();
    c.env = vec![("A".into(), "pod".into()), ("B".into(), "1".into())];
    assert_eq!(
        environment("h", &image(), &c),
        ["PATH=/bin", "HOSTNAME=h", "A=pod", "B=1"]
    );
}

#[test]
fn image_without_path_gets_containerds_default() {
    let mut img = image();
    img.env = vec!["A=image".into()];
    let c = config();
    assert_eq!(
        environment("h", &img, &c),
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME=h",
            "A=image"
        ]
    );
    img.env.clear();
    let mut c = config();
    c.env = vec![("PATH".into(), "/opt/bin".into())];
    assert_eq!(
        environment("h", &img, &c),
        ["PATH=/opt/bin", "HOSTNAME=h"],
        "the container's PATH replaces the default"
    );
}

#[test]
fn container_joins_sandbox_namespaces() {
    let spec = container_spec(&sandbox(), &config(), &image(), "cid").expect("spec");
    let linux = spec.linux().as_ref().expect("linux");
    let nss = linux.namespaces().as_ref().expect("namespaces");
    let path = |t| {
        nss.iter()
            .find(|n| n.typ() == t)
            .and_then(|n| n.path().clone())
    };
    assert_eq!(
        path(LinuxNamespaceType::Network),
        Some("/run/netns/x".into())
    );
    assert_eq!(
        path(LinuxNamespaceType::Ipc),
        Some("/proc/42/ns/ipc".into())
    );
    assert_eq!(
        path(LinuxNamespaceType::Uts),
        Some("/proc/42/ns/uts".into())
    );
    assert_eq!(path(LinuxNamespaceType::Pid), None, "own PID namespace");
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/podu/cid"))
    );
    let process = spec.process().as_ref().expect("process");
    assert_eq!(process.cwd(), Path::new("/work"));
    let annotations = spec.annotations().as_ref().expect("annotations");
    assert_eq!(
        annotations.get(keys::SHIM_GROUP).map(String::as_str),
        Some("sb")
    );
}

#[test]
fn shared_pid_namespace_joins_pause() {
    let mut sb = sandbox();
    sb.share_pid = true;
    let spec = container_spec(&sb, &config(), &image(), "cid").expect("spec");
    let nss = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .expect("namespaces");
    assert!(nss.iter().any(|n| n.typ() == LinuxNamespaceType::Pid
        && n.path().as_deref() == Some(Path::new("/proc/42/ns/pid"))));
}

#[test]
fn users_and_groups() {
    let mut img = image();
    img.user = "1000:2000".into();
    let mut c = config();
    let spec = container_spec(&sandbox(), &c, &img, "cid").expect("spec");
    let u = spec.process().as_ref().expect("p").user().clone();
    assert_eq!((u.uid(), u.gid()), (1000, 2000));
    c.security.run_as_user = Some(7);
    c.security.supplemental_groups = vec![5];
    let spec = container_spec(&sandbox(), &c, &img, "cid").expect("spec");
    let u = spec.process().as_ref().expect("p").user().clone();
    assert_eq!((u.uid(), u.gid()), (7, 2000));
    assert_eq!(u.additional_gids().as_deref(), Some(&[5][..]));
    // Names are resolved before the spec is built; one left over is an error
    // unless the pod overrides it.
    img.user = "nginx:staff".into();
    c.security.run_as_group = Some(9);
    let spec = container_spec(&sandbox(), &c, &img, "cid").expect("spec");
    let u = spec.process().as_ref().expect("p").user().clone();
    assert_eq!((u.uid(), u.gid()), (7, 9));
    c.security.run_as_user = None;
    assert!(container_spec(&sandbox(), &c, &img, "cid").is_err());
}

fn bounding(spec: &Spec) -> HashSet<Capability> {
    spec.process()
        .as_ref()
        .and_then(|p| p.capabilities().clone())
        .and_then(|c| c.bounding().clone())
        .expect("bounding capabilities")
}

#[test]
fn every_capability_name_parses() {
    assert_eq!(all_capabilities().len(), ALL_CAPABILITIES.len());
    for c in DEFAULT_CAPABILITIES {
        assert!(parse_capability(c).is_some(), "{c}");
    }
}

#[test]
fn capabilities_add_drop_all() {
    let mut c = config();
    c.security.add_capabilities = vec!["NET_ADMIN".into()];
    c.security.drop_capabilities = vec!["CAP_CHOWN".into()];
    let caps = bounding(&container_spec(&sandbox(), &c, &image(), "cid").expect("spec"));
    assert!(caps.contains(&Capability::NetAdmin));
    assert!(!caps.contains(&Capability::Chown));
    assert!(caps.contains(&Capability::Kill));

    c.security.drop_capabilities = vec!["ALL".into()];
    let caps = bounding(&container_spec(&sandbox(), &c, &image(), "cid").expect("spec"));
    assert_eq!(
        caps,
        [Capability::NetAdmin].into(),
        "drop ALL keeps only what add names"
    );

    c.security.privileged = true;
    let caps = bounding(&container_spec(&sandbox(), &c, &image(), "cid").expect("spec"));
    assert_eq!(
        caps.len(),
        ALL_CAPABILITIES.len(),
        "privileged gets every capability"
    );
    c.security.privileged = false;

    c.security.add_capabilities = vec!["NOT_A_CAP".into()];
    assert!(container_spec(&sandbox(), &c, &image(), "cid").is_err());
}

fn seccomp_of(c: &ContainerConfig) -> Option<oci_spec::runtime::LinuxSeccomp> {
    container_spec(&sandbox(), c, &image(), "cid")
        .expect("spec")
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().clone())
}

#[test]
fn seccomp_runtime_default_follows_capabilities() {
    use oci_spec::runtime::LinuxSeccompAction;
    let mut c = config();
    c.security.seccomp = SeccompMode::RuntimeDefault;
    let p = seccomp_of(&c).expect("a seccomp section");
    assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(p.default_errno_ret(), Some(1));
    assert!(seccomp::allows(&p, "read"));
    assert!(!seccomp::allows(&p, "mount"), "mount needs CAP_SYS_ADMIN");
    assert!(
        seccomp::allows(&p, "chroot"),
        "SYS_CHROOT is a default capability"
    );

    c.security.add_capabilities = vec!["SYS_ADMIN".into()];
    let p = seccomp_of(&c).expect("a seccomp section");
    assert!(seccomp::allows(&p, "mount"));
    assert!(seccomp::allows(&p, "unshare"));

    c.security.add_capabilities.clear();
    c.security.drop_capabilities = vec!["ALL".into()];
    let p = seccomp_of(&c).expect("a seccomp section");
    assert!(
        !seccomp::allows(&p, "chroot"),
        "dropped capability, no rule"
    );
}

#[test]
fn seccomp_unconfined_and_privileged_have_none() {
    let mut c = config();
    assert!(seccomp_of(&c).is_none(), "unconfined by default");
    c.security.seccomp = SeccompMode::RuntimeDefault;
    c.security.privileged = true;
    assert!(seccomp_of(&c).is_none(), "privileged runs unconfined");
    c.security.seccomp = SeccompMode::Localhost("/nonexistent/profile.json".into());
    assert!(
        seccomp_of(&c).is_none(),
        "privileged ignores a localhost profile"
    );
}

#[test]
fn seccomp_localhost_is_read_or_fails_with_its_path() {
    use oci_spec::runtime::LinuxSeccompAction;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("profiles/strict.json");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(
            &path,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .expect("write");
    let mut c = config();
    c.security.seccomp = SeccompMode::Localhost(path.clone());
    let p = seccomp_of(&c).expect("a seccomp section");
    assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);

    let missing = dir.path().join("profiles/missing.json");
    c.security.seccomp = SeccompMode::Localhost(missing.clone());
    let err = container_spec(&sandbox(), &c, &image(), "cid").expect_err("missing profile");
    assert!(matches!(err, RuntimeError::Spec { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn mounts_order_and_pod_files() {
    let mounts = vec![
        Mount {
            container_path: "/data/sub".into(),
            host_path: "/h/sub".into(),
            readonly: true,
        },
        Mount {
            container_path: "/data".into(),
            host_path: "/h".into(),
            readonly: false,
        },
        Mount {
            container_path: "/etc/hosts".into(),
            host_path: "/my/hosts".into(),
            readonly: false,
        },
    ];
    let out = container_mounts(Path::new("/pod"), &mounts, false);
    let dests: Vec<_> = out.iter().map(|m| m.destination().clone()).collect();
    let pos = |p: &str| dests.iter().position(|d| d == Path::new(p)).expect(p);
    assert!(pos("/data") < pos("/data/sub"));
    let hosts: Vec<_> = out
        .iter()
        .filter(|m| m.destination() == Path::new("/etc/hosts"))
        .collect();
    assert_eq!(hosts.len(), 1, "a user mount replaces the pod file");
    assert_eq!(hosts[0].source().as_deref(), Some(Path::new("/my/hosts")));
    let resolv = &out[pos("/etc/resolv.conf")];
    assert_eq!(
        resolv.source().as_deref(),
        Some(Path::new("/pod/resolv.conf"))
    );
    let sub = &out[pos("/data/sub")];
    assert!(sub.options().iter().flatten().any(|o| o == "ro"));
}

#[test]
fn resources_go_to_linux_resources_and_the_process() {
    let mut c = config();
    c.resources = crate::runtime::ContainerResources {
        cpu_period: Some(100_000),
        cpu_quota: Some(50_000),
        cpu_shares: Some(512),
        memory_limit: Some(67_108_864),
        oom_score_adj: Some(-997),
        hugepage_limits: vec![(2 << 20, 4 << 20), (1 << 30, 0)],
        unified: vec![("memory.high".into(), "60000000".into())],
    };
    let spec = container_spec(&sandbox(), &c, &image(), "cid").expect("spec");
    let r = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .expect("resources");
    let cpu = r.cpu().clone().expect("cpu");
    assert_eq!(
        (cpu.shares(), cpu.quota(), cpu.period()),
        (Some(512), Some(50_000), Some(100_000))
    );
    assert_eq!(
        r.memory().as_ref().and_then(|m| m.limit()),
        Some(67_108_864)
    );
    let huge: Vec<(String, i64)> = r
        .hugepage_limits()
        .iter()
        .flatten()
        .map(|h| (h.page_size().clone(), h.limit()))
        .collect();
    assert_eq!(huge, [("2MB".into(), 4 << 20), ("1GB".into(), 0)]);
    assert_eq!(
        r.unified()
            .as_ref()
            .and_then(|u| u.get("memory.high"))
            .map(String::as_str),
        Some("60000000")
    );
    // The device rules stay.
    assert!(r.devices().as_ref().is_some_and(|d| !d.is_empty()));
    let oom = spec.process().as_ref().and_then(|p| p.oom_score_adj());
    assert_eq!(oom, Some(-997));
}

#[test]
fn no_resources_leave_the_runtime_defaults() {
    let spec = container_spec(&sandbox(), &config(), &image(), "cid").expect("spec");
    let r = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let r = r.expect("resources");
    assert!(r.cpu().is_none() && r.memory().is_none());
    assert_eq!(
        spec.process().as_ref().and_then(|p| p.oom_score_adj()),
        None
    );
}

#[test]
fn sandbox_with_host_network_has_no_net_or_uts_namespace() {
    let cfg = SandboxConfig {
        pod: PodRef {
            uid: "u".into(),
            name: "p".into(),
            namespace: "d".into(),
        },
        attempt: 0,
        hostname: "p".into(),
        host_network: true,
        host_ipc: false,
        host_pid: false,
        share_process_namespace: false,
        log_directory: "/l".into(),
        cgroup_parent: None,
        dns: None,
        host_aliases: vec![],
        fqdn: None,
        sysctls: vec![("net.ipv4.ip_unprivileged_port_start".into(), "0".into())],
        oom_score_adj: None,
        port_mappings: vec![],
        runtime_handler: String::new(),
    };
    let img = ImageRuntimeConfig {
        entrypoint: vec!["/pause".into()],
        cmd: vec![],
        env: vec![],
        working_dir: String::new(),
        user: String::new(),
        stop_signal: None,
    };
    let spec = sandbox_spec(&cfg, "sb", None, &img).expect("spec");
    let process = spec.process().as_ref().expect("process");
    assert_eq!(process.oom_score_adj(), Some(PAUSE_OOM_SCORE_ADJ));
    let shares = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| c.shares());
    assert_eq!(shares, Some(PAUSE_CPU_SHARES));
    let nss = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .expect("namespaces");
    assert!(!nss.iter().any(|n| matches!(
        n.typ(),
        LinuxNamespaceType::Network | LinuxNamespaceType::Uts
    )));
    assert_eq!(spec.hostname(), &None);
    let sysctl = spec.linux().as_ref().and_then(|l| l.sysctl().clone());
    assert_eq!(
        sysctl
            .as_ref()
            .and_then(|s| s.get("net.ipv4.ip_unprivileged_port_start"))
            .map(String::as_str),
        Some("0")
    );
}
