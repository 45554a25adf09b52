//! Command-line interface. Flag names are upstream kubelet's where one exists, so an
//! operator's unit files and habits carry over.

pub mod config_file;
pub mod proxy_config;
pub mod resources;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// nodelet: the kubelet and the kube-proxy in one small daemon.
///
/// A flag given twice takes its last value, as upstream's (pflag) do: a unit's extra
/// arguments override what the start script set before them.
#[derive(Debug, Parser)]
#[command(name = "nodelet", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// Run the agent (the default), or a tool.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Agent flags (when no subcommand is given).
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Tools beside the agent.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the local agent's pods as a table, like `kubectl get pods -o wide`.
    Pods {
        /// The agent's read-only port.
        #[arg(long, default_value_t = 10255)]
        read_only_port: u16,
        /// The agent's address.
        #[arg(long, default_value = "127.0.0.1")]
        address: IpAddr,
    },
    /// Check pod manifests as the agent would (defaulting and validation), without
    /// running them: every error with its file, document and field path.
    Validate {
        /// Manifest files or directories (a directory means its non-dot files);
        /// with `--config` and none given, the file's `staticPodPath`.
        #[arg(required_unless_present_any = ["config", "config_dir"])]
        paths: Vec<PathBuf>,
        /// Check a `KubeletConfiguration` file as the agent's `--config` reads it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Drop-ins merged over `--config`, as the agent's `--config-dir`.
        #[arg(long)]
        config_dir: Option<PathBuf>,
        /// `yaml` prints the defaulted pods to stdout; errors then go to stderr.
        #[arg(long, short = 'o', value_enum, default_value = "text")]
        output: ValidateOutputArg,
        /// Node name for static pod identity (`<name>-<node>`); default: the hostname.
        #[arg(long, alias = "hostname-override")]
        node_name: Option<String>,
    },
    /// Run the pods of a manifest file on this machine until they complete (or, with
    /// `--until ready`, are Ready), streaming their status; then tear them down.
    /// Exit 0 when every pod Succeeded (or became Ready), 1 otherwise.
    Run(Box<RunArgs>),
    /// Run the service proxy (kube-proxy's job): Services and EndpointSlices from the
    /// apiserver programmed into nftables (`table ip nodelet`).
    Proxy(Box<ProxyArgs>),
    /// Manage images in containerd without a registry.
    Image {
        /// What to do.
        #[command(subcommand)]
        command: ImageCommand,
        /// containerd socket.
        #[arg(
            long,
            global = true,
            default_value = "unix:///run/containerd/containerd.sock"
        )]
        container_runtime_endpoint: String,
        /// containerd namespace.
        #[arg(long, global = true, default_value = "k8s.io")]
        containerd_namespace: String,
    },
    /// Print a shell completion script (`source <(nodelet completion bash)`).
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (`nodelet.1` and one per subcommand) into a directory.
    #[command(hide = true)]
    Man {
        /// Where the pages go (created if missing).
        dir: PathBuf,
    },
}

