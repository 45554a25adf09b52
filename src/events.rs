//! Pod, container and node events, as upstream's kubelet records them (`core/v1` `Event`s
//! with `source.component` "kubelet", the reasons of `pkg/kubelet/events/event.go` and
//! the messages of their call sites). The [`EventRecorder`] keeps them in memory and
//! the read-only port serves them as a `v1.EventList` (`GET /events`,
//! `GET /api/v1/namespaces/{ns}/events`); with `--kubeconfig` every occurrence is
//! also handed to the apiserver sender (`crate::cluster::events`) through a bounded
//! queue that never blocks the caller (client-go's broadcaster drops when its queue
//! is full, and so does this).
//!
//! In memory, like client-go's `eventLogger`, an event with the same object, type,
//! reason, message and source as one already kept is not kept twice: its `count`
//! goes up and its `lastTimestamp` moves. Memory is bounded: at most
//! [`EVENT_CAPACITY`] events, the least recently seen dropped first. The apiserver
//! side runs client-go's whole correlator (dedup, aggregation, spam filter).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::List;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::mpsc;

/// How many distinct events the recorder keeps.
pub const EVENT_CAPACITY: usize = 1000;

/// The component events come from.
pub const COMPONENT: &str = "kubelet";

/// Upstream's event reasons (`pkg/kubelet/events/event.go`).
pub mod reason {
    /// A container was created.
    pub const CREATED_CONTAINER: &str = "Created";
    /// A container was started.
    pub const STARTED_CONTAINER: &str = "Started";
    /// A container could not be created or started.
    pub const FAILED_TO_CREATE_CONTAINER: &str = "Failed";
    /// A container is being stopped.
    pub const KILLING_CONTAINER: &str = "Killing";
    /// A crashed container waits out its back-off.
    pub const BACK_OFF_START_CONTAINER: &str = "BackOff";
    /// An image pull began.
    pub const PULLING_IMAGE: &str = "Pulling";
    /// An image was pulled or was already present.
    pub const PULLED_IMAGE: &str = "Pulled";
    /// An image pull failed.
    pub const FAILED_TO_PULL_IMAGE: &str = "Failed";
    /// An image could not be inspected (or its name is invalid).
    pub const FAILED_TO_INSPECT_IMAGE: &str = "InspectFailed";
    /// `imagePullPolicy: Never` and the image is missing.
    pub const ERR_IMAGE_NEVER_PULL: &str = "ErrImageNeverPull";
    /// A failed pull waits out its back-off.
    pub const BACK_OFF_PULL_IMAGE: &str = "BackOff";
    /// The pod sandbox could not be created.
    pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";
    /// The pod sandbox is replaced.
    pub const SANDBOX_CHANGED: &str = "SandboxChanged";
    /// A probe failed or errored.
    pub const CONTAINER_UNHEALTHY: &str = "Unhealthy";
    /// A probe passed with a warning.
    pub const CONTAINER_PROBE_WARNING: &str = "ProbeWarning";
    /// A `postStart` hook failed.
    pub const FAILED_POST_START_HOOK: &str = "FailedPostStartHook";
    /// A `preStop` hook failed.
    pub const FAILED_PRE_STOP_HOOK: &str = "FailedPreStopHook";
    /// The eviction manager evicted the pod (upstream's `Evicted`).
    pub const EVICTED: &str = "Evicted";
    /// A pod's image pull secret could not be read.
    pub const FAILED_TO_RETRIEVE_PULL_SECRET: &str = "FailedToRetrieveImagePullSecret";
    /// The agent started (upstream's `BirthCry`).
    pub const STARTING_KUBELET: &str = "Starting";
    /// The pods' cgroup limits were set (upstream's container manager).
    pub const SUCCESSFUL_NODE_ALLOCATABLE_ENFORCEMENT: &str = "NodeAllocatableEnforced";
    /// The node turned Ready.
    pub const NODE_READY: &str = "NodeReady";
    /// The node turned not Ready.
    pub const NODE_NOT_READY: &str = "NodeNotReady";
    /// The node was uncordoned.
    pub const NODE_SCHEDULABLE: &str = "NodeSchedulable";
    /// The node was cordoned.
    pub const NODE_NOT_SCHEDULABLE: &str = "NodeNotSchedulable";
    /// The node's boot ID changed.
    pub const NODE_REBOOTED: &str = "Rebooted";
    /// The eviction manager starts reclaiming a resource (upstream's eviction
    /// manager's literal).
    pub const EVICTION_THRESHOLD_MET: &str = "EvictionThresholdMet";
}

/// `Normal` or `Warning`, as `core/v1` `Event.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Nothing wrong.
    Normal,
    /// Something to look at.
    Warning,
}

