//! Registry pull figures: nodelet's `pull_image` against `ctr images pull
//! --plain-http` from the same loopback `docker-registry`, each on images no one has
//! pulled before (busybox-sized, and with `--big`, 100 MiB in four layers). Prints
//! `FIGURE` lines, never fails on time.
//!
//! Needs root, containerd (`NODELET_TEST_CONTAINERD`) and the registry packages
//! (`scripts/test-registry-deps.sh`), as `cri/tests/pull.rs`, whose registry helpers
//! it shares. Run: `cargo bench -p nodelet-cri --bench pull` (add `-- --big` for the
//! 100 MiB image).

#![allow(clippy::unwrap_used)]

#[path = "../tests/registry/mod.rs"]
mod registry;

use std::time::{Duration, Instant};

use nodelet_cri::image::{ImageRuntimeConfig, Layer, OciImage};

use registry::*;

fn main() {
    let big = std::env::args().any(|a| a == "--big");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        pull_time_against_ctr().await;
        if big {
            pull_time_100mib_multilayer_against_ctr().await;
        }
    });
}

/// Three rounds of pulling a fresh image (from `make(round, tool)`) with nodelet and
/// with `ctr images pull --plain-http` from the same registry, each into a fresh
/// namespace: the durations of ours and of ctr's.
async fn race_against_ctr(
    reg: &Registry,
    repo_prefix: &str,
    make: impl Fn(u64, &str) -> PushImage,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..3u64 {
        for tool in ["nodelet", "ctr"] {
            let t = TestNs::new().await;
            let repo = format!("{repo_prefix}{tool}{round}");
            reg.push(&repo, "v1", &make(round, tool)).await;
            let name = format!("{}/{repo}:v1", reg.host);
            let start = Instant::now();
            if tool == "nodelet" {
                t.client
                    .pull_image(&name, &anon(), &reg.config())
                    .await
                    .expect("pull");
                ours.push(start.elapsed());
            } else {
                let out = t.ctr(&["images", "pull", "--plain-http", &name]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                theirs.push(start.elapsed());
                // ctr pull unpacks too (default snapshotter), as ours does.
                assert!(t.ctr_lines(&["snapshots", "ls"]).len() > 1);
            }
        }
    }
    (ours, theirs)
}

/// Figures: our pull against `ctr images pull --plain-http` from the same registry, each
/// on an image of the same size no one has pulled before. Prints, never fails on time.
async fn pull_time_against_ctr() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = script_busybox(dir.path());
    let script_digest = reg.push("bench/script-busybox", "1.35", &script).await;
    let (mut ours, mut theirs) = race_against_ctr(&reg, "bench/", |round, tool| {
        unique_busybox(&format!("{round}-{tool}-{}", unique()))
    })
    .await;
    // The script's image itself, once each (the second may find the blobs shared).
    let t = TestNs::new().await;
    let name = format!("{}/bench/script-busybox:1.35", reg.host);
    let start = Instant::now();
    let info = t
        .client
        .pull_image(&name, &anon(), &reg.config())
        .await
        .expect("pull");
    let script_ours = start.elapsed();
    assert_eq!(info.repo_digest, script_digest);
    ours.sort();
    theirs.sort();
    println!(
        "FIGURE pull busybox ({} bytes layer) from a loopback registry: nodelet pull_image median {:?} (runs {:?}), ctr images pull --plain-http median {:?} (runs {:?}); scripts/build-busybox-image.sh image via nodelet: {:?}",
        script.layers[0].data.len(),
        ours[1],
        ours,
        theirs[1],
        theirs,
        script_ours
    );
}

/// A 100 MiB image of four 25 MiB layers of incompressible data, unique to `seed`.
fn big_multilayer(seed: u64) -> PushImage {
    // xorshift: cheap, deterministic bytes no layer shares with another.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = |n: usize| {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(n);
        out
    };
    let mut image = OciImage::new();
    for i in 0..4 {
        image = image.layer(Layer::new().file(&format!("/data/blob{i}"), bytes(25 << 20), 0o644));
    }
    PushImage::from_blobs(
        &image
            .config(ImageRuntimeConfig::default())
            .build()
            .expect("build"),
    )
}

/// Figures for a 100 MiB, four-layer image: our pull (layers in parallel) against
/// `ctr images pull --plain-http` from the same registry, three fresh images each.
async fn pull_time_100mib_multilayer_against_ctr() {
    let reg = Registry::start(RegistryOpts::default()).await;
    let seed = u64::from(std::process::id());
    let (mut ours, mut theirs) = race_against_ctr(&reg, "bench/big-", |round, tool| {
        big_multilayer(seed + round * 2 + u64::from(tool == "ctr"))
    })
    .await;
    ours.sort();
    theirs.sort();
    println!(
        "FIGURE pull 100 MiB / 4 layers from a loopback registry: nodelet median {:?} (runs {:?}), ctr images pull --plain-http median {:?} (runs {:?})",
        ours[1], ours, theirs[1], theirs
    );
}
