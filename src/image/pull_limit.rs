//! The image pull rate limit: upstream's `registryPullQPS` / `registryBurst`
//! (`--registry-qps`, `--registry-burst`), as `throttledImageService` in
//! `pkg/kubelet/images/helpers.go` applies it. A token bucket of `burst` tokens
//! refilled at `qps` per second; a pull that finds no token is not queued but refused
//! with "pull QPS exceeded", which the pod shows as `ErrImagePull` and then retries
//! after the image pull back-off. `qps` 0 means no limit.
//!
//! The bucket is `governor`'s GCRA limiter (same admission as client-go's token
//! bucket: a full bucket at start, one token per `1/qps` seconds after).

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use thiserror::Error;

/// Bad `--registry-qps` / `--registry-burst`, worded as upstream's kubelet
/// configuration validation (`pkg/kubelet/apis/config/validation/validation.go`).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PullLimitError {
    /// A negative burst.
    #[error(
        "invalid configuration: registryBurst (--registry-burst) {0} must not be a negative number"
    )]
    NegativeBurst(i32),
    /// A negative QPS.
    #[error(
        "invalid configuration: registryPullQPS (--registry-qps) {0} must not be a negative number"
    )]
    NegativeQps(i32),
}

/// A pull refused by the limit (upstream's error text).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("pull QPS exceeded")]
pub struct PullQpsExceeded;

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

#[derive(Debug)]
enum Limit<C: Clock> {
    /// `qps` 0: every pull goes.
    Unlimited,
    /// `qps` > 0 with `burst` 0: client-go's bucket of size 0 never admits.
    Never,
    Bucket(Bucket<C>),
}

/// The pull limiter shared by every pod worker.
#[derive(Debug)]
pub struct PullLimiter<C: Clock = DefaultClock> {
    limit: Limit<C>,
}

impl PullLimiter<DefaultClock> {
    /// The limiter for `--registry-qps` and `--registry-burst`, on the monotonic clock.
    ///
    /// # Errors
    /// A negative value, as upstream's validation rejects it.
    pub fn new(qps: i32, burst: i32) -> Result<Self, PullLimitError> {
        Self::with_clock(qps, burst, DefaultClock::default())
    }
}

impl<C: Clock> PullLimiter<C> {
    /// The limiter on `clock` (tests use governor's fake clock).
    ///
    /// # Errors
    /// A negative value, as upstream's validation rejects it (burst checked first, as
    /// upstream lists it first).
    pub fn with_clock(qps: i32, burst: i32, clock: C) -> Result<Self, PullLimitError> {
        if burst < 0 {
            return Err(PullLimitError::NegativeBurst(burst));
        }
        let qps = u32::try_from(qps).map_err(|_| PullLimitError::NegativeQps(qps))?;
        let limit = match (
            NonZeroU32::new(qps),
            u32::try_from(burst).ok().and_then(NonZeroU32::new),
        ) {
            (None, _) => Limit::Unlimited,
            (Some(_), None) => Limit::Never,
            (Some(qps), Some(burst)) => Limit::Bucket(RateLimiter::direct_with_clock(
                Quota::per_second(qps).allow_burst(burst),
                clock,
            )),
        };
        Ok(Self { limit })
    }

    /// Upstream's `TryAccept`: takes a token if one is there, never waits.
    ///
    /// # Errors
    /// [`PullQpsExceeded`] when the bucket is empty.
    pub fn try_accept(&self) -> Result<(), PullQpsExceeded> {
        match &self.limit {
            Limit::Unlimited => Ok(()),
            Limit::Never => Err(PullQpsExceeded),
            Limit::Bucket(bucket) => bucket.check().map_err(|_| PullQpsExceeded),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(qps: i32, burst: i32) -> (PullLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let l = PullLimiter::with_clock(qps, burst, clock.clone()).expect("valid limits");
        (l, clock)
    }

    #[test]
    fn a_full_bucket_admits_burst_pulls_then_refuses() {
        let (l, _clock) = limiter(5, 10);
        for i in 0..10 {
            assert_eq!(l.try_accept(), Ok(()), "pull {i} of the burst");
        }
        assert_eq!(l.try_accept(), Err(PullQpsExceeded));
        assert_eq!(PullQpsExceeded.to_string(), "pull QPS exceeded");
    }

    #[test]
    fn tokens_come_back_at_qps() {
        let (l, clock) = limiter(2, 1);
        assert_eq!(l.try_accept(), Ok(()));
        assert_eq!(l.try_accept(), Err(PullQpsExceeded));
        clock.advance(Duration::from_millis(250));
        assert_eq!(l.try_accept(), Err(PullQpsExceeded), "half a token");
        clock.advance(Duration::from_millis(250));
        assert_eq!(l.try_accept(), Ok(()), "one token after 1/qps");
        assert_eq!(l.try_accept(), Err(PullQpsExceeded));
        // A long pause refills up to the burst, no further.
        clock.advance(Duration::from_secs(60));
        assert_eq!(l.try_accept(), Ok(()));
        assert_eq!(l.try_accept(), Err(PullQpsExceeded));
    }

    #[test]
    fn zero_qps_is_unlimited_and_zero_burst_admits_nothing() {
        let (l, _clock) = limiter(0, 0);
        for _ in 0..1000 {
            assert_eq!(l.try_accept(), Ok(()));
        }
        let (l, clock) = limiter(5, 0);
        assert_eq!(l.try_accept(), Err(PullQpsExceeded));
        clock.advance(Duration::from_secs(10));
        assert_eq!(l.try_accept(), Err(PullQpsExceeded));
    }

    #[test]
    fn negative_values_are_rejected_with_upstreams_messages() {
        let e = PullLimiter::new(-1, 10).expect_err("negative qps");
        assert_eq!(
            e.to_string(),
            "invalid configuration: registryPullQPS (--registry-qps) -1 must not be a negative number"
        );
        let e = PullLimiter::new(5, -2).expect_err("negative burst");
        assert_eq!(
            e.to_string(),
            "invalid configuration: registryBurst (--registry-burst) -2 must not be a negative number"
        );
    }

    #[test]
    fn upstream_defaults_are_valid() {
        let l = PullLimiter::new(5, 10).expect("defaults");
        assert_eq!(l.try_accept(), Ok(()));
    }
}