impl EventType {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

#[derive(Debug)]
struct Store {
    /// Least recently seen first.
    events: VecDeque<Event>,
    capacity: usize,
}

/// How often a full sender queue is logged (client-go logs every dropped event; a
/// queue that is full drops many).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The apiserver sender's queue, once attached.
#[derive(Debug)]
struct Sink {
    tx: mpsc::Sender<Event>,
    drops: Mutex<Drops>,
}

/// Events dropped on a full queue since the last log line.
#[derive(Debug, Default)]
struct Drops {
    count: u64,
    logged: Option<Instant>,
}

impl Sink {
    fn send(&self, event: Event) {
        let Err(mpsc::error::TrySendError::Full(event)) = self.tx.try_send(event) else {
            // Sent, or the sender has stopped (the agent is shutting down).
            return;
        };
        let mut drops = self
            .drops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drops.count += 1;
        if drops
            .logged
            .is_none_or(|t| t.elapsed() >= DROP_LOG_INTERVAL)
        {
            tracing::warn!(
                dropped = drops.count,
                reason = event.reason.as_deref().unwrap_or_default(),
                "too many queued events for the apiserver, dropped (kept in memory)"
            );
            drops.count = 0;
            drops.logged = Some(Instant::now());
        }
    }
}

/// Records events in a bounded, deduplicating store; clones share it (and the
/// apiserver queue, once one is attached).
#[derive(Debug, Clone)]
pub struct EventRecorder {
    store: Arc<Mutex<Store>>,
    sink: Arc<OnceLock<Sink>>,
    host: String,
}

/// The recorder bound to one object (a pod, or a container of it): what a pod worker
/// or probe worker hands around.
#[derive(Debug, Clone)]
pub struct ObjectEvents {
    recorder: EventRecorder,
    object: ObjectReference,
}

impl ObjectEvents {
    /// The object the events are about.
    pub fn object(&self) -> &ObjectReference {
        &self.object
    }

    /// Records a `Normal` event.
    pub fn normal(&self, reason: &str, message: &str) {
        self.recorder.record(
            &self.object,
            EventType::Normal,
            reason,
            message,
            SystemTime::now(),
        );
    }

    /// Records a `Warning` event.
    pub fn warning(&self, reason: &str, message: &str) {
        self.recorder.record(
            &self.object,
            EventType::Warning,
            reason,
            message,
            SystemTime::now(),
        );
    }
}

/// The reference to `pod` events name as their `involvedObject`.
pub fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        namespace: Some(
            pod.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
        ),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// Upstream's `GenerateContainerRef` field path: `spec.containers{name}`,
/// `spec.initContainers{name}` or `spec.ephemeralContainers{name}`.
pub fn container_field_path(pod: &Pod, container: &str) -> String {
    let spec = pod.spec.as_ref();
    let is_init = spec
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == container));
    let is_ephemeral = spec
        .and_then(|s| s.ephemeral_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == container));
    let list = if is_init {
        "initContainers"
    } else if is_ephemeral {
        "ephemeralContainers"
    } else {
        "containers"
    };
    format!("spec.{list}{{{container}}}")
}

/// The reference node events name as their `involvedObject`: upstream's `nodeRef`
/// (`v1`, `Node`, the name, no namespace), with the Node's UID once it is known
/// (upstream's `nodeRefWithUID`; its container manager's reference never has one).
pub fn node_reference(name: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Node".to_owned()),
        name: Some(name.to_owned()),
        uid: uid.map(str::to_owned),
        ..ObjectReference::default()
    }
}

/// client-go's `GenerateEventName`: `<object name>.<unix nanos in hex>`, or a random
/// UUID when that is not a valid DNS subdomain (a name near the length limit).
pub fn event_name(object: &str, unix_nanos: u128) -> String {
    let name = format!("{object}.{unix_nanos:x}");
    if is_dns_subdomain(&name) {
        return name;
    }
    let mut bytes = [0u8; 16];
    fastrand::fill(&mut bytes);
    // Version 4, RFC 4122 variant.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// apimachinery's `IsDNS1123Subdomain`.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            b.first()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.last()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn time(t: SystemTime) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    jiff::Timestamp::try_from(t)
        .ok()
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
}

/// client-go's `getEventKey` minus what every event here shares: the same key is
/// the same event seen again.
fn same_event(a: &Event, b: &Event) -> bool {
    let (x, y) = (&a.involved_object, &b.involved_object);
    x.kind == y.kind
        && x.namespace == y.namespace
        && x.name == y.name
        && x.uid == y.uid
        && x.field_path == y.field_path
        && a.type_ == b.type_
        && a.reason == b.reason
        && a.message == b.message
        && a.source == b.source
}

