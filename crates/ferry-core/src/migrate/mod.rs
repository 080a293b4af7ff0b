//! The migrating volume: one [`Volume`] made of a source and a target, routed
//! per region by the [`RegionIndex`].
//!
//! This file holds the [`MigratingVolume`] type, its state and its fence,
//! and the [`Volume`] impl, which dispatches each call by state: a
//! committed volume is its target, an aborted one its source, and in
//! between each call is routed per region. The rest is cut by job:
//! - `routing.rs`: where a read or a write goes while copying or
//!   aborting (a partial write to a region not yet copied goes to both
//!   legs);
//! - `checkpoint.rs`: making written data durable and confirming migrated
//!   regions, one checkpoint shared by concurrent flushes;
//! - `steps.rs`: the copier's steps (copy a region, commit a batch,
//!   finish), one helper per step for both directions;
//! - `lifecycle.rs`: start, resume, abort, commit, the cleanup a commit or
//!   an abort leaves, and reopening a target after a restart.
//!
//! Locking: reads take no region lock. Writers of unmigrated regions and the
//! copier take the striped region lock, so a write to a region not yet
//! copied lands wholly before the region's copy or wholly after it. Migrated bits only go from 0 to 1 while copying, which
//! makes the lock-free fast path (region migrated and written) safe. State
//! transitions (commit, abort) take the `legs` lock exclusively, which waits
//! for every in-flight I/O: each I/O holds it shared from start to end.
//!
//! Durability order (the rule the whole design rests on, see also
//! `index.rs`):
//! - a region's migrated bit is set only after its data was written to the
//!   target, so a reopen after a process crash (same boot: the page cache
//!   survives) finds both (`routing.rs`, `steps.rs`);
//! - a region is *confirmed* only after a flush of the target that began
//!   after the region was marked (`checkpoint.rs`: take the pending words,
//!   flush the target, write the confirmed words, sync the index). After
//!   power loss only confirmed regions are trusted, so target data is
//!   always durable before the index entry that routes reads to it.
//!   Checkpoints run on every flush the initiator asks for and at least
//!   every second while the copier works;
//! - a flush returns only after a checkpoint that *began after the flush
//!   was asked for* has completed. Checkpoints run one at a time; callers
//!   that arrive while one runs wait, and the next checkpoint covers all of
//!   them (group commit), so no caller returns on the strength of a
//!   checkpoint whose pending words were taken before its own writes
//!   (`checkpoint.rs`);
//! - a reopen in the same boot treats regions the previous process
//!   migrated but never confirmed as pending (`index.rs`), so the first
//!   flush after a restart confirms them;
//! - during an abort, a region's bits are cleared only after its data is
//!   durable on the source, and the clear is synced before writers go to
//!   the source alone (`steps.rs`).
//!
//! A failed flush, a failed index write or a failed state change fences
//! the volume: no later I/O is acknowledged on top of data or metadata
//! whose state is unknown. Index bits reach the store before memory, so an
//! I/O acknowledged before the failure never relied on a bit the store
//! lacks.
mod checkpoint;
mod counters;
mod grow;
mod lifecycle;
mod routing;
mod steps;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::error::{Error, Result};
use crate::faults;
use crate::index::RegionIndex;
use crate::locks::RegionLocks;
use crate::record::{now_unix, MigrationRecord, MigrationState};
use crate::store::MetaStore;
use crate::volume::{check_range, Extent, Volume};

pub use checkpoint::INDEX_SYNC_INTERVAL;
pub use counters::MigrationCounts;
pub use lifecycle::{
    cleanup_aborted, cleanup_committed, reopen_target, MigrationPlan, Opened, Reopened,
};
pub use steps::{RegionCopy, COPY_CHUNK};

/// The volumes a migration currently uses.
struct Legs {
    source: Option<Arc<dyn Volume>>,
    target: Option<Arc<dyn Volume>>,
}

