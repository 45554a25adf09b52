//! `nodelet completion` and `nodelet man`: shell completions and man pages generated
//! from the CLI definition itself, so what the packages install never drifts from the
//! flags the binary accepts.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;

/// Writes the completion script for `shell` to `out`.
pub fn completion(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "nodelet", out);
}

/// Writes `nodelet.1` and one page per subcommand (`nodelet-run.1`, …) into `dir`.
pub fn man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_completion_names_the_subcommands_and_agent_flags() {
        let mut out = Vec::new();
        completion(clap_complete::Shell::Bash, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        for word in ["validate", "proxy", "--pod-manifest-path", "--kubeconfig"] {
            assert!(text.contains(word), "bash completion lacks {word}");
        }
    }

    #[test]
    fn man_pages_cover_the_agent_and_each_subcommand() {
        let dir = tempfile::tempdir().expect("tempdir");
        man_pages(dir.path()).expect("generate");
        let main = std::fs::read_to_string(dir.path().join("nodelet.1")).expect("nodelet.1");
        assert!(
            main.starts_with(".ie") || main.contains(".TH nodelet"),
            "{main:.200}"
        );
        assert!(
            main.contains("pod\\-manifest\\-path"),
            "the agent's flags are in nodelet.1"
        );
        for sub in ["nodelet-run.1", "nodelet-validate.1", "nodelet-proxy.1"] {
            assert!(dir.path().join(sub).exists(), "{sub} missing");
        }
    }
}
