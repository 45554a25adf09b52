//! The service under the agent's one `kube::Client` when certificates are managed:
//! each request goes to the inner client of the certificate in use at the moment it
//! is sent, so every clone of the outer client follows a rotation at once; before the
//! first certificate, requests wait for it.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use kube::client::Body;
use tokio::sync::watch;
use tokio_util::sync::DropGuard;

use super::Installed;

/// The service under the agent's client: each request goes to the client of the
/// certificate in use when it is sent, waiting for the first one.
#[derive(Clone)]
pub(crate) struct Swap {
    pub(crate) current: watch::Receiver<Option<Installed>>,
    /// Keeps the certificate task running while the client is in use.
    pub(crate) _stop: Arc<DropGuard>,
}

impl tower::Service<http::Request<Body>> for Swap {
    type Response = http::Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), kube::Error>> {
        // Each installed client queues in its own buffer.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut current = self.current.clone();
        Box::pin(async move {
            let client = match current.wait_for(Option::is_some).await {
                Ok(installed) => installed.as_ref().map(|i| i.client.clone()),
                Err(_) => None,
            };
            match client {
                Some(c) => c.send(request).await,
                None => Err(kube::Error::Service(
                    "the client certificate manager has stopped".into(),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::client::ClientBuilder;
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A client whose every answer is `tag`.
    fn tagged(tag: &'static str) -> Installed {
        let svc = tower::service_fn(move |_: http::Request<Body>| async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(
                tag.as_bytes().to_vec(),
            )))
        });
        Installed {
            client: kube::Client::new(svc, "default"),
            leaf: None,
        }
    }

    #[tokio::test]
    async fn every_clone_of_the_client_follows_the_installed_certificate() {
        let (tx, rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let guard = Arc::new(cancel.clone().drop_guard());
        let swap = Swap {
            current: rx,
            _stop: Arc::clone(&guard),
        };
        let client = ClientBuilder::new(swap, "default").build();
        let clone = client.clone();
        let ask = |c: kube::Client| async move {
            let req = http::Request::get("/version")
                .body(Vec::new())
                .expect("request");
            c.request_text(req).await.expect("answer")
        };
        // Before any certificate: the request waits instead of failing.
        let early = tokio::spawn(ask(clone.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!early.is_finished());
        tx.send_replace(Some(tagged("first")));
        assert_eq!(early.await.expect("join"), "first");
        assert_eq!(ask(client.clone()).await, "first");
        // A rotation: clones made before it use the new client at once.
        tx.send_replace(Some(tagged("second")));
        assert_eq!(ask(clone.clone()).await, "second");
        assert_eq!(ask(client.clone()).await, "second");
        // The task's stop signal fires once nothing can use the client any more.
        drop(guard);
        assert!(!cancel.is_cancelled());
        drop((client, clone));
        tokio::time::timeout(Duration::from_secs(5), cancel.cancelled())
            .await
            .expect("stopped when the last client went");
    }
}