impl Legs {
    fn source(&self) -> &dyn Volume {
        self.source
            .as_deref()
            .expect("source leg present in this state")
    }
    fn target(&self) -> &dyn Volume {
        self.target
            .as_deref()
            .expect("target leg present in this state")
    }
}

/// A volume being migrated.
pub struct MigratingVolume {
    name: String,
    /// Changes only once the migration is over (a committed or aborted
    /// volume resized, see `grow.rs`); growing one in progress builds a
    /// new `MigratingVolume`.
    size: AtomicU64,
    legs: RwLock<Legs>,
    index: RegionIndex,
    locks: RegionLocks,
    target_store: Arc<dyn MetaStore>,
    source_store: Arc<dyn MetaStore>,
    record: Mutex<MigrationRecord>,
    state: AtomicU8,
    fenced: AtomicBool,
    fence_reason: Mutex<Option<String>>,
    /// Set once a write to a region not yet copied has reached the source
    /// (and on a resume: the process before may have left such writes
    /// unflushed); the next checkpoint takes it and flushes the source.
    source_written: AtomicBool,
    /// Foreground commands and how long they took: the copier's pacer
    /// steers by it (`crate::pace`).
    foreground: crate::pace::Meter,
    last_checkpoint: Mutex<Instant>,
    /// Checkpoints begun so far (numbered from 1).
    checkpoints_begun: AtomicU64,
    /// Held while a checkpoint runs; holds the number of the last one
    /// that completed. Checkpoints complete in order.
    checkpoint_done: Mutex<u64>,
    /// What it did, for monitoring.
    counters: counters::MigrationCounters,
    /// Set once a grow began replacing the index (`grow.rs`).
    index_replaced: AtomicBool,
}

fn state_code(s: MigrationState) -> u8 {
    match s {
        MigrationState::Copying => 0,
        MigrationState::Copied => 1,
        MigrationState::Committed => 2,
        MigrationState::Aborting => 3,
        MigrationState::Aborted => 4,
    }
}

fn state_from(code: u8) -> MigrationState {
    match code {
        0 => MigrationState::Copying,
        1 => MigrationState::Copied,
        2 => MigrationState::Committed,
        3 => MigrationState::Aborting,
        _ => MigrationState::Aborted,
    }
}

impl MigratingVolume {
    /// Current state.
    pub fn state(&self) -> MigrationState {
        state_from(self.state.load(Ordering::Acquire))
    }

    /// A copy of the record as last stored.
    pub fn record(&self) -> MigrationRecord {
        self.record.lock().clone()
    }

    /// Metadata store of the source volume.
    pub fn source_store(&self) -> Arc<dyn MetaStore> {
        self.source_store.clone()
    }

    /// Metadata store of the target volume.
    pub fn target_store(&self) -> Arc<dyn MetaStore> {
        self.target_store.clone()
    }

    /// The region index.
    pub fn index(&self) -> &RegionIndex {
        &self.index
    }

    /// What this migration did since this process opened it.
    pub fn counts(&self) -> MigrationCounts {
        self.counters.snapshot(self.index.words_written())
    }

    /// The foreground's commands and their total time so far.
    pub fn foreground(&self) -> crate::pace::Sample {
        self.foreground.sample()
    }

    /// Records `state` durably, then switches to it. Callers hold the legs
    /// lock exclusively, so no I/O sees the switch half done.
    ///
    /// A failed store fences the volume: the record may hold either state
    /// (a RADOS write can time out after it was applied), and serving on
    /// with one of them could contradict what a reopen finds.
    fn enter(&self, state: MigrationState) -> Result<()> {
        self.check_fence()?;
        self.point(faults::STATE_STORE_RECORD)
            .and_then(|()| self.update_record(|r| r.state = state))
            .inspect_err(|e| self.fence(&format!("recording state {state} failed: {e}")))?;
        self.state.store(state_code(state), Ordering::Release);
        Ok(())
    }

    /// Announces a named fault point (see [`crate::faults`]).
    fn point(&self, name: &'static str) -> Result<()> {
        self.target_store.fault_point(name)
    }

