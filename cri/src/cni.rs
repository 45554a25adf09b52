//! Pod networking through CNI plugins, following the CNI spec and what containerd's CRI
//! plugin does with `go-cni` and `libcni`.
//!
//! This module owns the runtime side of CNI: loading the network configuration from the
//! config directory, running the plugin chain (`ADD` in order, `DEL` in reverse) with the
//! spec's environment and stdin, the result cache that lets `DEL` hand plugins the result
//! of `ADD` (in libcni's `cniCacheV1` format, under `<cache_dir>/results`), and the
//! loopback interface that containerd brings up in every pod.
//!
//! It is written by hand: there is no maintained general-purpose CNI *client* crate for
//! Rust (the `cni-plugin` crate is for writing plugins, not running them), and the part of
//! libcni a runtime needs is small.
//!
//! Not (yet) supported: `CHECK`, `GC` and `STATUS`, and capability arguments
//! (`runtimeConfig`, e.g. `portMappings` for hostPort); a `portmap` plugin in the chain is
//! run and passes the result through unchanged.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::netns::NetNs;

/// Where CNI network configs are read from unless configured otherwise.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// Where plugin binaries are looked up, in order: the upstream location first, then
/// Debian's `containernetworking-plugins` package.
pub const DEFAULT_BIN_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];
/// libcni's cache directory; results live in its `results` subdirectory.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";
/// How long one plugin invocation may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The file [`Cni::write_default_config`] writes.
pub const DEFAULT_CONFIG_FILE: &str = "10-nodelet.conflist";

/// File extensions libcni and containerd read network configs from.
const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];
/// Config versions whose results carry `ips[].address` in CIDR form (0.3.0 and later).
const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// go-cni's loopback network: its name and version, kept as containerd has them.
const LOOPBACK_NETWORK: &str = "cni-loopback";
const LOOPBACK_VERSION: &str = "0.3.1";
const LOOPBACK_PLUGIN: &str = "loopback";
const LOOPBACK_IFNAME: &str = "lo";
const CACHE_KIND: &str = "cniCacheV1";
/// Linux's IFNAMSIZ less the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// Where the agent's CNI pieces live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// Directory holding `*.conflist`, `*.conf` or `*.json` network configs.
    pub conf_dir: PathBuf,
    /// Directories searched, in order, for plugin binaries; also passed as `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
    /// libcni-style cache directory; `ADD` results are kept in `<cache_dir>/results`.
    pub cache_dir: PathBuf,
    /// Limit on each plugin invocation; a plugin still running after it is killed.
    pub timeout: Duration,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: DEFAULT_CONF_DIR.into(),
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            cache_dir: DEFAULT_CACHE_DIR.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The network [`Cni::write_default_config`] writes when the node has none: a bridge with
/// host-local IPAM over the node's pod CIDR, plus portmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultNetwork {
    /// Network name (`name` in the conflist); it names the IPAM and result cache entries.
    pub name: String,
    /// Linux bridge name, at most 15 bytes (e.g. `cni0`).
    pub bridge: String,
    /// The node's pod CIDR, e.g. `10.244.1.0/24`; the bridge takes its first address.
    pub pod_cidr: String,
    /// Masquerade traffic leaving the pod CIDR (the bridge plugin's `ipMasq`, which
    /// installs iptables rules on the host).
    pub ip_masq: bool,
    /// host-local's `dataDir`; `None` keeps the plugin's default `/var/lib/cni/networks`.
    pub ipam_data_dir: Option<PathBuf>,
}

/// One pod's attachment, as the runtime identifies it to plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CniRequest<'a> {
    /// The sandbox ID (`CNI_CONTAINERID`, `K8S_POD_INFRA_CONTAINER_ID`).
    pub container_id: &'a str,
    /// The pinned network namespace (`CNI_NETNS`).
    pub netns: &'a Path,
    /// Interface to create in the pod (`CNI_IFNAME`), `eth0` for Kubernetes pods.
    pub ifname: &'a str,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: &'a str,
    /// `K8S_POD_NAME`.
    pub pod_name: &'a str,
    /// `K8S_POD_UID`.
    pub pod_uid: &'a str,
}

/// What [`Cni::setup`] got from the plugin chain.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    /// The pod's IPs on the requested interface: IPv4 first, then IPv6, each family in the
    /// order the plugins reported them (the first is the pod's primary IP).
    pub ips: Vec<IpAddr>,
    /// The final result of the chain as the last plugin printed it.
    pub raw: Value,
}

/// The two plugin commands the runtime issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// `ADD`: attach the container to the network.
    Add,
    /// `DEL`: release what `ADD` set up.
    Del,
}

