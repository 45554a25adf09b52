//! Tests of the push store: pods (identity, validation, statuses, replace and
//! delete) and ConfigMap/Secret documents (kept, replaced, deleted, refused).

#![allow(clippy::unwrap_used)]
use super::*;
use nodelet_manifests::{CONFIG_SEEN_ANNOTATION, CONFIG_SOURCE_ANNOTATION};
use std::time::{Duration, UNIX_EPOCH};

fn pod_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: {image}\n"
    )
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

fn store() -> PushStore {
    PushStore::new("Node1")
}

#[test]
fn valid_pod_is_stored_with_static_identity() {
    let mut s = store();
    let pods = s
        .apply(pod_yaml("web", "busybox:1").as_bytes(), None)
        .unwrap()
        .pods;
    assert_eq!(names(&pods), ["web-node1"]);
    let annotations = pods[0].metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations[CONFIG_SOURCE_ANNOTATION], "http-push");
    assert_eq!(pods[0].metadata.namespace.as_deref(), Some("default"));
    assert_eq!(s.pods(), pods);
    assert_eq!(
        s.snapshot(),
        SourceEvent::Snapshot {
            source: "http-push",
            pods
        }
    );
}

#[test]
fn json_body_and_content_types() {
    let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j","namespace":"ns"},"spec":{"containers":[{"name":"c","image":"i:1"}]}}"#;
    let mut s = store();
    for ct in [
        Some("application/json"),
        Some("application/yaml; charset=utf-8"),
        Some("Application/JSON"),
        None,
    ] {
        let pods = s.apply(json.as_bytes(), ct).unwrap().pods;
        assert_eq!(names(&pods), ["j-node1"], "{ct:?}");
    }
    let err = s.apply(json.as_bytes(), Some("text/plain")).unwrap_err();
    assert_eq!(err.code(), 415);
    let status = err.status();
    assert_eq!(status.reason.as_deref(), Some("UnsupportedMediaType"));
    assert_eq!(
        status.message.as_deref(),
        Some(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/x-yaml, text/yaml, text/x-yaml"
        )
    );
}

#[test]
fn invalid_pod_is_a_422_status_like_the_apiservers() {
    let mut s = store();
    s.apply(pod_yaml("keep", "busybox:1").as_bytes(), None)
        .unwrap();
    let err = s.apply(pod_yaml("x", "''").as_bytes(), None).unwrap_err();
    assert_eq!(err.code(), 422);
    let json = serde_json::to_value(err.status()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Pod \"x-node1\" is invalid: spec.containers[0].image: Required value",
            "reason": "Invalid",
            "details": {
                "name": "x-node1",
                "kind": "Pod",
                "causes": [{
                    "reason": "FieldValueRequired",
                    "message": "Required value",
                    "field": "spec.containers[0].image"
                }]
            },
            "code": 422
        })
    );
    assert_eq!(
        names(&s.pods()),
        ["keep-node1"],
        "a refused push changes nothing"
    );
}

#[test]
fn several_errors_are_aggregated_with_values_in_causes() {
    let body = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n  - name: app\n    image: ''\n  - name: app\n    image: i\n    ports:\n    - containerPort: 70000\n";
    let err = store().apply(body.as_bytes(), None).unwrap_err();
    let status = err.status();
    assert_eq!(
        status.message.as_deref(),
        Some(
            "Pod \"x-node1\" is invalid: [spec.containers[0].image: Required value, spec.containers[1].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive, spec.containers[1].name: Duplicate value: \"app\"]"
        )
    );
    let causes: Vec<(String, String, String)> = status
        .details
        .unwrap()
        .causes
        .unwrap()
        .into_iter()
        .map(|c| (c.reason.unwrap(), c.field.unwrap(), c.message.unwrap()))
        .collect();
    assert_eq!(
        causes,
        [
            (
                "FieldValueRequired".into(),
                "spec.containers[0].image".into(),
                "Required value".into()
            ),
            (
                "FieldValueInvalid".into(),
                "spec.containers[1].ports[0].containerPort".into(),
                "Invalid value: 70000: must be between 1 and 65535, inclusive".into()
            ),
            (
                "FieldValueDuplicate".into(),
                "spec.containers[1].name".into(),
                "Duplicate value: \"app\"".into()
            ),
        ]
    );
}

