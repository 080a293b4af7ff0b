//! In-memory volumes and metadata stores that simulate crashes, for tests.
//!
//! Each simulated object keeps two images: what a process sees (the page
//! cache) and what survives power loss (the disk), plus the writes issued
//! since the last flush. Two kinds of crash follow from that:
//! - a *process* crash (kill -9) keeps the page cache: everything written
//!   stays, durable or not;
//! - a *power* crash keeps the disk plus any subset of the unflushed writes,
//!   applied in order, which is what a kernel's writeback may have done.
//!
//! Every mutating call is a numbered *fault point* on a shared [`Faults`];
//! arming point `n` makes that call fail without effect and every later call
//! fail too, as if the process died there.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;
use rand::Rng;

use crate::error::{Error, Result};
use crate::migrate::{reopen_target, MigratingVolume, MigrationPlan, Opened, Reopened};
use crate::store::{MetaStore, SourceMarker};
use crate::volume::{check_range, Extent, Volume};

/// Shared fault-point counter and the point at which to "die".
///
/// Two kinds of point share one "crashed" state: *numbered* points (every
/// mutating call of a simulated volume or store) and *named* points (the
/// engine's [`crate::faults`] announcements, seen through
/// [`MetaStore::fault_point`]). Either kind can be armed to crash the
/// process there; numbered points can also fail once and carry on, the
/// way one failed write of a real device does.
pub struct Faults {
    counter: AtomicU64,
    armed: AtomicU64,
    fail_once: AtomicU64,
    crashed: AtomicBool,
    named: Mutex<Named>,
}

#[derive(Default)]
struct Named {
    /// Named points passed since the last arm, in order.
    trace: Vec<&'static str>,
    /// Crash at this named hit (counted from the last arm).
    armed: Option<usize>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            counter: AtomicU64::new(0),
            armed: AtomicU64::new(u64::MAX),
            fail_once: AtomicU64::new(u64::MAX),
            crashed: AtomicBool::new(false),
            named: Mutex::new(Named::default()),
        }
    }
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::new(Faults::default())
    }

    /// Makes fault point number `n` (counted from now) and all later ones fail.
    pub fn arm(&self, n: u64) {
        self.counter.store(0, Ordering::SeqCst);
        self.fail_once.store(u64::MAX, Ordering::SeqCst);
        self.armed.store(n, Ordering::SeqCst);
        self.crashed.store(false, Ordering::SeqCst);
        *self.named.lock() = Named::default();
    }

    /// Makes numbered point `n` (counted from now) fail without effect,
    /// and every other point work: one failed device call, not a crash.
    pub fn fail_once(&self, n: u64) {
        self.counter.store(0, Ordering::SeqCst);
        self.armed.store(u64::MAX, Ordering::SeqCst);
        self.fail_once.store(n, Ordering::SeqCst);
        self.crashed.store(false, Ordering::SeqCst);
    }

    /// Crashes at the `n`-th named point (counted from now, from 0): the
    /// operation it names and everything after it fail.
    pub fn arm_named(&self, n: usize) {
        self.arm(u64::MAX);
        self.named.lock().armed = Some(n);
    }

    /// Back to normal operation, as after a restart.
    pub fn disarm(&self) {
        self.armed.store(u64::MAX, Ordering::SeqCst);
        self.fail_once.store(u64::MAX, Ordering::SeqCst);
        self.crashed.store(false, Ordering::SeqCst);
        self.named.lock().armed = None;
    }

    /// Fault points passed since the last `arm`.
    pub fn points(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    /// Named points passed since the last arm, in order.
    pub fn named_trace(&self) -> Vec<&'static str> {
        self.named.lock().trace.clone()
    }

    /// Whether the armed point was reached.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn hit(&self, what: &str) -> Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(Error::Injected(format!("{what} after crash")));
        }
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        if n == self.armed.load(Ordering::SeqCst) {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(Error::Injected(format!("{what} (point {n})")));
        }
        if n == self.fail_once.load(Ordering::SeqCst) {
            return Err(Error::Injected(format!(
                "{what} (one failure at point {n})"
            )));
        }
        Ok(())
    }

    /// A named point of the engine ([`crate::faults`]).
    pub fn hit_named(&self, point: &'static str) -> Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(Error::Injected(format!("{point} after crash")));
        }
        let mut named = self.named.lock();
        let n = named.trace.len();
        named.trace.push(point);
        if named.armed == Some(n) {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(Error::Injected(format!(
                "crash at {point} (named point {n})"
            )));
        }
        Ok(())
    }
}