impl EventRecorder {
    /// A recorder for node `host` keeping at most `capacity` events.
    pub fn new(host: impl Into<String>, capacity: usize) -> Self {
        Self {
            store: Arc::new(Mutex::new(Store {
                events: VecDeque::new(),
                capacity: capacity.max(1),
            })),
            sink: Arc::new(OnceLock::new()),
            host: host.into(),
        }
    }

    /// Records an event of this node (upstream's name-only `nodeRef`) now.
    pub fn for_node(&self, type_: EventType, reason: &str, message: &str) {
        self.record(
            &node_reference(&self.host, None),
            type_,
            reason,
            message,
            SystemTime::now(),
        );
    }

    /// From now on every recorded occurrence is also offered to `tx` (the apiserver
    /// sender), without waiting: a full queue drops it. Returns `false` when a
    /// queue was attached already (that one stays).
    pub fn send_to(&self, tx: mpsc::Sender<Event>) -> bool {
        self.sink
            .set(Sink {
                tx,
                drops: Mutex::new(Drops::default()),
            })
            .is_ok()
    }

    /// Events of `pod` itself.
    pub fn for_pod(&self, pod: &Pod) -> ObjectEvents {
        ObjectEvents {
            recorder: self.clone(),
            object: pod_reference(pod),
        }
    }

    /// Events of container `container` of `pod` (the pod, with the container's
    /// field path).
    pub fn for_container(&self, pod: &Pod, container: &str) -> ObjectEvents {
        let mut object = pod_reference(pod);
        object.field_path = Some(container_field_path(pod, container));
        ObjectEvents {
            recorder: self.clone(),
            object,
        }
    }

    /// Records an event at `now`: a new one, or one more of the same.
    pub fn record(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
        now: SystemTime,
    ) {
        let at = time(now);
        let namespace = object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name(
                    object.name.as_deref().unwrap_or_default(),
                    nanos,
                )),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            involved_object: object.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(type_.as_str().to_owned()),
            source: Some(EventSource {
                component: Some(COMPONENT.to_owned()),
                host: Some(self.host.clone()),
            }),
            first_timestamp: at.clone(),
            last_timestamp: at.clone(),
            count: Some(1),
            reporting_component: Some(COMPONENT.to_owned()),
            reporting_instance: Some(self.host.clone()),
            ..Event::default()
        };
        if let Some(sink) = self.sink.get() {
            sink.send(event.clone());
        }
        let mut store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = store.events.iter().rposition(|e| same_event(e, &event))
            && let Some(mut seen) = store.events.remove(i)
        {
            seen.count = Some(seen.count.unwrap_or(1).saturating_add(1));
            seen.last_timestamp = at;
            store.events.push_back(seen);
            return;
        }
        if store.events.len() >= store.capacity {
            store.events.pop_front();
        }
        store.events.push_back(event);
    }

    /// The events kept, of namespace `namespace` or all, oldest first (by first
    /// seen), as a `v1.EventList`.
    pub fn list(&self, namespace: Option<&str>) -> List<Event> {
        let store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut items: Vec<Event> = store
            .events
            .iter()
            .filter(|e| namespace.is_none() || e.metadata.namespace.as_deref() == namespace)
            .cloned()
            .collect();
        items.sort_by(|a, b| a.first_timestamp.cmp(&b.first_timestamp));
        List {
            items,
            metadata: Default::default(),
        }
    }
}

