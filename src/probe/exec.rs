//! Exec probes: a command run in the container through the runtime's `exec_sync`
//! (upstream `pkg/probe/exec`). Exit code 0 passes; the message is the command's
//! stdout then stderr, at most 10 KiB; a command past the timeout is killed and fails.

use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use nodelet_cri::runtime::{Runtime, RuntimeError};

use super::{ProbeOutcome, ProbeResult};

/// How much output a probe keeps (upstream's `maxReadLength`).
pub const MAX_OUTPUT: usize = 10 * 1024;

/// Runs `command` in the container and judges it by its exit code.
pub async fn probe(
    runtime: &impl Runtime,
    container_id: &str,
    command: &[String],
    timeout: Duration,
) -> ProbeOutcome {
    match runtime.exec_sync(container_id, command, timeout).await {
        Ok(r) => {
            // Upstream's CRI client hands the prober stdout followed by stderr.
            let mut data = r.stdout;
            data.extend_from_slice(&r.stderr);
            data.truncate(MAX_OUTPUT);
            let result = if r.exit_code == 0 {
                ProbeResult::Success
            } else {
                ProbeResult::Failure
            };
            ProbeOutcome::new(result, String::from_utf8_lossy(&data))
        }
        // A timeout is a failure (the ExecProbeTimeout behaviour, on since 1.20).
        Err(RuntimeError::ExecTimeout { command, .. }) => ProbeOutcome::new(
            ProbeResult::Failure,
            format!("command {command:?} timed out"),
        ),
        Err(e) => ProbeOutcome::new(ProbeResult::Unknown, e.to_string()),
    }
}

/// Expands `$(VAR)` in an exec probe's command with the container's env values given
/// inline (`value`; a `valueFrom` variable expands to ""), `$$` to `$`, leaving
/// references to unknown variables as they are: upstream's
/// `ExpandContainerCommandOnlyStatic`.
pub fn expand_command(command: &[String], container: &Container) -> Vec<String> {
    let env = container.env.as_deref().unwrap_or_default();
    let lookup = |name: &str| {
        env.iter()
            .rev() // the last definition of a name wins, as in Go's map build
            .find(|e| e.name == name)
            .map(|e| e.value.clone().unwrap_or_default())
    };
    command.iter().map(|arg| expand(arg, &lookup)).collect()
}

fn expand(input: &str, lookup: &impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if after.is_empty() {
            // A trailing `$` is literal.
            out.push('$');
            rest = after;
        } else if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(close) => {
                    let name = &body[..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
    use nodelet_cri::runtime::ExecResult;

    use super::super::testing::FakeRuntime;
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn expansion_follows_upstream() {
        let container = Container {
            env: Some(vec![
                EnvVar {
                    name: "A".into(),
                    value: Some("1".into()),
                    ..Default::default()
                },
                EnvVar {
                    name: "POD".into(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let cases = [
            ("$(A)", "1"),
            ("x$(A)y", "x1y"),
            ("$$(A)", "$(A)"),
            ("$(B)", "$(B)"),
            ("$(POD)", ""),
            ("$(A", "$(A"),
            ("$A", "$A"),
            ("a$", "a$"),
            ("$$$", "$$"),
            ("ü$(A)ü", "ü1ü"),
        ];
        for (input, want) in cases {
            assert_eq!(
                expand_command(&s(&[input]), &container),
                s(&[want]),
                "{input}"
            );
        }
    }

    #[tokio::test]
    async fn exit_code_decides_and_output_is_the_message() {
        let rt = FakeRuntime::answering(vec![
            Ok(ExecResult {
                exit_code: 0,
                stdout: b"ok\n".to_vec(),
                stderr: vec![],
            }),
            Ok(ExecResult {
                exit_code: 1,
                stdout: b"out\n".to_vec(),
                stderr: b"err\n".to_vec(),
            }),
            Ok(ExecResult {
                exit_code: 0,
                stdout: vec![b'x'; 12 * 1024],
                stderr: b"lost".to_vec(),
            }),
        ]);
        let cmd = s(&["cat", "/tmp/healthy"]);
        let out = probe(&rt, "cid", &cmd, Duration::from_secs(3)).await;
        assert_eq!(out, ProbeOutcome::new(ProbeResult::Success, "ok\n"));
        let out = probe(&rt, "cid", &cmd, Duration::from_secs(3)).await;
        assert_eq!(out, ProbeOutcome::new(ProbeResult::Failure, "out\nerr\n"));
        let out = probe(&rt, "cid", &cmd, Duration::from_secs(3)).await;
        assert_eq!(out.message.len(), MAX_OUTPUT);
        let calls = rt.calls.lock().expect("lock").clone();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].id, "cid");
        assert_eq!(calls[0].cmd, cmd);
        assert_eq!(calls[0].timeout, Duration::from_secs(3));
    }

    #[tokio::test]
    async fn timeout_fails_and_other_errors_are_unknown() {
        let rt = FakeRuntime::answering(vec![
            Err(RuntimeError::ExecTimeout {
                id: "cid".into(),
                command: "sleep 10".into(),
                timeout: Duration::from_secs(1),
            }),
            Err(RuntimeError::Containerd {
                op: "exec",
                id: "cid".into(),
                status: Box::new(tonic::Status::failed_precondition("not running")),
            }),
        ]);
        let cmd = s(&["sleep", "10"]);
        let out = probe(&rt, "cid", &cmd, Duration::from_secs(1)).await;
        assert_eq!(
            out,
            ProbeOutcome::new(ProbeResult::Failure, r#"command "sleep 10" timed out"#)
        );
        let out = probe(&rt, "cid", &cmd, Duration::from_secs(1)).await;
        assert_eq!(out.result, ProbeResult::Unknown);
        assert!(out.message.contains("not running"), "{}", out.message);
    }
}
