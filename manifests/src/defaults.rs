//! The apiserver's defaulting of a v1 Pod (`pkg/apis/core/v1/defaults.go` and
//! the generated `SetObjectDefaults_Pod`), which a static pod gets from the
//! kubelet's decoder before it is hashed and validated.
//!
//! Go cannot tell an unset scalar from its zero value, so an explicit `0` or
//! `""` is defaulted exactly like a missing field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, ObjectFieldSelector, Pod, PodSpec, Probe, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;

use crate::quantity::Quantity;

/// `v1.DefaultTerminationGracePeriodSeconds`.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// `v1.DefaultSchedulerName`.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";
/// `v1.TerminationMessagePathDefault`.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Mode for secret, configMap, downwardAPI and projected volumes (0644).
pub const DEFAULT_VOLUME_MODE: i32 = 0o644;

/// Fills in every field the apiserver defaults on a v1 Pod. Idempotent.
pub fn default_pod(pod: &mut Pod) {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    default_pod_level(spec);
    default_pod_spec(spec);
    for volume in spec.volumes.iter_mut().flatten() {
        default_volume(volume);
    }
    for container in spec.init_containers.iter_mut().flatten() {
        default_container(container);
    }
    for container in &mut spec.containers {
        default_container(container);
    }
    if let Some(overhead) = &mut spec.overhead {
        round_up_to_milli(overhead);
    }
}

/// `SetDefaults_Pod`: what only a Pod (not a PodTemplate) gets.
fn default_pod_level(spec: &mut PodSpec) {
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for container in containers {
        // Requests default to limits, per resource, only where a request is absent.
        let Some(resources) = &mut container.resources else {
            continue;
        };
        let Some(limits) = &resources.limits else {
            continue;
        };
        let requests = resources.requests.get_or_insert_with(BTreeMap::new);
        for (name, value) in limits {
            requests
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
    }
    spec.enable_service_links.get_or_insert(true);
    // Since 1.27 a negative grace period means 1 second: the apiserver stores 1 when it
    // creates the pod, and the kubelet uses 1 for a negative value it is given.
    if let Some(seconds) = &mut spec.termination_grace_period_seconds
        && *seconds < 0
    {
        *seconds = 1;
    }
    if spec.host_network == Some(true) {
        // With host networking the container port is the host port.
        let containers = spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut());
        for port in containers.flat_map(|c| c.ports.iter_mut().flatten()) {
            if port.host_port.unwrap_or(0) == 0 {
                port.host_port = Some(port.container_port);
            }
        }
    }
}

/// Reads `null` items of a container's `command` and `args` (and of its probes' and
/// hooks' `exec.command`) as empty strings, as Go's JSON decoding does for a `[]string`,
/// so such a pod decodes as it does for the apiserver. Works on the raw JSON of a pod,
/// before it is decoded.
pub fn null_command_items_as_empty(pod: &mut serde_json::Value) {
    const LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];
    const COMMANDS: [&str; 7] = [
        "/command",
        "/args",
        "/livenessProbe/exec/command",
        "/readinessProbe/exec/command",
        "/startupProbe/exec/command",
        "/lifecycle/postStart/exec/command",
        "/lifecycle/preStop/exec/command",
    ];
    for list in LISTS {
        let Some(containers) = pod
            .pointer_mut(&format!("/spec/{list}"))
            .and_then(serde_json::Value::as_array_mut)
        else {
            continue;
        };
        for container in containers {
            for command in COMMANDS {
                let items = container
                    .pointer_mut(command)
                    .and_then(serde_json::Value::as_array_mut);
                for item in items.into_iter().flatten() {
                    if item.is_null() {
                        *item = serde_json::Value::String(String::new());
                    }
                }
            }
        }
    }
}

