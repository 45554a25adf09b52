//! End-to-end tests of hostile and conflicting manifests (issue 17): a generated corpus
//! of broken and hostile files dropped beside one good pod, with the agent's peak
//! memory asserted; and a second file declaring a running static pod's name.

mod support;

use std::time::Duration;

use support::{BUSYBOX, World, container_status, phase, wait_for};

/// The agent's peak RSS may not pass this while it reads the corpus. Before the
/// manifest limits the same shapes took it to 4 GB. Now each manifest is refused or
/// parsed within `nodelet_manifests::limits`: at most 3 MiB read per file, and at
/// most 200,000 tokens or expanded nodes, which bounds one parse at some tens of MiB
/// (about 25 MiB measured for the largest shapes that pass). Files are parsed one at
/// a time, so the bound is the agent's own footprint with one pod (32 MiB measured
/// in a debug build), plus one worst-case parse, plus the allocator's slack (one
/// arena per blocking thread); measured: 66 MiB. A resource bound, not a timing.
const PEAK_RSS_BOUND_KIB: u64 = 192 * 1024;

fn pod_yaml(name: &str, arg: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    command: [sleep, '{arg}']\n"
    )
}

fn running(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    phase(p) == "Running" && container_status(p, "main").is_some_and(|c| c.ready)
}

/// The hostile corpus, as (file name, content): the shapes of issue 17, several
/// variants of each.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: String, text: String| files.push((name, text.into_bytes()));
    for i in 0..30 {
        // Wide alias bombs: 10^8 nodes from 50 KB, within serde_yaml's own limits.
        let n = 5_000 + i * 300;
        add(
            format!("bomb-{i}.yaml"),
            format!("a: &a [{}x]\nb: [{}*a]\n", "x,".repeat(n), "*a,".repeat(n)),
        );
    }
    for i in 0..20 {
        // Billion laughs, 9 levels of 9.
        let mut text = format!("l0: &l0 [{}]\n", ["lol"; 9].join(","));
        for level in 1..=9 + i % 3 {
            let refs = vec![format!("*l{}", level - 1); 9].join(",");
            text.push_str(&format!("l{level}: &l{level} [{refs}]\n"));
        }
        add(format!("laughs-{i}.yaml"), text);
    }
    for i in 0..20 {
        // Text bombs: one long string referred to many times.
        add(
            format!("textbomb-{i}.yaml"),
            format!(
                "a: &a {}\nb: [{}*a]\n",
                "x".repeat(100_000 + i),
                "*a,".repeat(1_000)
            ),
        );
    }
    for i in 0..20 {
        // 100,000 anchors.
        let text: String = (0..100_000).map(|a| format!("- &a{i}x{a} v\n")).collect();
        add(format!("anchors-{i}.yaml"), text);
    }
    for i in 0..30 {
        // Deep nesting: YAML flow (quadratic in libyaml), JSON, block.
        let depth = 100_000 + i;
        add(
            format!("deep-{i}.yaml"),
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        );
        add(
            format!("deep-{i}.json"),
            format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth)),
        );
        add(
            format!("deepblock-{i}.yaml"),
            format!("{}x\n", "- ".repeat(depth)),
        );
    }
    for i in 0..5 {
        // 10 MB files: a pod padded with a comment, and a pod with a 10 MB annotation.
        add(
            format!("big-{i}.yaml"),
            format!("{}# {}\n", pod_yaml("big", "1"), "x".repeat(10 << 20)),
        );
        add(
            format!("bigannotation-{i}.yaml"),
            pod_yaml("bigannotation", "1").replace(
                "metadata: {name: bigannotation}",
                &format!(
                    "metadata: {{name: bigannotation, annotations: {{a: {}}}}}",
                    "x".repeat(10 << 20)
                ),
            ),
        );
    }
    for i in 0..10 {
        add(format!("empty-{i}.yaml"), "---\n".repeat(10_000));
        add(format!("emptyobjects-{i}.yaml"), "--- {}\n".repeat(10_000));
    }
    for i in 0..5 {
        // Within the size limit, over the apiserver's 256 KiB for annotations.
        add(
            format!("annotation-{i}.yaml"),
            pod_yaml(&format!("annotated-{i}"), "1").replace(
                &format!("metadata: {{name: annotated-{i}}}"),
                &format!(
                    "metadata: {{name: annotated-{i}, annotations: {{a: {}}}}}",
                    "x".repeat(300 << 10)
                ),
            ),
        );
        // A pod with 1,000 containers (all named alike, so it is refused).
        let containers: String = (0..1_000)
            .map(|_| format!("  - name: c\n    image: {BUSYBOX}\n"))
            .collect();
        add(
            format!("thousand-{i}.yaml"),
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: thousand-{i}}}\nspec:\n  containers:\n{containers}"
            ),
        );
    }
    files
}

