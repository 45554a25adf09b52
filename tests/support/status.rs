//! Reading a pod's status and a container's CRI log file.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

/// The state of container `name` in a pod's status.
pub fn container_status<'a>(
    pod: &'a Pod,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

/// The status of a pod condition (`True`/`False`) of type `type_`.
pub fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// The pod's phase.
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The text lines of a CRI log file (timestamp, stream and tag checked and dropped).
pub fn log_lines(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let parsed = nodelet_cri::logs::parse_line(l)?;
            let stream = match parsed.stream {
                nodelet_cri::logs::Stream::Stdout => "stdout",
                nodelet_cri::logs::Stream::Stderr => "stderr",
            };
            Some((stream.to_owned(), parsed.text))
        })
        .collect()
}
