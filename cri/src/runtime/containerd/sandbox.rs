//! Pod sandboxes: the intent first, then the network namespace, CNI, the pod's files,
//! the pause container and its task; and their teardown, which removes whatever of
//! that exists.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::{debug, warn};

use super::{ContainerdRuntime, KILL_WAIT, SIGKILL, io_err, new_id};
use crate::cni::CniRequest;
use crate::image::ImageInfo;
use crate::netns::NetNs;
use crate::runtime::records::{pod_labels, pod_of};
use crate::runtime::{
    PodRef, RuntimeError, SandboxConfig, SandboxInfo, keys, oom, pod_files, spec,
};

impl ContainerdRuntime {
    /// [`Runtime::run_sandbox`](crate::runtime::Runtime::run_sandbox).
    pub(super) async fn sandbox_run(
        &self,
        config: &SandboxConfig,
    ) -> Result<SandboxInfo, RuntimeError> {
        // An unknown handler fails before anything is made, as containerd's CRI
        // plugin does.
        self.runtime_handler(&config.runtime_handler)?;
        let pause = self.containerd.ensure_pause_image().await?;
        let id = new_id(32)?;
        let netns = (!config.host_network).then(|| self.netns_path(&id));
        // The intent comes before any side effect: a crash from here on is reclaimed
        // at the next start (see `reclaim`).
        self.write_intent(&id, &config.pod, netns.as_deref())?;
        crate::failpoint::hit("sandbox-after-intent");
        let result = self
            .make_sandbox(config, &id, netns.as_deref(), &pause)
            .await;
        if result.is_err() {
            // The pause image kept may be what failed (removed behind the agent's
            // back): the next sandbox looks it up again.
            self.containerd.forget_pause_image().await;
        }
        if result.is_err()
            && let Err(e) = self
                .teardown_sandbox(&id, &config.pod, netns.as_deref())
                .await
        {
            warn!(sandbox = %id, error = %e, "cleanup of a failed sandbox");
        }
        result
    }

    /// [`Runtime::remove_sandbox`](crate::runtime::Runtime::remove_sandbox).
    pub(super) async fn sandbox_remove(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(c) = self.get_container(id).await? else {
            // The record may be gone while the pin is left from a crash mid-teardown.
            let pin = self.netns_path(id);
            let netns = pin.exists().then_some(pin);
            let pod = PodRef {
                uid: String::new(),
                name: String::new(),
                namespace: String::new(),
            };
            return self.teardown_sandbox(id, &pod, netns.as_deref()).await;
        };
        let l = &c.labels;
        let netns = l.get(keys::NETNS).map(PathBuf::from);
        self.teardown_sandbox(id, &pod_of(l), netns.as_deref())
            .await
    }