/// Go's `time.Duration.String()` of `d` truncated to milliseconds, as upstream's
/// pull events print durations (`1.234s`, `523ms`, `2m3.5s`, `0s`).
pub fn go_duration_ms(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut secs = s.to_string();
    if frac != 0 {
        let f = format!("{frac:03}");
        secs = format!("{s}.{}", f.trim_end_matches('0'));
    }
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::{Container, PodSpec};

    use super::*;

    fn pod(ns: &str, name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.to_owned()),
                name: Some(name.to_owned()),
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".to_owned(),
                    ..Container::default()
                }],
                init_containers: Some(vec![Container {
                    name: "setup".to_owned(),
                    ..Container::default()
                }]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn container_events_name_the_container_by_field_path() {
        let p = pod("web", "front");
        assert_eq!(container_field_path(&p, "app"), "spec.containers{app}");
        assert_eq!(
            container_field_path(&p, "setup"),
            "spec.initContainers{setup}"
        );
        let r = EventRecorder::new("node-1", 10);
        r.for_container(&p, "setup")
            .normal("Started", "Started container setup");
        let list = r.list(None);
        let e = &list.items[0];
        assert_eq!(e.involved_object.kind.as_deref(), Some("Pod"));
        assert_eq!(e.involved_object.name.as_deref(), Some("front"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("uid-front"));
        assert_eq!(
            e.involved_object.field_path.as_deref(),
            Some("spec.initContainers{setup}")
        );
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        let source = e.source.as_ref().expect("source");
        assert_eq!(source.component.as_deref(), Some("kubelet"));
        assert_eq!(source.host.as_deref(), Some("node-1"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("web"));
        assert!(
            e.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("front."))
        );
    }

    #[test]
    fn the_same_event_again_counts_up_and_moves_last_timestamp() {
        let p = pod("default", "a");
        let r = EventRecorder::new("n", 10);
        let obj = r.for_container(&p, "app").object;
        let msg = "Back-off restarting failed container app in pod a_default(uid-a)";
        r.record(&obj, EventType::Warning, "BackOff", msg, t(0));
        r.record(&obj, EventType::Warning, "BackOff", msg, t(10));
        r.record(&obj, EventType::Warning, "BackOff", msg, t(30));
        let items = r.list(None).items;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].count, Some(3));
        assert_eq!(items[0].first_timestamp, time(t(0)));
        assert_eq!(items[0].last_timestamp, time(t(30)));
    }

    #[test]
    fn a_different_message_reason_type_or_object_is_a_new_event() {
        let p = pod("default", "a");
        let r = EventRecorder::new("n", 10);
        let app = r.for_container(&p, "app").object;
        let setup = r.for_container(&p, "setup").object;
        r.record(
            &app,
            EventType::Warning,
            "Unhealthy",
            "Liveness probe failed: x",
            t(0),
        );
        r.record(
            &app,
            EventType::Warning,
            "Unhealthy",
            "Liveness probe failed: y",
            t(1),
        );
        r.record(
            &app,
            EventType::Normal,
            "Unhealthy",
            "Liveness probe failed: y",
            t(2),
        );
        r.record(
            &app,
            EventType::Warning,
            "Failed",
            "Liveness probe failed: y",
            t(3),
        );
        r.record(
            &setup,
            EventType::Warning,
            "Unhealthy",
            "Liveness probe failed: y",
            t(4),
        );
        let items = r.list(None).items;
        assert_eq!(items.len(), 5);
        assert!(items.iter().all(|e| e.count == Some(1)));
    }

    #[test]
    fn memory_is_bounded_and_the_least_recently_seen_goes_first() {
        let p = pod("default", "a");
        let r = EventRecorder::new("n", 3);
        let obj = r.for_pod(&p).object;
        for i in 0..3 {
            r.record(&obj, EventType::Normal, "R", &format!("m{i}"), t(i));
        }
        // m0 seen again: now the most recent, so m1 is dropped next.
        r.record(&obj, EventType::Normal, "R", "m0", t(10));
        r.record(&obj, EventType::Normal, "R", "m3", t(11));
        let mut msgs: Vec<String> = r
            .list(None)
            .items
            .into_iter()
            .filter_map(|e| e.message)
            .collect();
        msgs.sort();
        assert_eq!(msgs, ["m0", "m2", "m3"]);
    }

    #[test]
    fn list_filters_by_namespace() {
        let r = EventRecorder::new("n", 10);
        r.for_pod(&pod("a", "p1")).normal("R", "m");
        r.for_pod(&pod("b", "p2")).warning("R", "m");
        assert_eq!(r.list(None).items.len(), 2);
        let only_b = r.list(Some("b")).items;
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].involved_object.name.as_deref(), Some("p2"));
        assert!(r.list(Some("c")).items.is_empty());
    }

    #[test]
    fn a_clone_shares_the_store() {
        let r = EventRecorder::new("n", 10);
        let c = r.clone();
        c.for_pod(&pod("a", "p")).normal("R", "m");
        assert_eq!(r.list(None).items.len(), 1);
    }

    #[test]
    fn event_names_are_the_object_and_hex_nanos_or_a_uuid() {
        assert_eq!(event_name("web-node-1", 0x18ee_26e7), "web-node-1.18ee26e7");
        // Too long for a DNS subdomain: a random UUID, as client-go.
        let long = "a".repeat(252);
        let name = event_name(&long, 1);
        assert_eq!(name.len(), 36, "{name}");
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "version 4: {name}");
        assert_ne!(event_name(&long, 1), name);
        assert!(is_dns_subdomain("a.b-c.0"));
        assert!(!is_dns_subdomain("A.b") && !is_dns_subdomain("a..b") && !is_dns_subdomain("-a"));
    }

    #[test]
    fn durations_print_as_go_truncated_to_milliseconds() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration_ms(Duration::from_micros(999)), "0s");
        assert_eq!(go_duration_ms(ms(523)), "523ms");
        assert_eq!(go_duration_ms(ms(1000)), "1s");
        assert_eq!(go_duration_ms(Duration::from_micros(1_234_567)), "1.234s");
        assert_eq!(go_duration_ms(ms(1_500)), "1.5s");
        assert_eq!(go_duration_ms(ms(123_500)), "2m3.5s");
        assert_eq!(go_duration_ms(ms(3_600_000)), "1h0m0s");
    }
}
