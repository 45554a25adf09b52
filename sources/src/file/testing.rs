//! What the file source's tests (the watching task and the scanner) share: a pod
//! manifest, and the names and UIDs of a snapshot's pods.

use k8s_openapi::api::core::v1::Pod;

/// A one-container pod manifest.
pub(super) fn manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: {image}\n"
    )
}

/// The pods' names, in order.
pub(super) fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

/// The UID of pod `name`.
pub(super) fn uid(pods: &[Pod], name: &str) -> String {
    pods.iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .and_then(|p| p.metadata.uid.clone())
        .unwrap_or_else(|| panic!("no pod {name} in {:?}", names(pods)))
}
