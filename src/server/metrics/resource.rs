//! `/metrics/resource` (upstream's resource metrics: the CPU and memory series
//! metrics-server scrapes, each sample with its measurement time) and
//! `/metrics/cadvisor` (cAdvisor's `container_*` series with its labels: `container`,
//! `id`, `image`, `name`, `namespace`, `pod`; the filesystem series in [`super::cadvisor_fs`]), rendered in the Prometheus text format
//! from the stats summary. Hand-rendered because their samples carry the time of
//! the measurement, which a registry of live instruments does not.

use std::collections::HashMap;
use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::MetricsState;
use super::cadvisor_fs::{FsDevices, FsSeries};
use crate::node::summary::{Summary, Time};
use crate::pod::status_store::PodStatuses;

/// One sample: labels, value, time.
pub(super) type Sample = (Vec<(&'static str, String)>, f64, Option<Time>);

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn millis(t: Time) -> i64 {
    t.0.as_millisecond()
}

pub(super) fn family(out: &mut String, name: &str, help: &str, kind: &str, samples: &[Sample]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value, at) in samples {
        out.push_str(name);
        if !labels.is_empty() {
            let rendered: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(out, "{{{}}}", rendered.join(","));
        }
        let _ = write!(out, " {value}");
        if let Some(at) = at {
            let _ = write!(out, " {}", millis(*at));
        }
        out.push('\n');
    }
}

fn ns_to_s(ns: u64) -> f64 {
    // Exact enough: CPU seconds are reported to nanosecond precision as f64.
    #[allow(clippy::cast_precision_loss)]
    let s = ns as f64 / 1e9;
    s
}

#[allow(clippy::cast_precision_loss)]
pub(super) fn bytes(b: u64) -> f64 {
    b as f64
}

fn start_seconds(t: Time) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let s = t.0.as_second() as f64;
    s
}

/// Upstream's resource metrics from a summary (`None`: the summary could not be made,
/// `resource_scrape_error 1`).
pub fn render_resource(summary: Option<&Summary>) -> String {
    let mut out = String::new();
    let mut c_cpu = Vec::new();
    let mut c_mem = Vec::new();
    let mut c_start = Vec::new();
    let mut p_cpu = Vec::new();
    let mut p_mem = Vec::new();
    let mut n_cpu = Vec::new();
    let mut n_mem = Vec::new();
    if let Some(s) = summary {
        for pod in &s.pods {
            let pl = || {
                vec![
                    ("namespace", pod.pod_ref.namespace.clone()),
                    ("pod", pod.pod_ref.name.clone()),
                ]
            };
            for c in &pod.containers {
                let cl = || {
                    vec![
                        ("container", c.name.clone()),
                        ("namespace", pod.pod_ref.namespace.clone()),
                        ("pod", pod.pod_ref.name.clone()),
                    ]
                };
                if let Some(cpu) = &c.cpu
                    && let Some(ns) = cpu.usage_core_nano_seconds
                {
                    c_cpu.push((cl(), ns_to_s(ns), Some(cpu.time)));
                }
                if let Some(m) = &c.memory
                    && let Some(ws) = m.working_set_bytes
                {
                    c_mem.push((cl(), bytes(ws), Some(m.time)));
                }
                c_start.push((cl(), start_seconds(c.start_time), None));
            }
            if let Some(cpu) = &pod.cpu
                && let Some(ns) = cpu.usage_core_nano_seconds
            {
                p_cpu.push((pl(), ns_to_s(ns), Some(cpu.time)));
            }
            if let Some(m) = &pod.memory
                && let Some(ws) = m.working_set_bytes
            {
                p_mem.push((pl(), bytes(ws), Some(m.time)));
            }
        }
        if let Some(cpu) = &s.node.cpu
            && let Some(ns) = cpu.usage_core_nano_seconds
        {
            n_cpu.push((vec![], ns_to_s(ns), Some(cpu.time)));
        }
        if let Some(m) = &s.node.memory
            && let Some(ws) = m.working_set_bytes
        {
            n_mem.push((vec![], bytes(ws), Some(m.time)));
        }
    }
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        "counter",
        &c_cpu,
    );
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container in bytes",
        "gauge",
        &c_mem,
    );
    family(
        &mut out,
        "container_start_time_seconds",
        "[STABLE] Start time of the container since unix epoch in seconds",
        "gauge",
        &c_start,
    );
    family(
        &mut out,
        "node_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        "counter",
        &n_cpu,
    );
    family(
        &mut out,
        "node_memory_working_set_bytes",
        "[STABLE] Current working set of the node in bytes",
        "gauge",
        &n_mem,
    );
    family(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
        &p_cpu,
    );
    family(
        &mut out,
        "pod_memory_working_set_bytes",
        "[STABLE] Current working set of the pod in bytes",
        "gauge",
        &p_mem,
    );
    let err = if summary.is_some() { 0.0 } else { 1.0 };
    family(
        &mut out,
        "resource_scrape_error",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
        &[(vec![], err, None)],
    );
    out
}

