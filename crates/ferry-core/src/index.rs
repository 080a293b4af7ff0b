//! The migrated-region index: one bit per region saying "this region's data
//! lives on the target", one saying "written since the migration started"
//! (what an abort must copy back), and a durable copy of the first, the
//! *confirmed* bits.
//!
//! Memory: three bits per region (migrated, written, confirmed), 96 KiB
//! per TiB at the default 4 MiB region size, plus the numbers of the words
//! whose migrated bits are ahead of their confirmed bits.
//!
//! On-store layout (little endian):
//! `magic[8] | format u32 | header crc32 u32 | region_size u64 | regions u64 |
//!  volume_size u64 | epoch[16] | pad to 64 | migrated words | written words |
//!  confirmed words`.
//! Bits are written in place, one 64-bit word at a time. The header is
//! checksummed; the bitmaps cannot be (they change in place between syncs),
//! so a store of the wrong length or header is reported as corrupt.
//!
//! Durability (the rule the engine rests on, enforced here and in
//! `migrate.rs`):
//! - a *migrated* bit is set after the region's data has been written to
//!   the target, and reaches the store at once, without a sync: a process
//!   crash (kill -9) keeps both in the page cache, so a reopen in the same
//!   boot trusts the migrated bits;
//! - every bit change reaches the store *before* memory: a bit readers and
//!   writers can see in memory is always in the store too, so nothing is
//!   acknowledged on the strength of a bit a reopen would not find;
//! - a *confirmed* bit is set only by [`RegionIndex::confirm`], which the
//!   caller runs after making the target durable, with the pending words
//!   taken by [`RegionIndex::pending`] before that flush; then the index is
//!   synced. After power loss or a reboot (the store's epoch changed) a
//!   reopen trusts only the confirmed bits: regions migrated since the last
//!   flush go back to the source, which is allowed because nothing written
//!   to them since was flushed;
//! - a reopen in the same boot marks every word whose migrated bits are
//!   ahead of its confirmed bits as pending, so the first flush after a
//!   restart confirms what the previous process migrated (it used to find
//!   nothing to confirm, and a later power loss sent flushed writes back
//!   to the source);
//! - a *written* bit is set before the write it covers is issued; after a
//!   reboot every confirmed region counts as written, so an abort copies
//!   back anything whose newest bytes may be on the target;
//! - a failed store write or sync *poisons* the index: the store may now be
//!   behind memory, or a sync's dirty pages may be gone, so every later
//!   change fails (the volume above fences) and nothing is retried.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::faults;
use crate::store::MetaStore;

const MAGIC: &[u8; 8] = b"FERRYIDX";
const FORMAT: u32 = 2;
const HEADER_LEN: u64 = 64;
const EPOCH_AT: usize = 40;

/// Whether `size` is an acceptable region size: a power of two from 4 KiB
/// (the smallest block a front-end addresses) to 1 GiB.
pub fn region_size_ok(size: u64) -> bool {
    size.is_power_of_two() && (4096..=(1 << 30)).contains(&size)
}

/// Which bitmap of the store a word belongs to.
#[derive(Clone, Copy)]
enum Bitmap {
    Migrated = 0,
    Written = 1,
    Confirmed = 2,
}

/// Migrated words a confirmation covers: taken by [`RegionIndex::pending`]
/// before the caller flushes the target, written by
/// [`RegionIndex::confirm`] after it.
#[derive(Debug, Default)]
pub struct Pending {
    /// `(word, migrated bits at the time pending() took them)`.
    words: Vec<(usize, u64)>,
}

impl Pending {
    /// Whether nothing was migrated since the last confirmation.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Number of words to confirm.
    pub fn len(&self) -> usize {
        self.words.len()
    }
}

/// What the `persist` lock guards: the store's word order and the words
/// waiting for confirmation.
#[derive(Default)]
struct Persist {
    /// Words whose migrated bits may be ahead of their confirmed bits.
    unconfirmed: BTreeSet<usize>,
}

