//! `--config` and `--config-dir`: upstream kubelet's `KubeletConfiguration` file
//! (`kubelet.config.k8s.io/v1beta1`, YAML or JSON) and its drop-in directory, read
//! before anything starts and folded into the agent's flags.
//!
//! As upstream (`cmd/kubelet/app/server.go`, v1.37): the file replaces the flag
//! defaults with the v1beta1 defaults (so `readOnlyPort` is 0 unless the file sets
//! it), relative paths in it resolve against its directory, and an absent
//! `evictionHard` becomes the default thresholds before the drop-ins are merged. The
//! drop-ins (`*.conf` under `--config-dir`, walked recursively in lexical order, each
//! a partial `KubeletConfiguration` with `apiVersion`/`kind`) are JSON-merge-patched
//! (RFC 7386) over it in turn: maps merge key by key, lists are replaced, `null`
//! removes; their relative paths stay relative to the working directory, as
//! upstream's. Flags given on the command line override both.
//!
//! Decoding is strict: a field upstream's v1beta1 type lacks is an error naming the
//! file and the field path (upstream 1.37 only logs its strict-decoding error for the
//! main file and decodes again leniently; a typo here stops the agent instead). Fields
//! upstream has and nodelet ignores are named in one warning at start
//! ([`Loaded::unsupported`]).

mod apply;
mod convert;
pub(crate) mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _};
use serde_json::{Map, Value};
use thiserror::Error;

pub use apply::apply;
pub use schema::Problem;

use crate::cli::{AgentArgs, Cli, Command};

/// The `apiVersion` a file must have.
pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
/// The `kind` a file must have.
pub const KIND: &str = "KubeletConfiguration";
/// The extension of drop-in files; others in `--config-dir` are skipped.
const DROP_IN_EXTENSION: &str = "conf";

/// Fields holding paths (upstream `KubeletConfigurationPathRefs`): relative ones in
/// the `--config` file resolve against its directory.
const PATH_FIELDS: [&[&str]; 7] = [
    &["staticPodPath"],
    &["authentication", "x509", "clientCAFile"],
    &["tlsCertFile"],
    &["tlsPrivateKeyFile"],
    &["resolvConf"],
    &["volumePluginDir"],
    &["podLogsDir"],
];

/// A configuration file that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    /// `nodelet proxy --config`: a `KubeProxyConfiguration` that cannot be used.
    #[error(transparent)]
    Proxy(#[from] crate::cli::proxy_config::ProxyConfigError),
    /// The file cannot be read.
    #[error("kubelet config file {}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is empty (upstream: some parameters are required).
    #[error("kubelet config file {} was empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Not YAML or JSON.
    #[error("kubelet config file {}: cannot parse: {source}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's error, with its line and column.
        source: serde_yaml::Error,
    },
    /// YAML that has no JSON form (a non-string key, a tagged value).
    #[error("kubelet config file {}: not JSON-compatible YAML: {source}", path.display())]
    NotJson {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// Not a mapping at the top.
    #[error("kubelet config file {}: want a {KIND} object, got {got}", path.display())]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// What it holds instead.
        got: &'static str,
    },
    /// `apiVersion`/`kind` missing or not `kubelet.config.k8s.io/v1beta1`
    /// `KubeletConfiguration`.
    #[error(
        "kubelet config file {}: apiVersion {api_version:?}, kind {kind:?}: want apiVersion {API_VERSION:?}, kind {KIND:?}",
        path.display()
    )]
    Kind {
        /// The file.
        path: PathBuf,
        /// Its `apiVersion` (empty when missing).
        api_version: String,
        /// Its `kind` (empty when missing).
        kind: String,
    },
    /// Unknown or mistyped fields (strict decoding).
    #[error("kubelet config file {}: strict decoding error: {}", path.display(), join_problems(problems))]
    Strict {
        /// The file.
        path: PathBuf,
        /// Every problem, in field order.
        problems: Vec<Problem>,
    },
    /// A well-typed value nodelet cannot use (an address that is not an IP, a
    /// duration with a bad unit, …), found while applying the merged configuration.
    #[error("kubelet config file {}: field {field:?}: {reason}", path.display())]
    Value {
        /// The file that (last) set the field.
        path: PathBuf,
        /// The field path.
        field: String,
        /// Why.
        reason: String,
    },
    /// The drop-in directory cannot be walked.
    #[error("kubelet config drop-in directory {}: {source}", path.display())]
    Dir {
        /// The directory (or the entry that failed).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The configuration read from `--config` and `--config-dir`, merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The merged document (without defaults beyond upstream's `evictionHard` one).
    pub doc: Map<String, Value>,
    /// Whether a `--config` file was read: absent fields then take the v1beta1
    /// defaults rather than keeping the flag defaults.
    pub from_file: bool,
    /// The files read, in merge order.
    pub files: Vec<PathBuf>,
    /// For each top-level field, the file that last set it (for error messages).
    pub origins: std::collections::BTreeMap<String, PathBuf>,
}

