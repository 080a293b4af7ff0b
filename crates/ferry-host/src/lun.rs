//! A hosted LUN: the volume a front-end serves, which can start, run and
//! finish a migration underneath the front-end without it noticing.
//!
//! The LUN is opened by the spec the admin configured (tgtadm
//! `--backing-store`, targetcli `cfgstring`). That spec keeps naming the
//! LUN for its whole life, so opening it follows the migration metadata:
//! a source marker leads to the target and its record, and a committed
//! migration is served from the target. The LUN's identity (target, LUN
//! number, serial) never changes; only the volume underneath does.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::copier::{CopierConfig, PaceChange, Progress};
use ferry_core::migrate::{reopen_target, Reopened};
use ferry_core::{
    Copier, Error, Extent, MetaStore, MigratingVolume, MigrationPlan, MigrationState, Result,
    Volume,
};
use ferry_pr::{Nexus, Pointer, PrError, PrState, Refusal, ReservationHomes, Reservations};
use ferry_scsi::CacheMode;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::reservations::{pr_err, PrStore};
use crate::spec::VolumeSpec;

/// How a LUN is opened.
#[derive(Clone)]
pub struct OpenOptions {
    /// Whether a migration in progress advances (a copier thread); off for
    /// control tools working offline.
    pub run_copier: bool,
    /// Follows a reservation slot's pointer (see [`crate::reservations`]).
    pub homes: Arc<dyn ReservationHomes>,
    /// The front-end's core answers persistent reservations itself (LIO
    /// does, in the kernel, and tells TCMU handlers nothing about
    /// sessions): ferry then neither loads nor enforces the ones saved
    /// with the volume (a LUN tgtd served before may have some), only
    /// carries the volume's slot along through migrations and restores.
    pub kernel_reservations: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            run_copier: true,
            homes: default_homes(),
            kernel_reservations: false,
        }
    }
}

static DEFAULT_HOMES: std::sync::OnceLock<Arc<dyn ReservationHomes>> = std::sync::OnceLock::new();

/// Sets the homes every LUN this process opens follows pointers with
/// (the `ferry` command sets ZooKeeper's; the plugins keep the default,
/// the node's agent through [`crate::relay`]). Only the first call counts.
pub fn set_default_homes(homes: Arc<dyn ReservationHomes>) {
    let _ = DEFAULT_HOMES.set(homes);
}

/// The homes [`OpenOptions::default`] uses.
pub fn default_homes() -> Arc<dyn ReservationHomes> {
    DEFAULT_HOMES
        .get_or_init(|| Arc::new(crate::relay::AgentRelay::new(&crate::control::run_dir())))
        .clone()
}

/// The configuration of a LUN's copier: the defaults, sharing the
/// process's copy budget.
pub(crate) fn copier_config() -> CopierConfig {
    CopierConfig {
        share: crate::control::process_share().clone(),
        ..CopierConfig::default()
    }
}

/// Options of a migration start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartOptions {
    /// Region size in bytes; `None` = the source's object size.
    pub region_size: Option<u64>,
    /// Copier rate limit in bytes per second.
    pub rate_limit: Option<u64>,
    pub adaptive: bool,
    /// The copier's impact budget in percent of foreground latency
    /// (`None`: `ferry_core::pace::DEFAULT_BUDGET`).
    #[serde(default)]
    pub impact_percent: Option<u32>,
    /// The copier's floor rate, bytes per second (`None`: the default).
    #[serde(default)]
    pub floor_rate: Option<u64>,
    /// The copier's weight in the node's copy budget (`None`:
    /// `ferry_core::share::DEFAULT_PRIORITY`).
    #[serde(default)]
    pub priority: Option<u32>,
    pub paused: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            region_size: None,
            rate_limit: None,
            adaptive: true,
            impact_percent: None,
            floor_rate: None,
            priority: None,
            paused: false,
        }
    }
}

pub(crate) struct Migration {
    pub(crate) vol: Arc<MigratingVolume>,
    pub(crate) copier: Option<Copier>,
}

impl Migration {
    /// Progress, with the copier's running figures if one runs.
    fn progress(&self) -> Progress {
        match &self.copier {
            Some(c) => c.progress(),
            None => Progress::of(&self.vol, None),
        }
    }