    /// Removes everything of a sandbox that exists, continuing past failures.
    pub(super) async fn teardown_sandbox(
        &self,
        id: &str,
        pod: &PodRef,
        netns: Option<&Path>,
    ) -> Result<(), RuntimeError> {
        let mut errors = Vec::new();
        self.created.forget_sandbox(id);
        if self.kill(id, id, SIGKILL).await.unwrap_or(false) {
            let _ = self.wait(id, KILL_WAIT).await;
        }
        if let Err(e) = self.delete_task(id, id).await {
            errors.push(e);
        }
        let builtin = match self.podnet.as_deref() {
            Some(p) if p.holds(id).await.unwrap_or(false) => Some(p),
            _ => None,
        };
        if let (Some(podnet), Some(_)) = (builtin, netns)
            && let Err(source) = podnet.teardown(id).await
        {
            errors.push(RuntimeError::BuiltinNetwork {
                id: id.to_owned(),
                source: Box::new(source),
            });
        }
        if let Some(netns) = netns {
            match self.cni.get() {
                Ok(_) if builtin.is_some() => {}
                Ok(cni) => {
                    let req = CniRequest {
                        container_id: id,
                        netns,
                        ifname: "eth0",
                        pod_namespace: &pod.namespace,
                        pod_name: &pod.name,
                        pod_uid: &pod.uid,
                        // Those ADD had, from the CNI cache.
                        port_mappings: &[],
                    };
                    if let Err(source) = cni.teardown(&req).await {
                        errors.push(RuntimeError::Network {
                            id: id.to_owned(),
                            source: Box::new(source),
                        });
                    }
                }
                Err(source) => errors.push(RuntimeError::Network {
                    id: id.to_owned(),
                    source: Box::new(source),
                }),
            }
            if let Err(e) = NetNs::remove(netns) {
                errors.push(e.into());
            }
        }
        if let Err(e) = self.delete_container_record(id).await {
            errors.push(e);
        }
        if let Err(e) = self.containerd.remove_snapshot(id).await {
            errors.push(e.into());
        }
        let files = self.files_dir(id);
        match std::fs::remove_dir_all(&files) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => errors.push(RuntimeError::Io {
                path: files,
                source: e,
            }),
            _ => {}
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(RuntimeError::Teardown(errors)),
        }
    }

    async fn make_sandbox(
        &self,
        config: &SandboxConfig,
        id: &str,
        netns: Option<&Path>,
        pause: &ImageInfo,
    ) -> Result<SandboxInfo, RuntimeError> {
        let mut ips = Vec::new();
        if let Some(netns) = netns {
            // A mount and a namespace switch on a thread of its own: blocking work
            // stays off the async threads.
            let path = netns.to_path_buf();
            tokio::task::spawn_blocking(move || NetNs::create(&path))
                .await
                .map_err(|e| RuntimeError::Io {
                    path: netns.to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })??;
            crate::failpoint::hit("sandbox-after-netns");
            if let Some(podnet) = self.builtin_for_setup(id)? {
                ips = podnet
                    .setup(id, netns, &config.port_mappings)
                    .await
                    .map_err(|source| RuntimeError::BuiltinNetwork {
                        id: id.to_owned(),
                        source: Box::new(source),
                    })?;
                crate::failpoint::hit("sandbox-after-cni");
            }
        }
        if let Some(netns) = netns.filter(|_| ips.is_empty()) {
            let cni = self.cni.get().map_err(|source| RuntimeError::Network {
                id: id.to_owned(),
                source: Box::new(source),
            })?;
            let req = CniRequest {
                container_id: id,
                netns,
                ifname: "eth0",
                pod_namespace: &config.pod.namespace,
                pod_name: &config.pod.name,
                pod_uid: &config.pod.uid,
                port_mappings: &config.port_mappings,
            };
            ips = cni
                .setup(&req)
                .await
                .map_err(|source| RuntimeError::Network {
                    id: id.to_owned(),
                    source: Box::new(source),
                })?
                .ips;
            crate::failpoint::hit("sandbox-after-cni");
        }
        let files_dir = self.files_dir(id);
        pod_files::write(&files_dir, config, &ips)?;
        std::fs::create_dir_all(&config.log_directory).map_err(io_err(&config.log_directory))?;

        let mut config = config.clone();
        config.oom_score_adj = Some(oom::restrict(
            config.oom_score_adj.unwrap_or(spec::PAUSE_OOM_SCORE_ADJ),
            self.lowest_oom_score_adj,
        ));
        let config = &config;
        let spec = spec::sandbox_spec(config, id, netns, &pause.config)?;
        let rootfs = self.containerd.prepare_snapshot(pause, id).await?;
        crate::failpoint::hit("sandbox-after-snapshot");
        let mut labels = pod_labels(&config.pod, keys::KIND_SANDBOX);
        labels.extend([
            (keys::ATTEMPT.to_owned(), config.attempt.to_string()),
            (
                keys::HOST_NETWORK.to_owned(),
                config.host_network.to_string(),
            ),
            (
                keys::SHARE_PID.to_owned(),
                (config.share_process_namespace || config.host_pid).to_string(),
            ),
            (
                keys::LOG_PATH.to_owned(),
                config.log_directory.to_string_lossy().into_owned(),
            ),
            (
                keys::IPS.to_owned(),
                ips.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]);
        if let Some(netns) = netns {
            labels.insert(keys::NETNS.to_owned(), netns.to_string_lossy().into_owned());
        }
        if let Some(parent) = &config.cgroup_parent {
            labels.insert(keys::CGROUP_PARENT.to_owned(), parent.clone());
        }
        if !config.runtime_handler.is_empty() {
            labels.insert(
                keys::RUNTIME_HANDLER.to_owned(),
                config.runtime_handler.clone(),
            );
        }
        let handler = self.runtime_handler(&config.runtime_handler)?;
        self.create_record(id, &pause.name, &spec, labels, handler)
            .await?;
        crate::failpoint::hit("sandbox-after-record");
        let pid = self.create_and_start_task(id, id, rootfs, "", None).await?;
        debug!(pod = %config.pod.name, sandbox = %id, pid, ?ips, "sandbox running");
        Ok(SandboxInfo {
            id: id.to_owned(),
            pod: config.pod.clone(),
            attempt: config.attempt,
            ready: true,
            pid,
            ips,
            netns: netns.map(Path::to_path_buf),
            host_network: config.host_network,
            share_pid: config.share_process_namespace || config.host_pid,
            cgroup_parent: config.cgroup_parent.clone(),
            files_dir,
            log_directory: config.log_directory.clone(),
            created_at: SystemTime::now(),
            runtime_handler: config.runtime_handler.clone(),
        })
    }
}
