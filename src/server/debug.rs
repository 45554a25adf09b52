//! The read-only port's debug figures, a nodelet addition (upstream has no equivalent on
//! that port): `GET /debug/containerd/calls`, the gRPC calls made to containerd so far
//! by method, and `GET /debug/memory`, the allocator's heap (glibc's `mallinfo2`: bytes
//! in use, free in the heap, mapped separately). The pod-start bench reads both to
//! report round trips per pod start and where the agent's memory goes.

use axum::Router;
use axum::routing::get;
use serde::Serialize;

/// Builds the debug routes.
pub fn router() -> Router {
    Router::new()
        .route(
            "/debug/containerd/calls",
            get(|| async { super::json(&nodelet_cri::containerd::call_counts()) }),
        )
        .route("/debug/memory", get(|| async { super::json(&heap()) }))
}

/// The heap as the allocator sees it, in bytes.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Heap {
    /// Allocated and in use (small blocks and mapped large ones).
    pub in_use: u64,
    /// Free but kept in the heap (fragmentation, or room for the next burst).
    pub free: u64,
    /// Of `free`, what sits at the top of the heaps and could be given back.
    pub releasable: u64,
    /// Held in separately mapped large blocks.
    pub mapped: u64,
}

/// glibc's `mallinfo2`, over every arena.
pub fn heap() -> Heap {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct; glibc locks
    // each arena while reading it.
    let m = unsafe { libc::mallinfo2() };
    let b = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    Heap {
        in_use: b(m.uordblks) + b(m.hblkhd),
        free: b(m.fordblks),
        releasable: b(m.keepcost),
        mapped: b(m.hblkhd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_grows_with_an_allocation() {
        let before = heap().in_use;
        let block = vec![1u8; 4 << 20];
        let during = heap().in_use;
        assert!(during >= before + (4 << 20) - 4096, "{before} -> {during}");
        drop(block);
    }
}
