//! The pod core: the manager that turns sources into pod workers, the workers that
//! own each pod's runtime state, the status they publish, and the translation of a
//! pod spec into what the runtime takes (sandbox and container configs, env, hooks,
//! the pod's cgroup).

pub mod cgroups;
pub mod expand;
pub mod hooks;
pub mod manager;
pub mod podspec;
pub mod status;
pub mod worker;
