//! One-defect variants of the parity corpus's base pods: each defect edits a copy of a
//! base pod's JSON in one place, aimed at one validation area (new areas ported from
//! upstream, and the ones nodelet validated before). A defect that does not apply to a
//! base (no probe to break, no init container) returns `None` and makes no variant.

use serde_json::{Map, Value, json};

/// A named edit; `None` when it does not apply to the pod.
pub type Defect = (&'static str, fn(&mut Value) -> Option<()>);

pub fn spec(pod: &mut Value) -> &mut Map<String, Value> {
    pod["spec"].as_object_mut().expect("a base pod has a spec")
}

pub fn meta_map<'a>(pod: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    let meta = pod["metadata"]
        .as_object_mut()
        .expect("a base pod has metadata");
    meta.entry(field)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("labels and annotations are maps")
}

pub fn c0(pod: &mut Value) -> &mut Map<String, Value> {
    pod["spec"]["containers"][0]
        .as_object_mut()
        .expect("a base pod has a container")
}

pub fn first_probe(pod: &mut Value) -> Option<&mut Map<String, Value>> {
    let c = c0(pod);
    let key = ["livenessProbe", "readinessProbe", "startupProbe"]
        .into_iter()
        .find(|k| c.contains_key(*k))?;
    c.get_mut(key)?.as_object_mut()
}

pub fn container_sc(pod: &mut Value) -> &mut Map<String, Value> {
    c0(pod)
        .entry("securityContext")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("securityContext is a map")
}

pub fn pod_sc(pod: &mut Value) -> &mut Map<String, Value> {
    spec(pod)
        .entry("securityContext")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("securityContext is a map")
}

pub fn push(map: &mut Map<String, Value>, field: &str, item: Value) {
    let list = map.entry(field).or_insert_with(|| json!([]));
    list.as_array_mut().expect("a list").push(item);
}

