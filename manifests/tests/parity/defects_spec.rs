//! One-defect variants, continued: scheduling, environment, resources, pod-level fields
//! and containers (see `defects.rs` for the helpers).

use serde_json::json;

use crate::defects::{Defect, c0, c0_name, container_sc, pod_sc, push, spec};

/// The defects of scheduling, environment, resources, pod-level fields and containers.
pub const DEFECTS: &[Defect] = &[
    // Scheduling: affinity, tolerations, nodeSelector (new).
    ("node-affinity-bad-operator", |p| {
        spec(p).insert("affinity".into(), json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disktype", "operator": "Equals", "values": ["ssd"]}]}]}}}));
        Some(())
    }),
    ("node-affinity-in-without-values", |p| {
        spec(p).insert("affinity".into(), json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In"}]}]}}}));
        Some(())
    }),
    ("node-affinity-exists-with-values", |p| {
        spec(p).insert("affinity".into(), json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Exists", "values": ["a"]}]}]}}}));
        Some(())
    }),
    ("node-affinity-bad-weight", |p| {
        spec(p).insert("affinity".into(), json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 0, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}}));
        Some(())
    }),
    ("node-affinity-bad-key", |p| {
        spec(p).insert("affinity".into(), json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "bad key", "operator": "Exists"}]}]}}}));
        Some(())
    }),
    ("node-affinity-no-terms", |p| {
        spec(p).insert("affinity".into(), json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}));
        Some(())
    }),
    ("pod-affinity-no-topology-key", |p| {
        spec(p).insert("affinity".into(), json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": ""}]}}));
        Some(())
    }),
    ("toleration-exists-with-value", |p| {
        push(
            spec(p),
            "tolerations",
            json!({"key": "dedicated", "operator": "Exists", "value": "gpu"}),
        );
        Some(())
    }),
    ("toleration-bad-operator", |p| {
        push(
            spec(p),
            "tolerations",
            json!({"key": "dedicated", "operator": "In", "value": "gpu"}),
        );
        Some(())
    }),
    ("toleration-bad-effect", |p| {
        push(
            spec(p),
            "tolerations",
            json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoRun"}),
        );
        Some(())
    }),
    ("toleration-empty-key-equal", |p| {
        push(
            spec(p),
            "tolerations",
            json!({"operator": "Equal", "value": "x"}),
        );
        Some(())
    }),
    ("toleration-seconds-without-noexecute", |p| {
        push(
            spec(p),
            "tolerations",
            json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}),
        );
        Some(())
    }),
    ("toleration-bad-value", |p| {
        push(
            spec(p),
            "tolerations",
            json!({"key": "team", "operator": "Equal", "value": "a b"}),
        );
        Some(())
    }),
    ("node-selector-bad-value", |p| {
        let s = spec(p);
        let sel = s.entry("nodeSelector").or_insert_with(|| json!({}));
        sel["disk"] = json!("fast ssd");
        Some(())
    }),
    ("node-selector-bad-key", |p| {
        let s = spec(p);
        let sel = s.entry("nodeSelector").or_insert_with(|| json!({}));
        sel["-disk"] = json!("ssd");
        Some(())
    }),
    // Environment (envFrom new).
    ("envfrom-prefix-equals", |p| {
        push(
            c0(p),
            "envFrom",
            json!({"prefix": "CFG=", "configMapRef": {"name": "app-config"}}),
        );
        Some(())
    }),
    ("envfrom-prefix-digit-ok", |p| {
        push(
            c0(p),
            "envFrom",
            json!({"prefix": "1_", "configMapRef": {"name": "app-config"}}),
        );
        Some(())
    }),
    ("envfrom-no-source", |p| {
        push(c0(p), "envFrom", json!({"prefix": "X_"}));
        Some(())
    }),
    ("envfrom-two-sources", |p| {
        push(
            c0(p),
            "envFrom",
            json!({"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}),
        );
        Some(())
    }),
    ("envfrom-bad-name", |p| {
        push(c0(p), "envFrom", json!({"secretRef": {"name": "Bad_Name"}}));
        Some(())
    }),
    ("env-name-equals", |p| {
        push(c0(p), "env", json!({"name": "A=B", "value": "1"}));
        Some(())
    }),
    ("env-value-and-value-from", |p| {
        push(
            c0(p),
            "env",
            json!({"name": "BOTH", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        );
        Some(())
    }),
    ("env-bad-field-path", |p| {
        push(
            c0(p),
            "env",
            json!({"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.host"}}}),
        );
        Some(())
    }),
    ("env-secret-no-key", |p| {
        push(
            c0(p),
            "env",
            json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": ""}}}),
        );
        Some(())
    }),
    ("env-bad-resource", |p| {
        let name = c0_name(p);
        push(
            c0(p),
            "env",
            json!({"name": "GPUS", "valueFrom": {"resourceFieldRef": {"containerName": name, "resource": "limits.gpu"}}}),
        );
        Some(())
    }),
    // Resources (names new).
    ("resource-name-unqualified", |p| {
        c0(p).insert("resources".into(), json!({"limits": {"foo": "1"}}));
        Some(())
    }),
    ("resource-name-bad-prefix", |p| {
        c0(p).insert(
            "resources".into(),
            json!({"requests": {"Example.com/gpu": "1"}, "limits": {"Example.com/gpu": "1"}}),
        );
        Some(())
    }),
    ("resource-extended-ok", |p| {
        c0(p).insert("resources".into(), json!({"requests": {"example.com/fpga": "2", "cpu": "1"}, "limits": {"example.com/fpga": "2"}}));
        Some(())
    }),
    ("resource-extended-fraction", |p| {
        c0(p).insert(
            "resources".into(),
            json!({"limits": {"example.com/fpga": "500m"}}),
        );
        Some(())
    }),
    ("quantities-non-canonical-ok", |p| {
        c0(p).insert(
            "resources".into(),
            json!({"requests": {"cpu": "0.15", "memory": "1048576Ki"}, "limits": {"cpu": "1000m", "memory": "2e9"}}),
        );
        Some(())
    }),
    ("resource-request-over-limit", |p| {
        c0(p).insert(
            "resources".into(),
            json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}),
        );
        Some(())
    }),
    ("resource-bad-quantity", |p| {
        c0(p).insert("resources".into(), json!({"requests": {"memory": "1 Gi"}}));
        Some(())
    }),
    ("resource-negative", |p| {
        c0(p).insert("resources".into(), json!({"requests": {"memory": "-64Mi"}}));
        Some(())
    }),
    ("resource-extended-no-limit", |p| {
        c0(p).insert(
            "resources".into(),
            json!({"requests": {"example.com/fpga": "1"}}),
        );
        Some(())
    }),
    ("hugepages-without-cpu-memory", |p| {
        c0(p).insert(
            "resources".into(),
            json!({"limits": {"hugepages-2Mi": "100Mi"}}),
        );
        Some(())
    }),
    // Pod-level fields.
    ("hostname-not-label", |p| {
        spec(p).insert("hostname".into(), json!("Web_Server"));
        Some(())
    }),
    ("hostname-with-dots", |p| {
        spec(p).insert("hostname".into(), json!("web.example"));
        Some(())
    }),
    ("subdomain-not-label", |p| {
        spec(p).insert("subdomain".into(), json!("Svc_Headless"));
        Some(())
    }),
    ("grace-period-negative-ok", |p| {
        spec(p).insert("terminationGracePeriodSeconds".into(), json!(-5));
        Some(())
    }),
    ("grace-period-zero-ok", |p| {
        spec(p).insert("terminationGracePeriodSeconds".into(), json!(0));
        Some(())
    }),
    ("active-deadline-zero", |p| {
        spec(p).insert("activeDeadlineSeconds".into(), json!(0));
        Some(())
    }),
    ("restart-policy-bad", |p| {
        spec(p).insert("restartPolicy".into(), json!("Sometimes"));
        Some(())
    }),
    ("dns-policy-bad", |p| {
        spec(p).insert("dnsPolicy".into(), json!("Google"));
        Some(())
    }),
    ("dns-none-without-config", |p| {
        let s = spec(p);
        s.insert("dnsPolicy".into(), json!("None"));
        s.remove("dnsConfig");
        Some(())
    }),
    ("name-bad", |p| {
        p["metadata"]["name"] = json!("Web_1");
        Some(())
    }),
    ("name-with-dots-ok", |p| {
        p["metadata"]["name"] = json!("web.v2.example");
        Some(())
    }),
    // Containers.
    ("command-null-item-ok", |p| {
        c0(p).insert("command".into(), json!(["sh", null, "-c", "true"]));
        Some(())
    }),
    ("args-null-item-ok", |p| {
        c0(p).insert("args".into(), json!([null]));
        Some(())
    }),
    ("image-missing", |p| {
        c0(p).remove("image");
        Some(())
    }),
    ("image-whitespace", |p| {
        c0(p).insert("image".into(), json!(" nginx:1.27"));
        Some(())
    }),
    ("container-duplicate-name", |p| {
        let first = p["spec"]["containers"][0].clone();
        push(spec(p), "containers", first);
        Some(())
    }),
    ("container-bad-name", |p| {
        c0(p).insert("name".into(), json!("Main_App"));
        Some(())
    }),
    ("pull-policy-bad", |p| {
        c0(p).insert("imagePullPolicy".into(), json!("Sometimes"));
        Some(())
    }),
    ("termination-message-policy-bad", |p| {
        c0(p).insert("terminationMessagePolicy".into(), json!("Stdout"));
        Some(())
    }),
    ("port-out-of-range", |p| {
        push(c0(p), "ports", json!({"containerPort": 70000}));
        Some(())
    }),
    ("port-bad-protocol", |p| {
        push(
            c0(p),
            "ports",
            json!({"containerPort": 7000, "protocol": "ICMP"}),
        );
        Some(())
    }),
    ("port-bad-name", |p| {
        push(
            c0(p),
            "ports",
            json!({"containerPort": 7001, "name": "metrics_port"}),
        );
        Some(())
    }),
    ("port-duplicate-name", |p| {
        let name = p["spec"]["containers"][0]["ports"][0]["name"]
            .as_str()?
            .to_owned();
        push(c0(p), "ports", json!({"containerPort": 7002, "name": name}));
        Some(())
    }),
    ("host-port-duplicate", |p| {
        push(
            c0(p),
            "ports",
            json!({"containerPort": 7003, "hostPort": 17003}),
        );
        let second = json!({"name": "second", "image": "busybox:1.36", "ports": [{"containerPort": 7004, "hostPort": 17003}]});
        push(spec(p), "containers", second);
        Some(())
    }),
    // Pod-level areas beyond the list, to see that they agree too.
    ("dns-config-too-many-nameservers", |p| {
        let s = spec(p);
        s.insert("dnsPolicy".into(), json!("None"));
        s.insert(
            "dnsConfig".into(),
            json!({"nameservers": ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]}),
        );
        Some(())
    }),
    ("dns-config-bad-nameserver", |p| {
        spec(p).insert(
            "dnsConfig".into(),
            json!({"nameservers": ["dns.example.com"]}),
        );
        Some(())
    }),
    ("dns-option-no-name", |p| {
        spec(p).insert("dnsConfig".into(), json!({"options": [{"value": "2"}]}));
        Some(())
    }),
    ("dns-search-bad", |p| {
        spec(p).insert(
            "dnsConfig".into(),
            json!({"searches": ["Bad_Domain.example"]}),
        );
        Some(())
    }),
    ("host-alias-bad-ip", |p| {
        push(
            spec(p),
            "hostAliases",
            json!({"ip": "300.1.1.1", "hostnames": ["db.local"]}),
        );
        Some(())
    }),
    ("host-alias-bad-hostname", |p| {
        push(
            spec(p),
            "hostAliases",
            json!({"ip": "10.1.1.1", "hostnames": ["DB_local"]}),
        );
        Some(())
    }),
    ("topology-spread-zero-skew", |p| {
        push(
            spec(p),
            "topologySpreadConstraints",
            json!({"maxSkew": 0, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "x"}}}),
        );
        Some(())
    }),
    ("topology-spread-bad-when", |p| {
        push(
            spec(p),
            "topologySpreadConstraints",
            json!({"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "Maybe"}),
        );
        Some(())
    }),
    ("topology-spread-no-key", |p| {
        push(
            spec(p),
            "topologySpreadConstraints",
            json!({"maxSkew": 1, "topologyKey": "", "whenUnsatisfiable": "ScheduleAnyway"}),
        );
        Some(())
    }),
    ("image-pull-secret-no-name", |p| {
        push(spec(p), "imagePullSecrets", json!({"name": ""}));
        Some(())
    }),
    ("port-bad-host-ip", |p| {
        push(
            c0(p),
            "ports",
            json!({"containerPort": 7005, "hostIP": "localhost"}),
        );
        Some(())
    }),
    ("os-bad-name", |p| {
        spec(p).insert("os".into(), json!({"name": "solaris"}));
        Some(())
    }),
    ("readiness-gate-bad", |p| {
        push(
            spec(p),
            "readinessGates",
            json!({"conditionType": "bad type"}),
        );
        Some(())
    }),
    ("capability-add-ok", |p| {
        let sc = container_sc(p);
        sc.insert(
            "capabilities".into(),
            json!({"add": ["NET_ADMIN", "SYS_TIME"]}),
        );
        Some(())
    }),
    ("seccomp-localhost-no-profile", |p| {
        pod_sc(p).insert("seccompProfile".into(), json!({"type": "Localhost"}));
        Some(())
    }),
    ("seccomp-bad-type", |p| {
        container_sc(p).insert("seccompProfile".into(), json!({"type": "Strict"}));
        Some(())
    }),
    ("sysctl-bad-name", |p| {
        pod_sc(p).insert(
            "sysctls".into(),
            json!([{"name": "kernel/shm max", "value": "1"}]),
        );
        Some(())
    }),
    ("mount-propagation-bad", |p| {
        let mount = p
            .pointer_mut("/spec/containers/0/volumeMounts/0")?
            .as_object_mut()?;
        mount.insert("mountPropagation".into(), json!("Shared"));
        Some(())
    }),
];
