//! Probes and lifecycle hooks (`validateProbe`, `validateLivenessProbe`,
//! `validateHandler`, `validateLifecycle`) and which containers may have them: regular
//! containers and sidecars, not other init containers.

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::container::Kind;
use super::names::iana_svc_name;
use super::{FieldError, NEGATIVE_MESSAGE, PORT_RANGE_MESSAGE};

const INIT_MESSAGE: &str = "may not be set for init containers without restartPolicy=Always";

pub(super) fn validate_probes_and_hooks(
    container: &Container,
    path: &str,
    kind: Kind,
    grace_period: Option<i64>,
    errs: &mut Vec<FieldError>,
) {
    let probes = [
        ("livenessProbe", &container.liveness_probe),
        ("readinessProbe", &container.readiness_probe),
        ("startupProbe", &container.startup_probe),
    ];
    if kind == Kind::Init {
        if container.lifecycle.is_some() {
            errs.push(FieldError::forbidden(
                format!("{path}.lifecycle"),
                INIT_MESSAGE,
            ));
        }
        for (field, probe) in probes {
            if probe.is_some() {
                errs.push(FieldError::forbidden(
                    format!("{path}.{field}"),
                    INIT_MESSAGE,
                ));
            }
        }
        return;
    }
    if let Some(lifecycle) = &container.lifecycle {
        validate_lifecycle(lifecycle, &format!("{path}.lifecycle"), grace_period, errs);
    }
    for (field, probe) in probes {
        let Some(probe) = probe else {
            continue;
        };
        let probe_path = format!("{path}.{field}");
        validate_probe(probe, &probe_path, errs);
        let threshold = probe.success_threshold.unwrap_or(0);
        if field != "readinessProbe" && threshold != 1 {
            errs.push(FieldError::invalid(
                format!("{probe_path}.successThreshold"),
                threshold,
                "must be 1",
            ));
        }
        if field == "readinessProbe"
            && let Some(seconds) = probe.termination_grace_period_seconds
        {
            errs.push(FieldError::invalid(
                format!("{probe_path}.terminationGracePeriodSeconds"),
                seconds,
                "must not be set for readinessProbes",
            ));
        }
    }
}

fn validate_lifecycle(
    lifecycle: &Lifecycle,
    path: &str,
    grace_period: Option<i64>,
    errs: &mut Vec<FieldError>,
) {
    for (field, handler) in [
        ("postStart", &lifecycle.post_start),
        ("preStop", &lifecycle.pre_stop),
    ] {
        if let Some(LifecycleHandler {
            exec,
            http_get,
            tcp_socket,
            sleep,
        }) = handler
        {
            let handlers = Handlers {
                exec: exec.as_ref(),
                http_get: http_get.as_ref(),
                tcp_socket: tcp_socket.as_ref(),
                grpc_port: None,
                sleep: sleep.is_some(),
            };
            let handler_path = format!("{path}.{field}");
            validate_handler(&handlers, &handler_path, errs);
            // `validateSleepAction` (zero allowed since 1.34).
            if let (Some(sleep), Some(grace)) = (sleep, grace_period)
                && (sleep.seconds < 0 || sleep.seconds > grace)
            {
                errs.push(FieldError::invalid(
                    format!("{handler_path}.sleep"),
                    sleep.seconds,
                    format!(
                        "must be non-negative and less than terminationGracePeriodSeconds ({grace})"
                    ),
                ));
            }
        }
    }
}

fn validate_probe(probe: &Probe, path: &str, errs: &mut Vec<FieldError>) {
    let handlers = Handlers {
        exec: probe.exec.as_ref(),
        http_get: probe.http_get.as_ref(),
        tcp_socket: probe.tcp_socket.as_ref(),
        grpc_port: probe.grpc.as_ref().map(|g| g.port),
        sleep: false,
    };
    validate_handler(&handlers, path, errs);
    for (field, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(value) = value
            && value < 0
        {
            errs.push(FieldError::invalid(
                format!("{path}.{field}"),
                value,
                NEGATIVE_MESSAGE,
            ));
        }
    }
    if let Some(seconds) = probe.termination_grace_period_seconds
        && seconds <= 0
    {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            seconds,
            "must be greater than 0",
        ));
    }
}

/// The handlers of a probe or a hook (`commonHandler`).
struct Handlers<'a> {
    exec: Option<&'a ExecAction>,
    http_get: Option<&'a HTTPGetAction>,
    tcp_socket: Option<&'a TCPSocketAction>,
    grpc_port: Option<i32>,
    sleep: bool,
}

/// `validateHandler`: exactly one handler, each valid.
fn validate_handler(handlers: &Handlers<'_>, path: &str, errs: &mut Vec<FieldError>) {
    let mut count = 0;
    let mut one = |field: &str, errs: &mut Vec<FieldError>| {
        count += 1;
        if count > 1 {
            errs.push(FieldError::forbidden(
                format!("{path}.{field}"),
                "may not specify more than 1 handler type",
            ));
            false
        } else {
            true
        }
    };
    if let Some(exec) = handlers.exec
        && one("exec", errs)
        && exec.command.as_ref().is_none_or(Vec::is_empty)
    {
        errs.push(FieldError::required(format!("{path}.exec.command"), ""));
    }
    if let Some(http) = handlers.http_get
        && one("httpGet", errs)
    {
        let http_path = format!("{path}.httpGet");
        if http.path.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::required(format!("{http_path}.path"), ""));
        }
        port_num_or_name(&http.port, &format!("{http_path}.port"), errs);
        for header in http.http_headers.iter().flatten() {
            let valid = !header.name.is_empty()
                && header
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !valid {
                errs.push(FieldError::invalid(
                    format!("{http_path}.httpHeaders"),
                    header.name.as_str(),
                    "a valid HTTP header must consist of alphanumeric characters or '-' (e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')",
                ));
            }
        }
        let scheme = http.scheme.as_deref().unwrap_or("");
        if scheme != "HTTP" && scheme != "HTTPS" {
            errs.push(FieldError::not_supported(
                format!("{http_path}.scheme"),
                scheme,
                &["HTTP", "HTTPS"],
            ));
        }
    }
    if let Some(tcp) = handlers.tcp_socket
        && one("tcpSocket", errs)
    {
        port_num_or_name(&tcp.port, &format!("{path}.tcpSocket.port"), errs);
    }
    if let Some(port) = handlers.grpc_port
        && one("grpc", errs)
        && !(1..=65535).contains(&port)
    {
        errs.push(FieldError::invalid(
            format!("{path}.grpc.port"),
            port,
            PORT_RANGE_MESSAGE,
        ));
    }
    if handlers.sleep {
        one("sleep", errs);
    }
    if count == 0 {
        errs.push(FieldError::required(path, "must specify a handler type"));
    }
}

/// `ValidatePortNumOrName`.
fn port_num_or_name(port: &IntOrString, path: &str, errs: &mut Vec<FieldError>) {
    match port {
        IntOrString::Int(number) => {
            if !(1..=65535).contains(number) {
                errs.push(FieldError::invalid(path, *number, PORT_RANGE_MESSAGE));
            }
        }
        IntOrString::String(name) => {
            for msg in iana_svc_name(name) {
                errs.push(FieldError::invalid(path, name.as_str(), msg));
            }
        }
    }
}
