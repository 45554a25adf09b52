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
//! blobs. Nothing leaves loopback.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use nodelet_cri::containerd::Containerd;
use nodelet_cri::image::{
    ImageBlobs, ImageRuntimeConfig, Layer, OciImage, PullAuth, PullError, RegistryConfig,
    RegistryHostConfig,
};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn unique() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Installs docker-registry and apache2-utils (htpasswd) when missing.
fn ensure_deps() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-registry-deps.sh");
        run(&mut Command::new(script));
    });
}

// ---------------------------------------------------------------------------------
// containerd namespace of one test

struct TestNs {
    socket: String,
    ns: String,
    client: Containerd,
}

impl TestNs {
    async fn new() -> Self {
        let socket =
            std::env::var("NODELET_TEST_CONTAINERD").unwrap_or_else(|_| DEFAULT_SOCKET.to_owned());
        let ns = format!("nodelet-test-{}", unique());
        let client = match Containerd::connect(&socket, &ns).await {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot reach containerd at {socket} ({e}); start a private one with \
                 `scripts/containerd-private.sh start` and set NODELET_TEST_CONTAINERD"
            ),
        };
        Self { socket, ns, client }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["120", "ctr", "--address", &self.socket, "-n", &self.ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    fn ctr_lines(&self, args: &[&str]) -> Vec<String> {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn images(&self) -> Vec<String> {
        self.ctr_lines(&["images", "ls", "-q"])
    }

    /// Active ingests: (ref, bytes so far).
    fn ingests(&self) -> Vec<(String, u64)> {
        self.ctr_lines(&["content", "active"])
            .into_iter()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let r = f.next()?.to_owned();
                let size = f.next()?;
                Some((r, parse_size(size)))
            })
            .collect()
    }

    fn cleanup(&self) -> Vec<String> {
        let mut errors = nodelet_testkit::purge_objects(&self.socket, &self.ns);
        // Partial downloads (kept for resumption) are ingests: abort them.
        if let Err(e) = abort_ingests(&self.socket, &self.ns) {
            errors.push(format!("ingest abort: {e}"));
        }
        errors.extend(nodelet_testkit::remove_namespace(&self.socket, &self.ns));
        errors
    }
}

fn parse_size(s: &str) -> u64 {
    // `ctr content active` prints sizes like 1.049 MB, 524.3 kB, 12 B.
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.trim().parse().unwrap_or(0.0);
    let mult = match unit.trim() {
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => 1.0,
    };
    (n * mult) as u64
}

