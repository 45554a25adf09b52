//! Property tests (proptest) for the parsers: resource quantities against
//! upstream's grammar, manifests that are random, truncated or well-typed but
//! odd, and the limits' pre-scan against libyaml itself. The unit tests beside each module hold the fixed
//! cases; these look for the inputs nobody thought of.
//!
//! Upstream's grammar (`apimachinery/pkg/api/resource/quantity.go`):
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <signedNumber>    ::= <number> | <sign><number>
//! <sign>            ::= "+" | "-"
//! <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= "e" <signedInteger> | "E" <signedInteger>
//! ```
//! (The comment upstream says `<signedNumber>` after the `e`; its parser
//! accepts only an integer there, and so do we.)

#![allow(clippy::unwrap_used)]

use nodelet_manifests::limits::prescan;
use nodelet_manifests::{
    LimitError, ParseErrorReason, Quantity, QuantityError, load_static_pods, parse_manifests,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const DECIMAL_SI: [&str; 10] = ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"];
const BINARY_SI: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// --- quantities ---

/// A recogniser written from the grammar, independently of the parser: it
/// tries every split of the text into a signed number and a suffix.
fn in_grammar(text: &str) -> bool {
    fn digits(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }
    fn number(s: &str) -> bool {
        match s.split_once('.') {
            None => digits(s),
            Some((whole, fraction)) => {
                (digits(whole) && digits(fraction))
                    || (digits(whole) && fraction.is_empty())
                    || (whole.is_empty() && digits(fraction))
            }
        }
    }
    fn signed(s: &str, number: fn(&str) -> bool) -> bool {
        number(s.strip_prefix(['+', '-']).unwrap_or(s))
    }
    fn suffix(s: &str) -> bool {
        DECIMAL_SI.contains(&s)
            || BINARY_SI.contains(&s)
            || s.strip_prefix(['e', 'E'])
                .is_some_and(|exponent| signed(exponent, digits))
    }
    let text = text.trim();
    (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .any(|i| signed(&text[..i], number) && suffix(&text[i..]))
}

/// Text drawn from the grammar's own alphabet, so that near-misses are common.
fn quantity_like() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(b"0123456789.+-eEinumkKMGTPIx".to_vec()),
        0..10,
    )
    .prop_map(|bytes| String::from_utf8(bytes).unwrap())
}

/// A well-formed quantity: (text, sign, whole digits, fraction digits, suffix).
fn quantity() -> impl Strategy<Value = (String, bool, String, String, String)> {
    let suffix = prop_oneof![
        proptest::sample::select(DECIMAL_SI.to_vec()).prop_map(str::to_owned),
        proptest::sample::select(BINARY_SI.to_vec()).prop_map(str::to_owned),
        (
            proptest::sample::select(vec!["e", "E"]),
            proptest::sample::select(vec!["", "+", "-"]),
            0_u32..13,
        )
            .prop_map(|(e, sign, exp)| format!("{e}{sign}{exp}")),
    ];
    (
        proptest::sample::select(vec!["", "+", "-"]),
        "[0-9]{0,7}",
        proptest::option::of("[0-9]{0,6}"),
        suffix,
    )
        .prop_filter("a number has a digit", |(_, whole, fraction, _)| {
            !whole.is_empty() || fraction.as_ref().is_some_and(|f| !f.is_empty())
        })
        .prop_map(|(sign, whole, fraction, suffix)| {
            let number = match &fraction {
                Some(f) => format!("{whole}.{f}"),
                None => whole.clone(),
            };
            (
                format!("{sign}{number}{suffix}"),
                sign == "-",
                whole,
                fraction.unwrap_or_default(),
                suffix,
            )
        })
}

