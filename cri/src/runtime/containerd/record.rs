//! Container records: creating and deleting them, their labels (a start's time, the
//! image's stop signal) and the runtime handler's type and options they carry, and the log symlink named
//! from them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::container::Runtime as ContainerRuntimeInfo;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, UpdateContainerRequest,
};
use tonic::Code;
use tracing::warn;

use super::{ContainerdRuntime, grpc};
use crate::logs;
use crate::runtime::records::label;
use crate::runtime::{RuntimeError, RuntimeHandler, keys, spec};

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// The image's `StopSignal`, recorded at creation so a stop doesn't need the image.
pub(super) const STOP_SIGNAL_LABEL: &str = "io.nodelet.stop-signal";

/// Parses a stop signal as images name it: `SIGQUIT`, `QUIT` or `3`.
pub(super) fn parse_signal(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .and_then(|sig| u32::try_from(sig as i32).ok())
}

impl ContainerdRuntime {
    /// Records a container's start (the time label) and links its log, as upstream's
    /// startContainer: a missing link is logged, not an error.
    pub(super) async fn record_started(
        &self,
        c: Container,
        log_path: &Path,
    ) -> Result<(), RuntimeError> {
        let id = c.id.clone();
        let link = self.log_symlink(&c);
        self.set_labels(
            c,
            vec![(
                keys::STARTED_AT.to_owned(),
                jiff::Timestamp::now().to_string(),
            )],
        )
        .await?;
        if let Err(e) = logs::create_log_symlink(&link, log_path) {
            warn!(id, error = %e, "cannot make the container's log symlink");
        }
        Ok(())
    }

    /// Sets labels on a container record.
    pub(super) async fn set_labels(
        &self,
        mut c: Container,
        labels: Vec<(String, String)>,
    ) -> Result<(), RuntimeError> {
        let id = c.id.clone();
        let paths = labels.iter().map(|(k, _)| format!("labels.{k}")).collect();
        c.labels.extend(labels);
        let req = self.containerd.request(UpdateContainerRequest {
            container: Some(c),
            update_mask: Some(prost_types::FieldMask { paths }),
        });
        self.containers()
            .update(req)
            .await
            .map_err(grpc("update container", &id))?;
        Ok(())
    }

    /// The container's `/var/log/containers` symlink, named from its labels.
    pub(super) fn log_symlink(&self, c: &Container) -> PathBuf {
        let l = &c.labels;
        logs::log_symlink_path(
            &self.config.container_logs_dir,
            &label(l, keys::POD_NAME),
            &label(l, keys::POD_NAMESPACE),
            &label(l, keys::CONTAINER_NAME),
            &c.id,
        )
    }

    pub(super) async fn delete_container_record(&self, id: &str) -> Result<(), RuntimeError> {
        let req = self
            .containerd
            .request(DeleteContainerRequest { id: id.to_owned() });
        match self.containers().delete(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(grpc("delete container", id)(s)),
        }
    }

    pub(super) async fn create_record(
        &self,
        id: &str,
        image: &str,
        spec: &oci_spec::runtime::Spec,
        labels: HashMap<String, String>,
        handler: &RuntimeHandler,
    ) -> Result<Container, RuntimeError> {
        let value = serde_json::to_vec(spec).map_err(|e| RuntimeError::Spec {
            name: id.to_owned(),
            reason: e.to_string(),
        })?;
        // A systemd cgroupsPath needs runc's systemd driver: containerd hands the
        // container's runtime options to the shim when the task has none.
        let systemd = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .is_some_and(|p| spec::is_systemd_cgroups_path(&p.to_string_lossy()));
        let container = Container {
            id: id.to_owned(),
            labels,
            image: image.to_owned(),
            runtime: Some(ContainerRuntimeInfo {
                name: handler.runtime_type.clone(),
                options: handler.record_options(systemd),
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_owned(),
                value,
            }),
            snapshotter: self.containerd.snapshotter().to_owned(),
            snapshot_key: id.to_owned(),
            ..Default::default()
        };
        let req = self.containerd.request(CreateContainerRequest {
            container: Some(container.clone()),
        });
        let created = self
            .containers()
            .create(req)
            .await
            .map_err(grpc("create container", id))?
            .into_inner()
            .container;
        Ok(created.unwrap_or(container))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_as_images_name_them() {
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("quit"), Some(3));
        assert!(parse_signal("SIGRTMIN+3").is_none());
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("NOPE"), None);
    }
}
