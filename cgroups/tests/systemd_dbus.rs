//! The systemd cgroup driver against a fake systemd on a private `dbus-daemon`: the
//! fake serves `org.freedesktop.systemd1.Manager` (`StartTransientUnit`,
//! `SetUnitProperties`, `StopUnit`, `ResetFailedUnit`, the `Version` property and the
//! `JobRemoved` signal) over the real D-Bus protocol, makes and removes each slice's
//! directory in a temp-dir fake cgroupfs as systemd would, and records what it got.
//! The tests check the unit names and properties upstream's kubelet (through
//! libcontainer) sends for the QoS hierarchy and pod cgroups, on cgroup v1 and v2.
//!
//! Needs `dbus-daemon` (the `dbus` package); no root, no systemd.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use nodelet_cgroups::manager::{CgroupManager, pod_cgroup_name};
use nodelet_cgroups::values::{QUOTA_PERIOD, pod_resources, qos_level_resources};
use nodelet_cgroups::{CgroupVersion, Layout, QosClass, ResourceConfig, SystemdBus};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};

/// A property as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Prop {
    U64(u64),
    Bool(bool),
    Str(String),
    StrList(Vec<String>),
    Other(String),
}

impl From<&OwnedValue> for Prop {
    fn from(v: &OwnedValue) -> Self {
        match &**v {
            Value::U64(n) => Prop::U64(*n),
            Value::Bool(b) => Prop::Bool(*b),
            Value::Str(s) => Prop::Str(s.to_string()),
            Value::Array(a) => Prop::StrList(
                a.iter()
                    .map(|e| match e {
                        Value::Str(s) => s.to_string(),
                        other => format!("{other:?}"),
                    })
                    .collect(),
            ),
            other => Prop::Other(format!("{other:?}")),
        }
    }
}

/// A Manager call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Start {
        unit: String,
        mode: String,
        props: BTreeMap<String, Prop>,
    },
    Set {
        unit: String,
        runtime: bool,
        props: BTreeMap<String, Prop>,
    },
    Stop {
        unit: String,
        mode: String,
    },
    ResetFailed(String),
}

/// systemd's Manager errors the fake answers with.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum SdError {
    #[zbus(error)]
    ZBus(zbus::Error),
    UnitExists(String),
    NoSuchUnit(String),
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    units: Vec<String>,
    next_job: u32,
}

/// The fake systemd: `dirs` are the hierarchy roots systemd makes a slice's directory
/// in (all of them on v2's single root; on v1 the ones systemd manages, so the others
/// are left to the manager's direct writes).
struct FakeSystemd {
    dirs: Vec<PathBuf>,
    state: Arc<Mutex<State>>,
}

fn props_map(props: Vec<(String, OwnedValue)>) -> BTreeMap<String, Prop> {
    props
        .iter()
        .map(|(n, v)| (n.clone(), Prop::from(v)))
        .collect()
}

/// runc's `ExpandSlice`, the fake's own copy (`a-b.slice` → `a.slice/a-b.slice`).
fn expand(unit: &str) -> PathBuf {
    let name = unit.strip_suffix(".slice").expect("a slice");
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for c in name.split('-') {
        path.push(format!("{prefix}{c}.slice"));
        prefix.push_str(c);
        prefix.push('-');
    }
    path
}

impl FakeSystemd {
    fn job(&self) -> OwnedObjectPath {
        let mut st = self.state.lock().expect("state");
        st.next_job += 1;
        OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{}", st.next_job))
            .expect("job path")
    }

