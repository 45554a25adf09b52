//! The image manager: the one place that decides whether a container's image is
//! pulled (upstream's `pkg/kubelet/images/image_manager.go`): pull policy, the
//! node-wide pull slots (`--serialize-image-pulls`, `--max-parallel-image-pulls`),
//! the registry QPS limiter, the per-pod-and-image back-off, registry credentials
//! (the node's, and the pod's `imagePullSecrets` read through the object source)
//! and the Pulling/Pulled/Failed/BackOff events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};
use nodelet_cri::image::{ImageInfo, PullAuth};
use nodelet_cri::runtime::{Runtime, RuntimeError};
use tracing::{info, warn};

use crate::events::{ObjectEvents, reason as ev};
use crate::image::pull_limit::PullLimiter;
use crate::pod::status::Waiting;
use crate::volume::ObjectSource;

/// The first image pull back-off.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The image pull back-off cap.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How soon a container waiting on `ErrImageNeverPull` is looked at again.
const NEVER_PULL_RETRY: Duration = Duration::from_secs(10);

/// Why a container can't have its image yet: what its status shows, and when to
/// look again.
pub type Held = (Waiting, Duration);

/// The image manager, shared by every pod worker.
#[derive(Debug)]
pub struct ImageManager<R> {
    runtime: Arc<R>,
    /// Registry credentials (the node's `config.json`).
    auth: PullAuth,
    /// How many pulls may run at once; `None` for no limit.
    slots: Option<Arc<tokio::sync::Semaphore>>,
    /// `--registry-qps` / `--registry-burst`.
    limit: PullLimiter,
    /// Back-off per `<pod uid>_<image>` (upstream's key): the delay and its end.
    backoff: Mutex<HashMap<String, (Duration, SystemTime)>>,
    /// Where pods' pull secrets are read.
    objects: Option<Arc<dyn ObjectSource>>,
}

impl<R: Runtime> ImageManager<R> {
    /// A manager pulling through `runtime`.
    pub fn new(
        runtime: Arc<R>,
        auth: PullAuth,
        slots: Option<Arc<tokio::sync::Semaphore>>,
        limit: PullLimiter,
    ) -> Self {
        Self {
            runtime,
            auth,
            slots,
            limit,
            backoff: Mutex::new(HashMap::new()),
            objects: None,
        }
    }

    /// Reads pods' `imagePullSecrets` from `objects`.
    #[must_use]
    pub fn with_objects(mut self, objects: Arc<dyn ObjectSource>) -> Self {
        self.objects = Some(objects);
        self
    }

