//! Volumes and volume mounts (`ValidateVolumes`, `validateVolumeSource` for the sources
//! nodelet can set up and the common ones it cannot, `ValidateVolumeMounts`) and the path
//! rules they share.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{KeyToPath, Volume, VolumeMount};

use super::names::dns1123_label;
use super::{FILE_MODE_MESSAGE, FieldError};
use crate::defaults::volume_sources;
use crate::quantity::Quantity;

/// Validates the volumes and returns the names of the valid ones, which are
/// the ones mounts may refer to (as upstream does).
pub(super) fn validate_volumes<'a>(
    volumes: &'a [Volume],
    errs: &mut Vec<FieldError>,
) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let path = format!("spec.volumes[{i}]");
        let mut volume_errs = Vec::new();
        validate_volume_source(volume, &path, &mut volume_errs);
        let name_path = format!("{path}.name");
        if volume.name.is_empty() {
            volume_errs.push(FieldError::required(&name_path, ""));
        } else {
            for msg in dns1123_label(&volume.name) {
                volume_errs.push(FieldError::invalid(&name_path, volume.name.as_str(), msg));
            }
        }
        if names.contains(volume.name.as_str()) {
            volume_errs.push(FieldError::duplicate(&name_path, volume.name.as_str()));
        }
        if volume_errs.is_empty() {
            names.insert(volume.name.as_str());
        }
        errs.append(&mut volume_errs);
    }
    names
}

fn validate_volume_source(volume: &Volume, path: &str, errs: &mut Vec<FieldError>) {
    let sources = volume_sources(volume);
    let Some((first, others)) = sources.split_first() else {
        errs.push(FieldError::required(path, "must specify a volume type"));
        return;
    };
    for other in others {
        errs.push(FieldError::forbidden(
            format!("{path}.{other}"),
            "may not specify more than 1 volume type",
        ));
    }
    let source_path = format!("{path}.{first}");
    match *first {
        "emptyDir" => {
            let size = volume
                .empty_dir
                .as_ref()
                .and_then(|e| e.size_limit.as_ref());
            if let Some(size) = size
                && Quantity::parse(&size.0).is_ok_and(|q| q.is_negative())
            {
                errs.push(FieldError::forbidden(
                    format!("{source_path}.sizeLimit"),
                    "SizeLimit field must be a valid resource quantity",
                ));
            }
        }
        "persistentVolumeClaim" => {
            let claim = volume.persistent_volume_claim.as_ref();
            if claim.is_some_and(|c| c.claim_name.is_empty()) {
                errs.push(FieldError::required(format!("{source_path}.claimName"), ""));
            }
        }
        "nfs" => {
            if let Some(nfs) = &volume.nfs {
                if nfs.server.is_empty() {
                    errs.push(FieldError::required(format!("{source_path}.server"), ""));
                }
                if nfs.path.is_empty() {
                    errs.push(FieldError::required(format!("{source_path}.path"), ""));
                }
                if !nfs.path.starts_with('/') {
                    errs.push(FieldError::invalid(
                        format!("{source_path}.path"),
                        nfs.path.as_str(),
                        "must be an absolute path",
                    ));
                }
            }
        }
        "hostPath" => {
            if let Some(host_path) = &volume.host_path {
                if host_path.path.is_empty() {
                    errs.push(FieldError::required(format!("{source_path}.path"), ""));
                    return;
                }
                no_backsteps(&host_path.path, &format!("{source_path}.path"), errs);
                let kind = host_path.type_.as_deref().unwrap_or("");
                const TYPES: [&str; 8] = [
                    "",
                    "BlockDevice",
                    "CharDevice",
                    "Directory",
                    "DirectoryOrCreate",
                    "File",
                    "FileOrCreate",
                    "Socket",
                ];
                if !TYPES.contains(&kind) {
                    errs.push(FieldError::not_supported(
                        format!("{source_path}.type"),
                        kind,
                        &TYPES,
                    ));
                }
            }
        }
        "secret" => {
            if let Some(secret) = &volume.secret {
                if secret.secret_name.as_deref().unwrap_or("").is_empty() {
                    errs.push(FieldError::required(
                        format!("{source_path}.secretName"),
                        "",
                    ));
                }
                file_mode(
                    secret.default_mode,
                    &format!("{source_path}.defaultMode"),
                    errs,
                );
                key_to_paths(secret.items.as_deref(), &source_path, errs);
            }
        }
        "configMap" => {
            if let Some(config_map) = &volume.config_map {
                if config_map.name.is_empty() {
                    errs.push(FieldError::required(format!("{source_path}.name"), ""));
                }
                file_mode(
                    config_map.default_mode,
                    &format!("{source_path}.defaultMode"),
                    errs,
                );
                key_to_paths(config_map.items.as_deref(), &source_path, errs);
            }
        }
        "downwardAPI" => {
            if let Some(downward) = &volume.downward_api {
                file_mode(
                    downward.default_mode,
                    &format!("{source_path}.defaultMode"),
                    errs,
                );
                for (i, item) in downward.items.iter().flatten().enumerate() {
                    let item_path = format!("{source_path}.items[{i}]");
                    if item.path.is_empty() {
                        errs.push(FieldError::required(format!("{item_path}.path"), ""));
                    }
                    local_non_reserved_path(&item.path, &format!("{item_path}.path"), errs);
                    file_mode(item.mode, &format!("{item_path}.mode"), errs);
                }
            }
        }
        "projected" => {
            if let Some(projected) = &volume.projected {
                file_mode(
                    projected.default_mode,
                    &format!("{source_path}.defaultMode"),
                    errs,
                );
            }
        }
        // The other sources are valid specs whose fields are not checked here; a source
        // nodelet cannot set up fails the pod when it is mounted, with the reason.
        _ => {}
    }
}

