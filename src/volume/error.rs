//! The volume manager's errors: [`Reason`] says why one volume failed (the text of
//! upstream's messages), [`VolumeError`] wraps it as upstream's event message
//! (`MountVolume.SetUp failed for volume "x" : ...`) with the event reason.

use std::path::PathBuf;

use thiserror::Error;

use super::ObjectError;

/// Why one volume could not be set up (or torn down); the text after upstream's
/// `MountVolume.SetUp failed for volume "x" : `.
#[derive(Debug, Error)]
pub enum Reason {
    /// A non-optional ConfigMap or Secret does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// `configmap` or `secret`, as upstream's cache names them.
        kind: &'static str,
        /// The object's name.
        name: String,
    },
    /// `items` names a key the ConfigMap lacks.
    #[error("configmap references non-existent config key: {0}")]
    MissingConfigKey(String),
    /// `items` names a key the Secret lacks.
    #[error("references non-existent secret key: {0}")]
    MissingSecretKey(String),
    /// The object source failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// A path the atomic writer refuses (absolute, `..`, leading `..`, too long).
    #[error("{0}")]
    InvalidPath(String),
    /// A hostPath's `type` check failed.
    #[error("hostPath type check failed: {} is not a {want}", path.display())]
    HostPathType {
        /// The host path.
        path: PathBuf,
        /// What the type wanted.
        want: String,
    },
    /// A downwardAPI item that can't be resolved.
    #[error("downwardAPI item {path:?}: {reason}")]
    DownwardApi {
        /// The item's path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was done (`mkdir`, `write`, ...).
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A mount or unmount failed, or its options are wrong.
    #[error("{}: {reason}", path.display())]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A volume kind nodelet does not provide.
    #[error("{kind} volumes are not supported by nodelet yet")]
    Unsupported {
        /// The source's field name (`persistentVolumeClaim`, ...).
        kind: String,
    },
    /// A projected source nodelet does not provide (`clusterTrustBundle`,
    /// `podCertificate`).
    #[error("projected {0} sources are not supported by nodelet yet")]
    UnsupportedProjection(&'static str),
    /// Several sources of one volume failed (upstream's aggregate: `[a, b]`).
    #[error("[{}]", join(.0))]
    Several(Vec<Reason>),
    /// The blocking task doing the filesystem work died.
    #[error("volume task failed: {0}")]
    Task(String),
}

fn join(reasons: &[Reason]) -> String {
    reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Reason {
    /// One error from many: the only one alone, several as an aggregate.
    pub(crate) fn aggregate(mut errors: Vec<Reason>) -> Result<(), Reason> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Reason::Several(errors)),
        }
    }
}

/// A volume manager failure, worded as upstream's events.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// One volume could not be set up.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {reason}")]
    SetUp {
        /// The volume's name.
        volume: String,
        /// Why.
        reason: Reason,
    },
    /// Tearing down a pod's volumes met errors (all of them are here).
    #[error("UnmountVolume.TearDown failed for pod {pod_uid:?}: {}", join(errors))]
    TearDown {
        /// The pod.
        pod_uid: String,
        /// Every error met.
        errors: Vec<Reason>,
    },
    /// The pod's UID can't name a directory.
    #[error("pod {name:?} has no usable metadata.uid ({uid:?})")]
    BadUid {
        /// The pod's name.
        name: String,
        /// The UID.
        uid: String,
    },
}

impl VolumeError {
    /// The event reason: upstream's `FailedMount` / `FailedUnMount`.
    pub fn reason(&self) -> &'static str {
        match self {
            VolumeError::TearDown { .. } => "FailedUnMount",
            VolumeError::SetUp { .. } | VolumeError::BadUid { .. } => "FailedMount",
        }
    }

    /// The volume that failed, for a setup error.
    pub fn volume(&self) -> Option<&str> {
        match self {
            VolumeError::SetUp { volume, .. } => Some(volume),
            _ => None,
        }
    }
}