/// The value a quantity stands for, in nano-units, as a float (an oracle
/// independent of the integer arithmetic under test).
fn approximate_nanos(whole: &str, fraction: &str, suffix: &str) -> f64 {
    let number: f64 = format!("0{whole}.{fraction}0").parse().unwrap();
    let scale = match suffix {
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024_f64,
        "Mi" => 1024_f64.powi(2),
        "Gi" => 1024_f64.powi(3),
        "Ti" => 1024_f64.powi(4),
        "Pi" => 1024_f64.powi(5),
        "Ei" => 1024_f64.powi(6),
        exponent => 10_f64.powi(exponent[1..].parse::<i32>().unwrap()),
    };
    number * scale * 1e9
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn quantity_parses_exactly_the_grammar(text in quantity_like()) {
        let result = Quantity::parse(&text);
        let well_formed = matches!(result, Ok(_) | Err(QuantityError::TooLarge));
        prop_assert_eq!(well_formed, in_grammar(&text), "{:?} gave {:?}", text, result);
    }

    #[test]
    fn quantity_values_match_a_float_oracle(
        (text, negative, whole, fraction, suffix) in quantity()
    ) {
        let nanos = Quantity::parse(&text).unwrap().nanos();
        let magnitude = approximate_nanos(&whole, &fraction, &suffix);
        let expected = if negative { -magnitude } else { magnitude };
        // Digits below a nano-unit round away from zero: at most 1 off, plus
        // the float's own rounding.
        let slack = 1.0 + expected.abs() * 1e-12;
        #[allow(clippy::cast_precision_loss)]
        let got = nanos as f64;
        prop_assert!((got - expected).abs() <= slack, "{text}: {nanos} vs {expected}");
        if magnitude.fract() == 0.0 && magnitude < 1e15 {
            #[allow(clippy::cast_possible_truncation)]
            let exact = magnitude as i128;
            prop_assert_eq!(nanos.abs(), exact, "{}", text);
        }
    }

    #[test]
    fn quantity_spellings_agree(
        (text, _negative, whole, fraction, suffix) in quantity()
    ) {
        let value = Quantity::parse(&text).unwrap();
        // Leading zeros, trailing fraction zeros and an explicit plus change nothing.
        let padded = format!("00{whole}.{fraction}00{suffix}");
        prop_assert_eq!(Quantity::parse(&padded).unwrap().nanos(), value.nanos().abs(), "{}", padded);
        prop_assert_eq!(
            Quantity::parse(&format!("-{whole}.{fraction}{suffix}")).unwrap().nanos(),
            -value.nanos().abs()
        );
        // Moving the decimal point into an exponent keeps the value, when
        // the suffix is a plain decimal one.
        if let Some(exp) = match suffix.as_str() {
            "" => Some(0),
            "k" => Some(3),
            "M" => Some(6),
            "m" => Some(-3),
            _ => None,
        } {
            let digits = format!("{whole}{fraction}");
            let shifted = format!("{digits}e{}", exp - i32::try_from(fraction.len()).unwrap());
            prop_assert_eq!(Quantity::parse(&shifted).unwrap().nanos(), value.nanos().abs(), "{} vs {}", text, shifted);
        }
        // What we print parses back to the same value.
        prop_assert_eq!(Quantity::parse(&value.to_string()).unwrap(), value);
    }
}

// --- manifests ---

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}[a-z0-9]"
}

/// A valid pod, as JSON, with a little of everything.
fn valid_pod() -> impl Strategy<Value = Value> {
    let container = (
        dns_label(),
        "[a-z]{1,8}(:[0-9]{1,3}|:latest)?",
        proptest::collection::vec(1_i32..=65535, 0..3),
        proptest::option::of((1_u32..4000, 1_u32..512)),
        proptest::collection::vec(("[A-Z_]{1,6}", "[ -~]{0,12}"), 0..3),
    );
    (
        dns_label(),
        proptest::option::of(dns_label()),
        proptest::collection::vec(container, 1..3),
        proptest::sample::select(vec!["Always", "OnFailure", "Never"]),
    )
        .prop_map(|(name, namespace, containers, restart)| {
            let containers: Vec<Value> = containers
                .into_iter()
                .enumerate()
                .map(|(i, (name, image, ports, resources, env))| {
                    let mut seen = std::collections::BTreeSet::new();
                    let ports: Vec<Value> = ports
                        .into_iter()
                        .filter(|p| seen.insert(*p))
                        .map(|p| json!({"containerPort": p}))
                        .collect();
                    let mut c = json!({"name": format!("{name}{i}"), "image": image, "ports": ports});
                    if let Some((cpu, mem)) = resources {
                        c["resources"] = json!({"limits": {"cpu": format!("{cpu}m"), "memory": format!("{mem}Mi")}});
                    }
                    let env: Vec<Value> = env
                        .into_iter()
                        .map(|(n, v)| json!({"name": n, "value": v}))
                        .collect();
                    c["env"] = Value::Array(env);
                    c
                })
                .collect();
            let mut pod = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {"containers": containers, "restartPolicy": restart}
            });
            if let Some(namespace) = namespace {
                pod["metadata"]["namespace"] = json!(namespace);
            }
            pod
        })
}