/// Bytes with a page-cache image, a disk image and the unflushed writes.
#[derive(Clone, Default)]
struct Image {
    cache: Vec<u8>,
    disk: Vec<u8>,
    pending: Vec<(usize, Vec<u8>)>,
}

impl Image {
    fn zeroed(len: usize) -> Self {
        Image {
            cache: vec![0; len],
            disk: vec![0; len],
            pending: Vec::new(),
        }
    }

    fn write(&mut self, at: usize, data: &[u8]) {
        if self.cache.len() < at + data.len() {
            self.cache.resize(at + data.len(), 0);
        }
        self.cache[at..at + data.len()].copy_from_slice(data);
        self.pending.push((at, data.to_vec()));
    }

    fn flush(&mut self) {
        self.disk = self.cache.clone();
        self.pending.clear();
    }

    fn power_crash(&mut self, rng: &mut impl Rng) {
        let mut img = self.disk.clone();
        for (at, data) in self.pending.drain(..) {
            if rng.random_bool(0.5) {
                if img.len() < at + data.len() {
                    img.resize(at + data.len(), 0);
                }
                img[at..at + data.len()].copy_from_slice(&data);
            }
        }
        self.cache = img.clone();
        self.disk = img;
    }
}

/// A simulated volume.
pub struct SimVolume {
    name: String,
    size: AtomicU64,
    object_size: u64,
    image: Mutex<Image>,
    faults: Arc<Faults>,
    /// Completed flushes, for tests of which commands flush.
    flushes: AtomicU64,
    /// A gate the next flush waits at (see [`SimVolume::hold_next_flush`]).
    flush_gate: Mutex<Option<Gate>>,
    /// A gate the next write waits at (see [`SimVolume::hold_next_write`]).
    write_gate: Mutex<Option<Gate>>,
    /// Whether the next write is refused as if the pool were full.
    refuse_next_write: AtomicBool,
}

/// The volume's side of a held call: it says it arrived, then waits.
struct Gate {
    arrived: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

impl Gate {
    /// Says it arrived, then waits for the release (or for the test to
    /// have gone: then there is nothing to wait for).
    fn pass(slot: &Mutex<Option<Gate>>) {
        let gate = slot.lock().take();
        if let Some(gate) = gate {
            let _ = gate.arrived.send(());
            let _ = gate.release.recv();
        }
    }

    fn set(slot: &Mutex<Option<Gate>>) -> Held {
        let (arrived_tx, arrived) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        *slot.lock() = Some(Gate {
            arrived: arrived_tx,
            release: release_rx,
        });
        Held { arrived, release }
    }
}

/// The test's side of a held call (see [`SimVolume::hold_next_flush`]).
pub struct Held {
    /// Receives once the call has arrived and waits.
    pub arrived: mpsc::Receiver<()>,
    /// Send (or drop) to let it go on.
    pub release: mpsc::Sender<()>,
}

impl SimVolume {
    pub fn new(name: &str, size: u64, object_size: u64, faults: Arc<Faults>) -> Arc<Self> {
        // Test volumes are small; the size fits usize.
        Arc::new(SimVolume {
            name: name.to_string(),
            size: AtomicU64::new(size),
            object_size,
            image: Mutex::new(Image::zeroed(size as usize)),
            faults,
            flushes: AtomicU64::new(0),
            flush_gate: Mutex::new(None),
            write_gate: Mutex::new(None),
            refuse_next_write: AtomicBool::new(false),
        })
    }

    /// Flushes completed so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Makes the next flush stop before it takes effect until the test
    /// releases it: a deterministic way to hold a checkpoint inside its
    /// data flush while other threads run.
    pub fn hold_next_flush(&self) -> Held {
        Gate::set(&self.flush_gate)
    }

    /// Makes the next write stop before it takes effect until the test
    /// releases it: a deterministic way to hold a write half way through
    /// its legs.
    pub fn hold_next_write(&self) -> Held {
        Gate::set(&self.write_gate)
    }

