//! Wiring of the running agent: validate flags, connect to containerd, start the pod
//! manager, the sources, the runtime event stream and the HTTP servers, and shut down
//! on SIGTERM/SIGINT (pods keep running; a restarted agent adopts them).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nodelet_cri::cni::CniConfig;
use nodelet_cri::runtime::{ContainerdRuntime, RuntimeConfig};
use nodelet_manifests::SourceEvent;
use nodelet_sources::FileSource;
use nodelet_sources::UrlSource;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::AgentArgs;
use crate::cli::resources::ResourceSettings;
use crate::pod::cgroups::PodCgroups;
use crate::pod::manager::PodManager;
use crate::pod::status_store::{PodStatuses, StatusStore};
use crate::pod::worker::{Clock, WorkerEnv};
use crate::server;

/// Runs the agent until a shutdown signal.
///
/// # Errors
/// Bad flags, an unusable root directory or CNI directory, or a port already taken.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let options = StartOptions {
        sources: true,
        orphan_cleanup: true,
    };
    let Some(agent) = start(&args, options, cancel.clone(), |cancel| {
        spawn_signal_handler(cancel);
    })
    .await?
    else {
        return Ok(());
    };
    agent.join().await;
    info!("agent stopped; pods keep running");
    Ok(())
}

/// What [`start`] wires besides the runtime, the pod manager and the servers.
#[derive(Debug, Clone, Copy)]
pub struct StartOptions {
    /// Start the sources the flags name (`--pod-manifest-path`, `--manifest-url`,
    /// `--enable-pod-push`); without, pods come only through [`RunningAgent::sources`].
    pub sources: bool,
    /// Once every source has reported, remove runtime objects of pods nobody wants
    /// (off for a tool sharing a containerd namespace with a running agent).
    pub orphan_cleanup: bool,
}

/// A started agent: its pod manager, runtime event stream and servers run as tasks
/// until [`RunningAgent::cancel`] is cancelled.
#[derive(Debug)]
pub struct RunningAgent {
    /// The published pods, by UID.
    pub statuses: watch::Receiver<PodStatuses>,
    /// Sends snapshots to the pod manager, as a source would.
    pub sources: mpsc::Sender<SourceEvent>,
    /// Stops everything (pods keep running).
    pub cancel: CancellationToken,
    manager: tokio::task::JoinHandle<()>,
    tasks: tokio::task::JoinSet<()>,
}

