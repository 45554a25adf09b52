//! The CRI log driver on its own: what `nodelet cri-log <path>` runs, as a binary of
//! the runtime crate, so the runtime's integration tests use the real driver without
//! the agent binary, and a host can point containerd's `binary://` stdio at it.

fn main() {
    nodelet_cri::logs::run_driver();
}
