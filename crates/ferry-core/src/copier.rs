//! The background copier: walks regions in order, copies the ones not yet
//! on the target, and (during an abort) copies written regions back.
//!
//! [`CopyCursor::step`] is one unit of work and is what tests drive
//! directly; [`Copier`] runs it on a thread with pause / resume, a rate
//! limit, and pacing by the foreground's impact budget (`crate::pace`):
//! as fast as the foreground's measured slowdown allows, never slower than
//! the floor rate. Regions are marked in batches: one target flush covers
//! a whole batch (see the ordering rule in `migrate/`), and a batch is
//! closed at least every second so the index is committed at least that
//! often.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::migrate::{MigratingVolume, RegionCopy, INDEX_SYNC_INTERVAL};
use crate::pace::{Budget, Next, Pacer, Reading};
use crate::record::MigrationState;
use crate::share::{CopyShare, ShareMember, DEFAULT_PRIORITY};

/// Tuning of the copier.
#[derive(Debug, Clone)]
pub struct CopierConfig {
    /// Data bytes after which a batch is flushed and marked.
    pub batch_bytes: u64,
    /// Longest a copied region waits to be marked.
    pub batch_age: Duration,
    /// Regions copied at once (each on its own thread, in region order):
    /// the bound on objects in flight, which hides per-object latency on
    /// network backends such as RBD.
    pub parallel: usize,
    /// The copy budget this copier shares with the other copiers of the
    /// process and the node (`crate::share`).
    pub share: Arc<CopyShare>,
}

impl Default for CopierConfig {
    fn default() -> Self {
        CopierConfig {
            // 64 MiB: one flush per 16 default regions amortizes fdatasync
            // without holding much unmarked work at risk of a crash.
            batch_bytes: 64 << 20,
            batch_age: INDEX_SYNC_INTERVAL,
            // 8 objects in flight: an unserved 1 GiB RBD copy took
            // 2.7-2.8 s against 3.1-3.5 s with 4 (`rbd migration execute`:
            // 3.1-3.3 s; benches/rbd.sh part 3). A step holds one 1 MiB
            // buffer per region.
            parallel: 8,
            share: CopyShare::local(),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Handled one region; `bytes` of data moved.
    Worked { bytes: u64 },
    /// Nothing left to do in the current state.
    Finished,
}

/// The copier's position and its unmarked batch.
pub struct CopyCursor {
    config: CopierConfig,
    next: u64,
    batch: Vec<u64>,
    batch_bytes: u64,
    batch_started: Instant,
    batch_state: MigrationState,
    buf: Vec<u8>,
}

impl CopyCursor {
    pub fn new(config: CopierConfig) -> Self {
        CopyCursor {
            config,
            next: 0,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_started: Instant::now(),
            batch_state: MigrationState::Copying,
            buf: Vec::new(),
        }
    }

    /// Flushes and marks the pending batch.
    pub fn commit_batch(&mut self, vol: &MigratingVolume) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.batch_started = Instant::now();
        match self.batch_state {
            MigrationState::Copying => vol.commit_copied(&batch),
            MigrationState::Aborting => vol.commit_copied_back(&batch),
            _ => Ok(()),
        }
    }

    /// Does one unit of work.
    pub fn step(&mut self, vol: &MigratingVolume) -> Result<Step> {
        let state = vol.state();
        if state != self.batch_state {
            // The migration changed direction (abort): the pending batch
            // belongs to the old direction and is dropped unmarked, which
            // is always safe; the walk starts over.
            self.batch.clear();
            self.batch_bytes = 0;
            self.batch_state = state;
            self.next = 0;
        }
        let forward = match state {
            MigrationState::Copying => true,
            MigrationState::Aborting => false,
            _ => return Ok(Step::Finished),
        };
        let index = vol.index();
        // Forward: regions not migrated yet. Back: regions still migrated.
        // The next `parallel` of them, in order.
        let mut regions = Vec::with_capacity(self.config.parallel.max(1));
        let mut from = self.next;
        while regions.len() < self.config.parallel.max(1) {
            match index.next_with(from, !forward) {
                Some(r) => {
                    regions.push(r);
                    from = r + 1;
                }
                None => break,
            }
        }
        let Some(&last) = regions.last() else {
            self.commit_batch(vol)?;
            let done = if forward {
                vol.finish_copy()?
            } else {
                vol.finish_abort()?
            };
            if done {
                return Ok(Step::Finished);
            }
            // Regions marked by foreground writes after we passed them are
            // fine; any we still see unhandled are picked up from the top.
            self.next = 0;
            return Ok(Step::Worked { bytes: 0 });
        };
        let copy = |r: u64, buf: &mut Vec<u8>| {
            if forward {
                vol.copy_region(r, buf)
            } else {
                vol.copy_back_region(r, buf)
            }
        };
        let outcomes: Vec<Result<RegionCopy>> = if regions.len() == 1 {
            vec![copy(regions[0], &mut self.buf)]
        } else {
            // Each region takes its own region lock, so copies in parallel
            // never touch the same bytes; the batch (and so the marking)
            // stays in region order.
            std::thread::scope(|s| {
                let handles: Vec<_> = regions
                    .iter()
                    .map(|&r| s.spawn(move || copy(r, &mut Vec::new())))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::volume_io(
                                "copy",
                                "copier",
                                0,
                                std::io::Error::other("a copy thread panicked"),
                            ))
                        })
                    })
                    .collect()
            })
        };
        self.next = last + 1;
        let mut bytes = 0;
        let mut first_error = None;
        for (r, outcome) in regions.into_iter().zip(outcomes) {
            match outcome {
                Ok(RegionCopy::Skipped) => {}
                Ok(RegionCopy::Copied { bytes: n }) => {
                    if self.batch.is_empty() {
                        self.batch_started = Instant::now();
                    }
                    self.batch.push(r);
                    self.batch_bytes += n;
                    bytes += n;
                }
                // A failed region stays unmarked and is copied again on a
                // later pass; the first error is reported.
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if self.batch_bytes >= self.config.batch_bytes
            || self.batch.len() >= 4096
            || (!self.batch.is_empty() && self.batch_started.elapsed() >= self.config.batch_age)
        {
            self.commit_batch(vol)?;
        }
        Ok(Step::Worked { bytes })
    }

    /// Runs steps until finished (no pacing); for tools and tests.
    pub fn run_to_end(&mut self, vol: &MigratingVolume) -> Result<()> {
        while self.step(vol)? != Step::Finished {}
        Ok(())
    }
}

