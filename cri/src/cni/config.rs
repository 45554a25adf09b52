//! Loading the network configuration: the first valid `.conf`/`.conflist`/`.json` file
//! in the config directory by name (libcni's `ConfFiles` and `LoadConfList`, a single
//! `.conf` wrapped into a list), every bad file named in the error; and writing a
//! default bridge network for hosts that ask for one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use tracing::{info, warn};

use super::{
    CONFIG_EXTENSIONS, Cni, CniConfig, CniError, DEFAULT_CONFIG_FILE, NetworkList, PluginConf,
    SUPPORTED_VERSIONS, parse_cidr, validate_ifname, validate_name, write_atomically,
};

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

#[cfg(test)]
mod tests {
    use super::super::tests::{LIST, cfg};
    use super::*;

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
}