/// `nodelet run` flags: its own, plus the agent's runtime, CNI and directory flags.
/// The agent's ports default to off here, and its logs to warnings only.
#[derive(Debug, Args)]
#[command(
    mut_arg("read_only_port", |a| a.default_value("0")),
    mut_arg("healthz_port", |a| a.default_value("0")),
    mut_arg("port", |a| a.default_value("0")),
    mut_arg("v", |a| a.default_value("warn"))
)]
pub struct RunArgs {
    /// The manifest file (one or more v1 Pod documents).
    pub file: PathBuf,
    /// When to stop: when every pod has completed, or as soon as every pod is Ready.
    #[arg(long, value_enum, default_value = "complete")]
    pub until: RunUntil,
    /// Give up after this long (exit 1, tearing the pods down); `0` waits forever.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Stream container output, each line prefixed with `[container]`.
    #[arg(long)]
    pub logs: bool,
    /// Leave the pods running at exit instead of tearing them down.
    #[arg(long)]
    pub keep: bool,
    /// `json` prints the final PodStatus as JSON on stdout (progress goes to stderr).
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: RunOutput,
    /// Runtime, CNI and directory flags, as the agent's.
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// `nodelet proxy` flags, with kube-proxy's names.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// A `KubeProxyConfiguration` file (`kubeproxy.config.k8s.io/v1alpha1`); flags
    /// given on the command line override its fields.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The proxy's primary IP (an unspecified one: the node's addresses decide).
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// `IP:port` (or an IP, with `--healthz-port`) of the `/healthz` and `/livez`
    /// server; default `0.0.0.0:10256` (`[::]:10256` when `--bind-address` is IPv6).
    #[arg(long)]
    pub healthz_bind_address: Option<String>,
    /// `IP:port` (or an IP, with `--metrics-port`) of the `/metrics` server; default
    /// `127.0.0.1:10249` (`[::1]:10249` when `--bind-address` is IPv6).
    #[arg(long)]
    pub metrics_bind_address: Option<String>,
    /// The health server's port when `--healthz-bind-address` is a bare IP; 0 turns
    /// the server off (deprecated upstream, kept for its scripts).
    #[arg(long, default_value_t = 10256)]
    pub healthz_port: u16,
    /// The metrics server's port when `--metrics-bind-address` is a bare IP; 0 turns
    /// the server off (deprecated upstream).
    #[arg(long, default_value_t = 10249)]
    pub metrics_port: u16,
    /// Kubeconfig of the apiserver to watch (required unless `--cleanup`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The node's name, when not the hostname (endpoints on it are local).
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The pods' CIDRs (comma-separated): traffic from elsewhere to a ClusterIP is
    /// masqueraded, and pod traffic short-circuits Local traffic policies.
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// The proxy backend.
    #[arg(long, value_enum, default_value = "nftables")]
    pub proxy_mode: ProxyMode,
    /// CIDRs (comma-separated) whose local addresses accept NodePorts; default: all.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Masquerade all traffic sent to ClusterIPs.
    #[arg(long)]
    pub masquerade_all: bool,
    /// The shortest interval between syncs (bursts of changes are batched).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_sync_period: Duration,
    /// The interval of the consistency check of the programmed table.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub sync_period: Duration,
    /// Remove the proxy's nftables tables and exit.
    #[arg(long)]
    pub cleanup: bool,
    /// `nf_conntrack_max` per CPU (0: leave the limit and `--conntrack-min` alone).
    #[arg(long, default_value_t = 32768)]
    pub conntrack_max_per_core: u64,
    /// The floor of `nf_conntrack_max` (over `--conntrack-max-per-core` × CPUs).
    #[arg(long, default_value_t = 131_072)]
    pub conntrack_min: u64,
    /// `nf_conntrack_tcp_timeout_established` (0: leave as is).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_established: Duration,
    /// `nf_conntrack_tcp_timeout_close_wait` (0: leave as is).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_close_wait: Duration,
    /// Set `nf_conntrack_tcp_be_liberal` (out-of-window packets are not INVALID).
    #[arg(long)]
    pub conntrack_tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout` (0: leave as is).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub conntrack_udp_timeout: Duration,
    /// `nf_conntrack_udp_timeout_stream` (0: leave as is).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub conntrack_udp_timeout_stream: Duration,
}

impl ProxyArgs {
    /// The conntrack sysctls to apply at start (`KubeProxyConfiguration.conntrack`).
    #[must_use]
    pub fn conntrack(&self) -> nodelet_netproxy::conntrack::sysctl::ConntrackSettings {
        nodelet_netproxy::conntrack::sysctl::ConntrackSettings {
            max_per_core: self.conntrack_max_per_core,
            min: self.conntrack_min,
            tcp_established_timeout: self.conntrack_tcp_timeout_established,
            tcp_close_wait_timeout: self.conntrack_tcp_timeout_close_wait,
            tcp_be_liberal: self.conntrack_tcp_be_liberal,
            udp_timeout: self.conntrack_udp_timeout,
            udp_stream_timeout: self.conntrack_udp_timeout_stream,
        }
    }
}

/// The agent's `--proxy-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AgentProxyMode {
    None,
    Nftables,
}

/// `nodelet proxy --proxy-mode` (IPVS is not implemented yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    Nftables,
}

/// `nodelet run --until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunUntil {
    /// Every pod Succeeded or Failed.
    Complete,
    /// Every pod Ready (or already Succeeded).
    Ready,
}

