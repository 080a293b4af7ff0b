//! What a migration did, counted for monitoring: reads routed to each
//! leg, writes sent to both legs, copy-ups, checkpoints and their time
//! (the index counts its own writes, `RegionIndex::words_written`).
//! Plain relaxed atomics bumped on the I/O path (no lock);
//! [`MigrationCounters::snapshot`] reads them for the control path. They
//! count from when this process opened the migration.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The live counters of one migration.
#[derive(Default)]
pub(crate) struct MigrationCounters {
    reads_source: AtomicU64,
    read_bytes_source: AtomicU64,
    reads_target: AtomicU64,
    read_bytes_target: AtomicU64,
    both_leg_writes: AtomicU64,
    copy_ups: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_nanos: AtomicU64,
}

/// A reading of a migration's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationCounts {
    /// Foreground reads (or pieces of them) served by the source leg.
    pub reads_source: u64,
    pub read_bytes_source: u64,
    /// Foreground reads (or pieces of them) served by the target leg.
    pub reads_target: u64,
    pub read_bytes_target: u64,
    /// Partial writes to a region not copied yet, sent to both legs.
    pub both_leg_writes: u64,
    /// Regions moved to the target by a foreground write (the source
    /// refused its half of a both-leg write).
    pub copy_ups: u64,
    /// Checkpoints completed (flush, then index confirmation).
    pub checkpoints: u64,
    /// Their total time, seconds.
    pub checkpoint_seconds: f64,
    /// Words of the migrated-region index written to its store (marks,
    /// confirmations, clears).
    pub index_writes: u64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

impl MigrationCounters {
    pub(crate) fn read(&self, to_target: bool, bytes: u64) {
        if to_target {
            bump(&self.reads_target, 1);
            bump(&self.read_bytes_target, bytes);
        } else {
            bump(&self.reads_source, 1);
            bump(&self.read_bytes_source, bytes);
        }
    }

    pub(crate) fn both_leg_write(&self) {
        bump(&self.both_leg_writes, 1);
    }

    pub(crate) fn copy_up(&self) {
        bump(&self.copy_ups, 1);
    }

    pub(crate) fn checkpoint(&self, took: Duration) {
        bump(&self.checkpoints, 1);
        bump(
            &self.checkpoint_nanos,
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// The counts, with the index's writes given by the caller.
    pub(crate) fn snapshot(&self, index_writes: u64) -> MigrationCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MigrationCounts {
            reads_source: get(&self.reads_source),
            read_bytes_source: get(&self.read_bytes_source),
            reads_target: get(&self.reads_target),
            read_bytes_target: get(&self.read_bytes_target),
            both_leg_writes: get(&self.both_leg_writes),
            copy_ups: get(&self.copy_ups),
            checkpoints: get(&self.checkpoints),
            checkpoint_seconds: get(&self.checkpoint_nanos) as f64 / 1e9,
            index_writes,
        }
    }
}
