//! The CLI's tools besides the agent: `nodelet pods`, `nodelet run`, `nodelet validate`.

pub mod pods;
pub mod run;
pub mod validate;
