//! Manager-level tests.
