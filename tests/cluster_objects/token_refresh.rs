//! A projected service account token refreshed end to end (issue 12): the apiserver's
//! shortest token life is 600 s, so the kubelet's refresh at 80 % of it comes after
//! 480 s. The test holds the apiserver turn only while its pod starts, then waits
//! beside the other tests of this binary (libtest starts tests in name order, and
//! the crate-root test that runs it sorts first) so it adds as little wall time as it can.

use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::PostParams;

use super::support::cluster::{
    TestNamespace, admin_client, admin_kubeconfig, joined_world, wait_ready,
};
use super::support::{BUSYBOX, wait_for};
use super::{APISERVER, container_id, from_json, sh, wait_running};

/// A JWT's claims.
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The TokenReview of `token`: authenticated, and the pod it is bound to.
async fn review(client: &kube::Client, token: &str) -> (String, String) {
    let review: TokenReview = from_json(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token}
    }));
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("token review");
    let status = reviewed.status.expect("status");
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let extra = status.user.expect("user").extra.unwrap_or_default();
    let one = |k: &str| {
        extra
            .get(k)
            .and_then(|v| v.first().cloned())
            .unwrap_or_else(|| panic!("{k} in {extra:?}"))
    };
    (
        one("authentication.kubernetes.io/pod-name"),
        one("authentication.kubernetes.io/pod-uid"),
    )
}

/// The test's body; `a_bound_token_is_refreshed_at_80_percent_of_its_life` in the
/// crate root runs it (a name in a module would sort after the others).
pub(super) async fn run() {
    let kubeconfig = admin_kubeconfig();
    let turn = APISERVER.lock().await;
    let (_cleanup, mut w) = joined_world(&kubeconfig, &[]).await;
    let client = admin_client(&kubeconfig).await;
    let ns = TestNamespace::new(&client, &kubeconfig, "nlt", &w.id).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    w.start_agent().await;
    wait_ready(&nodes, &w.node, Duration::from_secs(60)).await;
    let pod: Pod = from_json(serde_json::json!({
        "metadata": {"name": "short-token"},
        "spec": {
            "nodeName": w.node, "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "tok", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}}
            ]}}],
            "containers": [{
                "name": "main", "image": BUSYBOX,
                "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                "volumeMounts": [{"name": "tok", "mountPath": "/tok"}]
            }]
        }
    }));
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    let running = wait_running(&pods, "short-token", Duration::from_secs(90)).await;
    let uid = running.metadata.uid.clone().expect("uid");
    let id = container_id(&running).expect("id");
    let first = sh(&w, &id, "cat /tok/token").await;
    let mode = sh(&w, &id, "stat -L -c %a /tok/token").await;
    let seen = Instant::now();
    assert_eq!(
        review(&client, &first).await,
        ("short-token".to_owned(), uid.clone())
    );
    let c = claims(&first);
    let (iat, exp) = (
        c["iat"].as_i64().expect("iat"),
        c["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 600, "{c}");
    // The rest is waiting: the other tests may have the apiserver meanwhile.
    drop(turn);

    let second = wait_for(
        "a new token in the volume",
        Duration::from_secs(600),
        || async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = sh(&w, &id, "cat /tok/token").await;
            (now != first).then_some(now)
        },
    )
    .await;
    let after = seen.elapsed();
    eprintln!("figure: projected token (600 s) replaced {after:?} after it was first read");
    // Not before 80 % of its life (less what passed before the first read), and
    // while it was still valid.
    let issued_ago = |t: i64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        now - t
    };
    let age = issued_ago(iat);
    assert!(
        (480..600).contains(&age),
        "replaced when the first token was {age} s old"
    );
    let c2 = claims(&second);
    let iat2 = c2["iat"].as_i64().expect("iat");
    assert!(iat2 >= iat + 480, "{c} then {c2}");
    assert_eq!(c2["exp"].as_i64().expect("exp") - iat2, 600, "{c2}");
    // The apiserver accepts the new one, bound to the same pod.
    assert_eq!(
        review(&client, &second).await,
        ("short-token".to_owned(), uid)
    );
    assert_eq!(sh(&w, &id, "stat -L -c %a /tok/token").await, mode);
    assert!(w.stop_agent().is_some_and(|s| s.success()));
}