/// `SetDefaults_PodSpec`.
fn default_pod_spec(spec: &mut PodSpec) {
    default_string(&mut spec.dns_policy, "ClusterFirst");
    default_string(&mut spec.restart_policy, "Always");
    spec.security_context.get_or_insert_with(Default::default);
    spec.termination_grace_period_seconds
        .get_or_insert(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
    default_string(&mut spec.scheduler_name, DEFAULT_SCHEDULER_NAME);
}

/// `SetDefaults_Volume` and the per-source defaults under it.
fn default_volume(volume: &mut Volume) {
    if volume_sources(volume).is_empty() {
        volume.empty_dir = Some(Default::default());
    }
    if let Some(host_path) = &mut volume.host_path {
        // `HostPathUnset`: an explicit empty type means "no checks".
        host_path.type_.get_or_insert_with(String::new);
    }
    if let Some(secret) = &mut volume.secret {
        secret.default_mode.get_or_insert(DEFAULT_VOLUME_MODE);
    }
    if let Some(config_map) = &mut volume.config_map {
        config_map.default_mode.get_or_insert(DEFAULT_VOLUME_MODE);
    }
    if let Some(downward) = &mut volume.downward_api {
        downward.default_mode.get_or_insert(DEFAULT_VOLUME_MODE);
        for item in downward.items.iter_mut().flatten() {
            default_field_selector(item.field_ref.as_mut());
        }
    }
    if let Some(projected) = &mut volume.projected {
        projected.default_mode.get_or_insert(DEFAULT_VOLUME_MODE);
        for source in projected.sources.iter_mut().flatten() {
            if let Some(downward) = &mut source.downward_api {
                for item in downward.items.iter_mut().flatten() {
                    default_field_selector(item.field_ref.as_mut());
                }
            }
            if let Some(token) = &mut source.service_account_token {
                token.expiration_seconds.get_or_insert(3600);
            }
        }
    }
}

/// `SetDefaults_Container` plus the generated per-field defaults.
fn default_container(container: &mut Container) {
    if is_unset(container.image_pull_policy.as_deref()) {
        let policy = pull_policy_for(container.image.as_deref().unwrap_or(""));
        container.image_pull_policy = Some(policy.to_owned());
    }
    default_string(
        &mut container.termination_message_path,
        DEFAULT_TERMINATION_MESSAGE_PATH,
    );
    default_string(&mut container.termination_message_policy, "File");
    for port in container.ports.iter_mut().flatten() {
        default_string(&mut port.protocol, "TCP");
    }
    for env in container.env.iter_mut().flatten() {
        if let Some(source) = &mut env.value_from {
            default_field_selector(source.field_ref.as_mut());
        }
    }
    if let Some(resources) = &mut container.resources {
        for list in [&mut resources.limits, &mut resources.requests]
            .into_iter()
            .flatten()
        {
            round_up_to_milli(list);
        }
    }
    for probe in [
        &mut container.liveness_probe,
        &mut container.readiness_probe,
        &mut container.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        default_probe(probe);
    }
    if let Some(lifecycle) = &mut container.lifecycle {
        for handler in [&mut lifecycle.post_start, &mut lifecycle.pre_stop]
            .into_iter()
            .flatten()
        {
            if let Some(http_get) = &mut handler.http_get {
                default_http_get(http_get);
            }
        }
    }
}

/// `SetDefaults_Probe` and the defaults of its handler.
fn default_probe(probe: &mut Probe) {
    default_int(&mut probe.timeout_seconds, 1);
    default_int(&mut probe.period_seconds, 10);
    default_int(&mut probe.success_threshold, 1);
    default_int(&mut probe.failure_threshold, 3);
    if let Some(http_get) = &mut probe.http_get {
        default_http_get(http_get);
    }
    if let Some(grpc) = &mut probe.grpc {
        // `+default=""`: the empty service name asks for the server's overall health.
        grpc.service.get_or_insert_with(String::new);
    }
}

/// `SetDefaults_HTTPGetAction`.
fn default_http_get(action: &mut HTTPGetAction) {
    default_string(&mut action.path, "/");
    default_string(&mut action.scheme, "HTTP");
}

/// `SetDefaults_ObjectFieldSelector`.
fn default_field_selector(selector: Option<&mut ObjectFieldSelector>) {
    if let Some(selector) = selector {
        default_string(&mut selector.api_version, "v1");
    }
}

/// `SetDefaults_ResourceList`: values finer than a milli-unit are rounded up
/// to one. Unparseable values are left for validation to report.
fn round_up_to_milli(list: &mut BTreeMap<String, KubeQuantity>) {
    for value in list.values_mut() {
        if let Ok(quantity) = Quantity::parse(&value.0)
            && quantity.has_sub_milli_precision()
        {
            let millis = quantity.milli_value_ceil().saturating_mul(1_000_000);
            value.0 = Quantity::from_nanos(millis).to_string();
        }
    }
}

/// The pull policy upstream picks for an image without one: `Always` when the
/// tag is `latest` or there is neither tag nor digest, `IfNotPresent`
/// otherwise, including when the reference does not parse.
#[must_use]
pub fn pull_policy_for(image: &str) -> &'static str {
    match image_tag(image) {
        Some(tag) if tag == "latest" => "Always",
        _ => "IfNotPresent",
    }
}