/// Aborts every ingest of `ns` through the content service.
fn abort_ingests(socket: &str, ns: &str) -> Result<(), String> {
    use containerd_client::services::v1::content_client::ContentClient;
    use containerd_client::services::v1::{AbortRequest, ListStatusesRequest};
    let socket = socket.to_owned();
    let ns = ns.to_owned();
    // Drop runs outside the test's runtime: use a small one of our own.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let c = Containerd::connect(&socket, &ns)
                .await
                .map_err(|e| e.to_string())?;
            let mut content = ContentClient::new(c.channel());
            let statuses = content
                .list_statuses(c.request(ListStatusesRequest { filters: vec![] }))
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .statuses;
            for s in statuses {
                content
                    .abort(c.request(AbortRequest {
                        r#ref: s.r#ref.clone(),
                    }))
                    .await
                    .map_err(|e| format!("{}: {e}", s.r#ref))?;
            }
            Ok(())
        })
    })
    .join()
    .map_err(|_| "abort thread panicked".to_owned())?
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let errors = self.cleanup();
        if !errors.is_empty() {
            if std::thread::panicking() {
                eprintln!(
                    "cleanup of containerd namespace {} failed: {errors:#?}",
                    self.ns
                );
            } else {
                panic!(
                    "cleanup of containerd namespace {} failed: {errors:#?}",
                    self.ns
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// a docker-registry process

#[derive(Default)]
struct RegistryOpts {
    tls: bool,
    /// (user, password) for htpasswd auth.
    htpasswd: Option<(String, String)>,
}

/// `docker-registry serve` on 127.0.0.1:<free port>, killed by PID on drop; its
/// storage, config and certificates live in a temp dir removed on drop.
struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    host: String,
    scheme: &'static str,
    ca: Option<PathBuf>,
    basic: Option<(String, String)>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Registry {
    async fn start(opts: RegistryOpts) -> Self {
        ensure_deps();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            d.join("storage").display()
        );
        let mut ca = None;
        if opts.tls {
            make_certs(d);
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                d.join("server.crt").display(),
                d.join("server.key").display()
            ));
            ca = Some(d.join("ca.crt"));
        }
        if let Some((user, pass)) = &opts.htpasswd {
            let out = run(Command::new("htpasswd").args(["-Bbn", user, pass]));
            std::fs::write(d.join("htpasswd"), &out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: nodelet-test\n    path: {}\n",
                d.join("htpasswd").display()
            ));
        }
        std::fs::write(d.join("config.yml"), config).expect("write config");
        let log = std::fs::File::create(d.join("registry.log")).expect("log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = Self {
            child,
            dir,
            host: format!("127.0.0.1:{port}"),
            scheme: if opts.tls { "https" } else { "http" },
            ca,
            basic: opts.htpasswd,
        };
        registry.wait_ready().await;
        registry
    }

    async fn wait_ready(&mut self) {
        let client = self.client();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited with {status}: {}", self.log());
            }
            if client.get(self.url("/v2/")).send().await.is_ok() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not come up: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.host)
    }

    fn client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).expect("ca");
            b = b.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"));
        }
        b.build().expect("client")
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.basic {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// Pushes `blobs` then the manifest under `tag` (a tag or a digest); returns the
    /// manifest digest.
    async fn push(&self, repo: &str, tag: &str, image: &PushImage) -> String {
        for blob in image.layers.iter().chain([&image.config]) {
            self.push_blob(repo, &blob.data).await;
        }
        self.put_manifest(repo, tag, &image.manifest_type, &image.manifest)
            .await
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) {
        let client = self.client();
        let digest = sha256(data);
        let head = self
            .auth(client.head(self.url(&format!("/v2/{repo}/blobs/{digest}"))))
            .send()
            .await
            .expect("blob head");
        if head.status().is_success() {
            return;
        }
        let start = self
            .auth(client.post(self.url(&format!("/v2/{repo}/blobs/uploads/"))))
            .send()
            .await
            .expect("upload start");
        assert_eq!(
            start.status().as_u16(),
            202,
            "upload start: {:?}",
            start.text().await
        );
        let location = start
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("location")
            .to_owned();
        let location = if location.starts_with("http") {
            location
        } else {
            self.url(&location)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .auth(client.put(format!("{location}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("upload put");
        assert_eq!(
            put.status().as_u16(),
            201,
            "upload put: {:?}",
            put.text().await
        );
    }

    async fn put_manifest(&self, repo: &str, tag: &str, media_type: &str, data: &[u8]) -> String {
        let resp = self
            .auth(
                self.client()
                    .put(self.url(&format!("/v2/{repo}/manifests/{tag}"))),
            )
            .header("content-type", media_type)
            .body(data.to_vec())
            .send()
            .await
            .expect("manifest put");
        assert_eq!(
            resp.status().as_u16(),
            201,
            "manifest put: {:?}",
            resp.text().await
        );
        sha256(data)
    }

    /// A registry config trusting this registry's CA.
    fn config(&self) -> RegistryConfig {
        let mut config = RegistryConfig::default();
        if let Some(ca) = &self.ca {
            config.hosts.insert(
                self.host.clone(),
                RegistryHostConfig {
                    ca_file: Some(ca.clone()),
                    ..RegistryHostConfig::default()
                },
            );
        }
        config
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Our own child, by PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, in `dir`.
fn make_certs(dir: &Path) {
    let p = |f: &str| dir.join(f).display().to_string();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
        "-days",
        "2",
        "-subj",
        "/CN=nodelet test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ]));
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("server.crt"),
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
    ]));
}

// ---------------------------------------------------------------------------------
// images to push

struct PushBlob {
    data: Vec<u8>,
}

struct PushImage {
    manifest_type: String,
    manifest: Vec<u8>,
    config: PushBlob,
    layers: Vec<PushBlob>,
}

impl PushImage {
    fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    fn config_digest(&self) -> String {
        sha256(&self.config.data)
    }

    /// From blobs built in memory.
    fn from_blobs(b: &ImageBlobs) -> Self {
        Self {
            manifest_type: b.manifest.media_type.to_string(),
            manifest: b.manifest.data.clone(),
            config: PushBlob {
                data: b.config.data.clone(),
            },
            layers: b
                .layers
                .iter()
                .map(|l| PushBlob {
                    data: l.data.clone(),
                })
                .collect(),
        }
    }

    /// The same image with gzip-compressed layers (what registries usually serve).
    fn gzipped(&self) -> Self {
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&self.manifest).expect("manifest");
        let mut layers = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let mut gz = Command::new("gzip")
                .args(["-c", "-n", "-1"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("gzip");
            let mut stdin = gz.stdin.take().expect("stdin");
            let data = l.data.clone();
            let writer = std::thread::spawn(move || stdin.write_all(&data));
            let out = gz.wait_with_output().expect("gzip");
            writer.join().expect("join").expect("write");
            manifest["layers"][i]["mediaType"] =
                json!("application/vnd.oci.image.layer.v1.tar+gzip");
            manifest["layers"][i]["digest"] = json!(sha256(&out.stdout));
            manifest["layers"][i]["size"] = json!(out.stdout.len());
            layers.push(PushBlob { data: out.stdout });
        }
        Self {
            manifest_type: self.manifest_type.clone(),
            manifest: serde_json::to_vec(&manifest).expect("json"),
            config: PushBlob {
                data: self.config.data.clone(),
            },
            layers,
        }
    }
}

/// A busybox image unique to this call: the host's static busybox, the usual applet
/// links, and a file naming `marker`, so its layer is content no other test has.
fn unique_busybox(marker: &str) -> PushImage {
    let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox (busybox-static)");
    let mut layer = Layer::new()
        .file("/bin/busybox", busybox, 0o755)
        .file(
            "/etc/nodelet-test",
            format!("{marker}\n").into_bytes(),
            0o644,
        )
        .dir("/tmp", 0o1777);
    for applet in ["sh", "ls", "cat", "echo", "sleep", "httpd", "wget"] {
        layer = layer.symlink(&format!("/bin/{applet}"), "busybox");
    }
    let image = OciImage::new().layer(layer).config(ImageRuntimeConfig {
        cmd: vec!["sh".to_owned()],
        env: vec!["PATH=/bin".to_owned()],
        ..ImageRuntimeConfig::default()
    });
    PushImage::from_blobs(&image.build().expect("build"))
}

/// The image `scripts/build-busybox-image.sh` builds, read from its OCI layout tar.
fn script_busybox(dir: &Path) -> PushImage {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-busybox-image.sh");
    let out = dir.join("busybox.tar");
    run(Command::new(&script)
        .arg(&out)
        .arg("nodelet.local/busybox:1.35"));
    let mut files = std::collections::HashMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&out).expect("open"));
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("read");
        files.insert(path.trim_start_matches("./").to_owned(), data);
    }
    let blob = |d: &str| {
        files
            .get(&format!("blobs/sha256/{}", d.trim_start_matches("sha256:")))
            .cloned()
            .expect("blob in layout")
    };
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).expect("index");
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let manifest_data = blob(manifest_digest);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_data).expect("manifest");
    PushImage {
        manifest_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
        config: PushBlob {
            data: blob(manifest["config"]["digest"].as_str().expect("config")),
        },
        layers: manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| PushBlob {
                data: blob(l["digest"].as_str().expect("layer")),
            })
            .collect(),
        manifest: manifest_data,
    }
}

