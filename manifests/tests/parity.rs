//! Validation parity with a real kube-apiserver (the real apiserver tier, v1.37.2).
//!
//! A corpus of pods (the base workloads in `parity/bases.yaml` and one-defect variants of
//! them from `parity/defects.rs`) goes through nodelet's own path (`parse_manifests` →
//! `default_pod` → `validate_pod`) and through the apiserver's server-side dry run
//! (`POST /api/v1/namespaces/parity/pods?dryRun=All`). Both must accept or both refuse, and
//! when both refuse the sets of field paths must match, except for the differences listed
//! in [`KNOWN`] with their reasons; when both accept, nodelet's defaulted spec must equal
//! the one the apiserver would store, once its admission plugins' additions are taken out
//! (quantities compare by value: the apiserver rewrites them canonically). The agreement
//! figures are printed, with the error messages compared too (for the figure only).
//!
//! Needs `NODELET_TEST_KUBECONFIG` (an admin kubeconfig; `scripts/test.sh` starts the tier
//! and sets it) and fails, saying so, without it.

#[path = "parity/defects.rs"]
mod defects;
#[path = "parity/defects_spec.rs"]
mod defects_spec;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use nodelet_manifests::{default_pod, parse_manifests, validate_pod};
use serde::Deserialize as _;
use serde_json::{Value, json};

const NAMESPACE: &str = "parity";

/// Differences between nodelet and the apiserver that are expected, by defect name, with
/// why. A listed defect may agree too (the entry then only excuses a disagreement).
const KNOWN: &[(&str, &str)] = &[(
    "resource-bad-quantity",
    "a malformed quantity (`1 Gi`) fails the apiserver's decoding of the whole body (400, no \
     field path); k8s-openapi keeps quantities as strings, so nodelet reports it at its field \
     path (`resources.requests[memory]`): both refuse",
)];

/// What one side said about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Accepted, with the pod's spec as stored (defaulted, after admission).
    Accepted(Box<Value>),
    /// Refused, with the field paths of the errors (`<decode>` when the body did not decode).
    Refused(BTreeSet<String>),
}

struct Apiserver {
    client: reqwest::Client,
    server: String,
}

impl Apiserver {
    fn from_env() -> Self {
        let path = std::env::var("NODELET_TEST_KUBECONFIG").unwrap_or_else(|_| {
            panic!(
                "NODELET_TEST_KUBECONFIG is not set: this test needs the real apiserver tier; \
                 run scripts/test.sh, or `scripts/apiserver.sh start` and export \
                 NODELET_TEST_KUBECONFIG=$NODELET_APISERVER_DIR/admin.kubeconfig"
            )
        });
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading NODELET_TEST_KUBECONFIG {path}: {e}"));
        let config: Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing kubeconfig {path}: {e}"));
        let field = |section: &str, key: &str| -> Vec<u8> {
            let encoded = config[section][0][section.trim_end_matches('s')][key]
                .as_str()
                .unwrap_or_else(|| panic!("kubeconfig {path}: no {section}[0].{key}"));
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap_or_else(|e| panic!("kubeconfig {path}: {key}: {e}"))
        };
        let server = config["clusters"][0]["cluster"]["server"]
            .as_str()
            .unwrap_or_else(|| panic!("kubeconfig {path}: no server"))
            .to_owned();
        let ca = reqwest::Certificate::from_pem(&field("clusters", "certificate-authority-data"))
            .expect("CA certificate");
        let mut identity = field("users", "client-certificate-data");
        identity.extend(field("users", "client-key-data"));
        let identity = reqwest::Identity::from_pem(&identity).expect("client identity");
        let client = reqwest::Client::builder()
            .tls_certs_only([ca])
            .identity(identity)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self { client, server }
    }