/// `nodelet run --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunOutput {
    /// Status lines on stdout.
    Text,
    /// The final PodStatus as JSON on stdout.
    Json,
}

/// Image tools.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image-layout tar archive.
    Import {
        /// The archive.
        file: PathBuf,
    },
    /// List images.
    Ls,
}

/// `nodelet validate --output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidateOutputArg {
    /// Errors only.
    Text,
    /// The defaulted pods as YAML.
    Yaml,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The agent's flags.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// A `KubeletConfiguration` file (`kubelet.config.k8s.io/v1beta1`, YAML or JSON),
    /// as upstream's kubelet reads: flags given on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The service proxy inside the agent when it joins a cluster (`--kubeconfig`),
    /// over the agent's apiserver client (`nftables`, as `nodelet proxy` runs it);
    /// `none` leaves Services to a separate `nodelet proxy` or kube-proxy.
    #[arg(long, value_enum, default_value = "nftables")]
    pub proxy_mode: AgentProxyMode,
    /// A `KubeProxyConfiguration` file for the in-agent proxy (`--proxy-mode=nftables`);
    /// its node name is the agent's.
    #[arg(long)]
    pub proxy_config: Option<PathBuf>,
    /// A directory of `KubeletConfiguration` drop-ins (`*.conf`, lexical order)
    /// merged over `--config`, as upstream's.
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Directory (or single file) of static pod manifests.
    #[arg(long)]
    pub pod_manifest_path: Option<PathBuf>,
    /// How often the manifest directory is rescanned besides inotify.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub file_check_frequency: Duration,
    /// A URL serving pod manifests, polled every `--http-check-frequency`.
    #[arg(long)]
    pub manifest_url: Option<String>,
    /// Headers for `--manifest-url` requests, `key:value` (repeatable, or comma separated).
    #[arg(long)]
    pub manifest_url_header: Vec<String>,
    /// How often `--manifest-url` is polled.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub http_check_frequency: Duration,
    /// Accept pods pushed with `POST /pods` (and `DELETE /pods/<ns>/<name>`).
    #[arg(long)]
    pub enable_pod_push: bool,
    /// Address of the push API.
    #[arg(long, default_value = "127.0.0.1")]
    pub pod_push_address: IpAddr,
    /// Port of the push API (10250 is the kubelet API's).
    #[arg(long, default_value_t = 10240)]
    pub pod_push_port: u16,
    /// The agent's state directory.
    #[arg(long, default_value = "/var/lib/nodelet")]
    pub root_dir: PathBuf,
    /// Where container logs go (`<dir>/<ns>_<pod>_<uid>/<container>/<n>.log`).
    #[arg(long, default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,
    /// Where the `<pod>_<namespace>_<container>-<id>.log` symlinks to running
    /// containers' logs go, for log shippers (upstream's fixed `/var/log/containers`;
    /// a nodelet-only flag).
    #[arg(long, default_value = "/var/log/containers")]
    pub container_logs_dir: PathBuf,
    /// A container's log file is rotated once it reaches this size (a quantity;
    /// upstream's `containerLogMaxSize`); a negative size turns rotation off (0).
    #[arg(long, default_value = "10Mi", value_parser = parse_log_max_size)]
    pub container_log_max_size: u64,
    /// The most log files kept per container, the current one included (upstream's
    /// `containerLogMaxFiles`, at least 2).
    #[arg(long, default_value_t = 5, value_parser = parse_log_max_files)]
    pub container_log_max_files: u32,
    /// containerd socket.
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    pub container_runtime_endpoint: String,
    /// containerd namespace for everything the agent creates.
    #[arg(long, default_value = "k8s.io")]
    pub containerd_namespace: String,
    /// The node name (default: the hostname).
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The node IP reported as `hostIP` (default: the address of the default route's interface).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Address the read-only and secure ports listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub address: IpAddr,
    /// The read-only API port (`GET /pods`); 0 disables it.
    #[arg(long, default_value_t = 10255)]
    pub read_only_port: u16,
    /// The kubelet API's secure port, TLS and authn/authz.
    #[command(flatten)]
    pub secure: crate::server::secure::SecureArgs,
    /// The healthz port; 0 disables it.
    #[arg(long, default_value_t = 10248)]
    pub healthz_port: u16,
    /// Address the healthz port listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub healthz_bind_address: IpAddr,
    /// The pod CIDR of the built-in pod network, used when --cni-conf-dir holds no config:
    /// one CIDR of either family, or two comma-separated, one IPv4 and one IPv6
    /// (dual-stack; the first one's family is the pod's primary IP).
    #[arg(long, default_value = "10.88.0.0/16")]
    pub pod_cidr: String,
    /// The Linux bridge of the built-in pod network (nodelet's own flag; at most 15 bytes).
    /// Its IP allocations live in `<root-dir>/network/ipam/<bridge>`, its nftables
    /// tables are `ip nodelet-pods-<bridge>` (and `ip6` of that name for IPv6).
    #[arg(long, default_value = "nodelet0", value_parser = parse_bridge_name)]
    pub pod_network_bridge: String,
    /// CNI configuration directory.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// CNI plugin directories, in search order (comma separated).
    #[arg(
        long,
        default_value = "/opt/cni/bin,/usr/lib/cni",
        value_delimiter = ','
    )]
    pub cni_bin_dir: Vec<PathBuf>,
    /// Runtime handlers a pod selects through its RuntimeClass's `handler`
    /// (standalone: its `runtimeClassName`), one per flag or `;`-separated:
    /// `name=runtime_type[,Option=value...]` with containerd's runc shim options
    /// (`BinaryName`, `Root`, `NoPivotRoot`, `NoNewKeyring`, `ShimCgroup`, `IoUid`,
    /// `IoGid`). `runc` and `crun` (`/usr/bin/crun`) ship; a handler named here
    /// replaces a shipped one.
    #[arg(long, value_delimiter = ';', value_parser = parse_runtime_handler)]
    pub runtime_handlers: Vec<String>,
    /// Cluster DNS server IPs (comma separated) for pods with `dnsPolicy: ClusterFirst`.
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain, e.g. `cluster.local`.
    #[arg(long, default_value = "")]
    pub cluster_domain: String,
    /// The resolv.conf pods with `dnsPolicy: Default` inherit; empty for none.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Pull one image at a time (upstream's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub serialize_image_pulls: bool,
    /// With `--serialize-image-pulls=false`: at most this many pulls at once (unset: no limit).
    #[arg(long)]
    pub max_parallel_image_pulls: Option<usize>,
    /// If > 0, limit registry pull QPS to this value; if 0, unlimited (upstream's
    /// `registryPullQPS`). A pull over the limit fails with "pull QPS exceeded".
    #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
    pub registry_qps: i32,
    /// Maximum size of a bursty pulls, temporarily allows pulls to burst to this
    /// number, while still not exceeding `--registry-qps`; only used if
    /// `--registry-qps` > 0 (upstream's `registryBurst`).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub registry_burst: i32,
    /// Image garbage collection.
    #[command(flatten)]
    pub image_gc: crate::image::gc::ImageGcArgs,
    /// The cgroup under which the `kubepods` hierarchy is made.
    #[arg(long, default_value = "/")]
    pub cgroup_root: String,
    /// Cgroups, allocatable and per-pod limits.
    #[command(flatten)]
    pub resources: crate::cli::resources::ResourceArgs,
    /// Node-pressure eviction.
    #[command(flatten)]
    pub eviction: crate::node::eviction::EvictionArgs,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level filter (tracing's EnvFilter syntax; `RUST_LOG` overrides).
    #[arg(long, default_value = "info")]
    pub v: String,
    /// kubeconfig of the apiserver to join (client certificates, tokens and exec
    /// plugins as kube-rs supports them); absent: standalone.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Register the node with the apiserver (with `--kubeconfig`); `false` only
    /// updates the status of a Node someone else made.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub register_node: bool,
    /// Labels to add when registering the node, `key=value` (comma separated or
    /// repeated). Labels in the `kubernetes.io`/`k8s.io` namespaces must be in
    /// upstream's allowed set or under `kubelet.kubernetes.io`/`node.kubernetes.io`.
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints to register the node with, `key=value:Effect` or `key:Effect` (comma
    /// separated or repeated); applied only when the Node is created, as upstream.
    #[arg(long, value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// Requests per second to the apiserver (upstream's `kubeAPIQPS`; 0 means
    /// client-go's default of 5).
    #[arg(long, default_value_t = 50, allow_negative_numbers = true)]
    pub kube_api_qps: i32,
    /// Burst of requests to the apiserver (upstream's `kubeAPIBurst`; 0 means
    /// client-go's default of 10).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub kube_api_burst: i32,
    /// kubeconfig whose credentials (a bootstrap token) request the node's client
    /// certificate when `--kubeconfig` is missing or its certificate unusable; the
    /// agent then writes `--kubeconfig` pointing at `<cert-dir>/kubelet-client-current.pem`.
    #[arg(long)]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Where client certificates are kept (default `<root-dir>/pki`).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Request a new client certificate from the apiserver as the current one
    /// nears expiry (upstream's `rotateCertificates`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub rotate_certificates: bool,
}

impl AgentArgs {
    /// `--cert-dir`, or `<root-dir>/pki`.
    pub fn cert_dir(&self) -> PathBuf {
        self.cert_dir
            .clone()
            .unwrap_or_else(|| self.root_dir.join("pki"))
    }
}

/// A `--runtime-handlers` entry, checked here so a bad one stops the agent at start.
fn parse_runtime_handler(s: &str) -> Result<String, String> {
    nodelet_cri::runtime::handlers::parse_handler(s)
        .map(|_| s.trim().to_owned())
        .map_err(|e| e.to_string())
}

/// Parses `10s`, `1m30s`, `500ms`, `2h` (Go's `time.ParseDuration` subset kubelet flags use).
///
/// # Errors
/// A message naming the bad input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (want e.g. 20s, 1m30s, 500ms)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(digits);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(value * secs).map_err(|_| bad())?;
        rest = tail;
    }
    Ok(total)
}

