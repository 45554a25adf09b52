//! `nodelet validate --config FILE [--config-dir DIR]`: reads a `KubeletConfiguration`
//! and its drop-ins exactly as the agent's `--config`/`--config-dir` would, applies
//! them to the default flags and runs the checks the agent runs at start over the
//! result (resources, eviction, image GC, pull limits, manifest URL headers), without
//! starting anything. The fields nodelet ignores are listed, and the file's
//! `staticPodPath` is returned so its manifests can be validated too.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser as _;

use crate::cli::{Cli, config_file};

/// What the check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigCheck {
    /// Whether the configuration is usable.
    pub valid: bool,
    /// Its `staticPodPath`, when set.
    pub static_pod_path: Option<PathBuf>,
}

/// Checks the configuration, writing one line per problem (and the unsupported
/// fields, and a verdict) to `out`.
///
/// # Errors
/// Only when `out` cannot be written; a bad configuration is reported and makes
/// [`ConfigCheck::valid`] false.
pub fn run(
    config: Option<&Path>,
    config_dir: Option<&Path>,
    out: &mut dyn Write,
) -> anyhow::Result<ConfigCheck> {
    let mut args = Cli::try_parse_from(["nodelet"])?.agent;
    let loaded = match config_file::load(config, config_dir) {
        Ok(Some(loaded)) => loaded,
        Ok(None) => return Ok(ConfigCheck::default()),
        Err(e) => {
            writeln!(out, "{e}")?;
            return Ok(ConfigCheck::default());
        }
    };
    if let Err(e) = config_file::apply(&loaded, &mut args, &HashSet::new()) {
        writeln!(out, "{e}")?;
        return Ok(ConfigCheck::default());
    }
    let mut problems = Vec::new();
    match args.resources.settings() {
        Ok(settings) => {
            if let Err(e) = args.eviction.config(settings.enforce_pods) {
                problems.push(e.to_string());
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    if let Err(e) = args.image_gc.config() {
        problems.push(e.to_string());
    }
    if let Err(e) =
        crate::image::pull_limit::PullLimiter::new(args.registry_qps, args.registry_burst)
    {
        problems.push(e.to_string());
    }
    for h in &args.manifest_url_header {
        if let Err(e) = nodelet_sources::parse_header_flag(h) {
            problems.push(format!("staticPodURLHeader: {e}"));
        }
    }
    let files: Vec<String> = loaded
        .files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let files = files.join(", ");
    for p in &problems {
        writeln!(out, "{files}: {p}")?;
    }
    let unsupported = loaded.unsupported();
    if !unsupported.is_empty() {
        writeln!(
            out,
            "{files}: fields nodelet does not support (ignored): {}",
            unsupported.join(", ")
        )?;
    }
    if problems.is_empty() {
        writeln!(out, "{files}: valid")?;
    }
    Ok(ConfigCheck {
        valid: problems.is_empty(),
        static_pod_path: args.pod_manifest_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

    fn check(body: &str) -> (ConfigCheck, String) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("kubelet.yaml");
        std::fs::write(&file, body).expect("write");
        let mut out = Vec::new();
        let found = run(Some(&file), None, &mut out).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        (found, text.replace(&file.display().to_string(), "FILE"))
    }

    #[test]
    fn a_valid_file_names_its_static_pods_and_ignored_fields() {
        let (found, text) = check(&format!(
            "{HEAD}staticPodPath: /etc/kubernetes/manifests\nsyncFrequency: 1m\n"
        ));
        assert!(found.valid);
        assert_eq!(
            found.static_pod_path.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(
            text,
            "FILE: fields nodelet does not support (ignored): syncFrequency\nFILE: valid\n"
        );
    }

    #[test]
    fn flag_checks_run_over_the_file() {
        let (found, text) = check(&format!(
            "{HEAD}evictionHard: {{memory.avail: 1Gi}}\nimageGCHighThresholdPercent: 101\n"
        ));
        assert!(!found.valid);
        assert!(text.contains("FILE: "), "{text}");
        assert!(text.contains("memory.avail"), "{text}");
        assert!(text.contains("imageGCHighThresholdPercent"), "{text}");
        let (found, text) = check(&format!("{HEAD}foo: 1\n"));
        assert!(!found.valid);
        assert_eq!(
            text,
            "kubelet config file FILE: strict decoding error: unknown field \"foo\"\n"
        );
    }
}