    async fn ensure_namespace(&self) {
        let url = format!("{}/api/v1/namespaces", self.server);
        let body =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
        let status = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"))
            .status();
        assert!(
            status.is_success() || status == reqwest::StatusCode::CONFLICT,
            "creating namespace {NAMESPACE}: {status}"
        );
        // The service account admission plugin refuses pods until the controller manager
        // has made the namespace's default service account.
        let sa = format!(
            "{}/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default",
            self.server
        );
        for _ in 0..300 {
            let response = self.client.get(&sa).send().await;
            if response.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no default service account in namespace {NAMESPACE} after 30s");
    }

    /// The verdict, and the error messages as `path: body` when refused.
    async fn dry_run(&self, pod: &Value) -> (Verdict, BTreeSet<String>) {
        let url = format!(
            "{}/api/v1/namespaces/{NAMESPACE}/pods?dryRun=All",
            self.server
        );
        let response = self
            .client
            .post(&url)
            .json(pod)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return (
                Verdict::Accepted(Box::new(body["spec"].clone())),
                BTreeSet::new(),
            );
        }
        assert!(
            status == reqwest::StatusCode::UNPROCESSABLE_ENTITY
                || status == reqwest::StatusCode::BAD_REQUEST,
            "dry run of {}: unexpected {status}: {body}",
            pod["metadata"]["name"]
        );
        let causes = body["details"]["causes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut paths: BTreeSet<String> = causes
            .iter()
            .filter_map(|c| c["field"].as_str().map(str::to_owned))
            .collect();
        if status == reqwest::StatusCode::BAD_REQUEST || paths.is_empty() {
            paths.insert("<decode>".to_owned());
        }
        let messages = causes
            .iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    c["field"].as_str().unwrap_or_default(),
                    c["message"].as_str().unwrap_or_default()
                )
            })
            .collect();
        (Verdict::Refused(paths), messages)
    }
}

/// nodelet's verdict: the manifest file path (parse, default, validate), and its error
/// messages.
fn nodelet(pod: &Value) -> (Verdict, BTreeSet<String>) {
    let bytes = serde_json::to_vec(pod).expect("JSON");
    let documents = match parse_manifests(&bytes, "parity.json") {
        Ok(documents) => documents,
        Err(_) => return (decode_error(), BTreeSet::new()),
    };
    let Some(mut pod) = documents.into_iter().next().and_then(|d| d.pod) else {
        return (decode_error(), BTreeSet::new());
    };
    default_pod(&mut pod);
    let errors = validate_pod(&pod);
    if errors.is_empty() {
        let spec = serde_json::to_value(&pod.spec).expect("a pod serialises");
        (Verdict::Accepted(Box::new(spec)), BTreeSet::new())
    } else {
        let messages = errors.iter().map(ToString::to_string).collect();
        let paths = errors.into_iter().map(|e| e.path).collect();
        (Verdict::Refused(paths), messages)
    }
}

fn decode_error() -> Verdict {
    Verdict::Refused(BTreeSet::from(["<decode>".to_owned()]))
}

struct Case {
    base: String,
    defect: &'static str,
    pod: Value,
}

