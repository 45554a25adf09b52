//! `/configz`'s body: the effective configuration as upstream's
//! `{"kubeletconfig": …}`, in `KubeletConfiguration` (v1beta1) field names and JSON
//! forms (durations as Go prints them, `1m0s`; quantities as `10Mi`; the eviction and
//! reserved lists as maps), from the flags after the config file was applied. Every
//! field nodelet honours is there, with the fields it behaves as fixed at (the
//! lease duration, the status frequencies); fields it lacks are left out.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// Go's `time.Duration.String()`: `0s`, `100ms`, `1.5s`, `2m0s`, `4h0m0s`.
pub fn go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let nanos = d.as_nanos();
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim(nanos, 1_000_000));
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, (secs % 3600) / 60);
    let s = trim(
        u128::from(secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// `value / unit` with its fraction, trailing zeros dropped (`1500, 1000` → `1.5`).
fn trim(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.to_string().len() - 1;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A byte count as a Kubernetes quantity (`10Mi`, `512Ki`, `1000`).
fn quantity(bytes: u64) -> String {
    for (suffix, unit) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// `signal<value` or `key=value` items as a map.
fn map_of(items: &[String], sep: char) -> Map<String, Value> {
    items
        .iter()
        .flat_map(|i| i.split(','))
        .filter_map(|i| i.split_once(sep))
        .map(|(k, v)| (k.trim().to_owned(), Value::from(v.trim())))
        .collect()
}

/// `--feature-gates` as upstream's `featureGates` map.
fn feature_gates(text: &str) -> Map<String, Value> {
    text.split(',')
        .filter_map(|g| g.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), Value::from(v.trim() == "true")))
        .collect()
}

/// `key=value:Effect` taints as `registerWithTaints` objects.
fn taints(items: &[String]) -> Vec<Value> {
    items
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (kv, effect) = t.split_once(':').unwrap_or((t, ""));
            let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
            let mut o = Map::new();
            o.insert("key".into(), key.into());
            if !value.is_empty() {
                o.insert("value".into(), value.into());
            }
            o.insert("effect".into(), effect.into());
            Value::Object(o)
        })
        .collect()
}

