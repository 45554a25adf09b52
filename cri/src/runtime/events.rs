//! containerd's event stream, turned into the few runtime events pod workers act on.
//! Task exits come from here rather than from polling, so a container's death reaches
//! its pod's status in milliseconds.

use std::time::{Duration, SystemTime};

use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::SubscribeRequest;
use containerd_client::services::v1::events_client::EventsClient;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tracing::{debug, warn};

use crate::containerd::Containerd;

/// Something happened to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The container's main process exited.
    ContainerExited {
        /// containerd container ID.
        id: String,
        /// Exit status.
        exit_code: u32,
        /// When.
        exited_at: Option<SystemTime>,
    },
    /// The kernel OOM killer hit the container's cgroup.
    ContainerOom {
        /// containerd container ID.
        id: String,
    },
    /// The event stream broke and was re-established: events may have been missed,
    /// so every pod should re-list its containers.
    Resync,
}

/// Converts a protobuf timestamp.
pub fn to_system_time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    if secs == 0 && nanos == 0 {
        return None;
    }
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn decode(any: &prost_types::Any) -> Option<RuntimeEvent> {
    // containerd names the type either `containerd.events.TaskExit` or with a URL prefix.
    let name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    match name {
        "containerd.events.TaskExit" => {
            let e = TaskExit::decode(any.value.as_slice()).ok()?;
            // Exits of exec'd processes carry their exec ID; only the init process counts.
            (e.id == e.container_id || e.id.is_empty()).then(|| RuntimeEvent::ContainerExited {
                exited_at: to_system_time(e.exited_at.as_ref()),
                id: e.container_id,
                exit_code: e.exit_status,
            })
        }
        "containerd.events.TaskOOM" => {
            let e = TaskOom::decode(any.value.as_slice()).ok()?;
            Some(RuntimeEvent::ContainerOom { id: e.container_id })
        }
        _ => None,
    }
}

/// Follows containerd's task events in `containerd`'s namespace and forwards them until
/// `tx` closes; reconnects with a back-off when the stream breaks, sending
/// [`RuntimeEvent::Resync`] after each reconnection.
pub async fn follow(containerd: Containerd, tx: mpsc::Sender<RuntimeEvent>) {
    let ns = containerd.namespace().to_owned();
    let filters = ["/tasks/exit", "/tasks/oom"]
        .iter()
        .map(|t| format!("namespace=={ns:?},topic=={t:?}"))
        .collect::<Vec<_>>();
    let mut backoff = Duration::from_millis(200);
    let mut first = true;
    loop {
        let mut client = EventsClient::new(containerd.channel());
        // The stream stays open for good: a year stands in for "no deadline".
        let req = containerd.request_with_timeout(
            SubscribeRequest {
                filters: filters.clone(),
            },
            Duration::from_secs(365 * 24 * 3600),
        );
        match client.subscribe(req).await {
            Ok(resp) => {
                backoff = Duration::from_millis(200);
                if !first && tx.send(RuntimeEvent::Resync).await.is_err() {
                    return;
                }
                let mut stream = resp.into_inner();
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(envelope) => {
                            let Some(event) = envelope.event.as_ref().and_then(decode) else {
                                continue;
                            };
                            debug!(?event, "runtime event");
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                        Err(status) => {
                            warn!(%status, "containerd event stream broke");
                            break;
                        }
                    }
                }
            }
            Err(status) => warn!(%status, "cannot subscribe to containerd events"),
        }
        if tx.is_closed() {
            return;
        }
        first = false;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
