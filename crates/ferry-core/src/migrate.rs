//! The migrating volume: one [`Volume`] made of a source and a target, routed
//! per region by the [`RegionIndex`].
//!
//! Routing rules while copying (state `copying` / `copied`):
//! - a read of a migrated region goes to the target, else to the source; a
//!   read spanning regions is split into runs with one route each;
//! - a write to a migrated region goes to the target; a write covering a
//!   whole unmigrated region writes the target and marks the region; a
//!   partial write to an unmigrated region first copies the region up (read
//!   source, merge, write target) and then marks it;
//! - write-zeroes / discard follow the same rules, without copying for
//!   whole regions;
//! - the source is never written, so it stays a consistent image of the
//!   volume at the start; every write sets the region's *written* bit first,
//!   which is what an abort copies back.
//!
//! While aborting, writes to still-migrated regions go to both legs (so a
//! region can be handed back at any instant) and writes elsewhere go to the
//! source; the copier copies written regions back and clears their bits.
//!
//! Locking: reads take no region lock. Writers of unmigrated regions and the
//! copier take the striped region lock, so a copy never races a copy-up of
//! the same region. Migrated bits only go from 0 to 1 while copying, which
//! makes the lock-free fast path (region migrated and written) safe. State
//! transitions (commit, abort) take the `legs` lock exclusively, which waits
//! for every in-flight I/O: each I/O holds it shared from start to end.
//!
//! Durability order (the rule the whole design rests on, see also
//! `index.rs`):
//! - a region's migrated bit is set only after its data was written to the
//!   target, so a reopen after a process crash (same boot: the page cache
//!   survives) finds both;
//! - a region is *confirmed* only after a flush of the target that began
//!   after the region was marked (`checkpoint`: take the pending words,
//!   flush the target, write the confirmed words, sync the index). After
//!   power loss only confirmed regions are trusted, so target data is
//!   always durable before the index entry that routes reads to it.
//!   Checkpoints run on every flush the initiator asks for and at least
//!   every second while the copier works;
//! - a flush returns only after a checkpoint that *began after the flush
//!   was asked for* has completed. Checkpoints run one at a time; callers
//!   that arrive while one runs wait, and the next checkpoint covers all of
//!   them (group commit), so no caller returns on the strength of a
//!   checkpoint whose pending words were taken before its own writes;
//! - a reopen in the same boot treats regions the previous process
//!   migrated but never confirmed as pending (`index.rs`), so the first
//!   flush after a restart confirms them;
//! - during an abort, a region's bits are cleared only after its data is
//!   durable on the source, and the clear is synced before writers go to
//!   the source alone.
//!
//! A failed flush, a failed index write or a failed state change fences
//! the volume: no later I/O is acknowledged on top of data or metadata
//! whose state is unknown. Index bits reach the store before memory, so an
//! I/O acknowledged before the failure never relied on a bit the store
//! lacks.
//!
//! Memory: a copy-up (a partial write to an unmigrated region) moves the
//! region in chunks of at most [`COPY_CHUNK`] bytes, whatever the region
//! size (up to 1 GiB).
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::error::{Error, Result};
use crate::faults;
use crate::index::{region_size_ok, RegionIndex};
use crate::locks::RegionLocks;
use crate::record::{now_unix, MigrationRecord, MigrationState, RECORD_FORMAT};
use crate::store::{MetaStore, SourceMarker};
use crate::volume::{check_range, Extent, Volume};

/// How often the index is made durable while the copier runs, at most.
pub const INDEX_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Largest buffer a copy (copier or copy-up) moves at once: 1 MiB keeps a
/// QD32 burst of copy-ups of 1 GiB regions at 32 MiB, and is large enough
/// that the per-call cost of a network backend is amortized.
pub const COPY_CHUNK: u64 = 1 << 20;

/// What the caller of [`MigratingVolume::start`] decides.
#[derive(Debug, Clone)]
pub struct MigrationPlan {
    pub source_spec: String,
    pub target_spec: String,
    /// Identity of the original volume, stored in the target's record.
    pub source_info: BTreeMap<String, String>,
    pub region_size: u64,
    pub rate_limit: Option<u64>,
    pub adaptive: bool,
    pub paused: bool,
}

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

/// Result of one copier step on a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionCopy {
    /// Already in place; nothing done.
    Skipped,
    /// Copied; `bytes` of data moved (0 for a hole).
    Copied { bytes: u64 },
}