/// The tag an image reference resolves to, as upstream `parsers.ParseImageName`
/// reports it: the explicit tag, else `latest` when there is no digest
/// either. `None` for references that do not parse or carry only a digest.
fn image_tag(image: &str) -> Option<String> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (name_and_tag, digest) = match image.split_once('@') {
        Some((before, digest)) => (before, Some(digest)),
        None => (image, None),
    };
    // A ':' after the last '/' separates the tag; an earlier one is a registry port.
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_and_tag[..last_slash + i],
            Some(&name_and_tag[last_slash + i + 1..]),
        ),
        None => (name_and_tag, None),
    };
    // Repository paths are lower case; the registry host (first component,
    // when it looks like a host) may not be.
    let path = match name.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => name,
    };
    let valid_tag = |t: &str| {
        !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    if path.is_empty()
        || path.chars().any(|c| c.is_ascii_uppercase())
        || digest.is_some_and(|d| !d.contains(':'))
        || tag.is_some_and(|t| !valid_tag(t))
    {
        return None;
    }
    match (tag, digest) {
        (Some(tag), _) => Some(tag.to_owned()),
        (None, None) => Some("latest".to_owned()),
        (None, Some(_)) => None,
    }
}

/// The names of the volume sources set on `volume`, in upstream's order of checks.
pub(crate) fn volume_sources(volume: &Volume) -> Vec<&'static str> {
    let sources = [
        ("emptyDir", volume.empty_dir.is_some()),
        ("hostPath", volume.host_path.is_some()),
        ("gitRepo", volume.git_repo.is_some()),
        ("gcePersistentDisk", volume.gce_persistent_disk.is_some()),
        (
            "awsElasticBlockStore",
            volume.aws_elastic_block_store.is_some(),
        ),
        ("secret", volume.secret.is_some()),
        ("nfs", volume.nfs.is_some()),
        ("iscsi", volume.iscsi.is_some()),
        ("glusterfs", volume.glusterfs.is_some()),
        ("flocker", volume.flocker.is_some()),
        (
            "persistentVolumeClaim",
            volume.persistent_volume_claim.is_some(),
        ),
        ("rbd", volume.rbd.is_some()),
        ("cinder", volume.cinder.is_some()),
        ("cephfs", volume.cephfs.is_some()),
        ("quobyte", volume.quobyte.is_some()),
        ("downwardAPI", volume.downward_api.is_some()),
        ("fc", volume.fc.is_some()),
        ("azureFile", volume.azure_file.is_some()),
        ("vsphereVolume", volume.vsphere_volume.is_some()),
        (
            "photonPersistentDisk",
            volume.photon_persistent_disk.is_some(),
        ),
        ("portworxVolume", volume.portworx_volume.is_some()),
        ("azureDisk", volume.azure_disk.is_some()),
        ("storageos", volume.storageos.is_some()),
        ("configMap", volume.config_map.is_some()),
        ("scaleIO", volume.scale_io.is_some()),
        ("projected", volume.projected.is_some()),
        ("csi", volume.csi.is_some()),
        ("ephemeral", volume.ephemeral.is_some()),
        ("image", volume.image.is_some()),
        ("flexVolume", volume.flex_volume.is_some()),
    ];
    sources
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
}

fn is_unset(value: Option<&str>) -> bool {
    value.is_none_or(str::is_empty)
}

fn default_string(field: &mut Option<String>, value: &str) {
    if is_unset(field.as_deref()) {
        *field = Some(value.to_owned());
    }
}

