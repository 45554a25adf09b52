//! What goes wrong running CNI: [`CniError`] for the runtime's callers, and the
//! [`PluginError`] object a failing plugin prints (CNI spec, "Error").

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use serde::Deserialize;

use super::CniCommand;

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
