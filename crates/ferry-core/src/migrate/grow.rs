//! Growing a volume while it is being migrated, and resizing one whose
//! migration is over.
//!
//! A migration in progress (copying or copied) grows in four durable
//! steps, with I/O and the copier held off (the caller quiesces I/O and
//! stops the copier; this holds the legs lock):
//!
//! 1. a checkpoint: every write so far durable, every migrated region
//!    confirmed, so the index's bits in memory are what the store holds;
//! 2. the target grows, then the source ([`crate::Volume::resize`],
//!    durable); the bytes added read as zeroes on both;
//! 3. the index is replaced, durably, by one for the new size: the same
//!    bits, the added regions not migrated (`RegionIndex::grown`);
//! 4. the record takes the new size.
//!
//! ORDERING, and what a reopen finds after a crash at each step
//! ([`crate::faults::GROW`]): before step 3 the record, the index and
//! every bit are the old size's, and a leg longer than the record is
//! served at the record's size (the old one). After step 3 and before
//! step 4 the index says the new size and the record the old one: the
//! reopen ([`MigratingVolume::resume`]) finishes the grow, giving the
//! record the index's size once both legs have it. After step 4 it is
//! the new size. Either way the LUN opens, at the old size or the new.
//!
//! The grown volume is a new [`MigratingVolume`] over the same legs and
//! stores ([`MigratingVolume::reopen`]); this one is fenced once its
//! index was replaced, since its words no longer match the store's. A
//! copied migration goes back to copying (step 4 records both), so the
//! added regions are copied before a commit.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::MigratingVolume;
use crate::error::{Error, Result};
use crate::faults;
use crate::index::RegionIndex;
use crate::record::MigrationState;
use crate::volume::Volume;

/// The largest region index a grow writes: 256 MiB (at 4 MiB regions, a
/// volume of about 2.8 PiB).
pub const MAX_INDEX_BYTES: u64 = 256 << 20;

impl MigratingVolume {
    /// Grows a migration in progress to `size` bytes (see the module
    /// docs); returns the volume to serve from now on. I/O and the copier
    /// must be held off by the caller.
    pub fn grow(&self, size: u64) -> Result<Arc<MigratingVolume>> {
        let legs = self.legs.write();
        let old = self.size();
        let refuse = |why: String| Error::CannotResize {
            volume: self.name.clone(),
            why,
        };
        match self.state() {
            MigrationState::Copying | MigrationState::Copied => {}
            other => {
                return Err(refuse(format!(
                    "the migration is {other}; resize once it is over"
                )))
            }
        }
        if size < old {
            return Err(refuse(format!(
                "{size} bytes is smaller than its {old}: a volume being migrated only grows"
            )));
        }
        self.check_fence()?;
        // The index for the new size is built in memory and written whole:
        // bounded, so a typo cannot exhaust memory after the legs grew.
        let index_bytes = RegionIndex::store_len_for(size, self.index.region_size());
        if index_bytes > MAX_INDEX_BYTES {
            return Err(refuse(format!(
                "its region index would take {index_bytes} bytes at {} bytes a region (at most {MAX_INDEX_BYTES})",
                self.index.region_size()
            )));
        }
        // 1. Everything durable and confirmed: the bits the new index
        // carries are then the store's.
        self.checkpoint(&legs)?;
        // 2. The legs, target first (a longer target is always fine).
        self.point(faults::GROW_TARGET)?;
        if legs.target().size() < size {
            legs.target().resize(size)?;
        }
        self.point(faults::GROW_SOURCE)?;
        if legs.source().size() < size {
            legs.source().resize(size)?;
        }
        // 3. The index for the new size.
        let bytes = self.index.grown(size)?;
        self.point(faults::GROW_INDEX)?;
        // From here the store's index may be the new one: whatever fails,
        // only a reopen serves this migration again (`index_replaced`).
        self.index_replaced.store(true, Ordering::Release);
        let replaced = self.target_store.create_index(&bytes);
        // This object's index no longer matches the store (or may not):
        // nothing may write through it again.
        self.fence(&format!("grown to {size} bytes; serve the reopened volume"));
        replaced?;
        // 4. The record: from here a reopen serves the new size.
        // A copied migration copies again: the added regions are not on
        // the target yet, and a commit must not come before they are.
        self.point(faults::GROW_STORE_RECORD)?;
        self.update_record(|r| {
            r.size = size;
            if r.state == MigrationState::Copied {
                r.state = MigrationState::Copying;
            }
        })?;
        log::info!("{}: grown from {old} to {size} bytes", self.name);
        drop(legs);
        self.reopen()
    }

    /// Whether a grow got as far as replacing the index: then this
    /// volume is fenced for good, and [`MigratingVolume::reopen`] is how
    /// the migration is served again (it finishes the grow or serves the
    /// old size). A fence set before that (a failed flush) must not be
    /// undone by a reopen.
    pub fn index_replaced(&self) -> bool {
        self.index_replaced.load(Ordering::Acquire)
    }

    /// The migration reopened from its stores over the same legs (what a
    /// restarted host would open): after a grow, or to recover from one
    /// cut short.
    pub fn reopen(&self) -> Result<Arc<MigratingVolume>> {
        let legs = self.legs.read();
        let (Some(source), Some(target)) = (legs.source.clone(), legs.target.clone()) else {
            return Err(Error::WrongState {
                op: "reopen",
                state: self.state().to_string(),
            });
        };
        drop(legs);
        MigratingVolume::resume(
            source,
            self.source_store.clone(),
            target,
            self.target_store.clone(),
        )
    }

    /// Resizes a volume whose migration is over: the one leg it serves
    /// (the target once committed, the source once aborted).
    pub(super) fn resize_finished(&self, size: u64) -> Result<()> {
        let legs = self.legs.write();
        match self.state() {
            MigrationState::Committed => legs.target().resize(size)?,
            MigrationState::Aborted => legs.source().resize(size)?,
            other => {
                return Err(Error::CannotResize {
                    volume: self.name.clone(),
                    why: format!("the migration is {other}: it grows with MigratingVolume::grow"),
                })
            }
        }
        self.size.store(size, Ordering::Release);
        Ok(())
    }
}

/// The size a reopen serves a migration at, finishing a grow cut short
/// after its index was replaced (see the module docs): the index's size
/// when it is larger than the record's and both legs have it.
pub(super) fn finish_cut_grow(
    record: &mut crate::record::MigrationRecord,
    source: &dyn Volume,
    target: &dyn Volume,
    target_store: &dyn crate::store::MetaStore,
) -> Result<()> {
    let Some(stored) = RegionIndex::stored_volume_size(target_store)? else {
        return Ok(());
    };
    if stored <= record.size || source.size() < stored || target.size() < stored {
        return Ok(());
    }
    log::warn!(
        "{}: finishing a grow from {} to {stored} bytes cut short",
        target_store.describe(),
        record.size
    );
    target_store.fault_point(faults::GROW_FINISH_RECORD)?;
    record.size = stored;
    record.updated_unix = crate::record::now_unix();
    target_store.store_record(&record.encode())
}