/// A volume being migrated.
pub struct MigratingVolume {
    name: String,
    size: u64,
    legs: RwLock<Legs>,
    index: RegionIndex,
    locks: RegionLocks,
    target_store: Arc<dyn MetaStore>,
    source_store: Arc<dyn MetaStore>,
    record: Mutex<MigrationRecord>,
    state: AtomicU8,
    fenced: AtomicBool,
    fence_reason: Mutex<Option<String>>,
    /// Foreground operations started; the adaptive copier watches it.
    foreground_ops: AtomicU64,
    last_checkpoint: Mutex<Instant>,
    /// Checkpoints begun so far (numbered from 1).
    checkpoints_begun: AtomicU64,
    /// Held while a checkpoint runs; holds the number of the last one
    /// that completed. Checkpoints complete in order.
    checkpoint_done: Mutex<u64>,
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

fn random_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(now_unix());
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

impl MigratingVolume {
    /// Loads the migration record kept with a target, if any.
    pub fn load_record(store: &dyn MetaStore) -> Result<Option<MigrationRecord>> {
        match store.load_record()? {
            None => Ok(None),
            Some(bytes) => MigrationRecord::decode(&bytes, &store.describe()).map(Some),
        }
    }

    /// Starts a new migration from `source` to `target` after checking the
    /// plan; nothing is written unless every check passes.
    pub fn start(
        source: Arc<dyn Volume>,
        source_store: Arc<dyn MetaStore>,
        target: Arc<dyn Volume>,
        target_store: Arc<dyn MetaStore>,
        plan: MigrationPlan,
    ) -> Result<Arc<Self>> {
        if !region_size_ok(plan.region_size) {
            return Err(Error::BadRegionSize(plan.region_size));
        }
        if target.size() < source.size() {
            return Err(Error::TargetTooSmall {
                target: target.name().to_string(),
                target_size: target.size(),
                source_name: source.name().to_string(),
                source_size: source.size(),
            });
        }
        if let Some(marker) = source_store.load_source_marker()? {
            return Err(if marker.committed {
                Error::SourceRetired {
                    source_name: source.name().to_string(),
                    target: marker.target,
                }
            } else {
                Error::SourceBusy {
                    source_name: source.name().to_string(),
                    target: marker.target,
                }
            });
        }
        // A source that is itself the target of an unfinished migration
        // would have two routers; refuse it.
        if let Some(rec) = Self::load_record(source_store.as_ref())? {
            if rec.state != MigrationState::Committed {
                return Err(Error::SourceBusy {
                    source_name: source.name().to_string(),
                    target: format!(
                        "it is the target of migration {} from {}",
                        rec.id, rec.source
                    ),
                });
            }
        }
        match target_store.load_record() {
            Ok(None) => {}
            Ok(Some(_)) | Err(Error::Corrupt { .. }) => {
                return Err(Error::TargetBusy(target.name().to_string()))
            }
            Err(e) => return Err(e),
        }
        if let Some(marker) = target_store.load_source_marker()? {
            return Err(Error::SourceBusy {
                source_name: target.name().to_string(),
                target: format!(
                    "{} (a volume migrated away cannot be a target)",
                    marker.target
                ),
            });
        }

        let size = source.size();
        let now = now_unix();
        let record = MigrationRecord {
            format: RECORD_FORMAT,
            id: random_id(),
            source: plan.source_spec,
            source_info: plan.source_info,
            target: plan.target_spec,
            size,
            region_size: plan.region_size,
            state: MigrationState::Copying,
            paused: plan.paused,
            rate_limit: plan.rate_limit,
            adaptive: plan.adaptive,
            created_unix: now,
            updated_unix: now,
        };
        // Order: index first (durable, all clear), then the record (which is
        // what makes the target "in a migration"), then the source marker.
        // A crash between steps leaves either nothing that counts (an
        // orphan index, replaced on the next start) or a record whose
        // marker `resume` writes again.
        let index = RegionIndex::create(target_store.clone(), size, plan.region_size)?;
        target_store.fault_point(faults::START_STORE_RECORD)?;
        target_store.store_record(&record.encode())?;
        target_store.fault_point(faults::START_STORE_MARKER)?;
        source_store.store_source_marker(&SourceMarker::migrating(&record.target))?;
        log::info!(
            "migration {} started: {} -> {} ({} bytes, {} regions of {} bytes)",
            record.id,
            record.source,
            record.target,
            size,
            index.regions(),
            plan.region_size
        );
        Ok(Arc::new(Self::assemble(
            source,
            source_store,
            target,
            target_store,
            record,
            index,
        )))
    }

