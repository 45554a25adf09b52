//! The proxier's sync decisions on the recording fake.
