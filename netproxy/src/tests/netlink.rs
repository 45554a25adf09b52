//! The proxier's netlink path on the recording fake: an incremental sync goes out as a
//! batch whose messages are, command for command, the text transaction of the snapshot;
//! a rejected batch is replaced by a full `nft -f` sync.

use super::fixtures::*;
use super::snapshots::scenario;
use crate::nft::exec::{FakeNetlink, NftCall};

fn batches(calls: &[NftCall]) -> Vec<Vec<String>> {
    calls
        .iter()
        .filter_map(|c| match c {
            NftCall::Batch(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn incremental_sync_is_the_snapshot_transaction_over_netlink() {
    let mut p = scenario();
    *p.nft().netlink.lock().expect("lock") = FakeNetlink::Accept;
    assert!(p.sync().await.expect("full sync").full);
    p.slice_updated(&slice(
        "ns3",
        "svc3",
        "svc3-a",
        "p80",
        80,
        &[ep("10.180.0.3", "node-b")],
    ));
    let r = p.sync().await.expect("sync");
    assert!(!r.full && r.netlink_messages > 0, "{r:?}");
    assert_eq!(
        p.nft().scripts().len(),
        1,
        "only the full sync went as text"
    );
    let calls = p.nft().calls.lock().expect("lock").clone();
    let b = batches(&calls);
    assert_eq!(b.len(), 1);
    assert_eq!(r.netlink_messages, b[0].len());
    let text = format!("{}\n", b[0].join("\n"));
    let snapshot = include_str!("snapshots/endpoint_removed.nft");
    assert_eq!(text, snapshot);
}

#[tokio::test]
async fn rejected_batch_falls_back_to_a_full_sync() {
    let mut p = scenario();
    assert!(p.sync().await.expect("full sync").full);
    *p.nft().netlink.lock().expect("lock") = FakeNetlink::Reject;
    p.slice_updated(&slice(
        "ns3",
        "svc3",
        "svc3-a",
        "p80",
        80,
        &[ep("10.180.0.3", "node-b")],
    ));
    let r = p.sync().await.expect("fallback sync");
    assert!(r.full && r.fell_back, "{r:?}");
    let scripts = p.nft().scripts();
    assert_eq!(scripts.len(), 2, "the full sync again, as text");
    assert!(scripts[1].starts_with("add table ip nodelet"));
    assert!(!scripts[1].contains("10.180.0.4"));

    // The next change is incremental again.
    *p.nft().netlink.lock().expect("lock") = FakeNetlink::Accept;
    p.slice_updated(&slice(
        "ns3",
        "svc3",
        "svc3-a",
        "p80",
        80,
        &[ep("10.180.0.4", "node-b")],
    ));
    let r = p.sync().await.expect("sync");
    assert!(!r.full && r.netlink_messages > 0, "{r:?}");
}

#[tokio::test]
async fn without_netlink_the_diff_goes_as_text() {
    let mut p = scenario();
    p.sync().await.expect("full sync");
    p.slice_updated(&slice(
        "ns3",
        "svc3",
        "svc3-a",
        "p80",
        80,
        &[ep("10.180.0.3", "node-b")],
    ));
    let r = p.sync().await.expect("sync");
    assert!(
        !r.full && r.netlink_messages == 0 && r.script_bytes > 0,
        "{r:?}"
    );
    assert_eq!(p.nft().scripts().len(), 2);
}