    /// The credentials for a pull of `pod`'s image: its pull secrets first (upstream's
    /// keyring order), then the node's. A secret that can't be read or parsed is
    /// skipped with a warning event, as upstream does.
    async fn auth_for(&self, pod: &Pod, events: &ObjectEvents) -> PullAuth {
        let refs: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        let Some(objects) = self.objects.as_ref().filter(|_| !refs.is_empty()) else {
            return self.auth.clone();
        };
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut auth = PullAuth::anonymous();
        for name in refs {
            let added = match objects.secret(namespace, &name).await {
                Ok(Some(secret)) => {
                    let data = secret.data.unwrap_or_default();
                    match (data.get(".dockerconfigjson"), data.get(".dockercfg")) {
                        (Some(json), _) => auth
                            .add_dockerconfigjson(&json.0)
                            .map_err(|e| e.to_string()),
                        (None, Some(cfg)) => auth.add_dockercfg(&cfg.0).map_err(|e| e.to_string()),
                        (None, None) => Err("no .dockerconfigjson or .dockercfg key".to_owned()),
                    }
                }
                Ok(None) => Err(format!("secret \"{name}\" not found")),
                Err(e) => Err(e.to_string()),
            };
            if let Err(reason) = added {
                warn!(secret = %name, %reason, "Unable to retrieve pull secret, the image pull may not succeed.");
                events.warning(
                    ev::FAILED_TO_RETRIEVE_PULL_SECRET,
                    &format!(
                        "Unable to retrieve some image pull secrets ({name}); attempting to pull the image may not succeed."
                    ),
                );
            }
        }
        auth.extend(&self.auth);
        auth
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Duration, SystemTime)>> {
        // Plain data: a poisoned lock still holds a usable map.
        self.backoff
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets the back-off of a pod that is gone.
    pub fn forget_pod(&self, pod_uid: &str) {
        let prefix = format!("{pod_uid}_");
        self.backoff().retain(|k, _| !k.starts_with(&prefix));
    }

    /// The image a new instance of `c` runs, by upstream's pull policies: `Never`
    /// uses only what is present (`ErrImageNeverPull`), `IfNotPresent` pulls when
    /// missing, `Always` pulls every time (a pull of a present image re-resolves the
    /// tag and fetches only what changed). A failed pull shows `ErrImagePull` with the
    /// registry's reason, then `ImagePullBackOff` while the back-off (10 s doubling
    /// to 300 s) runs.
    ///
    /// # Errors
    /// The runtime can't be asked whether the image is present.
    pub async fn ensure(
        &self,
        pod: &Pod,
        c: &Container,
        reference: &str,
        events: &ObjectEvents,
        now: SystemTime,
    ) -> Result<Result<ImageInfo, Held>, RuntimeError> {
        let image_ref = c.image.clone().unwrap_or_default();
        let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let present = match self.runtime.image(reference).await {
            Ok(present) => present,
            Err(e) => {
                let message = format!("Failed to inspect image {image_ref:?}: {e}");
                events.warning(ev::FAILED_TO_INSPECT_IMAGE, &message);
                return Err(e);
            }
        };
        match (policy, present) {
            ("Always", _) => {}
            (_, Some(image)) => {
                let message = format!("Container image {image_ref:?} already present on machine");
                events.normal(ev::PULLED_IMAGE, &message);
                return Ok(Ok(image));
            }
            ("Never", None) => {
                let message = format!(
                    "Container image {image_ref:?} is not present with pull policy of Never"
                );
                events.warning(ev::ERR_IMAGE_NEVER_PULL, &message);
                return Ok(Err((
                    waiting("ErrImageNeverPull", message),
                    NEVER_PULL_RETRY,
                )));
            }
            _ => {}
        }
        let pod_uid = pod.metadata.uid.as_deref().unwrap_or("");
        let key = format!("{pod_uid}_{image_ref}");
        let until = self.backoff().get(&key).map(|(_, until)| *until);
        if let Some(until) = until
            && now < until
        {
            let message = format!("Back-off pulling image {image_ref:?}");
            events.normal(ev::BACK_OFF_PULL_IMAGE, &message);
            return Ok(Err((
                waiting("ImagePullBackOff", message),
                until.duration_since(now).unwrap_or_default(),
            )));
        }
        let waited = tokio::time::Instant::now();
        // Held for the pull: a closed semaphore (never closed here) means no limit.
        let _slot = match &self.slots {
            Some(slots) => Arc::clone(slots).acquire_owned().await.ok(),
            None => None,
        };
        info!(container = %c.name, image = %image_ref, "Pulling image");
        events.normal(ev::PULLING_IMAGE, &format!("Pulling image {image_ref:?}"));
        let started = tokio::time::Instant::now();
        // Upstream's throttledImageService: no token, no pull ("pull QPS exceeded").
        let auth = self.auth_for(pod, events).await;
        let pulled = match self.limit.try_accept() {
            Ok(()) => self
                .runtime
                .pull_image(reference, &auth)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match pulled {
            Ok(image) => {
                info!(
                    container = %c.name,
                    image = %image_ref,
                    size = image.size,
                    took = ?started.elapsed(),
                    including_waiting = ?waited.elapsed(),
                    "Successfully pulled image"
                );
                events.normal(
                    ev::PULLED_IMAGE,
                    &format!(
                        "Successfully pulled image {image_ref:?} in {} ({} including waiting). Image size: {} bytes.",
                        crate::events::go_duration_ms(started.elapsed()),
                        crate::events::go_duration_ms(waited.elapsed()),
                        image.size
                    ),
                );
                self.backoff().remove(&key);
                Ok(Ok(image))
            }
            Err(e) => {
                let delay = {
                    let mut backoff = self.backoff();
                    let delay = backoff
                        .get(&key)
                        .map_or(BACKOFF_INITIAL, |(d, _)| (*d * 2).min(BACKOFF_MAX));
                    backoff.insert(key, (delay, now + delay));
                    delay
                };
                warn!(container = %c.name, image = %image_ref, error = %e, "Failed to pull image");
                events.warning(
                    ev::FAILED_TO_PULL_IMAGE,
                    &format!("Failed to pull image {image_ref:?}: {e}"),
                );
                // Look again shortly: the status then moves on to ImagePullBackOff
                // for the rest of the window, as upstream's does.
                Ok(Err((
                    waiting("ErrImagePull", e),
                    Duration::from_secs(1).min(delay),
                )))
            }
        }
    }
}

fn waiting(reason: &str, message: String) -> Waiting {
    Waiting {
        reason: reason.to_owned(),
        message: Some(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::fake_runtime::FakeRuntime;
    use crate::pod::worker::Clock;
    use crate::volume::StaticObjects;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;

    #[tokio::test]
    async fn pull_secrets_come_first_and_a_missing_one_is_an_event() {
        let objects = Arc::new(StaticObjects::new());
        let mut secret = Secret::default();
        secret.metadata.name = Some("regcred".into());
        secret.metadata.namespace = Some("ns".into());
        secret.type_ = Some("kubernetes.io/dockerconfigjson".into());
        let json = br#"{"auths":{"registry.example":{"username":"u","password":"p"}}}"#;
        secret.data = Some([(".dockerconfigjson".to_owned(), ByteString(json.to_vec()))].into());
        objects.set_secret(secret);
        let manager = ImageManager::new(
            Arc::new(FakeRuntime::new(Clock::System)),
            PullAuth::anonymous(),
            None,
            PullLimiter::new(0, 0).expect("no limit"),
        )
        .with_objects(objects);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "registry.example/app"}],
                     "imagePullSecrets": [{"name": "regcred"}, {"name": "missing"}]}
        }))
        .expect("pod");
        let recorder = crate::events::EventRecorder::new("node", 10);
        let auth = manager.auth_for(&pod, &recorder.for_pod(&pod)).await;
        assert_eq!(auth.lookup("registry.example/app").len(), 1);
        let events = recorder.list(None).items;
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].reason.as_deref(),
            Some(ev::FAILED_TO_RETRIEVE_PULL_SECRET)
        );
        assert!(
            events[0]
                .message
                .as_deref()
                .is_some_and(|m| m.contains("missing"))
        );
    }
}
