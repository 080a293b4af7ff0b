//! The migrated-region index: one bit per region saying "this region's data
//! lives on the target", plus one bit per region saying "written since the
//! migration started" (what an abort must copy back to the source).
//!
//! Memory: two bits per region, so 64 KiB per TiB at the default 4 MiB
//! region size.
//!
//! On-store layout (little endian):
//! `magic[8] | format u32 | header crc32 u32 | region_size u64 | regions u64 |
//!  volume_size u64 | pad to 64 | migrated words | written words`.
//! Bits are written in place, one 64-bit word at a time. The header is
//! checksummed; the bitmaps cannot be (they change in place between syncs),
//! so a store of the wrong length or header is reported as corrupt.
//!
//! Durability contract (enforced by the callers in `migrate.rs`, restated
//! here because the index alone cannot check it): a *migrated* bit is handed
//! to [`RegionIndex::mark_migrated`] only after the region's data is durable
//! on the target. A *written* bit is set before the write it covers is
//! issued, so it may over-report but never under-report.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::store::MetaStore;

const MAGIC: &[u8; 8] = b"FERRYIDX";
const FORMAT: u32 = 1;
const HEADER_LEN: u64 = 64;

/// Whether `size` is an acceptable region size: a power of two from 4 KiB
/// (the smallest block a front-end addresses) to 1 GiB.
pub fn region_size_ok(size: u64) -> bool {
    size.is_power_of_two() && (4096..=(1 << 30)).contains(&size)
}

/// The two bitmaps with their persistence.
pub struct RegionIndex {
    region_shift: u32,
    regions: u64,
    volume_size: u64,
    migrated: Box<[AtomicU64]>,
    written: Box<[AtomicU64]>,
    store: Arc<dyn MetaStore>,
    /// Serializes word writes to the store so a stale word never lands
    /// after a newer one. Taken once per region state change, not per I/O.
    persist: Mutex<()>,
    unsynced: AtomicBool,
    last_sync: Mutex<Instant>,
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

    /// Loads an existing index and checks it matches the record.
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
        let header = index.header();
        if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
            return Err(corrupt("the region index has no valid header".into()));
        }
        if bytes[..HEADER_LEN as usize] != header[..] {
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
        let word_at = |i: usize| {
            let at = HEADER_LEN as usize + i * 8;
            u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
        };
        for i in 0..words {
            index.migrated[i].store(word_at(i), Ordering::Relaxed);
            index.written[i].store(word_at(words + i), Ordering::Relaxed);
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
        Ok(index)
    }

    fn empty(store: Arc<dyn MetaStore>, volume_size: u64, region_size: u64, regions: u64) -> Self {
        let words = words_for(regions);
        RegionIndex {
            region_shift: region_size.trailing_zeros(),
            regions,
            volume_size,
            migrated: (0..words).map(|_| AtomicU64::new(0)).collect(),
            written: (0..words).map(|_| AtomicU64::new(0)).collect(),
            store,
            persist: Mutex::new(()),
            unsynced: AtomicBool::new(false),
            last_sync: Mutex::new(Instant::now()),
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
        h.resize(HEADER_LEN as usize, 0);
        let crc = crc32fast::hash(&h);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn store_len(&self) -> u64 {
        HEADER_LEN + 16 * self.migrated.len() as u64
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

    /// Whether every region in `first..=last` is migrated.
    pub fn all_migrated(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|r| self.is_migrated(r))
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

    /// Sets migrated bits. Caller contract: the regions' data is already
    /// durable on the target. The words reach the store before returning.
    pub fn mark_migrated(&self, regions: &[u64]) -> Result<()> {
        self.update(
            regions,
            true,
            |w, m| self.migrated[w].fetch_or(m, Ordering::AcqRel),
            0,
        )
    }

    /// Clears migrated bits (abort copy-back). Caller contract: the
    /// regions' data is already durable on the source.
    ///
    /// Written bits are left set on purpose: if power fails before the
    /// cleared bit is durable, the region comes back migrated, and its
    /// written bit must still send it through copy-back, or the volume
    /// would show the target's bytes now and the source's after the abort.
    pub fn clear_migrated(&self, regions: &[u64]) -> Result<()> {
        self.update(
            regions,
            false,
            |w, m| self.migrated[w].fetch_and(!m, Ordering::AcqRel),
            0,
        )
    }

    /// Sets the written bit of `r` durably if it was clear. Returns whether
    /// it was newly set.
    ///
    /// The bit is synced before returning, so it is durable before any byte
    /// of the write it covers can be: a write that survives power loss is
    /// always one an abort copies back. This costs one index sync per
    /// region per migration.
    pub fn mark_written(&self, r: u64) -> Result<bool> {
        if self.is_written(r) {
            return Ok(false);
        }
        let words = self.migrated.len() as u64;
        self.update(
            &[r],
            true,
            |w, m| self.written[w].fetch_or(m, Ordering::AcqRel),
            words,
        )?;
        self.sync()?;
        Ok(true)
    }

    fn update(
        &self,
        regions: &[u64],
        set: bool,
        apply: impl Fn(usize, u64) -> u64,
        word_base: u64,
    ) -> Result<()> {
        let _p = self.persist.lock();
        let mut touched: Vec<usize> = Vec::new();
        for &r in regions {
            let (w, m) = Self::bit(r);
            let before = apply(w, m);
            if (before & m != 0) != set {
                touched.push(w);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        let bitmap = if word_base == 0 {
            &self.migrated
        } else {
            &self.written
        };
        for w in touched {
            // Read the word after all updates so the stored value is the
            // newest; the persist lock keeps writers of one word in order.
            let value = bitmap[w].load(Ordering::Acquire);
            let at = HEADER_LEN + 8 * (word_base + w as u64);
            self.store.write_index(at, &value.to_le_bytes())?;
            self.unsynced.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Makes every persisted bit durable.
    pub fn sync(&self) -> Result<()> {
        if self.unsynced.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.store.sync_index() {
                self.unsynced.store(true, Ordering::Release);
                return Err(e);
            }
        }
        *self.last_sync.lock() = Instant::now();
        Ok(())
    }

    /// Syncs if the last sync is older than `interval`.
    pub fn sync_if_due(&self, interval: Duration) -> Result<()> {
        if self.last_sync.lock().elapsed() >= interval {
            self.sync()?;
        }
        Ok(())
    }
}