impl RunningAgent {
    /// Waits until the pod manager has stopped (after a cancel), then stops the
    /// other tasks and waits for them.
    pub async fn join(mut self) {
        if let Err(e) = self.manager.await {
            error!(error = %e, "pod manager panicked");
        }
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Wires the agent and starts it: flags checked, directories and the default CNI
/// network made, servers bound, containerd connected (retrying), the pod manager
/// running. `on_cancel_ready` is called with `cancel` once the flags are checked,
/// before any port is bound (the agent installs its signal handler there).
/// Returns `None` when `cancel` fires before containerd answered.
///
/// # Errors
/// Bad flags, an unusable root directory or CNI directory, or a port already taken.
pub async fn start(
    args: &AgentArgs,
    options: StartOptions,
    cancel: CancellationToken,
    on_cancel_ready: impl FnOnce(CancellationToken),
) -> anyhow::Result<Option<RunningAgent>> {
    let image_gc = args.image_gc.config().context("image garbage collection")?;
    let resources = args.resources.settings()?;
    let eviction = args.eviction.config(resources.enforce_pods)?;
    let handlers = nodelet_cri::runtime::RuntimeHandlers::with_configured(&args.runtime_handlers)
        .context("--runtime-handlers")?;
    let pull_limit =
        crate::image::pull_limit::PullLimiter::new(args.registry_qps, args.registry_burst)?;
    let node_name = crate::node::node_name(args.hostname_override.as_deref());
    // `--kubeconfig`: the cluster flags are checked and the client built here; the
    // registration, lease and status tasks start once the node view exists.
    // A tool sharing the agent's namespace (`nodelet run`) never speaks for the node.
    anyhow::ensure!(
        options.orphan_cleanup || args.kubeconfig.is_none(),
        "--kubeconfig: this command runs pods standalone; the agent joins the cluster"
    );
    let mut cluster = crate::cluster::Cluster::from_args(args, &node_name).await?;
    // Every source is checked before anything starts, so a bad flag is an exit, not
    // a log line.
    let url_source = match &args.manifest_url {
        Some(url) if options.sources => {
            let mut headers = Vec::new();
            for h in &args.manifest_url_header {
                headers.extend(
                    nodelet_sources::parse_header_flag(h)
                        .with_context(|| format!("--manifest-url-header {h:?}"))?,
                );
            }
            Some(
                UrlSource::new(url, headers, node_name.clone(), args.http_check_frequency)
                    .with_context(|| format!("--manifest-url {url:?}"))?,
            )
        }
        _ => None,
    };
    let host_ip = crate::node::node_ip(args.node_ip);
    std::fs::create_dir_all(&args.root_dir)
        .with_context(|| format!("--root-dir {}", args.root_dir.display()))?;
    std::fs::create_dir_all(&args.pod_logs_dir)
        .with_context(|| format!("--pod-logs-dir {}", args.pod_logs_dir.display()))?;
    // With no CNI config in --cni-conf-dir, pods get the built-in network (bridge
    // --pod-network-bridge over --pod-cidr, masquerade), done in-process instead of by
    // CNI plugins.
    // In a cluster the Node's `spec.podCIDRs` (the controller manager's allocation, one
    // per family when dual-stack) win over --pod-cidr, as upstream's kubelet takes them;
    // read here, then followed (`cluster::pod_cidr`: a Node given them later switches
    // the network for new pods).
    let pod_cidr = match &cluster {
        Some(c) => {
            crate::cluster::node::assigned_pod_cidrs(&c.client, &node_name, Duration::from_secs(3))
                .await
        }
        None => None,
    };
    let pod_cidr = match pod_cidr {
        Some(cidrs) => {
            info!(pod_cidrs = %cidrs, "built-in pod network on the Node's spec.podCIDRs");
            cidrs
        }
        None => args.pod_cidr.clone(),
    };
    let builtin_network = nodelet_cri::podnet::BuiltinNetwork {
        bridge: args.pod_network_bridge.clone(),
        pod_cidr: pod_cidr.clone(),
        ip_masq: true,
        state_dir: args.root_dir.join("network"),
    };
    nodelet_cri::podnet::PodNetwork::new(builtin_network.clone())
        .with_context(|| format!("--pod-cidr {pod_cidr}"))?;
    let log_driver = nodelet_cri::logs::driver_binary(
        &std::env::current_exe().context("cannot find the nodelet binary")?,
    );
    info!(driver = %log_driver.display(), "container log driver");
    // Node-level registry credentials, where upstream's kubelet looks for them
    // (`<root-dir>/config.json`), checked before anything starts.
    let mut pull_auth = nodelet_cri::image::PullAuth::anonymous();
    let node_config = args.root_dir.join("config.json");
    if node_config.exists() {
        pull_auth
            .add_docker_config_file(&node_config)
            .with_context(|| format!("registry credentials {}", node_config.display()))?;
    }
    // Every flag is checked by now, so a bad one never leaves cgroups behind.
    let node_resources = setup_cgroups(&args.cgroup_root, &args.root_dir, &resources, &eviction)?;
    on_cancel_ready(cancel.clone());

    let status_store = Arc::new(StatusStore::new());
    let status_rx = status_store.subscribe();
    let (node_view_tx, node_view_rx) = watch::channel(None);
    let events = crate::events::EventRecorder::new(&node_name, crate::events::EVENT_CAPACITY);
    let (source_tx, source_rx) = mpsc::channel(16);
    let mut servers = Vec::new();
    let mut push_store = None;
    if args.enable_pod_push && options.sources {
        let (api, store_task) =
            crate::server::push::start(&node_name, source_tx.clone(), cancel.clone());
        push_store = Some(store_task);
        let addr = SocketAddr::new(args.pod_push_address, args.pod_push_port);
        servers.push(server::bind(addr, crate::server::push::router(api), cancel.clone()).await?);
        info!(%addr, "pod push API listening");
    }
    if args.read_only_port != 0 {
        let addr = SocketAddr::new(args.address, args.read_only_port);
        servers.push(
            server::bind(
                addr,
                server::read_only_router(status_rx.clone(), events.clone(), node_view_rx.clone()),
                cancel.clone(),
            )
            .await?,
        );
        info!(%addr, "read-only API listening");
    }
    if args.healthz_port != 0 {
        let addr = SocketAddr::new(args.healthz_bind_address, args.healthz_port);
        servers.push(server::bind(addr, server::healthz_router(), cancel.clone()).await?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for s in servers {
        tasks.spawn(s);
    }
    // The log endpoints reach the runtime once it is connected.
    let (log_backend_tx, log_backend_rx) = watch::channel(None);
    if args.secure.port != 0 {
        // Issue #13's other endpoints (container logs, streaming) merge their
        // routers (state applied) into `extra`; the auth filter covers them.
        let extra = axum::Router::new()
            .merge(server::streaming::router(
                node_view_rx.clone(),
                args.secure.streaming_connection_idle_timeout,
            ))
            .merge(server::logs::router(
                status_rx.clone(),
                log_backend_rx.clone(),
                std::path::PathBuf::from(server::logs::NODE_LOG_DIR),
            ));
        let own = server::secure::routes::OwnState {
            pods: status_rx.clone(),
            node: node_view_rx.clone(),
            configz: Arc::new(server::secure::routes::configz_body(args, &node_name)),
            fs_devices: Arc::new(server::metrics::cadvisor_fs::FsDevices::find(
                &args.root_dir,
                &args.image_gc.containerd_root,
            )),
        };
        let client = cluster.as_ref().map(|c| &c.client);
        let (addr, serve) = server::secure::start(
            args,
            &node_name,
            host_ip,
            client,
            own,
            extra,
            cancel.clone(),
        )
        .await?;
        tasks.spawn(serve);
        tasks.spawn(server::metrics::watch_pod_starts(
            status_rx.clone(),
            cancel.clone(),
        ));
        info!(%addr, "kubelet API listening");
    }
    if let Some(cluster) = &mut cluster {
        tasks.spawn(cluster.record_events(&events, cancel.clone()));
    }
    if let Some(cluster) = &cluster
        && args.proxy_mode == crate::cli::AgentProxyMode::Nftables
    {
        let proxy = crate::cmd::proxy::in_agent(args, &cluster.client, &node_name, &cancel)?;
        tasks.spawn(proxy);
    }

    let runtime_config = RuntimeConfig {
        endpoint: args.container_runtime_endpoint.clone(),
        namespace: args.containerd_namespace.clone(),
        state_dir: args.root_dir.join("runtime"),
        log_driver,
        container_logs_dir: args.container_logs_dir.clone(),
        log_rotation: nodelet_cri::logs::RotationPolicy {
            max_size: args.container_log_max_size,
            max_files: args.container_log_max_files,
        },
        registries: nodelet_cri::image::RegistryConfig::default(),
        handlers,
        cni: CniConfig {
            conf_dir: args.cni_conf_dir.clone(),
            bin_dirs: args.cni_bin_dir.clone(),
            cache_dir: args.root_dir.join("cni/cache"),
            timeout: Duration::from_secs(60),
        },
        builtin_network: Some(builtin_network),
    };
    let Some(runtime) = connect_runtime(runtime_config, &cancel).await else {
        return Ok(None);
    };
    if let Err(e) = runtime.containerd().ensure_pause_image().await {
        // Not fatal: each sandbox tries again, and its pod shows the error.
        error!(error = %e, "cannot import the pause image");
    }
    // What an agent killed mid-start left (netns pins, IPs, snapshots of sandboxes
    // and containers never recorded) goes before any pod is admitted. `nodelet run`
    // shares the namespace with whatever else runs there: it leaves it alone.
    if options.orphan_cleanup
        && let Err(e) = runtime.reclaim_leaked().await
    {
        warn!(error = %e, "cannot reclaim resources leaked by an interrupted start");
    }
    let runtime = Arc::new(runtime);
    let backend: Arc<dyn server::logs::LogBackend> = runtime.clone();
    log_backend_tx.send_replace(Some(backend));
    info!(node = %node_name, ip = %host_ip, namespace = %args.containerd_namespace, "agent running");

    // ConfigMaps, Secrets and service account tokens from the apiserver; standalone,
    // from documents beside the pods once a source provides them (issue 12). One
    // source for volumes and pull secrets alike.
    let objects: Arc<dyn crate::volume::ObjectSource> = match &cluster {
        Some(c) => {
            let api = crate::cluster::objects::ApiObjects::new(c.client.clone());
            tasks.spawn(api.clone().watch_services(cancel.clone()));
            tasks.spawn(api.clone().watch_runtime_classes(cancel.clone()));
            Arc::new(api)
        }
        None => Arc::new(crate::volume::StaticObjects::new()),
    };
    let volumes = Arc::new(crate::volume::VolumeManager::new(
        args.root_dir.join("pods"),
        Arc::clone(&objects),
    ));
    // The pod workers' runtime calls feed `kubelet_runtime_operations_*`.
    let instrumented = Arc::new(server::metrics::runtime::Instrumented::new(Arc::clone(
        &runtime,
    )));
    let env = Arc::new(WorkerEnv {
        runtime: Arc::clone(&instrumented),
        root_dir: args.root_dir.clone(),
        pod_logs_dir: args.pod_logs_dir.clone(),
        container_logs_dir: args.container_logs_dir.clone(),
        cgroups: Arc::clone(&node_resources.cgroups),
        node_name: node_name.clone(),
        host_ip: host_ip.to_string(),
        dns: crate::pod::podspec::DnsSettings {
            cluster_dns: args.cluster_dns.iter().map(ToString::to_string).collect(),
            cluster_domain: args.cluster_domain.clone(),
            resolv_conf: Some(args.resolv_conf.clone()).filter(|p| !p.as_os_str().is_empty()),
        },
        images: Arc::new(
            crate::image::manager::ImageManager::new(
                Arc::clone(&instrumented),
                pull_auth,
                // Upstream: one pull at a time unless serializeImagePulls is off, then
                // maxParallelImagePulls (unset: no limit).
                match (args.serialize_image_pulls, args.max_parallel_image_pulls) {
                    (true, _) => Some(Arc::new(tokio::sync::Semaphore::new(1))),
                    (false, Some(n)) if n > 0 => Some(Arc::new(tokio::sync::Semaphore::new(n))),
                    (false, _) => None,
                },
                pull_limit,
            )
            .with_objects(Arc::clone(&objects)),
        ),
        capacity: crate::pod::podspec::NodeCapacity::from_capacity(&node_resources.capacity),
        volumes: Arc::clone(&volumes),
        events,
        statuses: Arc::clone(&status_store),
        // Upstream's prober manager `start`.
        agent_start: tokio::time::Instant::now(),
        clock: Clock::System,
    });
    let mut sources = Vec::new();
    if let Some(path) = args.pod_manifest_path.as_ref().filter(|_| options.sources) {
        sources.push("file");
        let source = FileSource::new(path.clone(), node_name.clone(), args.file_check_frequency);
        tasks.spawn(source.run(source_tx.clone(), cancel.clone()));
        info!(path = %path.display(), "watching static pod manifests");
    }
    if let Some(source) = url_source {
        sources.push(nodelet_manifests::HTTP_SOURCE);
        info!(url = ?args.manifest_url, "polling the manifest URL");
        tasks.spawn(source.run(source_tx.clone(), cancel.clone()));
    }
    if let Some(store_task) = push_store.take() {
        sources.push(nodelet_manifests::PUSH_SOURCE);
        tasks.spawn(store_task);
    }

    let (event_tx, event_rx) = mpsc::channel(256);
    {
        let runtime = Arc::clone(&runtime);
        let cancel = cancel.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = runtime.follow_events(event_tx) => {}
                () = cancel.cancelled() => {}
            }
        });
    }
    // `nodelet run` shares the namespace with whatever else runs there: it leaves
    // images alone, as it leaves other pods alone.
    let mut image_reclaim = None;
    if options.orphan_cleanup {
        let (gc, requests) =
            crate::image::gc::ImageGcManager::new(Arc::clone(&runtime), image_gc).with_reclaim();
        image_reclaim = Some(requests);
        tasks.spawn(gc.run(cancel.clone()));
    }
    let evict_static_pods = eviction.evict_static_pods;
    let (command_tx, command_rx) = mpsc::channel(16);
    let (pressure_tx, pressure_rx) = watch::channel(crate::node::pressure::Pressure::default());
    // Like image GC, eviction is the node agent's: `nodelet run` leaves it alone.
    if options.orphan_cleanup {
        let dedicated_image_fs =
            same_device(&args.root_dir, &args.image_gc.containerd_root) == Some(false);
        let mut monitor = crate::node::pressure::PressureMonitor::new(
            crate::node::eviction::EvictionManager::new(eviction, dedicated_image_fs),
            Arc::clone(&node_resources.cgroups),
            crate::node::pressure::Filesystems {
                root_dir: args.root_dir.clone(),
                image_dir: args.image_gc.containerd_root.clone(),
            },
            status_rx.clone(),
            pressure_tx,
            command_tx,
        );
        if let Some(requests) = image_reclaim.take() {
            monitor = monitor.with_image_reclaim(requests);
        }
        monitor = monitor.with_events(env.events.clone());
        tasks.spawn(monitor.run(cancel.clone()));
    }
    let (capacity, allocatable) = crate::node::view::resource_lists(
        &node_resources.capacity,
        &node_resources.allocatable,
        resources.max_pods,
    );
    let runtime_version = runtime.containerd().version().await.unwrap_or_else(|e| {
        warn!(error = %e, "cannot read containerd's version");
        String::new()
    });
    // Upstream's `Hostname` address is the overridden hostname when one is given.
    let hostname = match &args.hostname_override {
        Some(_) => node_name.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| node_name.clone()),
    };
    let (pod_cidr_tx, pod_cidr_rx) =
        watch::channel(Some(pod_cidr.clone()).filter(|c| !c.is_empty()));
    let view = Arc::new(crate::node::view::NodeView {
        pod_cidr: pod_cidr_rx,
        runtime: Arc::clone(&runtime),
        base: crate::node::status::NodeInputs {
            name: node_name.clone(),
            ip: host_ip.to_string(),
            hostname,
            capacity,
            allocatable,
            ready_since: jiff::Timestamp::now(),
            runtime_version,
            pod_cidr: None,
            kubelet_port: i32::from(args.secure.port),
            ..Default::default()
        },
        pressure: pressure_rx.clone(),
        pods: status_rx.clone(),
        cgroups: Arc::clone(&node_resources.cgroups),
        fs: crate::node::pressure::Filesystems {
            root_dir: args.root_dir.clone(),
            image_dir: args.image_gc.containerd_root.clone(),
        },
        pod_logs_dir: args.pod_logs_dir.clone(),
        cpu: std::sync::Mutex::new(crate::node::summary::CpuRateTracker::new()),
    });
    // Admission sees the node as the agent describes it; joined to a cluster, the
    // labels and taints come from the apiserver's Node once it shows them.
    let (admit_tx, admit_rx) =
        watch::channel(Arc::new(crate::pod::admission::AdmitNode::from_node(
            &crate::node::status::node(&view.base, jiff::Timestamp::now()),
        )));
    node_view_tx.send_replace(Some(view));
    let (desired_tx, desired_rx) = watch::channel(crate::pod::manager::DesiredPods::default());
    if let Some(cluster) = &cluster {
        // The pods bound to the node are a source like the others: nothing is
        // cleaned up as orphaned before the apiserver has listed them.
        sources.push(nodelet_manifests::API_SOURCE);
        let (node_cidr_tx, node_cidr_rx) = watch::channel(None);
        tasks.spawn(crate::cluster::pod_cidr::follow_pod_cidr(
            node_cidr_rx,
            Arc::clone(&runtime),
            pod_cidr_tx,
            cancel.clone(),
        ));
        let pods = crate::cluster::PodSide {
            sources: source_tx.clone(),
            statuses: Arc::clone(&status_store),
            desired: desired_rx,
            admission: admit_tx,
            pod_cidr: node_cidr_tx,
        };
        for task in cluster.start(node_view_rx.clone(), pods, cancel.clone()) {
            tasks.spawn(task);
        }
    }
    let mut manager = PodManager::new(env, &sources)
        .with_desired(desired_tx)
        .with_node(admit_rx);
    if options.orphan_cleanup {
        manager = manager.with_admission(pressure_rx, evict_static_pods);
    } else {
        manager = manager.without_orphan_cleanup();
    }
    let (routed_tx, routed_rx) = mpsc::channel(256);
    // A changed ConfigMap or Secret reaches the pods using it at once.
    if let Some(changes) = objects.subscribe() {
        tasks.spawn(crate::volume::follow_changes(
            Arc::clone(&volumes),
            changes,
            routed_tx.clone(),
            cancel.clone(),
        ));
    }
    tasks.spawn(crate::pod::router::run(
        Arc::clone(&runtime),
        event_rx,
        routed_tx,
    ));
    let inputs = crate::pod::manager::Inputs {
        sources: source_rx,
        events: routed_rx,
        commands: command_rx,
    };
    // The heap freed after a burst of pod starts goes back to the kernel.
    tasks.spawn(crate::heap::trim_loop(cancel.clone()));
    let manager = tokio::spawn(manager.run(inputs, cancel.clone()));
    Ok(Some(RunningAgent {
        statuses: status_rx,
        sources: source_tx,
        cancel,
        manager,
        tasks,
    }))
}

