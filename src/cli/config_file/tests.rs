//! Unit tests of `--config`/`--config-dir`: parsing, strict decoding, unsupported
//! fields, drop-in merge order, flag precedence, defaults and relative paths.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _};

use super::schema::{KUBELET_CONFIGURATION, Support, Ty};
use super::*;
use crate::cli::LogFormat;

const HEAD: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&path, body).expect("write");
    path
}

/// Parses `argv` (after `nodelet`) and folds the configuration in, as `main` does.
fn run(argv: &[&str]) -> Result<(Cli, Vec<String>), ConfigFileError> {
    let matches = Cli::command()
        .try_get_matches_from(std::iter::once("nodelet").chain(argv.iter().copied()))
        .expect("flags parse");
    let mut cli = Cli::from_arg_matches(&matches).expect("flags parse");
    let unsupported = configure(&mut cli, &matches)?;
    Ok((cli, unsupported))
}

fn agent(argv: &[&str]) -> AgentArgs {
    run(argv).expect("config applies").0.agent
}

fn err(argv: &[&str]) -> String {
    run(argv).expect_err("config refused").to_string()
}

#[test]
fn fields_map_onto_flags_with_upstream_formats() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let body = include_str!("testdata/full.yaml");
    let file = write(tmp.path(), "kubelet.yaml", body);
    let a = agent(&["--config", file.to_str().expect("utf-8")]);
    assert_eq!(
        a.pod_manifest_path.as_deref(),
        Some(Path::new("/etc/kubernetes/manifests"))
    );
    assert_eq!(a.file_check_frequency, Duration::from_secs(60));
    assert_eq!(a.http_check_frequency, Duration::from_secs(90));
    assert_eq!(
        a.manifest_url.as_deref(),
        Some("http://127.0.0.1:8080/pods")
    );
    assert_eq!(
        a.manifest_url_header,
        ["Authorization:Bearer abc", "X-Node:a", "X-Node:b"]
    );
    assert_eq!(a.address.to_string(), "127.0.0.2");
    assert_eq!((a.read_only_port, a.healthz_port), (10266, 0));
    assert_eq!(a.healthz_bind_address.to_string(), "0.0.0.0");
    assert_eq!(
        a.cluster_dns
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.96.0.10", "fd00::a"]
    );
    assert_eq!(a.cluster_domain, "cluster.local");
    assert_eq!(a.resolv_conf, PathBuf::new());
    assert_eq!(
        a.image_gc.minimum_image_ttl_duration,
        Duration::from_secs(300)
    );
    assert_eq!(
        a.image_gc.image_maximum_gc_age,
        Duration::from_secs(168 * 3600)
    );
    assert_eq!(
        (
            a.image_gc.image_gc_high_threshold,
            a.image_gc.image_gc_low_threshold
        ),
        (90, 70)
    );
    assert_eq!((a.registry_qps, a.registry_burst), (0, 3));
    assert_eq!((a.kube_api_qps, a.kube_api_burst), (20, 40));
    assert_eq!(a.cgroup_root, "/nodelet");
    assert!(!a.resources.cgroups_per_qos);
    assert_eq!(a.resources.enforce_node_allocatable, "");
    assert_eq!(a.resources.max_pods, 42);
    assert_eq!(a.resources.pod_max_pids, -1);
    assert_eq!(a.pod_cidr, "10.200.0.0/16");
    assert_eq!(a.resources.kube_reserved, "cpu=100m,memory=1Gi,pid=1000");
    assert_eq!(a.resources.system_reserved, "memory=500Mi");
    assert_eq!(a.resources.feature_gates, "MemoryQoS=true");
    assert_eq!(
        a.eviction.eviction_hard,
        ["memory.available<200Mi", "nodefs.available<5%"]
    );
    assert_eq!(a.eviction.eviction_soft, ["memory.available<300Mi"]);
    assert_eq!(
        a.eviction.eviction_soft_grace_period,
        ["memory.available=1m30s"]
    );
    assert_eq!(
        a.eviction.eviction_minimum_reclaim,
        ["memory.available=50Mi"]
    );
    assert_eq!(
        a.eviction.eviction_pressure_transition_period,
        Duration::from_secs(30)
    );
    assert_eq!(a.eviction.eviction_max_pod_grace_period, 20);
    assert!(!a.eviction.kernel_memcg_notification);
    assert!(!a.serialize_image_pulls);
    assert_eq!(a.max_parallel_image_pulls, Some(3));
    assert!(!a.register_node);
    assert_eq!(
        a.register_with_taints,
        ["dedicated=infra:NoSchedule", "gpu:NoExecute"]
    );
    assert_eq!((a.log_format, a.v.as_str()), (LogFormat::Json, "debug"));
    assert_eq!(a.container_runtime_endpoint, "unix:///run/other.sock");
    assert_eq!(a.pod_logs_dir, Path::new("/var/log/nodelet-pods"));
    // The settings the rest of the agent derives from the flags accept them.
    a.resources.settings().expect("resource flags valid");
    a.eviction.config(false).expect("eviction flags valid");
    a.image_gc.config().expect("image gc flags valid");
}