/// A snapshot of a migration's progress, as shown by `ferry migrate status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub id: String,
    pub source: String,
    pub target: String,
    pub state: MigrationState,
    pub paused: bool,
    pub rate_limit: Option<u64>,
    pub adaptive: bool,
    pub region_size: u64,
    pub regions_total: u64,
    pub regions_done: u64,
    pub regions_written: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Recent copy rate in bytes per second (0 when idle or unknown).
    pub rate_bps: u64,
    pub eta_secs: Option<u64>,
    pub last_error: Option<String>,
    /// The impact budget the copier keeps under load, percent of the
    /// foreground's latency (see `crate::pace`).
    #[serde(default)]
    pub impact_budget: u32,
    /// The foreground's slowdown the copier measured last, percent
    /// (`None`: no foreground load, or not measured yet).
    #[serde(default)]
    pub impact: Option<f64>,
    /// The floor copy rate, bytes per second.
    #[serde(default)]
    pub floor_rate: u64,
    /// What the migration did since this process opened it.
    #[serde(default)]
    pub counts: crate::migrate::MigrationCounts,
    /// The copier's weight in the node's copy budget (`crate::share`).
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// The node-wide copy bandwidth, bytes per second, if one is set.
    #[serde(default)]
    pub node_bandwidth: Option<u64>,
    /// This copier's share of it now, bytes per second.
    #[serde(default)]
    pub share_rate: Option<u64>,
}

fn default_priority() -> u32 {
    DEFAULT_PRIORITY
}

