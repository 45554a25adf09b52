//! Containers created by this process and not yet started: the record containerd
//! answered the create with (its spec dropped) and the root filesystem mounts the
//! snapshot was prepared with. A start finds them here instead of asking containerd
//! for the record, the task (none can exist yet) and the mounts again: three round
//! trips fewer per container start. A start that fails, a container removed, or one
//! created by an earlier agent process takes the long way (containerd asked).

use std::collections::HashMap;
use std::sync::Mutex;

use containerd_client::services::v1::Container;
use containerd_client::types::Mount;

/// Container ID → its record and mounts, until its start or removal.
#[derive(Debug, Default)]
pub(super) struct Created(Mutex<HashMap<String, (Container, Vec<Mount>)>>);

impl Created {
    /// Keeps a container just created.
    pub(super) fn keep(&self, record: Container, mounts: Vec<Mount>) {
        self.lock().insert(record.id.clone(), (record, mounts));
    }

    /// Takes a container's record and mounts out (for its start); `None` when this
    /// process did not create it or already took it.
    pub(super) fn take(&self, id: &str) -> Option<(Container, Option<Vec<Mount>>)> {
        self.lock()
            .remove(id)
            .map(|(record, mounts)| (record, Some(mounts)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Container, Vec<Mount>)>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_once() {
        let created = Created::default();
        created.keep(
            Container {
                id: "a".into(),
                ..Default::default()
            },
            vec![Mount::default()],
        );
        let (record, mounts) = created.take("a").expect("kept");
        assert_eq!(record.id, "a");
        assert_eq!(mounts.map(|m| m.len()), Some(1));
        assert!(created.take("a").is_none());
        assert!(created.take("b").is_none());
    }
}
