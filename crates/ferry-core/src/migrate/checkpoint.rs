//! The checkpoint: how written data becomes durable and migrated regions
//! become *confirmed*, trusted after power loss. A checkpoint takes the
//! index's pending words, flushes the data (the source too while
//! aborting, or when a write reached it while copying), then writes the confirmed words and syncs the index, in that
//! order: the durability rule of the module docs of `migrate`. Checkpoints
//! run on every flush an initiator asks for, before the `copied`,
//! `aborting` and `committed` states are recorded, and, while the copier
//! copies forward, after a batch is marked once the last checkpoint is
//! older than [`INDEX_SYNC_INTERVAL`].
//!
//! Checkpoints run one at a time and concurrent flushes share them (group
//! commit): a caller returns only once a checkpoint that began after it
//! arrived has completed.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Legs, MigratingVolume};
use crate::error::Result;
use crate::faults;
use crate::record::MigrationState;

/// How often the index is made durable while the copier runs, at most.
pub const INDEX_SYNC_INTERVAL: Duration = Duration::from_secs(1);

impl MigratingVolume {
    /// Makes everything written so far durable and confirms the migrated
    /// regions: snapshot the bits, flush the data, then confirm and sync
    /// the index (the ORDERING rule in the module docs).
    ///
    /// Returns only once a checkpoint that began after this call did has
    /// completed (see the module docs): either this call's own, or one a
    /// concurrent caller ran while this one waited for the lock.
    pub(super) fn checkpoint(&self, legs: &Legs) -> Result<()> {
        // Checkpoints numbered above `arrival` begin after this point, so
        // they take pending words and flush data written before it.
        let arrival = self.checkpoints_begun.load(Ordering::SeqCst);
        let mut done = self.checkpoint_done.lock();
        self.check_fence()?;
        if *done > arrival {
            return Ok(());
        }
        let number = self.checkpoints_begun.fetch_add(1, Ordering::SeqCst) + 1;
        let started = Instant::now();
        // ORDERING: pending words first, then the data flush, then the
        // confirmation and the index sync.
        let pending = self.index.pending();
        // The source too while aborting (writers update it), and while
        // copying when a write to a region not yet copied reached it
        // (`routing.rs`). The flag is taken before the flush: a write that
        // sets it later is covered by the next checkpoint, one that set it
        // before this checkpoint began by this one.
        let source_written = self.source_written.swap(false, Ordering::SeqCst);
        if source_written || self.state() == MigrationState::Aborting {
            self.fenced_flush(|| {
                self.point(faults::CHECKPOINT_FLUSH_SOURCE)?;
                legs.source().flush()
            })?;
        }
        self.fenced_flush(|| {
            self.point(faults::CHECKPOINT_FLUSH_TARGET)?;
            legs.target().flush()
        })?;
        self.fenced_flush(|| self.index.confirm(pending))?;
        *done = number;
        self.counters.checkpoint(started.elapsed());
        *self.last_checkpoint.lock() = Instant::now();
        Ok(())
    }

    /// A checkpoint if the last one is older than [`INDEX_SYNC_INTERVAL`].
    pub(super) fn checkpoint_if_due(&self, legs: &Legs) -> Result<()> {
        if self.last_checkpoint.lock().elapsed() >= INDEX_SYNC_INTERVAL {
            self.checkpoint(legs)?;
        }
        Ok(())
    }
}
