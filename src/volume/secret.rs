//! secret volumes (upstream's `pkg/volume/secret`): a Secret's data as files, with
//! configMap's rules for `items`, `defaultMode` and `optional`, in a tmpfs mounted once
//! on the volume directory so secret bytes never reach a disk.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Volume;

use super::config_map::{absent, make_payload};
use super::{ObjectSource, Reason, SetupContext, VolumePlugin, VolumeState, file_mode};

/// The secret plugin.
pub(crate) struct SecretPlugin;

impl VolumePlugin for SecretPlugin {
    fn kind(&self) -> &'static str {
        "secret"
    }

    fn dir_name(&self) -> Option<&'static str> {
        Some("kubernetes.io~secret")
    }

    fn can_support(&self, v: &Volume) -> bool {
        v.secret.is_some()
    }

    fn setup<'a>(
        &'a self,
        cx: &'a SetupContext<'a>,
        _state: &'a mut VolumeState,
    ) -> BoxFuture<'a, Result<PathBuf, Reason>> {
        Box::pin(async move {
            let source = cx.volume.secret.clone().unwrap_or_default();
            let optional = source.optional.unwrap_or(false);
            let name = source.secret_name.unwrap_or_default();
            let data = fetch(cx.objects, cx.ctx.namespace(), &name, optional).await?;
            let payload = make_payload(
                source.items.as_deref(),
                &data,
                file_mode(source.default_mode),
                optional,
                Reason::MissingSecretKey,
            )?;
            super::write_payload(cx, payload, true).await
        })
    }

    fn needs_update(&self, state: &VolumeState, now: SystemTime) -> bool {
        state.sync_due(now)
    }
}

/// The Secret's keys and bytes: `data`, with `stringData` over it as the apiserver
/// merges it (a Secret document beside static pods may carry either); empty when it
/// is missing and `optional`.
///
/// # Errors
/// [`Reason::NotFound`] (`secret "x" not found`) when missing and not optional,
/// [`Reason::Object`] when the source fails.
pub(crate) async fn fetch(
    objects: &dyn ObjectSource,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, Reason> {
    let Some(secret) = objects.secret(namespace, name).await? else {
        return absent("secret", name, optional);
    };
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in secret.string_data.into_iter().flatten() {
        data.insert(k, v.into_bytes());
    }
    Ok(data)
}
