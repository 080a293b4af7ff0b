//! The verifying load generator (`ferry-iscsi load`) and its crash check
//! (`load --verify-log`).
//!
//! [`run_load`] keeps `qd` READ(16)/WRITE(16) in flight on one session with
//! libiscsi's async API, for a fixed time. I/Os are `io_size` bytes,
//! aligned to `io_size`, so they map onto *units*; at most one I/O per unit
//! is in flight, which makes every check exact:
//!
//! - a write of unit `u` carries blocks [`pattern::fill_stamped`] from
//!   `(seed, seq, lba)`, and once acknowledged it becomes `u`'s expected
//!   contents and is appended to the log as `W <seq> <lba> <blocks>`;
//! - a read of `u` must return the newest acknowledged write of `u`; units
//!   this run never wrote (or whose write failed) are not checked.
//!
//! The log is flushed to the OS before any new command is submitted, so
//! even if this process or the target is killed, each unit's last *logged*
//! write is either its last acknowledged one or older than an unlogged one
//! that was never followed by another. [`verify_log`] then re-reads every
//! logged block and accepts exactly: the last logged write, or a newer
//! stamped write of the same run (acknowledged-but-unlogged or never
//! acknowledged: it may land or not). Anything else, older data included,
//! is a lost acknowledged write.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::pattern::{self, Rng};
use crate::region::Region;
use crate::session::Session;

/// What [`run_load`] does.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// How long to keep submitting.
    pub duration: Duration,
    /// Commands kept in flight.
    pub qd: usize,
    /// Bytes per I/O, a multiple of the LUN's block size.
    pub io_size: usize,
    /// Percentage of reads (0..=100).
    pub read_pct: u8,
    /// Random units; otherwise sequential, wrapping.
    pub random: bool,
    pub seed: u64,
    /// Writes with FUA.
    pub fua: bool,
    /// The part of the LUN to use.
    pub offset_blocks: u64,
    pub blocks: Option<u64>,
    /// Where acknowledged writes are logged (truncated first).
    pub log: Option<PathBuf>,
    /// How long to wait for commands still in flight after `duration`.
    pub drain_timeout: Duration,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            duration: Duration::from_secs(10),
            qd: 1,
            io_size: 4096,
            read_pct: 50,
            random: false,
            seed: 1,
            fua: false,
            offset_blocks: 0,
            blocks: None,
            log: None,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// What [`run_load`] saw. Serialized as the command's JSON summary.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    pub reads: u64,
    pub writes: u64,
    /// Commands that failed, or were still in flight when the run gave up.
    pub errors: u64,
    /// Reads that did not return the newest acknowledged write.
    pub mismatches: u64,
    /// Reads of units this run had not written (not checked).
    pub unchecked_reads: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mib_per_s: f64,
    pub lat_p50_us: u64,
    pub lat_p99_us: u64,
    pub lat_max_us: u64,
    pub qd: usize,
    pub io_size: usize,
    pub read_pct: u8,
    pub random: bool,
    pub seed: u64,
    pub first_error: Option<String>,
    pub first_mismatch_lba: Option<u64>,
}

impl LoadSummary {
    /// No errors and no mismatches.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.mismatches == 0
    }
}

/// One command of the run, by tag.
struct Op {
    unit: u64,
    write: bool,
    started: Instant,
}

/// The acknowledged-write log.
struct Log {
    path: PathBuf,
    out: BufWriter<File>,
    dirty: bool,
}

