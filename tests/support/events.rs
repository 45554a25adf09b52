//! Events as the agent serves them (standalone, its `/events` and
//! `/api/v1/namespaces/<ns>/events`), and waiting for one of a pod.

use std::time::Duration;

use k8s_openapi::List;
use k8s_openapi::api::core::v1::Event;

use super::{World, wait_for};

/// The events at `path` on the agent's read-only port; none while it does not answer.
pub async fn events(w: &World, path: &str) -> Vec<Event> {
    let url = format!("http://127.0.0.1:{}{path}", w.port);
    match reqwest::get(&url).await {
        Ok(r) => r
            .json::<List<Event>>()
            .await
            .map(|l| l.items)
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// Waits (a minute at most) for an event in `default` of pod `pod` (`<pod>-<node>`)
/// with `reason` whose message satisfies `message`, and returns it.
pub async fn wait_event(
    w: &World,
    pod: &str,
    reason: &str,
    message: impl Fn(&str) -> bool,
) -> Event {
    let full = format!("{pod}-{}", w.node);
    let what = format!("a {reason} event of {pod}");
    wait_for(&what, Duration::from_secs(60), || {
        let full = full.clone();
        let message = &message;
        async move {
            events(w, "/api/v1/namespaces/default/events")
                .await
                .into_iter()
                .find(|e| {
                    e.involved_object.name.as_deref() == Some(full.as_str())
                        && e.reason.as_deref() == Some(reason)
                        && e.message.as_deref().is_some_and(message)
                })
        }
    })
    .await
}
