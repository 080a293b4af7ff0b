//! `ferry-iscsi`: a small iSCSI initiator for ferry's tests, benchmarks and
//! demos: look at a LUN, fill and check it with a pattern, and run a
//! verifying load that can be checked again after a target crash.
//!
//! ```text
//! ferry-iscsi info URL [--json]
//! ferry-iscsi write-pattern  URL --seed S [--offset-blocks N] [--blocks M]
//! ferry-iscsi verify-pattern URL --seed S [--offset-blocks N] [--blocks M]
//! ferry-iscsi load URL [--seconds T] [--qd Q] [--block-size 4096] [--read-pct P]
//!                      [--random] [--fua] [--seed S] [--log FILE]
//!                      [--offset-blocks N] [--blocks M]
//! ferry-iscsi load URL --verify-log FILE [--seed S]
//! ferry-iscsi checksum URL
//! ```
//!
//! with `URL` = `iscsi://host[:port]/target-iqn/lun` and the global
//! `--timeout SECS` (login and every command, default 10) and
//! `--initiator IQN`.
//!
//! Exit status: 0 when everything checked out, 1 when data did not match
//! (the first mismatching LBA is printed), 2 on any other error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use ferry_initiator::{
    region, run_load, verify_log, ConnectOptions, LoadConfig, Region, Session, DEFAULT_INITIATOR,
};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-iscsi",
    version,
    about = "iSCSI initiator for ferry's tests and benchmarks (libiscsi)"
)]
struct Cli {
    /// Seconds before login or any command gives up.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    /// Initiator name to log in with.
    #[arg(long, global = true, default_value = DEFAULT_INITIATOR)]
    initiator: String,
    /// A fixed ISID (hex, 24 bits), so each run is the same initiator
    /// port to persistent reservations; default: libiscsi picks one.
    #[arg(long, global = true, value_parser = parse_hex24)]
    isid: Option<u32>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Capacity, block size, serial number and device identifiers.
    Info {
        /// iscsi://HOST:PORT/TARGET-IQN/LUN
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// Write deterministic data (from the seed and each LBA) over a range.
    WritePattern {
        url: String,
        #[command(flatten)]
        range: RangeArgs,
    },
    /// Check a range holds what write-pattern wrote with the same seed.
    VerifyPattern {
        url: String,
        #[command(flatten)]
        range: RangeArgs,
        /// Skip the blocks a load log says were overwritten since, and blocks
        /// holding an (unacknowledged) write stamped by that load.
        #[arg(long)]
        skip_log: Option<PathBuf>,
    },
    /// SHA-256 of the whole LUN as read over iSCSI (hex), to compare with
    /// a checksum of the backing file.
    Checksum { url: String },
    /// Verifying async load (prints a JSON summary), or --verify-log.
    Load(LoadArgs),
    /// Send PERSISTENT RESERVE OUT commands, in order, in one session,
    /// and print the status each ended in (exit 1 at the first one that
    /// is not GOOD): register, reserve, release, clear, preempt,
    /// preempt-and-abort, register-and-ignore.
    PrOut {
        url: String,
        #[arg(required = true)]
        actions: Vec<PrAction>,
        /// Reservation type (1 WE, 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR).
        #[arg(long, default_value_t = 0)]
        r#type: u8,
        /// RESERVATION KEY (hex).
        #[arg(long, default_value = "0", value_parser = parse_hex64)]
        key: u64,
        /// SERVICE ACTION RESERVATION KEY (hex).
        #[arg(long, default_value = "0", value_parser = parse_hex64)]
        sa_key: u64,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
/// PR OUT service actions, valued as SPC-4's SERVICE ACTION codes.
enum PrAction {
    Register = 0,
    Reserve = 1,
    Release = 2,
    Clear = 3,
    Preempt = 4,
    PreemptAndAbort = 5,
    RegisterAndIgnore = 6,
}

fn parse_hex64(s: &str) -> std::result::Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_hex24(s: &str) -> std::result::Result<u32, String> {
    match parse_hex64(s)? {
        v if v <= 0xff_ffff => Ok(v as u32),
        _ => Err(format!("{s:?} is more than 24 bits")),
    }
}

#[derive(Args, Debug)]
struct RangeArgs {
    #[arg(long)]
    seed: u64,
    /// First block of the range.
    #[arg(long, default_value_t = 0)]
    offset_blocks: u64,
    /// Blocks in the range (default: to the end of the LUN).
    #[arg(long)]
    blocks: Option<u64>,
}

#[derive(Args, Debug)]
struct LoadArgs {
    url: String,
    /// Run time.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Commands in flight.
    #[arg(long, default_value_t = 1)]
    qd: usize,
    /// Bytes per I/O (a multiple of the LUN's block size).
    #[arg(long, default_value_t = 4096)]
    block_size: usize,
    /// Percentage of reads.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    read_pct: u8,
    /// Random offsets (default: sequential).
    #[arg(long)]
    random: bool,
    /// Writes with FUA.
    #[arg(long)]
    fua: bool,
    /// Seed of the written data [default: 1; for --verify-log, the one in
    /// the log's header].
    #[arg(long)]
    seed: Option<u64>,
    /// Append every acknowledged write to this file (`W <seq> <lba> <blocks>`).
    #[arg(long)]
    log: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    offset_blocks: u64,
    #[arg(long)]
    blocks: Option<u64>,
    /// Instead of a load: re-read every block named in this log and check
    /// it holds the last logged write.
    #[arg(long, conflicts_with = "log")]
    verify_log: Option<PathBuf>,
}

/// How a command ended, short of an error.
enum Verdict {
    Ok,
    Mismatch,
    Failed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Verdict::Ok) => ExitCode::SUCCESS,
        Ok(Verdict::Mismatch) => ExitCode::from(1),
        Ok(Verdict::Failed) => ExitCode::from(2),
        Err(e) => {
            eprintln!("ferry-iscsi: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn connect(cli: &Cli, url: &str) -> Result<Session> {
    let opts = ConnectOptions {
        initiator_name: cli.initiator.clone(),
        timeout: Duration::from_secs(cli.timeout.max(1)),
        isid: cli.isid,
        ..ConnectOptions::default()
    };
    Ok(Session::connect_with(url, &opts)?)
}

fn run(cli: Cli) -> Result<Verdict> {
    match &cli.cmd {
        Cmd::Info { url, json } => {
            let mut s = connect(&cli, url)?;
            let serial = s.inquiry_serial().context("reading the serial number")?;
            let id = s
                .inquiry_device_id()
                .context("reading the device identifiers")?;
            let (bs, n) = (s.block_size(), s.num_blocks());
            if *json {
                let designators: Vec<_> = id
                    .designators
                    .iter()
                    .map(|d| {
                        json!({
                            "type": d.type_name(),
                            "association": d.association,
                            "code_set": d.code_set,
                            "value": d.display_value(),
                        })
                    })
                    .collect();
                let out = json!({
                    "url": url,
                    "block_size": bs,
                    "num_blocks": n,
                    "capacity_bytes": u64::from(bs) * n,
                    "serial": serial,
                    "device_id": id.primary(),
                    "designators": designators,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let bytes = u64::from(bs) * n;
                println!("url:        {url}");
                println!("block size: {bs}");
                println!("blocks:     {n}");
                println!(
                    "capacity:   {bytes} bytes ({:.1} MiB)",
                    bytes as f64 / f64::from(1 << 20)
                );
                println!("serial:     {serial}");
                println!("device id:  {}", id.primary().unwrap_or_else(|| "-".into()));
                for d in &id.designators {
                    println!(
                        "  {:<20} assoc {} {}",
                        d.type_name(),
                        d.association,
                        d.display_value()
                    );
                }
            }
            Ok(Verdict::Ok)
        }
        Cmd::WritePattern { url, range } => {
            let mut s = connect(&cli, url)?;
            let r = Region::resolve(&s, range.offset_blocks, range.blocks)?;
            let bytes = region::write_pattern(&mut s, range.seed, r)?;
            s.synchronize_cache().context("flushing")?;
            println!(
                "wrote {} blocks ({bytes} bytes) from lba {} with seed {}",
                r.blocks, r.offset_blocks, range.seed
            );
            Ok(Verdict::Ok)
        }
        Cmd::Checksum { url } => {
            use sha2::Digest;
            let mut s = connect(&cli, url)?;
            let (bs, n) = (u64::from(s.block_size()), s.num_blocks());
            // 1 MiB reads: few round trips, bounded memory.
            let step = ((1u64 << 20) / bs).max(1);
            let mut h = sha2::Sha256::new();
            let mut lba = 0;
            while lba < n {
                let count = step.min(n - lba) as u32; // ≤ 1 MiB / block size
                h.update(s.read(lba, count)?);
                lba += u64::from(count);
            }
            let digest = h.finalize();
            println!(
                "{}",
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            Ok(Verdict::Ok)
        }
        Cmd::VerifyPattern {
            url,
            range,
            skip_log,
        } => {
            let mut s = connect(&cli, url)?;
            let r = Region::resolve(&s, range.offset_blocks, range.blocks)?;
            let (skip, load_seed) = match skip_log {
                Some(p) => {
                    let log = ferry_initiator::read_log(p)?;
                    (log.last_write.into_keys().collect(), log.seed)
                }
                None => (std::collections::BTreeSet::new(), None),
            };
            let check = region::verify_pattern_except(&mut s, range.seed, r, &skip, load_seed)?;
            match check.first_mismatch_lba {
                Some(lba) => {
                    eprintln!(
                        "mismatch at lba {lba} ({} of {} blocks differ)",
                        check.mismatched_blocks, check.checked_blocks
                    );
                    Ok(Verdict::Mismatch)
                }
                None => {
                    println!(
                        "verified {} blocks from lba {} with seed {}",
                        check.checked_blocks, r.offset_blocks, range.seed
                    );
                    Ok(Verdict::Ok)
                }
            }
        }
        Cmd::PrOut {
            url,
            actions,
            r#type,
            key,
            sa_key,
        } => {
            let mut s = connect(&cli, url)?;
            let mut params = [0u8; 24];
            params[0..8].copy_from_slice(&key.to_be_bytes());
            params[8..16].copy_from_slice(&sa_key.to_be_bytes());
            for action in actions {
                let cdb = [0x5f, *action as u8, *r#type & 0x0f, 0, 0, 0, 0, 0, 24, 0];
                let r = s.raw_cdb(&cdb, Some(&params), 0)?;
                match r.sense {
                    Some(sense) => println!("{action:?}: {:?} {}", r.status, sense),
                    None => println!("{action:?}: {:?}", r.status),
                }
                if !r.is_good() {
                    return Ok(Verdict::Mismatch);
                }
            }
            Ok(Verdict::Ok)
        }
        Cmd::Load(a) => {
            let mut s = connect(&cli, &a.url)?;
            if let Some(path) = &a.verify_log {
                let v = verify_log(&mut s, path, a.seed)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                if let Some(lba) = v.first_mismatch_lba {
                    eprintln!(
                        "mismatch at lba {lba}: {}",
                        v.first_mismatch.as_deref().unwrap_or("")
                    );
                    return Ok(Verdict::Mismatch);
                }
                return Ok(Verdict::Ok);
            }
            if !(a.seconds > 0.0 && a.seconds.is_finite()) {
                anyhow::bail!("--seconds must be positive");
            }
            let cfg = LoadConfig {
                duration: Duration::from_secs_f64(a.seconds),
                qd: a.qd,
                io_size: a.block_size,
                read_pct: a.read_pct,
                random: a.random,
                seed: a.seed.unwrap_or(1),
                fua: a.fua,
                offset_blocks: a.offset_blocks,
                blocks: a.blocks,
                log: a.log.clone(),
                drain_timeout: Duration::from_secs(cli.timeout.max(1) + 5),
            };
            let sum = run_load(&mut s, &cfg)?;
            println!("{}", serde_json::to_string_pretty(&sum)?);
            if let Some(lba) = sum.first_mismatch_lba {
                eprintln!(
                    "mismatch at lba {lba} ({} mismatching reads)",
                    sum.mismatches
                );
                Ok(Verdict::Mismatch)
            } else if sum.errors > 0 {
                eprintln!(
                    "{} errors, first: {}",
                    sum.errors,
                    sum.first_error.as_deref().unwrap_or("?")
                );
                Ok(Verdict::Failed)
            } else {
                Ok(Verdict::Ok)
            }
        }
    }
}
