//! Builds the pause binary (`pause/pause.rs`) that the crate embeds in the pause image.
//!
//! It is compiled with `$RUSTC` directly rather than as a workspace member so that it is
//! always a small, statically linked executable for the target, whatever RUSTFLAGS,
//! profile or linker settings the workspace build uses: the pause image contains nothing
//! but this one file, so it must not need a dynamic loader or libc from the image.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "pause/pause.rs";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=build.rs");

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let target = env::var("TARGET").expect("cargo sets TARGET for build scripts");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out = out_dir.join("pause");

    // Beyond the static-binary flags: fat LTO and a non-PIE static executable trim
    // the binary from about 1.1 MB to about 0.9 MB (most of what is left is glibc).
    let output = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "pause",
        ])
        .args(["-C", "opt-level=s", "-C", "panic=abort"])
        .args([
            "-C",
            "target-feature=+crt-static",
            "-C",
            "relocation-model=static",
        ])
        .args([
            "-C",
            "lto=fat",
            "-C",
            "codegen-units=1",
            "-C",
            "strip=symbols",
        ])
        .args(["--target", &target, "-o"])
        .arg(&out)
        .arg(src)
        .env(
            "NODELET_PAUSE_VERSION",
            env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        )
        // The workspace's own flags are for the workspace; they must not leak in here.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {rustc} to build {src}: {e}"));
    if !output.status.success() {
        panic!(
            "building {src} with {rustc} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
