//! The validation unit tests: upstream's messages for each area.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::defaults::default_pod;
use serde_json::{Value, json};

/// A valid, defaulted pod with `patch` merged into its JSON.
fn pod(patch: Value) -> Pod {
    let mut base = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{
                "name": "app", "image": "busybox:1.36",
                "ports": [{"name": "http", "containerPort": 80}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }]
        }
    });
    merge(&mut base, patch);
    let mut pod: Pod = serde_json::from_value(base).unwrap();
    default_pod(&mut pod);
    pod
}

/// JSON merge patch (RFC 7386), enough to tweak the base pod per case.
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

fn messages(pod: &Pod) -> Vec<String> {
    validate_pod(pod).iter().map(ToString::to_string).collect()
}

#[test]
fn the_base_pod_is_valid() {
    assert_eq!(messages(&pod(json!({}))), Vec::<String>::new());
}

#[test]
fn error_table() {
    let container = |extra: Value| {
        let mut c = json!({"name": "app", "image": "busybox:1.36"});
        merge(&mut c, extra);
        c
    };
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "bad name",
            json!({"metadata": {"name": "Web_1"}}),
            vec![
                r#"metadata.name: Invalid value: "Web_1": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#,
            ],
        ),
        (
            "missing name",
            json!({"metadata": {"name": null}}),
            vec!["metadata.name: Required value: name or generateName is required"],
        ),
        (
            "bad namespace",
            json!({"metadata": {"namespace": "kube.system"}}),
            vec![r#"metadata.namespace: Invalid value: "kube.system": must not contain dots"#],
        ),
        (
            "namespace underscore",
            json!({"metadata": {"namespace": "a_b"}}),
            vec![
                r#"metadata.namespace: Invalid value: "a_b": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#,
            ],
        ),
        (
            "no containers",
            json!({"spec": {"containers": []}}),
            vec!["spec.containers: Required value"],
        ),
        (
            "missing image and duplicate name",
            json!({"spec": {"containers": [container(json!({})), container(json!({"image": null}))]}}),
            vec![
                "spec.containers[1].image: Required value",
                r#"spec.containers[1].name: Duplicate value: "app""#,
            ],
        ),
        (
            "init container clashes with app container",
            json!({"spec": {"containers": [container(json!({}))], "initContainers": [container(json!({}))]}}),
            vec![r#"spec.initContainers[0].name: Duplicate value: "app""#],
        ),
        (
            "empty and bad container names",
            json!({"spec": {"containers": [container(json!({"name": ""})), container(json!({"name": "App"}))]}}),
            vec![
                "spec.containers[0].name: Required value",
                r#"spec.containers[1].name: Invalid value: "App": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#,
            ],
        ),
        (
            "ports",
            json!({"spec": {"containers": [container(json!({"ports": [
                {"containerPort": 0},
                {"containerPort": 70000, "protocol": "ICMP"},
                {"name": "http", "containerPort": 1},
                {"name": "http", "containerPort": 2},
                {"name": "Web--", "containerPort": 3},
                {"containerPort": 4, "hostPort": -1}
            ]}))]}}),
            vec![
                "spec.containers[0].ports[0].containerPort: Required value",
                "spec.containers[0].ports[1].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                r#"spec.containers[0].ports[1].protocol: Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP""#,
                r#"spec.containers[0].ports[3].name: Duplicate value: "http""#,
                r#"spec.containers[0].ports[4].name: Invalid value: "Web--": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
                r#"spec.containers[0].ports[4].name: Invalid value: "Web--": must not contain consecutive hyphens"#,
                r#"spec.containers[0].ports[4].name: Invalid value: "Web--": must not begin or end with a hyphen"#,
                "spec.containers[0].ports[5].hostPort: Invalid value: -1: must be between 1 and 65535, inclusive",
            ],
        ),
        (
            "host port conflict",
            json!({"spec": {"containers": [
                container(json!({"ports": [{"containerPort": 80, "hostPort": 8080}]})),
                container(json!({"name": "b", "ports": [{"containerPort": 81, "hostPort": 8080}]}))
            ]}}),
            vec![r#"spec.containers[1].ports[0].hostPort: Duplicate value: "TCP//8080""#],
        ),
        (
            "policies",
            json!({"spec": {"restartPolicy": "Sometimes", "dnsPolicy": "Google"}}),
            vec![
                r#"spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never""#,
                r#"spec.dnsPolicy: Unsupported value: "Google": supported values: "ClusterFirstWithHostNet", "ClusterFirst", "Default", "None""#,
            ],
        ),
        (
            "dns none needs config",
            json!({"spec": {"dnsPolicy": "None"}}),
            vec![
                "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None",
            ],
        ),
        (
            // Since 1.27 a negative grace period is taken as 1 (see defaults).
            "negative grace period",
            json!({"spec": {"terminationGracePeriodSeconds": -5}}),
            vec![],
        ),
        (
            "volumes",
            json!({"spec": {"volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "data", "emptyDir": {}},
                {"name": "nfs", "nfs": {"server": "", "path": "x"}},
                {"name": "two", "emptyDir": {}, "hostPath": {"path": "/x"}},
                {"name": "hp", "hostPath": {"path": "/a/../b", "type": "Dir"}},
                {"name": "sec", "secret": {"defaultMode": 4095}},
                {"name": "cm", "configMap": {"name": "c", "items": [{"key": "k", "path": "/abs"}]}}
            ]}}),
            vec![
                r#"spec.volumes[1].name: Duplicate value: "data""#,
                "spec.volumes[2].nfs.server: Required value",
                r#"spec.volumes[2].nfs.path: Invalid value: "x": must be an absolute path"#,
                "spec.volumes[3].hostPath: Forbidden: may not specify more than 1 volume type",
                r#"spec.volumes[4].hostPath.path: Invalid value: "/a/../b": must not contain '..'"#,
                r#"spec.volumes[4].hostPath.type: Unsupported value: "Dir": supported values: "", "BlockDevice", "CharDevice", "Directory", "DirectoryOrCreate", "File", "FileOrCreate", "Socket""#,
                "spec.volumes[5].secret.secretName: Required value",
                "spec.volumes[5].secret.defaultMode: Invalid value: 4095: must be a number between 0 and 0777 (octal), both inclusive",
                r#"spec.volumes[6].configMap.items[0].path: Invalid value: "/abs": must be a relative path"#,
            ],
        ),
        (
            "mounts",
            json!({"spec": {"containers": [container(json!({"volumeMounts": [
                {"name": "data", "mountPath": "/data"},
                {"name": "data", "mountPath": "/data", "subPath": "../x"},
                {"name": "gone", "mountPath": ""},
                {"name": "data", "mountPath": "/b", "subPath": "/abs", "subPathExpr": "$(X)"}
            ]}))]}}),
            vec![
                r#"spec.containers[0].volumeMounts[1].mountPath: Invalid value: "/data": must be unique"#,
                r#"spec.containers[0].volumeMounts.subPath: Invalid value: "../x": must not contain '..'"#,
                r#"spec.containers[0].volumeMounts[2].name: Not found: "gone""#,
                "spec.containers[0].volumeMounts[2].mountPath: Required value",
                r#"spec.containers[0].volumeMounts.subPath: Invalid value: "/abs": must be a relative path"#,
                r#"spec.containers[0].volumeMounts[3].subPathExpr: Invalid value: "$(X)": subPathExpr and subPath are mutually exclusive"#,
            ],
        ),
        (
            "env names",
            json!({"spec": {"containers": [container(json!({"env": [
                {"name": "OK_1.x-y"}, {"name": ""}, {"name": "A=B"}, {"name": "tab\there"}
            ]}))]}}),
            vec![
                "spec.containers[0].env[1].name: Required value",
                r#"spec.containers[0].env[2].name: Invalid value: "A=B": a valid environment variable name must consist only of printable ASCII characters other than '='"#,
                r#"spec.containers[0].env[3].name: Invalid value: "tab\there": a valid environment variable name must consist only of printable ASCII characters other than '='"#,
            ],
        ),
        (
            "resources",
            json!({"spec": {"containers": [container(json!({"resources": {
                "limits": {"cpu": "500m", "memory": "1Gi", "example.com/gpu": "1", "example.com/bad": "1x"},
                "requests": {"cpu": "0.6", "memory": "-1", "example.com/gpu": "2", "vendor.io/fpga": "1"}
            }}))]}}),
            vec![
                r#"spec.containers[0].resources.limits[example.com/bad]: Invalid value: "1x": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"#,
                r#"spec.containers[0].resources.requests: Invalid value: "0.6": must be less than or equal to cpu limit of 500m"#,
                // Defaulting copied the limit into requests, so it is reported twice, as upstream would.
                r#"spec.containers[0].resources.requests[example.com/bad]: Invalid value: "1x": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"#,
                r#"spec.containers[0].resources.requests: Invalid value: "2": must be equal to example.com/gpu limit of 1"#,
                r#"spec.containers[0].resources.requests[memory]: Invalid value: "-1": must be greater than or equal to 0"#,
                "spec.containers[0].resources.limits: Required value: Limit must be set for non overcommitable resources",
            ],
        ),
        (
            "host network ports must match",
            json!({"spec": {"hostNetwork": true, "containers": [container(json!({"ports": [{"containerPort": 80, "hostPort": 81}]}))]}}),
            vec![
                "spec.containers[0].ports[0].hostPort: Invalid value: 81: must match `containerPort` when `hostNetwork` is true",
            ],
        ),
    ];
    for (name, patch, expected) in cases {
        assert_eq!(messages(&pod(patch)), expected, "{name}");
    }
}

