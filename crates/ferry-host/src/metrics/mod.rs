//! Monitoring: what each LUN's commands did, counted on the command path
//! and read out by the control path ([`crate::control::Request::Metrics`]),
//! then written in Prometheus' text format ([`text`]) and served over HTTP
//! ([`http`]) by `ferry serve` and the node's agent.
//!
//! Counting takes no lock: each LUN keeps [`SHARDS`] copies of its
//! counters, each on its own cache lines, and a thread bumps the copy its
//! thread-local number picks with relaxed atomic adds. Workers of a
//! front-end's pool thus never write the same cache line; a reading sums
//! the copies. A reading is not a point-in-time cut across counters (a
//! command may show in one and not yet another), which Prometheus' rate
//! functions do not mind.
pub mod http;
pub mod text;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ferry_pr::Refusal;
use ferry_scsi::cdb::op;
use serde::{Deserialize, Serialize};

/// Copies of the counters per LUN.
pub const SHARDS: usize = 8;

/// Upper bounds of the latency histogram's buckets, seconds (a `+Inf`
/// bucket follows): 50 µs to 10 s, about three per decade.
pub const LATENCY_BOUNDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Buckets of the histogram: one per bound, then `+Inf`.
const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// The same bounds in nanoseconds, for the command path.
const BOUNDS_NS: [u64; LATENCY_BOUNDS.len()] = {
    let mut out = [0u64; LATENCY_BOUNDS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = (LATENCY_BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// What kind of command a CDB is, as the metrics tell them apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Read,
    Write,
    Flush,
    Unmap,
    WriteSame,
    CompareAndWrite,
    /// Everything else that reaches the LUN (PR IN/OUT, GET LBA STATUS,
    /// VERIFY, ...).
    #[default]
    Other,
}

impl CommandKind {
    pub const ALL: [CommandKind; 7] = [
        CommandKind::Read,
        CommandKind::Write,
        CommandKind::Flush,
        CommandKind::Unmap,
        CommandKind::WriteSame,
        CommandKind::CompareAndWrite,
        CommandKind::Other,
    ];

    /// The kind of the command `cdb` starts.
    pub fn of(cdb: &[u8]) -> CommandKind {
        // By the opcode alone: the command path counts every command,
        // parsed or not.
        match cdb.first().copied() {
            Some(op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16) => CommandKind::Read,
            Some(
                op::WRITE_6
                | op::WRITE_10
                | op::WRITE_12
                | op::WRITE_16
                | op::WRITE_VERIFY_10
                | op::WRITE_VERIFY_12
                | op::WRITE_VERIFY_16
                | op::ORWRITE_16,
            ) => CommandKind::Write,
            Some(op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16) => CommandKind::Flush,
            Some(op::UNMAP) => CommandKind::Unmap,
            Some(op::WRITE_SAME_10 | op::WRITE_SAME_16) => CommandKind::WriteSame,
            Some(op::COMPARE_AND_WRITE) => CommandKind::CompareAndWrite,
            _ => CommandKind::Other,
        }
    }

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Read => "read",
            CommandKind::Write => "write",
            CommandKind::Flush => "flush",
            CommandKind::Unmap => "unmap",
            CommandKind::WriteSame => "write_same",
            CommandKind::CompareAndWrite => "compare_and_write",
            CommandKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The label value of a sense key.
pub fn sense_key_name(key: u8) -> &'static str {
    match key & 0x0f {
        0x0 => "no_sense",
        0x1 => "recovered_error",
        0x2 => "not_ready",
        0x3 => "medium_error",
        0x4 => "hardware_error",
        0x5 => "illegal_request",
        0x6 => "unit_attention",
        0x7 => "data_protect",
        0x8 => "blank_check",
        0x9 => "vendor_specific",
        0xa => "copy_aborted",
        0xb => "aborted_command",
        0xd => "volume_overflow",
        0xe => "miscompare",
        _ => "reserved",
    }
}

#[derive(Default)]
struct KindCounters {
    commands: AtomicU64,
    bytes: AtomicU64,
    /// One per bound, then `+Inf`; not cumulative (the text makes them so).
    buckets: [AtomicU64; BUCKETS],
    latency_ns: AtomicU64,
}

#[derive(Default)]
#[repr(align(128))]
struct Shard {
    kinds: [KindCounters; CommandKind::ALL.len()],
    sense: [AtomicU64; 16],
    conflicts: AtomicU64,
    /// Commands entered through this shard and running now: the shards
    /// sum to the LUN's queue depth.
    in_flight: AtomicU64,
}

/// The counters of one LUN.
#[derive(Default)]
pub struct LunMetrics {
    shards: Box<[Shard; SHARDS]>,
}

/// This thread's shard.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    MINE.with(|m| *m)
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// A command counted in the queue depth until dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LunMetrics {
    /// Counts a command as running until the guard drops (in the shard of
    /// the thread that entered, wherever it drops).
    pub fn enter(&self) -> InFlight<'_> {
        let c = &self.shards[shard_index()].in_flight;
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }

    /// Records one finished command: its kind, the data bytes it moved
    /// (data-out sent plus data-in returned), how long it took and how it
    /// ended.
    pub fn record(&self, kind: CommandKind, bytes: u64, took: Duration, outcome: Option<&Refusal>) {
        let shard = &self.shards[shard_index()];
        let k = &shard.kinds[kind.index()];
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        bump(&k.commands, 1);
        bump(&k.bytes, bytes);
        bump(&k.latency_ns, ns);
        let bucket = BOUNDS_NS.partition_point(|&b| b < ns);
        bump(&k.buckets[bucket], 1);
        match outcome {
            None => {}
            Some(Refusal::Conflict) => bump(&shard.conflicts, 1),
            Some(Refusal::Check(sense)) => bump(&shard.sense[usize::from(sense.key & 0x0f)], 1),
        }
    }

    /// Sums the shards.
    pub fn snapshot(&self) -> LunCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = LunCounts {
            in_flight: self.shards.iter().map(|s| get(&s.in_flight)).sum(),
            ..Default::default()
        };
        for kind in CommandKind::ALL {
            let mut c = KindCounts {
                kind,
                buckets: vec![0; BUCKETS],
                ..Default::default()
            };
            let mut ns = 0u64;
            for s in self.shards.iter() {
                let k = &s.kinds[kind.index()];
                c.commands += get(&k.commands);
                c.bytes += get(&k.bytes);
                ns = ns.wrapping_add(get(&k.latency_ns));
                for (sum, b) in c.buckets.iter_mut().zip(&k.buckets) {
                    *sum += get(b);
                }
            }
            c.latency_seconds = ns as f64 / 1e9;
            out.kinds.push(c);
        }
        let mut sense = [0u64; 16];
        for s in self.shards.iter() {
            out.reservation_conflicts += get(&s.conflicts);
            for (sum, c) in sense.iter_mut().zip(&s.sense) {
                *sum += get(c);
            }
        }
        out.errors = sense
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(key, &n)| (sense_key_name(key as u8).to_string(), n))
            .collect();
        out
    }
}

