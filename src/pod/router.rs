//! Routes runtime events to the pod they concern.
//!
//! containerd's task events name a container ID only. The router keeps a cache of
//! container (and sandbox) IDs to pod UIDs and, for an ID it hasn't seen, asks the
//! runtime for that one container's labels. It runs as its own task so that a burst
//! of events (hundreds of containers of one pod exiting at once) never holds up the
//! pod manager, which only receives the routed result.

use std::collections::HashMap;
use std::sync::Arc;

use nodelet_cri::runtime::{Runtime, RuntimeEvent};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Entries kept before the cache starts afresh (IDs of removed containers pile up).
const CACHE_LIMIT: usize = 16_384;

/// A runtime event for one pod, or for all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// A container of pod `uid` changed state: its worker looks again.
    Sync {
        /// The pod UID.
        uid: String,
    },
    /// The OOM killer hit container `id` of pod `uid`.
    Oom {
        /// The pod UID.
        uid: String,
        /// The container ID.
        id: String,
    },
    /// The event stream reconnected: every worker looks again.
    Resync,
}

/// Reads `events` until it closes, sending each to `out` routed by pod.
pub async fn run<R: Runtime>(
    runtime: Arc<R>,
    mut events: mpsc::Receiver<RuntimeEvent>,
    out: mpsc::Sender<Routed>,
) {
    let mut owners: HashMap<String, String> = HashMap::new();
    while let Some(ev) = events.recv().await {
        let (id, oom) = match ev {
            RuntimeEvent::ContainerExited { id, .. } => (id, false),
            RuntimeEvent::ContainerOom { id } => (id, true),
            RuntimeEvent::Resync => {
                owners.clear();
                if out.send(Routed::Resync).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let uid = match owners.get(&id) {
            Some(uid) => uid.clone(),
            None => match runtime.owner_of(&id).await {
                Ok(Some(uid)) => {
                    if owners.len() >= CACHE_LIMIT {
                        owners.clear();
                    }
                    owners.insert(id.clone(), uid.clone());
                    uid
                }
                Ok(None) => {
                    debug!(id, "event for a container that is not ours");
                    continue;
                }
                Err(e) => {
                    warn!(id, error = %e, "cannot look up the pod of a container");
                    continue;
                }
            },
        };
        let routed = if oom {
            Routed::Oom { uid, id }
        } else {
            Routed::Sync { uid }
        };
        if out.send(routed).await.is_err() {
            return;
        }
    }
}
