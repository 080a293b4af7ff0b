//! Routing: where each read and write of a [`MigratingVolume`] goes while
//! a migration is copying, copied or aborting. This is the foreground I/O
//! path; the copier's side is in `steps.rs`.
//!
//! Routing rules while copying (state `copying` / `copied`):
//! - a read of a migrated region goes to the target, else to the source; a
//!   read spanning regions is split into runs with one route each;
//! - a write to a migrated region goes to the target; a write covering a
//!   whole unmigrated region writes the target and marks the region; a
//!   partial write to an unmigrated region goes to *both* legs, the
//!   target first (the source keeps serving the region's reads until the
//!   copier has copied it, with this write in it);
//! - write-zeroes / discard follow the same rules;
//! - every write sets the region's *written* bit first, which is what an
//!   abort copies back.
//!
//! Why both legs, and not a copy-up (read the rest of the region from the
//! source, write it all to the target, mark it): a copy-up costs a whole
//! region (4 MiB) of copying per small write, and under random writes
//! every write to a region not yet copied paid it (4 KiB random writes
//! ran at 0.02-0.04x of idle during a migration). The second write costs
//! one more write of the same size. It is safe because the copier copies
//! a region under the region's lock, which the writer holds too: the
//! write lands either before the copy (the copy carries it from the
//! source) or after it (the target has it, whether or not the copy is
//! marked yet). The source is then written while copying, so a
//! checkpoint flushes it too when it was (`checkpoint.rs`).
//!
//! While aborting, writes to still-migrated regions go to both legs (so a
//! region can be handed back at any instant) and writes elsewhere go to the
//! source; the copier copies written regions back and clears their bits.
use std::sync::atomic::Ordering;

use super::steps::copy_extents;
use super::{Legs, MigratingVolume};
use crate::error::Result;
use crate::faults;
use crate::record::MigrationState;
use crate::volume::{check_range, Volume};

