//! `nodelet validate FILE…|DIR`: parses, defaults and validates manifests
//! exactly as the manifest directory source would, without running anything.
//!
//! A directory stands for its non-dot regular files, in name order, as the
//! file source reads it (subdirectories are not entered). Every error is
//! printed, one per line, as `FILE: document N: <field path>: <message>`
//! (parse errors as `FILE: document N: invalid YAML: … at line L column C`);
//! documents of other kinds are reported as skipped, which does not make a
//! file invalid, since the agent skips them too.
//!
//! With [`ValidateOutput::Text`] the errors go to stdout. With
//! [`ValidateOutput::Yaml`] stdout carries only the defaulted valid pods as a
//! YAML stream (as the agent would run them, named `<name>-<node>`, minus the
//! `config.seen` time), and errors go to stderr. A summary goes to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nodelet_manifests::{CONFIG_SEEN_ANNOTATION, ManifestError, load_static_pods};

/// What `validate` prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidateOutput {
    /// The errors, one per line.
    Text,
    /// The defaulted pods, as YAML documents.
    Yaml,
}

/// Validates every manifest in `paths` for node `node_name`; returns whether
/// all of them are valid (the caller maps that to exit code 0 or 1).
///
/// # Errors
/// Only when stdout or stderr cannot be written; unreadable or invalid
/// manifests are reported and make the result `false`.
pub fn run(paths: &[PathBuf], output: ValidateOutput, node_name: &str) -> anyhow::Result<bool> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    validate(
        paths,
        output,
        node_name,
        &mut stdout.lock(),
        &mut stderr.lock(),
    )
}

/// What one run found, for the summary.
#[derive(Debug, Default)]
struct Tally {
    files: usize,
    pods: usize,
    errors: usize,
}

fn validate(
    paths: &[PathBuf],
    output: ValidateOutput,
    node_name: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let mut tally = Tally::default();
    for path in paths {
        let files = match manifest_files(path) {
            Ok(files) => files,
            Err(e) => {
                tally.errors += 1;
                let line = format!("{}: cannot read: {e}", path.display());
                report(output, out, err, &line)?;
                continue;
            }
        };
        if files.is_empty() {
            writeln!(err, "{}: no manifest files", path.display()).context("writing to stderr")?;
        }
        for file in files {
            check_file(&file, output, node_name, &mut tally, out, err)?;
        }
    }
    let verdict = if tally.errors == 0 {
        "all valid".to_owned()
    } else {
        format!("{} error(s)", tally.errors)
    };
    writeln!(
        err,
        "validated {} pod(s) in {} file(s): {verdict}",
        tally.pods, tally.files
    )
    .context("writing to stderr")?;
    Ok(tally.errors == 0)
}

fn check_file(
    file: &Path,
    output: ValidateOutput,
    node_name: &str,
    tally: &mut Tally,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<()> {
    tally.files += 1;
    let label = file.to_string_lossy();
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) => {
            tally.errors += 1;
            return report(output, out, err, &format!("{label}: cannot read: {e}"));
        }
    };
    let load = load_static_pods(&bytes, &label, node_name);
    for error in &load.errors {
        match error {
            ManifestError::Invalid {
                path,
                index,
                errors,
                ..
            } => {
                for field_error in errors {
                    tally.errors += 1;
                    report(
                        output,
                        out,
                        err,
                        &format!("{path}: document {index}: {field_error}"),
                    )?;
                }
            }
            ManifestError::Parse(_) | ManifestError::InvalidObject { .. } => {
                tally.errors += 1;
                report(output, out, err, &error.to_string())?;
            }
            ManifestError::UnsupportedKind { .. } => {
                report(output, out, err, &error.to_string())?;
            }
        }
    }
    // A file with an invalid pod is rejected whole by the agent; its valid
    // pods are still counted and shown, since they are fine on their own.
    tally.pods += load.pods.len();
    if output == ValidateOutput::Yaml {
        for mut pod in load.pods {
            if let Some(annotations) = pod.metadata.annotations.as_mut() {
                annotations.remove(CONFIG_SEEN_ANNOTATION);
            }
            let yaml = serde_yaml::to_string(&pod)
                .with_context(|| format!("rendering a pod of {label} as YAML"))?;
            write!(out, "---\n{yaml}").context("writing to stdout")?;
        }
    }
    Ok(())
}

