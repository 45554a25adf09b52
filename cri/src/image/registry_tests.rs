//! Unit tests of `registry.rs`.

use super::*;

#[test]
fn challenges() {
    let c = parse_challenges([
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull",error="insufficient_scope""#,
    ]);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].scheme, "bearer");
    assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
    assert_eq!(c[0].params["service"], "registry.docker.io");
    assert_eq!(c[0].params["scope"], "repository:library/busybox:pull");
    assert_eq!(c[0].params["error"], "insufficient_scope");

    let c = parse_challenges([r#"Basic realm="basic-realm", Bearer realm=x, error="a\"b""#]);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(c[0].scheme, "basic");
    assert_eq!(c[0].params["realm"], "basic-realm");
    assert_eq!(c[1].params["realm"], "x");
    assert_eq!(c[1].params["error"], "a\"b");
    assert!(parse_challenges([""]).is_empty());
    assert_eq!(parse_challenges(["Basic"])[0].scheme, "basic");
}

#[test]
fn loopback_hosts() {
    for h in [
        "localhost",
        "localhost:5000",
        "127.0.0.1",
        "127.1.2.3:80",
        "[::1]:5000",
        "::1",
    ] {
        assert!(is_loopback(h), "{h}");
    }
    for h in [
        "docker.io",
        "10.0.0.1:5000",
        "localhost.example.com",
        "[::2]:1",
    ] {
        assert!(!is_loopback(h), "{h}");
    }
}

#[test]
fn endpoint_order_and_schemes() {
    let mut config = RegistryConfig::default();
    config.hosts.insert(
        "docker.io".to_owned(),
        RegistryHostConfig {
            mirrors: vec![
                "http://mirror.local:5000/v2".to_owned(),
                "mirror2.local/prefix/".to_owned(),
            ],
            ..RegistryHostConfig::default()
        },
    );
    config.hosts.insert(
        "insecure.local".to_owned(),
        RegistryHostConfig {
            insecure: true,
            ..RegistryHostConfig::default()
        },
    );
    let eps = endpoints("docker.io", &config, "r").expect("endpoints");
    let got: Vec<(String, Vec<&str>)> = eps
        .iter()
        .map(|e| (e.url("S", "/v2/"), e.schemes.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("S://mirror.local:5000/v2/".to_owned(), vec!["http"]),
            ("S://mirror2.local/prefix/v2/".to_owned(), vec!["https"]),
            ("S://registry-1.docker.io/v2/".to_owned(), vec!["https"]),
        ]
    );
    let eps = endpoints("insecure.local", &config, "r").expect("endpoints");
    assert_eq!(eps[0].schemes, ["https", "http"]);
    let eps = endpoints("127.0.0.1:5000", &config, "r").expect("endpoints");
    assert_eq!(eps[0].schemes, ["https", "http"]);
    config.hosts.insert(
        "bad.local".to_owned(),
        RegistryHostConfig {
            mirrors: vec!["ftp://x".to_owned()],
            ..RegistryHostConfig::default()
        },
    );
    assert!(matches!(
        endpoints("bad.local", &config, "r"),
        Err(PullError::InvalidMirror { .. })
    ));
}

#[test]
fn form_encoding() {
    assert_eq!(
        form(&[("scope", "repository:a/b:pull x"), ("k", "é")]),
        "scope=repository%3Aa%2Fb%3Apull+x&k=%C3%A9"
    );
}