#[test]
fn list_of_pods_is_all_or_nothing() {
    let list = |second_image: &str| {
        format!(
            "apiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: Pod, metadata: {{name: a}}, spec: {{containers: [{{name: c, image: i}}]}}}}\n- {{apiVersion: v1, kind: Pod, metadata: {{name: b, namespace: kube-system}}, spec: {{containers: [{{name: c, image: {second_image}}}]}}}}\n"
        )
    };
    let mut s = store();
    let err = s.apply(list("''").as_bytes(), None).unwrap_err();
    assert_eq!(err.code(), 422);
    let status = err.status();
    assert_eq!(
        status.message.as_deref(),
        Some("Pod \"b-node1\" is invalid: spec.containers[0].image: Required value")
    );
    let details = status.details.unwrap();
    assert_eq!(details.name.as_deref(), Some("b-node1"));
    assert_eq!(
        details.causes.unwrap()[0].field.as_deref(),
        Some("items[1].spec.containers[0].image")
    );
    assert!(s.pods().is_empty());

    let pods = s
        .apply(list("i").as_bytes(), Some("application/yaml"))
        .unwrap()
        .pods;
    assert_eq!(names(&pods), ["a-node1", "b-node1"]);
    // Ordered by namespace, then name.
    assert_eq!(
        s.pods()
            .iter()
            .map(|p| p.metadata.namespace.clone().unwrap())
            .collect::<Vec<_>>(),
        ["default", "kube-system"]
    );
}

#[test]
fn several_invalid_pods_and_duplicates() {
    let body = format!(
        "{}---\n{}---\n{}",
        pod_yaml("a", "''"),
        pod_yaml("b", "i"),
        pod_yaml("b", "j")
    );
    let err = store().apply(body.as_bytes(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "[Pod \"a-node1\" is invalid: spec.containers[0].image: Required value, Pod \"b-node1\" is invalid: metadata.name: Duplicate value: \"b-node1\"]"
    );
    let details = err.status().details.unwrap();
    assert_eq!(details.name, None);
    let fields: Vec<String> = details
        .causes
        .unwrap()
        .into_iter()
        .map(|c| c.field.unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "items[0].spec.containers[0].image",
            "items[2].metadata.name"
        ]
    );
}

#[test]
fn unparseable_bodies_are_400() {
    let cases: &[(&str, &str)] = &[
        (
            "kind: Pod\nmetadata: [\n",
            "request body: document 0: invalid YAML",
        ),
        ("{\"kind\": ", "request body: document 0: invalid JSON"),
        ("", "request body: no pod in the request body"),
        (
            "# only a comment\n",
            "request body: no pod in the request body",
        ),
        (
            "apiVersion: v1\nkind: Service\n",
            "request body: document 0: kind \"Service\" (apiVersion \"v1\") is not a v1 Pod, ConfigMap or Secret",
        ),
        (
            "apiVersion: v1\nkind: Pod\nspec:\n  containers: 3\n",
            "request body: document 0: invalid Pod",
        ),
    ];
    for (body, prefix) in cases {
        let mut s = store();
        let err = s.apply(body.as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), 400, "{body:?}");
        let status = err.status();
        assert_eq!(status.code, Some(400));
        assert_eq!(status.reason.as_deref(), Some("BadRequest"));
        assert_eq!(status.status.as_deref(), Some("Failure"));
        let message = status.message.unwrap();
        assert!(message.starts_with(prefix), "{body:?}: {message}");
        assert!(s.pods().is_empty());
    }
}

#[test]
fn repush_replaces_and_identical_push_keeps_uid_and_seen() {
    let mut s = store();
    let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
    let first = s
        .apply_at(pod_yaml("web", "i:1").as_bytes(), None, at(1))
        .unwrap()
        .pods;
    let again = s
        .apply_at(pod_yaml("web", "i:1").as_bytes(), None, at(2))
        .unwrap()
        .pods;
    assert_eq!(again, first, "same content: same UID and config.seen");
    let edited = s
        .apply_at(pod_yaml("web", "i:2").as_bytes(), None, at(3))
        .unwrap()
        .pods;
    assert_ne!(edited[0].metadata.uid, first[0].metadata.uid);
    assert_eq!(
        edited[0].metadata.annotations.as_ref().unwrap()[CONFIG_SEEN_ANNOTATION],
        "1970-01-01T00:00:03.000000000Z"
    );
    assert_eq!(s.pods(), edited);
}

#[test]
fn delete_by_either_name_and_404_when_absent() {
    let mut s = store();
    s.apply(pod_yaml("web", "i").as_bytes(), None).unwrap();
    s.apply(pod_yaml("db", "i").as_bytes(), None).unwrap();
    let removed = s.delete("default", "web-node1").unwrap();
    assert_eq!(removed.metadata.name.as_deref(), Some("web-node1"));
    let removed = s.delete("default", "db").unwrap();
    assert_eq!(removed.metadata.name.as_deref(), Some("db-node1"));
    assert!(s.pods().is_empty());

    let err = s.delete("default", "web").unwrap_err();
    assert_eq!(err.code(), 404);
    assert_eq!(
        serde_json::to_value(err.status()).unwrap(),
        serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "pods \"web\" not found",
            "reason": "NotFound",
            "details": {"name": "web", "kind": "pods"},
            "code": 404
        })
    );
    s.apply(pod_yaml("web", "i").as_bytes(), None).unwrap();
    assert_eq!(
        s.delete("other", "web").unwrap_err().code(),
        404,
        "namespaces are kept apart"
    );
}

