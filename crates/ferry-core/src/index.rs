//! The migrated-region index: one bit per region saying "this region's data
//! lives on the target", one saying "written since the migration started"
//! (what an abort must copy back), and a durable copy of the first, the
//! *confirmed* bits.
//!
//! Memory: two bits per region (migrated, written), 64 KiB per TiB at the
//! default 4 MiB region size; the confirmed bitmap lives only in the store
//! and is rewritten from the migrated bits at each confirmation.
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
//! - a *confirmed* bit is set only by [`RegionIndex::confirm`], which the
//!   caller runs after making the target durable, with a snapshot of the
//!   migrated bits taken before that flush; then the index is synced. After
//!   power loss or a reboot (the store's epoch changed) a reopen trusts
//!   only the confirmed bits: regions migrated since the last flush go
//!   back to the source, which is allowed because nothing written to them
//!   since was flushed;
//! - a *written* bit is set before the write it covers is issued; after a
//!   reboot every confirmed region counts as written, so an abort copies
//!   back anything whose newest bytes may be on the target.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
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

/// The bitmaps with their persistence.
pub struct RegionIndex {
    region_shift: u32,
    regions: u64,
    volume_size: u64,
    epoch: [u8; 16],
    migrated: Box<[AtomicU64]>,
    written: Box<[AtomicU64]>,
    /// Migrated bits changed since the last confirmation.
    changed: AtomicBool,
    store: Arc<dyn MetaStore>,
    /// Serializes word writes to the store so a stale word never lands
    /// after a newer one. Taken once per region state change, not per I/O.
    persist: Mutex<()>,
    unsynced: AtomicBool,
}

fn words_for(regions: u64) -> usize {
    // A region count fits usize on 64-bit hosts (ferry targets only those).
    regions.div_ceil(64) as usize
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
        index.store.create_index(&bytes)?;
        Ok(index)
    }

    /// Loads an existing index and checks it matches the record. After a
    /// reboot (epoch changed) only confirmed regions stay migrated.
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
            for i in 0..words {
                let c = word_at(Bitmap::Confirmed, i);
                let (m, w) = if caches_lost {
                    // The page cache is gone: trust only what a flush
                    // confirmed, and treat all of it as possibly written.
                    (c, word_at(Bitmap::Written, i) | c)
                } else {
                    (word_at(Bitmap::Migrated, i), word_at(Bitmap::Written, i))
                };
                index.migrated[i].store(m, Ordering::Relaxed);
                index.written[i].store(w, Ordering::Relaxed);
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
            for i in 0..words {
                index.put(
                    Bitmap::Migrated,
                    i,
                    index.migrated[i].load(Ordering::Relaxed),
                )?;
                index.put(Bitmap::Written, i, index.written[i].load(Ordering::Relaxed))?;
            }
            index.store.write_index(0, &index.header())?;
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
            migrated: (0..words).map(|_| AtomicU64::new(0)).collect(),
            written: (0..words).map(|_| AtomicU64::new(0)).collect(),
            changed: AtomicBool::new(false),
            store,
            persist: Mutex::new(()),
            unsynced: AtomicBool::new(false),
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

    fn store_len(&self) -> u64 {
        HEADER_LEN + 24 * self.migrated.len() as u64
    }

    /// Writes one word of one bitmap to the store (caller holds `persist`).
    fn put(&self, map: Bitmap, word: usize, value: u64) -> Result<()> {
        let at = HEADER_LEN + 8 * (map as u64 * self.migrated.len() as u64 + word as u64);
        self.store.write_index(at, &value.to_le_bytes())?;
        self.unsynced.store(true, Ordering::Release);
        Ok(())
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

    /// Whether every region in `first..=last` is migrated and written.
    pub fn all_migrated_and_written(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|r| self.is_migrated(r) && self.is_written(r))
    }

    /// Number of migrated regions.
    pub fn migrated_count(&self) -> u64 {
        self.migrated
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Number of regions written since the migration started.
    pub fn written_count(&self) -> u64 {
        self.written
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
    /// before returning; [`RegionIndex::confirm`] makes them durable.
    pub fn mark_migrated(&self, regions: &[u64]) -> Result<()> {
        self.changed.store(true, Ordering::Release);
        self.update(regions, Bitmap::Migrated, |w, m| {
            self.migrated[w].fetch_or(m, Ordering::AcqRel) | m
        })
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
        self.update(regions, Bitmap::Migrated, |w, m| {
            self.migrated[w].fetch_and(!m, Ordering::AcqRel) & !m
        })?;
        {
            let _p = self.persist.lock();
            let mut words: Vec<usize> = regions.iter().map(|&r| Self::bit(r).0).collect();
            words.sort_unstable();
            words.dedup();
            for w in words {
                self.put(
                    Bitmap::Confirmed,
                    w,
                    self.migrated[w].load(Ordering::Acquire),
                )?;
            }
        }
        self.sync()
    }

    /// Sets the written bit of `r` if it was clear (the word reaches the
    /// store before returning). Returns whether it was newly set.
    pub fn mark_written(&self, r: u64) -> Result<bool> {
        if self.is_written(r) {
            return Ok(false);
        }
        self.update(&[r], Bitmap::Written, |w, m| {
            self.written[w].fetch_or(m, Ordering::AcqRel) | m
        })?;
        Ok(true)
    }

    /// Starts a confirmation: a copy of the migrated bits, taken before the
    /// caller flushes the target, so that [`RegionIndex::confirm`] confirms
    /// only regions that flush covered. `None` when nothing was marked
    /// since the last confirmation.
    pub fn snapshot(&self) -> Option<Vec<u64>> {
        // Clear the flag first: a region marked from here on sets it again
        // and is confirmed next time, even if it also makes this snapshot.
        if !self.changed.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(
            self.migrated
                .iter()
                .map(|w| w.load(Ordering::Acquire))
                .collect(),
        )
    }

    /// Confirms the regions of `snapshot` that are still migrated, then
    /// syncs the index (the written bits too). Caller contract: the target
    /// was flushed after `snapshot` was taken.
    pub fn confirm(&self, snapshot: Option<&[u64]>) -> Result<()> {
        if let Some(snapshot) = snapshot {
            let _p = self.persist.lock();
            for (w, snap) in snapshot.iter().enumerate() {
                let now = snap & self.migrated[w].load(Ordering::Acquire);
                if let Err(e) = self.put(Bitmap::Confirmed, w, now) {
                    self.changed.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        self.sync()
            .inspect_err(|_| self.changed.store(true, Ordering::Release))
    }

    /// Applies `apply` (which returns the word's new value) to the words of
    /// `regions` and writes the changed words to the store.
    fn update(
        &self,
        regions: &[u64],
        map: Bitmap,
        apply: impl Fn(usize, u64) -> u64,
    ) -> Result<()> {
        let _p = self.persist.lock();
        let mut words: Vec<usize> = Vec::with_capacity(regions.len());
        for &r in regions {
            let (w, m) = Self::bit(r);
            apply(w, m);
            words.push(w);
        }
        words.sort_unstable();
        words.dedup();
        let bitmap = match map {
            Bitmap::Written => &self.written,
            _ => &self.migrated,
        };
        for w in words {
            // Read the word after all updates so the stored value is the
            // newest; the persist lock keeps writers of one word in order.
            self.put(map, w, bitmap[w].load(Ordering::Acquire))?;
        }
        Ok(())
    }

    /// Makes every word written so far durable.
    pub fn sync(&self) -> Result<()> {
        if self.unsynced.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.store.sync_index() {
                self.unsynced.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }
}