    /// Makes the next write fail with ENOSPC, changing nothing: a thin
    /// volume on a full pool.
    pub fn refuse_next_write(&self) {
        self.refuse_next_write.store(true, Ordering::SeqCst);
    }

    /// The page-cache image (what a reader would see now).
    pub fn contents(&self) -> Vec<u8> {
        self.image.lock().cache.clone()
    }

    /// Simulates power loss: unflushed writes survive at random.
    pub fn power_crash(&self, rng: &mut impl Rng) {
        self.image.lock().power_crash(rng);
    }

    /// A copy of this volume as power loss *now* would leave it, keeping
    /// none of the unflushed writes (the strictest case), with its own
    /// fault counter. The original is untouched: a test can take it at
    /// the instant a flush returns while other threads still run.
    pub fn fork_power_lost(&self) -> Arc<Self> {
        let img = self.image.lock();
        Arc::new(SimVolume {
            name: self.name.clone(),
            size: AtomicU64::new(self.size()),
            object_size: self.object_size,
            image: Mutex::new(Image {
                cache: img.disk.clone(),
                disk: img.disk.clone(),
                pending: Vec::new(),
            }),
            faults: Faults::new(),
            flushes: AtomicU64::new(0),
            flush_gate: Mutex::new(None),
            write_gate: Mutex::new(None),
            refuse_next_write: AtomicBool::new(false),
        })
    }

    /// Overwrites contents directly (test setup), durably.
    pub fn fill(&self, data: &[u8]) {
        let mut img = self.image.lock();
        img.cache[..data.len()].copy_from_slice(data);
        img.flush();
    }
}

impl Volume for SimVolume {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }
    fn object_size(&self) -> u64 {
        self.object_size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        let img = self.image.lock();
        let at = offset as usize;
        buf.copy_from_slice(&img.cache[at..at + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        Gate::pass(&self.write_gate);
        self.faults.hit(&format!("write {}@{offset}", self.name))?;
        if self.refuse_next_write.swap(false, Ordering::SeqCst) {
            let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "pool full");
            return Err(Error::volume_io("write", &self.name, offset, full));
        }
        self.image.lock().write(offset as usize, buf);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Gate::pass(&self.flush_gate);
        self.faults.hit(&format!("flush {}", self.name))?;
        self.image.lock().flush();
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    /// Durable at once, like ftruncate then fsync; unflushed writes
    /// past a smaller size are gone.
    fn resize(&self, size: u64) -> Result<()> {
        self.faults.hit(&format!("resize {}", self.name))?;
        let mut img = self.image.lock();
        // Test volumes are small; the size fits usize.
        let len = size as usize;
        img.cache.resize(len, 0);
        img.disk.resize(len, 0);
        img.pending.retain(|(at, data)| at + data.len() <= len);
        self.size.store(size, Ordering::SeqCst);
        Ok(())
    }

    fn allocated(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, len)?;
        // Report 4 KiB blocks holding any non-zero byte: everything else
        // reads as zeroes, which is all the contract asks.
        const BLOCK: u64 = 4096;
        let img = self.image.lock();
        let mut out: Vec<Extent> = Vec::new();
        let end = offset + len;
        let mut b = offset / BLOCK * BLOCK;
        while b < end {
            let s = b.max(offset);
            let e = (b + BLOCK).min(end);
            if img.cache[s as usize..e as usize].iter().any(|&x| x != 0) {
                match out.last_mut() {
                    Some(last) if last.end() == s => last.len += e - s,
                    _ => out.push(Extent {
                        offset: s,
                        len: e - s,
                    }),
                }
            }
            b += BLOCK;
        }
        Ok(out)
    }
}

/// A simulated metadata store.
pub struct SimStore {
    name: String,
    record: Mutex<Option<Vec<u8>>>,
    reservations: Mutex<Option<Vec<u8>>>,
    marker: Mutex<Option<SourceMarker>>,
    index: Mutex<Option<Image>>,
    /// Simulated boot id: a power crash is a reboot.
    epoch: Mutex<[u8; 16]>,
    destroyed: AtomicBool,
    index_writes: AtomicU64,
    faults: Arc<Faults>,
}

impl SimStore {
    pub fn new(name: &str, faults: Arc<Faults>) -> Arc<Self> {
        Arc::new(SimStore {
            name: name.to_string(),
            record: Mutex::new(None),
            reservations: Mutex::new(None),
            marker: Mutex::new(None),
            index: Mutex::new(None),
            epoch: Mutex::new([1; 16]),
            destroyed: AtomicBool::new(false),
            index_writes: AtomicU64::new(0),
            faults,
        })
    }

