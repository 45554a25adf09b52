//! libcni's result cache (`<cache_dir>/results/<network>-<container id>-<ifname>`, in
//! its `cniCacheV1` format): written after `ADD` so that `DEL` gets the result as
//! `prevResult` even after an agent restart, listed by the start-up reclaim to find the
//! attachments a `DEL` is still owed for, and written atomically (a temporary sibling,
//! fsynced, then renamed) so a crash never leaves half an entry.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tracing::warn;

use super::{Cni, CniError, CniRequest, Invocation, cni_args_pairs};

const CACHE_KIND: &str = "cniCacheV1";

impl Cni {
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

    /// libcni's cache file: `<cache_dir>/results/<network>-<container id>-<ifname>`.
    pub(super) fn cache_path(&self, req: &CniRequest<'_>) -> PathBuf {
        self.cfg.cache_dir.join("results").join(format!(
            "{}-{}-{}",
            self.list.name, req.container_id, req.ifname
        ))
    }

    /// Caches the result in libcni's `cniCacheV1` format, so that `DEL` (ours, or cnitool's)
    /// gets it as `prevResult` even after an agent restart.
    pub(super) fn write_cache(
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
            "capabilityArgs": inv.capability_args,
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

/// The cached `ADD` result, if a usable cache entry exists. Like libcni, an unreadable
/// entry means "no prevResult", not a failed teardown.
pub(super) fn read_cached_result(path: &Path) -> Option<Value> {
    read_cached_entry(path)?
        .get("result")
        .filter(|r| r.is_object())
        .cloned()
}

/// The capability arguments `ADD` was given (libcni's `capabilityArgs`, e.g. the
/// pod's `portMappings`), for a `DEL` whose caller no longer has them.
pub(super) fn read_cached_capability_args(path: &Path) -> Map<String, Value> {
    read_cached_entry(path)
        .and_then(|e| e.get("capabilityArgs").and_then(Value::as_object).cloned())
        .unwrap_or_default()
}

fn read_cached_entry(path: &Path) -> Option<Value> {
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
    Some(entry)
}

/// Writes `bytes` to a temporary sibling of `path` and renames it into place.
pub(super) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
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
    use super::super::tests::{LIST, cfg, req};
    use super::super::{CniCommand, cni_args_string};
    use super::*;

    #[test]
    fn cache_round_trip_uses_libcni_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("10.conflist"), LIST).expect("write");
        let cni = Cni::load(cfg(dir.path())).expect("load");
        let ns = PathBuf::from("/run/netns/x");
        let r = req(&ns);
        let args = cni_args_string(&r);
        let caps =
            json!({"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]})
                .as_object()
                .cloned()
                .expect("object");
        let inv = Invocation {
            command: CniCommand::Add,
            container_id: r.container_id,
            netns: "/run/netns/x",
            ifname: r.ifname,
            cni_args: &args,
            capability_args: &caps,
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
        assert_eq!(read_cached_capability_args(&path), caps);
        fs::write(&path, "garbage").expect("write");
        assert_eq!(read_cached_result(&path), None);
        assert!(read_cached_capability_args(&path).is_empty());
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
}