/// The agent's peak resident set (`VmHWM`), KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// Issue 17: with ~300 hostile files in the manifest directory the good pod runs,
/// every hostile file is refused with its limit named, and the agent's peak memory
/// stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_manifest_directory_costs_bounded_memory() {
    let mut w = World::new().await;
    w.start_agent().await;
    let pid = w.agent.as_ref().expect("agent").id();
    let before = peak_rss_kib(pid);

    let files = corpus();
    for (name, bytes) in &files {
        let tmp = w.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).expect("write corpus file");
        std::fs::rename(&tmp, w.manifests.join(name)).expect("rename corpus file");
    }
    // Written last: the scan that sees it has read every file before it.
    w.write_manifest("zz-good.yaml", &pod_yaml("good", "3600"));
    w.wait_pod("good", "Running", running).await;

    let names: Vec<String> = w
        .pods()
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(
        names,
        [format!("good-{}", w.node)],
        "only the good pod runs"
    );

    let log = std::fs::read_to_string(w.agent_log()).unwrap_or_default();
    let manifests = w.manifests.display().to_string();
    for needle in [
        format!("{manifests}/deep-0.yaml: document 0: nested deeper than 100 levels"),
        format!("{manifests}/deep-0.json: document 0: nested deeper than 100 levels"),
        format!("{manifests}/bomb-0.yaml: document 0: aliases expand to more than 200000 nodes"),
        format!("{manifests}/big-0.yaml: document 0: larger than 3145728 bytes"),
        format!("{manifests}/empty-0.yaml: document 1000: more than 1000 documents"),
        format!("{manifests}/anchors-0.yaml: document 0: more than 200000 values and indicators"),
        "metadata.annotations: Too long: must have at most 262144 bytes".to_owned(),
    ] {
        assert!(log.contains(&needle), "the agent log names {needle:?}");
    }
    let peak = peak_rss_kib(pid);
    eprintln!(
        "agent peak RSS: {} MiB before the corpus, {} MiB after {} files",
        before / 1024,
        peak / 1024,
        files.len()
    );
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "agent peak RSS {peak} KiB over the bound {PEAK_RSS_BOUND_KIB} KiB"
    );
    w.stop_agent();
}

/// Issue 17: a second file declaring a running static pod's name does not replace
/// it; the duplicate is reported naming both files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_name_keeps_the_running_pod() {
    let mut w = World::new().await;
    w.extra_args = vec!["--file-check-frequency".into(), "1s".into()];
    w.start_agent().await;
    w.write_manifest("web.yaml", &pod_yaml("web", "3600"));
    let first = w.wait_pod("web", "Running", running).await;

    // Sorts before web.yaml, so name order alone would pick it.
    w.write_manifest("aaa.yaml", &pod_yaml("web", "3601"));
    let manifests = w.manifests.display().to_string();
    let needle = format!(
        "from {manifests}/aaa.yaml duplicates the one from {manifests}/web.yaml, which keeps it"
    );
    wait_for("the duplicate reported", Duration::from_secs(10), || {
        let (log, needle) = (w.agent_log(), needle.clone());
        async move {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains(&needle)
                .then_some(())
        }
    })
    .await;
    // Later scans (one sees another file appear) keep the first pod, unchanged.
    w.write_manifest("zzz.yaml", &pod_yaml("other", "3600"));
    w.wait_pod("other", "known", |_| true).await;
    let pods: Vec<_> = w
        .pods()
        .await
        .into_iter()
        .filter(|p| p.metadata.name.as_deref() == Some(&format!("web-{}", w.node)))
        .collect();
    assert_eq!(pods.len(), 1, "one pod named web");
    assert_eq!(
        pods[0].metadata.uid, first.metadata.uid,
        "the running pod kept"
    );
    assert!(pods[0].metadata.deletion_timestamp.is_none());
    assert!(running(&pods[0]));
    w.stop_agent();
}