    /// Reopens a migration from the record kept with `target`. `source` must
    /// be the volume the record names.
    pub fn resume(
        source: Arc<dyn Volume>,
        source_store: Arc<dyn MetaStore>,
        target: Arc<dyn Volume>,
        target_store: Arc<dyn MetaStore>,
    ) -> Result<Arc<Self>> {
        let record = Self::load_record(target_store.as_ref())?
            .ok_or_else(|| Error::NoMigration(target.name().to_string()))?;
        match record.state {
            MigrationState::Copying | MigrationState::Copied | MigrationState::Aborting => {}
            other => {
                return Err(Error::WrongState {
                    op: "resume",
                    state: other.to_string(),
                })
            }
        }
        if source.size() != record.size {
            return Err(Error::Corrupt {
                what: target_store.describe(),
                why: format!(
                    "the record says the source has {} bytes but {} has {}",
                    record.size,
                    source.name(),
                    source.size()
                ),
            });
        }
        if target.size() < record.size {
            return Err(Error::TargetTooSmall {
                target: target.name().to_string(),
                target_size: target.size(),
                source_name: source.name().to_string(),
                source_size: record.size,
            });
        }
        let index = RegionIndex::open(target_store.clone(), record.size, record.region_size)?;
        if source_store.load_source_marker()?.is_none() {
            target_store.fault_point(faults::RESUME_STORE_MARKER)?;
            source_store.store_source_marker(&SourceMarker::migrating(&record.target))?;
        }
        log::info!(
            "migration {} resumed in state {}: {}/{} regions on the target",
            record.id,
            record.state,
            index.migrated_count(),
            index.regions()
        );
        Ok(Arc::new(Self::assemble(
            source,
            source_store,
            target,
            target_store,
            record,
            index,
        )))
    }

    fn assemble(
        source: Arc<dyn Volume>,
        source_store: Arc<dyn MetaStore>,
        target: Arc<dyn Volume>,
        target_store: Arc<dyn MetaStore>,
        record: MigrationRecord,
        index: RegionIndex,
    ) -> Self {
        MigratingVolume {
            name: format!("{} (migrating from {})", record.target, record.source),
            size: record.size,
            legs: RwLock::new(Legs {
                source: Some(source),
                target: Some(target),
            }),
            index,
            locks: RegionLocks::new(),
            target_store,
            source_store,
            state: AtomicU8::new(state_code(record.state)),
            record: Mutex::new(record),
            fenced: AtomicBool::new(false),
            fence_reason: Mutex::new(None),
            foreground_ops: AtomicU64::new(0),
            last_checkpoint: Mutex::new(Instant::now()),
            checkpoints_begun: AtomicU64::new(0),
            checkpoint_done: Mutex::new(0),
        }
    }

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

