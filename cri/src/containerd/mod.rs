//! The connection to containerd: one gRPC channel over its unix socket, the namespace
//! every request is made in, and the per-request deadline; each call counted by method
//! ([`calls`]).

mod calls;

use std::time::Duration;

use containerd_client::tonic;
use thiserror::Error;

pub use calls::{CountedChannel, call_counts};

/// Labels put on every containerd object nodelet creates.
pub mod labels {
    /// Marks an object as created by nodelet.
    pub const MANAGED_BY: &str = "io.nodelet.managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "nodelet";
}

/// The default deadline of one unary request to containerd. Long enough for a slow
/// disk to commit a layer, short enough that a stalled containerd shows in the logs.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors from connecting to containerd.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The endpoint is not a `unix://` URL or an absolute socket path.
    #[error(
        "container runtime endpoint {endpoint:?} is not a unix socket (want unix:///path/to.sock)"
    )]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
    },
    /// The socket could not be reached.
    #[error("cannot connect to containerd at {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

/// A handle on containerd, in one namespace. Cheap to clone: clones share the channel.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: CountedChannel,
    namespace: String,
    snapshotter: String,
    timeout: Duration,
    /// Images followed down from their targets (see `ResolvedCache`), shared by clones.
    pub(crate) resolved: std::sync::Arc<crate::image::ResolvedCache>,
    /// The pause image as last looked up or imported, shared by clones: every sandbox
    /// needs it, and looking it up is an image record, its manifest, its config and a
    /// snapshot stat (see `Containerd::ensure_pause_image`).
    pub(crate) pause: std::sync::Arc<tokio::sync::Mutex<Option<crate::image::ImageInfo>>>,
}

impl Containerd {
    /// Connects to containerd at `endpoint` (`unix:///run/containerd/containerd.sock`
    /// or a plain absolute path), making every request in `namespace`.
    ///
    /// # Errors
    /// [`ConnectError`] when the endpoint is malformed or the socket can't be reached.
    pub async fn connect(endpoint: &str, namespace: &str) -> Result<Self, ConnectError> {
        let path = socket_path(endpoint)?;
        let channel =
            containerd_client::connect(&path)
                .await
                .map_err(|source| ConnectError::Connect {
                    path: path.clone(),
                    source,
                })?;
        Ok(Self {
            channel: CountedChannel::new(channel),
            namespace: namespace.to_owned(),
            snapshotter: "overlayfs".to_owned(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            resolved: std::sync::Arc::default(),
            pause: std::sync::Arc::default(),
        })
    }

    /// The containerd namespace requests are made in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The snapshotter used for image layers and container root filesystems.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// The gRPC channel, for building service clients (its calls are counted).
    pub fn channel(&self) -> CountedChannel {
        self.channel.clone()
    }

    /// The calls this handle and its clones made to containerd, by method
    /// (`containerd.services.images.v1.Images/Get`).
    pub fn calls(&self) -> std::collections::BTreeMap<String, u64> {
        self.channel.calls()
    }

    /// containerd's version (`1.6.20`), as `containerRuntimeVersion` reports it.
    ///
    /// # Errors
    /// The gRPC status of the Version call.
    pub async fn version(&self) -> Result<String, tonic::Status> {
        let mut client =
            containerd_client::services::v1::version_client::VersionClient::new(self.channel());
        let reply = client.version(self.request(())).await?.into_inner();
        Ok(reply.version.trim_start_matches('v').to_owned())
    }

    /// Wraps `message` in a request carrying the namespace header and the deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.request_with_timeout(message, self.timeout)
    }

    /// Like [`Containerd::request`] with another deadline (streams that stay open use
    /// a long one).
    pub fn request_with_timeout<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Ok(ns) = self.namespace.parse() {
            req.metadata_mut().insert("containerd-namespace", ns);
        }
        req.set_timeout(timeout);
        req
    }
}

fn socket_path(endpoint: &str) -> Result<String, ConnectError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(path.to_owned())
    } else {
        Err(ConnectError::BadEndpoint {
            endpoint: endpoint.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").ok(),
            Some("/run/containerd/containerd.sock".to_owned())
        );
        assert_eq!(
            socket_path("/tmp/c.sock").ok(),
            Some("/tmp/c.sock".to_owned())
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
    }
}
