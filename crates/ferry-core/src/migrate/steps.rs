//! The copier's steps: copy one region, commit a batch of copied regions,
//! and finish once no region is left to move. The copier (`copier.rs`)
//! decides when and how fast; these steps decide what is safe.
//!
//! Regions move in one of two directions: forward, from the source to the
//! target, while the migration is `copying`; and back, from the target to
//! the source, while an abort is `aborting`. Each step is one helper taking
//! a [`Direction`], which selects the leg read and the leg written, the
//! index bit of a region still to move, the states, and the named fault
//! points. Where the two directions differ in substance, not only in names
//! (committing a batch, finishing), the helper branches on the direction
//! and says why at the branch. The public methods keep one name per
//! direction (`copy_region` / `copy_back_region`, ...) and call the
//! helpers.
use super::{cleanup_aborted, Legs, MigratingVolume};
use crate::error::Result;
use crate::faults;
use crate::record::MigrationState;
use crate::volume::{Extent, Volume};

/// Largest buffer a copy moves at once: 1 MiB keeps the copier's memory
/// small whatever the region size (up to 1 GiB), and is large enough that
/// the per-call cost of a network backend is amortized.
pub const COPY_CHUNK: u64 = 1 << 20;

/// Result of one copier step on a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionCopy {
    /// Already in place; nothing done.
    Skipped,
    /// Copied; `bytes` of data moved (0 for a hole).
    Copied { bytes: u64 },
}

/// Which way the copier moves regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Source to target, while `copying`: the migration itself.
    Forward,
    /// Target to source, while `aborting`: an abort's copy-back.
    Back,
}

impl Direction {
    /// The state in which regions move this way.
    fn moving(self) -> MigrationState {
        match self {
            Direction::Forward => MigrationState::Copying,
            Direction::Back => MigrationState::Aborting,
        }
    }

    /// The state recorded once no region is left to move this way.
    fn moved(self) -> MigrationState {
        match self {
            Direction::Forward => MigrationState::Copied,
            Direction::Back => MigrationState::Aborted,
        }
    }

    /// The migrated bit of a region still to move: clear forward, set back.
    fn to_move(self) -> bool {
        self == Direction::Back
    }

    /// The count of migrated regions once none is left to move: all of
    /// them forward, none back.
    fn migrated_when_done(self, regions: u64) -> u64 {
        match self {
            Direction::Forward => regions,
            Direction::Back => 0,
        }
    }

    /// The leg a region is read from and the leg it is written to.
    fn legs(self, legs: &Legs) -> (&dyn Volume, &dyn Volume) {
        match self {
            Direction::Forward => (legs.source(), legs.target()),
            Direction::Back => (legs.target(), legs.source()),
        }
    }

    /// The fault point announced just before a region is written.
    fn write_point(self) -> &'static str {
        match self {
            Direction::Forward => faults::COPY_WRITE_TARGET,
            Direction::Back => faults::COPY_BACK_WRITE_SOURCE,
        }
    }
}

impl MigratingVolume {
    /// Copies region `r` from source to target if it is not migrated yet.
    /// Does not mark it: the caller batches regions and calls
    /// [`Self::commit_copied`] after them. `buf` is scratch space.
    pub fn copy_region(&self, r: u64, buf: &mut Vec<u8>) -> Result<RegionCopy> {
        self.copy_step(Direction::Forward, r, buf)
    }

    /// Abort copy-back of region `r`: if it was written since the start,
    /// copies it from the target back to the source. The caller batches
    /// regions and calls [`Self::commit_copied_back`].
    pub fn copy_back_region(&self, r: u64, buf: &mut Vec<u8>) -> Result<RegionCopy> {
        self.copy_step(Direction::Back, r, buf)
    }

    /// Marks copied regions migrated.
    pub fn commit_copied(&self, regions: &[u64]) -> Result<()> {
        self.commit_step(Direction::Forward, regions)
    }

    /// Hands copied-back regions to the source.
    pub fn commit_copied_back(&self, regions: &[u64]) -> Result<()> {
        self.commit_step(Direction::Back, regions)
    }

    /// Once every region is migrated, records the `copied` state. Returns
    /// whether the migration is now copied.
    pub fn finish_copy(&self) -> Result<bool> {
        self.finish_step(Direction::Forward)
    }

    /// Ends an abort once no region is left on the target: records the
    /// `aborted` state, then discards the target. Returns whether done.
    pub fn finish_abort(&self) -> Result<bool> {
        self.finish_step(Direction::Back)
    }