fn default_int(field: &mut Option<i32>, value: i32) {
    if field.unwrap_or(0) == 0 {
        *field = Some(value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn defaulted(pod: serde_json::Value) -> serde_json::Value {
        let mut pod: Pod = serde_json::from_value(pod).unwrap();
        default_pod(&mut pod);
        let once = pod.clone();
        default_pod(&mut pod);
        assert_eq!(once, pod, "defaulting must be idempotent");
        serde_json::to_value(pod).unwrap()
    }

    fn pod_with(spec: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn negative_grace_period_becomes_one() {
        let pod = defaulted(pod_with(json!({
            "terminationGracePeriodSeconds": -5,
            "containers": [{"name": "c", "image": "i"}]
        })));
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 1);
        let pod = defaulted(pod_with(json!({
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": "i"}]
        })));
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 0);
    }

    #[test]
    fn null_command_items_read_as_empty_strings() {
        let text = br#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "command": ["sh", null],
            "args": [null], "livenessProbe": {"exec": {"command": [null, "x"]}}}],
            "initContainers": [{"name": "i", "image": "i", "args": ["a", null]}]}}"#;
        let documents = crate::parse_manifests(text, "p.json").unwrap();
        let pod = documents[0].pod.as_ref().unwrap();
        let spec = pod.spec.as_ref().unwrap();
        let c = &spec.containers[0];
        assert_eq!(c.command.as_deref().unwrap(), ["sh", ""]);
        assert_eq!(c.args.as_deref().unwrap(), [""]);
        let probe = c.liveness_probe.as_ref().unwrap();
        let exec = probe.exec.as_ref().unwrap();
        assert_eq!(exec.command.as_deref().unwrap(), ["", "x"]);
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.args.as_deref().unwrap(), ["a", ""]);
    }

    #[test]
    fn pod_spec_defaults() {
        let pod = defaulted(pod_with(
            json!({"containers": [{"name": "c", "image": "busybox"}]}),
        ));
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        let c = &spec["containers"][0];
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["imagePullPolicy"], "Always");
    }

    #[test]
    fn explicit_values_are_kept() {
        let pod = defaulted(pod_with(json!({
            "restartPolicy": "Never", "dnsPolicy": "Default", "terminationGracePeriodSeconds": 0,
            "schedulerName": "mine", "enableServiceLinks": false,
            "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "Never",
                            "terminationMessagePolicy": "FallbackToLogsOnError"}]
        })));
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["dnsPolicy"], "Default");
        assert_eq!(spec["terminationGracePeriodSeconds"], 0);
        assert_eq!(spec["schedulerName"], "mine");
        assert_eq!(spec["enableServiceLinks"], false);
        assert_eq!(spec["containers"][0]["imagePullPolicy"], "Never");
        assert_eq!(
            spec["containers"][0]["terminationMessagePolicy"],
            "FallbackToLogsOnError"
        );
    }

    #[test]
    fn pull_policy_table() {
        let cases = [
            ("busybox", "Always"),
            ("busybox:latest", "Always"),
            ("busybox:1.36", "IfNotPresent"),
            ("registry.local:5000/team/app", "Always"),
            ("registry.local:5000/team/app:v2", "IfNotPresent"),
            ("localhost/app:latest", "Always"),
            ("busybox@sha256:0123abcd", "IfNotPresent"),
            ("busybox:latest@sha256:0123abcd", "Always"),
            ("busybox:1.0@sha256:0123abcd", "IfNotPresent"),
            ("", "IfNotPresent"),
            ("Busybox", "IfNotPresent"),
            ("busy box", "IfNotPresent"),
            ("busybox:", "IfNotPresent"),
            ("Registry.Local/app", "Always"),
        ];
        for (image, policy) in cases {
            assert_eq!(pull_policy_for(image), policy, "{image:?}");
        }
    }

    #[test]
    fn container_field_defaults() {
        let probe = json!({"httpGet": {"port": 8080}});
        let pod = defaulted(pod_with(json!({
            "initContainers": [{"name": "i", "image": "x:1", "ports": [{"containerPort": 53, "protocol": "UDP"}]}],
            "containers": [{
                "name": "c", "image": "x:1",
                "ports": [{"containerPort": 80}],
                "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "livenessProbe": probe, "readinessProbe": {"grpc": {"port": 9}, "periodSeconds": 3},
                "startupProbe": {"exec": {"command": ["true"]}, "timeoutSeconds": 0},
                "lifecycle": {"preStop": {"httpGet": {"port": 1, "path": "/stop"}}},
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "100m"}}
            }]
        })));
        let init = &pod["spec"]["initContainers"][0];
        assert_eq!(init["ports"][0]["protocol"], "UDP");
        assert_eq!(init["imagePullPolicy"], "IfNotPresent");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        let live = &c["livenessProbe"];
        assert_eq!(
            (
                live["timeoutSeconds"].clone(),
                live["periodSeconds"].clone(),
                live["successThreshold"].clone(),
                live["failureThreshold"].clone()
            ),
            (json!(1), json!(10), json!(1), json!(3))
        );
        assert_eq!(live["httpGet"]["path"], "/");
        assert_eq!(live["httpGet"]["scheme"], "HTTP");
        assert_eq!(c["readinessProbe"]["periodSeconds"], 3);
        assert_eq!(c["readinessProbe"]["grpc"]["service"], "");
        assert_eq!(c["startupProbe"]["timeoutSeconds"], 1);
        assert_eq!(c["lifecycle"]["preStop"]["httpGet"]["path"], "/stop");
        assert_eq!(c["lifecycle"]["preStop"]["httpGet"]["scheme"], "HTTP");
        // Requests default from limits only for resources without a request.
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "100m", "memory": "64Mi"})
        );
    }

    #[test]
    fn requests_from_limits_table() {
        let cases = [
            (json!({"limits": {"cpu": "1"}}), json!({"cpu": "1"})),
            (json!({"limits": {}}), json!({})),
            (json!({"requests": {"cpu": "1"}}), json!({"cpu": "1"})),
            (json!({"limits": {"cpu": "0.0001"}}), json!({"cpu": "1m"})),
        ];
        for (resources, requests) in cases {
            let pod = defaulted(pod_with(
                json!({"containers": [{"name": "c", "image": "i", "resources": resources}]}),
            ));
            assert_eq!(
                pod["spec"]["containers"][0]["resources"]["requests"], requests,
                "{resources}"
            );
        }
        let pod = defaulted(pod_with(
            json!({"containers": [{"name": "c", "image": "i", "resources": {}}]}),
        ));
        assert!(
            pod["spec"]["containers"][0]["resources"]
                .get("requests")
                .is_none()
        );
    }

    #[test]
    fn host_network_sets_host_ports() {
        let pod = defaulted(pod_with(json!({"hostNetwork": true, "containers": [
            {"name": "c", "image": "i", "ports": [{"containerPort": 80}, {"containerPort": 81, "hostPort": 81}]}
        ]})));
        let ports = &pod["spec"]["containers"][0]["ports"];
        assert_eq!(ports[0]["hostPort"], 80);
        assert_eq!(ports[1]["hostPort"], 81);
    }

    #[test]
    fn volume_defaults() {
        let pod = defaulted(pod_with(json!({"containers": [], "volumes": [
            {"name": "none"},
            {"name": "host", "hostPath": {"path": "/srv"}},
            {"name": "typed", "hostPath": {"path": "/srv", "type": "Directory"}},
            {"name": "sec", "secret": {"secretName": "s"}},
            {"name": "cm", "configMap": {"name": "c", "defaultMode": 256}},
            {"name": "dapi", "downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"name": "proj", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}},
        ]})));
        let v = &pod["spec"]["volumes"];
        assert_eq!(v[0]["emptyDir"], json!({}));
        assert_eq!(v[1]["hostPath"]["type"], "");
        assert_eq!(v[2]["hostPath"]["type"], "Directory");
        assert_eq!(v[3]["secret"]["defaultMode"], 420);
        assert_eq!(v[4]["configMap"]["defaultMode"], 256);
        assert_eq!(v[5]["downwardAPI"]["defaultMode"], 420);
        assert_eq!(
            v[5]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"],
            "v1"
        );
        assert_eq!(v[6]["projected"]["defaultMode"], 420);
        assert_eq!(
            v[6]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3600
        );
    }

    #[test]
    fn missing_spec_gets_one() {
        let mut pod = Pod::default();
        default_pod(&mut pod);
        assert_eq!(pod.spec.unwrap().restart_policy.as_deref(), Some("Always"));
    }
}