    fn fence(&self, why: &str) {
        log::error!("fencing {}: {why}", self.name);
        let mut reason = self.fence_reason.lock();
        if reason.is_none() {
            *reason = Some(why.to_string());
        }
        self.fenced.store(true, Ordering::Release);
    }

    /// Updates and durably stores the record.
    pub fn update_record(&self, change: impl FnOnce(&mut MigrationRecord)) -> Result<()> {
        let mut rec = self.record.lock();
        let mut next = rec.clone();
        change(&mut next);
        next.updated_unix = now_unix();
        self.target_store.store_record(&next.encode())?;
        *rec = next;
        Ok(())
    }

    fn check_fence(&self) -> Result<()> {
        if self.fenced.load(Ordering::Acquire) {
            let why = self.fence_reason.lock().clone().unwrap_or_default();
            return Err(Error::Fenced(why));
        }
        if let Some(why) = self.index.poisoned() {
            return Err(Error::Fenced(why));
        }
        Ok(())
    }

    /// Whether the volume refuses I/O after a failed flush or metadata
    /// write.
    pub fn is_fenced(&self) -> bool {
        self.check_fence().is_err()
    }

    /// Runs `f` (a flush); on failure fences the volume. A failed flush is
    /// never retried: the kernel may have dropped the dirty pages, so a
    /// later success would prove nothing.
    fn fenced_flush(&self, f: impl FnOnce() -> Result<()>) -> Result<()> {
        f().inspect_err(|e| self.fence(&format!("flush failed: {e}")))
    }

    fn begin(&self) -> Result<RwLockReadGuard<'_, Legs>> {
        self.check_fence()?;
        Ok(self.legs.read())
    }
}

impl Volume for MigratingVolume {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn object_size(&self) -> u64 {
        self.index.region_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let _timing = self.foreground.time();
        check_range(self.size(), offset, buf.len() as u64)?;
        let legs = self.begin()?;
        match self.state() {
            MigrationState::Committed => return legs.target().read_at(buf, offset),
            MigrationState::Aborted => return legs.source().read_at(buf, offset),
            _ => {}
        }
        for (to_target, at, len) in self.routed_runs(offset, buf.len() as u64) {
            let piece = &mut buf[(at - offset) as usize..(at - offset + len) as usize];
            self.counters.read(to_target, len);
            if to_target {
                legs.target().read_at(piece, at)?;
            } else {
                legs.source().read_at(piece, at)?;
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let _timing = self.foreground.time();
        self.modify(offset, buf.len() as u64, Some(buf), false)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let _timing = self.foreground.time();
        self.modify(offset, len, None, false)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let _timing = self.foreground.time();
        self.modify(offset, len, None, true)
    }

    fn flush(&self) -> Result<()> {
        let _timing = self.foreground.time();
        let legs = self.begin()?;
        match self.state() {
            MigrationState::Committed => self.fenced_flush(|| {
                self.point(faults::PLAIN_FLUSH)?;
                legs.target().flush()
            }),
            MigrationState::Aborted => self.fenced_flush(|| {
                self.point(faults::PLAIN_FLUSH)?;
                legs.source().flush()
            }),
            // Data first, then the index (`checkpoint`).
            _ => self.checkpoint(&legs),
        }
    }

    /// Only once the migration is over (committed: the target, aborted:
    /// the source); one in progress grows with [`MigratingVolume::grow`].
    fn resize(&self, size: u64) -> Result<()> {
        self.resize_finished(size)
    }

    fn allocated(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, len)?;
        let legs = self.begin()?;
        match self.state() {
            MigrationState::Committed => return legs.target().allocated(offset, len),
            MigrationState::Aborted => return legs.source().allocated(offset, len),
            _ => {}
        }
        let mut out = Vec::new();
        for (to_target, at, l) in self.routed_runs(offset, len) {
            let leg = if to_target {
                legs.target()
            } else {
                legs.source()
            };
            out.extend(leg.allocated(at, l)?);
        }
        Ok(out)
    }
}