/// What `kubeadm init` writes to /var/lib/kubelet/config.yaml (v1.3x), zero values
/// and all: accepted, with only the fields nodelet lacks named.
#[test]
fn kubeadms_generated_file_is_accepted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(tmp.path(), "config.yaml", KUBEADM);
    let (cli, unsupported) = run(&["--config", file.to_str().expect("utf-8")]).expect("applies");
    assert_eq!(unsupported, ["rotateCertificates"]);
    let a = cli.agent;
    // The kubelet API as kubeadm configures it: webhook authn and authz, no anonymous.
    assert_eq!(a.secure.port, 10250);
    assert!(a.secure.authentication_token_webhook && !a.secure.anonymous_auth);
    assert_eq!(
        a.secure.authorization_mode,
        crate::server::secure::AuthorizationMode::Webhook
    );
    assert_eq!(
        a.secure.authentication_token_webhook_cache_ttl,
        Duration::from_secs(120)
    );
    assert_eq!(a.resources.cgroup_driver, "systemd");
    assert_eq!(a.file_check_frequency, Duration::from_secs(20));
    assert_eq!(
        a.eviction.eviction_pressure_transition_period,
        Duration::from_secs(300)
    );
    assert_eq!(
        a.image_gc.minimum_image_ttl_duration,
        Duration::from_secs(120)
    );
    assert_eq!(
        a.container_runtime_endpoint,
        "unix:///run/containerd/containerd.sock"
    );
    assert_eq!(a.read_only_port, 0);
    assert_eq!((a.log_format, a.v.as_str()), (LogFormat::Text, "info"));
}

#[test]
fn enable_server_false_closes_the_read_only_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "a.yaml",
        &format!("{HEAD}enableServer: false\nreadOnlyPort: 10255\n"),
    );
    let f = file.to_str().expect("utf-8");
    assert_eq!(agent(&["--config", f]).read_only_port, 0);
    assert_eq!(
        agent(&["--config", f, "--read-only-port", "10266"]).read_only_port,
        10266
    );
}

#[test]
fn json_files_are_read_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "kubelet.json",
        // Tab-indented, as JSON writers may (YAML forbids tabs only in indentation of
        // block style).
        "{\n\t\"apiVersion\": \"kubelet.config.k8s.io/v1beta1\",\n\t\"kind\": \"KubeletConfiguration\",\n\t\"maxPods\": 7, \"syncFrequency\": \"1m0s\", \"readOnlyPort\": 10255\n}\n",
    );
    let (cli, unsupported) = run(&["--config", file.to_str().expect("utf-8")]).expect("applies");
    assert_eq!(cli.agent.resources.max_pods, 7);
    assert_eq!(cli.agent.read_only_port, 10255);
    assert_eq!(unsupported, ["syncFrequency"]);
}