impl Progress {
    /// Progress of `vol` with the runtime figures of a copier, if one runs.
    pub fn of(vol: &MigratingVolume, control: Option<&CopierControl>) -> Self {
        let rec = vol.record();
        let index = vol.index();
        let bytes_done = index.migrated_bytes();
        let (rate, last_error, reading, allowance) = control
            .map(|c| {
                (
                    c.rate_bps.load(Ordering::Relaxed),
                    c.last_error.lock().clone(),
                    *c.reading.lock(),
                    c.member.allowance(),
                )
            })
            .unwrap_or((0, None, Reading::default(), None));
        let budget = budget_of(&rec);
        let priority = priority_of(&rec);
        let remaining = rec.size.saturating_sub(bytes_done);
        let eta_secs = match rec.state {
            MigrationState::Copying if rate > 0 => Some(remaining / rate),
            MigrationState::Copying => None,
            _ => Some(0),
        };
        Progress {
            id: rec.id,
            source: rec.source,
            target: rec.target,
            state: vol.state(),
            paused: rec.paused,
            rate_limit: rec.rate_limit,
            adaptive: rec.adaptive,
            region_size: rec.region_size,
            regions_total: index.regions(),
            regions_done: index.migrated_count(),
            regions_written: index.written_count(),
            bytes_total: rec.size,
            bytes_done,
            rate_bps: rate,
            eta_secs,
            last_error,
            impact_budget: (budget.impact * 100.0).round() as u32,
            impact: reading.impact.map(|i| (i * 1000.0).round() / 10.0),
            floor_rate: budget.floor,
            priority,
            node_bandwidth: allowance.map(|(limit, _)| limit),
            share_rate: allowance.map(|(_, share)| share),
            counts: vol.counts(),
        }
    }
}

/// Changes to a copier's pace settings: `None` leaves one as it is,
/// `Some(0)` puts it back to its default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaceChange {
    /// The impact budget, percent of the foreground's latency.
    #[serde(default, alias = "percent")]
    pub impact_percent: Option<u32>,
    /// The floor rate, bytes per second.
    #[serde(default, alias = "floor")]
    pub floor_rate: Option<u64>,
    /// The weight in the node's copy budget (`crate::share`).
    #[serde(default)]
    pub priority: Option<u32>,
}

/// Applies a [`PaceChange`] to a record (see [`Copier::set_pace`]).
pub fn set_pace(rec: &mut crate::MigrationRecord, change: PaceChange) {
    if let Some(p) = change.impact_percent {
        rec.impact_percent = (p > 0).then_some(p);
    }
    if let Some(f) = change.floor_rate {
        rec.floor_rate = (f > 0).then_some(f);
    }
    if let Some(p) = change.priority {
        rec.priority = (p > 0).then_some(p);
    }
}

/// The priority a record asks for.
fn priority_of(rec: &crate::MigrationRecord) -> u32 {
    rec.priority.unwrap_or(DEFAULT_PRIORITY)
}

/// The pacing budget a record asks for.
fn budget_of(rec: &crate::MigrationRecord) -> Budget {
    let d = Budget::default();
    Budget {
        impact: rec
            .impact_percent
            .map_or(d.impact, |p| f64::from(p) / 100.0),
        floor: rec.floor_rate.filter(|&f| f > 0).unwrap_or(d.floor),
    }
}

/// Shared controls and runtime figures of a running copier.
pub struct CopierControl {
    paused: AtomicBool,
    /// Bytes per second; 0 means unlimited.
    rate_limit: AtomicU64,
    adaptive: AtomicBool,
    stop: AtomicBool,
    rate_bps: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// What the copier is paced by, and what its pacer measured.
    budget: Mutex<Budget>,
    reading: Mutex<Reading>,
    /// This copier's place in the process's and node's copy budget.
    member: ShareMember,
    wake_lock: Mutex<u64>,
    wake: Condvar,
    /// Whether the thread is idle in a pause (or gone), so that
    /// [`Copier::set_paused`] returns only once copying has stopped.
    parked: Mutex<bool>,
    parked_changed: Condvar,
}

impl CopierControl {
    fn new(rec: &crate::MigrationRecord, member: ShareMember) -> Self {
        let (paused, rate_limit, adaptive, budget) =
            (rec.paused, rec.rate_limit, rec.adaptive, budget_of(rec));
        CopierControl {
            paused: AtomicBool::new(paused),
            rate_limit: AtomicU64::new(rate_limit.unwrap_or(0)),
            adaptive: AtomicBool::new(adaptive),
            stop: AtomicBool::new(false),
            rate_bps: AtomicU64::new(0),
            last_error: Mutex::new(None),
            budget: Mutex::new(budget),
            reading: Mutex::new(Reading::default()),
            member,
            wake_lock: Mutex::new(0),
            wake: Condvar::new(),
            parked: Mutex::new(false),
            parked_changed: Condvar::new(),
        }
    }

    fn set_parked(&self, parked: bool) {
        let mut p = self.parked.lock();
        if *p != parked {
            *p = parked;
            self.parked_changed.notify_all();
        }
    }

