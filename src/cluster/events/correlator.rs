//! client-go's `EventCorrelator` (`tools/record/events_cache.go`, v0.37), ported
//! as pure logic with the time passed in: what decides, for each recorded
//! occurrence, whether it reaches the apiserver and as what.
//!
//! - Aggregation: more than [`AGGREGATE_MAX_EVENTS`] - 1 distinct messages of the
//!   same source, object, type and reason within [`AGGREGATE_INTERVAL`] become one
//!   event, `(combined from similar events): <latest message>`.
//! - Dedup: an occurrence seen before (same source, object, type, reason, message)
//!   is a strategic merge patch of the first one's `count`, `lastTimestamp` and
//!   `message`, not a new Event.
//! - Spam filter: a token bucket per source and object (and type): a burst of
//!   [`SPAM_BURST`], then one every 5 minutes; what it refuses is not sent.
//!
//! Each of the three keeps at most [`LRU_CACHE_ENTRIES`] keys, the least recently
//! used forgotten first. The keys are upstream's: fields joined with no separator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;

/// client-go's `maxLruCacheEntries`.
pub const LRU_CACHE_ENTRIES: usize = 4096;
/// client-go's `defaultAggregateMaxEvents`.
pub const AGGREGATE_MAX_EVENTS: usize = 10;
/// client-go's `defaultAggregateIntervalInSeconds`.
pub const AGGREGATE_INTERVAL: Duration = Duration::from_secs(600);
/// client-go's `defaultSpamBurst`.
pub const SPAM_BURST: u32 = 25;
/// client-go's `defaultSpamQPS`: one event every 5 minutes.
pub const SPAM_QPS: f64 = 1.0 / 300.0;

/// The prefix of an aggregated event's message
/// (`EventAggregatorByReasonMessageFunc`).
pub const AGGREGATE_PREFIX: &str = "(combined from similar events): ";

/// What to do with one occurrence.
#[derive(Debug, Clone, PartialEq)]
pub enum Correlated {
    /// The spam filter refused it: send nothing.
    Skip,
    /// Send `event`: create it, or (`count` > 1) apply `patch` to the Event of the
    /// same name.
    Send {
        /// The event as it should be on the server.
        event: Box<Event>,
        /// The strategic merge patch for an occurrence seen before.
        patch: Option<Value>,
    },
}

/// A least-recently-used map of at most `capacity` keys (groupcache's `lru.Cache`).
#[derive(Debug)]
struct Lru<V> {
    capacity: usize,
    entries: HashMap<String, (V, u64)>,
    /// Use tick to key, oldest first.
    order: BTreeMap<u64, String>,
    tick: u64,
}

impl<V> Lru<V> {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    fn touch(&mut self, key: &str) {
        if let Some((_, used)) = self.entries.get_mut(key) {
            self.order.remove(used);
            self.tick += 1;
            *used = self.tick;
            self.order.insert(self.tick, key.to_owned());
        }
    }

    /// The value of `key`, now the most recently used.
    fn get(&mut self, key: &str) -> Option<&mut V> {
        self.touch(key);
        self.entries.get_mut(key).map(|(v, _)| v)
    }