/// Any JSON value, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6_f64..1e6).prop_map(|f| json!(f)),
        "[ -~]{0,8}".prop_map(Value::String),
        quantity_like().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Places in a pod where an odd value does the most damage.
const PLACES: &[&[&str]] = &[
    &["metadata", "name"],
    &["metadata", "namespace"],
    &["metadata", "labels"],
    &["spec", "restartPolicy"],
    &["spec", "volumes"],
    &["spec", "securityContext"],
    &["spec", "initContainers"],
    &["spec", "terminationGracePeriodSeconds"],
    &["spec", "containers", "0", "ports"],
    &["spec", "containers", "0", "resources"],
    &["spec", "containers", "0", "resources", "limits"],
    &["spec", "containers", "0", "livenessProbe"],
    &["spec", "containers", "0", "env"],
    &["spec", "containers", "0", "volumeMounts"],
    &["spec", "containers", "0", "image"],
];

fn set_at(value: &mut Value, path: &[&str], new: Value) {
    let mut at = value;
    for key in &path[..path.len() - 1] {
        at = match key.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*key],
        };
    }
    if let Some(last) = path.last()
        && (at.is_object() || at.is_null())
    {
        at[*last] = new;
    }
}

fn assert_error_names_origin(err: &nodelet_manifests::ParseError, origin: &str) {
    let text = err.to_string();
    let prefix = format!("{origin}: document {}: ", err.index);
    assert!(text.starts_with(&prefix), "{text}");
    if matches!(
        err.reason,
        ParseErrorReason::Yaml(_) | ParseErrorReason::Json(_)
    ) {
        assert!(
            err.location.is_some(),
            "a syntax error has a position: {text}"
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Err(err) = parse_manifests(&bytes, "/m/random.yaml") {
            assert_error_names_origin(&err, "/m/random.yaml");
        }
        let _ = load_static_pods(&bytes, "/m/random.yaml", "node");
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-z:\\-\\[\\]{},&*!|>'\"#0-9 \n\t]{0,160}") {
        match parse_manifests(text.as_bytes(), "/m/yamlish.yaml") {
            Err(err) => assert_error_names_origin(&err, "/m/yamlish.yaml"),
            Ok(documents) => {
                for (i, d) in documents.iter().enumerate() {
                    prop_assert_eq!(d.index, i);
                }
            }
        }
    }

    #[test]
    fn valid_pods_round_trip_in_yaml_and_json(pod in valid_pod()) {
        let json = serde_json::to_string(&pod).unwrap();
        let yaml = serde_yaml::to_string(&pod).unwrap();
        let expected: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
        for text in [&json, &yaml] {
            let documents = parse_manifests(text.as_bytes(), "/m/p").unwrap();
            prop_assert_eq!(documents.len(), 1);
            prop_assert_eq!(documents[0].pod.as_ref(), Some(&expected));
            let load = load_static_pods(text.as_bytes(), "/m/p", "node");
            prop_assert!(load.errors.is_empty(), "{:?}\n{}", load.errors, text);
            prop_assert_eq!(load.pods.len(), 1);
        }
    }

    #[test]
    fn truncated_manifests_fail_cleanly(pod in valid_pod(), cut in any::<proptest::sample::Index>()) {
        let json = serde_json::to_string(&pod).unwrap();
        let yaml = format!("{}---\n{}", serde_yaml::to_string(&pod).unwrap(), serde_yaml::to_string(&pod).unwrap());
        // JSON: every non-empty strict prefix of an object is an error with a position.
        let end = cut.index(json.len());
        if end > 0 {
            let err = parse_manifests(&json.as_bytes()[..end], "/m/p.json").unwrap_err();
            assert_error_names_origin(&err, "/m/p.json");
            prop_assert!(err.location.is_some(), "{}", err);
        }
        // YAML: a prefix may well be a valid document; if not, the error is located.
        let end = cut.index(yaml.len());
        let prefix = &yaml.as_bytes()[..end];
        match parse_manifests(prefix, "/m/p.yaml") {
            Err(err) => assert_error_names_origin(&err, "/m/p.yaml"),
            Ok(documents) => prop_assert!(documents.len() <= 2),
        }
        let _ = load_static_pods(prefix, "/m/p.yaml", "node");
    }

    #[test]
    fn odd_values_anywhere_are_errors_not_panics(
        pod in valid_pod(),
        place in proptest::sample::select(PLACES.to_vec()),
        odd in any_json(),
    ) {
        let mut pod = pod;
        set_at(&mut pod, place, odd);
        for text in [serde_json::to_string(&pod).unwrap(), serde_yaml::to_string(&pod).unwrap()] {
            match parse_manifests(text.as_bytes(), "/m/odd") {
                Err(err) => assert_error_names_origin(&err, "/m/odd"),
                Ok(_) => {
                    // Defaulting and validation must cope with whatever decoded.
                    let load = load_static_pods(text.as_bytes(), "/m/odd", "node");
                    for error in &load.errors {
                        prop_assert!(error.to_string().starts_with("/m/odd: document 0: "), "{}", error);
                    }
                }
            }
        }
    }
}

// --- the manifest limits' pre-scan against libyaml ---

/// Strings made of what YAML gives meaning to: brackets, quotes, comment and block
/// scalar indicators, document markers, line breaks (NEL too), tabs, escapes.
fn tricky_string() -> impl Strategy<Value = String> {
    let pieces = vec![
        "[", "]", "{", "}", ":", ": ", " #", "#", "'", "\"", "|", ">", "- ", "? ", ",", "&a", "*a",
        "!t", "\n", "  ", "\t", "---", "...", "%", "\\", "x", "é", "\u{85}", "\r\n",
    ];
    proptest::collection::vec(proptest::sample::select(pieces), 0..12).prop_map(|v| v.concat())
}

fn tricky_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        tricky_string().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        Just(Value::Null),
    ];
    leaf.prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(tricky_string(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Whether serde_yaml (libyaml), with no pre-scan, finds the text nested past its
/// recursion limit.
fn libyaml_sees_deep(text: &str) -> bool {
    // serde_yaml's iterator repeats a stream error forever: stop at the first.
    for d in serde_yaml::Deserializer::from_str(text) {
        if let Err(e) = <serde_yaml::Value as serde::Deserialize>::deserialize(d) {
            return e.to_string().contains("recursion limit exceeded");
        }
    }
    false
}

proptest! {
    #![proptest_config(config())]

    /// No false rejection: what serde_yaml and serde_json write, strings full of
    /// YAML punctuation included, passes the pre-scan.
    #[test]
    fn prescan_accepts_what_serializers_write(value in tricky_value()) {
        let wrapped = json!({"a": value, "b": [value]});
        for text in [
            serde_yaml::to_string(&wrapped).unwrap(),
            serde_json::to_string(&wrapped).unwrap(),
            serde_json::to_string_pretty(&wrapped).unwrap(),
        ] {
            prop_assert!(prescan(text.as_bytes()).is_ok(), "{text:?}: {:?}", prescan(text.as_bytes()));
        }
    }

    /// No missed bomb: real nesting past the limit is found whatever strings, block
    /// scalars and keys come before it or sit between its levels.
    #[test]
    fn prescan_finds_nesting_behind_any_strings(value in tricky_value(), depth in 130usize..200) {
        let yaml = serde_yaml::to_string(&json!({"a": value})).unwrap();
        let json = serde_json::to_string(&value).unwrap();
        let texts = [
            // Block YAML (quoted, plain and block scalars), then flow nesting.
            format!("{yaml}z: {}x", "[".repeat(depth)),
            // Each level of a flow sequence led by the value.
            format!("{}x", format!("[{json}, ").repeat(depth)),
            // The value as a key at every level of a flow mapping.
            format!("{}x", format!("{{{json}: ").repeat(depth)),
        ];
        for text in texts {
            if libyaml_sees_deep(&text) {
                prop_assert_eq!(
                    prescan(text.as_bytes()).map_err(|c| c.limit),
                    Err(LimitError::TooDeep),
                    "{:?}", text
                );
            }
        }
    }
}