    /// `write_index` calls so far: what a checkpoint costs on a store
    /// where each is a synchronous round trip (RADOS).
    pub fn index_writes(&self) -> u64 {
        self.index_writes.load(Ordering::SeqCst)
    }

    /// Simulates power loss on the index, and the reboot after it.
    pub fn power_crash(&self, rng: &mut impl Rng) {
        if let Some(img) = self.index.lock().as_mut() {
            img.power_crash(rng);
        }
        rng.fill(&mut self.epoch.lock()[..]);
    }

    /// A copy of this store as power loss *now* would leave it (no
    /// unsynced index write kept, a new boot's epoch), with its own fault
    /// counter; see [`SimVolume::fork_power_lost`].
    pub fn fork_power_lost(&self) -> Arc<Self> {
        let index = self.index.lock().as_ref().map(|img| Image {
            cache: img.disk.clone(),
            disk: img.disk.clone(),
            pending: Vec::new(),
        });
        let mut epoch = *self.epoch.lock();
        epoch[0] = epoch[0].wrapping_add(1);
        Arc::new(SimStore {
            name: self.name.clone(),
            record: Mutex::new(self.record.lock().clone()),
            reservations: Mutex::new(self.reservations.lock().clone()),
            marker: Mutex::new(self.marker.lock().clone()),
            index: Mutex::new(index),
            epoch: Mutex::new(epoch),
            destroyed: AtomicBool::new(self.destroyed()),
            index_writes: AtomicU64::new(0),
            faults: Faults::new(),
        })
    }

    /// Whether `destroy_volume` was called.
    pub fn destroyed(&self) -> bool {
        self.destroyed.load(Ordering::SeqCst)
    }

    /// Raw record bytes, for corruption tests.
    pub fn raw_record(&self) -> Option<Vec<u8>> {
        self.record.lock().clone()
    }

    /// Replaces raw record bytes, for corruption tests.
    pub fn set_raw_record(&self, bytes: Option<Vec<u8>>) {
        *self.record.lock() = bytes;
    }

    /// Replaces raw index bytes, for corruption tests.
    pub fn set_raw_index(&self, bytes: Vec<u8>) {
        let mut img = Image::zeroed(0);
        img.write(0, &bytes);
        img.flush();
        *self.index.lock() = Some(img);
    }
}

impl MetaStore for SimStore {
    fn describe(&self) -> String {
        format!("sim:{}", self.name)
    }
    fn fault_point(&self, point: &'static str) -> Result<()> {
        self.faults.hit_named(point)
    }
    fn load_record(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.record.lock().clone())
    }
    fn store_record(&self, bytes: &[u8]) -> Result<()> {
        self.faults.hit(&format!("store record {}", self.name))?;
        *self.record.lock() = Some(bytes.to_vec());
        Ok(())
    }
    fn load_reservations(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.reservations.lock().clone())
    }
    fn store_reservations(&self, bytes: &[u8]) -> Result<()> {
        self.faults
            .hit(&format!("store reservations {}", self.name))?;
        *self.reservations.lock() = Some(bytes.to_vec());
        Ok(())
    }
    fn read_index(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.index.lock().as_ref().map(|i| i.cache.clone()))
    }
    fn create_index(&self, bytes: &[u8]) -> Result<()> {
        self.faults.hit(&format!("create index {}", self.name))?;
        let mut img = Image::zeroed(0);
        img.write(0, bytes);
        img.flush();
        *self.index.lock() = Some(img);
        Ok(())
    }
    fn write_index(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.faults
            .hit(&format!("write index {}@{offset}", self.name))?;
        self.index_writes.fetch_add(1, Ordering::SeqCst);
        let mut idx = self.index.lock();
        let img = idx
            .as_mut()
            .ok_or_else(|| Error::NoMigration(self.name.clone()))?;
        img.write(offset as usize, bytes);
        Ok(())
    }
    fn sync_index(&self) -> Result<()> {
        self.faults.hit(&format!("sync index {}", self.name))?;
        if let Some(img) = self.index.lock().as_mut() {
            img.flush();
        }
        Ok(())
    }
    fn epoch(&self) -> Option<[u8; 16]> {
        Some(*self.epoch.lock())
    }
    fn load_source_marker(&self) -> Result<Option<SourceMarker>> {
        Ok(self.marker.lock().clone())
    }
    fn store_source_marker(&self, marker: &SourceMarker) -> Result<()> {
        self.faults.hit(&format!("store marker {}", self.name))?;
        *self.marker.lock() = Some(marker.clone());
        Ok(())
    }
    fn remove_source_marker(&self) -> Result<()> {
        self.faults.hit(&format!("remove marker {}", self.name))?;
        *self.marker.lock() = None;
        Ok(())
    }
    fn remove_index(&self) -> Result<()> {
        self.faults.hit(&format!("remove index {}", self.name))?;
        *self.index.lock() = None;
        Ok(())
    }
    fn remove_record(&self) -> Result<()> {
        *self.record.lock() = None;
        Ok(())
    }
    fn destroy_volume(&self) -> Result<()> {
        self.faults.hit(&format!("destroy {}", self.name))?;
        self.destroyed.store(true, Ordering::SeqCst);
        *self.index.lock() = None;
        *self.record.lock() = None;
        Ok(())
    }
}