    /// Sets `key` (the most recently used), forgetting the least recently used key
    /// when over capacity.
    fn add(&mut self, key: String, value: V) {
        self.tick += 1;
        if let Some((_, used)) = self.entries.get(&key) {
            self.order.remove(used);
        }
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (value, self.tick));
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

fn source(e: &Event) -> (&str, &str) {
    let s = e.source.as_ref();
    (
        s.and_then(|s| s.component.as_deref()).unwrap_or_default(),
        s.and_then(|s| s.host.as_deref()).unwrap_or_default(),
    )
}

/// client-go's `getEventKey`: the same key is the same event seen again.
pub fn event_key(e: &Event) -> String {
    let (component, host) = source(e);
    let o = &e.involved_object;
    [
        component,
        host,
        o.kind.as_deref().unwrap_or_default(),
        o.namespace.as_deref().unwrap_or_default(),
        o.name.as_deref().unwrap_or_default(),
        o.field_path.as_deref().unwrap_or_default(),
        o.uid.as_deref().unwrap_or_default(),
        o.api_version.as_deref().unwrap_or_default(),
        e.type_.as_deref().unwrap_or_default(),
        e.reason.as_deref().unwrap_or_default(),
        e.message.as_deref().unwrap_or_default(),
    ]
    .concat()
}

/// client-go's `getSpamKey`: source, object (not the field path) and type.
pub fn spam_key(e: &Event) -> String {
    let (component, host) = source(e);
    let o = &e.involved_object;
    [
        component,
        host,
        o.kind.as_deref().unwrap_or_default(),
        o.namespace.as_deref().unwrap_or_default(),
        o.name.as_deref().unwrap_or_default(),
        o.uid.as_deref().unwrap_or_default(),
        o.api_version.as_deref().unwrap_or_default(),
        e.type_.as_deref().unwrap_or_default(),
    ]
    .concat()
}

/// client-go's `EventAggregatorByReasonFunc`: the group key (all but the message
/// and field path) and the key within the group (the message).
pub fn aggregate_keys(e: &Event) -> (String, String) {
    let (component, host) = source(e);
    let o = &e.involved_object;
    let group = [
        component,
        host,
        o.kind.as_deref().unwrap_or_default(),
        o.namespace.as_deref().unwrap_or_default(),
        o.name.as_deref().unwrap_or_default(),
        o.uid.as_deref().unwrap_or_default(),
        o.api_version.as_deref().unwrap_or_default(),
        e.type_.as_deref().unwrap_or_default(),
        e.reason.as_deref().unwrap_or_default(),
        e.reporting_component.as_deref().unwrap_or_default(),
        e.reporting_instance.as_deref().unwrap_or_default(),
    ]
    .concat();
    (group, e.message.clone().unwrap_or_default())
}

/// golang.org/x/time/rate's limiter as client-go's passive token bucket uses it:
/// starts full, refills `qps` a second up to `burst`, `allow` takes one token.
#[derive(Debug, Clone)]
struct TokenBucket {
    tokens: f64,
    last: Option<SystemTime>,
}

impl TokenBucket {
    fn new() -> Self {
        Self {
            tokens: 0.0,
            last: None,
        }
    }

    fn allow(&mut self, now: SystemTime, qps: f64, burst: u32) -> bool {
        let burst = f64::from(burst);
        let tokens = match self.last {
            // The zero time: as good as forever ago.
            None => burst,
            Some(last) => {
                // A clock that went back counts as no time passed.
                let elapsed = now.duration_since(last).unwrap_or_default();
                (self.tokens + elapsed.as_secs_f64() * qps).min(burst)
            }
        };
        if tokens < 1.0 {
            return false;
        }
        self.tokens = tokens - 1.0;
        self.last = Some(now);
        true
    }
}

#[derive(Debug, Clone, Default)]
struct AggregateRecord {
    /// The distinct messages seen in the window.
    messages: BTreeSet<String>,
    last: Option<SystemTime>,
}

/// What the server last said about an event (client-go's `eventLog`).
#[derive(Debug, Clone)]
struct EventLog {
    count: i32,
    first_timestamp: Option<Time>,
    name: Option<String>,
    resource_version: Option<String>,
}

impl EventLog {
    fn of(e: &Event) -> Self {
        Self {
            count: e.count.unwrap_or(0),
            first_timestamp: e.first_timestamp.clone(),
            name: e.metadata.name.clone(),
            resource_version: e.metadata.resource_version.clone(),
        }
    }
}

/// client-go's `EventCorrelator` with its defaults.
#[derive(Debug)]
pub struct Correlator {
    spam: Lru<TokenBucket>,
    aggregates: Lru<AggregateRecord>,
    logs: Lru<EventLog>,
    max_events: usize,
    interval: Duration,
    burst: u32,
    qps: f64,
}

impl Default for Correlator {
    fn default() -> Self {
        Self::new(LRU_CACHE_ENTRIES)
    }
}

fn timestamp(t: SystemTime) -> Option<Time> {
    jiff::Timestamp::try_from(t).ok().map(Time)
}

impl Correlator {
    /// A correlator whose caches keep `cache_entries` keys each.
    pub fn new(cache_entries: usize) -> Self {
        Self {
            spam: Lru::new(cache_entries),
            aggregates: Lru::new(cache_entries),
            logs: Lru::new(cache_entries),
            max_events: AGGREGATE_MAX_EVENTS,
            interval: AGGREGATE_INTERVAL,
            burst: SPAM_BURST,
            qps: SPAM_QPS,
        }
    }

    /// `EventCorrelate`: aggregate, then count, then filter (an occurrence the
    /// filter refuses still counts, as upstream).
    pub fn correlate(&mut self, event: Event, now: SystemTime) -> Correlated {
        let (event, key) = self.aggregate(event, now);
        let (event, patch) = self.observe(event, &key);
        if self.filter(&event, now) {
            return Correlated::Skip;
        }
        Correlated::Send {
            event: Box::new(event),
            patch,
        }
    }

