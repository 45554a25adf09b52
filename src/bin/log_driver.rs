//! `nodelet-log-driver`: the CRI log driver alone, what `nodelet cri-log` runs.
//!
//! The runc shim starts one driver per container. Started from the agent's binary, a
//! driver costs about 2.8 MB of private memory (debug build), nearly all of it that
//! binary's relocated data (`.data.rel.ro` and `.got`, which the loader writes in
//! every process); this binary holds only the driver, and costs about 0.2 MB. The
//! agent uses it when it is installed beside the `nodelet` binary
//! (`nodelet_cri::logs::driver_binary`).

fn main() {
    nodelet_cri::logs::run_driver();
}