/// The whole of `vol`, as an initiator would read it back (test images
/// are small; a failed read fails the test).
pub fn read_all(vol: &dyn Volume) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size() as usize];
    vol.read_at(&mut buf, 0).expect("reading the whole volume");
    buf
}

/// Convenience: a map of labelled values for `source_info` in tests.
pub fn info(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A migration's world: a source filled with `initial`, an empty target of
/// the same size, their stores, and one fault counter for all four.
pub struct SimWorld {
    pub faults: Arc<Faults>,
    pub source: Arc<SimVolume>,
    pub source_store: Arc<SimStore>,
    pub target: Arc<SimVolume>,
    pub target_store: Arc<SimStore>,
    region_size: u64,
}

impl SimWorld {
    /// Volumes of `initial.len()` bytes with `region_size` objects.
    pub fn new(initial: &[u8], region_size: u64) -> Self {
        let faults = Faults::new();
        let size = initial.len() as u64;
        let source = SimVolume::new("src", size, region_size, faults.clone());
        source.fill(initial);
        SimWorld {
            source_store: SimStore::new("src", faults.clone()),
            target: SimVolume::new("dst", size, region_size, faults.clone()),
            target_store: SimStore::new("dst", faults.clone()),
            source,
            faults,
            region_size,
        }
    }

    /// The plan tests start with: the world's region size, no rate limit,
    /// not adaptive, not paused.
    pub fn plan(&self) -> MigrationPlan {
        MigrationPlan {
            source_spec: "sim:src".into(),
            target_spec: "sim:dst".into(),
            source_info: info(&[("pool", "a")]),
            region_size: self.region_size,
            rate_limit: None,
            adaptive: false,
            impact_percent: None,
            floor_rate: None,
            priority: None,
            paused: false,
        }
    }

    /// Starts the migration with `plan`.
    pub fn start(&self, plan: MigrationPlan) -> Result<Arc<MigratingVolume>> {
        MigratingVolume::start(
            self.source.clone(),
            self.source_store.clone(),
            self.target.clone(),
            self.target_store.clone(),
            plan,
        )
    }

    /// What a restarted host opens by the volume's name: the migration,
    /// what it left behind, or (no record, or the target discarded) the
    /// source, as the host finds it by the marker.
    pub fn reopen(&self) -> Result<Reopened> {
        if self.target_store.destroyed() || self.target_store.load_record()?.is_none() {
            return Ok(Reopened::Plain(self.source.clone()));
        }
        let src: Opened = (self.source.clone(), self.source_store.clone());
        reopen_target((self.target.clone(), self.target_store.clone()), |_| {
            Ok(src)
        })
    }

    /// Power loss on all four objects, and the reboot after it.
    pub fn power_loss(&self, rng: &mut impl Rng) {
        self.source.power_crash(rng);
        self.target.power_crash(rng);
        self.source_store.power_crash(rng);
        self.target_store.power_crash(rng);
    }
}

/// Checks that `got[off..off+new.len()]` is, in each piece of one
/// `region`, either all `old` (what was there) or all `new` (what a write
/// cut short meant to leave): a write is never half applied within a
/// region.
pub fn pieces_all_or_nothing(
    got: &[u8],
    old: &[u8],
    off: u64,
    new: &[u8],
    region: u64,
) -> std::result::Result<(), String> {
    let end = off + new.len() as u64;
    let mut at = off;
    while at < end {
        let piece_end = ((at / region + 1) * region).min(end);
        // Test images are small; offsets fit usize.
        let (s, e) = (at as usize, piece_end as usize);
        let n = (at - off) as usize;
        if got[s..e] != old[s..e] && got[s..e] != new[n..n + e - s] {
            return Err(format!(
                "bytes {s}..{e} of a cut-short write are neither all old nor all new"
            ));
        }
        at = piece_end;
    }
    Ok(())
}

/// What an initiator may expect to read back, for crash tests: `acked`
/// is what every acknowledged write left, `durable` what the last
/// acknowledged flush covered, `since_flush` the writes acknowledged after
/// it.
#[derive(Clone)]
pub struct ReferenceDisk {
    pub acked: Vec<u8>,
    pub durable: Vec<u8>,
    pub since_flush: Vec<(u64, Vec<u8>)>,
    region: u64,
}

impl ReferenceDisk {
    /// A disk holding `data`, durably, migrated in `region`-byte regions
    /// (the unit a cut-short write lands in all or nothing).
    pub fn new(data: Vec<u8>, region: u64) -> Self {
        ReferenceDisk {
            acked: data.clone(),
            durable: data,
            since_flush: Vec::new(),
            region,
        }
    }

    /// An acknowledged write (or zeroing) of `bytes` at `off`.
    pub fn wrote(&mut self, off: u64, bytes: Vec<u8>) {
        // Test images are small; offsets fit usize.
        self.acked[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
        self.since_flush.push((off, bytes));
    }

    /// An acknowledged flush.
    pub fn flushed(&mut self) {
        self.durable = self.acked.clone();
        self.since_flush.clear();
    }

    /// After a process crash: `got` must be `acked`, but for the write the
    /// crash cut short (`cut`), each of whose region pieces is all old or
    /// all new. What landed of it then counts as written, unflushed.
    pub fn check_process_crash(
        &mut self,
        got: &[u8],
        cut: Option<(u64, Vec<u8>)>,
    ) -> std::result::Result<(), String> {
        if let Some((off, new)) = &cut {
            pieces_all_or_nothing(got, &self.acked, *off, new, self.region)?;
            let landed = got[*off as usize..*off as usize + new.len()].to_vec();
            self.wrote(*off, landed);
        }
        match (0..got.len()).find(|&i| got[i] != self.acked[i]) {
            Some(i) => Err(format!(
                "byte {i} (region {}) is {} after a process crash, acknowledged {}",
                i as u64 / self.region,
                got[i],
                self.acked[i]
            )),
            None => Ok(()),
        }
    }

    /// After power loss: every byte is `durable`'s or one an unflushed (or
    /// cut-short) write wrote. Then what survived is the new truth, and
    /// durable.
    pub fn check_power_loss(
        &mut self,
        got: &[u8],
        cut: Option<(u64, Vec<u8>)>,
    ) -> std::result::Result<(), String> {
        let mut candidates = self.since_flush.clone();
        candidates.extend(cut);
        for i in 0..got.len() {
            let ok = got[i] == self.durable[i]
                || candidates.iter().any(|(off, data)| {
                    let o = *off as usize;
                    i >= o && i < o + data.len() && got[i] == data[i - o]
                });
            if !ok {
                return Err(format!(
                    "byte {i} (region {}) is {} after power loss; flushed {}",
                    i as u64 / self.region,
                    got[i],
                    self.durable[i]
                ));
            }
        }
        self.acked = got.to_vec();
        self.flushed();
        Ok(())
    }
}
