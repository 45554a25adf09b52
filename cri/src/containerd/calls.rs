//! Counting the gRPC calls made to containerd, by method: a service in front of the
//! channel that every client is built on ([`CountedChannel`]). The process's counts
//! ([`call_counts`]) are what the agent serves on its read-only port, so the pod-start
//! bench can report round trips per pod start; each handle also counts its own (shared
//! by its clones), which tests read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use containerd_client::tonic::{self, transport::Channel};

/// The calls made so far, by gRPC path (`/containerd.services.tasks.v1.Tasks/Create`).
static CALLS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

fn count(calls: &Mutex<BTreeMap<String, u64>>, path: &str) {
    // A poisoned lock only means another thread panicked while counting: the map
    // is still a map.
    let mut calls = calls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match calls.get_mut(path) {
        Some(n) => *n += 1,
        None => {
            calls.insert(path.to_owned(), 1);
        }
    }
}

fn read(calls: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    calls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(path, n)| (path.trim_start_matches('/').to_owned(), *n))
        .collect()
}

/// The calls made to containerd by this process so far, by method
/// (`containerd.services.tasks.v1.Tasks/Create`), in method order.
pub fn call_counts() -> BTreeMap<String, u64> {
    read(&CALLS)
}

/// The channel to containerd, each request counted by its method on the way out.
#[derive(Clone, Debug)]
pub struct CountedChannel {
    inner: Channel,
    /// This handle's calls (its clones'), beside the process's.
    own: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl CountedChannel {
    pub(super) fn new(inner: Channel) -> Self {
        Self {
            inner,
            own: Arc::default(),
        }
    }

    /// The calls made through this channel and its clones, by method.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        read(&self.own)
    }
}

type Request = http::Request<tonic::body::Body>;

impl tower_service::Service<Request> for CountedChannel {
    type Response = <Channel as tower_service::Service<Request>>::Response;
    type Error = <Channel as tower_service::Service<Request>>::Error;
    type Future = <Channel as tower_service::Service<Request>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        count(&CALLS, req.uri().path());
        count(&self.own, req.uri().path());
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_method() {
        let own = Mutex::default();
        count(&own, "/test.Service/Method");
        count(&own, "/test.Service/Method");
        count(&own, "/test.Service/Other");
        assert_eq!(
            read(&own),
            BTreeMap::from([
                ("test.Service/Method".to_owned(), 2),
                ("test.Service/Other".to_owned(), 1)
            ])
        );
    }
}