    /// Copies region `r` the way `dir` goes if it is still to move there.
    fn copy_step(&self, dir: Direction, r: u64, buf: &mut Vec<u8>) -> Result<RegionCopy> {
        self.check_fence()?;
        let legs = self.legs.read();
        if self.state() != dir.moving() || r >= self.index.regions() {
            return Ok(RegionCopy::Skipped);
        }
        let _g = self.locks.lock(r, r);
        if self.index.is_migrated(r) != dir.to_move() {
            return Ok(RegionCopy::Skipped);
        }
        if dir == Direction::Back && !self.index.is_written(r) {
            // Never written since the start: the source still holds it.
            return Ok(RegionCopy::Copied { bytes: 0 });
        }
        let (start, end) = self.index.region_bounds(r);
        self.point(dir.write_point())?;
        let (from, to) = dir.legs(&legs);
        let bytes = copy_extents(from, to, start, end, buf)?;
        Ok(RegionCopy::Copied { bytes })
    }

    /// Commits a batch of regions [`Self::copy_step`] moved the way `dir`
    /// goes: forward they are marked migrated, back they are handed to the
    /// source.
    fn commit_step(&self, dir: Direction, regions: &[u64]) -> Result<()> {
        // A fence means a flush failed. Forward, it may have dropped the
        // batch's pages: marking them now would route reads to lost data.
        // Back, a later flush of the source would prove nothing, so no
        // region is handed back (and the target, which may hold the only
        // good copy, is never discarded).
        self.check_fence()?;
        if regions.is_empty() {
            return Ok(());
        }
        let legs = self.legs.read();
        if self.state() != dir.moving() {
            return Ok(());
        }
        match dir {
            Direction::Forward => {
                // ORDERING: the batch's data is written; the bits route
                // reads to it now and are confirmed by a checkpoint, at
                // least every second.
                self.point(faults::COPY_MARK_MIGRATED)?;
                self.index.mark_migrated(regions)?;
                self.checkpoint_if_due(&legs)
            }
            Direction::Back => {
                // ORDERING: the source must hold the regions durably before
                // their bits are cleared and reads go back to it.
                self.fenced_flush(|| {
                    self.point(faults::COPY_BACK_FLUSH_SOURCE)?;
                    legs.source().flush()
                })?;
                // The locks cover the batch's span: lowest to highest
                // (the copier hands batches over in ascending order; any
                // order is covered the same).
                let first = *regions.iter().min().expect("non-empty");
                let last = *regions.iter().max().expect("non-empty");
                let _g = self.locks.lock(first, last);
                // The cleared bits are synced before the region locks drop:
                // from then on writers update only the source, and if power
                // failed with a bit still set on disk, reads would go back
                // to the target's older bytes and change again when the
                // abort finishes.
                self.fenced_flush(|| self.index.clear_migrated(regions))
            }
        }
    }

    /// Once no region is left to move the way `dir` goes, records the
    /// state that ends the move (`copied`, `aborted`). Returns whether the
    /// migration is now in that state.
    fn finish_step(&self, dir: Direction) -> Result<bool> {
        self.check_fence()?;
        if self.state() == dir.moved() {
            return Ok(true);
        }
        let mut legs = self.legs.write();
        if self.state() != dir.moving()
            || self.index.migrated_count() != dir.migrated_when_done(self.index.regions())
        {
            return Ok(false);
        }
        // ORDERING: the leg the regions moved to is flushed before the
        // state that relies on it is recorded. Forward, a checkpoint, which
        // also confirms the last regions marked; back, a flush of the
        // source.
        match dir {
            Direction::Forward => self.checkpoint(&legs)?,
            Direction::Back => {
                let source = legs.source.clone().expect("source present while aborting");
                self.fenced_flush(|| {
                    self.point(faults::FINISH_ABORT_FLUSH_SOURCE)?;
                    source.flush()
                })?;
            }
        }
        self.enter(dir.moved())?;
        match dir {
            Direction::Forward => {
                log::info!(
                    "migration {}: every region is on the target",
                    self.record.lock().id
                );
            }
            Direction::Back => {
                legs.target = None;
                drop(legs);
                let id = self.record.lock().id.clone();
                log::info!(
                    "migration {id} aborted: the source holds every write; discarding the target"
                );
                cleanup_aborted(self.source_store.as_ref(), self.target_store.as_ref());
            }
        }
        Ok(true)
    }
}

/// Copies the data of `[start,end)` from `from` to `to`, keeping holes as
/// holes. Stale bytes on `to` (writes that reached both legs, an
/// interrupted earlier copy) are zeroed first. Returns the bytes of data copied.
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
