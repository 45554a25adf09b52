//! Posting the agent's events to the apiserver (`--kubeconfig`), as upstream's
//! kubelet does through client-go's core/v1 event broadcaster
//! (`tools/record/event.go`): the [`EventRecorder`] hands every occurrence to a
//! bounded queue ([`MAX_QUEUED_EVENTS`], dropped when full, so a pod worker never
//! waits), and one task takes them in order through the [`correlator`] (dedup,
//! aggregation, spam filter) and writes each: a create, or a strategic merge patch
//! of `count`/`lastTimestamp`/`message` for one seen before (a create again when the
//! Event is gone). A server that answers with a refusal (a 409 on that create, a
//! namespace being deleted, a 403) gets nothing more for that event; one that does
//! not answer is tried [`MAX_TRIES_PER_EVENT`] times, [`SLEEP_DURATION`] apart, the
//! first wait randomised so nodes don't retry in step. Writes are limited to
//! upstream's `eventRecordQPS`/`eventBurst` defaults besides the client's own limit.
//! The Node's own events are `node.rs`'s.

pub mod correlator;
pub mod node;

use std::future::Future;
use std::num::NonZeroU32;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cluster::{ClusterError, Outage, call};
use crate::events::EventRecorder;
use correlator::{Correlated, Correlator};

/// client-go's `maxQueuedEvents`: occurrences waiting for the sender.
pub const MAX_QUEUED_EVENTS: usize = 1000;
/// client-go's `maxTriesPerEvent`.
pub const MAX_TRIES_PER_EVENT: u32 = 12;
/// client-go's `defaultSleepDuration` between tries.
pub const SLEEP_DURATION: Duration = Duration::from_secs(10);
/// Upstream's `eventRecordQPS` default.
pub const EVENT_RECORD_QPS: u32 = 50;
/// Upstream's `eventBurst` default.
pub const EVENT_BURST: u32 = 100;
/// How often refused events are logged (each would be, upstream).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Where events are written: the apiserver ([`ApiSink`]), or a fake in tests.
pub trait EventSink: Send + Sync {
    /// Creates `event` in its namespace; the server's copy.
    fn create(&self, event: &Event) -> impl Future<Output = Result<Event, ClusterError>> + Send;
    /// Applies strategic merge `patch` to the Event named as `event`.
    fn patch(
        &self,
        event: &Event,
        patch: &Value,
    ) -> impl Future<Output = Result<Event, ClusterError>> + Send;
}

/// The apiserver, through the agent's client.
pub struct ApiSink {
    client: kube::Client,
    limiter: DefaultDirectRateLimiter,
}

impl std::fmt::Debug for ApiSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSink").finish_non_exhaustive()
    }
}

impl ApiSink {
    /// Writes through `client`, at most [`EVENT_RECORD_QPS`] a second after a
    /// burst of [`EVENT_BURST`].
    pub fn new(client: kube::Client) -> Self {
        let quota = Quota::per_second(NonZeroU32::new(EVENT_RECORD_QPS).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(EVENT_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            client,
            limiter: RateLimiter::direct(quota),
        }
    }

    fn api(&self, event: &Event) -> (Api<Event>, String, String) {
        let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
        let name = event.metadata.name.clone().unwrap_or_default();
        (
            Api::namespaced(self.client.clone(), namespace),
            format!("Event/{namespace}/{name}"),
            name,
        )
    }
}

impl EventSink for ApiSink {
    async fn create(&self, event: &Event) -> Result<Event, ClusterError> {
        self.limiter.until_ready().await;
        let (api, object, _) = self.api(event);
        call("create", object, api.create(&PostParams::default(), event)).await
    }

    async fn patch(&self, event: &Event, patch: &Value) -> Result<Event, ClusterError> {
        self.limiter.until_ready().await;
        let (api, object, name) = self.api(event);
        call(
            "patch",
            object,
            api.patch(&name, &PatchParams::default(), &Patch::Strategic(patch)),
        )
        .await
    }
}

/// What a failed write means (client-go's `recordEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer (transport, timeout, an unreadable answer): try again.
    Retry,
    /// The server refused, or the request can't be built: give the event up.
    /// `quiet` for the expected refusals (it exists already; its namespace is
    /// being deleted), which upstream logs at debug level only.
    GiveUp {
        /// An expected refusal.
        quiet: bool,
    },
}

/// Upstream's `NamespaceTerminatingCause`.
const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";