impl Loaded {
    /// The fields set that nodelet ignores, as field paths (see
    /// [`schema::unsupported`]).
    pub fn unsupported(&self) -> Vec<String> {
        schema::unsupported(&self.doc)
    }

    /// The file that last set the top-level field of `field` (a dotted path).
    fn origin(&self, field: &str) -> PathBuf {
        let top = field.split(['.', '[']).next().unwrap_or(field);
        self.origins
            .get(top)
            .or_else(|| self.files.last())
            .cloned()
            .unwrap_or_default()
    }
}

/// Reads `--config` (when given) and every drop-in under `--config-dir` (when given)
/// and merges them as upstream. `None` when neither is given.
///
/// # Errors
/// The first file that cannot be read, parsed or strictly decoded.
pub fn load(
    config: Option<&Path>,
    config_dir: Option<&Path>,
) -> Result<Option<Loaded>, ConfigFileError> {
    if config.is_none() && config_dir.is_none() {
        return Ok(None);
    }
    let mut files = Vec::new();
    let mut origins = std::collections::BTreeMap::new();
    let mut doc = match config {
        Some(path) => {
            let path = absolute(path);
            let mut doc = read_document(&path)?;
            if let Some(dir) = path.parent() {
                resolve_relative_paths(&mut doc, dir);
            }
            default_eviction_hard(&mut doc);
            for k in doc.keys() {
                origins.insert(k.clone(), path.clone());
            }
            files.push(path);
            doc
        }
        None => Map::new(),
    };
    if let Some(dir) = config_dir {
        let mut drop_ins = Vec::new();
        walk_drop_ins(dir, &mut drop_ins)?;
        for path in drop_ins {
            let patch = read_document(&path)?;
            for (k, v) in &patch {
                if v.is_null() {
                    origins.remove(k);
                } else {
                    origins.insert(k.clone(), path.clone());
                }
            }
            let mut merged = Value::Object(std::mem::take(&mut doc));
            merge_patch(&mut merged, &Value::Object(patch));
            if let Value::Object(m) = merged {
                doc = m;
            }
            files.push(path);
        }
    }
    Ok(Some(Loaded {
        doc,
        from_file: config.is_some(),
        files,
        origins,
    }))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// One file: read, parsed (YAML, of which JSON is a subset), its type meta checked
/// and its fields strictly decoded.
fn read_document(path: &Path) -> Result<Map<String, Value>, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    if text.trim().is_empty() {
        return Err(ConfigFileError::Empty {
            path: path.to_owned(),
        });
    }
    // Through serde_yaml's own Value, which refuses duplicate keys as upstream's
    // strict decoding does (serde_json's would keep the last silently).
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|source| ConfigFileError::Syntax {
            path: path.to_owned(),
            source,
        })?;
    let value = serde_json::to_value(yaml).map_err(|source| ConfigFileError::NotJson {
        path: path.to_owned(),
        source,
    })?;
    let doc = match value {
        Value::Object(doc) => doc,
        other => {
            return Err(ConfigFileError::NotAnObject {
                path: path.to_owned(),
                got: match other {
                    Value::Array(_) => "a list",
                    Value::String(_) => "a string",
                    Value::Number(_) => "a number",
                    Value::Bool(_) => "a boolean",
                    _ => "null",
                },
            });
        }
    };
    let meta = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let (api_version, kind) = (meta("apiVersion"), meta("kind"));
    if api_version != API_VERSION || kind != KIND {
        return Err(ConfigFileError::Kind {
            path: path.to_owned(),
            api_version,
            kind,
        });
    }
    let problems = schema::check(&doc);
    if !problems.is_empty() {
        return Err(ConfigFileError::Strict {
            path: path.to_owned(),
            problems,
        });
    }
    Ok(doc)
}

/// Upstream `resolveRelativePaths`: non-empty relative paths joined to `root`.
fn resolve_relative_paths(doc: &mut Map<String, Value>, root: &Path) {
    for field in PATH_FIELDS {
        if let Some(p) = string_at(doc, field)
            && !p.is_empty()
            && Path::new(p.as_str()).is_relative()
        {
            *p = root.join(p.as_str()).display().to_string();
        }
    }
}

