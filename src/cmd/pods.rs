//! `nodelet pods`: the local agent's pods as a table, the way `kubectl get pods -A -o wide`
//! prints them, read from the agent's read-only port.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use k8s_openapi::List;
use k8s_openapi::api::core::v1::Pod;

use crate::pod::status::{human_duration, ready_column, restarts_column, status_column};

/// Renders the table.
pub fn render(pods: &[Pod], now: SystemTime) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for pod in pods {
        let status = pod.status.clone().unwrap_or_default();
        let age = status
            .start_time
            .as_ref()
            .and_then(|t| now.duration_since(SystemTime::from(t.0)).ok())
            .map_or_else(|| "<unknown>".to_owned(), human_duration);
        rows.push(vec![
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
            ready_column(pod),
            status_column(pod),
            restarts_column(pod, now),
            age,
            status.pod_ip.clone().unwrap_or_else(|| "<none>".to_owned()),
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_else(|| "<none>".to_owned()),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

/// Fetches the pods from the agent and prints the table.
///
/// # Errors
/// When the agent can't be reached or answers with something that isn't a PodList.
pub async fn run(address: IpAddr, port: u16) -> anyhow::Result<()> {
    let host = match address {
        IpAddr::V6(a) => format!("[{a}]"),
        IpAddr::V4(a) => a.to_string(),
    };
    let url = format!("http://{host}:{port}/pods");
    let resp = reqwest::get(&url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the agent at {url}: {e}"))?;
    if !resp.status().is_success() {
        anyhow::bail!("{url} answered {}", resp.status());
    }
    let list: List<Pod> = resp
        .json()
        .await
        .map_err(|e| anyhow::anyhow!("{url} did not return a PodList: {e}"))?;
    print!("{}", render(&list.items, SystemTime::now()));
    Ok(())
}