fn other_arch() -> &'static str {
    if std::env::consts::ARCH == "s390x" {
        "amd64"
    } else {
        "s390x"
    }
}

fn host_arch() -> String {
    oci_spec::image::Arch::default().to_string()
}

fn anon() -> PullAuth {
    PullAuth::anonymous()
}

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

/// Three rounds of pulling a fresh image (from `make(round, tool)`) with nodelet and
/// with `ctr images pull --plain-http` from the same registry, each into a fresh
/// namespace: the durations of ours and of ctr's.
async fn race_against_ctr(
    reg: &Registry,
    repo_prefix: &str,
    make: impl Fn(u64, &str) -> PushImage,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..3u64 {
        for tool in ["nodelet", "ctr"] {
            let t = TestNs::new().await;
            let repo = format!("{repo_prefix}{tool}{round}");
            reg.push(&repo, "v1", &make(round, tool)).await;
            let name = format!("{}/{repo}:v1", reg.host);
            let start = Instant::now();
            if tool == "nodelet" {
                t.client
                    .pull_image(&name, &anon(), &reg.config())
                    .await
                    .expect("pull");
                ours.push(start.elapsed());
            } else {
                let out = t.ctr(&["images", "pull", "--plain-http", &name]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                theirs.push(start.elapsed());
                // ctr pull unpacks too (default snapshotter), as ours does.
                assert!(t.ctr_lines(&["snapshots", "ls"]).len() > 1);
            }
        }
    }
    (ours, theirs)
}

/// Figures: our pull against `ctr images pull --plain-http` from the same registry, each
/// on an image of the same size no one has pulled before. Prints, never fails on time.
#[tokio::test(flavor = "multi_thread")]
async fn pull_time_against_ctr() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = script_busybox(dir.path());
    let script_digest = reg.push("bench/script-busybox", "1.35", &script).await;
    let (mut ours, mut theirs) = race_against_ctr(&reg, "bench/", |round, tool| {
        unique_busybox(&format!("{round}-{tool}-{}", unique()))
    })
    .await;
    // The script's image itself, once each (the second may find the blobs shared).
    let t = TestNs::new().await;
    let name = format!("{}/bench/script-busybox:1.35", reg.host);
    let start = Instant::now();
    let info = t
        .client
        .pull_image(&name, &anon(), &reg.config())
        .await
        .expect("pull");
    let script_ours = start.elapsed();
    assert_eq!(info.repo_digest, script_digest);
    ours.sort();
    theirs.sort();
    eprintln!(
        "FIGURE pull busybox ({} bytes layer) from a loopback registry: nodelet pull_image median {:?} (runs {:?}), ctr images pull --plain-http median {:?} (runs {:?}); scripts/build-busybox-image.sh image via nodelet: {:?}",
        script.layers[0].data.len(),
        ours[1],
        ours,
        theirs[1],
        theirs,
        script_ours
    );
}

