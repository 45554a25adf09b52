//! [`SourceEvent`], what a pod source tells the pod manager. It is plain data over
//! k8s-openapi types, so it lives in this pure crate: the sources that produce it
//! (`nodelet-sources`) and the pod core that consumes it both depend on this crate,
//! and neither on the other.

use k8s_openapi::api::core::v1::Pod;

use crate::parse::ApiObject;

/// What a pod source tells the pod config.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// The complete set of pods this source wants now, replacing the previous set.
    Snapshot {
        /// The source's name (`"file"`, `"http"`, `"http-push"`).
        source: &'static str,
        /// The pods, in the source's order.
        pods: Vec<Pod>,
    },
    /// The complete set of ConfigMaps and Secrets this source holds now (documents
    /// beside its pods), replacing the previous set; sent before the snapshot of
    /// the pods that use them.
    Objects {
        /// The source's name.
        source: &'static str,
        /// The objects, defaulted and valid.
        objects: Vec<ApiObject>,
    },
}