/// cAdvisor's series from a summary; `pods` gives each container's image and ID.
pub fn render_cadvisor(summary: &Summary, pods: &PodStatuses, devices: &FsDevices) -> String {
    // (namespace, pod, container) → (image, container ID without the runtime prefix).
    let mut ids: HashMap<(&str, &str, &str), (&str, &str)> = HashMap::new();
    for pod in pods.values() {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        for c in pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
        {
            let id = c.container_id.as_deref().unwrap_or_default();
            let id = id.split_once("://").map_or(id, |(_, i)| i);
            ids.insert((ns, name, c.name.as_str()), (c.image.as_str(), id));
        }
    }
    let mut cpu = Vec::new();
    let mut ws = Vec::new();
    let mut usage = Vec::new();
    let mut rss = Vec::new();
    let mut start = Vec::new();
    let mut rx = Vec::new();
    let mut tx = Vec::new();
    let mut fs = FsSeries::default();
    let root = || {
        vec![
            ("container", String::new()),
            ("id", "/".to_owned()),
            ("image", String::new()),
            ("name", String::new()),
            ("namespace", String::new()),
            ("pod", String::new()),
        ]
    };
    let mut push_mem = |labels: &dyn Fn() -> Vec<(&'static str, String)>,
                        m: &crate::node::summary::MemoryStats| {
        if let Some(v) = m.working_set_bytes {
            ws.push((labels(), bytes(v), Some(m.time)));
        }
        if let Some(v) = m.usage_bytes {
            usage.push((labels(), bytes(v), Some(m.time)));
        }
        if let Some(v) = m.rss_bytes {
            rss.push((labels(), bytes(v), Some(m.time)));
        }
    };
    if let Some(c) = &summary.node.cpu
        && let Some(ns) = c.usage_core_nano_seconds
    {
        let mut l = root();
        l.insert(1, ("cpu", "total".to_owned()));
        cpu.push((l, ns_to_s(ns), Some(c.time)));
    }
    if let Some(m) = &summary.node.memory {
        push_mem(&root, m);
    }
    if let Some(f) = &summary.node.fs {
        fs.push(root(), devices.node.as_deref(), f);
    }
    if devices.image != devices.node
        && let Some(f) = summary
            .node
            .runtime
            .as_ref()
            .and_then(|r| r.image_fs.as_ref())
    {
        fs.push(root(), devices.image.as_deref(), f);
    }
    for pod in &summary.pods {
        let (ns, name, uid) = (
            pod.pod_ref.namespace.as_str(),
            pod.pod_ref.name.as_str(),
            pod.pod_ref.uid.as_str(),
        );
        let pod_id = format!("/kubepods/pod{uid}");
        let pod_labels = || {
            vec![
                ("container", String::new()),
                ("id", pod_id.clone()),
                ("image", String::new()),
                ("name", String::new()),
                ("namespace", ns.to_owned()),
                ("pod", name.to_owned()),
            ]
        };
        if let Some(c) = &pod.cpu
            && let Some(v) = c.usage_core_nano_seconds
        {
            let mut l = pod_labels();
            l.insert(1, ("cpu", "total".to_owned()));
            cpu.push((l, ns_to_s(v), Some(c.time)));
        }
        if let Some(m) = &pod.memory {
            push_mem(&pod_labels, m);
        }
        if let Some(net) = &pod.network {
            for i in &net.interfaces {
                let mut l = pod_labels();
                l.insert(2, ("interface", i.name.clone()));
                if let Some(v) = i.rx_bytes {
                    rx.push((l.clone(), bytes(v), Some(net.time)));
                }
                if let Some(v) = i.tx_bytes {
                    tx.push((l, bytes(v), Some(net.time)));
                }
            }
        }
        for c in &pod.containers {
            let (image, id) = ids
                .get(&(ns, name, c.name.as_str()))
                .copied()
                .unwrap_or_default();
            let labels = || {
                vec![
                    ("container", c.name.clone()),
                    ("id", format!("{pod_id}/{id}")),
                    ("image", image.to_owned()),
                    ("name", id.to_owned()),
                    ("namespace", ns.to_owned()),
                    ("pod", name.to_owned()),
                ]
            };
            if let Some(cs) = &c.cpu
                && let Some(v) = cs.usage_core_nano_seconds
            {
                let mut l = labels();
                l.insert(1, ("cpu", "total".to_owned()));
                cpu.push((l, ns_to_s(v), Some(cs.time)));
            }
            if let Some(m) = &c.memory {
                push_mem(&labels, m);
            }
            if let Some(f) = &c.rootfs {
                fs.push(labels(), devices.image.as_deref(), f);
            }
            start.push((labels(), start_seconds(c.start_time), None));
        }
    }
    let mut out = String::new();
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        "counter",
        &cpu,
    );
    fs.render(&mut out);
    family(
        &mut out,
        "container_memory_rss",
        "Size of RSS in bytes.",
        "gauge",
        &rss,
    );
    family(
        &mut out,
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        "gauge",
        &usage,
    );
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        "gauge",
        &ws,
    );
    family(
        &mut out,
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        "counter",
        &rx,
    );
    family(
        &mut out,
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        "counter",
        &tx,
    );
    family(
        &mut out,
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        "gauge",
        &start,
    );
    out
}