impl CniCommand {
    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error object a failing plugin prints on stdout (CNI spec, "Error").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PluginError {
    /// Well-known codes are 1-99 (e.g. 7 invalid network config, 11 try again later).
    #[serde(default)]
    pub code: u64,
    /// Short message.
    #[serde(default)]
    pub msg: String,
    /// Longer explanation, often empty.
    #[serde(default)]
    pub details: String,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

/// Errors from loading CNI config or running plugins.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The config directory could not be listed.
    #[error("read CNI config directory {}: {source}", dir.display())]
    ReadConfigDir {
        /// The directory.
        dir: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The config directory holds no `*.conflist`, `*.conf` or `*.json` file.
    #[error("no CNI network config (*.conflist, *.conf, *.json) in {}", dir.display())]
    NoConfig {
        /// The directory.
        dir: PathBuf,
    },
    /// Every config file in the directory failed to load; each error names its file.
    #[error("no valid CNI network config in {}: {}", dir.display(), join_errors(errors))]
    NoValidConfig {
        /// The directory.
        dir: PathBuf,
        /// One error per file, in the order the files were tried.
        errors: Vec<CniError>,
    },
    /// A config file could not be read.
    #[error("read CNI config {}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A config file is not a valid network config or list.
    #[error("invalid CNI network config {}: {reason}", path.display())]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The default config could not be written.
    #[error("write CNI config {}: {source}", path.display())]
    WriteConfig {
        /// The file (or its directory).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A [`DefaultNetwork`] field is not usable.
    #[error("invalid default CNI network {field} {value:?}: {reason}")]
    InvalidDefaultNetwork {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A [`CniRequest`] field is not something plugins accept.
    #[error("invalid CNI request {field} {value:?}: {reason}")]
    InvalidRequest {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// `setup` was given a path that is not a mounted network namespace.
    #[error("{} is not a network namespace (missing, or no longer mounted)", path.display())]
    NetnsNotFound {
        /// The path.
        path: PathBuf,
    },
    /// No plugin binary of that type in any of the bin dirs.
    #[error("CNI plugin {plugin:?} not found in {}", display_paths(bin_dirs))]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// The directories searched.
        bin_dirs: Vec<PathBuf>,
    },
    /// The plugin could not be started.
    #[error("start CNI plugin {} for {command}: {source}", path.display())]
    Spawn {
        /// The plugin binary.
        path: PathBuf,
        /// The command.
        command: CniCommand,
        /// The underlying error.
        source: io::Error,
    },
    /// Talking to the plugin over its pipes, or waiting for it, failed.
    #[error("run CNI plugin {plugin} {command}: {source}")]
    Io {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: CniCommand,
        /// The underlying error.
        source: io::Error,
    },
    /// The plugin did not finish within the timeout and was killed.
    #[error("CNI plugin {plugin} {command} timed out after {timeout:?} and was killed")]
    Timeout {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: CniCommand,
        /// The limit it exceeded.
        timeout: Duration,
    },
    /// The plugin exited unsuccessfully.
    #[error(
        "CNI plugin {plugin} {command} failed ({status}): {}{}",
        error.as_ref().map_or_else(|| "no CNI error on stdout".to_string(), ToString::to_string),
        fmt_stderr(stderr)
    )]
    PluginFailed {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: CniCommand,
        /// Its exit status.
        status: ExitStatus,
        /// The CNI error it printed, if it printed one.
        error: Option<PluginError>,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// The plugin succeeded but its result is not usable.
    #[error("CNI plugin {plugin} {command} returned an invalid result: {reason}")]
    InvalidResult {
        /// The plugin type.
        plugin: String,
        /// The command.
        command: CniCommand,
        /// What is wrong with the result.
        reason: String,
    },
    /// The chain succeeded but gave the pod's interface no IP, which containerd also
    /// treats as a failed setup.
    #[error("CNI network {network} gave no IP to interface {ifname} of {container_id}")]
    NoPodIp {
        /// The network name.
        network: String,
        /// The interface.
        ifname: String,
        /// The sandbox ID.
        container_id: String,
    },
    /// The result cache could not be written or removed.
    #[error("CNI result cache {}: {source}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// JSON could not be encoded (cannot happen for the values built here, but not
    /// worth a panic).
    #[error("encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// Teardown met more than one error; it tried every step regardless.
    #[error("CNI teardown: {}", join_errors(errors))]
    Teardown {
        /// Each error, in the order met.
        errors: Vec<CniError>,
    },
}

fn join_errors(errors: &[CniError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn display_paths(paths: &[PathBuf]) -> String {
    let parts: Vec<_> = paths.iter().map(|p| p.display().to_string()).collect();
    format!("[{}]", parts.join(", "))
}

fn fmt_stderr(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// A loaded network configuration list and the plugins to run it with.
#[derive(Debug, Clone)]
pub struct Cni {
    cfg: CniConfig,
    list: NetworkList,
}

/// A network configuration list, as libcni's `NetworkConfigList`.
#[derive(Debug, Clone)]
struct NetworkList {
    name: String,
    cni_version: String,
    /// Never empty: loading rejects a list without plugins.
    plugins: Vec<PluginConf>,
    /// The file it was loaded from.
    source: PathBuf,
    /// The list as bytes, kept in the result cache as libcni does.
    bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
struct PluginConf {
    plugin_type: String,
    conf: Map<String, Value>,
}

/// The parts of one invocation that are the same for every plugin in a chain.
struct Invocation<'a> {
    command: CniCommand,
    container_id: &'a str,
    /// Empty on `DEL` when the namespace is already gone, as containerd passes it.
    netns: &'a str,
    ifname: &'a str,
    cni_args: &'a str,
}

impl Cni {
    /// Loads the network config: the lexicographically first `*.conflist`, `*.conf` or
    /// `*.json` file in `conf_dir` that parses, as libcni orders them. A single-plugin
    /// `.conf`/`.json` is wrapped into a list of one. Files that fail to load are skipped
    /// with a warning.
    ///
    /// # Errors
    ///
    /// [`CniError::NoConfig`] when the directory has no config file (or does not exist),
    /// [`CniError::NoValidConfig`] naming each file and its problem when none loads, and
    /// [`CniError::ReadConfigDir`] when the directory cannot be listed.
    pub fn load(cfg: CniConfig) -> Result<Cni, CniError> {
        let files = config_files(&cfg.conf_dir)?;
        if files.is_empty() {
            return Err(CniError::NoConfig {
                dir: cfg.conf_dir.clone(),
            });
        }
        let mut errors = Vec::new();
        for file in files {
            match NetworkList::from_file(&file) {
                Ok(list) => {
                    for e in &errors {
                        warn!(error = %e, "skipping invalid CNI network config");
                    }
                    info!(network = %list.name, file = %file.display(), version = %list.cni_version,
                        plugins = list.plugins.len(), "loaded CNI network config");
                    return Ok(Cni { cfg, list });
                }
                Err(e) => errors.push(e),
            }
        }
        Err(CniError::NoValidConfig {
            dir: cfg.conf_dir.clone(),
            errors,
        })
    }

    /// Writes [`DEFAULT_CONFIG_FILE`] into `conf_dir` (creating the directory) when it holds
    /// no network config yet: a `bridge` plugin (`isGateway`, `hairpinMode`, `ipMasq` as
    /// given) with `host-local` IPAM over the pod CIDR and a default route, followed by
    /// `portmap`. The file is written atomically.
    ///
    /// Returns the path written, or `None` when a config file was already there (it is
    /// left alone, valid or not: the node's admin owns it).
    ///
    /// # Errors
    ///
    /// [`CniError::InvalidDefaultNetwork`] for a bad name, bridge name or CIDR, and
    /// [`CniError::WriteConfig`] / [`CniError::ReadConfigDir`] for I/O failures.
    pub fn write_default_config(
        conf_dir: &Path,
        opts: &DefaultNetwork,
    ) -> Result<Option<PathBuf>, CniError> {
        let invalid = |field, value: &str, reason| CniError::InvalidDefaultNetwork {
            field,
            value: value.to_string(),
            reason,
        };
        validate_name(&opts.name).map_err(|r| invalid("name", &opts.name, r))?;
        validate_ifname(&opts.bridge).map_err(|r| invalid("bridge", &opts.bridge, r))?;
        let ipv6 = parse_cidr(&opts.pod_cidr)
            .map_err(|r| invalid("pod_cidr", &opts.pod_cidr, r))?
            .is_ipv6();

        if !config_files(conf_dir)?.is_empty() {
            return Ok(None);
        }
        let mut ipam = json!({
            "type": "host-local",
            "ranges": [[{ "subnet": opts.pod_cidr }]],
            "routes": [{ "dst": if ipv6 { "::/0" } else { "0.0.0.0/0" } }],
        });
        if let (Some(dir), Some(obj)) = (&opts.ipam_data_dir, ipam.as_object_mut()) {
            obj.insert("dataDir".into(), Value::String(dir.display().to_string()));
        }
        let list = json!({
            "cniVersion": "1.0.0",
            "name": opts.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": opts.bridge,
                    "isGateway": true,
                    "ipMasq": opts.ip_masq,
                    "hairpinMode": true,
                    "ipam": ipam,
                },
                { "type": "portmap", "capabilities": { "portMappings": true } },
            ],
        });
        let mut bytes = serde_json::to_vec_pretty(&list).map_err(|source| CniError::Encode {
            what: "default CNI config",
            source,
        })?;
        bytes.push(b'\n');

        let path = conf_dir.join(DEFAULT_CONFIG_FILE);
        let write_err = |source| CniError::WriteConfig {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(conf_dir).map_err(|source| CniError::WriteConfig {
            path: conf_dir.to_path_buf(),
            source,
        })?;
        // The temporary name has no config extension, so a concurrent load never sees a
        // half-written file.
        write_atomically(&path, &bytes, 0o644).map_err(write_err)?;
        info!(file = %path.display(), network = %opts.name, pod_cidr = %opts.pod_cidr,
            "wrote default CNI network config");
        Ok(Some(path))
    }

    /// The loaded network's name.
    pub fn network_name(&self) -> &str {
        &self.list.name
    }

    /// The loaded network's `cniVersion`.
    pub fn cni_version(&self) -> &str {
        &self.list.cni_version
    }

    /// The file the network was loaded from.
    pub fn config_path(&self) -> &Path {
        &self.list.source
    }

    /// The container IDs with a cached `ADD` result on this network and interface, in
    /// this agent's cache directory: the attachments a `DEL` is still owed for when no
    /// sandbox of that ID exists (the agent died between `ADD` and recording the
    /// sandbox). Entries of other networks are not looked at.
    pub fn cached_container_ids(&self, ifname: &str) -> Vec<String> {
        let prefix = format!("{}-", self.list.name);
        let suffix = format!("-{ifname}");
        let Ok(entries) = fs::read_dir(self.cfg.cache_dir.join("results")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
                (!id.is_empty()).then(|| id.to_owned())
            })
            .collect()
    }

    /// Removes the temporary files of cache writes that never finished (an agent killed
    /// between writing a result and renaming it into place leaves `.<entry>.<pid>.tmp`
    /// behind; the attachment itself is reclaimed through its netns pin). Only for a
    /// start-up pass, when this agent writes nothing. Returns how many were removed.
    pub fn remove_stale_cache_writes(&self) -> usize {
        let dir = self.cfg.cache_dir.join("results");
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with('.') && name.ends_with(".tmp")
            })
            .filter(|e| match fs::remove_file(e.path()) {
                Ok(()) => true,
                Err(err) => {
                    warn!(path = %e.path().display(), error = %err, "cannot remove an unfinished CNI cache write");
                    false
                }
            })
            .count()
    }

    /// Attaches a pod: brings up `lo` with the `loopback` plugin, then runs `ADD` over the
    /// plugin chain, giving each plugin the previous one's result as `prevResult`. The final
    /// result is cached (as libcni does, for `DEL`) and the pod's IPs on `req.ifname` are
    /// returned.
    ///
    /// Every plugin binary is looked up before anything runs. If a plugin fails part-way,
    /// `DEL` is run over the chain and loopback (best effort, errors logged) so that no
    /// IP or interface leaks, and the `ADD` error is returned; calling [`Cni::teardown`]
    /// afterwards is still safe.
    ///
    /// # Errors
    ///
    /// [`CniError::InvalidRequest`] for an ID or interface name plugins would reject,
    /// [`CniError::NetnsNotFound`], [`CniError::PluginNotFound`], a plugin failure
    /// ([`CniError::PluginFailed`], [`CniError::Timeout`], [`CniError::InvalidResult`], ...),
    /// [`CniError::NoPodIp`] when the result has no IP for the interface, and
    /// [`CniError::Cache`] when the result cannot be cached.
    pub async fn setup(&self, req: &CniRequest<'_>) -> Result<CniResult, CniError> {
        validate_request(req)?;
        if !NetNs::is_pinned(req.netns) {
            return Err(CniError::NetnsNotFound {
                path: req.netns.to_path_buf(),
            });
        }
        self.find_plugin(LOOPBACK_PLUGIN)?;
        for plugin in &self.list.plugins {
            self.find_plugin(&plugin.plugin_type)?;
        }
        let netns = req.netns.to_string_lossy();
        let cni_args = cni_args_string(req);
        let inv = Invocation {
            command: CniCommand::Add,
            container_id: req.container_id,
            netns: &netns,
            ifname: req.ifname,
            cni_args: &cni_args,
        };

        self.loopback(&inv).await?;
        let result = match self.add_and_cache(req, &inv).await {
            Ok(result) => result,
            Err(e) => {
                self.undo_failed_setup(req, &inv).await;
                return Err(e);
            }
        };
        info!(container_id = req.container_id, namespace = req.pod_namespace, pod = req.pod_name,
            network = %self.list.name, ips = ?result.ips, "pod network set up");
        Ok(result)
    }

    /// Detaches a pod: runs `DEL` over the chain in reverse order with the cached `ADD`
    /// result as `prevResult` (config versions 0.4.0 and later), removes the cache entry,
    /// and runs `DEL` for loopback.
    ///
    /// Tolerant as the spec requires: if the network namespace is already gone, plugins get
    /// an empty `CNI_NETNS` (as containerd passes it) and still release what they hold
    /// outside it, such as the IP; a missing cache entry just means no `prevResult`.
    /// Repeating a teardown succeeds.
    ///
    /// # Errors
    ///
    /// The chain's first plugin failure (the cache entry is then kept, so a retry gets the
    /// same `prevResult`), a loopback failure, or a cache removal failure; when several of
    /// these happen, [`CniError::Teardown`] carries them all.
    pub async fn teardown(&self, req: &CniRequest<'_>) -> Result<(), CniError> {
        validate_request(req)?;
        let netns = if NetNs::is_pinned(req.netns) {
            req.netns.to_string_lossy().into_owned()
        } else {
            debug!(container_id = req.container_id, netns = %req.netns.display(),
                "network namespace already gone; tearing down with empty CNI_NETNS");
            String::new()
        };
        let cni_args = cni_args_string(req);
        let inv = Invocation {
            command: CniCommand::Del,
            container_id: req.container_id,
            netns: &netns,
            ifname: req.ifname,
            cni_args: &cni_args,
        };
        let cache = self.cache_path(req);
        let prev = if version_at_least(&self.list.cni_version, (0, 4, 0)) {
            read_cached_result(&cache)
        } else {
            None
        };

        let mut errors = Vec::new();
        match self.del_chain(&inv, prev.as_ref()).await {
            Ok(()) => match fs::remove_file(&cache) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => errors.push(CniError::Cache {
                    path: cache.clone(),
                    source,
                }),
            },
            Err(e) => errors.push(e),
        }
        if let Err(e) = self.loopback(&inv).await {
            errors.push(e);
        }
        match errors.len() {
            0 => {
                info!(container_id = req.container_id, namespace = req.pod_namespace,
                    pod = req.pod_name, network = %self.list.name, "pod network torn down");
                Ok(())
            }
            1 => Err(errors.remove(0)),
            _ => Err(CniError::Teardown { errors }),
        }
    }

    /// Runs the loopback plugin (go-cni's `cni-loopback` network) for `inv.command`.
    async fn loopback(&self, inv: &Invocation<'_>) -> Result<(), CniError> {
        let mut conf = Map::new();
        conf.insert("type".into(), Value::String(LOOPBACK_PLUGIN.into()));
        let plugin = PluginConf {
            plugin_type: LOOPBACK_PLUGIN.into(),
            conf,
        };
        let stdin = plugin_stdin(&plugin, LOOPBACK_NETWORK, LOOPBACK_VERSION, None)?;
        let lo = Invocation {
            ifname: LOOPBACK_IFNAME,
            ..*inv
        };
        self.exec(LOOPBACK_PLUGIN, &lo, stdin).await.map(drop)
    }

    async fn add_and_cache(
        &self,
        req: &CniRequest<'_>,
        inv: &Invocation<'_>,
    ) -> Result<CniResult, CniError> {
        let mut prev: Option<Value> = None;
        let mut last_plugin = "";
        for plugin in &self.list.plugins {
            let stdin = plugin_stdin(
                plugin,
                &self.list.name,
                &self.list.cni_version,
                prev.as_ref(),
            )?;
            let stdout = self.exec(&plugin.plugin_type, inv, stdin).await?;
            let invalid = |reason: String| CniError::InvalidResult {
                plugin: plugin.plugin_type.clone(),
                command: inv.command,
                reason,
            };
            let result: Value = serde_json::from_slice(&stdout).map_err(|e| {
                invalid(format!(
                    "{e}; stdout: {}",
                    String::from_utf8_lossy(&stdout).trim()
                ))
            })?;
            if !result.is_object() {
                return Err(invalid(format!("not a JSON object: {result}")));
            }
            prev = Some(result);
            last_plugin = &plugin.plugin_type;
            // The IP is allocated and the veth made, nothing cached yet.
            crate::failpoint::hit("cni-after-add");
        }
        let Some(raw) = prev else {
            return Err(CniError::InvalidConfig {
                path: self.list.source.clone(),
                reason: "no plugins".into(),
            });
        };
        let ips = pod_ips(&raw, req.ifname).map_err(|reason| CniError::InvalidResult {
            plugin: last_plugin.to_string(),
            command: inv.command,
            reason,
        })?;
        if ips.is_empty() {
            return Err(CniError::NoPodIp {
                network: self.list.name.clone(),
                ifname: req.ifname.to_string(),
                container_id: req.container_id.to_string(),
            });
        }
        self.write_cache(req, inv, &raw)?;
        Ok(CniResult { ips, raw })
    }

    /// `DEL` over the chain in reverse, stopping at the first failure as libcni does.
    async fn del_chain(&self, inv: &Invocation<'_>, prev: Option<&Value>) -> Result<(), CniError> {
        for plugin in self.list.plugins.iter().rev() {
            let stdin = plugin_stdin(plugin, &self.list.name, &self.list.cni_version, prev)?;
            self.exec(&plugin.plugin_type, inv, stdin).await?;
        }
        Ok(())
    }

    /// Releases whatever a failed `ADD` left behind, as containerd's deferred cleanup in
    /// `RunPodSandbox` does.
    async fn undo_failed_setup(&self, req: &CniRequest<'_>, add: &Invocation<'_>) {
        let del = Invocation {
            command: CniCommand::Del,
            ..*add
        };
        if let Err(e) = self.del_chain(&del, None).await {
            warn!(container_id = req.container_id, error = %e,
                "cleanup after failed CNI setup: DEL failed");
        }
        if let Err(e) = self.loopback(&del).await {
            warn!(container_id = req.container_id, error = %e,
                "cleanup after failed CNI setup: loopback DEL failed");
        }
        match fs::remove_file(self.cache_path(req)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(container_id = req.container_id, error = %e,
                "cleanup after failed CNI setup: removing cached result failed"),
        }
    }

    /// The plugin binary for `plugin_type`: the first regular file of that name in the bin
    /// dirs, as libcni's `FindInPath`.
    fn find_plugin(&self, plugin_type: &str) -> Result<PathBuf, CniError> {
        self.cfg
            .bin_dirs
            .iter()
            .map(|dir| dir.join(plugin_type))
            .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file()))
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin_type.to_string(),
                bin_dirs: self.cfg.bin_dirs.clone(),
            })
    }

    /// Runs one plugin and returns its stdout on success.
    async fn exec(
        &self,
        plugin_type: &str,
        inv: &Invocation<'_>,
        stdin: Vec<u8>,
    ) -> Result<Vec<u8>, CniError> {
        let path = self.find_plugin(plugin_type)?;
        // Joined with ':' as libcni does (a directory with ':' in its name cannot be
        // expressed in CNI_PATH at all).
        let mut cni_path = OsString::new();
        for (i, dir) in self.cfg.bin_dirs.iter().enumerate() {
            if i > 0 {
                cni_path.push(":");
            }
            cni_path.push(dir);
        }
        debug!(plugin = plugin_type, command = %inv.command, container_id = inv.container_id,
            ifname = inv.ifname, netns = inv.netns, "running CNI plugin");

        let mut child = tokio::process::Command::new(&path)
            // The rest of the environment is inherited, as libcni does: plugins such as
            // portmap run iptables and need PATH.
            .env("CNI_COMMAND", inv.command.as_str())
            .env("CNI_CONTAINERID", inv.container_id)
            .env("CNI_NETNS", inv.netns)
            .env("CNI_IFNAME", inv.ifname)
            .env("CNI_ARGS", inv.cni_args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the child (on timeout) kills it; tokio reaps it.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CniError::Spawn {
                path: path.clone(),
                command: inv.command,
                source,
            })?;
        let stdin_pipe = child.stdin.take();
        let feed = async move {
            if let Some(mut pipe) = stdin_pipe {
                // A plugin that exits without reading its config closes the pipe; its exit
                // status then says what went wrong, not our EPIPE.
                if let Err(e) = pipe.write_all(&stdin).await {
                    debug!(plugin = plugin_type, error = %e, "writing CNI plugin stdin");
                }
            }
        };
        let run = async {
            let ((), output) = tokio::join!(feed, child.wait_with_output());
            output
        };
        let output = tokio::time::timeout(self.cfg.timeout, run)
            .await
            .map_err(|_| CniError::Timeout {
                plugin: plugin_type.to_string(),
                command: inv.command,
                timeout: self.cfg.timeout,
            })?
            .map_err(|source| CniError::Io {
                plugin: plugin_type.to_string(),
                command: inv.command,
                source,
            })?;

        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if !output.status.success() {
            return Err(CniError::PluginFailed {
                plugin: plugin_type.to_string(),
                command: inv.command,
                status: output.status,
                error: serde_json::from_slice(&output.stdout).ok(),
                stderr,
            });
        }
        if !stderr.is_empty() {
            debug!(plugin = plugin_type, command = %inv.command, stderr = %stderr,
                "CNI plugin wrote to stderr");
        }
        Ok(output.stdout)
    }

    /// libcni's cache file: `<cache_dir>/results/<network>-<container id>-<ifname>`.
    fn cache_path(&self, req: &CniRequest<'_>) -> PathBuf {
        self.cfg.cache_dir.join("results").join(format!(
            "{}-{}-{}",
            self.list.name, req.container_id, req.ifname
        ))
    }

    /// Caches the result in libcni's `cniCacheV1` format, so that `DEL` (ours, or cnitool's)
    /// gets it as `prevResult` even after an agent restart.
    fn write_cache(
        &self,
        req: &CniRequest<'_>,
        inv: &Invocation<'_>,
        result: &Value,
    ) -> Result<(), CniError> {
        let path = self.cache_path(req);
        let cni_args: Vec<[&str; 2]> = cni_args_pairs(req).to_vec();
        let entry = json!({
            "kind": CACHE_KIND,
            "containerId": req.container_id,
            "config": base64::engine::general_purpose::STANDARD.encode(&self.list.bytes),
            "ifName": req.ifname,
            "networkName": self.list.name,
            "netns": inv.netns,
            "cniArgs": cni_args,
            "result": result,
        });
        let bytes = serde_json::to_vec(&entry).map_err(|source| CniError::Encode {
            what: "CNI result cache entry",
            source,
        })?;
        let cache_err = |source| CniError::Cache {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(cache_err)?;
        }
        write_atomically(&path, &bytes, 0o600).map_err(cache_err)
    }
}