#[test]
fn undefaulted_fields_are_required() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "n"},
        "spec": {"containers": [{"name": "c", "image": "i"}]}
    }))
    .unwrap();
    assert_eq!(
        messages(&pod),
        [
            "spec.containers[0].imagePullPolicy: Required value",
            "spec.containers[0].terminationMessagePolicy: Required value: must be 'File' or 'FallbackToLogsOnError'",
            "spec.restartPolicy: Required value",
            "spec.dnsPolicy: Required value",
        ]
    );
}

#[test]
fn names_table() {
    let long_label = "a".repeat(64);
    let cases: &[(&str, usize, usize)] = &[
        ("a", 0, 0),
        ("a-1", 0, 0),
        ("1a", 0, 0),
        ("a.b", 1, 0),
        ("-a", 1, 1),
        ("a-", 1, 1),
        ("", 1, 1),
        (&long_label, 1, 0),
        ("a..b", 1, 1),
    ];
    for (value, label_errs, subdomain_errs) in cases {
        assert_eq!(dns1123_label(value).len(), *label_errs, "label {value:?}");
        assert_eq!(
            dns1123_subdomain(value).len(),
            *subdomain_errs,
            "subdomain {value:?}"
        );
    }
    assert_eq!(
        dns1123_subdomain(&"a".repeat(254)),
        ["must be no more than 253 characters"]
    );
}