fn key_to_paths(items: Option<&[KeyToPath]>, source_path: &str, errs: &mut Vec<FieldError>) {
    for (i, item) in items.unwrap_or_default().iter().enumerate() {
        let path = format!("{source_path}.items[{i}]");
        if item.key.is_empty() {
            errs.push(FieldError::required(format!("{path}.key"), ""));
        }
        if item.path.is_empty() {
            errs.push(FieldError::required(format!("{path}.path"), ""));
        }
        local_non_reserved_path(&item.path, &format!("{path}.path"), errs);
        file_mode(item.mode, &format!("{path}.mode"), errs);
    }
}

fn file_mode(mode: Option<i32>, path: &str, errs: &mut Vec<FieldError>) {
    if let Some(mode) = mode
        && !(0..=0o777).contains(&mode)
    {
        errs.push(FieldError::invalid(path, mode, FILE_MODE_MESSAGE));
    }
}

pub(super) fn validate_mounts(
    mounts: &[VolumeMount],
    path: &str,
    volumes: &HashSet<&str>,
    privileged: bool,
    errs: &mut Vec<FieldError>,
) {
    let mounts_path = format!("{path}.volumeMounts");
    let mut mount_points = HashSet::new();
    for (i, mount) in mounts.iter().enumerate() {
        let mount_path = format!("{mounts_path}[{i}]");
        if let Some(propagation) = mount.mount_propagation.as_deref() {
            // Reported on the list's path, as upstream does.
            let propagation_path = format!("{mounts_path}.mountPropagation");
            const PROPAGATIONS: [&str; 3] = ["Bidirectional", "HostToContainer", "None"];
            if !PROPAGATIONS.contains(&propagation) {
                errs.push(FieldError::not_supported(
                    &propagation_path,
                    propagation,
                    &PROPAGATIONS,
                ));
            }
            if propagation == "Bidirectional" && !privileged {
                errs.push(FieldError::forbidden(
                    propagation_path,
                    "Bidirectional mount propagation is available only to privileged containers",
                ));
            }
        }
        if mount.name.is_empty() {
            errs.push(FieldError::required(format!("{mount_path}.name"), ""));
        }
        if !volumes.contains(mount.name.as_str()) {
            errs.push(FieldError::not_found(
                format!("{mount_path}.name"),
                mount.name.as_str(),
            ));
        }
        if mount.mount_path.is_empty() {
            errs.push(FieldError::required(format!("{mount_path}.mountPath"), ""));
        }
        if !mount_points.insert(mount.mount_path.as_str()) {
            errs.push(FieldError::invalid(
                format!("{mount_path}.mountPath"),
                mount.mount_path.as_str(),
                "must be unique",
            ));
        }
        // Upstream reports subPath problems on the list's path, without the
        // index (`volumeMounts.subPath`); kept so messages match.
        let sub_path = mount.sub_path.as_deref().unwrap_or("");
        if !sub_path.is_empty() {
            local_descending_path(sub_path, &format!("{mounts_path}.subPath"), errs);
        }
        let sub_path_expr = mount.sub_path_expr.as_deref().unwrap_or("");
        if !sub_path_expr.is_empty() {
            if !sub_path.is_empty() {
                errs.push(FieldError::invalid(
                    format!("{mount_path}.subPathExpr"),
                    sub_path_expr,
                    "subPathExpr and subPath are mutually exclusive",
                ));
            }
            local_descending_path(sub_path_expr, &format!("{mounts_path}.subPathExpr"), errs);
        }
    }
}

/// `validateLocalDescendingPath`.
pub(super) fn local_descending_path(target: &str, path: &str, errs: &mut Vec<FieldError>) {
    if target.starts_with('/') {
        errs.push(FieldError::invalid(path, target, "must be a relative path"));
    }
    no_backsteps(target, path, errs);
}

/// `validateLocalNonReservedPath`: also no leading `..` (reserved for the
/// atomic writer's hidden directories).
fn local_non_reserved_path(target: &str, path: &str, errs: &mut Vec<FieldError>) {
    local_descending_path(target, path, errs);
    if target.starts_with("..") && !target.starts_with("../") {
        errs.push(FieldError::invalid(
            path,
            target,
            "must not start with '..'",
        ));
    }
}

/// `validatePathNoBacksteps`: one error however many `..` there are.
pub(super) fn no_backsteps(target: &str, path: &str, errs: &mut Vec<FieldError>) {
    if target.split('/').any(|part| part == "..") {
        errs.push(FieldError::invalid(path, target, "must not contain '..'"));
    }
}
