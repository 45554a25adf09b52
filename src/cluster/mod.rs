//! Joining a control plane (`--kubeconfig`): the agent's one apiserver client
//! (`client.rs`), node registration and the node status poster (`node.rs`), the
//! node lease (`lease.rs`), as upstream's `kubelet_node_status.go` and `nodelease`
//! controller; the pods bound to the node (`pod_source.rs`), their status
//! (`pod_status.rs`) and the static pods' mirror pods (`mirror.rs`), as upstream's
//! apiserver pod source, status manager and mirror client; the events the agent
//! records, posted as upstream's event broadcaster does (`events/`); the client
//! certificate's TLS bootstrap and rotation (`bootstrap.rs`, `certificate/`).
//! Everything here runs as tasks beside the pods: an unreachable apiserver is logged
//! once per outage and retried with back-off, and never stops a pod.

pub mod bootstrap;
pub mod certificate;
pub mod client;
pub mod events;
pub mod lease;
pub mod mirror;
pub mod node;
pub mod node_watch;
pub mod object_cache;
pub mod objects;
pub mod pod_cidr;
pub mod pod_source;
pub mod pod_status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::AgentArgs;
use crate::node::view::NodeView;

/// How long one request to the apiserver may take before it counts as failed
/// (upstream's lease client times out after the renew interval too).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong joining the cluster.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The kubeconfig can't be read or used.
    #[error("--kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// kube-rs can't build a client from it (TLS set-up, proxy).
    #[error("--kubeconfig {path}: cannot build the apiserver client: {source}")]
    Client {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A bad `--node-labels` entry.
    #[error("--node-labels {label:?}: {reason}")]
    NodeLabel {
        /// The entry.
        label: String,
        /// Why.
        reason: String,
    },
    /// A bad `--register-with-taints` entry.
    #[error("--register-with-taints {taint:?}: {reason}")]
    Taint {
        /// The entry.
        taint: String,
        /// Why.
        reason: String,
    },
    /// A negative `--kube-api-qps` (upstream's validation message).
    #[error("invalid configuration: kubeAPIQPS (--kube-api-qps) {0} must not be a negative number")]
    NegativeQps(i32),
    /// A negative `--kube-api-burst` (upstream's validation message).
    #[error(
        "invalid configuration: kubeAPIBurst (--kube-api-burst) {0} must not be a negative number"
    )]
    NegativeBurst(i32),
    /// A request the apiserver refused or that failed on the way.
    #[error("{verb} {object}: {source}")]
    Api {
        /// What was asked (`create`, `patch status`, `update`…).
        verb: &'static str,
        /// `Node/<name>`, `Lease/kube-node-lease/<name>`.
        object: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// `--bootstrap-kubeconfig` without `--kubeconfig`, the file it writes.
    #[error("--bootstrap-kubeconfig needs --kubeconfig (the kubeconfig it writes)")]
    BootstrapWithoutKubeconfig,
    /// TLS bootstrap or certificate rotation can't start.
    #[error(transparent)]
    Certificate(#[from] certificate::CertificateError),
    /// A request with no answer within [`REQUEST_TIMEOUT`].
    #[error("{verb} {object}: no answer from the apiserver within {REQUEST_TIMEOUT:?}")]
    Timeout {
        /// What was asked.
        verb: &'static str,
        /// The object.
        object: String,
    },
}

impl ClusterError {
    /// The apiserver's HTTP status for the failed request, if it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClusterError::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }
}

/// Runs `request` with [`REQUEST_TIMEOUT`], naming the verb and object in its error.
async fn call<T>(
    verb: &'static str,
    object: impl Into<String>,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ClusterError> {
    let object = object.into();
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(ClusterError::Api {
            verb,
            object,
            source,
        }),
        Err(_) => Err(ClusterError::Timeout { verb, object }),
    }
}

/// Logs an apiserver outage once: the first failure as a warning, the recovery as
/// an info line with how long it lasted; failures in between at debug level.
#[derive(Debug, Default)]
struct Outage {
    since: Option<tokio::time::Instant>,
}

impl Outage {
    fn failed(&mut self, what: &str, error: &ClusterError) {
        if self.since.is_none() {
            self.since = Some(tokio::time::Instant::now());
            if error.code().is_some() {
                // It answered, with a refusal (403, 404, 422…): not an outage.
                warn!(%error, "{what}: the apiserver refused; retrying (pods keep running)");
            } else {
                warn!(%error, "{what}: the apiserver is not answering; retrying (pods keep running)");
            }
        } else {
            tracing::debug!(%error, "{what}: still failing");
        }
    }

    fn ok(&mut self, what: &str) {
        if let Some(since) = self.since.take() {
            info!(outage = ?since.elapsed(), "{what}: the apiserver answers again");
        }
    }
}

/// The cluster side of the agent: its client and what the flags say about the Node.
#[derive(Clone)]
pub struct Cluster {
    /// The one client every cluster-facing part of the agent uses.
    pub client: kube::Client,
    /// The node name.
    pub node_name: String,
    registration: Arc<node::Registration>,
    /// The Node's events, once [`Cluster::record_events`] was called.
    events: Option<events::node::NodeEvents>,
    /// With `--bootstrap-kubeconfig` or `--rotate-certificates`: the certificate task.
    certificates: Option<certificate::Certificates>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The cluster side for `args`, or `None` without `--kubeconfig` (standalone).
    /// Checks every cluster flag and builds the client; sends nothing.
    ///
    /// # Errors
    /// A bad `--node-labels`, `--register-with-taints`, `--kube-api-qps`,
    /// `--kube-api-burst`, or an unusable kubeconfig.
    pub async fn from_args(
        args: &AgentArgs,
        node_name: &str,
    ) -> Result<Option<Cluster>, ClusterError> {
        let Some(path) = &args.kubeconfig else {
            if args.bootstrap_kubeconfig.is_some() {
                return Err(ClusterError::BootstrapWithoutKubeconfig);
            }
            return Ok(None);
        };
        let registration = node::Registration {
            register: args.register_node,
            labels: node::parse_node_labels(&args.node_labels)?,
            taints: node::parse_taints(&args.register_with_taints)?,
        };
        let quota = client::quota(args.kube_api_qps, args.kube_api_burst)?;
        let (client, certificates) =
            if args.bootstrap_kubeconfig.is_some() || args.rotate_certificates {
                let settings = certificate::Settings {
                    kubeconfig: path.clone(),
                    bootstrap: args.bootstrap_kubeconfig.clone(),
                    cert_dir: args.cert_dir(),
                    rotate: args.rotate_certificates,
                    node_name: node_name.to_owned(),
                };
                let (client, certs) = certificate::Certificates::start(settings, quota).await?;
                (client, Some(certs))
            } else {
                (client::build(path, quota).await?, None)
            };
        Ok(Some(Cluster {
            client,
            node_name: node_name.to_owned(),
            registration: Arc::new(registration),
            events: None,
            certificates,
        }))
    }

    /// From now on what `recorder` records is posted to the apiserver; records
    /// `NodeAllocatableEnforced` (the pods' cgroups are set up before this), and the
    /// status poster records `Starting` once registered. Returns the sending task,
    /// to be spawned; it stops when `cancel` fires.
    pub fn record_events(
        &mut self,
        recorder: &crate::events::EventRecorder,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let task = events::start(self.client.clone(), recorder, cancel);
        let node = events::node::NodeEvents::new(recorder.clone(), &self.node_name);
        node.allocatable_enforced();
        self.events = Some(node);
        task
    }

    /// The tasks that register the node and keep its lease and status current, watch
    /// the pods bound to it (sending them on `pods.sources` as the `api` source), post
    /// their statuses and keep the static pods' mirror pods, to be spawned by the
    /// agent. The node's tasks wait for the node view (published once containerd
    /// answers); all stop when `cancel` fires.
    pub fn start(
        &self,
        view: watch::Receiver<Option<Arc<NodeView>>>,
        pods: PodSide,
        cancel: CancellationToken,
    ) -> Vec<BoxFuture<'static, ()>> {
        let (api_tx, api_rx) = watch::channel(pod_source::ApiPods::default());
        let source = pod_source::ApiPodSource::new(self.client.clone(), self.node_name.clone());
        let poster =
            pod_status::PodStatusPoster::new(self.client.clone(), pods.statuses, api_rx.clone());
        let this = self.clone();
        let node_cancel = cancel.clone();
        vec![
            Box::pin(node_watch::follow_node(
                self.client.clone(),
                self.node_name.clone(),
                pods.admission,
                pods.pod_cidr,
                cancel.clone(),
            )),
            Box::pin(source.run(pods.sources, api_tx, cancel.clone())),
            Box::pin(poster.run(cancel.clone())),
            Box::pin(async move {
                tokio::select! {
                    () = this.run(view, pods.desired, api_rx, node_cancel.clone()) => {}
                    () = node_cancel.cancelled() => {}
                }
            }),
        ]
    }

    /// Registers, then renews the lease, posts the status and keeps the mirror pods
    /// until dropped.
    async fn run(
        self,
        mut view: watch::Receiver<Option<Arc<NodeView>>>,
        desired: watch::Receiver<crate::pod::manager::DesiredPods>,
        api: watch::Receiver<pod_source::ApiPods>,
        cancel: CancellationToken,
    ) {
        let Ok(view) = view.wait_for(Option::is_some).await.map(|v| v.clone()) else {
            return;
        };
        let Some(view) = view else { return };
        if let Some(certificates) = &self.certificates {
            // Registering as `system:node:<name>` needs the certificate.
            certificates.ready().await;
        }
        let mut poster = node::StatusPoster::new(
            self.client.clone(),
            self.node_name.clone(),
            Arc::clone(&self.registration),
            view,
        );
        if let Some(events) = &self.events {
            poster = poster.with_events(events.status_events());
        }
        let registered = poster.register().await;
        info!(node = %self.node_name, uid = ?registered.metadata.uid, "node registered");
        let lease = lease::LeaseRenewer::new(
            self.client.clone(),
            self.node_name.clone(),
            registered.metadata.uid.clone(),
        );
        let mirrors = mirror::MirrorPods::new(
            self.client.clone(),
            self.node_name.clone(),
            registered.metadata.uid.clone().unwrap_or_default(),
            desired,
            api,
        );
        tokio::join!(poster.run(registered), lease.run(), mirrors.run(cancel));
    }
}

/// What the cluster side shares with the pod side of the agent.
#[derive(Debug)]
pub struct PodSide {
    /// Where the `api` source's snapshots go (the pod manager's source channel).
    pub sources: tokio::sync::mpsc::Sender<nodelet_manifests::SourceEvent>,
    /// The status store, whose statuses are posted.
    pub statuses: Arc<crate::pod::status_store::StatusStore>,
    /// What the sources want (static pods get mirror pods).
    pub desired: watch::Receiver<crate::pod::manager::DesiredPods>,
    /// The node as admission sees it: its labels and taints are the apiserver's.
    pub admission: watch::Sender<Arc<crate::pod::admission::AdmitNode>>,
    /// The Node's pod CIDRs, comma-joined, once it has some (for the pod network).
    pub pod_cidr: watch::Sender<Option<String>>,
}
