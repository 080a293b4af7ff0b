//! A migration's life: starting one (after checking the plan), resuming
//! it from the record kept with the target, aborting, committing, removing
//! the source after a commit, the cleanup a commit or an abort leaves, and
//! reopening a target by its name alone after a restart, which also
//! finishes a cleanup a crash interrupted. Where one of these writes
//! durable metadata, the order of its writes is stated where it does so.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use super::{state_code, Legs, MigratingVolume};
use crate::error::{Error, Result};
use crate::faults;
use crate::index::{region_size_ok, RegionIndex};
use crate::locks::RegionLocks;
use crate::record::{now_unix, MigrationRecord, MigrationState, RECORD_FORMAT};
use crate::store::{MetaStore, SourceMarker};
use crate::volume::Volume;

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
    /// The copier's impact budget in percent; `None`: the default.
    pub impact_percent: Option<u32>,
    /// The copier's floor rate in bytes per second; `None`: the default.
    pub floor_rate: Option<u64>,
    /// The copier's weight in the node's copy budget; `None`: the default.
    pub priority: Option<u32>,
    pub paused: bool,
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
            impact_percent: plan.impact_percent,
            floor_rate: plan.floor_rate,
            priority: plan.priority,
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
        // The source's writes so far are made durable at the switch
        // (`activate`).
        let source_written = false;
        Ok(Arc::new(Self::assemble(
            source,
            source_store,
            target,
            target_store,
            record,
            index,
            source_written,
        )))
    }

    /// Makes the writes the source took before this volume serves durable:
    /// the host calls it at the switch, with I/O to the source stopped,
    /// just before I/O starts coming here. An error means the migration
    /// must not serve (the host takes the start back).
    ///
    /// ORDERING: from the switch on, a flush of this volume flushes the
    /// source only when a write to a region not yet copied reached it
    /// since the last checkpoint (`routing.rs`), so a write acknowledged
    /// to the plain source before the switch and never flushed there would
    /// survive a SYNCHRONIZE CACHE that came after the switch only as far
    /// as the source's cache: flushed here first, it is durable before any
    /// flush of this volume can return.
    pub fn activate(&self) -> Result<()> {
        let legs = self.legs.read();
        legs.source().flush()
    }

    /// Reopens a migration from the record kept with `target`. `source` must
    /// be the volume the record names.
    pub fn resume(
        source: Arc<dyn Volume>,
        source_store: Arc<dyn MetaStore>,
        target: Arc<dyn Volume>,
        target_store: Arc<dyn MetaStore>,
    ) -> Result<Arc<Self>> {
        let mut record = Self::load_record(target_store.as_ref())?
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
        super::grow::finish_cut_grow(
            &mut record,
            source.as_ref(),
            target.as_ref(),
            target_store.as_ref(),
        )?;
        // A source longer than the record: a grow cut short before its
        // index was replaced; served at the record's size (`grow.rs`).
        if source.size() < record.size {
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
        // The process before this one may have written the source (a write
        // to a region not yet copied, or an abort's) and died before a
        // flush: the first checkpoint flushes the source, whatever this
        // process writes.
        let source_written = true;
        Ok(Arc::new(Self::assemble(
            source,
            source_store,
            target,
            target_store,
            record,
            index,
            source_written,
        )))
    }

    fn assemble(
        source: Arc<dyn Volume>,
        source_store: Arc<dyn MetaStore>,
        target: Arc<dyn Volume>,
        target_store: Arc<dyn MetaStore>,
        record: MigrationRecord,
        index: RegionIndex,
        source_written: bool,
    ) -> Self {
        MigratingVolume {
            name: format!("{} (migrating from {})", record.target, record.source),
            size: AtomicU64::new(record.size),
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
            source_written: AtomicBool::new(source_written),
            fence_reason: Mutex::new(None),
            foreground: crate::pace::Meter::default(),
            last_checkpoint: Mutex::new(Instant::now()),
            checkpoints_begun: AtomicU64::new(0),
            checkpoint_done: Mutex::new(0),
            counters: Default::default(),
            index_replaced: AtomicBool::new(false),
        }
    }

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