    /// Applies a copier control: through the running copier (`running`,
    /// which persists it and wakes the thread), or with none running
    /// (offline tools) to the migration itself (`stored`).
    fn steer(
        &self,
        running: impl FnOnce(&Copier) -> Result<()>,
        stored: impl FnOnce(&MigratingVolume) -> Result<()>,
    ) -> Result<()> {
        match &self.copier {
            Some(c) => running(c),
            None => stored(&self.vol),
        }
    }
}

/// A LUN being served.
pub struct Lun {
    spec: VolumeSpec,
    /// The volume's size; changes only in a resize (`crate::resize`).
    pub(crate) size: AtomicU64,
    /// Resizes so far: each front-end owes every nexus a CAPACITY DATA
    /// HAS CHANGED unit attention per change.
    pub(crate) capacity_changes: AtomicU64,
    /// The volume I/O goes to. Every I/O holds this shared for its whole
    /// duration, so swapping it (start of a migration) waits for in-flight
    /// I/O on the old volume: the copier never misses a write.
    pub(crate) current: RwLock<Arc<dyn Volume>>,
    /// Spec of the plain volume underneath: the source while migrating,
    /// the target once committed.
    served: Mutex<VolumeSpec>,
    pub(crate) migration: Mutex<Option<Migration>>,
    pub(crate) run_copier: bool,
    /// [`CacheMode`] code: read by every command, set from the control
    /// path.
    cache_mode: AtomicU8,
    /// log2 of the logical block size initiators see (set by the
    /// front-end, [`Lun::set_geometry`]).
    pub(crate) block_shift: AtomicU32,
    /// The capacity initiators see, in those blocks.
    pub(crate) capacity_blocks: AtomicU64,
    /// WCE as initiators see it (the front-end's core keeps the page).
    pub(crate) write_cache: AtomicBool,
    /// The front-end's core answers reservations (see
    /// [`OpenOptions::kernel_reservations`]).
    pub(crate) reservations_passive: bool,
    /// Serializes COMPARE AND WRITE (and ORWRITE) commands of the LUN
    /// among themselves, which is what makes them atomic for the lock
    /// users (VMFS ATS, sanlock) that rely on them.
    pub(crate) caw: Mutex<()>,
    /// Persistent reservations, enforced here for every front-end that
    /// passes PR commands through (`ferry_pr`).
    reservations: Reservations,
    /// Where they are saved: the served volume's slot for them (for RBD
    /// through the volume's own image handle), or the ZooKeeper document
    /// the slot points to (`reservations`), so they follow the LUN to
    /// whichever gateway opens it next. The slot moves to the target at
    /// commit.
    pr_store: PrStore,
    /// Orders commands around PR OUT: a command holds it shared from its
    /// reservation check to the end of its I/O, a PR OUT exclusively. So
    /// once PREEMPT (AND ABORT) or CLEAR returns, no command of a
    /// preempted host that was checked before it is still running, and
    /// none checked after it gets through: fencing is immediate.
    pr_gate: RwLock<()>,
    /// Serializes the control operations that replace the volume under
    /// the LUN (a migration start, a quiesced snapshot operation). Never
    /// taken by I/O, so the slow part of a start does not stall commands.
    pub(crate) admin: Mutex<()>,
    /// What [`Lun::status`] last reported.
    last_status: Mutex<Option<Progress>>,
    /// What its commands did (`crate::metrics`).
    pub(crate) metrics: crate::metrics::LunMetrics,
    /// Its IOPS and bandwidth limits (`crate::qos`).
    pub(crate) qos: crate::qos::Qos,
}

/// The cache mode of a LUN configured by hand (tgtadm without `cache=`,
/// targetcli): WCE as the initiator sets it, flushes honoured, which is
/// what tgt's own backing stores do. The cluster map sets each LUN's mode
/// explicitly (its default is writethrough).
pub const DEFAULT_CACHE_MODE: CacheMode = CacheMode::Writeback;

