//! Unit tests of `parse.rs`.

#![allow(clippy::unwrap_used)]
use super::*;

const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: app
    image: busybox:1.36
    ports:
    - containerPort: 80
";

fn kinds(docs: &[Document]) -> Vec<(usize, &str, bool)> {
    docs.iter()
        .map(|d| (d.index, d.kind.as_str(), d.pod.is_some()))
        .collect()
}

#[test]
fn non_string_keys_are_located() {
    let e = parse_manifests(b"apiVersion: v1\nkind: Pod\n[a]: x\n", "f.yaml")
        .expect_err("an integer key");
    assert!(e.location.is_some(), "{e}");
}

#[test]
fn syntax_errors_name_the_failing_document() {
    let input = b"apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\n---\nmetadata: {name: [\n";
    let e = parse_manifests(input, "f.yaml").expect_err("broken third document");
    assert_eq!(e.index, 2);
    assert!(e.location.is_some_and(|l| l.line >= 9), "{e}");
}

#[test]
fn single_yaml_pod() {
    let docs = parse_manifests(POD.as_bytes(), "/m/web.yaml").unwrap();
    assert_eq!(kinds(&docs), [(0, "Pod", true)]);
    let pod = docs[0].pod.as_ref().unwrap();
    assert_eq!(pod.metadata.name.as_deref(), Some("web"));
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].image.as_deref(), Some("busybox:1.36"));
}

#[test]
fn table_of_shapes() {
    let json = r#"  {"apiVersion":"v1","kind":"Pod","metadata":{"name":"j"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#;
    // (case name, input, expected (index, kind, decoded as a pod) per document)
    type Case = (&'static str, String, Vec<(usize, &'static str, bool)>);
    let cases: &[Case] = &[
            ("empty file", String::new(), vec![]),
            ("only separators and comments", "---\n# nothing\n---\n".into(), vec![]),
            ("json", json.into(), vec![(0, "Pod", true)]),
            (
                "multi-document with empty ones",
                format!("---\n{POD}---\n---\napiVersion: v1\nkind: Service\n---\n{POD}"),
                vec![(0, "Pod", true), (1, "Service", false), (2, "Pod", true)],
            ),
            (
                "list expanded",
                format!(
                    "apiVersion: v1\nkind: List\nitems:\n- {}\n- {{apiVersion: v1, kind: Service}}\n",
                    json.trim()
                ),
                vec![(0, "Pod", true), (1, "Service", false)],
            ),
            (
                "podlist items need no kind",
                "kind: PodList\napiVersion: v1\nitems:\n- metadata: {name: a}\n  spec: {containers: []}\n".into(),
                vec![(0, "Pod", true)],
            ),
            (
                "other api version is not decoded",
                "apiVersion: v2\nkind: Pod\n".into(),
                vec![(0, "Pod", false)],
            ),
            ("no kind", "metadata: {name: x}\n".into(), vec![(0, "", false)]),
            (
                "merge keys",
                "x: &c {name: app, image: busybox}\napiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - <<: *c\n".into(),
                vec![(0, "Pod", true)],
            ),
        ];
    for (name, input, expected) in cases {
        let docs = parse_manifests(input.as_bytes(), "f").unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&kinds(&docs), expected, "{name}");
    }
}

#[test]
fn yaml_1_1_octals_are_integers_and_quoted_ones_strings() {
    let pod = |mode: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  volumes:\n  - name: s\n    secret: {{secretName: s, defaultMode: {mode}, items: [{{key: k, path: k, mode: 0o440}}]}}\n  containers: [{{name: app, image: i}}]\n"
        )
    };
    for (mode, want) in [("0400", 256), ("0o644", 420), ("256", 256), ("0x1FF", 511)] {
        let docs = parse_manifests(pod(mode).as_bytes(), "f").unwrap();
        let spec = docs[0].pod.as_ref().unwrap().spec.as_ref().unwrap();
        let secret = spec.volumes.as_ref().unwrap()[0].secret.as_ref().unwrap();
        assert_eq!(secret.default_mode, Some(want), "{mode}");
        assert_eq!(secret.items.as_ref().unwrap()[0].mode, Some(0o440));
    }
    // Quoted, it is a string, refused at its own line and column as before.
    for quoted in ["'0400'", "\"0400\""] {
        let e = parse_manifests(pod(quoted).as_bytes(), "f").unwrap_err();
        assert!(
            e.to_string().contains("invalid type: string \"0400\""),
            "{quoted}: {e}"
        );
        assert_eq!(e.location.map(|l| l.line), Some(7), "{e}");
    }
    // Positions after a rewritten octal stay where they were.
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {a: 0400}}\nspec:\n  containers: 3\n";
    let e = parse_manifests(text.as_bytes(), "f").unwrap_err();
    assert_eq!(
        e.location,
        Some(Location {
            line: 5,
            column: 15
        }),
        "{e}"
    );
    // Upstream reads an unquoted 0400 label value as the number 256 too, and
    // refuses it where a string is wanted.
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {a: 0400}}\nspec:\n  containers: [{name: app, image: i}]\n";
    let e = parse_manifests(text.as_bytes(), "f").unwrap_err();
    assert!(e.to_string().contains("invalid type: integer `256`"), "{e}");
    // JSON has no octals: untouched.
    let json = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"m": "0400"}}"#;
    let docs = parse_manifests(json.as_bytes(), "f.json").unwrap();
    assert!(docs[0].object.is_some());
}