fn corpus() -> Vec<Case> {
    let text = include_str!("parity/bases.yaml");
    let mut bases = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let mut pod = serde_json::to_value(
            serde_yaml::Value::deserialize(document).expect("bases.yaml is YAML"),
        )
        .expect("bases.yaml is JSON-shaped");
        pod["metadata"]["namespace"] = json!(NAMESPACE);
        bases.push(pod);
    }
    let mut cases = Vec::new();
    for (bi, base) in bases.iter().enumerate() {
        let name = base["metadata"]["name"].as_str().expect("named").to_owned();
        cases.push(Case {
            base: name.clone(),
            defect: "none",
            pod: base.clone(),
        });
        let all_defects = defects::DEFECTS.iter().chain(defects_spec::DEFECTS);
        for (di, (defect, apply)) in all_defects.enumerate() {
            // Each defect meets a third of the bases, a different third per defect.
            if (bi + di) % 3 != 0 {
                continue;
            }
            let mut pod = base.clone();
            if apply(&mut pod).is_some() {
                cases.push(Case {
                    base: name.clone(),
                    defect,
                    pod,
                });
            }
        }
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_agrees_with_the_apiserver() {
    let apiserver = Apiserver::from_env();
    apiserver.ensure_namespace().await;
    let cases = corpus();

    let mut theirs = Vec::with_capacity(cases.len());
    for chunk in cases.chunks(8) {
        let verdicts =
            futures::future::join_all(chunk.iter().map(|case| apiserver.dry_run(&case.pod))).await;
        theirs.extend(verdicts);
    }

    let (mut both_accept, mut both_refuse, mut paths_equal) = (0, 0, 0);
    let (mut shared_paths, mut all_paths) = (0usize, 0usize);
    let (mut shared_messages, mut all_messages) = (0usize, 0usize);
    let (mut specs_equal, mut quantities_normalised) = (0usize, 0usize);
    let mut spec_differences = Vec::new();
    let mut message_differences = Vec::new();
    let mut unexpected = Vec::new();
    let mut excused = Vec::new();
    for (case, (theirs, their_messages)) in cases.iter().zip(&theirs) {
        let (ours, our_messages) = nodelet(&case.pod);
        if matches!((&ours, theirs), (Verdict::Refused(a), Verdict::Refused(b)) if a == b) {
            shared_messages += our_messages.intersection(their_messages).count();
            all_messages += our_messages.union(their_messages).count();
            for message in our_messages.symmetric_difference(their_messages) {
                let side = if our_messages.contains(message) {
                    "nodelet"
                } else {
                    "apiserver"
                };
                message_differences.push(format!(
                    "{}/{}: {side} only: {message}",
                    case.base, case.defect
                ));
            }
        }
        let agree = match (&ours, theirs) {
            (Verdict::Accepted(our_spec), Verdict::Accepted(their_spec)) => {
                both_accept += 1;
                let their_spec = without_admission(their_spec, &case.pod["spec"]);
                let mut differences = Vec::new();
                spec_diff(
                    our_spec,
                    &their_spec,
                    "spec",
                    &mut differences,
                    &mut quantities_normalised,
                );
                if differences.is_empty() {
                    specs_equal += 1;
                }
                for difference in differences {
                    spec_differences.push(format!("{}/{}: {difference}", case.base, case.defect));
                }
                true
            }
            (Verdict::Refused(a), Verdict::Refused(b)) => {
                both_refuse += 1;
                shared_paths += a.intersection(b).count();
                all_paths += a.union(b).count();
                if a == b {
                    paths_equal += 1;
                }
                a == b
            }
            _ => false,
        };
        if agree {
            continue;
        }
        let line = format!(
            "{}/{}: nodelet {}, apiserver {}",
            case.base,
            case.defect,
            ours.short(),
            theirs.short()
        );
        match KNOWN.iter().find(|(defect, _)| *defect == case.defect) {
            Some((_, reason)) => excused.push(format!("{line} (known: {reason})")),
            None => unexpected.push(line),
        }
    }
    let total = cases.len();
    let verdicts_agree = both_accept + both_refuse;
    println!(
        "parity: {total} pods ({} bases, {} variants): accept/refuse agree on {verdicts_agree} \
         ({:.1} %); {both_accept} both accept, {both_refuse} both refuse, of which {paths_equal} \
         with the same field paths; field paths agreeing where both refuse: {shared_paths}/{all_paths} \
         ({:.1} %); {} known differences, {} unexpected",
        cases.iter().filter(|c| c.defect == "none").count(),
        total - cases.iter().filter(|c| c.defect == "none").count(),
        100.0 * verdicts_agree as f64 / total as f64,
        100.0 * shared_paths as f64 / all_paths.max(1) as f64,
        excused.len(),
        unexpected.len(),
    );
    for line in &excused {
        println!("  {line}");
    }
    // Messages are compared for the figure only: the paths are what must agree.
    println!(
        "messages agreeing where the field paths agree: {shared_messages}/{all_messages} ({:.1} %)",
        100.0 * shared_messages as f64 / all_messages.max(1) as f64
    );
    for line in &message_differences {
        println!("  {line}");
    }
    // The defaulted specs of the pods both accept, the apiserver's admission additions
    // (service account token volume, default tolerations, priority) taken out; quantities
    // compare by value (the apiserver writes them canonically, nodelet as given).
    println!(
        "defaulted specs identical where both accept: {specs_equal}/{both_accept} \
         ({quantities_normalised} quantities equal in value but written differently)"
    );
    for line in &spec_differences {
        println!("  {line}");
    }
    assert!(
        spec_differences.is_empty(),
        "{} differences between the defaulted specs (listed above)",
        spec_differences.len()
    );
    assert!(
        unexpected.is_empty(),
        "{} disagreements with the apiserver:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
}

impl Verdict {
    fn short(&self) -> String {
        match self {
            Self::Accepted(_) => "accepted".to_owned(),
            Self::Refused(paths) => format!("refused {paths:?}"),
        }
    }
}

/// The apiserver's stored spec without what its admission plugins and pod strategy added
/// to `sent`: the service account token volume and mounts, the service account name, the
/// default not-ready/unreachable tolerations, priority and preemption policy, and the
/// AppArmor profile copied from the annotation.
fn without_admission(stored: &Value, sent: &Value) -> Value {
    let mut spec = stored.clone();
    let Some(map) = spec.as_object_mut() else {
        return spec;
    };
    for field in [
        "serviceAccount",
        "serviceAccountName",
        "priority",
        "preemptionPolicy",
    ] {
        if sent.get(field).is_none() {
            map.remove(field);
        }
    }
    let token = |v: &Value| {
        v["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    };
    if let Some(volumes) = map.get_mut("volumes").and_then(Value::as_array_mut) {
        volumes.retain(|v| !token(v));
    }
    if map
        .get("volumes")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && sent.get("volumes").is_none()
    {
        map.remove("volumes");
    }
    for list in ["containers", "initContainers"] {
        let containers = map.get_mut(list).and_then(Value::as_array_mut);
        for (i, container) in containers.into_iter().flatten().enumerate() {
            let Some(c) = container.as_object_mut() else {
                continue;
            };
            // The pod strategy copies AppArmor annotations into the field on create
            // (`applyAppArmorVersionSkew`); the kubelet reads the annotation itself.
            let sent_context = &sent[list][i]["securityContext"];
            if sent_context["appArmorProfile"].is_null()
                && let Some(context) = c.get_mut("securityContext").and_then(Value::as_object_mut)
            {
                context.remove("appArmorProfile");
                if context.is_empty() && sent_context.is_null() {
                    c.remove("securityContext");
                }
            }
            if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                mounts.retain(|m| !token(m));
                if mounts.is_empty() {
                    c.remove("volumeMounts");
                }
            }
        }
    }
    let sent_tolerations = sent["tolerations"].as_array().cloned().unwrap_or_default();
    if let Some(tolerations) = map.get_mut("tolerations").and_then(Value::as_array_mut) {
        tolerations.retain(|t| {
            let added = t["tolerationSeconds"] == 300
                && t["effect"] == "NoExecute"
                && matches!(
                    t["key"].as_str(),
                    Some("node.kubernetes.io/not-ready" | "node.kubernetes.io/unreachable")
                );
            !added || sent_tolerations.contains(t)
        });
        if tolerations.is_empty() && sent.get("tolerations").is_none() {
            map.remove("tolerations");
        }
    }
    spec
}

fn is_go_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty() || s == "0",
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// The leaf paths where `ours` and `theirs` differ; quantities equal in value count as
/// equal (and in `normalised`).
fn spec_diff(
    ours: &Value,
    theirs: &Value,
    path: &str,
    out: &mut Vec<String>,
    normalised: &mut usize,
) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let (x, y) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                spec_diff(x, y, &format!("{path}.{key}"), out, normalised);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                spec_diff(x, y, &format!("{path}[{i}]"), out, normalised);
            }
        }
        (Value::String(a), Value::String(b)) if a != b => {
            match (
                nodelet_manifests::Quantity::parse(a),
                nodelet_manifests::Quantity::parse(b),
            ) {
                (Ok(x), Ok(y)) if x == y => *normalised += 1,
                _ => out.push(format!("{path}: nodelet {a:?}, apiserver {b:?}")),
            }
        }
        // Go omits zero values (`omitempty`), and a zero quantity is written "0".
        (Value::Null, v) | (v, Value::Null) if is_go_zero(v) => {}
        // An empty object or list and an absent field are the same to Go.
        (Value::Null, Value::Object(m)) | (Value::Object(m), Value::Null) if m.is_empty() => {}
        (Value::Null, Value::Array(l)) | (Value::Array(l), Value::Null) if l.is_empty() => {}
        (a, b) if a != b => out.push(format!("{path}: nodelet {a}, apiserver {b}")),
        _ => {}
    }
}