    /// `UpdateState`: remember the server's copy (name, resourceVersion, count) of
    /// an event just written.
    pub fn update_state(&mut self, server: &Event) {
        self.logs.add(event_key(server), EventLog::of(server));
    }

    /// `EventSourceObjectSpamFilter.Filter`: `true` when the object's bucket is empty.
    fn filter(&mut self, event: &Event, now: SystemTime) -> bool {
        let key = spam_key(event);
        let mut bucket = self
            .spam
            .get(&key)
            .cloned()
            .unwrap_or_else(TokenBucket::new);
        let refused = !bucket.allow(now, self.qps, self.burst);
        self.spam.add(key, bucket);
        refused
    }

    /// `EventAggregator.EventAggregate`: the event to go on with and its cache key
    /// (the full key, or the group key for an aggregate).
    fn aggregate(&mut self, event: Event, now: SystemTime) -> (Event, String) {
        let key = event_key(&event);
        let (group, message) = aggregate_keys(&event);
        let mut record = self.aggregates.get(&group).cloned().unwrap_or_default();
        let stale = record.last.is_none_or(|last| {
            now.duration_since(last)
                .is_ok_and(|since| since > self.interval)
        });
        if stale {
            record = AggregateRecord::default();
        }
        record.messages.insert(message);
        record.last = Some(now);
        let distinct = record.messages.len();
        if distinct >= self.max_events {
            // Upstream pops "any" message so the set stops growing (its cache
            // shares the set, so the pop is kept).
            record.messages.pop_first();
        }
        self.aggregates.add(group.clone(), record);
        if distinct < self.max_events {
            return (event, key);
        }
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let at = timestamp(now);
        let aggregate = Event {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(format!(
                    "{}.{nanos:x}",
                    event.involved_object.name.as_deref().unwrap_or_default()
                )),
                namespace: event.metadata.namespace.clone(),
                ..Default::default()
            },
            count: Some(1),
            first_timestamp: at.clone(),
            last_timestamp: at,
            message: Some(format!(
                "{AGGREGATE_PREFIX}{}",
                event.message.as_deref().unwrap_or_default()
            )),
            type_: event.type_.clone(),
            reason: event.reason.clone(),
            source: event.source.clone(),
            involved_object: event.involved_object,
            ..Event::default()
        };
        (aggregate, group)
    }

    /// `eventLogger.eventObserve`: an occurrence seen before takes the first one's
    /// name, resourceVersion and firstTimestamp, one more count, and a patch.
    fn observe(&mut self, mut event: Event, key: &str) -> (Event, Option<Value>) {
        let mut patch = None;
        if let Some(last) = self.logs.get(key).filter(|l| l.count > 0).cloned() {
            event.metadata.name = last.name;
            event.metadata.resource_version = last.resource_version;
            event.first_timestamp = last.first_timestamp;
            event.count = Some(last.count.saturating_add(1));
            let mut old = event.clone();
            old.count = None;
            old.last_timestamp = timestamp(SystemTime::UNIX_EPOCH);
            old.message = None;
            let (old, new) = (
                serde_json::to_value(&old).unwrap_or_default(),
                serde_json::to_value(&event).unwrap_or_default(),
            );
            patch = Some(two_way_merge_patch(&old, &new));
        }
        self.logs.add(key.to_owned(), EventLog::of(&event));
        (event, patch)
    }
}

/// `strategicpatch.CreateTwoWayMergePatch` for what an Event's patch can hold:
/// changed and added fields, `null` for removed ones, maps compared field by field
/// (no list in an Event differs between the two versions here).
pub fn two_way_merge_patch(old: &Value, new: &Value) -> Value {
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return new.clone();
    };
    let mut patch = serde_json::Map::new();
    for (field, value) in new {
        match old.get(field) {
            Some(was) if was == value => {}
            Some(was @ Value::Object(_)) if value.is_object() => {
                let inner = two_way_merge_patch(was, value);
                if inner.as_object().is_some_and(|m| !m.is_empty()) {
                    patch.insert(field.clone(), inner);
                }
            }
            _ => {
                patch.insert(field.clone(), value.clone());
            }
        }
    }
    for field in old.keys() {
        if !new.contains_key(field) {
            patch.insert(field.clone(), Value::Null);
        }
    }
    Value::Object(patch)
}

#[cfg(test)]
mod tests;
