//! downwardAPI volumes (upstream's `pkg/volume/downwardapi`): the pod's metadata
//! (`name`, `namespace`, `uid`, `labels`, `annotations`, single labels and
//! annotations) and containers' `resourceFieldRef`s as files, written atomically into
//! a tmpfs (upstream wraps a `medium: Memory` emptyDir). Labels and annotations
//! follow changes: the manager redoes the volume when they change and the atomic
//! writer swaps in the new content.

use std::path::PathBuf;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, Volume};

use super::atomic_writer::{FileProjection, Payload};
use super::{PodContext, Reason, SetupContext, VolumePlugin, VolumeState, file_mode};
use crate::pod::podspec::{FieldValues, field_ref, format_map, resource_field};

/// The downwardAPI plugin.
pub(crate) struct DownwardApiPlugin;

impl VolumePlugin for DownwardApiPlugin {
    fn kind(&self) -> &'static str {
        "downwardAPI"
    }

    fn dir_name(&self) -> Option<&'static str> {
        Some("kubernetes.io~downward-api")
    }

    fn can_support(&self, v: &Volume) -> bool {
        v.downward_api.is_some()
    }

    fn setup<'a>(
        &'a self,
        cx: &'a SetupContext<'a>,
        _state: &'a mut VolumeState,
    ) -> BoxFuture<'a, Result<PathBuf, Reason>> {
        Box::pin(async move {
            let source = cx.volume.downward_api.clone().unwrap_or_default();
            let items = source.items.unwrap_or_default();
            let payload = collect(&items, cx.ctx, file_mode(source.default_mode))?;
            super::write_payload(cx, payload, true).await
        })
    }
}

/// The files of downwardAPI `items` (upstream's `CollectData`, also used by projected
/// volumes); every failing item is reported.
///
/// # Errors
/// [`Reason::DownwardApi`] (several as [`Reason::Several`]).
pub(crate) fn collect(
    items: &[DownwardAPIVolumeFile],
    ctx: &PodContext<'_>,
    default_mode: u32,
) -> Result<Payload, Reason> {
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    for item in items {
        match value(item, ctx) {
            Ok(data) => {
                let mode = item.mode.map_or(default_mode, |m| file_mode(Some(m)));
                payload.insert(
                    item.path.clone(),
                    FileProjection {
                        data: data.into_bytes(),
                        mode,
                        owner: None,
                    },
                );
            }
            Err(reason) => errors.push(Reason::DownwardApi {
                path: item.path.clone(),
                reason,
            }),
        }
    }
    Reason::aggregate(errors).map(|()| payload)
}

fn value(item: &DownwardAPIVolumeFile, ctx: &PodContext<'_>) -> Result<String, String> {
    let pod = ctx.pod;
    let m = &pod.metadata;
    if let Some(fr) = &item.field_ref {
        return match fr.field_path.as_str() {
            "metadata.labels" => Ok(format_map(m.labels.as_ref())),
            "metadata.annotations" => Ok(format_map(m.annotations.as_ref())),
            other => {
                let fields = FieldValues {
                    node_name: ctx.node_name.clone(),
                    host_ip: ctx.host_ip.clone(),
                    pod_ip: ctx.pod_ips.first().cloned().unwrap_or_default(),
                    pod_ips: ctx.pod_ips.join(","),
                    container: None,
                    capacity: ctx.capacity,
                    env_objects: Default::default(),
                };
                field_ref(pod, other, &fields)
                    .ok_or_else(|| format!("unsupported fieldRef {other:?}"))
            }
        };
    }
    if let Some(rf) = &item.resource_field_ref {
        let name = rf.container_name.as_deref().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let container = spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == name)
            .ok_or_else(|| format!("resourceFieldRef names unknown container {name:?}"))?;
        return resource_field(container, rf, &ctx.capacity);
    }
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::podspec::NodeCapacity;
    use k8s_openapi::api::core::v1::{
        Container, ObjectFieldSelector, Pod, PodSpec, ResourceFieldSelector, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub(crate) fn field(path: &str, field_path: &str) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn values_as_upstream() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                uid: Some("u-1".into()),
                labels: Some([("b".into(), "2".into()), ("a".into(), "x\"y".into())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    resources: Some(ResourceRequirements {
                        limits: Some([("memory".into(), Quantity("64Mi".into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let ctx = PodContext {
            pod: &pod,
            node_name: "n1".into(),
            host_ip: "10.0.0.1".into(),
            pod_ips: vec![],
            capacity: NodeCapacity {
                cpu_millis: 3000,
                memory_bytes: 1 << 30,
            },
        };
        let resource = |path: &str, res: &str, divisor: Option<&str>| DownwardAPIVolumeFile {
            path: path.into(),
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some("app".into()),
                resource: res.into(),
                divisor: divisor.map(|d| Quantity(d.into())),
            }),
            mode: Some(0o600),
            ..Default::default()
        };
        let items = [
            field("name", "metadata.name"),
            field("ns", "metadata.namespace"),
            field("uid", "metadata.uid"),
            field("labels", "metadata.labels"),
            field("one/label", "metadata.labels['b']"),
            resource("mem", "limits.memory", Some("1Mi")),
            resource("cpu", "limits.cpu", Some("1m")),
        ];
        let payload = collect(&items, &ctx, 0o644).expect("collect");
        let text = |k: &str| String::from_utf8(payload[k].data.clone()).expect("utf8");
        assert_eq!(text("name"), "web");
        assert_eq!(text("ns"), "prod");
        assert_eq!(text("uid"), "u-1");
        assert_eq!(text("labels"), "a=\"x\\\"y\"\nb=\"2\"");
        assert_eq!(text("one/label"), "2");
        assert_eq!(text("mem"), "64");
        // No CPU limit: the context's capacity, not the machine's.
        assert_eq!(text("cpu"), "3000");
        assert_eq!(payload["name"].mode, 0o644);
        assert_eq!(payload["mem"].mode, 0o600);

        let bad = [
            field("x", "metadata.nope"),
            resource("y", "limits.gpu", None),
        ];
        let err = collect(&bad, &ctx, 0o644)
            .expect_err("bad items")
            .to_string();
        assert!(
            err.starts_with("[downwardAPI item \"x\": unsupported fieldRef"),
            "{err}"
        );
        assert!(
            err.contains("unsupported container resource \"limits.gpu\""),
            "{err}"
        );
    }
}