impl NetworkList {
    fn from_file(path: &Path) -> Result<NetworkList, CniError> {
        let bytes = fs::read(path).map_err(|source| CniError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| CniError::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        };
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(invalid("not a JSON object".into()));
        };
        let is_list = path.extension().is_some_and(|e| e == "conflist");
        let (obj, bytes) = if is_list {
            (obj, bytes)
        } else {
            // libcni's ConfListFromConf: a list of one with the plugin's name and version.
            if !obj.get("type").is_some_and(Value::is_string) && obj.contains_key("plugins") {
                return Err(invalid(
                    "a network config list in a file without the .conflist extension".into(),
                ));
            }
            let wrapped = json!({
                "name": obj.get("name").cloned().unwrap_or(Value::Null),
                "cniVersion": obj.get("cniVersion").cloned().unwrap_or(Value::Null),
                "plugins": [Value::Object(obj)],
            });
            let bytes = serde_json::to_vec(&wrapped).map_err(|source| CniError::Encode {
                what: "CNI network config list",
                source,
            })?;
            let Value::Object(list) = wrapped else {
                return Err(invalid("not a JSON object".into()));
            };
            (list, bytes)
        };
        NetworkList::from_object(&obj, bytes, path).map_err(invalid)
    }

    fn from_object(
        obj: &Map<String, Value>,
        bytes: Vec<u8>,
        path: &Path,
    ) -> Result<NetworkList, String> {
        let name = match obj.get("name") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err("missing or non-string \"name\"".into()),
        };
        validate_name(&name).map_err(|r| format!("network name {name:?}: {r}"))?;
        let cni_version = match obj.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err("missing or non-string \"cniVersion\"".into()),
        };
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(format!(
                "cniVersion {cni_version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ));
        }
        let Some(Value::Array(plugins)) = obj.get("plugins") else {
            return Err("missing or non-array \"plugins\"".into());
        };
        if plugins.is_empty() {
            return Err("\"plugins\" is empty".into());
        }
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let Value::Object(conf) = p else {
                    return Err(format!("plugins[{i}] is not an object"));
                };
                let plugin_type = match conf.get("type") {
                    Some(Value::String(t)) if !t.is_empty() => t.clone(),
                    _ => return Err(format!("plugins[{i}] has no \"type\"")),
                };
                // The type names a file in the bin dirs: it must not walk out of them.
                if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
                    return Err(format!(
                        "plugins[{i}] type {plugin_type:?} is not a file name"
                    ));
                }
                Ok(PluginConf {
                    plugin_type,
                    conf: conf.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NetworkList {
            name,
            cni_version,
            plugins,
            source: path.to_path_buf(),
            bytes,
        })
    }
}