#[test]
fn absent_fields_take_v1beta1_defaults_with_a_file_and_keep_flags_with_drop_ins_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(tmp.path(), "kubelet.yaml", &format!("{HEAD}maxPods: 0\n"));
    let a = agent(&["--config", file.to_str().expect("utf-8")]);
    // readOnlyPort: 0 is v1beta1's default (10255 is the flag's legacy one).
    assert_eq!(a.read_only_port, 0);
    // A non-pointer field at its zero value is unset: maxPods 0 means 110.
    assert_eq!(a.resources.max_pods, 110);
    assert!(
        a.eviction.kernel_memcg_notification,
        "nodelet's own default"
    );
    assert_eq!(
        a.eviction.eviction_hard.len(),
        crate::node::eviction::config::DEFAULT_EVICTION_HARD.len()
    );
    let dir = tmp.path().join("conf.d");
    write(&dir, "10-pods.conf", &format!("{HEAD}maxPods: 50\n"));
    let a = agent(&["--config-dir", dir.to_str().expect("utf-8")]);
    assert_eq!(a.read_only_port, 10255, "the flag default is the base");
    assert_eq!(a.resources.max_pods, 50);
    assert!(
        a.eviction.eviction_hard.is_empty(),
        "flag default: defaults"
    );
}

#[test]
fn flags_on_the_command_line_win() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "kubelet.yaml",
        &format!(
            "{HEAD}readOnlyPort: 10300\nmaxPods: 30\nfeatureGates: {{MemoryQoS: true}}\nevictionHard: {{memory.available: 1Gi}}\n"
        ),
    );
    let f = file.to_str().expect("utf-8");
    let a = agent(&[
        "--config",
        f,
        "--read-only-port",
        "10301",
        "--eviction-hard",
        "memory.available<2Gi",
        "--feature-gates",
        "MemoryQoS=false",
    ]);
    assert_eq!(a.read_only_port, 10301);
    assert_eq!(a.resources.max_pods, 30);
    assert_eq!(a.eviction.eviction_hard, ["memory.available<2Gi"]);
    // Feature gates merge: the file's, then the flag's (which win).
    assert_eq!(a.resources.feature_gates, "MemoryQoS=true,MemoryQoS=false");
    assert!(!a.resources.settings().expect("valid").memory_qos);
    // A flag given with its default value still wins over the file.
    let a = agent(&["--config", f, "--max-pods", "110"]);
    assert_eq!(a.resources.max_pods, 110);
}

#[test]
fn explicit_args_are_those_given_on_the_command_line() {
    let m = Cli::command()
        .try_get_matches_from(["nodelet", "--max-pods=3", "--register-node", "--v", "info"])
        .expect("parses");
    let mut ids: Vec<String> = explicit_args(&m)
        .into_iter()
        .filter(|id| id != "ResourceArgs")
        .collect();
    ids.sort();
    assert_eq!(ids, ["max_pods", "register_node", "v"]);
}

#[test]
fn nodelet_run_reads_the_config_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "kubelet.yaml",
        &format!(
            "{HEAD}maxPods: 9\nhealthzPort: 10248\nreadOnlyPort: 10255\nlogging: {{verbosity: 2}}\n"
        ),
    );
    let f = file.to_str().expect("utf-8");
    let (cli, _) = run(&["run", "pod.yaml", "--config", f]).expect("applies");
    let Some(Command::Run(r)) = cli.command else {
        panic!("run subcommand");
    };
    assert_eq!(r.agent.resources.max_pods, 9);
    // Its own ports and log level, not the agent's from the file.
    assert_eq!((r.agent.read_only_port, r.agent.healthz_port), (0, 0));
    assert_eq!(r.agent.v, "warn");
    let (cli, _) =
        run(&["run", "pod.yaml", "--config", f, "--healthz-port", "9999"]).expect("applies");
    let Some(Command::Run(r)) = cli.command else {
        panic!("run subcommand");
    };
    assert_eq!(r.agent.healthz_port, 9999);
}