/// Sorts a failed write as client-go does: an answer with a status is final, a
/// request that can't be built is final, anything else is retried.
pub fn failure(error: &ClusterError) -> Failure {
    let ClusterError::Api { source, .. } = error else {
        return Failure::Retry;
    };
    match source {
        kube::Error::Api(status) => {
            let exists = status.reason == "AlreadyExists"
                || (status.reason.is_empty() && status.code == 409);
            let terminating = status
                .details
                .as_ref()
                .is_some_and(|d| d.causes.iter().any(|c| c.reason == NAMESPACE_TERMINATING));
            Failure::GiveUp {
                quiet: exists || terminating,
            }
        }
        kube::Error::BuildRequest(_) | kube::Error::HttpError(_) => {
            Failure::GiveUp { quiet: false }
        }
        _ => Failure::Retry,
    }
}

/// Refusals logged at most once a minute, with how many there were.
#[derive(Debug, Default)]
struct Refusals {
    count: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn refused(&mut self, error: &ClusterError) {
        self.count += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL)
        {
            warn!(%error, refused = self.count, "the apiserver refused an event (not retried)");
            self.count = 0;
            self.logged = Some(Instant::now());
        }
    }
}

/// The task that writes queued events to a sink, one at a time, in order.
pub struct Sender<S> {
    sink: S,
    correlator: Correlator,
    sleep: Duration,
    outage: Outage,
    refusals: Refusals,
}

impl<S> std::fmt::Debug for Sender<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl<S: EventSink> Sender<S> {
    /// A sender to `sink` with client-go's correlator and retry pace.
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            correlator: Correlator::default(),
            sleep: SLEEP_DURATION,
            outage: Outage::default(),
            refusals: Refusals::default(),
        }
    }

    /// Sends what `queue` brings until it closes or `cancel` fires.
    pub async fn run(mut self, mut queue: mpsc::Receiver<Event>, cancel: CancellationToken) {
        loop {
            let event = tokio::select! {
                () = cancel.cancelled() => return,
                event = queue.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.send(event) => {}
            }
        }
    }

    /// client-go's `recordToSink`: correlate, then write with retries.
    pub async fn send(&mut self, event: Event) {
        debug!(
            object = ?event.involved_object.name,
            field_path = ?event.involved_object.field_path,
            reason = ?event.reason,
            message = ?event.message,
            "event"
        );
        let (mut event, patch) = match self.correlator.correlate(event, SystemTime::now()) {
            Correlated::Skip => {
                debug!("event spam filtered: not sent");
                return;
            }
            Correlated::Send { event, patch } => (*event, patch),
        };
        let mut tries = 0;
        while !self.write(&mut event, patch.as_ref()).await {
            tries += 1;
            if tries >= MAX_TRIES_PER_EVENT {
                warn!(
                    name = ?event.metadata.name,
                    reason = ?event.reason,
                    "cannot write an event (retry limit exceeded); dropped"
                );
                return;
            }
            // Randomise the first wait so that nodes don't retry in step.
            let delay = if tries == 1 {
                self.sleep.mul_f64(fastrand::f64())
            } else {
                self.sleep
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// client-go's `recordEvent`: `true` when written or given up, `false` to retry.
    async fn write(&mut self, event: &mut Event, patch: Option<&Value>) -> bool {
        let mut result = None;
        if event.count.unwrap_or(0) > 1
            && let Some(patch) = patch
        {
            result = Some(self.sink.patch(event, patch).await);
        }
        // The Event may be gone (expired, deleted): create it again.
        let gone = matches!(&result, Some(Err(e)) if e.code() == Some(404));
        let result = match result {
            Some(r) if !gone => r,
            _ => {
                event.metadata.resource_version = None;
                self.sink.create(event).await
            }
        };
        match result {
            Ok(written) => {
                self.outage.ok("events");
                self.correlator.update_state(&written);
                true
            }
            Err(error) => match failure(&error) {
                Failure::GiveUp { quiet: true } => {
                    debug!(%error, "the apiserver refused an event (not retried)");
                    true
                }
                Failure::GiveUp { quiet: false } => {
                    self.refusals.refused(&error);
                    true
                }
                Failure::Retry => {
                    self.outage.failed("events", &error);
                    false
                }
            },
        }
    }
}

/// Attaches a queue to `recorder` and returns the task that drains it to the
/// apiserver through `client` (to be spawned); it stops when `cancel` fires.
pub fn start(
    client: kube::Client,
    recorder: &EventRecorder,
    cancel: CancellationToken,
) -> BoxFuture<'static, ()> {
    let (tx, rx) = mpsc::channel(MAX_QUEUED_EVENTS);
    if !recorder.send_to(tx) {
        warn!("the event recorder already sends to the apiserver");
    }
    Box::pin(Sender::new(ApiSink::new(client)).run(rx, cancel))
}

#[cfg(test)]
mod tests;
