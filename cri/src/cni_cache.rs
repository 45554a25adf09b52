//! The CNI network config, cached: parsed once and reloaded only when the config
//! directory changes, instead of being read and parsed for every pod.
//!
//! containerd's CRI plugin keeps its loaded config and reloads it from an fsnotify watch
//! on the directory. Here the check is a stamp taken on each use: the config files' names,
//! inodes, sizes and modification times (a `readdir` and a `stat` per file, no reads).
//! A file added, removed, renamed over (a new inode) or rewritten (a new mtime) gives a new
//! stamp and a reload; anything else gets the parsed [`Cni`] back. No watcher task, so
//! nothing to start, stop or lose events.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tracing::debug;

use crate::cni::{Cni, CniConfig, CniError, config_files};

/// What identifies one config file's version without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug)]
struct Cached {
    stamp: Vec<FileStamp>,
    cni: Arc<Cni>,
}

/// The loaded network config, reloaded when its directory changes.
#[derive(Debug)]
pub struct CniCache {
    cfg: CniConfig,
    cached: Mutex<Option<Cached>>,
    loads: Mutex<u64>,
}

impl CniCache {
    /// A cache over `cfg.conf_dir`; nothing is read until the first [`CniCache::get`].
    pub fn new(cfg: CniConfig) -> Self {
        CniCache {
            cfg,
            cached: Mutex::new(None),
            loads: Mutex::new(0),
        }
    }

    /// The CNI settings the configs are loaded with.
    pub fn config(&self) -> &CniConfig {
        &self.cfg
    }

    /// The network config as the directory holds it now: the cached one when no config
    /// file changed since it was loaded, else a fresh [`Cni::load`]. A failed load is not
    /// cached (the next call tries again).
    ///
    /// # Errors
    ///
    /// What [`Cni::load`] returns, and [`CniError::ReadConfigDir`] when the directory
    /// cannot be listed.
    pub fn get(&self) -> Result<Arc<Cni>, CniError> {
        // The stamp is taken before loading: a file changed during the load gives the
        // next call a different stamp, so the change is never missed.
        let stamp = self.stamp()?;
        {
            let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cached.as_ref().filter(|c| c.stamp == stamp) {
                return Ok(c.cni.clone());
            }
        }
        let cni = Arc::new(Cni::load(self.cfg.clone())?);
        *self.loads.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        debug!(dir = %self.cfg.conf_dir.display(), "CNI network config (re)loaded");
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        *cached = Some(Cached {
            stamp,
            cni: cni.clone(),
        });
        Ok(cni)
    }

    /// Whether the directory holds any config file (valid or not): no file means the
    /// agent's built-in network applies.
    ///
    /// # Errors
    ///
    /// [`CniError::ReadConfigDir`] when the directory cannot be listed.
    pub fn has_config(&self) -> Result<bool, CniError> {
        Ok(!config_files(&self.cfg.conf_dir)?.is_empty())
    }

    /// How many times a config was parsed (for tests and the bench).
    pub fn loads(&self) -> u64 {
        *self.loads.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stamp(&self) -> Result<Vec<FileStamp>, CniError> {
        let mut out = Vec::new();
        for path in config_files(&self.cfg.conf_dir)? {
            // A file that vanished between the listing and the stat stamps as empty: the
            // stamp differs from any loaded one, so the load that follows sees the truth.
            let m = std::fs::metadata(&path).ok();
            out.push(FileStamp {
                dev: m.as_ref().map_or(0, MetadataExt::dev),
                ino: m.as_ref().map_or(0, MetadataExt::ino),
                len: m.as_ref().map_or(0, MetadataExt::size),
                modified: m.as_ref().and_then(|m| m.modified().ok()),
                path,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    fn write(dir: &Path, file: &str, name: &str) {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": name,
            "plugins": [{"type": "bridge", "bridge": "br-test"}],
        });
        std::fs::write(dir.join(file), conf.to_string()).unwrap();
    }

    fn cache(dir: &Path) -> CniCache {
        CniCache::new(CniConfig {
            conf_dir: dir.to_path_buf(),
            bin_dirs: vec![],
            cache_dir: dir.join("cache"),
            timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn parsed_once_while_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "10-a.conflist", "net-a");
        let c = cache(dir.path());
        for _ in 0..50 {
            assert_eq!(c.get().unwrap().network_name(), "net-a");
        }
        assert_eq!(c.loads(), 1);
    }

    #[test]
    fn reloaded_when_a_file_is_rewritten_added_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "20-b.conflist", "net-b");
        let c = cache(dir.path());
        assert_eq!(c.get().unwrap().network_name(), "net-b");

        // Rewritten in place with the same length: the mtime tells.
        std::thread::sleep(Duration::from_millis(20));
        write(dir.path(), "20-b.conflist", "net-c");
        assert_eq!(c.get().unwrap().network_name(), "net-c");
        assert_eq!(c.loads(), 2);

        // A file sorting first takes over.
        write(dir.path(), "10-a.conflist", "net-a");
        assert_eq!(c.get().unwrap().network_name(), "net-a");

        // Renamed over (a new inode), as config management writes atomically.
        write(dir.path(), "tmp", "net-d");
        std::fs::rename(dir.path().join("tmp"), dir.path().join("10-a.conflist")).unwrap();
        assert_eq!(c.get().unwrap().network_name(), "net-d");

        std::fs::remove_file(dir.path().join("10-a.conflist")).unwrap();
        assert_eq!(c.get().unwrap().network_name(), "net-c");
        assert_eq!(c.loads(), 5);
        assert!(c.has_config().unwrap());

        std::fs::remove_file(dir.path().join("20-b.conflist")).unwrap();
        assert!(matches!(c.get(), Err(CniError::NoConfig { .. })));
        assert!(!c.has_config().unwrap());
    }

    #[test]
    fn a_failed_load_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-bad.conflist"), "{").unwrap();
        let c = cache(dir.path());
        assert!(c.get().is_err());
        std::fs::write(dir.path().join("10-bad.conflist"), "{ ").unwrap();
        write(dir.path(), "20-ok.conflist", "net-ok");
        assert_eq!(c.get().unwrap().network_name(), "net-ok");
    }
}