#[test]
fn unknown_fields_are_errors_with_file_and_field_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "kubelet.yaml",
        &format!(
            "{HEAD}foo: 1\nStaticPodPath: /x\nauthentication:\n  x509: {{clientCAFile: /ca, bogus: true}}\nregisterWithTaints:\n- {{key: a, effect: NoSchedule, colour: red}}\nlogging: {{options: {{text: {{splitStream: true, extra: 1}}}}}}\n"
        ),
    );
    let msg = err(&["--config", file.to_str().expect("utf-8")]);
    assert_eq!(
        msg,
        format!(
            "kubelet config file {}: strict decoding error: unknown field \"StaticPodPath\", unknown field \"authentication.x509.bogus\", unknown field \"foo\", unknown field \"logging.options.text.extra\", unknown field \"registerWithTaints[0].colour\"",
            file.display()
        )
    );
}

#[test]
fn mistyped_values_are_errors_with_field_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = |name: &str, body: &str| {
        let file = write(tmp.path(), name, &format!("{HEAD}{body}\n"));
        err(&["--config", file.to_str().expect("utf-8")])
    };
    assert!(f("a.yaml", "maxPods: \"10\"").ends_with(
        "strict decoding error: field \"maxPods\": want a 32-bit integer, got string \"10\""
    ),);
    assert!(
        f("b.yaml", "syncFrequency: 10").contains(
            "field \"syncFrequency\": want a duration such as \"10s\" or \"1m30s\", got 10"
        )
    );
    assert!(f("c.yaml", "fileCheckFrequency: 10 seconds").contains("field \"fileCheckFrequency\""));
    assert!(
        f("d.yaml", "kubeReserved: {pid: 1000}")
            .contains("field \"kubeReserved[pid]\": want a string, got 1000")
    );
    assert!(f("e.yaml", "readOnlyPort: 4294967296").contains("field \"readOnlyPort\""));
    assert!(f("f.yaml", "clusterDNS: 10.0.0.10").contains("field \"clusterDNS\": want a list"));
    // Well typed but not usable by the flag.
    let msg = f("g.yaml", "address: localhost");
    assert!(
        msg.ends_with("g.yaml: field \"address\": \"localhost\" is not a valid IP address"),
        "{msg}"
    );
    assert!(f("h.yaml", "readOnlyPort: 70000").contains("must be between 0 and 65535"));
    assert!(f("i.yaml", "logging: {format: xml}").contains("unsupported value \"xml\""));
    assert!(f("j.yaml", "maxParallelImagePulls: 0").contains("must be a positive number"));
}

#[test]
fn bad_documents_are_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let f = |name: &str, body: &str| {
        let file = write(tmp.path(), name, body);
        err(&["--config", file.to_str().expect("utf-8")])
    };
    assert!(f("empty.yaml", "\n").ends_with("empty.yaml was empty"));
    assert!(f("list.yaml", "- a\n").contains("want a KubeletConfiguration object, got a list"));
    assert!(f("syntax.yaml", "{a: [}\n").contains("cannot parse"));
    assert!(
        f("kind.yaml", "apiVersion: v1\nkind: Pod\n").ends_with(
            "apiVersion \"v1\", kind \"Pod\": want apiVersion \"kubelet.config.k8s.io/v1beta1\", kind \"KubeletConfiguration\""
        )
    );
    assert!(f("nokind.yaml", "maxPods: 3\n").contains("apiVersion \"\", kind \"\""));
    assert!(f("dup.yaml", &format!("{HEAD}maxPods: 1\nmaxPods: 2\n")).contains("duplicate"));
    assert!(
        f(
            "nested-dup.yaml",
            &format!("{HEAD}kubeReserved: {{cpu: 1, cpu: 2}}\n")
        )
        .contains("duplicate")
    );
    assert!(
        f("key.yaml", &format!("{HEAD}featureGates: {{[a]: true}}\n"))
            .contains("not JSON-compatible")
    );
    let missing = tmp.path().join("missing.yaml");
    assert!(err(&["--config", missing.to_str().expect("utf-8")]).contains("cannot read"));
}

