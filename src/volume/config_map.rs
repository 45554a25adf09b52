//! configMap volumes (upstream's `pkg/volume/configmap`): a ConfigMap's `data` and
//! `binaryData` as files on disk, every key or the `items` chosen (key → path, mode),
//! `defaultMode` 0644. A missing ConfigMap makes an empty volume when `optional`, an
//! error otherwise; so does a key named in `items` that the ConfigMap lacks. Content is
//! re-read once per sync period and swapped in by the atomic writer.
//!
//! [`make_payload`] is upstream's `MakePayload`, shared with secret and projected
//! volumes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{KeyToPath, Volume};

use super::atomic_writer::{FileProjection, Payload};
use super::{ObjectSource, Reason, SetupContext, VolumePlugin, VolumeState, file_mode};

/// The configMap plugin.
pub(crate) struct ConfigMapPlugin;

impl VolumePlugin for ConfigMapPlugin {
    fn kind(&self) -> &'static str {
        "configMap"
    }

    fn dir_name(&self) -> Option<&'static str> {
        Some("kubernetes.io~configmap")
    }

    fn can_support(&self, v: &Volume) -> bool {
        v.config_map.is_some()
    }

    fn setup<'a>(
        &'a self,
        cx: &'a SetupContext<'a>,
        _state: &'a mut VolumeState,
    ) -> BoxFuture<'a, Result<PathBuf, Reason>> {
        Box::pin(async move {
            let source = cx.volume.config_map.clone().unwrap_or_default();
            let optional = source.optional.unwrap_or(false);
            let data = fetch(cx.objects, cx.ctx.namespace(), &source.name, optional).await?;
            let payload = make_payload(
                source.items.as_deref(),
                &data,
                file_mode(source.default_mode),
                optional,
                Reason::MissingConfigKey,
            )?;
            super::write_payload(cx, payload, false).await
        })
    }

    fn needs_update(&self, state: &VolumeState, now: SystemTime) -> bool {
        state.sync_due(now)
    }
}

/// The ConfigMap's keys and bytes (`data` and `binaryData`); empty when it is missing
/// and `optional`.
///
/// # Errors
/// [`Reason::NotFound`] (`configmap "x" not found`) when missing and not optional,
/// [`Reason::Object`] when the source fails.
pub(crate) async fn fetch(
    objects: &dyn ObjectSource,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, Reason> {
    let Some(cm) = objects.config_map(namespace, name).await? else {
        return absent("configmap", name, optional);
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.into_iter().flatten() {
        data.entry(k).or_insert(v.0);
    }
    Ok(data)
}

/// What a missing source object (`kind` `name`) gives: no keys when `optional`, else
/// [`Reason::NotFound`] (`<kind> "<name>" not found`). Shared with secret volumes.
pub(crate) fn absent(
    kind: &'static str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>, Reason> {
    if optional {
        return Ok(BTreeMap::new());
    }
    Err(Reason::NotFound {
        kind,
        name: name.to_owned(),
    })
}

/// Upstream's `MakePayload`: without `items` every key under its own name with
/// `default_mode`; with `items` the keys named, at their paths, with their modes. A
/// missing key is skipped when `optional`, else `missing(key)`.
///
/// # Errors
/// `missing(key)` for an absent key of a non-optional source.
pub(crate) fn make_payload(
    items: Option<&[KeyToPath]>,
    data: &BTreeMap<String, Vec<u8>>,
    default_mode: u32,
    optional: bool,
    missing: fn(String) -> Reason,
) -> Result<Payload, Reason> {
    let mut payload = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (key, bytes) in data {
                payload.insert(
                    key.clone(),
                    FileProjection {
                        data: bytes.clone(),
                        mode: default_mode,
                        owner: None,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let Some(bytes) = data.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(missing(item.key.clone()));
                };
                let mode = item.mode.map_or(default_mode, |m| file_mode(Some(m)));
                payload.insert(
                    item.path.clone(),
                    FileProjection {
                        data: bytes.clone(),
                        mode,
                        owner: None,
                    },
                );
            }
        }
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_rules() {
        let data: BTreeMap<String, Vec<u8>> =
            [("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())].into();
        let all =
            make_payload(None, &data, 0o640, false, Reason::MissingConfigKey).expect("payload");
        assert_eq!(all.len(), 2);
        assert_eq!(all["a"].mode, 0o640);
        let items = [KeyToPath {
            key: "b".into(),
            path: "dir/b.txt".into(),
            mode: Some(0o400),
        }];
        let some = make_payload(Some(&items), &data, 0o644, false, Reason::MissingConfigKey)
            .expect("payload");
        assert_eq!(some.keys().collect::<Vec<_>>(), ["dir/b.txt"]);
        assert_eq!(some["dir/b.txt"].mode, 0o400);
        let missing = [KeyToPath {
            key: "zz".into(),
            path: "zz".into(),
            mode: None,
        }];
        let err = make_payload(
            Some(&missing),
            &data,
            0o644,
            false,
            Reason::MissingConfigKey,
        )
        .expect_err("missing key");
        assert_eq!(
            err.to_string(),
            "configmap references non-existent config key: zz"
        );
        let err = make_payload(
            Some(&missing),
            &data,
            0o644,
            false,
            Reason::MissingSecretKey,
        )
        .expect_err("missing key");
        assert_eq!(err.to_string(), "references non-existent secret key: zz");
        let none = make_payload(Some(&missing), &data, 0o644, true, Reason::MissingConfigKey)
            .expect("optional");
        assert!(none.is_empty());
    }
}
