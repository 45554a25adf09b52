//! nodelet: a Kubernetes node agent (the kubelet and, to come, the kube-proxy in one
//! daemon) on containerd and runc.
//!
//! `main` is the binary's edge: it parses flags, sets up logging, maps errors to exit
//! codes, and dispatches to the agent or a tool. When the runc shim starts this binary
//! as a container's log driver (`nodelet cri-log <path>`), it does only that.

mod agent;
mod cli;
mod cluster;
mod cmd;
mod events;
mod heap;
mod image;
mod node;
mod pod;
mod probe;
mod server;
// The API-backed parts (objects set by a source, invalidation, token requests, the
// apiserver's request errors) serve issues 11 and 12; until then only tests call
// some of them and none calls others.
#[allow(dead_code)]
mod volume;

use std::process::ExitCode;

use nodelet_cri::containerd::Containerd;
use tracing_subscriber::EnvFilter;

use crate::cli::{Command, ImageCommand, LogFormat, ValidateOutputArg};

fn main() -> ExitCode {
    heap::one_arena();
    if nodelet_cri::logs::is_driver_invocation() {
        nodelet_cri::logs::run_driver();
    }
    // `--config`/`--config-dir` are folded in before logging starts (they may set
    // it); a bad file is a usage error, like a bad flag.
    let (cli, unsupported_config) = match cli::config_file::parse_cli() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("nodelet: {e}");
            return ExitCode::from(2);
        }
    };
    let log_flags = match &cli.command {
        Some(Command::Run(run)) => &run.agent,
        _ => &cli.agent,
    };
    init_logging(log_flags.log_format, &log_flags.v);
    if !unsupported_config.is_empty() {
        tracing::warn!(
            fields = %unsupported_config.join(", "),
            "kubelet config fields nodelet does not support are ignored"
        );
    }
    // Completions and man pages come from the CLI definition alone.
    match &cli.command {
        Some(Command::Completion { shell }) => {
            cmd::docs::completion(*shell, &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man { dir }) => {
            return match cmd::docs::man_pages(dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nodelet: writing man pages to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    // Validation needs no runtime: exit 0 when every pod is valid, 1 otherwise.
    if let Some(Command::Validate {
        paths,
        output,
        node_name,
        config,
        config_dir,
    }) = &cli.command
    {
        let node = node::node_name(node_name.as_deref());
        let (config_ok, paths) = match validate_config(config, config_dir, paths, *output) {
            Ok(checked) => checked,
            Err(e) => {
                eprintln!("nodelet: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let output = match output {
            ValidateOutputArg::Text => cmd::validate::ValidateOutput::Text,
            ValidateOutputArg::Yaml => cmd::validate::ValidateOutput::Yaml,
        };
        if paths.is_empty() {
            return if config_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        return match cmd::validate::run(&paths, output, &node) {
            Ok(true) if config_ok => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("nodelet: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nodelet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            // Its own exit codes: 0 when the pods succeeded, 1 when not.
            Some(Command::Run(args)) => return cmd::run::run(*args).await,
            None => agent::run(cli.agent).await,
            Some(Command::Pods {
                read_only_port,
                address,
            }) => cmd::pods::run(address, read_only_port).await,
            Some(Command::Image {
                command,
                container_runtime_endpoint,
                containerd_namespace,
            }) => image_cmd(command, &container_runtime_endpoint, &containerd_namespace).await,
            Some(Command::Proxy(args)) => cmd::proxy::run(*args).await,
            Some(Command::Validate { .. } | Command::Completion { .. } | Command::Man { .. }) => {
                Ok(())
            }
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nodelet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `nodelet validate --config`: the configuration checked (its report on stdout, or
/// on stderr when stdout carries YAML), and the manifests to validate: those given,
/// else the configuration's `staticPodPath`.
fn validate_config(
    config: &Option<std::path::PathBuf>,
    config_dir: &Option<std::path::PathBuf>,
    paths: &[std::path::PathBuf],
    output: ValidateOutputArg,
) -> anyhow::Result<(bool, Vec<std::path::PathBuf>)> {
    if config.is_none() && config_dir.is_none() {
        return Ok((true, paths.to_vec()));
    }
    let checked = match output {
        ValidateOutputArg::Text => cmd::validate_config::run(
            config.as_deref(),
            config_dir.as_deref(),
            &mut std::io::stdout().lock(),
        )?,
        ValidateOutputArg::Yaml => cmd::validate_config::run(
            config.as_deref(),
            config_dir.as_deref(),
            &mut std::io::stderr().lock(),
        )?,
    };
    let paths = match paths {
        [] => checked.static_pod_path.into_iter().collect(),
        given => given.to_vec(),
    };
    Ok((checked.valid, paths))
}

async fn image_cmd(cmd: ImageCommand, endpoint: &str, namespace: &str) -> anyhow::Result<()> {
    let containerd = Containerd::connect(endpoint, namespace).await?;
    match cmd {
        ImageCommand::Import { file } => {
            for name in containerd.import_oci_archive(&file).await? {
                println!("imported {name}");
            }
        }
        ImageCommand::Ls => {
            println!("{:<50} {:<20} {:>10}", "IMAGE", "ID", "SIZE");
            for image in containerd.list_images().await? {
                let id = image.id.trim_start_matches("sha256:");
                println!(
                    "{:<50} {:<20} {:>10}",
                    image.name,
                    &id[..id.len().min(13)],
                    image.size
                );
            }
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