#[test]
fn unsupported_fields_are_named_once_unless_zero_or_matching() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "kubelet.yaml",
        &format!(
            "{HEAD}syncFrequency: 0s
runtimeRequestTimeout: 0s
rotateCertificates: true
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true, cacheTTL: 0s}}
authorization: {{mode: Webhook}}
nodeLeaseDurationSeconds: 40
nodeStatusUpdateFrequency: 10s
nodeStatusReportFrequency: 1m
port: 10250
logging: {{format: text, flushFrequency: 0, verbosity: 0, options: {{json: {{infoBufferSize: \"0\"}}}}, vmodule: [{{filePattern: x, verbosity: 3}}]}}
memorySwap: {{}}
containerLogMaxSize: 20Mi
"
        ),
    );
    let (_, unsupported) = run(&["--config", file.to_str().expect("utf-8")]).expect("applies");
    assert_eq!(
        unsupported,
        [
            "rotateCertificates",
            "nodeStatusReportFrequency",
            "logging.vmodule",
        ]
    );
}

#[test]
fn drop_ins_merge_in_lexical_order_as_json_merge_patches() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "kubelet.yaml",
        &format!(
            "{HEAD}maxPods: 10\nclusterDNS: [10.0.0.1, 10.0.0.2]\nkubeReserved: {{cpu: 100m, memory: 1Gi}}\nsyncFrequency: 2m\nregistryBurst: 4\n"
        ),
    );
    let dir = tmp.path().join("kubelet.conf.d");
    write(
        &dir,
        "20-b.conf",
        &format!("{HEAD}maxPods: 20\nkubeReserved: {{memory: 2Gi}}\n"),
    );
    write(
        &dir,
        "10-a.conf",
        &format!("{HEAD}maxPods: 15\nclusterDNS: [10.0.0.3]\n"),
    );
    // Directories are walked where they sort: 15-dir/ after 10-a.conf, before 20-b.
    write(
        &dir,
        "15-dir/99.conf",
        &format!("{HEAD}maxPods: 17\nregistryBurst: 6\n"),
    );
    write(&dir, "30-c.conf", &format!("{HEAD}syncFrequency: null\n"));
    // Not a drop-in: skipped, even though it would not parse.
    write(&dir, "40-d.yaml", "not: [valid\n");
    let (cli, unsupported) = run(&[
        "--config",
        file.to_str().expect("utf-8"),
        "--config-dir",
        dir.to_str().expect("utf-8"),
    ])
    .expect("applies");
    let a = cli.agent;
    assert_eq!(a.resources.max_pods, 20);
    assert_eq!(a.registry_burst, 6);
    // Lists are replaced; maps merge key by key.
    assert_eq!(
        a.cluster_dns
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.0.0.3"]
    );
    assert_eq!(a.resources.kube_reserved, "cpu=100m,memory=2Gi");
    // `null` removed the file's syncFrequency, so nothing is left to warn about.
    assert!(unsupported.is_empty(), "{unsupported:?}");
    let loaded = load(Some(&file), Some(&dir)).expect("loads").expect("some");
    assert_eq!(
        loaded
            .files
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect::<Vec<_>>(),
        [
            "kubelet.yaml",
            "10-a.conf",
            "99.conf",
            "20-b.conf",
            "30-c.conf"
        ]
    );
}

#[test]
fn drop_in_eviction_hard_merges_into_the_default_thresholds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(tmp.path(), "kubelet.yaml", HEAD);
    let dir = tmp.path().join("d");
    write(
        &dir,
        "10.conf",
        &format!("{HEAD}evictionHard: {{memory.available: 1Gi}}\n"),
    );
    let a = agent(&[
        "--config",
        file.to_str().expect("utf-8"),
        "--config-dir",
        dir.to_str().expect("utf-8"),
    ]);
    // Upstream fills an absent evictionHard with the defaults before merging.
    assert_eq!(
        a.eviction.eviction_hard,
        [
            "imagefs.available<15%",
            "imagefs.inodesFree<5%",
            "memory.available<1Gi",
            "nodefs.available<10%",
            "nodefs.inodesFree<5%",
        ]
    );
}

