//! A write workload that logs what it does, for the kill -9 crash test.
//!
//! Before each write it appends `B <seq> <offset> <len> <kind>` to the log,
//! after the write is acknowledged `A <seq>`. The data of write `seq` is
//! `pattern::bytes(seq, len)` (or zeroes), so a checker can rebuild the
//! expected volume from the log alone, whenever the process dies.
use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use ferry_core::{pattern, Volume};
use ferry_host::{Lun, StartOptions, VolumeSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::units::{parse_rate, parse_size};

#[derive(Args)]
pub struct WorkloadArgs {
    #[arg(long)]
    pub volume: String,
    /// Start a migration to this target unless one exists.
    #[arg(long)]
    pub target: Option<String>,
    #[arg(long)]
    pub log: std::path::PathBuf,
    /// First sequence number (continue after earlier runs).
    #[arg(long, default_value_t = 1)]
    pub first_seq: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "64K")]
    pub region_size: String,
    #[arg(long, default_value = "unlimited")]
    pub rate: String,
    /// Stop after this long (seconds); 0 = until killed.
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
    /// Pause between operations, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub op_delay_us: u64,
    /// Commit when the copy completes, write a little more, and exit.
    #[arg(long)]
    pub commit: bool,
}

pub fn run(a: WorkloadArgs) -> Result<()> {
    let lun = Lun::open(&a.volume)?;
    if lun.status().is_some() {
        lun.set_rate_limit(parse_rate(&a.rate)?)?;
    }
    if let Some(t) = &a.target {
        let tspec = VolumeSpec::parse(t)?;
        if lun.status().is_none() && !tspec.exists()? {
            lun.start_migration(
                t,
                &StartOptions {
                    region_size: Some(parse_size(&a.region_size)?),
                    rate_limit: parse_rate(&a.rate)?,
                    adaptive: false,
                    ..StartOptions::default()
                },
            )?;
        }
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.log)
        .context("opening the workload log")?;
    let size = lun.size();
    let mut rng = StdRng::seed_from_u64(a.seed ^ a.first_seq);
    let started = Instant::now();
    let mut seq = a.first_seq;
    let mut committed_at = None;
    loop {
        if a.seconds > 0 && started.elapsed() >= Duration::from_secs(a.seconds) {
            break;
        }
        let sectors = size / 512;
        let len = 512 * rng.random_range(1..=128u64).min(sectors);
        let off = 512 * rng.random_range(0..=(sectors - len / 512));
        let zero = rng.random_range(0..10) == 0;
        // One write(2) per line, so a kill never leaves half a line.
        let kind = if zero { "z" } else { "d" };
        log.write_all(format!("B {seq} {off} {len} {kind}\n").as_bytes())?;
        if zero {
            lun.write_zeroes(off, len)?;
        } else {
            lun.write_at(&pattern::bytes(seq, len as usize), off)?;
        }
        log.write_all(format!("A {seq}\n").as_bytes())?;
        if seq % 64 == 0 {
            lun.flush()?;
        }
        if a.commit {
            match lun.status() {
                Some(p) if p.state == ferry_core::MigrationState::Copied => {
                    lun.commit()?;
                    committed_at = Some(seq);
                }
                _ => {}
            }
            if committed_at.is_some_and(|c| seq >= c + 100) {
                break;
            }
        }
        seq += 1;
        if a.op_delay_us > 0 {
            std::thread::sleep(Duration::from_micros(a.op_delay_us));
        }
    }
    lun.flush()?;
    println!("{seq}");
    Ok(())
}