/// The config files in `dir` with a config extension, sorted by name; a missing directory
/// has none.
pub(crate) fn config_files(dir: &Path) -> Result<Vec<PathBuf>, CniError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CniError::ReadConfigDir {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CniError::ReadConfigDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let has_ext = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e));
        // Follows symlinks, as config management often links configs into place.
        if has_ext && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The plugin's stdin: its config with the list's `name` and `cniVersion`, and
/// `prevResult` when there is one (libcni's `buildOneConfig`).
fn plugin_stdin(
    plugin: &PluginConf,
    name: &str,
    cni_version: &str,
    prev: Option<&Value>,
) -> Result<Vec<u8>, CniError> {
    let mut conf = plugin.conf.clone();
    conf.insert("name".into(), Value::String(name.into()));
    conf.insert("cniVersion".into(), Value::String(cni_version.into()));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    serde_json::to_vec(&Value::Object(conf)).map_err(|source| CniError::Encode {
        what: "CNI plugin config",
        source,
    })
}

/// The `CNI_ARGS` pairs containerd sets for a pod.
fn cni_args_pairs<'a>(req: &CniRequest<'a>) -> [[&'a str; 2]; 5] {
    [
        ["IgnoreUnknown", "1"],
        ["K8S_POD_NAMESPACE", req.pod_namespace],
        ["K8S_POD_NAME", req.pod_name],
        ["K8S_POD_INFRA_CONTAINER_ID", req.container_id],
        ["K8S_POD_UID", req.pod_uid],
    ]
}

fn cni_args_string(req: &CniRequest<'_>) -> String {
    cni_args_pairs(req)
        .iter()
        .map(|[k, v]| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Rejects what plugins would reject (libcni's `ValidateContainerID` and
/// `ValidateInterfaceName`), and values that would corrupt `CNI_ARGS`.
fn validate_request(req: &CniRequest<'_>) -> Result<(), CniError> {
    let invalid = |field, value: &str, reason| CniError::InvalidRequest {
        field,
        value: value.to_string(),
        reason,
    };
    validate_name(req.container_id).map_err(|r| invalid("container_id", req.container_id, r))?;
    validate_ifname(req.ifname).map_err(|r| invalid("ifname", req.ifname, r))?;
    for (field, value) in [
        ("pod_namespace", req.pod_namespace),
        ("pod_name", req.pod_name),
        ("pod_uid", req.pod_uid),
    ] {
        if value.contains(';') {
            return Err(invalid(
                field,
                value,
                "contains ';', which CNI_ARGS cannot carry",
            ));
        }
    }
    Ok(())
}

/// libcni's rule for network names and container IDs: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn validate_name(s: &str) -> Result<(), &'static str> {
    let mut chars = s.chars();
    match chars.next() {
        None => Err("is empty"),
        Some(c) if !c.is_ascii_alphanumeric() => Err("must start with a letter or digit"),
        Some(_) if chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) => Ok(()),
        Some(_) => Err("may contain only letters, digits, '_', '.' and '-'"),
    }
}

/// libcni's `ValidateInterfaceName`, which is the kernel's rule.
fn validate_ifname(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        Err("is empty")
    } else if s.len() > MAX_IFNAME_LEN {
        Err("is longer than 15 bytes")
    } else if s == "." || s == ".." {
        Err("is not a valid interface name")
    } else if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Err("contains '/', ':' or whitespace")
    } else {
        Ok(())
    }
}