impl Log {
    fn create(path: &Path, seed: u64, block_size: u32) -> Result<Log> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut out = BufWriter::new(File::create(path).map_err(io)?);
        writeln!(
            out,
            "# ferry-iscsi load seed={seed} block_size={block_size}"
        )
        .map_err(io)?;
        out.flush().map_err(io)?;
        Ok(Log {
            path: path.to_path_buf(),
            out,
            dirty: false,
        })
    }

    fn write(&mut self, seq: u64, lba: u64, blocks: u64) -> Result<()> {
        self.dirty = true;
        writeln!(self.out, "W {seq} {lba} {blocks}").map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Hands buffered lines to the OS (enough to survive this process
    /// being killed; the machine crashing is not what this log is for).
    fn flush(&mut self) -> Result<()> {
        if std::mem::take(&mut self.dirty) {
            self.out.flush().map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Counters of a run in progress.
struct Tally {
    reads: u64,
    writes: u64,
    errors: u64,
    mismatches: u64,
    unchecked_reads: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
    first_mismatch_lba: Option<u64>,
}

impl Tally {
    fn error(&mut self, n: u64, message: impl FnOnce() -> String) {
        self.errors += n;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }
}

/// Runs the load described by `cfg` on `s`. Errors are counted in the
/// summary (the run stops at the first connection failure); `Err` is only
/// for bad arguments and log file trouble.
pub fn run_load(s: &mut Session, cfg: &LoadConfig) -> Result<LoadSummary> {
    let bs = s.block_size() as usize;
    if cfg.io_size == 0 || cfg.io_size % bs != 0 {
        return Err(Error::Invalid(format!(
            "the I/O size ({}) must be a multiple of the LUN's block size ({bs})",
            cfg.io_size
        )));
    }
    if cfg.qd == 0 || cfg.read_pct > 100 {
        return Err(Error::Invalid(
            "the queue depth must be at least 1 and the read percentage at most 100".into(),
        ));
    }
    let region = Region::resolve(s, cfg.offset_blocks, cfg.blocks)?;
    let unit_blocks = (cfg.io_size / bs) as u64;
    let units = region.blocks / unit_blocks;
    if units == 0 {
        return Err(Error::Invalid(format!(
            "the region ({} blocks) is smaller than one I/O ({unit_blocks} blocks)",
            region.blocks
        )));
    }
    let unit_lba = |u: u64| region.offset_blocks + u * unit_blocks;
    let mut log = match &cfg.log {
        Some(p) => Some(Log::create(p, cfg.seed, s.block_size())?),
        None => None,
    };

    let mut rng = Rng::new(cfg.seed);
    let mut cursor = 0u64;
    // Newest acknowledged write (its seq) per unit.
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut busy: HashSet<u64> = HashSet::new();
    let mut ops: HashMap<u64, Op> = HashMap::new();
    let mut next_tag = 1u64;
    let mut t = Tally {
        reads: 0,
        writes: 0,
        errors: 0,
        mismatches: 0,
        unchecked_reads: 0,
        bytes: 0,
        latencies_us: Vec::new(),
        first_error: None,
        first_mismatch_lba: None,
    };
    let mut want = vec![0u8; bs];

    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut stopping = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            stopping = true;
        }
        // Refill the queue.
        while !stopping && ops.len() < cfg.qd {
            let unit = if cfg.random {
                (0..16)
                    .map(|_| rng.below(units))
                    .find(|u| !busy.contains(u))
            } else {
                let found = (0..units)
                    .map(|i| (cursor + i) % units)
                    .find(|u| !busy.contains(u));
                if let Some(u) = found {
                    cursor = (u + 1) % units;
                }
                found
            };
            let Some(unit) = unit else { break };
            let write = rng.below(100) >= u64::from(cfg.read_pct);
            let tag = next_tag;
            next_tag += 1;
            let lba = unit_lba(unit);
            let submitted = if write {
                let mut buf = vec![0u8; cfg.io_size];
                for (i, blk) in buf.chunks_mut(bs).enumerate() {
                    pattern::fill_stamped(cfg.seed, tag, lba + i as u64, blk);
                }
                s.submit_write(tag, lba, buf, cfg.fua)
            } else {
                s.submit_read(tag, lba, unit_blocks as u32)
            };
            if let Err(e) = submitted {
                t.error(1, || e.to_string());
                stopping = true;
                break;
            }
            busy.insert(unit);
            ops.insert(
                tag,
                Op {
                    unit,
                    write,
                    started: Instant::now(),
                },
            );
        }
        if ops.is_empty() && stopping {
            break;
        }
        if stopping && now >= deadline + cfg.drain_timeout {
            let n = ops.len() as u64;
            t.error(n, || format!("{n} commands did not complete in time"));
            break;
        }

        let serviced = s.service(Duration::from_millis(50));
        for c in s.take_completions() {
            let Some(op) = ops.remove(&c.tag) else {
                continue;
            };
            busy.remove(&op.unit);
            let lba = unit_lba(op.unit);
            match c.result {
                Err(e) => {
                    if op.write {
                        // The unit now holds old or new data: stop checking it.
                        acked.remove(&op.unit);
                    }
                    t.error(1, || format!("lba {lba}: {e}"));
                }
                Ok(_) if op.write => {
                    t.writes += 1;
                    t.bytes += cfg.io_size as u64;
                    acked.insert(op.unit, c.tag);
                    if let Some(log) = log.as_mut() {
                        log.write(c.tag, lba, unit_blocks)?;
                    }
                }
                Ok(data) => {
                    t.reads += 1;
                    t.bytes += cfg.io_size as u64;
                    match acked.get(&op.unit) {
                        None => t.unchecked_reads += 1,
                        Some(&seq) => {
                            let bad = data.chunks(bs).enumerate().find_map(|(i, blk)| {
                                let at = lba + i as u64;
                                pattern::fill_stamped(cfg.seed, seq, at, &mut want);
                                (blk != want.as_slice()).then_some(at)
                            });
                            if let Some(at) = bad {
                                t.mismatches += 1;
                                t.first_mismatch_lba.get_or_insert(at);
                            }
                        }
                    }
                }
            }
            let us = op.started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
            t.latencies_us.push(us);
        }
        // Before anything new is submitted: see the module docs.
        if let Some(log) = log.as_mut() {
            log.flush()?;
        }
        if let Err(e) = serviced {
            let n = ops.len() as u64;
            t.error(n.max(1), || e.to_string());
            break;
        }
    }
    if let Some(log) = log.as_mut() {
        log.flush()?;
    }

    let secs = start.elapsed().as_secs_f64().max(1e-9);
    t.latencies_us.sort_unstable();
    let pct = |p: f64| -> u64 {
        if t.latencies_us.is_empty() {
            return 0;
        }
        let i = ((t.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, t.latencies_us.len());
        u64::from(t.latencies_us[i - 1])
    };
    Ok(LoadSummary {
        reads: t.reads,
        writes: t.writes,
        errors: t.errors,
        mismatches: t.mismatches,
        unchecked_reads: t.unchecked_reads,
        seconds: secs,
        iops: (t.reads + t.writes) as f64 / secs,
        mib_per_s: t.bytes as f64 / secs / f64::from(1 << 20),
        lat_p50_us: pct(0.50),
        lat_p99_us: pct(0.99),
        lat_max_us: t.latencies_us.last().copied().map_or(0, u64::from),
        qd: cfg.qd,
        io_size: cfg.io_size,
        read_pct: cfg.read_pct,
        random: cfg.random,
        seed: cfg.seed,
        first_error: t.first_error,
        first_mismatch_lba: t.first_mismatch_lba,
    })
}

/// What [`verify_log`] found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifySummary {
    pub seed: u64,
    /// `W` lines in the log.
    pub logged_writes: u64,
    /// Distinct blocks named by the log, all read back.
    pub checked_blocks: u64,
    /// Blocks holding a newer write of the run than the last logged one
    /// (written, but acknowledged too late to be logged or not at all).
    pub newer_unlogged: u64,
    /// Blocks holding anything else: lost acknowledged writes.
    pub mismatches: u64,
    pub first_mismatch_lba: Option<u64>,
    /// What the first mismatching block held instead.
    pub first_mismatch: Option<String>,
}

impl VerifySummary {
    pub fn ok(&self) -> bool {
        self.mismatches == 0
    }
}

/// A parsed load log: seed, block size, and the last logged write of
/// every block.
#[derive(Debug, Clone, Default)]
pub struct LogContents {
    pub seed: Option<u64>,
    pub block_size: Option<u32>,
    pub writes: u64,
    pub last_write: BTreeMap<u64, u64>,
}

/// Parses a load log. A torn last line (no newline: the writer died
/// mid-line) is ignored; anything else malformed is an error.
pub fn read_log(path: &Path) -> Result<LogContents> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut r = BufReader::new(File::open(path).map_err(io)?);
    let mut log = LogContents::default();
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(io)? == 0 {
            break;
        }
        n += 1;
        let complete = line.ends_with('\n');
        let bad = |message: String| Error::Log {
            path: path.to_path_buf(),
            line: n,
            message,
        };
        let text = line.trim();
        if let Some(header) = text.strip_prefix('#') {
            for kv in header.split_whitespace() {
                match kv.split_once('=') {
                    Some(("seed", v)) => {
                        log.seed = Some(v.parse().map_err(|_| bad(format!("bad seed {v:?}")))?)
                    }
                    Some(("block_size", v)) => {
                        log.block_size = Some(
                            v.parse()
                                .map_err(|_| bad(format!("bad block size {v:?}")))?,
                        )
                    }
                    _ => {}
                }
            }
            continue;
        }
        if text.is_empty() {
            continue;
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            ["W", seq, lba, blocks] => seq
                .parse::<u64>()
                .ok()
                .zip(lba.parse::<u64>().ok())
                .zip(blocks.parse::<u64>().ok()),
            _ => None,
        };
        match parsed {
            Some(((seq, lba), blocks)) => {
                log.writes += 1;
                for b in lba..lba.saturating_add(blocks) {
                    log.last_write.insert(b, seq);
                }
            }
            None if !complete => break,
            None => {
                return Err(bad(format!(
                    "expected `W <seq> <lba> <blocks>`, got {text:?}"
                )))
            }
        }
    }
    Ok(log)
}