impl MigratingVolume {
    /// Splits `[offset, offset+len)` into per-region pieces:
    /// `(region, piece_offset, piece_len)`.
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let end = offset + len;
        let first = self.index.region_of(offset);
        let last = if len == 0 {
            first
        } else {
            self.index.region_of(end - 1)
        };
        (first..=last).filter(move |_| len > 0).map(move |r| {
            let (s, e) = self.index.region_bounds(r);
            let ps = s.max(offset);
            let pe = e.min(end);
            (r, ps, pe - ps)
        })
    }

    /// Runs of consecutive pieces with the same route: `(to_target, offset, len)`.
    pub(super) fn routed_runs(&self, offset: u64, len: u64) -> Vec<(bool, u64, u64)> {
        let mut runs: Vec<(bool, u64, u64)> = Vec::new();
        for (r, o, l) in self.pieces(offset, len) {
            let migrated = self.index.is_migrated(r);
            match runs.last_mut() {
                Some(run) if run.0 == migrated => run.2 += l,
                _ => runs.push((migrated, o, l)),
            }
        }
        runs
    }

    /// Moves region `r` to the target around `[at, at+len)`, which the
    /// target already has, and marks it migrated.
    fn copy_up(&self, legs: &Legs, r: u64, at: u64, len: u64) -> Result<()> {
        let (start, end) = self.index.region_bounds(r);
        let mut buf = Vec::new();
        self.point(faults::WRITE_COPY_UP)?;
        self.counters.copy_up();
        if at > start {
            copy_extents(legs.source(), legs.target(), start, at, &mut buf)?;
        }
        if at + len < end {
            copy_extents(legs.source(), legs.target(), at + len, end, &mut buf)?;
        }
        self.mark_on_target(r)
    }

    /// Marks region `r` migrated once all of its data is on the target.
    fn mark_on_target(&self, r: u64) -> Result<()> {
        // ORDERING: data on the target first, then the migrated bit; it is
        // confirmed (trusted after power loss) by the next checkpoint,
        // which flushes the target before it writes the confirmation.
        self.point(faults::WRITE_MARK_MIGRATED)?;
        self.index.mark_migrated(&[r])
    }

    /// Sets region `r`'s written bit, if it is not set yet, before the
    /// write to it lands (callers hold the region's lock).
    fn note_written(&self, r: u64) -> Result<()> {
        if !self.index.is_written(r) {
            self.point(faults::WRITE_MARK_WRITTEN)?;
            self.index.mark_written(r)?;
        }
        Ok(())
    }

    /// Forward-mode handling of one region piece of a write or zeroing.
    /// `data` is `None` for write-zeroes/discard.
    fn modify_forward(
        &self,
        legs: &Legs,
        r: u64,
        at: u64,
        len: u64,
        data: Option<&[u8]>,
        discard: bool,
    ) -> Result<()> {
        let apply_target = |at: u64, len: u64| {
            self.point(faults::WRITE_DATA)?;
            apply(legs.target(), at, len, data, discard)
        };
        // Fast path: bits only go 0 -> 1 while copying, so a region seen
        // migrated and written stays so for the rest of this I/O.
        if self.index.is_migrated(r) && self.index.is_written(r) {
            return apply_target(at, len);
        }
        let _g = self.locks.lock(r, r);
        // The written bit goes first: an abort must copy this region back
        // even if we crash right after the write lands on the target.
        self.note_written(r)?;
        if self.index.is_migrated(r) {
            return apply_target(at, len);
        }
        let (start, end) = self.index.region_bounds(r);
        if (at, at + len) == (start, end) {
            // The whole region: nothing of the source's is left in it.
            apply_target(at, len)?;
            return self.mark_on_target(r);
        }
        // ORDERING: the target first. If the copier copied this region
        // and its batch is marked while this write runs (marking takes no
        // region lock), reads move to the target, which already has it.
        apply_target(at, len)?;
        if let Err(e) = self
            .point(faults::WRITE_SOURCE)
            .and_then(|()| apply(legs.source(), at, len, data, discard))
        {
            // The source refused (a thin source on a full pool, which is
            // what many migrations move away from): the target has the
            // write, so move the region over now, the rest of it from the
            // source, and route it to the target. Only if that fails too
            // do the legs disagree: fence.
            log::warn!(
                "{}: the source refused a write to region {r} ({e}); copying the region to the target now",
                self.name
            );
            return self.copy_up(legs, r, at, len).inspect_err(|e| {
                self.fence(&format!("a write to both legs failed half way: {e}"))
            });
        }
        // ORDERING: the source-written flag is set once the source write
        // is done, before the write is acknowledged: a checkpoint that
        // takes the flag (`checkpoint.rs`) flushes the source after this
        // write, and one that took it before leaves it set for the next.
        // (Set before the write, a checkpoint could take it, flush, and
        // leave the later checkpoint a flush waits for nothing to do.)
        self.source_written.store(true, Ordering::SeqCst);
        self.counters.both_leg_write();
        Ok(())
    }

    /// Abort-mode handling of one region piece: migrated regions are
    /// written on both legs so the copier can hand them back at any time.
    fn modify_aborting(
        &self,
        legs: &Legs,
        r: u64,
        at: u64,
        len: u64,
        data: Option<&[u8]>,
        discard: bool,
    ) -> Result<()> {
        let _g = self.locks.lock(r, r);
        if self.index.is_migrated(r) {
            self.note_written(r)?;
            self.point(faults::WRITE_DATA)?;
            // A failure on either leg fences: the legs may now disagree,
            // and a copy-back already batched could hand the region to
            // the source in a state no read ever showed.
            apply(legs.source(), at, len, data, discard)
                .and_then(|()| apply(legs.target(), at, len, data, discard))
                .inspect_err(|e| self.fence(&format!("a write to both legs failed half way: {e}")))
        } else {
            self.point(faults::WRITE_DATA)?;
            apply(legs.source(), at, len, data, discard)
        }
    }

    pub(super) fn modify(
        &self,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
        discard: bool,
    ) -> Result<()> {
        check_range(self.size(), offset, len)?;
        let legs = self.begin()?;
        match self.state() {
            MigrationState::Committed => return apply(legs.target(), offset, len, data, discard),
            MigrationState::Aborted => return apply(legs.source(), offset, len, data, discard),
            _ => {}
        }
        let aborting = self.state() == MigrationState::Aborting;
        if !aborting && len > 0 {
            let first = self.index.region_of(offset);
            let last = self.index.region_of(offset + len - 1);
            if self.index.all_migrated_and_written(first, last) {
                return apply(legs.target(), offset, len, data, discard);
            }
        }
        for (r, at, l) in self.pieces(offset, len) {
            // at - offset < len, which came from a slice length.
            let piece = data.map(|d| &d[(at - offset) as usize..(at - offset + l) as usize]);
            if aborting {
                self.modify_aborting(&legs, r, at, l, piece, discard)?;
            } else {
                self.modify_forward(&legs, r, at, l, piece, discard)?;
            }
        }
        Ok(())
    }
}

/// Applies one modification to one volume: `data` is written, or (`None`)
/// the range is discarded or zeroed.
fn apply(v: &dyn Volume, at: u64, len: u64, data: Option<&[u8]>, discard: bool) -> Result<()> {
    match data {
        Some(d) => v.write_at(d, at),
        None if discard => v.discard(at, len),
        None => v.write_zeroes(at, len),
    }
}