#[test]
fn bodies_past_the_manifest_limits_are_refused() {
    let mut s = store();
    let mut big = pod_yaml("web", "i");
    big.push_str(&format!("# {}\n", "x".repeat(MAX_MANIFEST_BYTES)));
    let err = s.apply(big.as_bytes(), None).unwrap_err();
    assert_eq!(err.code(), 413);
    assert_eq!(
        serde_json::to_value(err.status()).unwrap(),
        serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Request entity too large: limit is 3145728",
            "reason": "RequestEntityTooLarge",
            "code": 413
        })
    );
    let deep = "[".repeat(100_000);
    let err = s.apply(deep.as_bytes(), None).unwrap_err();
    assert_eq!(err.code(), 400);
    assert_eq!(
        err.to_string(),
        "request body: document 0: nested deeper than 100 levels, the limit for a manifest (at line 1 column 101)"
    );
    let empties = "---\n".repeat(10_000);
    let err = s.apply(empties.as_bytes(), None).unwrap_err();
    assert!(
        err.to_string().contains("more than 1000 documents"),
        "{err}"
    );
    let annotated = pod_yaml("web", "i").replace(
        "  name: web\n",
        &format!(
            "  name: web\n  annotations:\n    a: {}\n",
            "x".repeat(300 << 10)
        ),
    );
    let err = s.apply(annotated.as_bytes(), None).unwrap_err();
    assert_eq!(err.code(), 422);
    assert_eq!(
        err.to_string(),
        "Pod \"web-node1\" is invalid: metadata.annotations: Too long: may not be more than 262144 bytes"
    );
    assert!(s.pods().is_empty());
}

mod objects {
    use super::*;

    const OBJECTS: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {k: v}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns}\nstringData: {p: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: app, image: i}\n";

    fn data(object: &ApiObject) -> Vec<(String, Vec<u8>)> {
        match object {
            ApiObject::ConfigMap(c) => c
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect(),
            ApiObject::Secret(s) => s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        }
    }

    #[test]
    fn config_maps_and_secrets_are_kept_beside_the_pods() {
        let mut s = PushStore::new("node1");
        let pushed = s.apply(OBJECTS.as_bytes(), None).unwrap();
        assert_eq!(pushed.pods.len(), 1);
        assert_eq!(pushed.objects.len(), 2);
        // Defaulted as in a manifest file: namespace, stringData folded into data.
        let objects = s.objects();
        assert_eq!(objects.len(), 2);
        assert_eq!(nodelet_manifests::objects::name(&objects[0]), "cfg");
        assert_eq!(data(&objects[1]), [("p".to_owned(), b"x".to_vec())]);
        let SourceEvent::Objects { source, objects } = s.objects_event() else {
            panic!("an objects event")
        };
        assert_eq!(source, PUSH_SOURCE);
        assert_eq!(objects.len(), 2);

        // Pushing one again replaces it; others stay.
        let edit = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {k: w}\n";
        let pushed = s.apply(edit.as_bytes(), None).unwrap();
        assert!(pushed.pods.is_empty());
        let objects = s.objects();
        assert_eq!(objects.len(), 2);
        assert_eq!(data(&objects[0]), [("k".to_owned(), b"w".to_vec())]);
        assert_eq!(s.pods().len(), 1);

        // Deleted by kind, namespace and name.
        let err = s.delete_object("Secret", "default", "s").unwrap_err();
        assert_eq!(err.code(), 404);
        assert_eq!(err.to_string(), "secrets \"s\" not found");
        s.delete_object("Secret", "ns", "s").unwrap();
        assert_eq!(
            s.delete_object("ConfigMap", "default", "cfg")
                .map(|o| data(&o))
                .unwrap(),
            [("k".to_owned(), b"w".to_vec())]
        );
        assert!(s.objects().is_empty());
        assert_eq!(s.pods().len(), 1);
    }

    #[test]
    fn an_invalid_object_refuses_the_body_with_field_paths() {
        let mut s = PushStore::new("node1");
        let body = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {'a/b': v, '..x': w}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: app, image: i}\n";
        let err = s.apply(body.as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), 422);
        let status = err.status();
        assert_eq!(status.reason.as_deref(), Some("Invalid"));
        let message = status.message.unwrap();
        assert!(
            message.starts_with("ConfigMap \"cfg\" is invalid: ["),
            "{message}"
        );
        let details = status.details.unwrap();
        assert_eq!(details.kind.as_deref(), Some("ConfigMap"));
        let fields: Vec<String> = details
            .causes
            .unwrap()
            .into_iter()
            .map(|c| c.field.unwrap())
            .collect();
        assert_eq!(fields, ["data[..x]", "data[a/b]"]);
        assert!(s.pods().is_empty() && s.objects().is_empty());
    }
}
