//! The copier's steps: copy one region, commit a batch of copied regions,
//! and finish once no region is left to move, forward (source to target,
//! while `copying`) and back (target to source, while `aborting`). The
//! copier (`copier.rs`) decides when and how fast; these steps decide what
//! is safe.
use super::{cleanup_aborted, MigratingVolume};
use crate::error::Result;
use crate::faults;
use crate::record::MigrationState;
use crate::volume::{Extent, Volume};

/// Largest buffer a copy (copier or copy-up) moves at once: 1 MiB keeps a
/// QD32 burst of copy-ups of 1 GiB regions at 32 MiB, and is large enough
/// that the per-call cost of a network backend is amortized.
pub const COPY_CHUNK: u64 = 1 << 20;

/// Result of one copier step on a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionCopy {
    /// Already in place; nothing done.
    Skipped,
    /// Copied; `bytes` of data moved (0 for a hole).
    Copied { bytes: u64 },
}

impl MigratingVolume {
    /// Copies region `r` from source to target if it is not migrated yet.
    /// Does not mark it: the caller batches regions and calls
    /// [`Self::commit_copied`] after them. `buf` is scratch space.
    pub fn copy_region(&self, r: u64, buf: &mut Vec<u8>) -> Result<RegionCopy> {
        self.check_fence()?;
        let legs = self.legs.read();
        if self.state() != MigrationState::Copying || r >= self.index.regions() {
            return Ok(RegionCopy::Skipped);
        }
        let _g = self.locks.lock(r, r);
        if self.index.is_migrated(r) {
            return Ok(RegionCopy::Skipped);
        }
        let (start, end) = self.index.region_bounds(r);
        self.point(faults::COPY_WRITE_TARGET)?;
        let bytes = copy_extents(legs.source(), legs.target(), start, end, buf)?;
        Ok(RegionCopy::Copied { bytes })
    }

    /// Marks copied regions migrated.
    pub fn commit_copied(&self, regions: &[u64]) -> Result<()> {
        // A fence means a flush failed and may have dropped the batch's
        // pages: marking them now would route reads to lost data.
        self.check_fence()?;
        if regions.is_empty() {
            return Ok(());
        }
        let legs = self.legs.read();
        if self.state() != MigrationState::Copying {
            return Ok(());
        }
        // ORDERING: the batch's data is written; the bits route reads to
        // it now and are confirmed by a checkpoint, at least every second.
        self.point(faults::COPY_MARK_MIGRATED)?;
        self.index.mark_migrated(regions)?;
        self.checkpoint_if_due(&legs)
    }

    /// Once every region is migrated, records the `copied` state. Returns
    /// whether the migration is now copied.
    pub fn finish_copy(&self) -> Result<bool> {
        self.check_fence()?;
        if self.state() == MigrationState::Copied {
            return Ok(true);
        }
        let legs = self.legs.write();
        if self.state() != MigrationState::Copying
            || self.index.migrated_count() != self.index.regions()
        {
            return Ok(false);
        }
        self.checkpoint(&legs)?;
        self.enter(MigrationState::Copied)?;
        log::info!(
            "migration {}: every region is on the target",
            self.record.lock().id
        );
        Ok(true)
    }

    /// Abort copy-back of region `r`: if it was written since the start,
    /// copies it from the target back to the source. The caller batches
    /// regions and calls [`Self::commit_copied_back`].
    pub fn copy_back_region(&self, r: u64, buf: &mut Vec<u8>) -> Result<RegionCopy> {
        self.check_fence()?;
        let legs = self.legs.read();
        if self.state() != MigrationState::Aborting || r >= self.index.regions() {
            return Ok(RegionCopy::Skipped);
        }
        let _g = self.locks.lock(r, r);
        if !self.index.is_migrated(r) {
            return Ok(RegionCopy::Skipped);
        }
        if !self.index.is_written(r) {
            // Never written since the start: the source still holds it.
            return Ok(RegionCopy::Copied { bytes: 0 });
        }
        let (start, end) = self.index.region_bounds(r);
        self.point(faults::COPY_BACK_WRITE_SOURCE)?;
        let bytes = copy_extents(legs.target(), legs.source(), start, end, buf)?;
        Ok(RegionCopy::Copied { bytes })
    }

    /// Hands copied-back regions to the source.
    pub fn commit_copied_back(&self, regions: &[u64]) -> Result<()> {
        // Fenced: a flush of the source failed and a later one would
        // prove nothing, so no region is handed back (and the target,
        // which may hold the only good copy, is never discarded).
        self.check_fence()?;
        if regions.is_empty() {
            return Ok(());
        }
        let legs = self.legs.read();
        if self.state() != MigrationState::Aborting {
            return Ok(());
        }
        // ORDERING: the source must hold the regions durably before their
        // bits are cleared and reads go back to it.
        self.fenced_flush(|| {
            self.point(faults::COPY_BACK_FLUSH_SOURCE)?;
            legs.source().flush()
        })?;
        let _g = self
            .locks
            .lock(regions[0], *regions.last().expect("non-empty"));
        // The cleared bits are synced before the region locks drop: from
        // then on writers update only the source, and if power failed with
        // a bit still set on disk, reads would go back to the target's
        // older bytes and change again when the abort finishes.
        self.fenced_flush(|| self.index.clear_migrated(regions))
    }

    /// Ends an abort once no region is left on the target: records the
    /// `aborted` state, then discards the target. Returns whether done.
    pub fn finish_abort(&self) -> Result<bool> {
        self.check_fence()?;
        if self.state() == MigrationState::Aborted {
            return Ok(true);
        }
        let mut legs = self.legs.write();
        if self.state() != MigrationState::Aborting || self.index.migrated_count() != 0 {
            return Ok(false);
        }
        let source = legs.source.clone().expect("source present while aborting");
        self.fenced_flush(|| {
            self.point(faults::FINISH_ABORT_FLUSH_SOURCE)?;
            source.flush()
        })?;
        self.enter(MigrationState::Aborted)?;
        legs.target = None;
        drop(legs);
        let id = self.record.lock().id.clone();
        log::info!("migration {id} aborted: the source holds every write; discarding the target");
        cleanup_aborted(self.source_store.as_ref(), self.target_store.as_ref());
        Ok(true)
    }
}

/// Copies the data of `[start,end)` from `from` to `to`, keeping holes as
/// holes. Stale bytes on `to` (from an interrupted copy-up) are zeroed
/// first. Returns the bytes of data copied.
pub(super) fn copy_extents(
    from: &dyn Volume,
    to: &dyn Volume,
    start: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> Result<u64> {
    let len = end - start;
    let data = from.allocated(start, len)?;
    let covered: u64 = data.iter().map(|e| e.len).sum();
    if covered < len && !to.allocated(start, len)?.is_empty() {
        to.write_zeroes(start, len)?;
    }
    const CHUNK: u64 = COPY_CHUNK;
    let mut copied = 0;
    for Extent { offset, len } in data {
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            buf.resize(n as usize, 0); // n ≤ COPY_CHUNK
            from.read_at(buf, offset + done)?;
            to.write_at(buf, offset + done)?;
            done += n;
        }
        copied += len;
    }
    Ok(copied)
}