/// Parses `addr/prefix` and returns the address.
fn parse_cidr(s: &str) -> Result<IpAddr, &'static str> {
    let (addr, prefix) = s.split_once('/').ok_or("is not in addr/prefix form")?;
    let addr: IpAddr = addr.parse().map_err(|_| "has an invalid address")?;
    let prefix: u8 = prefix.parse().map_err(|_| "has an invalid prefix length")?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err("has a prefix length too long for its family");
    }
    Ok(addr)
}

fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    v >= min
}

/// The IPs a result (0.3.0 and later: `ips[].address` in CIDR form) gives to `ifname`,
/// IPv4 first. As go-cni does, an IP without an `interface` index belongs to the pod's
/// interface.
fn pod_ips(result: &Value, ifname: &str) -> Result<Vec<IpAddr>, String> {
    let interfaces = match result.get("interfaces") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("\"interfaces\" is not an array".into()),
    };
    let ips = match result.get("ips") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err("\"ips\" is not an array".into()),
    };
    let mut out = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let Some(address) = ip.get("address").and_then(Value::as_str) else {
            return Err(format!("ips[{i}] has no \"address\""));
        };
        let addr = parse_cidr(address).map_err(|r| format!("ips[{i}].address {address:?} {r}"))?;
        if let Some(index) = ip.get("interface").filter(|v| !v.is_null()) {
            let iface = index
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| interfaces.get(n))
                .ok_or_else(|| format!("ips[{i}].interface {index} is not in \"interfaces\""))?;
            if iface.get("name").and_then(Value::as_str) != Some(ifname) {
                continue;
            }
        }
        out.push(addr);
    }
    // Stable: each family keeps the plugins' order.
    out.sort_by_key(IpAddr::is_ipv6);
    Ok(out)
}

