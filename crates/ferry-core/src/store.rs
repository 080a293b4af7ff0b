//! Durable metadata kept beside a volume: the migration record, the region
//! index and the "source of a migration" marker.
//!
//! The engine never touches metadata except through this trait, so a backend
//! decides where it lives (sidecar files for file volumes, RADOS objects for
//! RBD) and tests can substitute a store that simulates crashes.
use crate::error::Result;

/// What a source volume says about the migration that took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMarker {
    /// Spec of the target.
    pub target: String,
    /// The migration was committed: the volume's data now lives in
    /// `target`, and whoever opens this volume by name is sent there.
    pub committed: bool,
}

impl SourceMarker {
    pub fn migrating(target: &str) -> Self {
        SourceMarker {
            target: target.to_string(),
            committed: false,
        }
    }

    pub fn committed(target: &str) -> Self {
        SourceMarker {
            target: target.to_string(),
            committed: true,
        }
    }

    /// One line of text: `migrating <spec>` or `committed <spec>`.
    pub fn encode(&self) -> String {
        let word = if self.committed {
            "committed"
        } else {
            "migrating"
        };
        format!("{word} {}\n", self.target)
    }

    /// Parses [`SourceMarker::encode`] output.
    pub fn decode(text: &str) -> Option<Self> {
        let (word, target) = text.trim().split_once(' ')?;
        let committed = match word {
            "committed" => true,
            "migrating" => false,
            _ => return None,
        };
        (!target.is_empty()).then(|| SourceMarker {
            target: target.to_string(),
            committed,
        })
    }
}

/// Where a volume keeps ferry's metadata about it.
pub trait MetaStore: Send + Sync {
    /// Where the metadata lives, for messages.
    fn describe(&self) -> String;

    /// Announces the named fault point `point` (one of
    /// [`crate::faults::ALL`]) just before the operation it names. Real
    /// stores do nothing; a test store may fail here to simulate a crash.
    fn fault_point(&self, _point: &'static str) -> Result<()> {
        Ok(())
    }

    /// The migration record, if one exists.
    fn load_record(&self) -> Result<Option<Vec<u8>>>;
    /// Atomically replaces the record; durable when this returns.
    fn store_record(&self, bytes: &[u8]) -> Result<()>;

    /// The whole index, if one exists.
    fn read_index(&self) -> Result<Option<Vec<u8>>>;
    /// Creates (or replaces) the index with `bytes`; durable when this returns.
    fn create_index(&self, bytes: &[u8]) -> Result<()>;
    /// Overwrites part of the index. Once this returns, a reopen after a
    /// process crash sees the bytes; only [`MetaStore::sync_index`] makes
    /// them survive power loss.
    fn write_index(&self, offset: u64, bytes: &[u8]) -> Result<()>;
    /// Makes every completed `write_index` durable.
    fn sync_index(&self) -> Result<()>;

    /// The generation of the caches that `write_index` and volume writes
    /// may sit in before a sync: for local files, the host's boot id. A
    /// different epoch at reopen means those caches were lost (power loss
    /// or reboot), so only what was confirmed durable can be trusted.
    /// `None` means every write is durable when it returns (RADOS), so
    /// nothing is ever lost that way.
    fn epoch(&self) -> Option<[u8; 16]>;

    /// The marker saying this volume is (or was) the source of a migration.
    fn load_source_marker(&self) -> Result<Option<SourceMarker>>;
    /// Writes the marker durably (atomically replacing any old one).
    fn store_source_marker(&self, marker: &SourceMarker) -> Result<()>;

    /// Removes the source marker (a missing one is fine).
    fn remove_source_marker(&self) -> Result<()>;
    /// Removes the index (a missing one is fine).
    fn remove_index(&self) -> Result<()>;
    /// Removes the record (a missing one is fine).
    fn remove_record(&self) -> Result<()>;
    /// The persistent-reservation state of the LUN this volume serves
    /// (`ferry-pr`'s document), if one was saved.
    fn load_reservations(&self) -> Result<Option<Vec<u8>>>;

    /// Atomically replaces the persistent-reservation state; durable
    /// when this returns, since a PR OUT is acknowledged only after it.
    fn store_reservations(&self, bytes: &[u8]) -> Result<()>;

    /// Deletes the volume itself together with its metadata; used to discard
    /// an aborted target.
    fn destroy_volume(&self) -> Result<()>;
}