/// A 100 MiB image of four 25 MiB layers of incompressible data, unique to `seed`.
fn big_multilayer(seed: u64) -> PushImage {
    // xorshift: cheap, deterministic bytes no layer shares with another.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = |n: usize| {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(n);
        out
    };
    let mut image = OciImage::new();
    for i in 0..4 {
        image = image.layer(Layer::new().file(&format!("/data/blob{i}"), bytes(25 << 20), 0o644));
    }
    PushImage::from_blobs(
        &image
            .config(ImageRuntimeConfig::default())
            .build()
            .expect("build"),
    )
}

/// Figures for a 100 MiB, four-layer image: our pull (layers in parallel) against
/// `ctr images pull --plain-http` from the same registry, three fresh images each.
/// Opt-in, for release builds: `cargo test --release -p nodelet-cri --test pull --
/// --ignored pull_time_100mib`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a figure, not a check: run it in release with --ignored"]
async fn pull_time_100mib_multilayer_against_ctr() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let seed = u64::from(std::process::id());
    let (mut ours, mut theirs) = race_against_ctr(&reg, "bench/big-", |round, tool| {
        big_multilayer(seed + round * 2 + u64::from(tool == "ctr"))
    })
    .await;
    ours.sort();
    theirs.sort();
    eprintln!(
        "FIGURE pull 100 MiB / 4 layers from a loopback registry: nodelet median {:?} (runs {:?}), ctr images pull --plain-http median {:?} (runs {:?})",
        ours[1], ours, theirs[1], theirs
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