    fn poke(&self) {
        *self.wake_lock.lock() += 1;
        self.wake.notify_all();
    }

    /// Sleeps up to `d`, returning early when a control changes.
    fn nap(&self, d: Duration) {
        let mut g = self.wake_lock.lock();
        let seen = *g;
        let deadline = Instant::now() + d;
        while *g == seen && !self.stop.load(Ordering::Acquire) {
            if self.wake.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }
}

/// A copier thread bound to one migrating volume.
pub struct Copier {
    vol: Arc<MigratingVolume>,
    control: Arc<CopierControl>,
    thread: Option<JoinHandle<()>>,
}

impl Copier {
    /// Starts the copier with the controls stored in the record.
    pub fn spawn(vol: Arc<MigratingVolume>, config: CopierConfig) -> Result<Self> {
        let rec = vol.record();
        let member = config.share.join(priority_of(&rec));
        let control = Arc::new(CopierControl::new(&rec, member));
        let thread = {
            let vol = vol.clone();
            let control = control.clone();
            std::thread::Builder::new()
                .name("ferry-copier".into())
                .spawn(move || run(vol, control, config))
                .map_err(|e| Error::meta_io("spawn copier thread", "copier", e))?
        };
        Ok(Copier {
            vol,
            control,
            thread: Some(thread),
        })
    }

    pub fn volume(&self) -> &Arc<MigratingVolume> {
        &self.vol
    }

    pub fn progress(&self) -> Progress {
        Progress::of(&self.vol, Some(&self.control))
    }

    /// Pauses or resumes copying; persisted in the record. A pause returns
    /// once the thread has finished the step it was in and committed its
    /// batch (or after [`PAUSE_WAIT`], logged), so no region is copied
    /// after `ferry migrate pause` answers.
    pub fn set_paused(&self, paused: bool) -> Result<()> {
        self.vol.update_record(|r| r.paused = paused)?;
        self.control.paused.store(paused, Ordering::Release);
        self.control.poke();
        if paused && self.vol.state() == MigrationState::Copying {
            let deadline = Instant::now() + PAUSE_WAIT;
            let mut parked = self.control.parked.lock();
            while !*parked {
                if self
                    .control
                    .parked_changed
                    .wait_until(&mut parked, deadline)
                    .timed_out()
                {
                    log::warn!("copier: still finishing a step {PAUSE_WAIT:?} after the pause");
                    break;
                }
            }
        }
        Ok(())
    }

    /// Sets the rate limit in bytes per second (`None`: unlimited).
    pub fn set_rate_limit(&self, rate: Option<u64>) -> Result<()> {
        let rate = rate.filter(|&r| r > 0);
        self.vol.update_record(|r| r.rate_limit = rate)?;
        self.control
            .rate_limit
            .store(rate.unwrap_or(0), Ordering::Release);
        self.control.poke();
        Ok(())
    }

    /// Changes the impact budget, the floor rate or the priority.
    pub fn set_pace(&self, change: PaceChange) -> Result<()> {
        self.vol.update_record(|r| set_pace(r, change))?;
        let rec = self.vol.record();
        *self.control.budget.lock() = budget_of(&rec);
        self.control.member.set_priority(priority_of(&rec));
        self.control.poke();
        Ok(())
    }

    /// Turns pacing by the impact budget on or off.
    pub fn set_adaptive(&self, adaptive: bool) -> Result<()> {
        self.vol.update_record(|r| r.adaptive = adaptive)?;
        self.control.adaptive.store(adaptive, Ordering::Release);
        self.control.poke();
        Ok(())
    }

    /// Starts an abort and wakes the copier to copy back.
    pub fn abort(&self) -> Result<()> {
        self.vol.abort()?;
        self.control.poke();
        Ok(())
    }