    async fn done(emitter: &SignalEmitter<'_>, job: &OwnedObjectPath, unit: &str) {
        let id: u32 = job
            .as_str()
            .rsplit('/')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("job id");
        Self::job_removed(emitter, id, job.as_ref(), unit, "done")
            .await
            .expect("JobRemoved");
    }
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl FakeSystemd {
    async fn start_transient_unit(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
        mode: String,
        properties: Vec<(String, OwnedValue)>,
        _aux: Vec<(String, Vec<(String, OwnedValue)>)>,
    ) -> Result<OwnedObjectPath, SdError> {
        {
            let mut st = self.state.lock().expect("state");
            st.calls.push(Call::Start {
                unit: name.clone(),
                mode,
                props: props_map(properties),
            });
            if st.units.contains(&name) {
                return Err(SdError::UnitExists(format!("Unit {name} already exists.")));
            }
            st.units.push(name.clone());
        }
        for d in &self.dirs {
            std::fs::create_dir_all(d.join(expand(&name))).expect("slice dir");
        }
        let job = self.job();
        Self::done(&emitter, &job, &name).await;
        Ok(job)
    }

    async fn set_unit_properties(
        &self,
        name: String,
        runtime: bool,
        properties: Vec<(String, OwnedValue)>,
    ) -> Result<(), SdError> {
        let mut st = self.state.lock().expect("state");
        st.calls.push(Call::Set {
            unit: name.clone(),
            runtime,
            props: props_map(properties),
        });
        if !st.units.contains(&name) {
            return Err(SdError::NoSuchUnit(format!("Unit {name} not loaded.")));
        }
        Ok(())
    }

    async fn stop_unit(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
        mode: String,
    ) -> Result<OwnedObjectPath, SdError> {
        {
            let mut st = self.state.lock().expect("state");
            st.calls.push(Call::Stop {
                unit: name.clone(),
                mode,
            });
            if !st.units.contains(&name) {
                return Err(SdError::NoSuchUnit(format!("Unit {name} not loaded.")));
            }
            st.units.retain(|u| *u != name);
        }
        for d in &self.dirs {
            // The kernel's rmdir takes the interface files with it.
            let _ = std::fs::remove_dir_all(d.join(expand(&name)));
        }
        let job = self.job();
        Self::done(&emitter, &job, &name).await;
        Ok(job)
    }

    async fn reset_failed_unit(&self, name: String) {
        let mut st = self.state.lock().expect("state");
        st.calls.push(Call::ResetFailed(name));
    }

    #[zbus(property)]
    async fn version(&self) -> String {
        "252.22-1~deb12u1".to_owned()
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

/// A private `dbus-daemon` (killed by PID on drop) with the fake systemd on it.
struct Bus {
    daemon: Child,
    address: String,
    state: Arc<Mutex<State>>,
    // The fake's connection and the runtime serving it.
    _server: zbus::Connection,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn start_bus(systemd_dirs: Vec<PathBuf>) -> Bus {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("bus");
    let config = dir.path().join("bus.conf");
    std::fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            socket.display()
        ),
    )
    .expect("bus config");
    let mut daemon = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--print-address", "--nofork"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon (apt-get install dbus)");
    let mut address = String::new();
    BufReader::new(daemon.stdout.take().expect("stdout"))
        .read_line(&mut address)
        .expect("bus address");
    let address = address.trim().to_owned();
    assert!(address.starts_with("unix:"), "dbus-daemon said {address:?}");
    let state = Arc::new(Mutex::new(State::default()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let fake = FakeSystemd {
        dirs: systemd_dirs,
        state: state.clone(),
    };
    let server = rt.block_on(async {
        zbus::conn::Builder::address(address.as_str())
            .expect("address")
            .name("org.freedesktop.systemd1")
            .expect("name")
            .serve_at("/org/freedesktop/systemd1", fake)
            .expect("serve")
            .build()
            .await
            .expect("fake systemd on the bus")
    });
    Bus {
        daemon,
        address,
        state,
        _server: server,
        _rt: rt,
        _dir: dir,
    }
}

impl Bus {
    fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("state").calls.clone()
    }

    fn clear(&self) {
        self.state.lock().expect("state").calls.clear();
    }
}

fn list(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
            .collect(),
    )
}

fn pod(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> PodSpec {
    PodSpec {
        containers: vec![Container {
            name: "c".to_owned(),
            resources: Some(ResourceRequirements {
                requests: list(requests),
                limits: list(limits),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn write(path: &Path, s: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, s).expect("write");
}

fn starts(calls: &[Call]) -> Vec<(String, Option<Prop>)> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Start { unit, props, .. } => Some((unit.clone(), props.get("Wants").cloned())),
            _ => None,
        })
        .collect()
}

fn set_props(calls: &[Call], unit: &str) -> BTreeMap<String, Prop> {
    calls
        .iter()
        .rev()
        .find_map(|c| match c {
            Call::Set {
                unit: u,
                props,
                runtime: true,
            } if u == unit => Some(props.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no SetUnitProperties for {unit} in {calls:?}"))
}

fn wants(parent: &str) -> Option<Prop> {
    Some(Prop::StrList(vec![parent.to_owned()]))
}

const UID: &str = "1234-abcd";
const POD_UNIT: &str = "kubepods-pod1234_abcd.slice";
const BURSTABLE_UNIT: &str = "kubepods-burstable-pod5678_ef.slice";

/// Makes the QoS hierarchy, a Guaranteed pod (500m/64Mi, 1024 pids) and a Burstable
/// one through the systemd driver; returns the calls.
fn qos_and_pods(mgr: &CgroupManager, bus: &Bus) -> Vec<Call> {
    let version = mgr.layout().version();
    let kubepods = ResourceConfig {
        cpu_shares: Some(2048),
        memory: Some(3 << 30),
        ..Default::default()
    };
    let guaranteed = pod(&[], &[("cpu", "500m"), ("memory", "64Mi")]);
    let burstable = pod(&[("cpu", "100m")], &[]);
    let qos = qos_level_resources(&[&guaranteed, &burstable], version, false, &[]);
    mgr.ensure_qos_hierarchy("/", &kubepods, &qos)
        .expect("qos hierarchy");
    let mut rc = pod_resources(&guaranteed, true, QUOTA_PERIOD, false);
    rc.pids_limit = Some(1024);
    mgr.create(&pod_cgroup_name("/", QosClass::Guaranteed, UID), &rc)
        .expect("guaranteed pod cgroup");
    mgr.create(
        &pod_cgroup_name("/", QosClass::Burstable, "5678-ef"),
        &pod_resources(&burstable, true, QUOTA_PERIOD, false),
    )
    .expect("burstable pod cgroup");
    bus.calls()
}

fn check_names(calls: &[Call]) {
    assert_eq!(
        starts(calls),
        vec![
            ("kubepods.slice".to_owned(), wants("-.slice")),
            (
                "kubepods-burstable.slice".to_owned(),
                wants("kubepods.slice")
            ),
            (
                "kubepods-besteffort.slice".to_owned(),
                wants("kubepods.slice")
            ),
            (POD_UNIT.to_owned(), wants("kubepods.slice")),
            (BURSTABLE_UNIT.to_owned(), wants("kubepods-burstable.slice")),
        ]
    );
    let Some(Call::Start { mode, props, .. }) = calls.first() else {
        panic!("no StartTransientUnit first: {calls:?}");
    };
    assert_eq!(mode, "replace");
    assert_eq!(props.get("DefaultDependencies"), Some(&Prop::Bool(false)));
    assert_eq!(props.get("MemoryAccounting"), Some(&Prop::Bool(true)));
    assert_eq!(
        props.get("Description"),
        Some(&Prop::Str(
            "libcontainer container kubepods.slice".to_owned()
        ))
    );
}

#[test]
fn v1_slices_through_dbus() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let controllers = ["cpu", "cpuacct", "cpuset", "memory", "pids"];
    for c in controllers {
        std::fs::create_dir_all(root.join(c)).expect("mkdir");
    }
    write(&root.join("cpuset/cpuset.cpus"), "0-1\n");
    write(&root.join("cpuset/cpuset.mems"), "0\n");
    // systemd on v1 manages cpu, cpuacct, memory and pids but not cpuset.
    let bus = start_bus(
        ["cpu", "cpuacct", "memory", "pids"]
            .iter()
            .map(|c| root.join(c))
            .collect(),
    );
    let sd = SystemdBus::connect(&bus.address).expect("connect");
    assert_eq!(sd.version(), Some(252));
    let mgr = CgroupManager::new(Layout::v1_at(root, &controllers)).with_systemd(Arc::new(sd));

    let calls = qos_and_pods(&mgr, &bus);
    check_names(&calls);
    let p = set_props(&calls, POD_UNIT);
    assert_eq!(p.get("CPUShares"), Some(&Prop::U64(512)));
    assert_eq!(p.get("CPUQuotaPerSecUSec"), Some(&Prop::U64(500_000)));
    assert_eq!(p.get("CPUQuotaPeriodUSec"), Some(&Prop::U64(100_000)));
    assert_eq!(p.get("MemoryLimit"), Some(&Prop::U64(67_108_864)));
    assert_eq!(p.get("TasksMax"), Some(&Prop::U64(1024)));
    assert_eq!(p.get("CPUWeight"), None);
    let top = set_props(&calls, "kubepods.slice");
    assert_eq!(top.get("CPUShares"), Some(&Prop::U64(2048)));
    assert_eq!(top.get("MemoryLimit"), Some(&Prop::U64(3 << 30)));
    let be = set_props(&calls, "kubepods-besteffort.slice");
    assert_eq!(be.get("CPUShares"), Some(&Prop::U64(2)));

    // systemd made the slice in its hierarchies, the manager the rest (cpuset), and
    // the values are also written directly, as libcontainer's Set does.
    let rel = "kubepods.slice/kubepods-pod1234_abcd.slice";
    for c in controllers {
        assert!(root.join(c).join(rel).is_dir(), "{c}/{rel}");
    }
    let read = |p: PathBuf| std::fs::read_to_string(&p).expect("read").trim().to_owned();
    assert_eq!(read(root.join("cpu").join(rel).join("cpu.shares")), "512");
    assert_eq!(
        read(root.join("cpuset").join(rel).join("cpuset.cpus")),
        "0-1"
    );
    assert_eq!(
        read(root.join("memory").join(rel).join("memory.limit_in_bytes")),
        "67108864"
    );

    // Again: the units exist (systemd's UnitExists is fine), the values are set.
    bus.clear();
    mgr.create(
        &pod_cgroup_name("/", QosClass::Guaranteed, UID),
        &ResourceConfig::default(),
    )
    .expect("create of an existing slice");
    assert!(matches!(bus.calls().first(), Some(Call::Start { unit, .. }) if unit == POD_UNIT));

    // Destroy stops the unit, then removes what systemd didn't.
    bus.clear();
    for f in ["cpuset.cpus", "cpuset.mems"] {
        std::fs::remove_file(root.join("cpuset").join(rel).join(f)).expect("rm");
    }
    mgr.destroy(&pod_cgroup_name("/", QosClass::Guaranteed, UID))
        .expect("destroy");
    assert_eq!(
        bus.calls(),
        vec![
            Call::Stop {
                unit: POD_UNIT.to_owned(),
                mode: "replace".to_owned()
            },
            Call::ResetFailed(POD_UNIT.to_owned()),
        ]
    );
    for c in controllers {
        assert!(!root.join(c).join(rel).exists(), "{c}/{rel} left");
    }
    // A unit systemd doesn't know is already stopped.
    mgr.destroy(&pod_cgroup_name("/", QosClass::Guaranteed, UID))
        .expect("destroy again");
}

#[test]
fn v2_slices_through_dbus() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(
        &root.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    );
    let bus = start_bus(vec![root.to_owned()]);
    let sd = SystemdBus::connect(&bus.address).expect("connect");
    let mgr = CgroupManager::new(Layout::v2_at(root)).with_systemd(Arc::new(sd));
    assert_eq!(mgr.layout().version(), CgroupVersion::V2);

    let calls = qos_and_pods(&mgr, &bus);
    check_names(&calls);
    let Some(Call::Start { props, .. }) = calls.first() else {
        panic!("no start");
    };
    assert_eq!(props.get("IOAccounting"), Some(&Prop::Bool(true)));
    let p = set_props(&calls, POD_UNIT);
    assert_eq!(p.get("CPUWeight"), Some(&Prop::U64(20)));
    assert_eq!(p.get("CPUQuotaPerSecUSec"), Some(&Prop::U64(500_000)));
    assert_eq!(p.get("MemoryMax"), Some(&Prop::U64(67_108_864)));
    assert_eq!(p.get("TasksMax"), Some(&Prop::U64(1024)));
    assert_eq!(p.get("CPUShares"), None);
    let rel = root.join("kubepods.slice/kubepods-pod1234_abcd.slice");
    let read = |f: &str| std::fs::read_to_string(rel.join(f)).expect("read");
    assert_eq!(read("cpu.weight").trim(), "20");
    assert_eq!(read("cpu.max").trim(), "50000 100000");

    bus.clear();
    mgr.destroy(&pod_cgroup_name("/", QosClass::Guaranteed, UID))
        .expect("destroy");
    assert!(matches!(bus.calls().first(), Some(Call::Stop { unit, .. }) if unit == POD_UNIT));
    assert!(!rel.exists());
}

#[test]
fn errors_name_the_unit_method_and_dbus_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(&root.join("cgroup.controllers"), "cpu memory pids\n");
    let bus = start_bus(vec![root.to_owned()]);
    let sd = SystemdBus::connect(&bus.address).expect("connect");
    let mgr = CgroupManager::new(Layout::v2_at(root)).with_systemd(Arc::new(sd));
    let err = mgr
        .update(
            "/kubepods/besteffort/podnope",
            &ResourceConfig {
                cpu_shares: Some(2),
                ..Default::default()
            },
        )
        .expect_err("systemd doesn't know the unit")
        .to_string();
    for want in [
        "SetUnitProperties",
        "kubepods-besteffort-podnope.slice",
        "org.freedesktop.systemd1.NoSuchUnit",
    ] {
        assert!(err.contains(want), "{want:?} missing from {err:?}");
    }
    let err = SystemdBus::connect("unix:path=/nonexistent/bus")
        .expect_err("no bus")
        .to_string();
    assert!(err.contains("/nonexistent/bus"), "{err}");
}