async fn summary(state: &MetricsState) -> Option<Summary> {
    let view = state.node.borrow().clone()?;
    tokio::task::spawn_blocking(move || view.summary())
        .await
        .ok()
}

fn text(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub(super) async fn resource_handler(State(state): State<MetricsState>) -> Response {
    text(render_resource(summary(&state).await.as_ref()))
}

pub(super) async fn cadvisor_handler(State(state): State<MetricsState>) -> Response {
    match summary(&state).await {
        Some(s) => text(render_cadvisor(&s, &state.pods.borrow(), &state.fs_devices)),
        None => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the agent is not connected to its container runtime yet",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::summary::{
        ContainerStats, CpuStats, MemoryStats, NodeStats, PodReference, PodStats,
    };

    fn at(s: i64) -> Time {
        Time(jiff::Timestamp::from_second(s).expect("time"))
    }

    fn cpu(ns: u64) -> Option<CpuStats> {
        Some(CpuStats {
            time: at(1_700_000_000),
            usage_nano_cores: None,
            usage_core_nano_seconds: Some(ns),
        })
    }

    fn mem(ws: u64) -> Option<MemoryStats> {
        Some(MemoryStats {
            time: at(1_700_000_000),
            available_bytes: None,
            usage_bytes: Some(ws * 2),
            working_set_bytes: Some(ws),
            rss_bytes: None,
            page_faults: None,
            major_page_faults: None,
        })
    }

    fn summary() -> Summary {
        Summary {
            node: NodeStats {
                node_name: "n".into(),
                system_containers: vec![],
                start_time: at(1),
                cpu: cpu(5_000_000_000),
                memory: mem(1024),
                network: None,
                fs: None,
                runtime: None,
                rlimit: None,
            },
            pods: vec![PodStats {
                pod_ref: PodReference {
                    name: "web \"1\"".into(),
                    namespace: "default".into(),
                    uid: "u1".into(),
                },
                start_time: at(2),
                containers: vec![ContainerStats {
                    name: "main".into(),
                    start_time: at(3),
                    cpu: cpu(1_500_000_000),
                    memory: mem(4096),
                    rootfs: None,
                    logs: None,
                }],
                cpu: cpu(1_600_000_000),
                memory: mem(5000),
                network: None,
                volume_stats: vec![],
                ephemeral_storage: None,
                process_stats: None,
            }],
        }
    }

    #[test]
    fn resource_series_as_metrics_server_reads_them() {
        let text = render_resource(Some(&summary()));
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"main\",namespace=\"default\",pod=\"web \\\"1\\\"\"} 1.5 1700000000000\n"
        ), "{text}");
        assert!(
            text.contains("node_cpu_usage_seconds_total 5 1700000000000\n"),
            "{text}"
        );
        assert!(text.contains("node_memory_working_set_bytes 1024 1700000000000\n"));
        assert!(text.contains("container_start_time_seconds{container=\"main\",namespace=\"default\",pod=\"web \\\"1\\\"\"} 3\n"));
        assert!(text.contains("resource_scrape_error 0\n"));
        let failed = render_resource(None);
        assert!(failed.contains("resource_scrape_error 1\n"));
        assert!(failed.contains("# TYPE node_cpu_usage_seconds_total counter\n"));
    }

    #[test]
    fn cadvisor_series_carry_cadvisors_labels() {
        let text = render_cadvisor(&summary(), &PodStatuses::default(), &FsDevices::default());
        assert!(text.contains(
            "container_cpu_usage_seconds_total{container=\"\",cpu=\"total\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"} 5 1700000000000\n"
        ), "{text}");
        assert!(
            text.contains(
                "container_memory_working_set_bytes{container=\"main\",id=\"/kubepods/podu1/\""
            ),
            "{text}"
        );
        assert!(
            text.contains("container_memory_usage_bytes{container=\"\",id=\"/kubepods/podu1\""),
            "{text}"
        );
    }

    #[test]
    fn cadvisor_filesystem_series_name_the_device() {
        let fs = |used: u64| crate::node::summary::FsStats {
            time: at(1_700_000_000),
            available_bytes: Some(900),
            capacity_bytes: Some(1000),
            used_bytes: Some(used),
            inodes_free: Some(90),
            inodes: Some(100),
            inodes_used: Some(10),
        };
        let mut s = summary();
        s.node.fs = Some(fs(100));
        s.node.runtime = Some(crate::node::summary::RuntimeStats {
            image_fs: Some(fs(50)),
            container_fs: None,
        });
        s.pods[0].containers[0].rootfs = Some(fs(7));
        let devices = FsDevices {
            node: Some("/dev/vda1".into()),
            image: Some("/dev/vdb".into()),
        };
        let text = render_cadvisor(&s, &PodStatuses::default(), &devices);
        for line in [
            "container_fs_usage_bytes{container=\"\",device=\"/dev/vda1\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"} 100 1700000000000\n",
            "container_fs_usage_bytes{container=\"\",device=\"/dev/vdb\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"} 50 1700000000000\n",
            "container_fs_limit_bytes{container=\"main\",device=\"/dev/vdb\",id=\"/kubepods/podu1/\",image=\"\",name=\"\",namespace=\"default\",pod=\"web \\\"1\\\"\"} 1000 1700000000000\n",
            "container_fs_inodes_free{container=\"main\",device=\"/dev/vdb\"",
            "# TYPE container_fs_inodes_total gauge\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // One filesystem for both: one root series, as cAdvisor lists each device once.
        let same = FsDevices {
            node: Some("/dev/vda1".into()),
            image: Some("/dev/vda1".into()),
        };
        let text = render_cadvisor(&s, &PodStatuses::default(), &same);
        assert_eq!(
            text.matches("container_fs_usage_bytes{container=\"\"")
                .count(),
            1,
            "{text}"
        );
    }
}
