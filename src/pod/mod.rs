//! The pod core: the manager that turns sources into pod workers, the workers that
//! own each pod's runtime state, the status they publish, and the translation of a
//! pod spec into what the runtime takes (sandbox and container configs, env, hooks,
//! the pod's cgroup).

pub mod admission;
pub mod cgroups;
pub mod env;
pub mod expand;
pub mod hooks;
pub mod mailbox;
pub mod manager;
pub mod podspec;
pub mod router;
pub mod runtimeclass;
pub mod status;
// Consumer registration and versions serve the apiserver status poster (issue 11);
// until it exists only the tests use them.
#[cfg_attr(not(test), allow(dead_code))]
pub mod status_store;
pub mod sync_loop;
pub mod worker;

#[cfg(test)]
pub mod fake_runtime;
#[cfg(test)]
pub mod testing;
