//! Registry pulls against a real registry: Debian's `docker-registry` on 127.0.0.1
//! (plain HTTP, TLS with a CA made by `openssl` here, htpasswd auth), images pushed by
//! a small push client below, pulled through `Containerd::pull_image` into a real
//! containerd. Also `docker save` archive import and image removal.
//!
//! Needs root, containerd (`NODELET_TEST_CONTAINERD`, see `cri/tests/image.rs`), and
//! the packages `scripts/test-registry-deps.sh` installs. Every test gets its own
//! registry process (killed by PID on drop), temp directory and containerd namespace
//! (emptied and removed on drop, also when the test fails), and its own image content,
//! so that containerd's shared content store can't satisfy a pull with another test's
//! blobs. Nothing leaves loopback. The registry, the push client and the images live
//! in `registry/`, shared with the pull figures in `cri/benches/pull.rs`.

mod registry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use nodelet_cri::image::{PullAuth, PullError, RegistryConfig, RegistryHostConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use registry::*;

// ---------------------------------------------------------------------------------
// tests

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_tag_then_by_digest_then_remove() {
    let t = TestNs::new().await;
    let reg = Registry::start(RegistryOpts::default()).await;
    let image = unique_busybox(&unique()).gzipped();
    let digest = reg.push("test/busybox", "1.35", &image).await;
    let config = reg.config();

    let name = format!("{}/test/busybox:1.35", reg.host);
    let info = t
        .client
        .pull_image(&name, &anon(), &config)
        .await
        .expect("pull by tag");
    assert_eq!(info.name, name);
    assert_eq!(info.repo_digest, digest);
    assert_eq!(info.id, image.config_digest());
    assert_eq!(info.config.cmd, ["sh"]);
    assert_eq!(t.images(), std::slice::from_ref(&name));
    assert!(
        t.ctr_lines(&["snapshots", "ls"])
            .iter()
            .any(|l| l.starts_with(&info.chain_id)),
        "unpacked into the chain snapshot"
    );
    assert!(
        t.ctr_lines(&["leases", "ls", "-q"]).is_empty(),
        "pull lease deleted"
    );
    assert!(t.ingests().is_empty(), "no ingest left");
    // Labels as an import gives them: the manifest refers to config and layer.
    let labels = t.ctr_lines(&["content", "ls"]).join("\n");
    assert!(
        labels.contains("containerd.io/gc.ref.content.config="),
        "{labels}"
    );
    assert!(
        labels.contains("containerd.io/gc.ref.content.l.0="),
        "{labels}"
    );
    assert!(labels.contains("containerd.io/uncompressed="), "{labels}");

    // get_image sees it the same way; pulling again is a no-op.
    assert_eq!(
        t.client.get_image(&name).await.expect("get"),
        Some(info.clone())
    );
    let again = t
        .client
        .pull_image(&name, &anon(), &config)
        .await
        .expect("pull again");
    assert_eq!(again, info);

    let by_digest = format!("{}/test/busybox@{digest}", reg.host);
    let info2 = t
        .client
        .pull_image(&by_digest, &anon(), &config)
        .await
        .expect("by digest");
    assert_eq!(info2.id, info.id);
    assert_eq!(info2.name, by_digest);
    assert_eq!(t.images().len(), 2);

    // Unknown tag: not found, in containerd's words.
    let missing = format!("{}/test/busybox:nope", reg.host);
    let err = t
        .client
        .pull_image(&missing, &anon(), &config)
        .await
        .expect_err("missing");
    assert!(matches!(err, PullError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().ends_with(&format!("{missing}: not found")),
        "{err}"
    );

    // Removal by image ID takes every name of the image, and the GC its content.
    t.client.remove_image(&info.id).await.expect("remove");
    assert!(t.images().is_empty());
    assert!(
        t.ctr_lines(&["content", "ls", "-q"]).is_empty(),
        "content collected"
    );
    t.client
        .remove_image(&info.id)
        .await
        .expect("remove again is fine");
    t.client
        .remove_image(&name)
        .await
        .expect("remove a missing name is fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_arch_index_picks_this_platform() {
    let t = TestNs::new().await;
    let reg = Registry::start(RegistryOpts::default()).await;
    let image = unique_busybox(&unique());
    let real = reg.push("test/multi", &image.digest(), &image).await;

    // A second platform: the same layer, a config claiming another architecture.
    let mut config: serde_json::Value = serde_json::from_slice(&image.config.data).expect("config");
    config["architecture"] = json!(other_arch());
    let config = serde_json::to_vec(&config).expect("json");
    reg.push_blob("test/multi", &config).await;
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest).expect("m");
    manifest["config"]["digest"] = json!(sha256(&config));
    manifest["config"]["size"] = json!(config.len());
    let fake_manifest = serde_json::to_vec(&manifest).expect("json");
    let fake = reg
        .put_manifest(
            "test/multi",
            &sha256(&fake_manifest),
            &image.manifest_type,
            &fake_manifest,
        )
        .await;

    let entry = |digest: &str, size: usize, arch: &str| {
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            entry(&fake, fake_manifest.len(), other_arch()),
            entry(&real, image.manifest.len(), &host_arch()),
        ],
    }))
    .expect("json");
    let index_type = "application/vnd.oci.image.index.v1+json";
    let index_digest = reg
        .put_manifest("test/multi", "multi", index_type, &index)
        .await;

    let name = format!("{}/test/multi:multi", reg.host);
    let info = t
        .client
        .pull_image(&name, &anon(), &reg.config())
        .await
        .expect("pull index");
    assert_eq!(
        info.repo_digest, index_digest,
        "the record points at the index"
    );
    assert_eq!(info.id, image.config_digest(), "this platform's config");

    // An index with only the other platform.
    let only_other = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [entry(&fake, fake_manifest.len(), other_arch())],
    }))
    .expect("json");
    reg.put_manifest("test/multi", "other", index_type, &only_other)
        .await;
    let other = format!("{}/test/multi:other", reg.host);
    let err = t
        .client
        .pull_image(&other, &anon(), &reg.config())
        .await
        .expect_err("other");
    assert!(
        matches!(err, PullError::NoMatchingPlatform { .. }),
        "{err:?}"
    );
    assert_eq!(t.images(), [name]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_registry_with_a_test_ca() {
    let t = TestNs::new().await;
    let reg = Registry::start(RegistryOpts {
        tls: true,
        ..RegistryOpts::default()
    })
    .await;
    let image = unique_busybox(&unique());
    let digest = reg.push("test/tls", "v1", &image).await;
    let name = format!("{}/test/tls:v1", reg.host);

    // Without the CA the certificate is not trusted (and plain HTTP to a TLS server
    // fails too): the TLS error is what is reported.
    let err = t
        .client
        .pull_image(&name, &anon(), &RegistryConfig::default())
        .await
        .expect_err("untrusted");
    assert!(matches!(err, PullError::Network { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let info = t
        .client
        .pull_image(&name, &anon(), &reg.config())
        .await
        .expect("pull");
    assert_eq!(info.repo_digest, digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_registry_with_pull_secrets() {
    let t = TestNs::new().await;
    let reg = Registry::start(RegistryOpts {
        htpasswd: Some(("puller".to_owned(), "c0rrect-horse".to_owned())),
        ..RegistryOpts::default()
    })
    .await;
    let image = unique_busybox(&unique());
    let digest = reg.push("private/app", "1", &image).await;
    let name = format!("{}/private/app:1", reg.host);
    let secret = |user: &str, pass: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let doc = json!({"auths": {reg.host.clone(): {"auth": auth}}});
        let mut a = PullAuth::anonymous();
        a.add_dockerconfigjson(doc.to_string().as_bytes())
            .expect("secret");
        a
    };

    for (what, auth) in [
        ("anonymous", anon()),
        ("wrong password", secret("puller", "nope")),
    ] {
        let err = t
            .client
            .pull_image(&name, &auth, &reg.config())
            .await
            .expect_err(what);
        assert!(
            matches!(err, PullError::Unauthorized { .. }),
            "{what}: {err:?}"
        );
        assert!(
            err.to_string().starts_with(&format!(
                "failed to pull and unpack image \"{name}\": failed to resolve reference \"{name}\": unexpected status from HEAD request to http://{}/v2/private/app/manifests/1: 401 Unauthorized",
                reg.host
            )),
            "{what}: {err}"
        );
    }
    assert!(t.images().is_empty());

    // The dockercfg form works the same; the right secret is used among others.
    let mut auth = PullAuth::anonymous();
    auth.add_dockercfg(br#"{"other.example.com": {"username": "x", "password": "y"}}"#)
        .expect("cfg");
    auth.extend(&secret("puller", "c0rrect-horse"));
    let info = t
        .client
        .pull_image(&name, &auth, &reg.config())
        .await
        .expect("pull");
    assert_eq!(info.repo_digest, digest);
    let resolved = t
        .client
        .resolve_digest(&name, &auth, &reg.config())
        .await
        .expect("resolve");
    assert_eq!(resolved, digest);

    // Node-level credentials from a docker config.json.
    let t2 = TestNs::new().await;
    let cfg = reg.dir.path().join("config.json");
    let basic = base64::engine::general_purpose::STANDARD.encode("puller:c0rrect-horse");
    std::fs::write(
        &cfg,
        json!({"auths": {reg.host.clone(): {"auth": basic}}}).to_string(),
    )
    .expect("write");
    let mut config = reg.config();
    config.docker_config = Some(cfg);
    t2.client
        .pull_image(&name, &anon(), &config)
        .await
        .expect("node credentials");
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_digest_follows_a_moved_tag() {
    let t = TestNs::new().await;
    let reg = Registry::start(RegistryOpts::default()).await;
    let first = unique_busybox(&unique());
    let d1 = reg.push("test/moving", "latest", &first).await;
    let name = format!("{}/test/moving", reg.host);
    let config = reg.config();

    assert_eq!(
        t.client
            .resolve_digest(&name, &anon(), &config)
            .await
            .expect("resolve"),
        d1
    );
    let info = t
        .client
        .pull_image(&name, &anon(), &config)
        .await
        .expect("pull");
    assert_eq!(
        (info.name.as_str(), info.repo_digest.as_str()),
        (&*format!("{name}:latest"), &*d1)
    );

    let second = unique_busybox(&unique());
    let d2 = reg.push("test/moving", "latest", &second).await;
    assert_ne!(d1, d2);
    assert_eq!(
        t.client
            .resolve_digest(&name, &anon(), &config)
            .await
            .expect("resolve"),
        d2
    );
    let info = t
        .client
        .pull_image(&name, &anon(), &config)
        .await
        .expect("pull moved");
    assert_eq!(info.repo_digest, d2);
    assert_eq!(info.id, second.config_digest());
    assert_eq!(t.images(), [format!("{name}:latest")], "one record, moved");
}

/// A loopback TCP proxy in front of the registry that "dies" after passing `budget`
/// bytes from the registry (closing every connection and refusing new ones) until it
/// is revived.
struct CutProxy {
    port: u16,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    budget: AtomicI64,
    dead: AtomicBool,
    passed: AtomicU64,
}

impl CutProxy {
    async fn start(upstream: String, budget: i64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(ProxyState {
            budget: AtomicI64::new(budget),
            dead: AtomicBool::new(false),
            passed: AtomicU64::new(0),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.dead.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed
                }
                let s = s.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match tokio::time::timeout(
                            Duration::from_millis(100),
                            sr.read(&mut buf),
                        )
                        .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(n)) => n,
                            Err(_) => {
                                if s.dead.load(Ordering::SeqCst) {
                                    break;
                                }
                                continue;
                            }
                        };
                        if s.dead.load(Ordering::SeqCst) {
                            break;
                        }
                        let left = s.budget.fetch_sub(n as i64, Ordering::SeqCst);
                        let pass = n.min(usize::try_from(left.max(0)).unwrap_or(usize::MAX));
                        if cw.write_all(&buf[..pass]).await.is_err() {
                            break;
                        }
                        s.passed.fetch_add(pass as u64, Ordering::SeqCst);
                        if pass < n {
                            s.dead.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        Self { port, state, task }
    }

    fn revive(&self) {
        self.state.budget.store(i64::MAX, Ordering::SeqCst);
        self.state.passed.store(0, Ordering::SeqCst);
        self.state.dead.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_dying_mid_blob_fails_cleanly_then_resumes() {
    let t = TestNs::new().await;
    let reg = Registry::start(RegistryOpts::default()).await;
    let image = unique_busybox(&unique());
    let layer_size = image.layers[0].data.len() as u64;
    assert!(
        layer_size > 1_500_000,
        "busybox layer is {layer_size} bytes"
    );
    let proxy = CutProxy::start(reg.host.clone(), 1_200_000).await;
    let host = format!("127.0.0.1:{}", proxy.port);
    let digest = reg.push("test/cut", "v1", &image).await;
    let name = format!("{host}/test/cut:v1");

    let err = t
        .client
        .pull_image(&name, &anon(), &RegistryConfig::default())
        .await
        .expect_err("cut");
    assert!(matches!(err, PullError::Network { .. }), "{err:?}");
    assert!(
        t.images().is_empty(),
        "no image registered after a failed pull"
    );
    assert!(
        t.ctr_lines(&["leases", "ls", "-q"]).is_empty(),
        "pull lease deleted"
    );
    let ingests = t.ingests();
    assert_eq!(ingests.len(), 1, "the partial layer is kept: {ingests:?}");
    assert!(ingests[0].0.contains("nodelet-pull-sha256:"), "{ingests:?}");
    assert!(ingests[0].1 > 500_000, "{ingests:?}");

    // While the registry is away, pulls fail fast and cleanly.
    let err = t
        .client
        .pull_image(&name, &anon(), &RegistryConfig::default())
        .await
        .expect_err("dead");
    assert!(matches!(err, PullError::Network { .. }), "{err:?}");

    proxy.revive();
    let info = t
        .client
        .pull_image(&name, &anon(), &RegistryConfig::default())
        .await
        .expect("retry");
    assert_eq!(info.repo_digest, digest);
    let passed = proxy.state.passed.load(Ordering::SeqCst);
    assert!(
        passed < layer_size,
        "the retry resumed the layer ({passed} bytes passed, layer {layer_size})"
    );
    assert!(t.ingests().is_empty());
    assert_eq!(t.images(), [name]);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_save_archive_import() {
    let t = TestNs::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let image = unique_busybox(&unique());
    let config_hex = image
        .config_digest()
        .trim_start_matches("sha256:")
        .to_owned();
    let layer_hex = sha256(&image.layers[0].data)
        .trim_start_matches("sha256:")
        .to_owned();
    let manifest = json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["example.local/dockersave:1", "dockersave:latest"],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }]);
    let path = dir.path().join("save.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).expect("create"));
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).expect("append");
    };
    add(&format!("{layer_hex}/layer.tar"), &image.layers[0].data);
    add(&format!("{layer_hex}/VERSION"), b"1.0");
    add(&format!("{config_hex}.json"), &image.config.data);
    add("manifest.json", manifest.to_string().as_bytes());
    add("repositories", b"{}");
    b.into_inner().expect("finish").sync_all().expect("sync");

    let names = t
        .client
        .import_oci_archive(&path)
        .await
        .expect("import docker save");
    assert_eq!(
        names,
        [
            "example.local/dockersave:1",
            "docker.io/library/dockersave:latest"
        ]
    );
    let info = t
        .client
        .get_image("dockersave")
        .await
        .expect("get")
        .expect("present");
    assert_eq!(info.id, image.config_digest());
    assert!(
        t.ctr_lines(&["snapshots", "ls"])
            .iter()
            .any(|l| l.starts_with(&info.chain_id))
    );
}

/// A loopback front for a registry that demands a Bearer token, as Docker Hub does:
/// requests without `Authorization: Bearer <token>` get a 401 challenge naming the
/// realm `/token` on this front, which hands out the token for Basic `user:pass` (an
/// `insufficient_scope` 401 for a wrong token); authorized connections are piped
/// through to the registry.
struct TokenFront {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TokenFront {
    async fn start(upstream: String, user: &str, pass: &str, token: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        let bearer = format!("Bearer {token}");
        let token = token.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (upstream, basic, bearer, token) = (
                    upstream.clone(),
                    basic.clone(),
                    bearer.clone(),
                    token.clone(),
                );
                tokio::spawn(async move {
                    // A TLS ClientHello (the HTTPS try before plain HTTP on loopback):
                    // answer as Go's HTTP server does, with a 400 in clear.
                    let mut first = [0u8; 1];
                    if client.peek(&mut first).await.is_err() {
                        return;
                    }
                    if first[0] == 0x16 {
                        let _ = client
                            .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                            .await;
                        return;
                    }
                    // Read one request head.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match client.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let auth = text
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("authorization")
                                .then(|| v.trim().to_owned())
                        })
                        .unwrap_or_default();
                    let reply = |status: &str, extra: String, body: String| {
                        format!(
                            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let challenge = |error: &str| {
                        format!(
                            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"nodelet-test\",scope=\"repository:private/app:pull\"{error}\r\n"
                        )
                    };
                    let response = if path.starts_with("/token?") {
                        let scoped = path.contains("scope=repository%3Aprivate%2Fapp%3Apull")
                            && path.contains("service=nodelet-test");
                        if auth == basic && scoped {
                            reply(
                                "200 OK",
                                String::new(),
                                format!("{{\"token\":\"{token}\"}}"),
                            )
                        } else if auth.is_empty() && scoped {
                            // Anonymous tokens exist but grant nothing.
                            reply(
                                "200 OK",
                                String::new(),
                                "{\"token\":\"anonymous\"}".to_owned(),
                            )
                        } else {
                            reply("401 Unauthorized", String::new(), "{}".to_owned())
                        }
                    } else if auth == bearer {
                        let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        if server.write_all(&head).await.is_err() {
                            return;
                        }
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    } else if auth.starts_with("Bearer ") {
                        reply(
                            "401 Unauthorized",
                            challenge(",error=\"insufficient_scope\""),
                            "{}".to_owned(),
                        )
                    } else {
                        reply("401 Unauthorized", challenge(""), "{}".to_owned())
                    };
                    let _ = client.write_all(response.as_bytes()).await;
                    let _ = client.shutdown().await;
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for TokenFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_flow() {
    let t = TestNs::new().await;
    let reg = Registry::start(RegistryOpts::default()).await;
    let image = unique_busybox(&unique());
    let digest = reg.push("private/app", "1", &image).await;
    let front = TokenFront::start(reg.host.clone(), "tok-user", "tok-pass", "s3cr3t-token").await;
    let host = format!("127.0.0.1:{}", front.port);
    let name = format!("{host}/private/app:1");

    // Anonymous: an anonymous token, then refused with insufficient_scope, which
    // containerd words as "pull access denied".
    let err = t
        .client
        .pull_image(&name, &anon(), &RegistryConfig::default())
        .await
        .expect_err("anonymous");
    assert!(matches!(err, PullError::Unauthorized { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "failed to pull and unpack image \"{name}\": failed to resolve reference \"{name}\": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed"
        )
    );
    // Wrong credentials: the token realm refuses them.
    let secret = |user: &str, pass: &str| {
        let doc = json!({"auths": {host.clone(): {"username": user, "password": pass}}});
        let mut a = PullAuth::anonymous();
        a.add_dockerconfigjson(doc.to_string().as_bytes())
            .expect("secret");
        a
    };
    let err = t
        .client
        .pull_image(
            &name,
            &secret("tok-user", "wrong"),
            &RegistryConfig::default(),
        )
        .await
        .expect_err("wrong");
    assert!(matches!(err, PullError::Unauthorized { .. }), "{err:?}");

    let good = secret("tok-user", "tok-pass");
    let info = t
        .client
        .pull_image(&name, &good, &RegistryConfig::default())
        .await
        .expect("pull with a token");
    assert_eq!(info.repo_digest, digest);
    assert_eq!(
        t.client
            .resolve_digest(&name, &good, &RegistryConfig::default())
            .await
            .expect("resolve"),
        digest
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_are_tried_in_order_before_the_registry() {
    let t = TestNs::new().await;
    let empty = Registry::start(RegistryOpts::default()).await;
    let full = Registry::start(RegistryOpts::default()).await;
    let image = unique_busybox(&unique());
    let digest = full.push("team/app", "2", &image).await;
    // The registry itself is a closed loopback port: only the mirrors can answer.
    let upstream = format!("127.0.0.1:{}", free_port());
    let mut config = RegistryConfig::default();
    config.hosts.insert(
        upstream.clone(),
        RegistryHostConfig {
            mirrors: vec![empty.host.clone(), format!("http://{}", full.host)],
            ..RegistryHostConfig::default()
        },
    );
    let name = format!("{upstream}/team/app:2");
    let info = t
        .client
        .pull_image(&name, &anon(), &config)
        .await
        .expect("pull via mirror");
    assert_eq!(info.repo_digest, digest);
    assert_eq!(info.name, name, "named as asked, not after the mirror");

    // Nobody has it: the first failure that was not a 404 is reported (the dead
    // registry's connection error).
    let missing = format!("{upstream}/team/app:3");
    let err = t
        .client
        .pull_image(&missing, &anon(), &config)
        .await
        .expect_err("missing");
    assert!(matches!(err, PullError::Network { .. }), "{err:?}");
}