#[test]
fn merge_keys_are_applied() {
    let input = "x: &c {name: app, image: busybox}\napiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - <<: *c\n";
    let docs = parse_manifests(input.as_bytes(), "f").unwrap();
    let spec = docs[0].pod.as_ref().unwrap().spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].name, "app");
}

#[test]
fn errors_name_file_document_and_position() {
    let bad_type = format!(
        "{POD}---\n{}",
        POD.replace("containerPort: 80", "containerPort: eighty")
    );
    let cases: &[(&str, &str, usize, Option<usize>, &str)] = &[
        (
            "syntax",
            "apiVersion: v1\nkind: Pod\nmetadata: [\n",
            0,
            Some(4),
            "invalid YAML",
        ),
        (
            "type error is located",
            &bad_type,
            1,
            Some(21),
            "containerPort",
        ),
        (
            "scalar document",
            "just words\n",
            0,
            None,
            "expected an object, found a string",
        ),
        ("json syntax", "{\"kind\": ", 0, Some(1), "invalid JSON"),
        (
            "kind not a string",
            "kind: [Pod]\n",
            0,
            None,
            "`kind` must be a string",
        ),
        (
            "bad list items",
            "kind: List\nitems: 3\n",
            0,
            None,
            "`items` of a List",
        ),
    ];
    for (name, input, index, line, needle) in cases {
        let err =
            parse_manifests(input.as_bytes(), "/etc/kubernetes/manifests/x.yaml").unwrap_err();
        assert_eq!(err.index, *index, "{name}: {err}");
        assert_eq!(err.location.map(|l| l.line), *line, "{name}: {err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "/etc/kubernetes/manifests/x.yaml: document {index}: "
            )),
            "{name}: {text}"
        );
        assert!(text.contains(needle), "{name}: {text}");
    }
}

#[test]
fn truncations_and_garbage_never_panic() {
    let json = serde_json::to_string(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 1}]}]}
    }))
    .unwrap();
    for source in [POD.as_bytes(), json.as_bytes()] {
        for end in 0..=source.len() {
            let _ = parse_manifests(&source[..end], "t");
        }
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..2_000 {
        let len = round % 200;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Bias towards YAML punctuation so the parser goes deep.
                b"{}[]:-,&*!|>'\"#\n \t?abc01\xff"[(state % 25) as usize]
            })
            .collect();
        let _ = parse_manifests(&bytes, "garbage");
    }
    // Alias bombs and deep nesting hit the parsers' limits, not the stack.
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
    let _ = parse_manifests(bomb.as_bytes(), "bomb");
    let _ = parse_manifests("[".repeat(100_000).as_bytes(), "deep");
    let _ = parse_manifests(
        format!("{}{}", "{\"a\":".repeat(100_000), "1").as_bytes(),
        "deep",
    );
}

#[test]
fn limits_name_file_document_and_limit() {
    let origin = "/etc/kubernetes/manifests/x.yaml";
    let text = |input: &[u8]| parse_manifests(input, origin).unwrap_err().to_string();
    assert_eq!(
        text("---\n".repeat(10_000).as_bytes()),
        format!(
            "{origin}: document 1000: more than 1000 documents, the limit for a manifest (at line 1001 column 4)"
        )
    );
    let json_stream = "{}\n".repeat(MAX_DOCUMENTS + 1);
    assert_eq!(
        text(json_stream.as_bytes()),
        format!("{origin}: document 1000: more than 1000 documents, the limit for a manifest")
    );
    let deep = format!("{POD}---\n{POD}---\nx: {}", "[".repeat(200_000));
    assert_eq!(
        text(deep.as_bytes()),
        format!(
            "{origin}: document 2: nested deeper than 100 levels, the limit for a manifest (at line 23 column 103)"
        )
    );
    let big = format!("{POD}# {}\n", "x".repeat(crate::MAX_MANIFEST_BYTES));
    assert_eq!(
        text(big.as_bytes()),
        format!("{origin}: document 0: larger than 3145728 bytes, the limit for a manifest")
    );
    let bomb = format!(
        "a: &a [{}x]\nb: [{}*a]\n",
        "x,".repeat(10_000),
        "*a,".repeat(10_000)
    );
    assert!(
            text(bomb.as_bytes()).starts_with(&format!(
                "{origin}: document 0: aliases expand to more than 200000 nodes, the limit for a manifest"
            )),
            "{}",
            text(bomb.as_bytes())
        );
    // Within the limits, the same shapes parse: merge keys through aliases, and
    // a thousand documents.
    let pods = vec![POD; MAX_DOCUMENTS].join("---\n");
    assert_eq!(
        parse_manifests(pods.as_bytes(), origin).unwrap().len(),
        MAX_DOCUMENTS
    );
}
