//! The built-in network's masquerade, in an nftables table of nodelet's own (what the
//! bridge plugin's `ipMasq` does with iptables): traffic from the pod range to anywhere
//! but the pod range and multicast leaves with the node's address. The table is made with
//! the first pod and deleted with the last, and never touches another table.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use super::PodNetError;
use super::ipam::Ipv4Cidr;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The table's name for a network on `bridge` (one table per bridge, so two agents with
/// their own bridges never share one).
pub(super) fn table_name(bridge: &str) -> String {
    format!("nodelet-pods-{bridge}")
}

/// The ruleset, replaced whole in one transaction (add + delete + define is idempotent).
pub(super) fn render(table: &str, cidr: Ipv4Cidr) -> String {
    format!(
        "add table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {cidr} ip daddr != {cidr} ip daddr != 224.0.0.0/4 masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// Installs (or replaces) the table.
pub(super) async fn install(table: &str, cidr: Ipv4Cidr) -> Result<(), PodNetError> {
    run(&render(table, cidr)).await
}

/// Deletes the table; one already gone is fine.
pub(super) async fn remove(table: &str) -> Result<(), PodNetError> {
    run(&format!("add table ip {table}\ndelete table ip {table}\n")).await
}

async fn run(script: &str) -> Result<(), PodNetError> {
    let fail = |detail: String| PodNetError::Nft {
        detail,
        script: script.to_owned(),
    };
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| fail(format!("write to nft: {e}")))?;
    }
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| fail(format!("nft took more than {TIMEOUT:?}")))?
        .map_err(|e| fail(format!("wait for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "nft exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_masquerades_only_traffic_leaving_the_pod_range() {
        let cidr = Ipv4Cidr::parse("10.88.0.0/16").expect("cidr");
        let got = render(&table_name("nodelet0"), cidr);
        assert_eq!(
            got,
            "add table ip nodelet-pods-nodelet0\n\
             delete table ip nodelet-pods-nodelet0\n\
             table ip nodelet-pods-nodelet0 {\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 ip daddr != 224.0.0.0/4 masquerade\n\
             \t}\n\
             }\n"
        );
    }
}