    /// Foreground operations started so far.
    pub fn foreground_ops(&self) -> u64 {
        self.foreground_ops.load(Ordering::Relaxed)
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
        self.foreground_ops.fetch_add(1, Ordering::Relaxed);
        Ok(self.legs.read())
    }

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
    fn routed_runs(&self, offset: u64, len: u64) -> Vec<(bool, u64, u64)> {
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

    /// Makes everything written so far durable and confirms the migrated
    /// regions: snapshot the bits, flush the data, then confirm and sync
    /// the index (the ORDERING rule in the module docs).
    ///
    /// Returns only once a checkpoint that began after this call did has
    /// completed (see the module docs): either this call's own, or one a
    /// concurrent caller ran while this one waited for the lock.
    fn checkpoint(&self, legs: &Legs) -> Result<()> {
        // Checkpoints numbered above `arrival` begin after this point, so
        // they take pending words and flush data written before it.
        let arrival = self.checkpoints_begun.load(Ordering::SeqCst);
        let mut done = self.checkpoint_done.lock();
        self.check_fence()?;
        if *done > arrival {
            return Ok(());
        }
        let number = self.checkpoints_begun.fetch_add(1, Ordering::SeqCst) + 1;
        // ORDERING: pending words first, then the data flush, then the
        // confirmation and the index sync.
        let pending = self.index.pending();
        if self.state() == MigrationState::Aborting {
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
        *self.last_checkpoint.lock() = Instant::now();
        Ok(())
    }

    /// A checkpoint if the last one is older than [`INDEX_SYNC_INTERVAL`].
    fn checkpoint_if_due(&self, legs: &Legs) -> Result<()> {
        if self.last_checkpoint.lock().elapsed() >= INDEX_SYNC_INTERVAL {
            self.checkpoint(legs)?;
        }
        Ok(())
    }

    /// Copies region `[start,end)` up from the source to the target, except
    /// `[at, at+len)` which the caller's write is about to cover, in chunks
    /// of at most [`COPY_CHUNK`] bytes.
    fn copy_up(&self, legs: &Legs, start: u64, end: u64, at: u64, len: u64) -> Result<()> {
        self.point(faults::WRITE_COPY_UP)?;
        let mut buf = Vec::new();
        if at > start {
            copy_extents(legs.source(), legs.target(), start, at, &mut buf)?;
        }
        if at + len < end {
            copy_extents(legs.source(), legs.target(), at + len, end, &mut buf)?;
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
        if !self.index.is_written(r) {
            self.point(faults::WRITE_MARK_WRITTEN)?;
            self.index.mark_written(r)?;
        }
        if self.index.is_migrated(r) {
            return apply_target(at, len);
        }
        let (start, end) = self.index.region_bounds(r);
        // The rest of the region first (nothing routes to the target yet),
        // then the write itself.
        self.copy_up(legs, start, end, at, len)?;
        apply_target(at, len)?;
        // ORDERING: data on the target first, then the migrated bit; it is
        // confirmed (trusted after power loss) by the next checkpoint,
        // which flushes the target before it writes the confirmation.
        self.point(faults::WRITE_MARK_MIGRATED)?;
        self.index.mark_migrated(&[r])
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
            if !self.index.is_written(r) {
                self.point(faults::WRITE_MARK_WRITTEN)?;
                self.index.mark_written(r)?;
            }
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

    fn modify(&self, offset: u64, len: u64, data: Option<&[u8]>, discard: bool) -> Result<()> {
        check_range(self.size, offset, len)?;
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

    // ----- copier steps -------------------------------------------------

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

    // ----- control ------------------------------------------------------

    /// Starts an abort. The copier then copies written regions back; reads
    /// and writes continue throughout.
    pub fn abort(&self) -> Result<()> {
        let legs = self.legs.write();
        match self.state() {
            MigrationState::Copying | MigrationState::Copied => {}
            MigrationState::Aborting => return Ok(()),
            other => {
                return Err(Error::WrongState {
                    op: "abort",
                    state: other.to_string(),
                })
            }
        }
        // No forward I/O is in flight (we hold the legs lock exclusively),
        // so every write so far has its written bit set. Confirm every
        // migrated region first: during the abort nothing new is marked,
        // and the copy-back rewrites the confirmed bits from the migrated.
        self.checkpoint(&legs)?;
        self.enter(MigrationState::Aborting)?;
        log::info!(
            "migration {}: abort started, {} written regions to copy back",
            self.record.lock().id,
            self.index.written_count()
        );
        Ok(())
    }

    /// Makes the target stand alone. Every region must be migrated.
    pub fn commit(&self) -> Result<()> {
        self.finish_copy()?;
        let mut legs = self.legs.write();
        match self.state() {
            MigrationState::Copied => {}
            MigrationState::Committed => return Ok(()),
            MigrationState::Copying => {
                return Err(Error::NotCopied {
                    remaining: self.index.regions() - self.index.migrated_count(),
                    total: self.index.regions(),
                })
            }
            other => {
                return Err(Error::WrongState {
                    op: "commit",
                    state: other.to_string(),
                })
            }
        }
        self.checkpoint(&legs)?;
        self.enter(MigrationState::Committed)?;
        legs.source = None;
        drop(legs);
        let rec = self.record();
        log::info!(
            "migration {} committed: {} stands alone",
            rec.id,
            rec.target
        );
        cleanup_committed(
            self.source_store.as_ref(),
            self.target_store.as_ref(),
            &rec.target,
        );
        Ok(())
    }
}

impl MigratingVolume {
    /// After commit, deletes the source volume (the admin's choice: the
    /// default keeps it untouched). For a file source its marker stays, so
    /// the LUN's configured name still leads to the target; an RBD
    /// source's marker goes with the image, so such a LUN must then be
    /// configured with the target's spec.
    pub fn remove_source(&self) -> Result<()> {
        if self.state() != MigrationState::Committed {
            return Err(Error::WrongState {
                op: "remove the source",
                state: self.state().to_string(),
            });
        }
        self.source_store.destroy_volume()?;
        log::info!(
            "migration {}: source {} removed",
            self.record().id,
            self.record().source
        );
        Ok(())
    }
}

/// Finishes a committed migration: the source's marker now forwards to
/// the target (so a LUN configured with the source's name is served from
/// the target after a restart), and the index goes. Failures are logged,
/// not returned: the commit itself is durable, and the next open redoes it.
pub fn cleanup_committed(source_store: &dyn MetaStore, target_store: &dyn MetaStore, target: &str) {
    if let Err(e) = target_store
        .fault_point(faults::COMMIT_STORE_MARKER)
        .and_then(|()| source_store.store_source_marker(&SourceMarker::committed(target)))
    {
        log::warn!("could not mark the source as committed: {e}");
    }
    if let Err(e) = target_store
        .fault_point(faults::COMMIT_REMOVE_INDEX)
        .and_then(|()| target_store.remove_index())
    {
        log::warn!("could not remove the region index: {e}");
    }
}

/// Removes what an aborted migration leaves behind, target included.
pub fn cleanup_aborted(source_store: &dyn MetaStore, target_store: &dyn MetaStore) {
    if let Err(e) = target_store
        .fault_point(faults::ABORT_DESTROY_TARGET)
        .and_then(|()| target_store.destroy_volume())
    {
        log::warn!("could not discard the aborted target: {e}");
    }
    // The target's store is gone; the point is announced on the source's.
    if let Err(e) = source_store
        .fault_point(faults::ABORT_REMOVE_MARKER)
        .and_then(|()| source_store.remove_source_marker())
    {
        log::warn!("could not remove the source marker: {e}");
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

/// Copies the data of `[start,end)` from `from` to `to`, keeping holes as
/// holes. Stale bytes on `to` (from an interrupted copy-up) are zeroed
/// first. Returns the bytes of data copied.
fn copy_extents(
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

impl Volume for MigratingVolume {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn object_size(&self) -> u64 {
        self.index.region_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        let legs = self.begin()?;
        match self.state() {
            MigrationState::Committed => return legs.target().read_at(buf, offset),
            MigrationState::Aborted => return legs.source().read_at(buf, offset),
            _ => {}
        }
        for (to_target, at, len) in self.routed_runs(offset, buf.len() as u64) {
            let piece = &mut buf[(at - offset) as usize..(at - offset + len) as usize];
            if to_target {
                legs.target().read_at(piece, at)?;
            } else {
                legs.source().read_at(piece, at)?;
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.modify(offset, buf.len() as u64, Some(buf), false)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.modify(offset, len, None, false)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.modify(offset, len, None, true)
    }

    fn flush(&self) -> Result<()> {
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

    fn allocated(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(self.size, offset, len)?;
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

/// What opening a migration target by its name alone gives.
pub enum Reopened {
    /// No migration in progress: the volume to serve as it is.
    Plain(Arc<dyn Volume>),
    /// A migration in progress, resumed.
    Migrating(Arc<MigratingVolume>),
}

impl Reopened {
    /// The volume to serve.
    pub fn volume(&self) -> Arc<dyn Volume> {
        match self {
            Reopened::Plain(v) => v.clone(),
            Reopened::Migrating(m) => m.clone(),
        }
    }
}

/// A volume with its metadata store, as a backend opens it.
pub type Opened = (Arc<dyn Volume>, Arc<dyn MetaStore>);

/// Reopens whatever `target` holds: finishes a commit or abort that a crash
/// interrupted, resumes a migration in progress, or returns the plain
/// target. `open_source` opens the source named in the record.
pub fn reopen_target(
    target: Opened,
    open_source: impl FnOnce(&str) -> Result<Opened>,
) -> Result<Reopened> {
    let (target, target_store) = target;
    let Some(record) = MigratingVolume::load_record(target_store.as_ref())? else {
        return Ok(Reopened::Plain(target));
    };
    match record.state {
        MigrationState::Committed => {
            // Leftovers of a commit interrupted before its cleanup.
            if let Ok((_, source_store)) = open_source(&record.source) {
                let marker = source_store.load_source_marker()?;
                if marker == Some(SourceMarker::migrating(&record.target)) {
                    cleanup_committed(source_store.as_ref(), target_store.as_ref(), &record.target);
                }
            }
            if target_store.read_index()?.is_some() {
                target_store.remove_index()?;
            }
            Ok(Reopened::Plain(target))
        }
        MigrationState::Aborted => {
            let (source, source_store) = open_source(&record.source)?;
            drop(target);
            cleanup_aborted(source_store.as_ref(), target_store.as_ref());
            Ok(Reopened::Plain(source))
        }
        _ => {
            let (source, source_store) = open_source(&record.source)?;
            Ok(Reopened::Migrating(MigratingVolume::resume(
                source,
                source_store,
                target,
                target_store,
            )?))
        }
    }
}
