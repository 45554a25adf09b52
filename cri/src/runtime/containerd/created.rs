//! Containers created by this process and not yet started: the record containerd
//! answered the create with (its spec dropped) and the root filesystem mounts the
//! snapshot was prepared with. A start finds them here instead of asking containerd
//! for the record, the task (none can exist yet) and the mounts again: three round
//! trips fewer per container start. A start that fails, a container removed, or one
//! created by an earlier agent process takes the long way (containerd asked). A
//! sandbox torn down drops the records of its containers never started nor removed,
//! so none outlives its pod.

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

    /// Drops the records of sandbox `sandbox_id`'s containers (it is being torn down:
    /// they will never start); returns how many there were.
    pub(super) fn forget_sandbox(&self, sandbox_id: &str) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, (record, _)| {
            record
                .labels
                .get(crate::runtime::keys::SANDBOX_ID)
                .map(String::as_str)
                != Some(sandbox_id)
        });
        before - map.len()
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

    #[test]
    fn a_sandbox_torn_down_drops_its_containers_only() {
        let created = Created::default();
        let of = |id: &str, sandbox: &str| Container {
            id: id.into(),
            labels: [(
                crate::runtime::keys::SANDBOX_ID.to_owned(),
                sandbox.to_owned(),
            )]
            .into(),
            ..Default::default()
        };
        created.keep(of("a1", "sa"), Vec::new());
        created.keep(of("a2", "sa"), Vec::new());
        created.keep(of("b1", "sb"), Vec::new());
        assert_eq!(created.forget_sandbox("sa"), 2);
        assert_eq!(created.forget_sandbox("sa"), 0);
        assert!(created.take("a1").is_none());
        assert!(created.take("a2").is_none());
        assert_eq!(created.take("b1").map(|(c, _)| c.id), Some("b1".to_owned()));
    }
}
