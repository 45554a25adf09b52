//! A digest of a value's `Debug` form, which shows every field: how a set of pods or a
//! pod's spec is told apart from the last one seen without keeping a copy of it.

use std::fmt::{self, Debug, Write as _};

use sha2::{Digest as _, Sha256};

/// `fmt::Write` into a SHA-256, so the `Debug` form is hashed as it is formatted,
/// never held as a string.
struct Hasher(Sha256);

impl fmt::Write for Hasher {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// SHA-256 of `value`'s `Debug` form. Only for comparing within one process: `Debug`
/// output is not a stable format across builds.
pub fn debug_digest(value: &impl Debug) -> [u8; 32] {
    let mut h = Hasher(Sha256::new());
    // Writing into a hasher cannot fail.
    let _ = write!(h, "{value:?}");
    h.0.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_equal_digests_and_a_changed_field_changes_it() {
        let a = (1, "x", vec![Some(2)]);
        assert_eq!(debug_digest(&a), debug_digest(&(1, "x", vec![Some(2)])));
        assert_ne!(debug_digest(&a), debug_digest(&(1, "x", vec![Some(3)])));
        assert_ne!(debug_digest(&a), debug_digest(&(1, "x", vec![None::<i32>])));
    }

    #[test]
    fn is_the_sha256_of_the_debug_text() {
        let v = vec!["a", "b"];
        let want: [u8; 32] = Sha256::digest(format!("{v:?}").as_bytes()).into();
        assert_eq!(debug_digest(&v), want);
    }
}
