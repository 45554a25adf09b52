//! Pod networking through CNI plugins, following the CNI spec and what containerd's CRI
//! plugin does with `go-cni` and `libcni`.
//!
//! This module owns the runtime side of CNI: loading the network configuration from the
//! config directory, running the plugin chain (`ADD` in order, `DEL` in reverse) with the
//! spec's environment and stdin, the result cache that lets `DEL` hand plugins the result
//! of `ADD` (in libcni's `cniCacheV1` format, under `<cache_dir>/results`), and the
//! loopback interface that containerd brings up in every pod.
//!
//! Split by concern: [`config`] (loading the network configuration), [`cache`] (the
//! result cache) and [`error`].
//!
//! It is written by hand: there is no maintained general-purpose CNI *client* crate for
//! Rust (the `cni-plugin` crate is for writing plugins, not running them), and the part of
//! libcni a runtime needs is small.
//!
//! Capability arguments: the pod's hostPorts go as `runtimeConfig.portMappings` (as
//! containerd's CRI plugin passes them) to the plugins whose `capabilities` has
//! `portMappings: true` (libcni's `injectRuntimeConfig`), on `ADD` and on `DEL` (from
//! the result cache, where they are kept with the result, when the caller has none).
//!
//! Not (yet) supported: `CHECK`, `GC` and `STATUS`, and capability arguments other than
//! `portMappings`.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::netns::NetNs;

mod cache;
mod config;
mod error;
mod request;
mod result;

use cache::{read_cached_capability_args, read_cached_result, write_atomically};
pub use config::DefaultNetwork;
pub(crate) use config::config_files;
pub use error::{CniError, PluginError};
use request::{
    capability_args, cni_args_pairs, cni_args_string, validate_ifname, validate_name,
    validate_request,
};
use result::{parse_cidr, pod_ips};

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
    /// The pod's hostPorts, passed as `runtimeConfig.portMappings` to plugins with that
    /// capability; on teardown, empty means "those `ADD` was given" (from the cache).
    pub port_mappings: &'a [crate::podnet::PortMapping],
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
    /// libcni's `CapabilityArgs`: injected as `runtimeConfig` per plugin capability.
    capability_args: &'a Map<String, Value>,
}

impl Cni {
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
        let caps = capability_args(req.port_mappings);
        let inv = Invocation {
            command: CniCommand::Add,
            container_id: req.container_id,
            netns: &netns,
            ifname: req.ifname,
            cni_args: &cni_args,
            capability_args: &caps,
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
        let cache = self.cache_path(req);
        let caps = if req.port_mappings.is_empty() {
            read_cached_capability_args(&cache)
        } else {
            capability_args(req.port_mappings)
        };
        let inv = Invocation {
            command: CniCommand::Del,
            container_id: req.container_id,
            netns: &netns,
            ifname: req.ifname,
            cni_args: &cni_args,
            capability_args: &caps,
        };
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
        let stdin = plugin_stdin(
            &plugin,
            LOOPBACK_NETWORK,
            LOOPBACK_VERSION,
            None,
            &Map::new(),
        )?;
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
                inv.capability_args,
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
            let stdin = plugin_stdin(
                plugin,
                &self.list.name,
                &self.list.cni_version,
                prev,
                inv.capability_args,
            )?;
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
}

/// The plugin's stdin: its config with the list's `name` and `cniVersion`, the
/// `runtimeConfig` its `capabilities` ask for from `caps`, and `prevResult` when there
/// is one (libcni's `buildOneConfig` and `injectRuntimeConfig`).
fn plugin_stdin(
    plugin: &PluginConf,
    name: &str,
    cni_version: &str,
    prev: Option<&Value>,
    caps: &Map<String, Value>,
) -> Result<Vec<u8>, CniError> {
    let mut conf = plugin.conf.clone();
    conf.insert("name".into(), Value::String(name.into()));
    conf.insert("cniVersion".into(), Value::String(cni_version.into()));
    let wanted = conf.get("capabilities").and_then(Value::as_object);
    let runtime_config: Map<String, Value> = caps
        .iter()
        .filter(|(cap, _)| wanted.and_then(|w| w.get(*cap)) == Some(&Value::Bool(true)))
        .map(|(cap, v)| (cap.clone(), v.clone()))
        .collect();
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    serde_json::to_vec(&Value::Object(conf)).map_err(|source| CniError::Encode {
        what: "CNI plugin config",
        source,
    })
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

#[cfg(test)]
mod tests;