#[test]
fn an_empty_eviction_hard_means_no_hard_thresholds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(tmp.path(), "a.yaml", &format!("{HEAD}evictionHard: {{}}\n"));
    let a = agent(&["--config", file.to_str().expect("utf-8")]);
    let config = a.eviction.config(false).expect("valid");
    assert!(config.thresholds.is_empty(), "{:?}", config.thresholds);
    let file = write(
        tmp.path(),
        "b.yaml",
        &format!(
            "{HEAD}evictionHard: {{memory.available: 1Gi}}\nmergeDefaultEvictionSettings: true\n"
        ),
    );
    let a = agent(&["--config", file.to_str().expect("utf-8")]);
    assert_eq!(a.eviction.eviction_hard.len(), 5);
    assert!(
        a.eviction
            .eviction_hard
            .contains(&"memory.available<1Gi".to_owned())
    );
}

#[test]
fn drop_ins_need_type_meta_and_strict_fields() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("d");
    let bad = write(&dir, "10.conf", "maxPods: 3\n");
    let msg = err(&["--config-dir", dir.to_str().expect("utf-8")]);
    assert!(msg.starts_with(&format!(
        "kubelet config file {}: apiVersion",
        bad.display()
    )));
    std::fs::write(&bad, format!("{HEAD}maxPod: 3\n")).expect("write");
    assert!(
        err(&["--config-dir", dir.to_str().expect("utf-8")]).ends_with("unknown field \"maxPod\"")
    );
    // A bad value names the drop-in that set it, not the file under it.
    let file = write(
        tmp.path(),
        "kubelet.yaml",
        &format!("{HEAD}address: 127.0.0.1\n"),
    );
    let late = write(&dir, "20.conf", &format!("{HEAD}address: nowhere\n"));
    std::fs::write(&bad, format!("{HEAD}address: 127.0.0.2\n")).expect("write");
    let msg = err(&[
        "--config",
        file.to_str().expect("utf-8"),
        "--config-dir",
        dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        msg,
        format!(
            "kubelet config file {}: field \"address\": \"nowhere\" is not a valid IP address",
            late.display()
        )
    );
    let missing = tmp.path().join("nope");
    assert!(
        err(&["--config-dir", missing.to_str().expect("utf-8")])
            .starts_with("kubelet config drop-in directory")
    );
}

#[test]
fn relative_paths_resolve_against_the_file_not_in_drop_ins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "etc/kubelet.yaml",
        &format!(
            "{HEAD}staticPodPath: manifests\nresolvConf: ../resolv.conf\npodLogsDir: /abs/logs\n"
        ),
    );
    let a = agent(&["--config", file.to_str().expect("utf-8")]);
    let etc = tmp.path().join("etc");
    assert_eq!(a.pod_manifest_path, Some(etc.join("manifests")));
    assert_eq!(a.resolv_conf, etc.join("../resolv.conf"));
    assert_eq!(a.pod_logs_dir, Path::new("/abs/logs"));
    // Upstream loads drop-ins into JSON without resolving their paths.
    let dir = tmp.path().join("d");
    write(&dir, "10.conf", &format!("{HEAD}staticPodPath: static\n"));
    let a = agent(&["--config-dir", dir.to_str().expect("utf-8")]);
    assert_eq!(a.pod_manifest_path, Some(PathBuf::from("static")));
}