/// One command kind's counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KindCounts {
    pub kind: CommandKind,
    pub commands: u64,
    pub bytes: u64,
    /// Commands per latency bucket ([`LATENCY_BOUNDS`], then `+Inf`), not
    /// cumulative.
    pub buckets: Vec<u64>,
    /// The commands' total time, seconds.
    pub latency_seconds: f64,
}

/// A reading of one LUN's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LunCounts {
    pub kinds: Vec<KindCounts>,
    /// CHECK CONDITIONs by sense key name.
    pub errors: std::collections::BTreeMap<String, u64>,
    pub reservation_conflicts: u64,
    pub in_flight: u64,
}

/// What `metrics` reports of one served LUN.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LunReport {
    /// The spec the LUN was configured with.
    pub spec: String,
    /// The capacity initiators see, bytes.
    pub capacity_bytes: u64,
    pub counts: LunCounts,
    /// The migration running under it, if any.
    pub migration: Option<ferry_core::copier::Progress>,
}

impl crate::Lun {
    /// The LUN's counters and its migration's progress, for `metrics`.
    pub fn metrics_report(&self) -> LunReport {
        LunReport {
            spec: self.spec().to_string(),
            capacity_bytes: self.capacity_blocks() << self.block_shift.load(Ordering::Relaxed),
            counts: self.metrics.snapshot(),
            migration: self.status_within(crate::control::LIST_WAIT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_scsi::Sense;

    #[test]
    fn kinds_of_cdbs() {
        assert_eq!(CommandKind::of(&[0x28]), CommandKind::Read);
        assert_eq!(CommandKind::of(&[0x8a]), CommandKind::Write);
        assert_eq!(CommandKind::of(&[0x35]), CommandKind::Flush);
        assert_eq!(CommandKind::of(&[0x42]), CommandKind::Unmap);
        assert_eq!(CommandKind::of(&[0x93]), CommandKind::WriteSame);
        assert_eq!(CommandKind::of(&[0x89]), CommandKind::CompareAndWrite);
        assert_eq!(CommandKind::of(&[0x12]), CommandKind::Other);
        assert_eq!(CommandKind::of(&[]), CommandKind::Other);
    }

    #[test]
    fn records_sum_across_threads_into_buckets_and_sense_keys() {
        let m = std::sync::Arc::new(LunMetrics::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.record(CommandKind::Read, 4096, Duration::from_micros(300), None);
                    }
                    m.record(
                        CommandKind::Write,
                        512,
                        Duration::from_secs(20),
                        Some(&Refusal::Check(Sense::new(0x05, 0x2100))),
                    );
                    m.record(
                        CommandKind::Write,
                        0,
                        Duration::ZERO,
                        Some(&Refusal::Conflict),
                    );
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = m.snapshot();
        let read = &c.kinds[CommandKind::Read.index()];
        assert_eq!(read.commands, 4000);
        assert_eq!(read.bytes, 4000 * 4096);
        // 300 µs falls in the (250 µs, 500 µs] bucket.
        assert_eq!(read.buckets[3], 4000);
        assert!((read.latency_seconds - 1.2).abs() < 1e-6);
        let write = &c.kinds[CommandKind::Write.index()];
        assert_eq!(write.commands, 8);
        // 20 s is past the last bound; zero is in the first bucket.
        assert_eq!(write.buckets[16], 4);
        assert_eq!(write.buckets[0], 4);
        assert_eq!(c.errors.get("illegal_request"), Some(&4));
        assert_eq!(c.reservation_conflicts, 4);
        assert_eq!(c.in_flight, 0);
        let g = m.enter();
        assert_eq!(m.snapshot().in_flight, 1);
        drop(g);
        assert_eq!(m.snapshot().in_flight, 0);
    }
}