/// The string at a field path, if there is one.
fn string_at<'a>(obj: &'a mut Map<String, Value>, path: &[&str]) -> Option<&'a mut String> {
    match path {
        [last] => match obj.get_mut(*last) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        [first, rest @ ..] => string_at(obj.get_mut(*first)?.as_object_mut()?, rest),
        [] => None,
    }
}

/// Upstream `loadConfigFile`: a file without `evictionHard` gets the default hard
/// thresholds, and with `mergeDefaultEvictionSettings` the defaults fill in the
/// signals it does not name; drop-ins then merge into that map key by key.
fn default_eviction_hard(doc: &mut Map<String, Value>) {
    let merge = doc.get("mergeDefaultEvictionSettings") == Some(&Value::Bool(true));
    let defaults = crate::node::eviction::config::DEFAULT_EVICTION_HARD;
    match doc.get_mut("evictionHard") {
        Some(Value::Object(hard)) => {
            if merge {
                for (k, v) in defaults {
                    hard.entry(k).or_insert_with(|| Value::String(v.to_owned()));
                }
            }
        }
        _ => {
            let hard = defaults
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect();
            doc.insert("evictionHard".to_owned(), Value::Object(hard));
        }
    }
}

/// Upstream's `filepath.WalkDir` over the drop-in directory: entries in lexical order,
/// directories descended into where they sort, `*.conf` files kept, others skipped.
fn walk_drop_ins(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ConfigFileError> {
    let dir_err = |source| ConfigFileError::Dir {
        path: dir.to_owned(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(dir_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(dir_err)?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| ConfigFileError::Dir {
            path: path.clone(),
            source,
        })?;
        if file_type.is_dir() {
            walk_drop_ins(&path, out)?;
        } else if path.extension().is_some_and(|e| e == DROP_IN_EXTENSION) {
            out.push(path);
        } else {
            tracing::debug!(file = %path.display(), "skipped file in drop-in directory (does not have .conf extension)");
        }
    }
    Ok(())
}

/// RFC 7386 JSON merge patch (what upstream's `jsonpatch.MergePatch` does).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The ids of the arguments given on the command line (or through the environment),
/// which win over the configuration files. (The group a flattened struct makes, such
/// as `ResourceArgs`, shows up beside its members; no field maps to it.)
pub fn explicit_args(matches: &ArgMatches) -> HashSet<String> {
    matches
        .ids()
        .filter(|id| {
            matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|id| id.as_str().to_owned())
        .collect()
}

/// Parses the command line as [`Cli::parse`] would, then folds `--config` and
/// `--config-dir` into the agent's flags (the agent's, or `nodelet run`'s). Returns
/// the CLI and the unsupported fields to warn about once logging is up.
///
/// # Errors
/// A configuration file that cannot be used. Command-line errors exit as clap's do.
pub fn parse_cli() -> Result<(Cli, Vec<String>), ConfigFileError> {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let unsupported = configure(&mut cli, &matches)?;
    Ok((cli, unsupported))
}

/// [`parse_cli`]'s second half, for an already parsed command line.
///
/// # Errors
/// A configuration file that cannot be used.
pub fn configure(cli: &mut Cli, matches: &ArgMatches) -> Result<Vec<String>, ConfigFileError> {
    let (args, matches, tool): (&mut AgentArgs, &ArgMatches, bool) = match &mut cli.command {
        None => (&mut cli.agent, matches, false),
        Some(Command::Run(run)) => match matches.subcommand_matches("run") {
            Some(sub) => (&mut run.agent, sub, true),
            None => return Ok(Vec::new()),
        },
        Some(Command::Proxy(proxy)) => {
            return match matches.subcommand_matches("proxy") {
                Some(sub) => crate::cli::proxy_config::configure(proxy, &explicit_args(sub)),
                None => Ok(Vec::new()),
            };
        }
        Some(_) => return Ok(Vec::new()),
    };
    let Some(loaded) = load(args.config.as_deref(), args.config_dir.as_deref())? else {
        return Ok(Vec::new());
    };
    // `nodelet run` runs beside an agent reading the same file: it keeps its own
    // ports (off unless given) and log level, or it would take the agent's.
    let own = (args.read_only_port, args.healthz_port, args.v.clone());
    apply(&loaded, args, &explicit_args(matches))?;
    if tool {
        (args.read_only_port, args.healthz_port, args.v) = own;
    }
    Ok(loaded.unsupported())
}