/// Prints a problem where the output mode wants problems.
fn report(
    output: ValidateOutput,
    out: &mut dyn Write,
    err: &mut dyn Write,
    line: &str,
) -> anyhow::Result<()> {
    match output {
        ValidateOutput::Text => writeln!(out, "{line}").context("writing to stdout"),
        ValidateOutput::Yaml => writeln!(err, "{line}").context("writing to stderr"),
    }
}

/// The files `path` stands for: itself, or a directory's non-dot regular
/// files (symlinks followed) in name order, as the file source reads them.
fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !std::fs::metadata(path)?.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let file = entry?.path();
        let dotfile = file
            .file_name()
            .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."));
        if !dotfile && std::fs::metadata(&file).is_ok_and(|meta| meta.is_file()) {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: app\n    image: busybox:1.36\n";

    struct Run {
        valid: bool,
        out: String,
        err: String,
    }

    fn run_on(paths: &[PathBuf], output: ValidateOutput) -> Run {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let valid = validate(paths, output, "Node1", &mut out, &mut err).unwrap();
        Run {
            valid,
            out: String::from_utf8(out).unwrap(),
            err: String::from_utf8(err).unwrap(),
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn valid_file_prints_no_errors() {
        let dir = tempfile::tempdir().unwrap();
        let web = write(dir.path(), "web.yaml", WEB);
        let run = run_on(&[web], ValidateOutput::Text);
        assert!(run.valid);
        assert_eq!(run.out, "");
        assert_eq!(run.err, "validated 1 pod(s) in 1 file(s): all valid\n");
    }

    #[test]
    fn every_error_is_printed_with_file_document_and_field_path() {
        let dir = tempfile::tempdir().unwrap();
        let bad = WEB.replace("name: web", "name: Web_1").replace(
            "image: busybox:1.36",
            "image: ''\n  - name: app\n    image: x\n    ports:\n    - containerPort: 0",
        );
        let file = write(
            dir.path(),
            "bad.yaml",
            &format!("{WEB}---\napiVersion: apps/v1\nkind: Deployment\n---\n{bad}"),
        );
        let run = run_on(std::slice::from_ref(&file), ValidateOutput::Text);
        assert!(!run.valid);
        let f = file.display();
        let expected = [
            format!(
                "{f}: document 1: skipping kind \"Deployment\" (apiVersion \"apps/v1\"): only v1 Pod, ConfigMap and Secret manifests are supported"
            ),
            format!(
                "{f}: document 2: metadata.name: Invalid value: \"Web_1-node1\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            ),
            format!("{f}: document 2: spec.containers[0].image: Required value"),
            format!("{f}: document 2: spec.containers[1].ports[0].containerPort: Required value"),
            format!("{f}: document 2: spec.containers[1].name: Duplicate value: \"app\""),
        ];
        let lines: Vec<&str> = run.out.lines().collect();
        assert_eq!(lines, expected);
        assert_eq!(run.err, "validated 1 pod(s) in 1 file(s): 4 error(s)\n");
    }

    #[test]
    fn parse_errors_name_file_document_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "broken.yaml",
            &format!("{WEB}---\napiVersion: v1\nkind: Pod\nmetadata: [\n"),
        );
        let run = run_on(std::slice::from_ref(&file), ValidateOutput::Text);
        assert!(!run.valid);
        let line = run.out.trim_end();
        // The document index of a YAML syntax error is the parser's (it
        // currently counts only documents decoded before the failing stream);
        // the line and column are exact.
        assert!(
            line.starts_with(&format!("{}: document ", file.display())),
            "{line}"
        );
        assert!(line.contains(": invalid YAML: "), "{line}");
        assert!(line.contains("at line 13 column 1"), "{line}");
        assert_eq!(run.out.lines().count(), 1);
    }

    #[test]
    fn a_directory_means_its_non_dot_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "b.yaml",
            &WEB.replace("image: busybox:1.36", "image: ''"),
        );
        write(dir.path(), "a.yaml", WEB);
        write(dir.path(), ".swp.yaml", "not: [yaml");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        write(&dir.path().join("sub"), "c.yaml", "not: [yaml");
        let run = run_on(&[dir.path().to_path_buf()], ValidateOutput::Text);
        assert!(!run.valid);
        assert_eq!(
            run.out,
            format!(
                "{}: document 0: spec.containers[0].image: Required value\n",
                dir.path().join("b.yaml").display()
            )
        );
        assert_eq!(run.err, "validated 1 pod(s) in 2 file(s): 1 error(s)\n");

        let empty = tempfile::tempdir().unwrap();
        let run = run_on(&[empty.path().to_path_buf()], ValidateOutput::Text);
        assert!(run.valid);
        assert_eq!(
            run.err,
            format!(
                "{}: no manifest files\nvalidated 0 pod(s) in 0 file(s): all valid\n",
                empty.path().display()
            )
        );
    }

    #[test]
    fn missing_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let run = run_on(std::slice::from_ref(&missing), ValidateOutput::Text);
        assert!(!run.valid);
        assert_eq!(
            run.out,
            format!(
                "{}: cannot read: No such file or directory (os error 2)\n",
                missing.display()
            )
        );
    }

    #[test]
    fn yaml_output_is_the_defaulted_pods_and_errors_go_to_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let web = write(dir.path(), "web.yaml", WEB);
        let bad = write(
            dir.path(),
            "bad.yaml",
            &WEB.replace("image: busybox:1.36", "image: ''"),
        );
        let run = run_on(&[web, bad.clone()], ValidateOutput::Yaml);
        assert!(!run.valid);
        assert_eq!(
            run.err,
            format!(
                "{}: document 0: spec.containers[0].image: Required value\nvalidated 1 pod(s) in 2 file(s): 1 error(s)\n",
                bad.display()
            )
        );
        assert!(run.out.starts_with("---\n"), "{}", run.out);
        let pods: Vec<serde_yaml::Value> = run
            .out
            .split("---\n")
            .filter(|doc| !doc.is_empty())
            .map(|doc| serde_yaml::from_str(doc).unwrap())
            .collect();
        assert_eq!(pods.len(), 1);
        let pod = &pods[0];
        let text = |value: &serde_yaml::Value| value.as_str().unwrap().to_owned();
        assert_eq!(text(&pod["kind"]), "Pod");
        assert_eq!(text(&pod["metadata"]["name"]), "web-node1");
        let annotations = &pod["metadata"]["annotations"];
        assert!(annotations.get(CONFIG_SEEN_ANNOTATION).is_none());
        assert_eq!(text(&annotations["kubernetes.io/config.source"]), "file");
        let spec = &pod["spec"];
        assert_eq!(text(&spec["restartPolicy"]), "Always");
        assert_eq!(text(&spec["dnsPolicy"]), "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"].as_i64(), Some(30));
        let container = &spec["containers"][0];
        assert_eq!(text(&container["imagePullPolicy"]), "IfNotPresent");
        assert_eq!(
            text(&container["terminationMessagePath"]),
            "/dev/termination-log"
        );
        // The same output again: nothing time-dependent is printed.
        let again = run_on(&[dir.path().join("web.yaml")], ValidateOutput::Yaml);
        assert_eq!(again.out, run.out);
    }
}
