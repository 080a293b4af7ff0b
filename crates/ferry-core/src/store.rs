//! Durable metadata kept beside a volume: the migration record, the region
//! index and the "source of a migration" marker.
//!
//! The engine never touches metadata except through this trait, so a backend
//! decides where it lives (sidecar files for file volumes, RADOS objects for
//! RBD) and tests can substitute a store that simulates crashes.
use crate::error::Result;

/// Where a volume keeps ferry's metadata about it.
pub trait MetaStore: Send + Sync {
    /// Where the metadata lives, for messages.
    fn describe(&self) -> String;

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

    /// The marker saying this volume is the source of a migration, naming
    /// the target.
    fn load_source_marker(&self) -> Result<Option<String>>;
    /// Writes the marker durably.
    fn store_source_marker(&self, target: &str) -> Result<()>;

    /// Removes the source marker (a missing one is fine).
    fn remove_source_marker(&self) -> Result<()>;
    /// Removes the index (a missing one is fine).
    fn remove_index(&self) -> Result<()>;
    /// Removes the record (a missing one is fine).
    fn remove_record(&self) -> Result<()>;
    /// Deletes the volume itself together with its metadata; used to discard
    /// an aborted target.
    fn destroy_volume(&self) -> Result<()>;
}