/// Opens what a spec names now, following migration metadata: committed
/// migrations forward to their target, a migration in progress resumes,
/// and an abort or commit cut short by a crash is finished. Also returns
/// the spec of the plain volume served (the source while migrating).
pub fn resolve(spec: &VolumeSpec) -> Result<(Reopened, VolumeSpec)> {
    let mut spec = spec.clone();
    // A volume migrated several times forwards through each target; the
    // bound only guards against a loop made by hand-edited markers.
    for _ in 0..32 {
        // A temporary: for RBD the store holds an image handle, and a second
        // handle in this process would look like another client.
        let marker = spec.store()?.load_source_marker()?;
        let Some(marker) = marker else {
            let (vol, store) = spec.open()?;
            let record = MigratingVolume::load_record(store.as_ref())?;
            let reopened = reopen_target((vol, store), |s| VolumeSpec::parse(s)?.open())?;
            let served = match (&reopened, record) {
                (Reopened::Plain(_), Some(r)) if r.state == MigrationState::Aborted => {
                    VolumeSpec::parse(&r.source)?
                }
                (Reopened::Migrating(m), _) => VolumeSpec::parse(&m.record().source)?,
                _ => spec,
            };
            return Ok((reopened, served));
        };
        let tspec = VolumeSpec::parse(&marker.target)?;
        if marker.committed {
            spec = tspec;
            continue;
        }
        let (vol, store) = spec.open()?;
        let record = if tspec.exists()? {
            MigratingVolume::load_record(tspec.store()?.as_ref())?
        } else {
            None
        };
        let Some(record) = record else {
            // The migration's start or abort was cut short after the marker
            // was written or before it was removed: nothing refers to it.
            log::warn!("{spec}: removing a stale marker pointing at {tspec}");
            store.remove_source_marker()?;
            return Ok((Reopened::Plain(vol), spec));
        };
        let me = spec.to_string();
        if record.source != me {
            return Err(Error::Corrupt {
                what: tspec.to_string(),
                why: format!(
                    "its record names source {}, but {me} points at it",
                    record.source
                ),
            });
        }
        let mut mine = Some((vol, store));
        let reopened = reopen_target(tspec.open()?, |_| {
            Ok(mine.take().expect("source opened once"))
        })?;
        let served = if record.state == MigrationState::Committed {
            tspec
        } else {
            spec
        };
        return Ok((reopened, served));
    }
    Err(Error::Corrupt {
        what: spec.to_string(),
        why: "migration markers forward in a loop".into(),
    })
}

impl Lun {
    /// Opens a LUN for serving; a migration in progress resumes, with its
    /// copier running.
    pub fn open(spec: &str) -> Result<Arc<Lun>> {
        Self::open_opts(spec, OpenOptions::default())
    }

    /// Opens a LUN; with `run_copier` false, a migration in progress is
    /// loaded but not advanced (control tools working offline).
    pub fn open_with(spec: &str, run_copier: bool) -> Result<Arc<Lun>> {
        Self::open_opts(
            spec,
            OpenOptions {
                run_copier,
                ..OpenOptions::default()
            },
        )
    }

    /// Opens a LUN as `opts` say.
    pub fn open_opts(spec: &str, opts: OpenOptions) -> Result<Arc<Lun>> {
        let OpenOptions {
            run_copier,
            homes,
            kernel_reservations,
        } = opts;
        let spec = VolumeSpec::parse(spec)?;
        let (reopened, served) = resolve(&spec)?;
        let (current, migration): (Arc<dyn Volume>, _) = match reopened {
            Reopened::Plain(v) => (v, None),
            Reopened::Migrating(m) => {
                let copier = if run_copier {
                    Some(Copier::spawn(m.clone(), copier_config())?)
                } else {
                    None
                };
                (m.clone(), Some(Migration { vol: m, copier }))
            }
        };
        let slot = match &migration {
            Some(m) => m.vol.source_store(),
            None => served.store_of(current.as_ref())?,
        };
        let (pr_store, saved) = if kernel_reservations {
            (PrStore::passive(slot, homes), None)
        } else {
            PrStore::open(slot, run_copier, homes)?
        };
        let reservations =
            Reservations::load(saved.as_deref()).map_err(|why| Error::Reservations {
                what: pr_store.describe(),
                why: format!("unreadable ({why}); `ferry pr clear` replaces them"),
            })?;
        let state = reservations.state();
        if !state.registrations.is_empty() {
            log::info!(
                "{spec}: {} PR registrations, reservation {:?}, generation {}",
                state.registrations.len(),
                state.reservation.as_ref().map(|r| r.kind),
                state.generation
            );
        }
        log::info!("{spec}: serving {}", current.name());
        let size = current.size();
        Ok(Arc::new(Lun {
            reservations,
            pr_store,
            pr_gate: RwLock::new(()),
            admin: Mutex::new(()),
            last_status: Mutex::new(None),
            metrics: Default::default(),
            qos: Default::default(),
            size: AtomicU64::new(size),
            capacity_changes: AtomicU64::new(0),
            spec,
            current: RwLock::new(current),
            served: Mutex::new(served),
            migration: Mutex::new(migration),
            run_copier,
            cache_mode: AtomicU8::new(DEFAULT_CACHE_MODE.to_u8()),
            block_shift: AtomicU32::new(9),
            capacity_blocks: AtomicU64::new(size >> 9),
            write_cache: AtomicBool::new(true),
            caw: Mutex::new(()),
            reservations_passive: kernel_reservations,
        }))
    }