#[test]
fn serialize_image_pulls_defaults_from_max_parallel_image_pulls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "a.yaml",
        &format!("{HEAD}maxParallelImagePulls: 4\n"),
    );
    let a = agent(&["--config", file.to_str().expect("utf-8")]);
    assert!(!a.serialize_image_pulls);
    assert_eq!(a.max_parallel_image_pulls, Some(4));
    let file = write(
        tmp.path(),
        "b.yaml",
        &format!("{HEAD}maxParallelImagePulls: 1\n"),
    );
    assert!(agent(&["--config", file.to_str().expect("utf-8")]).serialize_image_pulls);
}

#[test]
fn header_values_with_commas_are_refused_not_split() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "a.yaml",
        &format!("{HEAD}staticPodURLHeader: {{Accept: [\"a, b\"]}}\n"),
    );
    assert!(err(&["--config", file.to_str().expect("utf-8")]).contains("comma"));
}

#[test]
fn the_table_matches_the_flags() {
    let cmd = Cli::command();
    for (field, arg) in apply::FIELD_ARGS {
        assert!(
            cmd.get_arguments().any(|a| a.get_id() == arg),
            "{field}: no argument {arg}"
        );
    }
    // Every honoured field (top level, and inside partly honoured structs) has a flag.
    for field in KUBELET_CONFIGURATION {
        let names: Vec<String> = match (field.support, field.ty) {
            (Support::Yes, _) => vec![field.name.to_owned()],
            (Support::Partial, Ty::Obj(inner)) => inner
                .iter()
                .filter(|f| f.support == Support::Yes)
                .map(|f| format!("{}.{}", field.name, f.name))
                .collect(),
            _ => Vec::new(),
        };
        for name in names {
            assert!(
                apply::FIELD_ARGS.iter().any(|(f, _)| *f == name),
                "{name} is marked supported but maps to no flag"
            );
        }
    }
    // Upstream v1.37's KubeletConfiguration has 126 fields besides the type meta;
    // nodelet adds one (`nodeletRuntimeHandlers`).
    assert_eq!(KUBELET_CONFIGURATION.len(), 127);
}

#[test]
fn no_config_changes_nothing() {
    let (cli, unsupported) = run(&["--max-pods", "5"]).expect("no config");
    assert_eq!(cli.agent.resources.max_pods, 5);
    assert_eq!(cli.agent.read_only_port, 10255);
    assert!(unsupported.is_empty());
}

/// `kubeadm init`'s generated kubelet configuration.
const KUBEADM: &str = include_str!("testdata/kubeadm.yaml");

#[test]
fn runtime_handlers_come_from_nodelets_own_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write(
        tmp.path(),
        "k.yaml",
        &format!(
            "{HEAD}nodeletRuntimeHandlers:\n- fast=io.containerd.runc.v2,BinaryName=/usr/bin/crun\n"
        ),
    );
    let a = agent(&["--config", file.to_str().expect("utf-8")]);
    assert_eq!(
        a.runtime_handlers,
        ["fast=io.containerd.runc.v2,BinaryName=/usr/bin/crun"]
    );
    // The flag wins over the file.
    let a = agent(&[
        "--config",
        file.to_str().expect("utf-8"),
        "--runtime-handlers",
        "slow=io.containerd.runc.v2",
    ]);
    assert_eq!(a.runtime_handlers, ["slow=io.containerd.runc.v2"]);
    let bad = write(
        tmp.path(),
        "b.yaml",
        &format!("{HEAD}nodeletRuntimeHandlers: [\"fast=io.containerd.runc.v2,Binary=/x\"]\n"),
    );
    let msg = err(&["--config", bad.to_str().expect("utf-8")]);
    assert!(
        msg.contains("field \"nodeletRuntimeHandlers\"")
            && msg.contains("unknown option \"Binary=/x\""),
        "{msg}"
    );
}