#[test]
fn go_quoting() {
    assert_eq!(go_quote("a\"b\\c\n\u{1}é"), r#""a\"b\\c\n\x01é""#);
}

/// Areas ported for issue 16, with the messages a real kube-apiserver v1.37.2 gave for the
/// same pods (its dry run, sorted; `manifests/tests/parity.rs` compares the field paths of
/// many more).
#[test]
fn upstream_messages_table() {
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "metadata",
            serde_json::from_str(r#"{"metadata": {"labels": {"a b": "x y", "a/b/c": "ok", "example.com/": "v"}, "annotations": {"Bad Key": "v", "container.apparmor.security.beta.kubernetes.io/nope": "bad", "controller.kubernetes.io/pod-deletion-cost": "+1", "seccomp.security.alpha.kubernetes.io/pod": "sometimes"}, "finalizers": ["kubernetes", "not ok", "cleanup"]}}"#).unwrap(),
            vec![
                r#"metadata.annotations.seccomp.security.alpha.kubernetes.io/pod: Invalid value: "sometimes": must be a valid seccomp profile"#,
                r#"metadata.annotations: Invalid value: "Bad Key": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#,
                r#"metadata.annotations[container.apparmor.security.beta.kubernetes.io/nope]: Invalid value: "bad": invalid AppArmor profile name: "bad""#,
                r#"metadata.annotations[container.apparmor.security.beta.kubernetes.io/nope]: Invalid value: "nope": container not found"#,
                r#"metadata.annotations[controller.kubernetes.io/pod-deletion-cost]: Invalid value: "+1": must be a 32bit integer"#,
                r#"metadata.finalizers: Invalid value: "not ok": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#,
                r#"metadata.finalizers[1]: Invalid value: "not ok": name is neither a standard finalizer name nor is it fully qualified"#,
                r#"metadata.finalizers[2]: Invalid value: "cleanup": name is neither a standard finalizer name nor is it fully qualified"#,
                r#"metadata.labels: Invalid value: "a b": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#,
                r#"metadata.labels: Invalid value: "a/b/c": a valid label key must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"#,
                r#"metadata.labels: Invalid value: "example.com/": name part must be non-empty"#,
                r#"metadata.labels: Invalid value: "example.com/": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#,
                r#"metadata.labels: Invalid value: "x y": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"#,
            ],
        ),
        (
            "probes and hooks",
            serde_json::from_str(r#"{"spec": {"containers": [{"name": "app", "image": "busybox:1.36", "livenessProbe": {"successThreshold": 2, "exec": {"command": ["a"]}, "tcpSocket": {"port": 80}}, "readinessProbe": {"periodSeconds": -1}, "startupProbe": {"httpGet": {"port": "Web_1", "path": "/"}, "terminationGracePeriodSeconds": 0}, "lifecycle": {"preStop": {"exec": {"command": []}, "httpGet": {"port": 0}}, "postStart": {}}}], "initContainers": [{"name": "init", "image": "busybox:1.36", "livenessProbe": {"exec": {"command": ["a"]}}, "lifecycle": {"preStop": {"exec": {"command": ["a"]}}}}, {"name": "side", "image": "busybox:1.36", "restartPolicy": "Always", "startupProbe": {"exec": {"command": ["a"]}, "successThreshold": 2}}]}}"#).unwrap(),
            vec![
                r#"spec.containers[0].lifecycle.postStart: Required value: must specify a handler type"#,
                r#"spec.containers[0].lifecycle.preStop.exec.command: Required value"#,
                r#"spec.containers[0].lifecycle.preStop.httpGet: Forbidden: may not specify more than 1 handler type"#,
                r#"spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1"#,
                r#"spec.containers[0].livenessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type"#,
                r#"spec.containers[0].readinessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 0"#,
                r#"spec.containers[0].readinessProbe: Required value: must specify a handler type"#,
                r#"spec.containers[0].startupProbe.httpGet.port: Invalid value: "Web_1": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"#,
                r#"spec.containers[0].startupProbe.terminationGracePeriodSeconds: Invalid value: 0: must be greater than 0"#,
                r#"spec.initContainers[0].lifecycle: Forbidden: may not be set for init containers without restartPolicy=Always"#,
                r#"spec.initContainers[0].livenessProbe: Forbidden: may not be set for init containers without restartPolicy=Always"#,
                r#"spec.initContainers[1].startupProbe.successThreshold: Invalid value: 2: must be 1"#,
            ],
        ),
        (
            "scheduling and ids",
            serde_json::from_str(r#"{"spec": {"hostname": "Foo_bar", "subdomain": "a.b", "nodeSelector": {"disk": "fast ssd"}, "securityContext": {"runAsUser": -1, "runAsGroup": -2, "fsGroup": -3, "supplementalGroups": [1, -4]}, "tolerations": [{"key": "a", "operator": "Exists", "value": "x"}, {"operator": "Equal"}, {"key": "b", "operator": "In", "effect": "Never", "tolerationSeconds": 5}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Equals"}, {"key": "zone", "operator": "In"}, {"key": "zone", "operator": "Exists", "values": ["a"]}]}]}, "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 101, "preference": {}}]}, "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": ""}]}}}}"#).unwrap(),
            vec![
                r#"spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 101: must be in the range 1-100"#,
                r#"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator: Invalid value: "Equals": not a valid selector operator"#,
                r#"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[1].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"#,
                r#"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[2].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"#,
                r#"spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: Invalid value: "": name part must be non-empty"#,
                r#"spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: Invalid value: "": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#,
                r#"spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: Required value: can not be empty"#,
                r#"spec.hostname: Invalid value: "Foo_bar": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#,
                r#"spec.nodeSelector: Invalid value: "fast ssd": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"#,
                r#"spec.securityContext.fsGroup: Invalid value: -3: must be between 0 and 2147483647, inclusive"#,
                r#"spec.securityContext.runAsGroup: Invalid value: -2: must be between 0 and 2147483647, inclusive"#,
                r#"spec.securityContext.runAsUser: Invalid value: -1: must be between 0 and 2147483647, inclusive"#,
                r#"spec.securityContext.supplementalGroups[1]: Invalid value: -4: must be between 0 and 2147483647, inclusive"#,
                r#"spec.subdomain: Invalid value: "a.b": must not contain dots"#,
                r#"spec.tolerations[0].operator: Invalid value: "x": value must be empty when `operator` is 'Exists'"#,
                r#"spec.tolerations[1].operator: Invalid value: "Equal": operator must be Exists when `key` is empty, which means "match all values and all keys""#,
                r#"spec.tolerations[2].effect: Invalid value: "Never": effect must be 'NoExecute' when `tolerationSeconds` is set"#,
                r#"spec.tolerations[2].effect: Unsupported value: "Never": supported values: "NoSchedule", "PreferNoSchedule", "NoExecute""#,
                r#"spec.tolerations[2].operator: Unsupported value: "In": supported values: "Equal", "Exists""#,
            ],
        ),
        (
            "environment, resources, volumes",
            serde_json::from_str(r#"{"spec": {"volumes": [{"name": "data", "emptyDir": {"sizeLimit": "-1Gi"}}, {"name": "claim", "persistentVolumeClaim": {"claimName": ""}}], "containers": [{"name": "app", "image": "busybox:1.36", "securityContext": {"runAsUser": -1, "privileged": true, "allowPrivilegeEscalation": true}, "envFrom": [{"prefix": "A=", "configMapRef": {"name": "x"}}, {"prefix": "B"}, {"configMapRef": {"name": "Bad_Name"}, "secretRef": {"name": "s"}}], "env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "spec.nothing"}}}, {"name": "C", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a b"}}}, {"name": "D", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}}, {"name": "E", "valueFrom": {}}], "resources": {"limits": {"foo": "1", "example.com/fpga": "500m", "hugepages-2Mi": "1Mi"}}}]}}"#).unwrap(),
            vec![
                r#"spec.containers[0].envFrom: Invalid value: "": may not have more than one field specified at a time"#,
                r#"spec.containers[0].envFrom: Invalid value: "": must specify one of: `configMapRef` or `secretRef`"#,
                r#"spec.containers[0].envFrom[0].prefix: Invalid value: "A=": a valid environment variable name must consist only of printable ASCII characters other than '='"#,
                r#"spec.containers[0].envFrom[2].configMapRef.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#,
                r#"spec.containers[0].env[0].valueFrom: Invalid value: "": may not be specified when `value` is not empty"#,
                r#"spec.containers[0].env[1].valueFrom.fieldRef.fieldPath: Invalid value: "spec.nothing": error converting fieldPath: field label not supported: spec.nothing"#,
                r#"spec.containers[0].env[2].valueFrom.secretKeyRef.key: Invalid value: "a b": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"#,
                r#"spec.containers[0].env[3].valueFrom.resourceFieldRef.resource: Unsupported value: "limits.gpu": supported values: "limits.cpu", "limits.ephemeral-storage", "limits.memory", "requests.cpu", "requests.ephemeral-storage", "requests.memory""#,
                r#"spec.containers[0].env[4].valueFrom: Invalid value: "": must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef`, `secretKeyRef` or `fileKeyRef`"#,
                r#"spec.containers[0].resources.limits[example.com/fpga]: Invalid value: "500m": must be an integer"#,
                r#"spec.containers[0].resources.limits[foo]: Invalid value: "foo": must be a standard resource for containers"#,
                r#"spec.containers[0].resources.limits[foo]: Invalid value: "foo": must be a standard resource type or fully qualified"#,
                r#"spec.containers[0].resources.limits[hugepages-2Mi]: Invalid value: "1Mi": 1Mi is not positive integer multiple of hugepages-2Mi"#,
                r#"spec.containers[0].resources.requests[example.com/fpga]: Invalid value: "500m": must be an integer"#,
                r#"spec.containers[0].resources.requests[foo]: Invalid value: "foo": must be a standard resource for containers"#,
                r#"spec.containers[0].resources.requests[foo]: Invalid value: "foo": must be a standard resource type or fully qualified"#,
                r#"spec.containers[0].resources.requests[hugepages-2Mi]: Invalid value: "1Mi": 1Mi is not positive integer multiple of hugepages-2Mi"#,
                r#"spec.containers[0].resources: Forbidden: HugePages require cpu or memory"#,
                r#"spec.containers[0].securityContext.runAsUser: Invalid value: -1: must be between 0 and 2147483647, inclusive"#,
                r#"spec.volumes[0].emptyDir.sizeLimit: Forbidden: SizeLimit field must be a valid resource quantity"#,
                r#"spec.volumes[1].persistentVolumeClaim.claimName: Required value"#,
            ],
        ),
    ];
    for (name, patch, expected) in cases {
        let mut got = messages(&pod(patch));
        got.sort();
        assert_eq!(got, expected, "{name}");
    }
}

/// Pod-level areas (DNS config, host aliases, topology spread, OS, readiness gates,
/// sysctls, seccomp profiles, mount propagation), with the real apiserver's messages.
#[test]
fn upstream_messages_pod_level() {
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "pod level",
            serde_json::from_str(r#"{"spec": {"dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.0.0.1", "dns.example.com", "10.0.0.3", "10.0.0.4"], "searches": ["Bad_Domain.example", "ok.example"], "options": [{"value": "2"}]}, "hostAliases": [{"ip": "300.1.1.1", "hostnames": ["db.local"]}, {"ip": "10.1.1.1", "hostnames": ["DB_local"]}], "topologySpreadConstraints": [{"maxSkew": 0, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "x"}}}, {"maxSkew": 1, "topologyKey": "", "whenUnsatisfiable": "Maybe"}], "os": {"name": "solaris"}, "readinessGates": [{"conditionType": "bad type"}], "securityContext": {"seccompProfile": {"type": "Localhost"}, "sysctls": [{"name": "kernel/shm max", "value": "1"}]}, "containers": [{"name": "app", "image": "busybox:1.36", "securityContext": {"seccompProfile": {"type": "Strict"}}, "volumeMounts": [{"name": "data", "mountPath": "/data", "mountPropagation": "Shared"}], "ports": [{"containerPort": 1, "hostIP": "localhost"}]}], "imagePullSecrets": [{"name": ""}]}}"#).unwrap(),
            vec![
                r#"spec.containers[0].securityContext.seccompProfile.type: Unsupported value: "Strict": supported values: "Localhost", "RuntimeDefault", "Unconfined""#,
                r#"spec.containers[0].volumeMounts.mountPropagation: Unsupported value: "Shared": supported values: "Bidirectional", "HostToContainer", "None""#,
                r#"spec.dnsConfig.nameservers: Invalid value: ["10.0.0.1","dns.example.com","10.0.0.3","10.0.0.4"]: must not have more than 3 nameservers"#,
                r#"spec.dnsConfig.nameservers[1]: Invalid value: "dns.example.com": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#,
                r#"spec.dnsConfig.options[0]: Required value: must not be empty"#,
                r#"spec.dnsConfig.searches[0]: Invalid value: "Bad_Domain.example": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '_', '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '_?[a-z0-9]([-_a-z0-9]*[a-z0-9])?(\._?[a-z0-9]([-_a-z0-9]*[a-z0-9])?)*')"#,
                r#"spec.hostAliases[0].ip: Invalid value: "300.1.1.1": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#,
                r#"spec.hostAliases[1].hostnames[0]: Invalid value: "DB_local": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#,
                r#"spec.os: Unsupported value: "solaris": supported values: "linux", "windows""#,
                r#"spec.readinessGates[0].conditionType: Invalid value: "bad type": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#,
                r#"spec.securityContext.seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost"#,
                r#"spec.securityContext.sysctls[0].name: Invalid value: "kernel/shm max": must have at most 253 characters and match regex ^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$"#,
                r#"spec.topologySpreadConstraints[0].maxSkew: Invalid value: 0: must be greater than zero"#,
                r#"spec.topologySpreadConstraints[1].topologyKey: Required value: can not be empty"#,
                r#"spec.topologySpreadConstraints[1].whenUnsatisfiable: Unsupported value: "Maybe": supported values: "DoNotSchedule", "ScheduleAnyway""#,
            ],
        ),
        (
            "sysctl and propagation",
            serde_json::from_str(r#"{"spec": {"securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}, {"name": "net.core.somaxconn", "value": "1"}, {"name": "", "value": "1"}]}, "containers": [{"name": "app", "image": "busybox:1.36", "securityContext": {"privileged": true}, "volumeMounts": [{"name": "data", "mountPath": "/data", "mountPropagation": "Bidirectional"}, {"name": "data", "mountPath": "/d2", "mountPropagation": "Sideways"}]}]}}"#).unwrap(),
            vec![
                r#"spec.containers[0].volumeMounts.mountPropagation: Unsupported value: "Sideways": supported values: "Bidirectional", "HostToContainer", "None""#,
                r#"spec.securityContext.sysctls[1].name: Duplicate value: "net.core.somaxconn""#,
                r#"spec.securityContext.sysctls[2].name: Required value"#,
            ],
        ),
    ];
    for (name, patch, expected) in cases {
        let mut got = messages(&pod(patch));
        got.sort();
        assert_eq!(got, expected, "{name}");
    }
}

/// Edge cases: node field selectors, downward API versions and divisors, IP spellings,
/// zero hugepages, a zero sleep within a zero grace period, gRPC ports, header names.
#[test]
fn upstream_messages_edges() {
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "edges",
            serde_json::from_str(r#"{"spec": {"hostAliases": [{"ip": "", "hostnames": ["a"]}, {"ip": "010.1.1.1"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "Exists"}, {"key": "spec.x", "operator": "In", "values": ["a", "b"]}]}]}}}, "containers": [{"name": "app", "image": "busybox:1.36", "env": [{"name": "A", "valueFrom": {"fieldRef": {"apiVersion": "v2", "fieldPath": "metadata.name"}}}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}, {"name": "C", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "3"}}}], "resources": {"limits": {"hugepages-2Mi": "0", "memory": "1Gi"}}}]}}"#).unwrap(),
            vec![
                r#"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].operator: Invalid value: "Exists": not a valid selector operator"#,
                r#"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[1].key: Invalid value: "spec.x": not a valid field selector key"#,
                r#"spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[1].values: Required value: must be only one value when `operator` is 'In' or 'NotIn' for node field selector"#,
                r#"spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: Invalid value: "metadata.name": error converting fieldPath: unsupported pod version: v2"#,
                r#"spec.containers[0].env[2].valueFrom.resourceFieldRef.divisor: Invalid value: "limits.cpu": only divisor's values 1m and 1 are supported with the cpu resource"#,
                r#"spec.hostAliases[0].ip: Invalid value: "": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#,
                r#"spec.hostAliases[1].ip: Invalid value: "010.1.1.1": must not have leading 0s"#,
            ],
        ),
        (
            "sleep zero",
            serde_json::from_str(r#"{"spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "app", "image": "busybox:1.36", "lifecycle": {"preStop": {"sleep": {"seconds": 0}}}}]}}"#).unwrap(),
            vec![
            ],
        ),
        (
            "probe grpc and headers",
            serde_json::from_str(r#"{"spec": {"containers": [{"name": "app", "image": "busybox:1.36", "livenessProbe": {"grpc": {"port": 0}}, "readinessProbe": {"httpGet": {"port": 80, "httpHeaders": [{"name": "Bad Header", "value": "x"}]}}}]}}"#).unwrap(),
            vec![
                r#"spec.containers[0].livenessProbe.grpc.port: Invalid value: 0: must be between 1 and 65535, inclusive"#,
                r#"spec.containers[0].readinessProbe.httpGet.httpHeaders: Invalid value: "Bad Header": a valid HTTP header must consist of alphanumeric characters or '-' (e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')"#,
            ],
        ),
    ];
    for (name, patch, expected) in cases {
        let mut got = messages(&pod(patch));
        got.sort();
        assert_eq!(got, expected, "{name}");
    }
}