    /// Runs `f` with I/O quiesced: every command in flight has finished
    /// and new ones wait until it returns. `f` may hand back a volume to
    /// serve from then on (a restored snapshot).
    pub(crate) fn quiesced<T>(
        &self,
        f: impl FnOnce(&Arc<dyn Volume>) -> Result<(T, Option<Arc<dyn Volume>>)>,
    ) -> Result<T> {
        let _admin = self.admin.lock();
        let mut current = self.current.write();
        let (out, replace) = f(&current)?;
        if let Some(v) = replace {
            *current = v;
        }
        Ok(out)
    }

    /// The volume commands go to now, held until the guard is dropped (a
    /// migration start or snapshot switch waits for it).
    pub(crate) fn current_volume(&self) -> parking_lot::RwLockReadGuard<'_, Arc<dyn Volume>> {
        self.current.read()
    }

    /// How writes reach stable storage (see `ferry_scsi::cache`).
    pub fn cache_mode(&self) -> CacheMode {
        CacheMode::from_u8(self.cache_mode.load(Ordering::Relaxed))
    }

    pub fn set_cache_mode(&self, mode: CacheMode) {
        let old = CacheMode::from_u8(self.cache_mode.swap(mode.to_u8(), Ordering::Relaxed));
        if old != mode {
            log::info!("{}: cache mode {old} -> {mode}", self.spec);
        }
    }

    /// The LUN's persistent reservations.
    pub fn reservations(&self) -> &Reservations {
        &self.reservations
    }

    fn save_reservations(&self, bytes: &[u8]) -> std::result::Result<(), PrError> {
        // The error names where (a volume's metadata, a ZooKeeper
        // document).
        self.pr_store.save(bytes)
    }

    /// Whether `nexus` may run `cdb` (any command but PERSISTENT RESERVE
    /// IN/OUT): a unit attention owed to it, or RESERVATION CONFLICT.
    /// Never waits on storage (front-ends call it on their event loop).
    pub fn pr_check(&self, nexus: &Nexus, cdb: &[u8]) -> std::result::Result<(), Refusal> {
        self.reservations.check(nexus, cdb)
    }

    /// Runs `command` if `nexus` may run `cdb`, with PR OUT held off from
    /// the check to the end of the command (see `pr_gate`).
    pub fn pr_checked<T>(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        command: impl FnOnce() -> T,
    ) -> std::result::Result<T, Refusal> {
        let _gate = self.pr_gate.read();
        self.reservations.check(nexus, cdb)?;
        Ok(command())
    }

    /// PERSISTENT RESERVE OUT: the change is saved before this returns,
    /// and every command checked before it has finished.
    pub fn pr_out(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
    ) -> std::result::Result<(), Refusal> {
        let _gate = self.pr_gate.write();
        self.reservations
            .serve_out(nexus, cdb, params, &|b| self.save_reservations(b))
    }

    /// PERSISTENT RESERVE IN into `buf`; returns the bytes filled.
    pub fn pr_in(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        buf: &mut [u8],
    ) -> std::result::Result<usize, Refusal> {
        self.reservations.serve_in(nexus, cdb, buf)
    }

    /// Moves the saved reservations to another volume's metadata `to`
    /// (the target of a commit, the clone of a restore): saved there
    /// first, then `switch` makes that volume the LUN's, then they are
    /// saved only there. PR OUT waits meanwhile (commands are still
    /// checked), so no change is saved to the wrong side; if `switch`
    /// fails they stay where they were.
    pub(crate) fn move_reservations(
        &self,
        to: Arc<dyn MetaStore>,
        switch: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        self.reservations.serialized(|state| -> Result<()> {
            self.pr_store.move_slot(to, &state.encode(), switch)
        })
    }

    /// The reservations; with `clear`, an administrator's forced clear
    /// first (saved before it is enforced, and fencing like a PR OUT).
    pub fn reservations_report(&self, clear: bool) -> Result<PrState> {
        if clear {
            let _gate = self.pr_gate.write();
            self.reservations
                .replace_with(PrState::cleared, &|b| self.save_reservations(b))
                .map_err(pr_err)?;
            log::warn!(
                "{}: persistent reservations cleared by an administrator",
                self.spec
            );
        }
        Ok(self.reservations.state())
    }

    /// Keeps the reservations at `pointer` (the ZooKeeper map's) from now
    /// on: the state held now is written there, then the volume's slot
    /// points to it (see [`crate::reservations`]). PR OUT waits meanwhile.
    pub fn keep_reservations_in(&self, pointer: &Pointer) -> Result<()> {
        self.reservations
            .serialized(|state| self.pr_store.keep_in(pointer, &state.encode()))
    }

    /// Keeps the reservations with the volume from now on (the state held
    /// now replaces the slot's pointer). PR OUT waits meanwhile.
    pub fn keep_reservations_with_volume(&self) -> Result<()> {
        self.reservations
            .serialized(|state| self.pr_store.keep_in_slot(&state.encode()))
    }

    /// Where the reservations are saved, for messages and `ferry pr show`.
    pub fn reservations_home(&self) -> String {
        self.pr_store.describe()
    }

    /// The pointer the volume's slot holds, if the reservations are kept
    /// in a ZooKeeper map.
    pub fn reservations_pointer(&self) -> Option<Pointer> {
        self.pr_store.pointer()
    }

    /// The configured spec.
    pub fn spec(&self) -> &VolumeSpec {
        &self.spec
    }

    /// Spec of the plain volume underneath (the source while migrating).
    pub fn served(&self) -> VolumeSpec {
        self.served.lock().clone()
    }

    #[cfg(feature = "rbd")]
    pub(crate) fn set_served(&self, spec: VolumeSpec) {
        *self.served.lock() = spec;
    }

    /// Whether `name` (a spec) names this LUN: its configured spec or
    /// either side of its migration.
    pub fn answers_to(&self, name: &str) -> bool {
        let Ok(wanted) = VolumeSpec::parse(name) else {
            return false;
        };
        let wanted = wanted.to_string();
        if self.spec.to_string() == wanted || self.served.lock().to_string() == wanted {
            return true;
        }
        match self.migration.lock().as_ref() {
            Some(m) => {
                let r = m.vol.record();
                r.source == wanted || r.target == wanted
            }
            None => false,
        }
    }

    /// Starts migrating this LUN to `target` (created here with the LUN's
    /// size). I/O pauses only for the switch itself.
    ///
    /// The slow work comes first, with no lock that I/O or the control
    /// path waits on: connecting to the target's cluster, the prechecks,
    /// creating the target and writing the index, the record and the
    /// source marker (none of it reads the source's data, so writes that
    /// keep going straight to the source meanwhile lose nothing: no region
    /// is copied before the switch). Then, with I/O held off, the switch
    /// re-checks that nothing changed (the same volume under the LUN, no
    /// migration) and swaps in the migrating volume and its copier; if
    /// something did change, the fresh target is removed again. Only one
    /// start or snapshot switch runs at a time (`admin`).
    pub fn start_migration(&self, target: &str, opts: &StartOptions) -> Result<Progress> {
        let tspec = VolumeSpec::parse(target)?;
        let _admin = self.admin.lock();
        self.ensure_no_migration()?;
        let served = self.served.lock().clone();
        if tspec == self.spec || tspec == served {
            return Err(Error::BadSpec {
                spec: target.to_string(),
                why: "the target is the LUN's own volume".into(),
            });
        }
        // The volume I/O goes to now; I/O keeps going to it meanwhile.
        let source = self.current.read().clone();
        let source_store = served.store_of(source.as_ref())?;
        if tspec.exists()? {
            return Err(Error::BadSpec {
                spec: tspec.to_string(),
                why: "the target already exists; ferry creates it, so nothing is overwritten"
                    .into(),
            });
        }
        let plan = MigrationPlan {
            source_spec: served.to_string(),
            target_spec: tspec.to_string(),
            source_info: served.identity(source.as_ref()),
            region_size: opts.region_size.unwrap_or(source.object_size()),
            rate_limit: opts.rate_limit,
            adaptive: opts.adaptive,
            impact_percent: opts.impact_percent,
            floor_rate: opts.floor_rate,
            priority: opts.priority,
            paused: opts.paused,
        };
        // Validate what can be checked before creating anything.
        if !ferry_core::index::region_size_ok(plan.region_size) {
            return Err(Error::BadRegionSize(plan.region_size));
        }
        served.precheck(source.as_ref(), &tspec)?;
        let (tvol, tstore) = tspec.create(source.size(), Some(source.as_ref()))?;
        let vol = match MigratingVolume::start(
            source.clone(),
            source_store.clone(),
            tvol,
            tstore.clone(),
            plan,
        ) {
            Ok(v) => v,
            Err(e) => {
                // Nothing refers to the fresh target yet; do not leave it.
                let _ = tstore.destroy_volume();
                return Err(e);
            }
        };
        // Most of what the source holds unflushed is flushed here, with I/O
        // still running, so the flush at the switch has little left to do.
        if let Err(e) = source.flush() {
            undo_start(vol, source_store.as_ref(), tstore.as_ref());
            return Err(e);
        }
        // The switch: I/O waits from here until the swap (in-flight I/O on
        // the old volume finishes first, so the copier misses no write).
        let mut slot = self.migration.lock();
        let mut current = self.current.write();
        let unchanged = Arc::ptr_eq(&current, &source)
            && *self.served.lock() == served
            && slot
                .as_ref()
                .is_none_or(|m| m.vol.state() == MigrationState::Aborted);
        if !unchanged {
            drop((current, slot));
            undo_start(vol, source_store.as_ref(), tstore.as_ref());
            return Err(Error::Busy(format!(
                "{}: the LUN's volume changed while the migration to {tspec} was being \
                 prepared; nothing was started",
                self.spec
            )));
        }
        // ORDERING: the writes the source took are durable before the
        // migrating volume serves, whose flushes flush the source only
        // for writes that reach it afterwards (see
        // MigratingVolume::activate).
        if let Err(e) = vol.activate() {
            drop((current, slot));
            undo_start(vol, source_store.as_ref(), tstore.as_ref());
            return Err(e);
        }
        let copier = if self.run_copier {
            match Copier::spawn(vol.clone(), copier_config()) {
                Ok(c) => Some(c),
                Err(e) => {
                    drop((current, slot));
                    undo_start(vol, source_store.as_ref(), tstore.as_ref());
                    return Err(e);
                }
            }
        } else {
            None
        };
        *current = vol.clone();
        drop(current);
        let progress = Progress::of(&vol, None);
        *slot = Some(Migration { vol, copier });
        Ok(progress)
    }

    /// Refuses while a migration (other than an aborted one) exists.
    fn ensure_no_migration(&self) -> Result<()> {
        match self.migration.lock().as_ref() {
            Some(m) if m.vol.state() != MigrationState::Aborted => Err(Error::SourceBusy {
                source_name: self.spec.to_string(),
                target: m.vol.record().target,
            }),
            _ => Ok(()),
        }
    }

    fn with_migration<T>(&self, f: impl FnOnce(&Migration) -> Result<T>) -> Result<T> {
        match self.migration.lock().as_ref() {
            Some(m) => f(m),
            None => Err(Error::NoMigration(self.spec.to_string())),
        }
    }

    /// Progress of the migration, if any.
    pub fn status(&self) -> Option<Progress> {
        let slot = self.migration.lock();
        self.progress_of(&slot)
    }

    fn progress_of(&self, slot: &Option<Migration>) -> Option<Progress> {
        let p = slot.as_ref().map(Migration::progress);
        self.last_status.lock().clone_from(&p);
        p
    }

    /// [`Lun::status`], waiting at most `wait` for a control operation
    /// that holds the migration (a commit, an abort's switch); after that
    /// the progress last reported. For `list`, which must always answer.
    pub fn status_within(&self, wait: Duration) -> Option<Progress> {
        match self.migration.try_lock_for(wait) {
            Some(slot) => self.progress_of(&slot),
            None => self.last_status.lock().clone(),
        }
    }

    /// Pauses or resumes the copier.
    pub fn set_paused(&self, paused: bool) -> Result<Progress> {
        self.with_migration(|m| {
            m.steer(
                |c| c.set_paused(paused),
                |v| v.update_record(|r| r.paused = paused),
            )?;
            Ok(Progress::of(&m.vol, None))
        })
    }

    /// Sets the copier rate limit (`None`: unlimited).
    pub fn set_rate_limit(&self, rate: Option<u64>) -> Result<Progress> {
        self.with_migration(|m| {
            m.steer(
                |c| c.set_rate_limit(rate),
                |v| v.update_record(|r| r.rate_limit = rate.filter(|&x| x > 0)),
            )?;
            Ok(Progress::of(&m.vol, None))
        })
    }

    /// Changes the copier's impact budget (percent), floor rate (bytes per
    /// second) or priority; `None` leaves one as it is, `Some(0)` restores
    /// its default.
    pub fn set_pace(&self, change: PaceChange) -> Result<Progress> {
        self.with_migration(|m| {
            m.steer(
                |c| c.set_pace(change),
                |v| v.update_record(|r| ferry_core::copier::set_pace(r, change)),
            )?;
            Ok(m.progress())
        })
    }

    /// Turns pacing by the impact budget on or off.
    pub fn set_adaptive(&self, on: bool) -> Result<Progress> {
        self.with_migration(|m| {
            m.steer(
                |c| c.set_adaptive(on),
                |v| v.update_record(|r| r.adaptive = on),
            )?;
            Ok(Progress::of(&m.vol, None))
        })
    }

    /// Starts an abort; the copier copies written regions back.
    pub fn abort(&self) -> Result<Progress> {
        self.with_migration(|m| {
            m.steer(|c| c.abort(), |v| v.abort())?;
            Ok(Progress::of(&m.vol, None))
        })
    }

    /// Commits a fully copied migration.
    pub fn commit(&self) -> Result<Progress> {
        self.commit_with(false)
    }

    /// Commits, and with `remove_source` deletes the source afterwards.
    pub fn commit_with(&self, remove_source: bool) -> Result<Progress> {
        let mut slot = self.migration.lock();
        let m = slot
            .as_ref()
            .ok_or_else(|| Error::NoMigration(self.spec.to_string()))?;
        // The reservations move to the target with the commit: saved there
        // first, and switched to only once the commit stands, with PR
        // commands held off in between so none is saved to the wrong side.
        self.move_reservations(m.vol.target_store(), || m.vol.commit())?;
        if remove_source {
            m.vol.remove_source()?;
        }
        let progress = Progress::of(&m.vol, None);
        *self.served.lock() = VolumeSpec::parse(&progress.target)?;
        // The copier has nothing left to do; the volume keeps routing to
        // the target until the LUN is next opened, which opens the target.
        if let Some(mut m) = slot.take() {
            if let Some(c) = m.copier.take() {
                c.stop();
            }
        }
        Ok(progress)
    }

    /// Drives the migration in this thread (no copier thread): to the end
    /// of the copy, or of an abort. `tick` sees progress after each step.
    pub fn run_here(&self, mut tick: impl FnMut(&Progress)) -> Result<Progress> {
        let vol = self.with_migration(|m| Ok(m.vol.clone()))?;
        let mut cursor = ferry_core::copier::CopyCursor::new(CopierConfig::default());
        let mut last = std::time::Instant::now();
        loop {
            if cursor.step(&vol)? == ferry_core::copier::Step::Finished {
                break;
            }
            if last.elapsed() >= Duration::from_millis(100) {
                tick(&Progress::of(&vol, None));
                last = std::time::Instant::now();
            }
        }
        let p = Progress::of(&vol, None);
        tick(&p);
        Ok(p)
    }

    /// Waits until the copier has nothing left to do, or `timeout`.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.status() {
                None => return true,
                Some(p)
                    if matches!(
                        p.state,
                        MigrationState::Copied
                            | MigrationState::Committed
                            | MigrationState::Aborted
                    ) =>
                {
                    return true
                }
                _ => {}
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Takes back a migration [`Lun::start_migration`] made but did not switch
/// to (nothing was ever routed through it): the source's marker first, so
/// the source no longer points anywhere, then the target with its record
/// and index. Failures are logged; a leftover target is refused by the
/// next start ("already exists") rather than overwritten.
fn undo_start(vol: Arc<MigratingVolume>, source_store: &dyn MetaStore, tstore: &dyn MetaStore) {
    let target = vol.record().target;
    if let Err(e) = source_store.remove_source_marker() {
        log::error!("undoing the start of a migration to {target}: {e}");
    }
    // The engine's handle on the target must be gone before it is removed.
    drop(vol);
    for (what, r) in [
        ("record", tstore.remove_record()),
        ("volume", tstore.destroy_volume()),
    ] {
        if let Err(e) = r {
            log::error!("undoing the start of a migration: removing the target's {what}: {e}");
        }
    }
}