/// The cached `ADD` result, if a usable cache entry exists. Like libcni, an unreadable
/// entry means "no prevResult", not a failed teardown.
fn read_cached_result(path: &Path) -> Option<Value> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read cached CNI result");
            return None;
        }
    };
    let entry: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "ignoring corrupt cached CNI result");
            return None;
        }
    };
    if entry.get("kind").and_then(Value::as_str) != Some(CACHE_KIND) {
        warn!(file = %path.display(), "ignoring cached CNI result of unknown kind");
        return None;
    }
    entry.get("result").filter(|r| r.is_object()).cloned()
}

/// Writes `bytes` to a temporary sibling of `path` and renames it into place.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    let written = write();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> CniConfig {
        CniConfig {
            conf_dir: dir.to_path_buf(),
            bin_dirs: vec!["/nonexistent".into()],
            cache_dir: dir.join("cache"),
            timeout: Duration::from_secs(5),
        }
    }

    fn req<'a>(netns: &'a Path) -> CniRequest<'a> {
        CniRequest {
            container_id: "abc123",
            netns,
            ifname: "eth0",
            pod_namespace: "default",
            pod_name: "web-0",
            pod_uid: "0b2e-11",
        }
    }

    const LIST: &str =
        r#"{"cniVersion":"1.0.0","name":"net1","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#;

    #[test]
    fn load_picks_first_valid_file_in_name_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("05-broken.conflist"), "{not json").expect("write");
        fs::write(
            dir.path().join("20-later.conflist"),
            LIST.replace("net1", "net2"),
        )
        .expect("write");
        fs::write(dir.path().join("10-first.conflist"), LIST).expect("write");
        fs::write(dir.path().join("00-ignored.txt"), "{").expect("write");
        let cni = Cni::load(cfg(dir.path())).expect("load");
        assert_eq!(cni.network_name(), "net1");
        assert_eq!(cni.cni_version(), "1.0.0");
        assert_eq!(cni.config_path(), dir.path().join("10-first.conflist"));
    }

    #[test]
    fn load_wraps_single_conf() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("10-one.conf"),
            r#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"cni0"}"#,
        )
        .expect("write");
        let cni = Cni::load(cfg(dir.path())).expect("load");
        assert_eq!(cni.network_name(), "single");
        assert_eq!(cni.list.plugins.len(), 1);
        assert_eq!(cni.list.plugins[0].plugin_type, "bridge");
        let cached: Value = serde_json::from_slice(&cni.list.bytes).expect("list bytes");
        assert_eq!(cached["plugins"][0]["bridge"], "cni0");
    }

    #[test]
    fn load_errors_name_every_bad_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("10-a.conflist"), "{not json").expect("write");
        fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"cniVersion":"0.2.0","name":"x","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("write");
        fs::write(
            dir.path().join("30-c.conf"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
        )
        .expect("write");
        fs::write(
            dir.path().join("40-d.json"),
            r#"{"cniVersion":"1.0.0","name":"x","type":"../../bin/sh"}"#,
        )
        .expect("write");
        let err = Cni::load(cfg(dir.path())).expect_err("no valid config");
        let msg = err.to_string();
        for needle in [
            "10-a.conflist: invalid JSON",
            "20-b.conflist: cniVersion \"0.2.0\" is not supported",
            "30-c.conf: a network config list in a file without the .conflist extension",
            "40-d.json: plugins[0] type \"../../bin/sh\" is not a file name",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
    }

    #[test]
    fn load_of_empty_or_missing_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Cni::load(cfg(dir.path())).expect_err("empty");
        assert!(matches!(err, CniError::NoConfig { .. }), "{err}");
        let err = Cni::load(cfg(&dir.path().join("missing"))).expect_err("missing");
        assert!(matches!(err, CniError::NoConfig { .. }), "{err}");
    }

    fn default_net(cidr: &str) -> DefaultNetwork {
        DefaultNetwork {
            name: "nodelet".into(),
            bridge: "cni0".into(),
            pod_cidr: cidr.into(),
            ip_masq: true,
            ipam_data_dir: Some("/var/lib/nodelet/ipam".into()),
        }
    }

    #[test]
    fn default_config_is_written_once_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf_dir = dir.path().join("net.d");
        let written = Cni::write_default_config(&conf_dir, &default_net("10.244.1.0/24"))
            .expect("write")
            .expect("written");
        assert_eq!(written, conf_dir.join(DEFAULT_CONFIG_FILE));
        let v: Value = serde_json::from_slice(&fs::read(&written).expect("read")).expect("json");
        assert_eq!(v["name"], "nodelet");
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][0]["isGateway"], true);
        assert_eq!(v["plugins"][0]["hairpinMode"], true);
        assert_eq!(v["plugins"][0]["ipMasq"], true);
        let ipam = &v["plugins"][0]["ipam"];
        assert_eq!(ipam["type"], "host-local");
        assert_eq!(ipam["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(ipam["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(ipam["dataDir"], "/var/lib/nodelet/ipam");
        assert_eq!(v["plugins"][1]["type"], "portmap");

        let again = Cni::write_default_config(&conf_dir, &default_net("10.9.0.0/16"))
            .expect("second write");
        assert_eq!(again, None);
        let cni = Cni::load(cfg(&conf_dir)).expect("load");
        assert_eq!(cni.network_name(), "nodelet");
        assert_eq!(cni.list.plugins.len(), 2);
    }

    #[test]
    fn default_config_ipv6_route_and_validation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Cni::write_default_config(dir.path(), &default_net("fd00:10::/64"))
            .expect("write")
            .expect("written");
        let v: Value = serde_json::from_slice(&fs::read(path).expect("read")).expect("json");
        assert_eq!(v["plugins"][0]["ipam"]["routes"][0]["dst"], "::/0");

        let other = tempfile::tempdir().expect("tempdir");
        for bad in ["10.0.0.0", "10.0.0.0/33", "nope/8"] {
            let err =
                Cni::write_default_config(other.path(), &default_net(bad)).expect_err("bad cidr");
            assert!(err.to_string().contains("pod_cidr"), "{err}");
        }
        let mut long = default_net("10.0.0.0/24");
        long.bridge = "a-very-long-bridge".into();
        let err = Cni::write_default_config(other.path(), &long).expect_err("long bridge");
        assert!(err.to_string().contains("bridge"), "{err}");
        assert!(config_files(other.path()).expect("list").is_empty());
    }

    #[test]
    fn pod_ips_for_1_0_0_and_0_4_0_results() {
        let v100 = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [
                {"address": "fd00::5/64", "interface": 2},
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
                {"address": "10.1.0.1/24", "interface": 0},
            ],
        });
        assert_eq!(
            pod_ips(&v100, "eth0").expect("ips"),
            vec![
                "10.1.0.5".parse::<IpAddr>().expect("ip"),
                "fd00::5".parse().expect("ip")
            ]
        );
        let v040 = json!({
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.2.0.7/16"}],
        });
        assert_eq!(
            pod_ips(&v040, "eth0").expect("ips"),
            vec!["10.2.0.7".parse::<IpAddr>().expect("ip")]
        );
        let bad_index = json!({"ips": [{"address": "10.2.0.7/16", "interface": 3}]});
        assert!(pod_ips(&bad_index, "eth0").is_err());
        let bad_addr = json!({"ips": [{"address": "10.2.0.7"}]});
        assert!(pod_ips(&bad_addr, "eth0").is_err());
        assert!(pod_ips(&json!({}), "eth0").expect("empty").is_empty());
    }

    #[test]
    fn stdin_injects_name_version_and_prev_result() {
        let plugin = PluginConf {
            plugin_type: "portmap".into(),
            conf: json!({"type": "portmap", "name": "ignored", "snat": true})
                .as_object()
                .cloned()
                .expect("object"),
        };
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let stdin = plugin_stdin(&plugin, "net1", "1.0.0", Some(&prev)).expect("stdin");
        let v: Value = serde_json::from_slice(&stdin).expect("json");
        assert_eq!(v["name"], "net1");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["snat"], true);
        assert_eq!(v["prevResult"], prev);
        let v: Value =
            serde_json::from_slice(&plugin_stdin(&plugin, "n", "0.4.0", None).expect("stdin"))
                .expect("json");
        assert!(v.get("prevResult").is_none());
    }

    #[test]
    fn cni_args_match_containerd() {
        let ns = PathBuf::from("/run/netns/x");
        assert_eq!(
            cni_args_string(&req(&ns)),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0b2e-11"
        );
    }

    #[test]
    fn requests_plugins_would_reject_are_refused() {
        let ns = PathBuf::from("/run/netns/x");
        assert!(validate_request(&req(&ns)).is_ok());
        for (mutate, field) in [
            (
                (|r: &mut CniRequest<'_>| r.container_id = "-x") as fn(&mut CniRequest<'_>),
                "container_id",
            ),
            (|r| r.container_id = "a/b", "container_id"),
            (|r| r.ifname = "eth0:1", "ifname"),
            (|r| r.ifname = "abcdefghijklmnop", "ifname"),
            (|r| r.pod_name = "a;K8S_POD_UID=x", "pod_name"),
        ] {
            let mut r = req(&ns);
            mutate(&mut r);
            let err = validate_request(&r).expect_err(field);
            assert!(
                matches!(&err, CniError::InvalidRequest { field: f, .. } if *f == field),
                "{err}"
            );
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("0.4.0", (0, 4, 0)));
        assert!(version_at_least("1.0.0", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
    }

    #[test]
    fn cache_round_trip_uses_libcni_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("10.conflist"), LIST).expect("write");
        let cni = Cni::load(cfg(dir.path())).expect("load");
        let ns = PathBuf::from("/run/netns/x");
        let r = req(&ns);
        let args = cni_args_string(&r);
        let inv = Invocation {
            command: CniCommand::Add,
            container_id: r.container_id,
            netns: "/run/netns/x",
            ifname: r.ifname,
            cni_args: &args,
        };
        let result = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]});
        cni.write_cache(&r, &inv, &result).expect("cache");
        let path = dir.path().join("cache/results/net1-abc123-eth0");
        assert_eq!(cni.cache_path(&r), path);
        let entry: Value = serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        assert_eq!(entry["kind"], "cniCacheV1");
        assert_eq!(entry["networkName"], "net1");
        assert_eq!(entry["cniArgs"][1], json!(["K8S_POD_NAMESPACE", "default"]));
        let config = base64::engine::general_purpose::STANDARD
            .decode(entry["config"].as_str().expect("config"))
            .expect("base64");
        assert_eq!(config, LIST.as_bytes());
        assert_eq!(read_cached_result(&path), Some(result));
        fs::write(&path, "garbage").expect("write");
        assert_eq!(read_cached_result(&path), None);
    }

    #[test]
    fn unfinished_cache_writes_are_removed_and_entries_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("10.conflist"), LIST).expect("write");
        let cni = Cni::load(cfg(dir.path())).expect("load");
        assert_eq!(cni.remove_stale_cache_writes(), 0, "no cache directory yet");
        let results = dir.path().join("cache/results");
        fs::create_dir_all(&results).expect("mkdir");
        fs::write(results.join("net1-abc123-eth0"), "{}").expect("entry");
        // What a kill between writing and renaming leaves.
        fs::write(results.join(".net1-def456-eth0.4242.tmp"), "{").expect("temp");
        assert_eq!(cni.remove_stale_cache_writes(), 1);
        let left: Vec<String> = fs::read_dir(&results)
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["net1-abc123-eth0"]);
        assert_eq!(cni.cached_container_ids("eth0"), ["abc123"]);
    }

    #[test]
    fn plugin_error_display() {
        let e: PluginError =
            serde_json::from_str(r#"{"code":7,"msg":"bad config","details":"no subnet"}"#)
                .expect("parse");
        assert_eq!(e.to_string(), "code 7: bad config (no subnet)");
    }
}