/// The bitmaps with their persistence.
pub struct RegionIndex {
    region_shift: u32,
    regions: u64,
    volume_size: u64,
    epoch: [u8; 16],
    migrated: Box<[AtomicU64]>,
    written: Box<[AtomicU64]>,
    /// The confirmed words as last written to the store.
    confirmed: Box<[AtomicU64]>,
    store: Arc<dyn MetaStore>,
    /// Serializes word writes to the store so a stale word never lands
    /// after a newer one, and so a bit reaches the store before memory.
    /// Taken once per region state change, not per I/O.
    persist: Mutex<Persist>,
    /// Serializes syncs: a caller returns only after a sync that began
    /// after its words were written has completed (the flag alone let a
    /// second caller return while the first one's fsync still ran).
    sync: Mutex<()>,
    unsynced: AtomicBool,
    /// Set by the first failed store write or sync; every later change
    /// fails, and the volume above fences. Read on every I/O, so a flag;
    /// the reason beside it is read only once it is set.
    poisoned: AtomicBool,
    poison_reason: Mutex<Option<String>>,
    /// Words this index wrote to its store, for monitoring.
    words_written: AtomicU64,
}

fn words_for(regions: u64) -> usize {
    // A region count fits usize on 64-bit hosts (ferry targets only those).
    regions.div_ceil(64) as usize
}

fn zeroed(words: usize) -> Box<[AtomicU64]> {
    (0..words).map(|_| AtomicU64::new(0)).collect()
}

impl RegionIndex {
    /// Creates a fresh, durable, all-clear index in `store`.
    pub fn create(store: Arc<dyn MetaStore>, volume_size: u64, region_size: u64) -> Result<Self> {
        if !region_size_ok(region_size) {
            return Err(Error::BadRegionSize(region_size));
        }
        let regions = volume_size.div_ceil(region_size);
        let index = Self::empty(store, volume_size, region_size, regions);
        let mut bytes = index.header();
        bytes.resize(index.store_len() as usize, 0); // fits: the index is in memory too
        index.store.fault_point(faults::START_CREATE_INDEX)?;
        index.store.create_index(&bytes)?;
        Ok(index)
    }