/// The body for `args` on node `node_name`.
pub fn configz_body(args: &crate::cli::AgentArgs, node_name: &str) -> Value {
    let s = &args.secure;
    let r = &args.resources;
    let e = &args.eviction;
    let g = &args.image_gc;
    let mode = match s.authorization_mode {
        super::AuthorizationMode::AlwaysAllow => "AlwaysAllow",
        super::AuthorizationMode::Webhook => "Webhook",
    };
    let d = go_duration;
    let list = |text: &str| -> Vec<String> {
        text.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let verbosity: u32 = args.v.trim().parse().unwrap_or(0);
    let format = match args.log_format {
        crate::cli::LogFormat::Text => "text",
        crate::cli::LogFormat::Json => "json",
    };
    // Two halves: one `json!` of every field passes the macro's recursion limit.
    let mut k = json!({
            "enableServer": true,
            "staticPodPath": args.pod_manifest_path,
            "podLogsDir": args.pod_logs_dir,
            "syncFrequency": d(crate::pod::sync_loop::SYNC_FREQUENCY),
            "fileCheckFrequency": d(args.file_check_frequency),
            "httpCheckFrequency": d(args.http_check_frequency),
            "staticPodURL": args.manifest_url,
            "staticPodURLHeader": map_of(&args.manifest_url_header, ':'),
            "address": args.address.to_string(),
            "port": s.port,
            "readOnlyPort": args.read_only_port,
            "tlsCertFile": s.tls_cert_file,
            "tlsPrivateKeyFile": s.tls_private_key_file,
            "rotateCertificates": args.rotate_certificates,
            "serverTLSBootstrap": s.rotate_server_certificates,
            "authentication": {
                "x509": {"clientCAFile": s.client_ca_file},
                "webhook": {
                    "enabled": s.authentication_token_webhook,
                    "cacheTTL": d(s.authentication_token_webhook_cache_ttl),
                },
                "anonymous": {"enabled": s.anonymous_auth},
            },
            "authorization": {
                "mode": mode,
                "webhook": {
                    "cacheAuthorizedTTL": d(s.authorization_webhook_cache_authorized_ttl),
                    "cacheUnauthorizedTTL": d(s.authorization_webhook_cache_unauthorized_ttl),
                },
            },
            "registryPullQPS": args.registry_qps,
            "registryBurst": args.registry_burst,
            "healthzPort": args.healthz_port,
            "healthzBindAddress": args.healthz_bind_address.to_string(),
            "clusterDomain": args.cluster_domain,
            "clusterDNS": args.cluster_dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    let more = json!({
            "streamingConnectionIdleTimeout": d(s.streaming_connection_idle_timeout),
            "nodeStatusUpdateFrequency": "10s",
            "nodeStatusReportFrequency": "5m0s",
            "nodeLeaseDurationSeconds": 40,
            "nodeStatusMaxImages": 50,
            "imageMinimumGCAge": d(g.minimum_image_ttl_duration),
            "imageMaximumGCAge": d(g.image_maximum_gc_age),
            "imageGCHighThresholdPercent": g.image_gc_high_threshold,
            "imageGCLowThresholdPercent": g.image_gc_low_threshold,
            "cgroupRoot": args.cgroup_root,
            "cgroupsPerQOS": r.cgroups_per_qos,
            "cgroupDriver": r.cgroup_driver,
            "maxPods": r.max_pods,
            "podCIDR": args.pod_cidr,
            "podPidsLimit": r.pod_max_pids,
            "resolvConf": args.resolv_conf,
            "cpuCFSQuota": r.cpu_cfs_quota,
            "cpuCFSQuotaPeriod": d(r.cpu_cfs_quota_period),
            "kubeAPIQPS": args.kube_api_qps,
            "kubeAPIBurst": args.kube_api_burst,
            "serializeImagePulls": args.serialize_image_pulls,
            "maxParallelImagePulls": args.max_parallel_image_pulls,
            "evictionHard": map_of(&e.eviction_hard, '<'),
            "evictionSoft": map_of(&e.eviction_soft, '<'),
            "evictionSoftGracePeriod": map_of(&e.eviction_soft_grace_period, '='),
            "evictionMaxPodGracePeriod": e.eviction_max_pod_grace_period,
            "evictionMinimumReclaim": map_of(&e.eviction_minimum_reclaim, '='),
            "featureGates": feature_gates(&r.feature_gates),
            "systemReserved": map_of(&list(&r.system_reserved), '='),
            "kubeReserved": map_of(&list(&r.kube_reserved), '='),
            "enforceNodeAllocatable": list(&r.enforce_node_allocatable),
            "kernelMemcgNotification": e.kernel_memcg_notification,
            "containerLogMaxSize": quantity(args.container_log_max_size),
            "containerLogMaxFiles": args.container_log_max_files,
            "containerRuntimeEndpoint": args.container_runtime_endpoint,
            "registerNode": args.register_node,
            "registerWithTaints": taints(&args.register_with_taints),
            "logging": {"format": format, "verbosity": verbosity},
            "nodeName": node_name,
    });
    if let (Some(k), Value::Object(more)) = (k.as_object_mut(), more) {
        k.extend(more);
    }
    json!({ "kubeletconfig": k })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_does() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(ms(100)), "100ms");
        assert_eq!(go_duration(ms(1500)), "1.5s");
        assert_eq!(go_duration(ms(10_000)), "10s");
        assert_eq!(go_duration(ms(120_000)), "2m0s");
        assert_eq!(go_duration(ms(4 * 3_600_000)), "4h0m0s");
        assert_eq!(go_duration(ms(3_725_000)), "1h2m5s");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
    }

    #[test]
    fn the_body_has_upstreams_names_and_forms() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from([
            "nodelet",
            "--eviction-hard=memory.available<100Mi,nodefs.available<10%",
            "--system-reserved=cpu=100m,memory=1Gi",
            "--register-with-taints=a=b:NoSchedule",
            "--feature-gates=X=true,Y=false",
        ])
        .expect("parses");
        let body = configz_body(&cli.agent, "n1");
        let k = &body["kubeletconfig"];
        assert_eq!(k["evictionHard"]["memory.available"], "100Mi");
        assert_eq!(k["evictionHard"]["nodefs.available"], "10%");
        assert_eq!(k["systemReserved"]["memory"], "1Gi");
        assert_eq!(k["registerWithTaints"][0]["effect"], "NoSchedule");
        assert_eq!(k["featureGates"]["Y"], false);
        assert_eq!(k["streamingConnectionIdleTimeout"], "4h0m0s");
        assert_eq!(k["syncFrequency"], "1m0s");
        assert_eq!(k["containerLogMaxSize"], "10Mi");
        assert_eq!(k["nodeName"], "n1");
        assert_eq!(k["authentication"]["webhook"]["cacheTTL"], "2m0s");
    }
}
