//! API objects and a proxier on the recording fake, shared by the unit tests (and by the
//! kernel tests and the bench through `crate::testing`).

pub use crate::testing::*;
