//! The one apiserver client of the agent: kube-rs's `Client` built from `--kubeconfig`
//! (client certificates, bearer tokens and files, exec plugins: what kube-rs's
//! kubeconfig loader supports), behind a client-side rate limit as client-go's
//! (`--kube-api-qps`, `--kube-api-burst`): a `governor` token bucket in a tower layer
//! that makes a request wait for its token rather than fail.

use std::future::Future;
use std::num::NonZeroU32;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::debug;

use crate::cluster::ClusterError;

/// client-go's `DefaultQPS`, used when `--kube-api-qps` is 0.
const DEFAULT_QPS: i32 = 5;
/// client-go's `DefaultBurst`, used when `--kube-api-burst` is 0.
const DEFAULT_BURST: i32 = 10;

/// The token bucket for `qps` and `burst`, checked as upstream's kubelet
/// configuration validation does (negative values are refused; 0 is client-go's
/// default).
///
/// # Errors
/// A negative `qps` or `burst`.
pub fn quota(qps: i32, burst: i32) -> Result<Quota, ClusterError> {
    if qps < 0 {
        return Err(ClusterError::NegativeQps(qps));
    }
    if burst < 0 {
        return Err(ClusterError::NegativeBurst(burst));
    }
    let qps = if qps == 0 { DEFAULT_QPS } else { qps };
    let burst = if burst == 0 { DEFAULT_BURST } else { burst };
    let per_second = NonZeroU32::new(qps.unsigned_abs()).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.unsigned_abs()).unwrap_or(NonZeroU32::MIN);
    Ok(Quota::per_second(per_second).allow_burst(burst))
}

/// Builds the client for `kubeconfig` (its current context), rate limited by `quota`.
/// Nothing is sent: an unreachable apiserver shows at the first request.
///
/// # Errors
/// An unreadable or invalid kubeconfig, or a TLS setup kube-rs refuses.
pub async fn build(kubeconfig: &Path, quota: Quota) -> Result<kube::Client, ClusterError> {
    install_crypto_provider();
    let file = Kubeconfig::read_from(kubeconfig).map_err(|source| ClusterError::Kubeconfig {
        path: kubeconfig.to_owned(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|source| ClusterError::Kubeconfig {
            path: kubeconfig.to_owned(),
            source,
        })?;
    debug!(url = %config.cluster_url, "apiserver");
    let builder = ClientBuilder::try_from(config).map_err(|source| ClusterError::Client {
        path: kubeconfig.to_owned(),
        source,
    })?;
    Ok(builder.with_layer(&RateLimitLayer::new(quota)).build())
}

/// Makes aws-lc-rs the process's rustls provider (kube-rs builds its TLS config
/// from the process default, and more than one provider is compiled in). A provider
/// installed earlier stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A tower layer that holds every request until the shared bucket has a token.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl RateLimitLayer {
    /// A layer over a fresh bucket (full, as client-go's starts).
    pub fn new(quota: Quota) -> Self {
        Self {
            limiter: Arc::new(RateLimiter::direct(quota)),
        }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            limiter: Arc::clone(&self.limiter),
            waiting: None,
            permitted: false,
        }
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The rate-limited service: `poll_ready` is pending until a token is taken, so
/// kube-rs's buffer in front of it queues requests instead of failing them.
pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    waiting: Option<Wait>,
    permitted: bool,
}

impl<S> std::fmt::Debug for RateLimited<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimited")
            .field("permitted", &self.permitted)
            .finish_non_exhaustive()
    }
}

impl<S, B> tower::Service<http::Request<B>> for RateLimited<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.permitted {
            let waiting = self.waiting.get_or_insert_with(|| {
                let limiter = Arc::clone(&self.limiter);
                Box::pin(async move { limiter.until_ready().await })
            });
            match waiting.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    self.waiting = None;
                    self.permitted = true;
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.permitted = false;
        // The request log the idle request rate is measured from.
        debug!(target: "nodelet::cluster::requests", method = %req.method(), path = %req.uri().path(), "apiserver request");
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn quota_follows_client_go() {
        let q = quota(50, 100).expect("valid");
        assert_eq!(q.burst_size().get(), 100);
        assert_eq!(q.replenish_interval(), Duration::from_millis(20));
        let d = quota(0, 0).expect("defaults");
        assert_eq!(d.burst_size().get(), 10);
        assert_eq!(d.replenish_interval(), Duration::from_millis(200));
        assert!(matches!(quota(-1, 1), Err(ClusterError::NegativeQps(-1))));
        assert!(matches!(quota(1, -1), Err(ClusterError::NegativeBurst(-1))));
    }

    #[tokio::test]
    async fn requests_over_the_burst_wait_for_tokens() {
        use tower::{Layer as _, Service as _};
        let layer = RateLimitLayer::new(quota(20, 2).expect("valid"));
        let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(())
        }));
        let start = std::time::Instant::now();
        for _ in 0..4 {
            std::future::poll_fn(|cx| svc.poll_ready(cx))
                .await
                .expect("ready");
            svc.call(http::Request::new(())).await.expect("call");
        }
        // Two from the bucket, then one per 50 ms.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(90), "took {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}