    /// Loads an existing index and checks it matches the record. After a
    /// reboot (epoch changed) only confirmed regions stay migrated; in the
    /// same boot, migrated regions not yet confirmed are pending.
    pub fn open(store: Arc<dyn MetaStore>, volume_size: u64, region_size: u64) -> Result<Self> {
        let what = store.describe();
        let corrupt = |why: String| Error::Corrupt {
            what: what.clone(),
            why,
        };
        let bytes = store
            .read_index()?
            .ok_or_else(|| corrupt("the region index is missing".into()))?;
        if !region_size_ok(region_size) {
            return Err(Error::BadRegionSize(region_size));
        }
        let regions = volume_size.div_ceil(region_size);
        let index = Self::empty(store, volume_size, region_size, regions);
        if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
            return Err(corrupt("the region index has no valid header".into()));
        }
        let mut stored_header = bytes[..HEADER_LEN as usize].to_vec();
        let stored_epoch: [u8; 16] = stored_header[EPOCH_AT..EPOCH_AT + 16]
            .try_into()
            .expect("16 bytes");
        // Compare everything but the epoch with what the record implies.
        stored_header[EPOCH_AT..EPOCH_AT + 16].copy_from_slice(&index.epoch);
        let crc_ok = {
            let mut h = bytes[..HEADER_LEN as usize].to_vec();
            let crc = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
            h[12..16].fill(0);
            crc32fast::hash(&h) == crc
        };
        let mut expect = index.header();
        expect[12..16].copy_from_slice(&stored_header[12..16]);
        if !crc_ok || stored_header != expect {
            return Err(corrupt(
                "the region index header does not match the record (size, region size or checksum)"
                    .into(),
            ));
        }
        if bytes.len() as u64 != index.store_len() {
            return Err(corrupt(format!(
                "the region index has {} bytes, expected {}",
                bytes.len(),
                index.store_len()
            )));
        }
        let words = index.migrated.len();
        let word_at = |map: Bitmap, i: usize| {
            let at = HEADER_LEN as usize + (map as usize * words + i) * 8;
            u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
        };
        let caches_lost = index.store.epoch().is_some_and(|now| now != stored_epoch);
        {
            let mut persist = index.persist.lock();
            for i in 0..words {
                let c = word_at(Bitmap::Confirmed, i);
                let (m, w) = if caches_lost {
                    // The page cache is gone: trust only what a flush
                    // confirmed, and treat all of it as possibly written.
                    (c, word_at(Bitmap::Written, i) | c)
                } else {
                    (word_at(Bitmap::Migrated, i), word_at(Bitmap::Written, i))
                };
                if m & !c != 0 {
                    // Same boot: migrated by a previous process, not yet
                    // confirmed. The next checkpoint must confirm it, or a
                    // power loss after that checkpoint would undo it.
                    persist.unconfirmed.insert(i);
                }
                index.migrated[i].store(m, Ordering::Relaxed);
                index.written[i].store(w, Ordering::Relaxed);
                index.confirmed[i].store(c, Ordering::Relaxed);
            }
        }
        // Bits past the last region would make counts wrong; a store with
        // them set was not written by us.
        let tail = regions % 64;
        if tail != 0 {
            let mask = !((1u64 << tail) - 1);
            if index.migrated[words - 1].load(Ordering::Relaxed) & mask != 0 {
                return Err(corrupt(
                    "the region index has bits past the last region".into(),
                ));
            }
        }
        if caches_lost || stored_epoch != index.epoch {
            log::info!(
                "{what}: {}; {} regions confirmed on the target",
                if caches_lost {
                    "reopened after a reboot, keeping only confirmed regions"
                } else {
                    "index epoch updated"
                },
                index.migrated_count()
            );
            // Write the adopted state and this boot's epoch, durably,
            // before anything relies on it.
            let _p = index.persist.lock();
            index.store.fault_point(faults::OPEN_ADOPT_INDEX)?;
            for i in 0..words {
                index.put(
                    Bitmap::Migrated,
                    i,
                    index.migrated[i].load(Ordering::Relaxed),
                )?;
                index.put(Bitmap::Written, i, index.written[i].load(Ordering::Relaxed))?;
            }
            index.store.write_index(0, &index.header())?;
            index.store.fault_point(faults::OPEN_SYNC_INDEX)?;
            index.store.sync_index()?;
            index.unsynced.store(false, Ordering::Release);
        } else {
            // Same boot. A process killed inside an abort's copy-back may
            // have cleared migrated bits without their confirmed bits: the
            // region's data is durable on the source (flushed before the
            // clear), and writes now go there alone, so the confirmed bit
            // must go too, or a power loss would route the region back to
            // the target's older bytes.
            let _p = index.persist.lock();
            for i in 0..words {
                let (m, c) = (
                    index.migrated[i].load(Ordering::Relaxed),
                    index.confirmed[i].load(Ordering::Relaxed),
                );
                if c & !m != 0 {
                    index.store.fault_point(faults::OPEN_REPAIR_CONFIRMED)?;
                    index.put(Bitmap::Confirmed, i, c & m)?;
                    index.confirmed[i].store(c & m, Ordering::Relaxed);
                }
            }
            // The dead process's index writes sit in the page cache with
            // no one left to sync them: this process's flags know nothing
            // of them, so sync them now, before anything relies on them.
            index.store.fault_point(faults::OPEN_SYNC_INDEX)?;
            index.store.sync_index()?;
            index.unsynced.store(false, Ordering::Release);
        }
        Ok(index)
    }

    fn empty(store: Arc<dyn MetaStore>, volume_size: u64, region_size: u64, regions: u64) -> Self {
        let words = words_for(regions);
        RegionIndex {
            region_shift: region_size.trailing_zeros(),
            regions,
            volume_size,
            epoch: store.epoch().unwrap_or([0; 16]),
            migrated: zeroed(words),
            written: zeroed(words),
            confirmed: zeroed(words),
            store,
            persist: Mutex::new(Persist::default()),
            sync: Mutex::new(()),
            unsynced: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(None),
            words_written: AtomicU64::new(0),
        }
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&FORMAT.to_le_bytes());
        h.extend_from_slice(&[0; 4]); // crc, filled below
        h.extend_from_slice(&self.region_size().to_le_bytes());
        h.extend_from_slice(&self.regions.to_le_bytes());
        h.extend_from_slice(&self.volume_size.to_le_bytes());
        h.extend_from_slice(&self.epoch);
        h.resize(HEADER_LEN as usize, 0);
        let crc = crc32fast::hash(&h);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The whole store as it would be for a volume of `volume_size`
    /// bytes (larger than this index's): this index's bits, the regions
    /// added not migrated, not written, not confirmed. Callers hold every
    /// change off meanwhile (the copier stopped, I/O quiesced). A short
    /// last region stays as it is: its added bytes read as zeroes on both
    /// legs, which grew together.
    pub fn grown(&self, volume_size: u64) -> Result<Vec<u8>> {
        let regions = volume_size.div_ceil(self.region_size());
        let bigger = Self::empty(self.store.clone(), volume_size, self.region_size(), regions);
        if volume_size < self.volume_size {
            return Err(Error::CannotResize {
                volume: self.store.describe(),
                why: "a region index only grows".into(),
            });
        }
        let mut bytes = bigger.header();
        let words = bigger.migrated.len();
        bytes.resize(bigger.store_len() as usize, 0); // fits: in memory too
        let _p = self.persist.lock();
        for (map, maps) in [
            (Bitmap::Migrated, &self.migrated),
            (Bitmap::Written, &self.written),
            (Bitmap::Confirmed, &self.confirmed),
        ] {
            for (i, w) in maps.iter().enumerate() {
                let at = HEADER_LEN as usize + (map as usize * words + i) * 8;
                bytes[at..at + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
        }
        Ok(bytes)
    }

    /// The volume size a stored index was made for, if the store holds
    /// one with a valid header (what a reopen compares with the record to
    /// find a grow cut short).
    pub fn stored_volume_size(store: &dyn MetaStore) -> Result<Option<u64>> {
        let Some(bytes) = store.read_index()? else {
            return Ok(None);
        };
        if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
            return Ok(None);
        }
        let mut h = bytes[..HEADER_LEN as usize].to_vec();
        let crc = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
        h[12..16].fill(0);
        if crc32fast::hash(&h) != crc {
            return Ok(None);
        }
        Ok(Some(u64::from_le_bytes(
            bytes[32..40].try_into().expect("8 bytes"),
        )))
    }

    fn store_len(&self) -> u64 {
        HEADER_LEN + 24 * self.migrated.len() as u64
    }

    /// The bytes a store holds for a volume of `volume_size` bytes in
    /// regions of `region_size`.
    pub fn store_len_for(volume_size: u64, region_size: u64) -> u64 {
        let regions = volume_size.div_ceil(region_size.max(1));
        HEADER_LEN.saturating_add(24u64.saturating_mul(regions.div_ceil(64)))
    }

    /// Why the index refuses changes, if a store write or sync failed.
    pub fn poisoned(&self) -> Option<String> {
        if !self.poisoned.load(Ordering::Acquire) {
            return None;
        }
        self.poison_reason.lock().clone()
    }

    fn check_poison(&self) -> Result<()> {
        match self.poisoned() {
            Some(why) => Err(Error::Fenced(why)),
            None => Ok(()),
        }
    }

    /// Records the first failure; the store may now disagree with memory.
    fn poison(&self, e: &Error) {
        let mut p = self.poison_reason.lock();
        if p.is_none() {
            log::error!(
                "{}: region index write failed, refusing further changes: {e}",
                self.store.describe()
            );
            *p = Some(format!("region index write failed: {e}"));
        }
        // The reason first, then the flag that makes readers look at it.
        self.poisoned.store(true, Ordering::Release);
    }

    /// Writes one word of one bitmap to the store (caller holds `persist`).
    /// A failure poisons the index.
    fn put(&self, map: Bitmap, word: usize, value: u64) -> Result<()> {
        let at = HEADER_LEN + 8 * (map as u64 * self.migrated.len() as u64 + word as u64);
        self.store
            .write_index(at, &value.to_le_bytes())
            .inspect_err(|e| self.poison(e))?;
        self.unsynced.store(true, Ordering::Release);
        self.words_written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Words of the bitmaps this index has written to its store (marks,
    /// confirmations, clears; not the whole index a create writes).
    pub fn words_written(&self) -> u64 {
        self.words_written.load(Ordering::Relaxed)
    }

    pub fn region_size(&self) -> u64 {
        1 << self.region_shift
    }

    /// Number of regions.
    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// The region holding byte `offset`.
    pub fn region_of(&self, offset: u64) -> u64 {
        offset >> self.region_shift
    }

    /// Byte range `[start, end)` of region `r` (the last one may be short).
    pub fn region_bounds(&self, r: u64) -> (u64, u64) {
        let start = r << self.region_shift;
        (start, (start + self.region_size()).min(self.volume_size))
    }

    fn bit(r: u64) -> (usize, u64) {
        // r < regions, so r / 64 < words, which fits usize.
        ((r / 64) as usize, 1u64 << (r % 64))
    }

    pub fn is_migrated(&self, r: u64) -> bool {
        let (w, m) = Self::bit(r);
        self.migrated[w].load(Ordering::Acquire) & m != 0
    }

    pub fn is_written(&self, r: u64) -> bool {
        let (w, m) = Self::bit(r);
        self.written[w].load(Ordering::Acquire) & m != 0
    }

    /// Whether region `r`'s migrated bit is confirmed (survives power loss).
    pub fn is_confirmed(&self, r: u64) -> bool {
        let (w, m) = Self::bit(r);
        self.confirmed[w].load(Ordering::Acquire) & m != 0
    }

    /// Whether every region in `first..=last` is migrated and written.
    pub fn all_migrated_and_written(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|r| self.is_migrated(r) && self.is_written(r))
    }

    /// Number of migrated regions.
    pub fn migrated_count(&self) -> u64 {
        Self::count(&self.migrated)
    }

    /// Number of regions written since the migration started.
    pub fn written_count(&self) -> u64 {
        Self::count(&self.written)
    }

    fn count(words: &[AtomicU64]) -> u64 {
        words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Bytes covered by migrated regions.
    pub fn migrated_bytes(&self) -> u64 {
        let full = self.migrated_count() * self.region_size();
        // The last region may be short; correct for it when it is counted.
        let last = self.regions.saturating_sub(1);
        if self.regions > 0 && self.is_migrated(last) {
            let (s, e) = self.region_bounds(last);
            full - (self.region_size() - (e - s))
        } else {
            full
        }
    }

    /// First region at or after `from` whose migrated bit equals `want`.
    pub fn next_with(&self, from: u64, want: bool) -> Option<u64> {
        (from..self.regions).find(|&r| self.is_migrated(r) == want)
    }

    /// Sets migrated bits. Caller contract: the regions' data has been
    /// written to the target. The words reach the store (not durably)
    /// before memory, and are pending until [`RegionIndex::confirm`].
    pub fn mark_migrated(&self, regions: &[u64]) -> Result<()> {
        let mut persist = self.persist.lock();
        let changed = self.update(&persist, regions, Bitmap::Migrated, |old, m| old | m)?;
        persist.unconfirmed.extend(changed);
        Ok(())
    }

    /// Clears migrated and confirmed bits (abort copy-back), then syncs.
    /// Caller contract: the regions' data is already durable on the
    /// source, and every migrated region was confirmed when the abort
    /// began (so the confirmed words can be rewritten from the migrated
    /// ones: during an abort nothing becomes migrated).
    ///
    /// Written bits are left set on purpose: a region that comes back
    /// migrated from an older confirmed state must still go through
    /// copy-back.
    pub fn clear_migrated(&self, regions: &[u64]) -> Result<()> {
        {
            let persist = self.persist.lock();
            let words = self.update(&persist, regions, Bitmap::Migrated, |old, m| old & !m)?;
            self.store.fault_point(faults::COPY_BACK_CLEAR_CONFIRMED)?;
            for w in words {
                let now = self.migrated[w].load(Ordering::Acquire);
                self.put(Bitmap::Confirmed, w, now)?;
                self.confirmed[w].store(now, Ordering::Release);
            }
        }
        self.store.fault_point(faults::COPY_BACK_SYNC_INDEX)?;
        self.sync()
    }

    /// Sets the written bit of `r` if it was clear (the word reaches the
    /// store before memory). Returns whether it was newly set.
    pub fn mark_written(&self, r: u64) -> Result<bool> {
        if self.is_written(r) {
            return Ok(false);
        }
        let persist = self.persist.lock();
        self.update(&persist, &[r], Bitmap::Written, |old, m| old | m)?;
        Ok(true)
    }

    /// Starts a confirmation: takes the words migrated since the last one,
    /// with their bits as they are now. The caller then flushes the target
    /// and passes the result to [`RegionIndex::confirm`], which confirms
    /// only what that flush covered. A region marked after this call stays
    /// pending for the next confirmation.
    pub fn pending(&self) -> Pending {
        let mut persist = self.persist.lock();
        let words = std::mem::take(&mut persist.unconfirmed);
        Pending {
            words: words
                .into_iter()
                .map(|w| (w, self.migrated[w].load(Ordering::Acquire)))
                .collect(),
        }
    }

    /// Writes the confirmed words of `pending` that changed, then syncs the
    /// index (the written bits too). Caller contract: the target was flushed
    /// after `pending` was taken. Only the changed words are written, so a
    /// checkpoint costs what was migrated since the last one, not the size
    /// of the volume.
    pub fn confirm(&self, pending: Pending) -> Result<()> {
        self.check_poison()?;
        if !pending.is_empty() {
            let _p = self.persist.lock();
            self.store.fault_point(faults::CHECKPOINT_WRITE_CONFIRMED)?;
            for (w, snap) in pending.words {
                // Bits only go 0 -> 1 outside an abort, and an abort confirms
                // everything before it starts clearing; the intersection
                // keeps a bit cleared since out anyway.
                let now = snap & self.migrated[w].load(Ordering::Acquire);
                if now != self.confirmed[w].load(Ordering::Acquire) {
                    self.put(Bitmap::Confirmed, w, now)?;
                    self.confirmed[w].store(now, Ordering::Release);
                }
            }
        }
        self.store.fault_point(faults::CHECKPOINT_SYNC_INDEX)?;
        self.sync()
    }

    /// Applies `apply(old, mask)` to the words of `regions`, writes each
    /// changed word to the store, then publishes it in memory. Returns the
    /// changed words. The caller holds `persist`, the only writer of these
    /// bitmaps, so the loaded word is current.
    fn update(
        &self,
        _persist: &Persist,
        regions: &[u64],
        map: Bitmap,
        apply: impl Fn(u64, u64) -> u64,
    ) -> Result<Vec<usize>> {
        self.check_poison()?;
        let bitmap = match map {
            Bitmap::Written => &self.written,
            _ => &self.migrated,
        };
        let mut masks: Vec<(usize, u64)> = regions.iter().map(|&r| Self::bit(r)).collect();
        masks.sort_unstable();
        let mut changed = Vec::new();
        let mut i = 0;
        while i < masks.len() {
            let w = masks[i].0;
            let mut mask = 0;
            while i < masks.len() && masks[i].0 == w {
                mask |= masks[i].1;
                i += 1;
            }
            let old = bitmap[w].load(Ordering::Acquire);
            let new = apply(old, mask);
            if new == old {
                continue;
            }
            // ORDERING: store first, then memory. A bit seen in memory
            // (by the lock-free fast path, say) is always in the store; if
            // the write fails, memory keeps the old word and the index is
            // poisoned.
            self.put(map, w, new)?;
            bitmap[w].store(new, Ordering::Release);
            changed.push(w);
        }
        Ok(changed)
    }

    /// Makes every word written so far durable. A failure poisons the
    /// index: the kernel may have dropped the dirty pages, so a later
    /// successful sync would prove nothing.
    pub fn sync(&self) -> Result<()> {
        let _s = self.sync.lock();
        self.check_poison()?;
        if self.unsynced.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.store.sync_index() {
                self.poison(&e);
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Faults, SimStore};

    fn index(regions: u64) -> (Arc<SimStore>, RegionIndex) {
        let store = SimStore::new("idx", Faults::new());
        let idx = RegionIndex::create(store.clone(), regions * 4096, 4096).unwrap();
        (store, idx)
    }

    #[test]
    fn confirm_writes_only_the_words_that_changed() {
        let (store, idx) = index(64 * 1000);
        idx.mark_migrated(&[5, 70]).unwrap();
        assert_eq!(
            idx.words_written(),
            store.index_writes(),
            "two migrated words"
        );
        let before = store.index_writes();
        idx.confirm(idx.pending()).unwrap();
        // Two confirmed words (regions 5 and 70 sit in words 0 and 1).
        assert_eq!(store.index_writes() - before, 2);
        assert_eq!(
            idx.words_written(),
            store.index_writes(),
            "and two confirmed"
        );
        let before = store.index_writes();
        idx.confirm(idx.pending()).unwrap();
        assert_eq!(store.index_writes(), before, "nothing new to confirm");
        assert!(idx.is_confirmed(5) && idx.is_confirmed(70));
    }

    #[test]
    fn reopen_in_the_same_boot_keeps_unconfirmed_regions_pending() {
        let (store, idx) = index(128);
        idx.mark_migrated(&[3]).unwrap();
        drop(idx);
        let idx = RegionIndex::open(store.clone(), 128 * 4096, 4096).unwrap();
        assert!(idx.is_migrated(3));
        assert!(!idx.is_confirmed(3));
        let pending = idx.pending();
        assert_eq!(
            pending.len(),
            1,
            "region 3 must be confirmed by the next checkpoint"
        );
        idx.confirm(pending).unwrap();
        assert!(idx.is_confirmed(3));
    }

    #[test]
    fn failed_word_write_leaves_memory_unchanged_and_poisons() {
        let faults = Faults::new();
        let store = SimStore::new("idx", faults.clone());
        let idx = RegionIndex::create(store.clone(), 128 * 4096, 4096).unwrap();
        faults.fail_once(0);
        assert!(idx.mark_migrated(&[7]).is_err());
        assert!(
            !idx.is_migrated(7),
            "memory must not run ahead of the store"
        );
        assert!(idx.poisoned().is_some());
        // Every later change fails, although the store works again.
        assert!(matches!(idx.mark_written(1), Err(Error::Fenced(_))));
        assert!(matches!(idx.sync(), Err(Error::Fenced(_))));
    }

    #[test]
    fn failed_sync_is_not_retried() {
        let faults = Faults::new();
        let store = SimStore::new("idx", faults.clone());
        let idx = RegionIndex::create(store.clone(), 128 * 4096, 4096).unwrap();
        idx.mark_migrated(&[1]).unwrap();
        faults.fail_once(0);
        assert!(idx.sync().is_err());
        assert!(matches!(idx.sync(), Err(Error::Fenced(_))));
    }
}