    /// Waits until the migration reaches a state where the copier has
    /// nothing left (copied, committed, aborted) or `timeout` passes.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if matches!(
                self.vol.state(),
                MigrationState::Copied | MigrationState::Committed | MigrationState::Aborted
            ) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the thread, leaving the migration resumable.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.control.stop.store(true, Ordering::Release);
        self.control.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Longest a pause waits for the step in progress: one step is at most
/// `parallel` regions of at most 1 GiB, seconds even on a slow pool.
pub const PAUSE_WAIT: Duration = Duration::from_secs(30);

fn run(vol: Arc<MigratingVolume>, control: Arc<CopierControl>, config: CopierConfig) {
    let mut cursor = CopyCursor::new(config);
    let mut window_start = Instant::now();
    let mut window_bytes = 0u64;
    let mut paced_since = Instant::now();
    let mut paced_bytes = 0u64;
    let mut last_rate = 0u64;
    let mut pacer = Pacer::new(*control.budget.lock(), Instant::now(), vol.foreground());
    let mut error_delay = Duration::from_millis(100);
    while !control.stop.load(Ordering::Acquire) {
        if control.is_paused() && vol.state() == MigrationState::Copying {
            if let Err(e) = cursor.commit_batch(&vol) {
                log::warn!("copier: committing a batch before pausing failed: {e}");
            }
            control.rate_bps.store(0, Ordering::Relaxed);
            control.member.set_copying(false);
            control.set_parked(true);
            control.nap(Duration::from_millis(500));
            paced_since = Instant::now();
            paced_bytes = 0;
            continue;
        }
        control.set_parked(false);
        if let Some(d) = control.member.hold(Instant::now()) {
            // Another copier of this process is measuring its
            // foreground's baseline (`crate::share`).
            control.nap(d);
            pacer.waited(Instant::now(), vol.foreground());
            continue;
        }
        control.member.set_copying(true);
        let step_started = Instant::now();
        match cursor.step(&vol) {
            Ok(Step::Finished) => {
                control.rate_bps.store(0, Ordering::Relaxed);
                control.member.set_copying(false);
                control.nap(Duration::from_millis(200));
            }
            Ok(Step::Worked { bytes }) => {
                *control.last_error.lock() = None;
                error_delay = Duration::from_millis(100);
                window_bytes += bytes;
                paced_bytes += bytes;
                let age = window_start.elapsed();
                if age >= Duration::from_millis(500) {
                    let now_rate = (window_bytes as f64 / age.as_secs_f64()) as u64;
                    last_rate = if last_rate == 0 {
                        now_rate
                    } else {
                        (last_rate * 7 + now_rate * 3) / 10
                    };
                    control.rate_bps.store(last_rate, Ordering::Relaxed);
                    window_start = Instant::now();
                    window_bytes = 0;
                }
                // The copier's own limit or its share of the node's
                // copy bandwidth, whichever is lower.
                let own = Some(control.rate_limit.load(Ordering::Acquire)).filter(|&l| l > 0);
                let shared = control.member.allowance().map(|(_, share)| share);
                let limit = match (own, shared) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).unwrap_or(0),
                };
                if limit > 0 {
                    let due = Duration::from_secs_f64(paced_bytes as f64 / limit as f64);
                    let elapsed = paced_since.elapsed();
                    if due > elapsed {
                        control.nap(due - elapsed);
                    }
                    if paced_since.elapsed() > Duration::from_secs(2) {
                        // Keep the window short so a change of limit takes
                        // effect quickly and idle time is not banked.
                        paced_since = Instant::now();
                        paced_bytes = 0;
                    }
                }
                if control.adaptive.load(Ordering::Acquire) {
                    // Paced by what the foreground feels (crate::pace).
                    pacer.set_budget(*control.budget.lock());
                    let took = step_started.elapsed();
                    let next = pacer.stepped(Instant::now(), vol.foreground(), bytes, took);
                    *control.reading.lock() = pacer.reading();
                    match next {
                        Next::Copy => {}
                        Next::Pause(d) => {
                            control.nap(d);
                            pacer.waited(Instant::now(), vol.foreground());
                        }
                        Next::Probe(d) => {
                            control.member.probing_until(Instant::now() + d);
                            control.nap(d / 2);
                            pacer.settled(Instant::now(), vol.foreground());
                            control.nap(d - d / 2);
                            pacer.waited(Instant::now(), vol.foreground());
                        }
                    }
                }
            }
            Err(e) => {
                let fatal = matches!(e, Error::Fenced(_));
                log::error!("copier: {e}");
                *control.last_error.lock() = Some(e.to_string());
                if fatal {
                    break;
                }
                control.member.set_copying(false);
                control.nap(error_delay);
                error_delay = (error_delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    if let Err(e) = cursor.commit_batch(&vol) {
        log::warn!("copier: final batch not committed: {e}");
    }
    // Gone: nothing copies any more, so a pause has nothing to wait for.
    control.member.set_copying(false);
    control.set_parked(true);
}
