//! The CLI's tools besides the agent: `nodelet pods`, `nodelet proxy`, `nodelet run`,
//! `nodelet completion`/`man`,
//! `nodelet validate` (manifests, and `--config` files).

pub mod docs;
pub mod pods;
pub mod proxy;
pub mod run;
pub mod validate;
pub mod validate_config;