/// Re-reads every block named in the log at `path` and checks it holds
/// its last logged write (see the module docs for what else is accepted).
/// `seed` is needed only for a log without a header.
pub fn verify_log(s: &mut Session, path: &Path, seed: Option<u64>) -> Result<VerifySummary> {
    let log = read_log(path)?;
    let seed = match (log.seed, seed) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::Invalid(format!(
                "the log was written with seed {a}, not {b}"
            )))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(Error::Invalid(
                "the log has no header: give the seed it was written with".into(),
            ))
        }
    };
    let bs = s.block_size();
    if let Some(lbs) = log.block_size.filter(|&b| b != bs) {
        return Err(Error::Invalid(format!(
            "the log was written on a LUN with {lbs}-byte blocks, this one has {bs}"
        )));
    }
    let mut v = VerifySummary {
        seed,
        logged_writes: log.writes,
        checked_blocks: 0,
        newer_unlogged: 0,
        mismatches: 0,
        first_mismatch_lba: None,
        first_mismatch: None,
    };
    let max_run = ((1u64 << 20) / u64::from(bs)).max(1);
    let mut want = vec![0u8; bs as usize];
    let blocks: Vec<(u64, u64)> = log.last_write.into_iter().collect();
    let mut i = 0;
    while i < blocks.len() {
        // A run of consecutive LBAs, read at once.
        let first = blocks[i].0;
        let mut j = i + 1;
        while j < blocks.len()
            && blocks[j].0 == first + (j - i) as u64
            && ((j - i) as u64) < max_run
        {
            j += 1;
        }
        let data = s.read(first, (j - i) as u32)?;
        for (&(lba, seq), got) in blocks[i..j].iter().zip(data.chunks(bs as usize)) {
            v.checked_blocks += 1;
            pattern::fill_stamped(seed, seq, lba, &mut want);
            if got == want.as_slice() {
                continue;
            }
            match pattern::stamped_seq(seed, lba, got) {
                Some(found) if found > seq => v.newer_unlogged += 1,
                found => {
                    v.mismatches += 1;
                    if v.first_mismatch_lba.is_none() {
                        v.first_mismatch_lba = Some(lba);
                        v.first_mismatch = Some(match found {
                            Some(f) => format!("expected write {seq}, found older write {f}"),
                            None => {
                                format!("expected write {seq}, found data not written by this run")
                            }
                        });
                    }
                }
            }
        }
        i = j;
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_parses_header_lines_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(
            &p,
            "# ferry-iscsi load seed=9 block_size=512\nW 1 8 8\nW 5 0 8\nW 7 8 8\nW 9 1",
        )
        .unwrap();
        let log = read_log(&p).unwrap();
        assert_eq!(log.seed, Some(9));
        assert_eq!(log.block_size, Some(512));
        assert_eq!(log.writes, 3);
        assert_eq!(log.last_write.len(), 16);
        assert_eq!(log.last_write[&0], 5);
        assert_eq!(log.last_write[&15], 7);
    }

    #[test]
    fn malformed_lines_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "W 1 8 8\nX 2\nW 3 0 8\n").unwrap();
        assert!(matches!(read_log(&p), Err(Error::Log { line: 2, .. })));
    }
}