pub fn c0_name(pod: &Value) -> String {
    pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn init_container(extra: Value) -> Value {
    let mut c = json!({"name": "init-extra", "image": "busybox:1.36", "command": ["true"]});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

/// The defects of metadata, probes and hooks, security contexts and volumes; the rest are
/// in `defects_spec.rs`.
pub const DEFECTS: &[Defect] = &[
    // Metadata: labels, annotations, finalizers (new).
    ("label-key-space", |p| {
        meta_map(p, "labels").insert("bad key".into(), json!("x"));
        Some(())
    }),
    ("label-key-bad-prefix", |p| {
        meta_map(p, "labels").insert("Example.com/team".into(), json!("a"));
        Some(())
    }),
    ("label-key-two-slashes", |p| {
        meta_map(p, "labels").insert("a/b/c".into(), json!("a"));
        Some(())
    }),
    ("label-value-space", |p| {
        meta_map(p, "labels").insert("release".into(), json!("v1 beta"));
        Some(())
    }),
    ("label-value-too-long", |p| {
        meta_map(p, "labels").insert("commit".into(), json!("a".repeat(64)));
        Some(())
    }),
    ("label-value-trailing-dash", |p| {
        meta_map(p, "labels").insert("track".into(), json!("stable-"));
        Some(())
    }),
    ("label-value-ok-empty", |p| {
        meta_map(p, "labels").insert("example.com/marker".into(), json!(""));
        Some(())
    }),
    ("annotation-key-space", |p| {
        meta_map(p, "annotations").insert("my annotation".into(), json!("v"));
        Some(())
    }),
    ("annotation-key-uppercase-prefix-ok", |p| {
        // Annotation keys are checked lower-cased: an upper-case prefix passes.
        meta_map(p, "annotations").insert("Example.COM/Owner".into(), json!("v"));
        Some(())
    }),
    ("annotation-key-empty-name", |p| {
        meta_map(p, "annotations").insert("example.com/".into(), json!("v"));
        Some(())
    }),
    ("annotations-too-big", |p| {
        meta_map(p, "annotations").insert("example.com/blob".into(), json!("x".repeat(262_144)));
        Some(())
    }),
    ("annotation-value-any-ok", |p| {
        meta_map(p, "annotations").insert("note".into(), json!("free text: { } [ ] é\n"));
        Some(())
    }),
    ("finalizer-space", |p| {
        p["metadata"]["finalizers"] = json!(["example.com/ok", "not ok"]);
        Some(())
    }),
    ("finalizer-unqualified", |p| {
        p["metadata"]["finalizers"] = json!(["cleanup"]);
        Some(())
    }),
    ("finalizer-standard-ok", |p| {
        p["metadata"]["finalizers"] = json!(["kubernetes", "example.com/protect"]);
        Some(())
    }),
    // AppArmor, seccomp and deletion-cost annotations (new).
    ("apparmor-unknown-container", |p| {
        meta_map(p, "annotations").insert(
            "container.apparmor.security.beta.kubernetes.io/no-such".into(),
            json!("runtime/default"),
        );
        Some(())
    }),
    ("apparmor-bad-profile", |p| {
        let key = format!(
            "container.apparmor.security.beta.kubernetes.io/{}",
            c0_name(p)
        );
        meta_map(p, "annotations").insert(key, json!("enforce-me"));
        Some(())
    }),
    ("apparmor-localhost-ok", |p| {
        let key = format!(
            "container.apparmor.security.beta.kubernetes.io/{}",
            c0_name(p)
        );
        meta_map(p, "annotations").insert(key, json!("localhost/k8s-apparmor-example"));
        Some(())
    }),
    ("deletion-cost-not-int", |p| {
        meta_map(p, "annotations").insert(
            "controller.kubernetes.io/pod-deletion-cost".into(),
            json!("high"),
        );
        Some(())
    }),
    // Probes and lifecycle hooks (new).
    ("probe-two-handlers", |p| {
        let probe = first_probe(p)?;
        if probe.contains_key("exec") {
            probe.insert("tcpSocket".into(), json!({"port": 8080}));
        } else {
            probe.insert("exec".into(), json!({"command": ["true"]}));
        }
        Some(())
    }),
    ("probe-no-handler", |p| {
        c0(p).insert("readinessProbe".into(), json!({"periodSeconds": 5}));
        Some(())
    }),
    ("liveness-success-threshold", |p| {
        let c = c0(p);
        let probe = c
            .entry("livenessProbe")
            .or_insert_with(|| json!({"exec": {"command": ["true"]}}));
        probe["successThreshold"] = json!(2);
        Some(())
    }),
    ("startup-success-threshold", |p| {
        c0(p).insert(
            "startupProbe".into(),
            json!({"tcpSocket": {"port": 8080}, "successThreshold": 3}),
        );
        Some(())
    }),
    ("readiness-success-threshold-ok", |p| {
        let c = c0(p);
        let probe = c
            .entry("readinessProbe")
            .or_insert_with(|| json!({"exec": {"command": ["true"]}}));
        probe["successThreshold"] = json!(3);
        Some(())
    }),
    ("probe-negative-period", |p| {
        first_probe(p)?.insert("periodSeconds".into(), json!(-10));
        Some(())
    }),
    ("probe-port-out-of-range", |p| {
        c0(p).insert(
            "livenessProbe".into(),
            json!({"httpGet": {"path": "/", "port": 70000}}),
        );
        Some(())
    }),
    ("probe-bad-port-name", |p| {
        c0(p).insert(
            "readinessProbe".into(),
            json!({"tcpSocket": {"port": "Http_Port"}}),
        );
        Some(())
    }),
    ("probe-exec-empty", |p| {
        c0(p).insert("livenessProbe".into(), json!({"exec": {"command": []}}));
        Some(())
    }),
    ("readiness-grace-period", |p| {
        c0(p).insert(
            "readinessProbe".into(),
            json!({"exec": {"command": ["true"]}, "terminationGracePeriodSeconds": 10}),
        );
        Some(())
    }),
    ("lifecycle-two-handlers", |p| {
        c0(p).insert(
            "lifecycle".into(),
            json!({"preStop": {"exec": {"command": ["sleep", "2"]}, "httpGet": {"path": "/quit", "port": 8080}}}),
        );
        Some(())
    }),
    ("lifecycle-no-handler", |p| {
        c0(p).insert("lifecycle".into(), json!({"postStart": {}}));
        Some(())
    }),
    ("lifecycle-ok", |p| {
        c0(p).insert(
            "lifecycle".into(),
            json!({"postStart": {"exec": {"command": ["sh", "-c", "echo started"]}}}),
        );
        Some(())
    }),
    ("init-with-liveness", |p| {
        push(
            spec(p),
            "initContainers",
            init_container(json!({"livenessProbe": {"exec": {"command": ["true"]}}})),
        );
        Some(())
    }),
    ("init-with-readiness", |p| {
        push(
            spec(p),
            "initContainers",
            init_container(json!({"readinessProbe": {"tcpSocket": {"port": 80}}})),
        );
        Some(())
    }),
    ("init-with-lifecycle", |p| {
        push(
            spec(p),
            "initContainers",
            init_container(json!({"lifecycle": {"preStop": {"exec": {"command": ["true"]}}}})),
        );
        Some(())
    }),
    ("sidecar-with-probes-ok", |p| {
        push(
            spec(p),
            "initContainers",
            init_container(json!({
                "restartPolicy": "Always",
                "startupProbe": {"exec": {"command": ["true"]}},
                "livenessProbe": {"exec": {"command": ["true"]}},
                "lifecycle": {"postStart": {"exec": {"command": ["true"]}}}
            })),
        );
        Some(())
    }),
    ("sidecar-liveness-success-threshold", |p| {
        push(
            spec(p),
            "initContainers",
            init_container(json!({
                "restartPolicy": "Always",
                "livenessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2}
            })),
        );
        Some(())
    }),
    ("init-bad-restart-policy", |p| {
        push(
            spec(p),
            "initContainers",
            init_container(json!({"restartPolicy": "Never"})),
        );
        Some(())
    }),
    ("container-restart-policy", |p| {
        c0(p).insert("restartPolicy".into(), json!("Always"));
        Some(())
    }),
    // Security context (new).
    ("negative-run-as-user", |p| {
        pod_sc(p).insert("runAsUser".into(), json!(-1));
        Some(())
    }),
    ("negative-run-as-group", |p| {
        pod_sc(p).insert("runAsGroup".into(), json!(-1000));
        Some(())
    }),
    ("negative-fs-group", |p| {
        pod_sc(p).insert("fsGroup".into(), json!(-2));
        Some(())
    }),
    ("negative-supplemental-group", |p| {
        pod_sc(p).insert("supplementalGroups".into(), json!([1000, -5]));
        Some(())
    }),
    ("container-negative-run-as-user", |p| {
        container_sc(p).insert("runAsUser".into(), json!(-7));
        Some(())
    }),
    ("container-negative-run-as-group", |p| {
        container_sc(p).insert("runAsGroup".into(), json!(-7));
        Some(())
    }),
    ("run-as-user-too-big", |p| {
        container_sc(p).insert("runAsUser".into(), json!(4_294_967_296_i64));
        Some(())
    }),
    ("privileged-without-escalation", |p| {
        let sc = container_sc(p);
        sc.insert("privileged".into(), json!(true));
        sc.insert("allowPrivilegeEscalation".into(), json!(false));
        Some(())
    }),
    // Volumes (emptyDir sizeLimit new; persistentVolumeClaim now accepted).
    ("emptydir-negative-size", |p| {
        push(
            spec(p),
            "volumes",
            json!({"name": "scratch-neg", "emptyDir": {"sizeLimit": "-1Gi"}}),
        );
        Some(())
    }),
    ("pvc-volume-ok", |p| {
        push(
            spec(p),
            "volumes",
            json!({"name": "claim", "persistentVolumeClaim": {"claimName": "data-claim"}}),
        );
        push(
            c0(p),
            "volumeMounts",
            json!({"name": "claim", "mountPath": "/claim"}),
        );
        Some(())
    }),
    ("pvc-volume-no-claim-name", |p| {
        push(
            spec(p),
            "volumes",
            json!({"name": "claim", "persistentVolumeClaim": {"claimName": ""}}),
        );
        Some(())
    }),
    ("nfs-volume-ok", |p| {
        push(
            spec(p),
            "volumes",
            json!({"name": "shared", "nfs": {"server": "nfs.example.com", "path": "/exports/shared"}}),
        );
        Some(())
    }),
    ("volume-duplicate-name", |p| {
        let first = p["spec"]["volumes"][0]["name"].as_str()?.to_owned();
        push(spec(p), "volumes", json!({"name": first, "emptyDir": {}}));
        Some(())
    }),
    ("volume-bad-name", |p| {
        push(
            spec(p),
            "volumes",
            json!({"name": "Cache_Dir", "emptyDir": {}}),
        );
        Some(())
    }),
    ("volume-two-sources", |p| {
        push(
            spec(p),
            "volumes",
            json!({"name": "both", "emptyDir": {}, "hostPath": {"path": "/tmp/x"}}),
        );
        Some(())
    }),
    ("hostpath-backsteps", |p| {
        push(
            spec(p),
            "volumes",
            json!({"name": "up", "hostPath": {"path": "/var/../etc"}}),
        );
        Some(())
    }),
    ("hostpath-bad-type", |p| {
        push(
            spec(p),
            "volumes",
            json!({"name": "sock", "hostPath": {"path": "/run/x.sock", "type": "Sock"}}),
        );
        Some(())
    }),
    ("secret-volume-no-name", |p| {
        push(spec(p), "volumes", json!({"name": "creds", "secret": {}}));
        Some(())
    }),
    ("configmap-item-absolute", |p| {
        push(
            spec(p),
            "volumes",
            json!({"name": "cfg", "configMap": {"name": "app", "items": [{"key": "a", "path": "/etc/a"}]}}),
        );
        Some(())
    }),
    ("volume-bad-mode", |p| {
        push(
            spec(p),
            "volumes",
            json!({"name": "cfg", "configMap": {"name": "app", "defaultMode": 1000}}),
        );
        Some(())
    }),
    ("mount-unknown-volume", |p| {
        push(
            c0(p),
            "volumeMounts",
            json!({"name": "nowhere", "mountPath": "/nowhere"}),
        );
        Some(())
    }),
    ("mount-duplicate-path", |p| {
        let first = p["spec"]["containers"][0]["volumeMounts"][0].clone();
        if first.is_null() {
            return None;
        }
        push(c0(p), "volumeMounts", first);
        Some(())
    }),
    ("mount-subpath-backsteps", |p| {
        let mount = p
            .pointer_mut("/spec/containers/0/volumeMounts/0")?
            .as_object_mut()?;
        mount.insert("subPath".into(), json!("../secrets"));
        Some(())
    }),
];