/// `--container-log-max-size`: a quantity in bytes, rounded up as upstream's
/// `Quantity.Value()`; negative turns rotation off (0).
///
/// # Errors
/// Upstream's message for a value that is not a quantity.
pub fn parse_log_max_size(text: &str) -> Result<u64, String> {
    let q = nodelet_manifests::Quantity::parse(text)
        .map_err(|e| format!("failed to parse container log max size {text:?}: {e}"))?;
    if q.is_negative() {
        return Ok(0);
    }
    let bytes = (q.nanos() + 999_999_999) / 1_000_000_000;
    u64::try_from(bytes).map_err(|_| format!("container log max size {text:?} is too large"))
}

/// `--pod-network-bridge`: a Linux interface name (1-15 bytes, no `/`, whitespace or `:`).
///
/// # Errors
/// What is wrong with the name.
pub fn parse_bridge_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 15 {
        return Err(format!("bridge name {text:?} must be 1 to 15 bytes"));
    }
    if text
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        || text == "."
        || text == ".."
    {
        return Err(format!(
            "bridge name {text:?} is not a valid interface name"
        ));
    }
    Ok(text.to_owned())
}

/// `--container-log-max-files`: at least 2 (upstream's log manager refuses less).
///
/// # Errors
/// Upstream's message for fewer than 2.
pub fn parse_log_max_files(text: &str) -> Result<u32, String> {
    let n: i64 = text
        .parse()
        .map_err(|_| format!("invalid MaxFiles {text:?}, must be > 1"))?;
    if n <= 1 {
        return Err(format!("invalid MaxFiles {n}, must be > 1"));
    }
    u32::try_from(n).map_err(|_| format!("invalid MaxFiles {n}, too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names() {
        assert_eq!(parse_bridge_name("nodelet0"), Ok("nodelet0".to_owned()));
        assert!(parse_bridge_name("x".repeat(15).as_str()).is_ok());
        for bad in ["", "a-name-too-long-16", "a/b", "a b", "a:b", ".."] {
            assert!(parse_bridge_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value() {
        let cli = Cli::try_parse_from([
            "nodelet",
            "--proxy-mode=none",
            "--read-only-port=1",
            "--proxy-mode=nftables",
            "--read-only-port=2",
        ])
        .expect("parses");
        assert_eq!(cli.agent.read_only_port, 2);
        assert_eq!(cli.agent.proxy_mode, AgentProxyMode::Nftables);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "nodelet",
            "--pod-manifest-path",
            "/etc/kubernetes/manifests",
            "--read-only-port",
            "0",
        ])
        .expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.agent.read_only_port, 0);
        assert_eq!(cli.agent.root_dir, PathBuf::from("/var/lib/nodelet"));
        assert!(Cli::try_parse_from(["nodelet", "--read-only-port", "x"]).is_err());
    }

    #[test]
    fn runtime_handlers_parse_one_per_flag_or_semicolon_separated() {
        let cli = Cli::try_parse_from([
            "nodelet",
            "--runtime-handlers",
            "fast=io.containerd.runc.v2,BinaryName=/usr/bin/crun",
            "--runtime-handlers",
            "a=io.containerd.runc.v2;b=io.containerd.kata.v2",
        ])
        .expect("parses");
        assert_eq!(
            cli.agent.runtime_handlers,
            [
                "fast=io.containerd.runc.v2,BinaryName=/usr/bin/crun",
                "a=io.containerd.runc.v2",
                "b=io.containerd.kata.v2"
            ]
        );
        assert!(
            Cli::try_parse_from(["nodelet"])
                .expect("parses")
                .agent
                .runtime_handlers
                .is_empty()
        );
        let err = Cli::try_parse_from(["nodelet", "--runtime-handlers", "crun"])
            .expect_err("no runtime type")
            .to_string();
        assert!(
            err.contains("want name=runtime_type[,Option=value...]"),
            "{err}"
        );
        let err = Cli::try_parse_from([
            "nodelet",
            "--runtime-handlers",
            "fast=io.containerd.runc.v2,NoPivotRoot=maybe",
        ])
        .expect_err("bad bool")
        .to_string();
        assert!(
            err.contains("option NoPivotRoot: bad value \"maybe\""),
            "{err}"
        );
    }

    #[test]
    fn cluster_flags_parse_with_upstream_defaults() {
        let cli = Cli::try_parse_from(["nodelet"]).expect("parses");
        assert!(cli.agent.register_node);
        assert_eq!(
            (cli.agent.kube_api_qps, cli.agent.kube_api_burst),
            (50, 100)
        );
        let cli = Cli::try_parse_from([
            "nodelet",
            "--kubeconfig",
            "/etc/nodelet/kubeconfig",
            "--register-node=false",
            "--node-labels",
            "a=1,b=2",
            "--node-labels",
            "c=3",
            "--register-with-taints",
            "k=v:NoSchedule,k2:NoExecute",
            "--kube-api-qps",
            "-1",
        ])
        .expect("parses");
        assert!(!cli.agent.register_node);
        assert_eq!(cli.agent.node_labels, ["a=1", "b=2", "c=3"]);
        assert_eq!(
            cli.agent.register_with_taints,
            ["k=v:NoSchedule", "k2:NoExecute"]
        );
        assert_eq!(cli.agent.kube_api_qps, -1);
        let bare = Cli::try_parse_from(["nodelet", "--register-node"]).expect("parses");
        assert!(bare.agent.register_node);
    }

    #[test]
    fn run_flags_parse_with_ports_off() {
        let cli = Cli::try_parse_from([
            "nodelet",
            "run",
            "pod.yaml",
            "--until",
            "ready",
            "--timeout",
            "1m",
            "--root-dir",
            "/tmp/r",
        ])
        .expect("parses");
        let Some(Command::Run(run)) = cli.command else {
            panic!("not run: {:?}", cli.command);
        };
        assert_eq!(run.file, PathBuf::from("pod.yaml"));
        assert_eq!(run.until, RunUntil::Ready);
        assert_eq!(run.timeout, Duration::from_secs(60));
        assert_eq!(run.output, RunOutput::Text);
        assert!(!run.logs && !run.keep);
        assert_eq!(run.agent.read_only_port, 0);
        assert_eq!(run.agent.healthz_port, 0);
        assert_eq!(run.agent.v, "warn");
        assert_eq!(run.agent.root_dir, PathBuf::from("/tmp/r"));
        // The agent's own defaults are untouched.
        let cli = Cli::try_parse_from(["nodelet"]).expect("parses");
        assert_eq!(cli.agent.read_only_port, 10255);
        assert_eq!(cli.agent.v, "info");
    }
}
