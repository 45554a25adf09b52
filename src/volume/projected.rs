//! projected volumes (upstream's `pkg/volume/projected`): configMap, secret,
//! downwardAPI and serviceAccountToken sources merged into one tmpfs directory with
//! one `defaultMode`. Every failing source is reported (upstream's aggregate error).
//!
//! Service account tokens come from [`ObjectSource::service_account_token`], bound to
//! the pod, with the source's `audience` (none: the apiserver's own) and
//! `expirationSeconds` (3600 when unset). A token is kept in the volume's state and
//! requested again once 80% of its life has passed (upstream's token manager), which
//! is also what makes `needs_update` true before the sync period ends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ServiceAccountTokenProjection, Volume};

use super::atomic_writer::{FileProjection, Payload};
use super::{
    CachedToken, Reason, SetupContext, TokenRequestSpec, VolumePlugin, VolumeState, config_map,
    downward_api, file_mode, secret,
};

/// A token's lifetime when the source does not say (the API's default).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// The projected plugin.
pub(crate) struct ProjectedPlugin;

impl VolumePlugin for ProjectedPlugin {
    fn kind(&self) -> &'static str {
        "projected"
    }

    fn dir_name(&self) -> Option<&'static str> {
        Some("kubernetes.io~projected")
    }

    fn can_support(&self, v: &Volume) -> bool {
        v.projected.is_some()
    }

    fn setup<'a>(
        &'a self,
        cx: &'a SetupContext<'a>,
        state: &'a mut VolumeState,
    ) -> BoxFuture<'a, Result<PathBuf, Reason>> {
        Box::pin(async move {
            let payload = collect(cx, state).await?;
            super::write_payload(cx, payload, true).await
        })
    }

    fn needs_update(&self, state: &VolumeState, now: SystemTime) -> bool {
        state.sync_due(now) || state.tokens.values().any(|t| t.refresh_at() <= now)
    }
}

async fn collect(cx: &SetupContext<'_>, state: &mut VolumeState) -> Result<Payload, Reason> {
    let source = cx.volume.projected.clone().unwrap_or_default();
    let default_mode = file_mode(source.default_mode);
    let namespace = cx.ctx.namespace();
    let mut payload = Payload::new();
    let mut errors = Vec::new();
    let mut tokens = BTreeMap::new();
    for s in source.sources.iter().flatten() {
        let part = if let Some(cm) = &s.config_map {
            let optional = cm.optional.unwrap_or(false);
            match config_map::fetch(cx.objects, namespace, &cm.name, optional).await {
                Ok(data) => config_map::make_payload(
                    cm.items.as_deref(),
                    &data,
                    default_mode,
                    optional,
                    Reason::MissingConfigKey,
                ),
                Err(e) => Err(e),
            }
        } else if let Some(sec) = &s.secret {
            let optional = sec.optional.unwrap_or(false);
            match secret::fetch(cx.objects, namespace, &sec.name, optional).await {
                Ok(data) => config_map::make_payload(
                    sec.items.as_deref(),
                    &data,
                    default_mode,
                    optional,
                    Reason::MissingSecretKey,
                ),
                Err(e) => Err(e),
            }
        } else if let Some(dapi) = &s.downward_api {
            let items = dapi.items.as_deref().unwrap_or_default();
            downward_api::collect(items, cx.ctx, default_mode)
        } else if let Some(sat) = &s.service_account_token {
            match token(cx, state, sat).await {
                Ok(t) => {
                    // Upstream: the token belongs to the user every container runs
                    // as (`FsUser`), mode 0600; with fsGroup also 0600 (the group
                    // then reads it through the volume's ownership); else the
                    // volume's defaultMode.
                    let owner = cx.ctx.fs_user();
                    let mode = if owner.is_some() || cx.fs_group.is_some() {
                        0o600
                    } else {
                        default_mode
                    };
                    let file = FileProjection {
                        data: t.token.clone().into_bytes(),
                        mode,
                        owner,
                    };
                    tokens.insert(sat.path.clone(), t);
                    Ok([(sat.path.clone(), file)].into())
                }
                Err(e) => Err(e),
            }
        } else if s.cluster_trust_bundle.is_some() {
            Err(Reason::UnsupportedProjection("clusterTrustBundle"))
        } else if s.pod_certificate.is_some() {
            Err(Reason::UnsupportedProjection("podCertificate"))
        } else {
            continue;
        };
        match part {
            Ok(files) => payload.extend(files),
            Err(e) => errors.push(e),
        }
    }
    state.tokens = tokens;
    Reason::aggregate(errors).map(|()| payload)
}

/// The cached token for `sat` while fresh and requested the same way, else a new one.
async fn token(
    cx: &SetupContext<'_>,
    state: &VolumeState,
    sat: &ServiceAccountTokenProjection,
) -> Result<CachedToken, Reason> {
    let pod = cx.ctx.pod;
    let request = TokenRequestSpec {
        namespace: cx.ctx.namespace().to_owned(),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        audiences: sat
            .audience
            .iter()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect(),
        expiration_seconds: sat.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
        pod_name: cx.ctx.name().to_owned(),
        pod_uid: cx.ctx.uid().to_owned(),
    };
    let cached = state
        .tokens
        .get(&sat.path)
        .filter(|cached| cached.request == request);
    if let Some(cached) = cached
        && cached.refresh_at() > cx.now
    {
        return Ok(cached.clone());
    }
    match cx.objects.service_account_token(request.clone()).await {
        Ok(issued) => Ok(CachedToken {
            request,
            token: issued.token,
            issued_at: cx.now,
            expiration: issued.expiration,
        }),
        // As upstream's token manager: a refresh that fails keeps a token that is
        // still valid, and the next sync tries again.
        Err(e) => match cached.filter(|c| c.expiration > cx.now) {
            Some(cached) => {
                tracing::warn!(
                    pod = cx.ctx.name(),
                    volume = %cx.volume.name,
                    error = %e,
                    "service account token refresh failed; keeping the current token"
                );
                Ok(cached.clone())
            }
            None => Err(e.into()),
        },
    }
}
