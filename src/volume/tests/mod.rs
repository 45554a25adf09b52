//! Tests of the volume manager over [`StaticObjects`] and a token-issuing source, on
//! real directories and real tmpfs mounts, each inside its own temp dir (unmounted on
//! drop, so a failing test leaks nothing). This file holds the fixtures; `api.rs` the
//! configMap, secret and projected cases, `local.rs` the rest.

mod api;
mod local;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ClusterTrustBundleProjection, ConfigMap, ConfigMapProjection, ConfigMapVolumeSource,
    DownwardAPIProjection, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource,
    HostPathVolumeSource, KeyToPath, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, ProjectedVolumeSource, Secret, SecretProjection,
    SecretVolumeSource, ServiceAccountTokenProjection, Volume, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::mount::{TestDir, mount_points};
use super::*;

const UID: &str = "0f1e2d3c-uid";

fn pod(volumes: Vec<Volume>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("prod".into()),
            uid: Some(UID.into()),
            labels: Some([("app".into(), "web".into())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            volumes: Some(volumes),
            service_account_name: Some("builder".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_fs_group(mut pod: Pod, gid: i64) -> Pod {
    if let Some(spec) = pod.spec.as_mut() {
        spec.security_context = Some(PodSecurityContext {
            fs_group: Some(gid),
            ..Default::default()
        });
    }
    pod
}

fn ctx(pod: &Pod) -> PodContext<'_> {
    PodContext {
        pod,
        node_name: "node-1".into(),
        host_ip: "10.0.0.1".into(),
        pod_ips: vec!["10.1.0.5".into()],
        capacity: NodeCapacity {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
        },
    }
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("prod".into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("prod".into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).into(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn cm_volume(name: &str, items: Option<Vec<KeyToPath>>, optional: Option<bool>) -> Volume {
    Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: name.into(),
            items,
            optional,
            default_mode: None,
        }),
        ..Default::default()
    }
}

fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        mode,
    }
}

fn field(path: &str, field_path: &str) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.into(),
        field_ref: Some(ObjectFieldSelector {
            field_path: field_path.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A settable clock shared by the manager and the token issuer.
#[derive(Clone, Debug)]
struct TestClock(Arc<Mutex<SystemTime>>);

impl TestClock {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )))
    }

    fn now(&self) -> SystemTime {
        *self.0.lock().expect("clock")
    }

    fn advance(&self, secs: u64) {
        *self.0.lock().expect("clock") += Duration::from_secs(secs);
    }

    fn clock(&self) -> Clock {
        let me = self.clone();
        Arc::new(move || me.now())
    }
}

/// [`StaticObjects`] plus an apiserver's TokenRequest: tokens `token-1`, `token-2`, ...
#[derive(Debug)]
struct Issuer {
    objects: StaticObjects,
    clock: TestClock,
    requests: Mutex<Vec<TokenRequestSpec>>,
    /// While set, token requests fail as with the apiserver away.
    down: AtomicBool,
}

impl ObjectSource for Issuer {
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<Option<ConfigMap>, ObjectError>> {
        self.objects.config_map(namespace, name)
    }

    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'_, Result<Option<Secret>, ObjectError>> {
        self.objects.secret(namespace, name)
    }

    fn service_account_token(
        &self,
        req: TokenRequestSpec,
    ) -> BoxFuture<'_, Result<IssuedToken, ObjectError>> {
        if self.down.load(Ordering::SeqCst) {
            let e = ObjectError::Unavailable("apiserver down".into());
            return Box::pin(std::future::ready(Err(e)));
        }
        let mut requests = self.requests.lock().expect("requests");
        let expiration = self.clock.now()
            + Duration::from_secs(u64::try_from(req.expiration_seconds).unwrap_or(0));
        requests.push(req);
        let token = format!("token-{}", requests.len());
        Box::pin(std::future::ready(Ok(IssuedToken { token, expiration })))
    }
}

struct Fixture {
    dir: TestDir,
    clock: TestClock,
    issuer: Arc<Issuer>,
    manager: VolumeManager,
}

fn fixture() -> Fixture {
    let dir = TestDir::new();
    let clock = TestClock::new();
    let issuer = Arc::new(Issuer {
        objects: StaticObjects::new(),
        clock: clock.clone(),
        requests: Mutex::new(Vec::new()),
        down: AtomicBool::new(false),
    });
    let manager = VolumeManager::new(
        dir.path().join("pods"),
        issuer.clone() as Arc<dyn ObjectSource>,
    )
    .with_clock(clock.clock());
    Fixture {
        dir,
        clock,
        issuer,
        manager,
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").mode() & 0o7777
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).expect("read")
}

fn data_target(dir: &Path) -> PathBuf {
    dir.join(fs::read_link(dir.join("..data")).expect("..data"))
}

fn visible(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".."))
        .collect();
    names.sort();
    names
}

fn mounted(path: &Path) -> usize {
    mount_points()
        .expect("mountinfo")
        .iter()
        .filter(|p| p.starts_with(path))
        .count()
}

/// The mountinfo line of `path`, for its type and options.
fn mount_line(path: &Path) -> String {
    let want = path.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .unwrap_or_default()
        .to_owned()
}