/// Whether two paths are on the same filesystem (`None` when one can't be read).
fn same_device(a: &Path, b: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt as _;
    Some(std::fs::metadata(a).ok()?.dev() == std::fs::metadata(b).ok()?.dev())
}

/// The node's resources as the agent set them up.
#[derive(Debug)]
pub struct NodeResources {
    /// The pod cgroups.
    pub cgroups: Arc<PodCgroups>,
    /// What the machine has.
    pub capacity: nodelet_cgroups::NodeCapacity,
    /// What pods may use (node status `allocatable`).
    pub allocatable: nodelet_cgroups::Allocatable,
}

/// Reads the machine's capacity, works out node allocatable and makes the QoS cgroup
/// hierarchy under `cgroup_root` (limited to allocatable when `pods` is enforced).
fn setup_cgroups(
    cgroup_root: &str,
    root_dir: &Path,
    settings: &ResourceSettings,
    eviction: &crate::node::eviction::EvictionConfig,
) -> anyhow::Result<NodeResources> {
    let layout = nodelet_cgroups::Layout::detect().context("cgroups")?;
    let mut capacity =
        nodelet_cgroups::NodeCapacity::read(Path::new("/")).context("node capacity")?;
    // Huge pages only count where the hugetlb controller is there to limit them.
    if !layout.has_controller("hugetlb") {
        capacity.hugepages.clear();
    }
    // Ephemeral storage is the root dir's filesystem, as upstream's nodefs.
    capacity.ephemeral_storage = nodelet_cgroups::statvfs(root_dir)
        .map(|f| i64::try_from(f.capacity).unwrap_or(i64::MAX))
        .unwrap_or(0);
    // Allocatable also leaves room for the hard eviction thresholds
    // (upstream's GetNodeAllocatableReservation).
    let hard = |signal: crate::node::eviction::thresholds::Signal, capacity: i64| {
        eviction
            .thresholds
            .iter()
            .find(|t| t.signal == signal && t.is_hard())
            .map_or(0, |t| {
                i64::try_from(t.amount_against(u64::try_from(capacity).unwrap_or(0)))
                    .unwrap_or(i64::MAX)
            })
    };
    let eviction_reserved = nodelet_cgroups::Reserved {
        memory: hard(
            crate::node::eviction::thresholds::Signal::MemoryAvailable,
            capacity.memory,
        ),
        ephemeral_storage: hard(
            crate::node::eviction::thresholds::Signal::NodeFsAvailable,
            capacity.ephemeral_storage,
        ),
        ..Default::default()
    };
    let kube =
        nodelet_cgroups::Reserved::parse(&settings.kube_reserved).context("--kube-reserved")?;
    let system =
        nodelet_cgroups::Reserved::parse(&settings.system_reserved).context("--system-reserved")?;
    let allocatable =
        nodelet_cgroups::allocatable::allocatable(&capacity, &kube, &system, &eviction_reserved);
    let kubepods = nodelet_cgroups::allocatable::kubepods_resources(
        &capacity,
        &kube,
        &system,
        settings.enforce_pods,
    );
    let mut container = nodelet_cgroups::ContainerSettings::new(capacity.memory, layout.version());
    container.allocatable_memory = allocatable.memory;
    container.enforce_cpu_limits = settings.cpu_cfs_quota;
    container.cpu_period = settings.cpu_period_us;
    container.memory_qos = settings.memory_qos;
    container.hugepage_sizes = capacity.hugepages.keys().copied().collect();
    info!(
        version = ?layout.version(),
        cgroup_root,
        cpu_milli = allocatable.cpu_milli,
        memory = allocatable.memory,
        "node allocatable"
    );
    let cgroups = PodCgroups::setup(layout, cgroup_root, settings.clone(), container, kubepods)
        .with_context(|| {
            format!("cannot create the QoS cgroups under --cgroup-root {cgroup_root}")
        })?;
    Ok(NodeResources {
        cgroups: Arc::new(cgroups),
        capacity,
        allocatable,
    })
}

/// Connects to containerd, retrying while it is away (it may start after the agent).
async fn connect_runtime(
    config: RuntimeConfig,
    cancel: &CancellationToken,
) -> Option<ContainerdRuntime> {
    let mut delay = Duration::from_millis(500);
    loop {
        match ContainerdRuntime::connect(config.clone()).await {
            Ok(rt) => return Some(rt),
            Err(e) => warn!(error = %e, retry_in = ?delay, "containerd not reachable"),
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// SIGTERM or SIGINT cancels `cancel`; a second signal exits at once.
pub fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        info!("shutting down (signal again to exit at once)");
        cancel.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        std::process::exit(130);
    });
}
