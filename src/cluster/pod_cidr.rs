//! Following the Node's pod CIDR, as upstream's `updatePodCIDR` (run from its node
//! status sync): once the Node has `spec.podCIDRs` (the controller manager assigns them
//! after registration) and they differ from the built-in pod network's current ranges,
//! new pods get addresses from them; running pods keep theirs. `--pod-cidr` holds until
//! then (and standalone). The pod CIDR in use is published for the node view.

use std::sync::Arc;
use std::time::Duration;

use nodelet_cri::runtime::ContainerdRuntime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long after a failed switch it is tried again (upstream retries at its next node
/// status sync, every 10 s by default).
const RETRY: Duration = Duration::from_secs(10);

/// Applies the Node's pod CIDRs seen on `node` (comma-joined, as `--pod-cidr`; `None`
/// until the Node has some) to `runtime`'s built-in network until `cancel`, publishing
/// the pod CIDR in use on `applied`.
pub async fn follow_pod_cidr(
    mut node: watch::Receiver<Option<String>>,
    runtime: Arc<ContainerdRuntime>,
    applied: watch::Sender<Option<String>>,
    cancel: CancellationToken,
) {
    let Some(network) = runtime.builtin_network() else {
        return;
    };
    loop {
        let wanted = node.borrow_and_update().clone();
        let mut retry = false;
        if let Some(cidr) = wanted.filter(|c| applied.borrow().as_deref() != Some(c.as_str())) {
            match network.set_pod_cidr(&cidr).await {
                Ok(original) => {
                    if let Some(original) = original {
                        info!(original_pod_cidr = %original, new_pod_cidr = %cidr, "Updating Pod CIDR");
                    }
                    applied.send_replace(Some(cidr));
                }
                Err(error) => {
                    // An invalid value is not retried: only a new Node value can help.
                    retry = !matches!(error, nodelet_cri::podnet::PodNetError::InvalidCidr { .. });
                    warn!(%error, pod_cidr = %cidr, "failed to update pod CIDR");
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = node.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RETRY), if retry => {}
        }
    }
}