impl Volume for Lun {
    fn name(&self) -> &str {
        "lun"
    }
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }
    fn object_size(&self) -> u64 {
        self.current.read().object_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.current.read().read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.current.read().write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.current.read().flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.current.read().write_zeroes(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.current.read().discard(offset, len)
    }
    fn allocated(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.current.read().allocated(offset, len)
    }
}

impl Drop for Lun {
    fn drop(&mut self) {
        if let Some(mut m) = self.migration.lock().take() {
            if let Some(c) = m.copier.take() {
                c.stop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    fn prout(action: u8, kind: u8, key: u64, sa_key: u64) -> ([u8; 10], [u8; 24]) {
        let mut p = [0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        ([0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0], p)
    }

    /// The fencing order: PREEMPT AND ABORT returns only after the
    /// preempted host's command in flight has finished, and that host's
    /// next command is refused.
    #[test]
    fn preempt_and_abort_waits_for_commands_in_flight_then_fences() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        ferry_file::FileVolume::create(&path, 1 << 20).unwrap();
        let lun = Lun::open(&format!("file:{}", path.display())).unwrap();
        let (a, b) = (Nexus::new("a,i,0x1", "t"), Nexus::new("b,i,0x2", "t"));
        let write = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        for (who, key) in [(&a, 1u64), (&b, 2u64)] {
            let (cdb, p) = prout(0, 0, 0, key);
            lun.pr_out(who, &cdb, &p).unwrap();
        }
        let (cdb, p) = prout(1, 1, 1, 0); // a: Write Exclusive
        lun.pr_out(&a, &cdb, &p).unwrap();
        let (started_tx, started_rx) = mpsc::channel();
        let finished = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                lun.pr_checked(&a, &write, || {
                    started_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(300));
                    Instant::now()
                })
            });
            started_rx.recv().unwrap();
            let (cdb, p) = prout(5, 1, 2, 1); // b preempts-and-aborts a
            lun.pr_out(&b, &cdb, &p).unwrap();
            let preempted = Instant::now();
            let wrote = writer.join().unwrap().unwrap();
            (wrote, preempted)
        });
        assert!(
            finished.0 <= finished.1,
            "the write ended after the preemption returned"
        );
        // a hears REGISTRATIONS PREEMPTED, then is refused.
        assert!(matches!(
            lun.pr_checked(&a, &write, || ()),
            Err(Refusal::Check(_))
        ));
        assert_eq!(lun.pr_checked(&a, &write, || ()), Err(Refusal::Conflict));
        assert_eq!(lun.pr_checked(&b, &write, || ()), Ok(()));
    }

    /// The impact budget and floor a migration is started with, or given
    /// later, reach the copier's status and survive a reopen.
    #[test]
    fn the_impact_budget_and_floor_are_kept_with_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        ferry_file::FileVolume::create(&path, 4 << 20).unwrap();
        let spec = format!("file:{}", path.display());
        let target = format!("file:{}", dir.path().join("w.img").display());
        let lun = Lun::open(&spec).unwrap();
        let opts = StartOptions {
            paused: true,
            impact_percent: Some(35),
            ..StartOptions::default()
        };
        let p = lun.start_migration(&target, &opts).unwrap();
        assert_eq!(
            (p.impact_budget, p.floor_rate),
            (35, ferry_core::pace::DEFAULT_FLOOR)
        );
        let p = lun
            .set_pace(PaceChange {
                floor_rate: Some(64 << 20),
                ..PaceChange::default()
            })
            .unwrap();
        assert_eq!((p.impact_budget, p.floor_rate), (35, 64 << 20));
        drop(lun);
        let lun = Lun::open(&spec).unwrap();
        let p = lun.status().unwrap();
        assert_eq!((p.impact_budget, p.floor_rate), (35, 64 << 20));
        // 0 puts each back to its default.
        let p = lun
            .set_pace(PaceChange {
                impact_percent: Some(0),
                floor_rate: Some(0),
                priority: None,
            })
            .unwrap();
        assert_eq!(
            (p.impact_budget, p.floor_rate),
            (20, ferry_core::pace::DEFAULT_FLOOR)
        );
    }
}
