//! The built-in pod network's ranges switched while pods run
//! ([`PodNetwork::set_pod_cidr`], what the agent does when the Node's `spec.podCIDRs`
//! appear): new pods get addresses from the new range (and a new family), the bridge
//! gets the new gateways beside the old, the running pod keeps its address and its
//! reach, both ranges are masqueraded as one pod network, a restart remembers the old
//! range while a pod holds an address of it, and the last pod takes it all away. Same
//! isolation as the rest of `podnet.rs`.

use std::net::IpAddr;

use super::{
    TestNet, assert_reachable, id, in_node_netns, ip_json_in, link, link_ips, run, run_ok,
};

#[test]
fn a_range_change_applies_to_new_pods_and_keeps_running_ones() {
    in_node_netns(|| async {
        let mut net = TestNet::new();
        let podnet = net.network(true);
        let table = format!("nodelet-pods-{}", net.bridge);
        let old = format!("10.98.{}.0/24", net.octet);
        let new4 = format!("10.97.{}.0/25", net.octet);
        let new6 = format!("fd97:{:x}::/64", net.octet);
        let a = net.netns("pod-a");
        let ia = podnet.setup(&id(1), &a, &[]).await.expect("setup a")[0];
        assert_eq!(ia.to_string(), format!("10.98.{}.2", net.octet));

        // Same ranges: nothing to do.
        assert_eq!(podnet.set_pod_cidr(&old).await.expect("same"), None);
        let was = podnet
            .set_pod_cidr(&format!("{new4},{new6}"))
            .await
            .expect("switch");
        assert_eq!(was.as_deref(), Some(old.as_str()));
        assert_eq!(podnet.pod_cidr(), format!("{new4},{new6}"));
        // A bad value changes nothing.
        assert!(podnet.set_pod_cidr("10.0.0.0/33").await.is_err());
        assert_eq!(podnet.pod_cidr(), format!("{new4},{new6}"));

        // The bridge has the new gateways at once, the old one still.
        let out = run_ok(&["ip", "-j", "addr", "show", "dev", &net.bridge]);
        let bridge: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
        let gateways = link_ips(&bridge[0]);
        for gw in [
            format!("10.98.{}.1/24", net.octet),
            format!("10.97.{}.1/25", net.octet),
            format!("fd97:{:x}::1/64", net.octet),
        ] {
            assert!(gateways.contains(&gw), "{gw} in {gateways:?}");
        }

        let b = net.netns("pod-b");
        let ib = podnet.setup(&id(2), &b, &[]).await.expect("setup b");
        assert_eq!(
            ib.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                format!("10.97.{}.2", net.octet),
                format!("fd97:{:x}::2", net.octet)
            ]
        );
        let eth0 = ip_json_in(&a, &["addr", "show"]);
        assert!(
            link_ips(link(&eth0, "eth0").expect("a's eth0")).contains(&format!("{ia}/24")),
            "the running pod keeps its address"
        );
        // Old and new pods reach each other across the ranges, and the node reaches both.
        assert_reachable(Some(&b), &a, ia);
        assert_reachable(Some(&a), &b, ib[0]);
        assert_reachable(None, &a, ia);

        // One pod network: no masquerade between the ranges, both masqueraded out.
        let rules = run_ok(&["nft", "list", "table", "ip", &table]);
        let both = format!("{{ {new4}, {old} }}");
        assert!(
            rules.contains(&format!("ip saddr {both} ip daddr != {both}")),
            "{rules}"
        );
        let rules6 = run_ok(&["nft", "list", "table", "ip6", &table]);
        assert!(rules6.contains(&format!("ip6 saddr {new6}")), "{rules6}");

        // A restart on the Node's ranges still knows the old one while pod a holds it.
        drop(podnet);
        let again = nodelet_cri::podnet::PodNetwork::new(nodelet_cri::podnet::BuiltinNetwork {
            pod_cidr: format!("{new4},{new6}"),
            ..net.config(24, true)
        })
        .expect("network");
        assert_eq!(
            again
                .retired_cidrs()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            std::slice::from_ref(&old)
        );
        let c = net.netns("pod-c");
        let ic = again.setup(&id(3), &c, &[]).await.expect("setup c");
        assert_eq!(ic[0].to_string(), format!("10.97.{}.3", net.octet));
        let rules = run_ok(&["nft", "list", "table", "ip", &table]);
        assert!(rules.contains(&both), "{rules}");

        again.teardown(&id(1)).await.expect("teardown a");
        assert!(!again.holds(&id(1)).await.expect("holds"));
        assert!(!net.reservation(ia).exists());
        again.teardown(&id(2)).await.expect("teardown b");
        again.teardown(&id(3)).await.expect("teardown c");
        assert!(
            again.retired_cidrs().is_empty(),
            "forgotten with the last pod"
        );
        assert!(
            !run(&["nft", "list", "table", "ip", &table])
                .status
                .success()
        );
        let released: Vec<IpAddr> = ib.into_iter().chain(ic).collect();
        assert!(released.iter().all(|ip| !net.reservation(*ip).exists()));
    });
}
