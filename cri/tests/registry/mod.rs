//! What the registry pull tests (`cri/tests/pull.rs`) and the pull benchmark
//! (`cri/benches/pull.rs`) share: Debian's `docker-registry` on 127.0.0.1 (plain
//! HTTP, TLS with a CA made here, htpasswd auth) killed by PID on drop, a small push
//! client, images built to push, and a containerd namespace per test emptied and
//! removed on drop.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nodelet_cri::containerd::Containerd;
use nodelet_cri::image::{
    ImageBlobs, ImageRuntimeConfig, Layer, OciImage, PullAuth, RegistryConfig, RegistryHostConfig,
};
use serde_json::json;
use sha2::{Digest as _, Sha256};

pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn unique() -> String {
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

pub fn run(cmd: &mut Command) -> Output {
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
pub fn ensure_deps() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-registry-deps.sh");
        run(&mut Command::new(script));
    });
}

// ---------------------------------------------------------------------------------
// containerd namespace of one test

pub struct TestNs {
    pub socket: String,
    pub ns: String,
    pub client: Containerd,
}

impl TestNs {
    pub async fn new() -> Self {
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

    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["120", "ctr", "--address", &self.socket, "-n", &self.ns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    pub fn ctr_lines(&self, args: &[&str]) -> Vec<String> {
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

    pub fn images(&self) -> Vec<String> {
        self.ctr_lines(&["images", "ls", "-q"])
    }

    /// Active ingests: (ref, bytes so far).
    pub fn ingests(&self) -> Vec<(String, u64)> {
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

    pub fn cleanup(&self) -> Vec<String> {
        let mut errors = nodelet_testkit::purge_objects(&self.socket, &self.ns);
        // Partial downloads (kept for resumption) are ingests: abort them.
        if let Err(e) = abort_ingests(&self.socket, &self.ns) {
            errors.push(format!("ingest abort: {e}"));
        }
        errors.extend(nodelet_testkit::remove_namespace(&self.socket, &self.ns));
        errors
    }
}

pub fn parse_size(s: &str) -> u64 {
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
pub fn abort_ingests(socket: &str, ns: &str) -> Result<(), String> {
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
pub struct RegistryOpts {
    pub tls: bool,
    /// (user, password) for htpasswd auth.
    pub htpasswd: Option<(String, String)>,
}

/// `docker-registry serve` on 127.0.0.1:<free port>, killed by PID on drop; its
/// storage, config and certificates live in a temp dir removed on drop.
pub struct Registry {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub host: String,
    pub scheme: &'static str,
    pub ca: Option<PathBuf>,
    pub basic: Option<(String, String)>,
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Registry {
    pub async fn start(opts: RegistryOpts) -> Self {
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

    pub async fn wait_ready(&mut self) {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.host)
    }

    pub fn client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).expect("ca");
            b = b.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"));
        }
        b.build().expect("client")
    }

    pub fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.basic {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// Pushes `blobs` then the manifest under `tag` (a tag or a digest); returns the
    /// manifest digest.
    pub async fn push(&self, repo: &str, tag: &str, image: &PushImage) -> String {
        for blob in image.layers.iter().chain([&image.config]) {
            self.push_blob(repo, &blob.data).await;
        }
        self.put_manifest(repo, tag, &image.manifest_type, &image.manifest)
            .await
    }

    pub async fn push_blob(&self, repo: &str, data: &[u8]) {
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

    pub async fn put_manifest(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        data: &[u8],
    ) -> String {
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
    pub fn config(&self) -> RegistryConfig {
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
pub fn make_certs(dir: &Path) {
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

pub struct PushBlob {
    pub data: Vec<u8>,
}

pub struct PushImage {
    pub manifest_type: String,
    pub manifest: Vec<u8>,
    pub config: PushBlob,
    pub layers: Vec<PushBlob>,
}

impl PushImage {
    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    pub fn config_digest(&self) -> String {
        sha256(&self.config.data)
    }

    /// From blobs built in memory.
    pub fn from_blobs(b: &ImageBlobs) -> Self {
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
    pub fn gzipped(&self) -> Self {
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
pub fn unique_busybox(marker: &str) -> PushImage {
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
pub fn script_busybox(dir: &Path) -> PushImage {
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

pub fn other_arch() -> &'static str {
    if std::env::consts::ARCH == "s390x" {
        "amd64"
    } else {
        "s390x"
    }
}

pub fn host_arch() -> String {
    oci_spec::image::Arch::default().to_string()
}

pub fn anon() -> PullAuth {
    PullAuth::anonymous()
}
