//! `ferry demo`: the whole story on local files, in one command.
//!
//! Creates a source volume holding data (with holes), serves it, runs a
//! verifying read/write workload on it, migrates it live to a new volume
//! with a progress bar (pausing and resuming on the way), commits, reopens
//! the LUN by its original spec and checks every byte. The control socket
//! is up throughout, so `ferry migrate status <source>` works from another
//! shell while it runs.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_core::{pattern, MigrationState, Volume};
use ferry_host::{ControlServer, Lun, Registry, StartOptions, VolumeSpec};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::units::{human, parse_rate, parse_size};

#[derive(Args)]
pub struct DemoArgs {
    /// Working directory (emptied first).
    #[arg(long, default_value = "/tmp/ferry-demo")]
    pub dir: std::path::PathBuf,
    /// Volume size.
    #[arg(long, default_value = "512M")]
    pub size: String,
    /// Copier rate limit per second.
    #[arg(long, default_value = "128M")]
    pub rate: String,
    /// Workload threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u64,
}

/// Blocks of the demo workload: each is written whole, so a version number
/// per block is the entire model of the volume.
const BLOCK: u64 = 64 << 10;
/// Seeds of the initial data are offset so they never collide with writes.
const INITIAL_SEED: u64 = 1 << 48;

fn initial_is_hole(block: u64) -> bool {
    block % 5 == 3
}

fn expected(block: u64, version: u64) -> Vec<u8> {
    match version {
        0 if initial_is_hole(block) => vec![0; BLOCK as usize],
        0 => pattern::bytes(INITIAL_SEED + block, BLOCK as usize),
        v => pattern::bytes(v, BLOCK as usize),
    }
}

pub fn run(a: DemoArgs) -> Result<()> {
    let size = parse_size(&a.size)? / BLOCK * BLOCK;
    if size == 0 {
        bail!("--size must be at least {}", human(BLOCK));
    }
    let rate = parse_rate(&a.rate)?;
    let threads = a.threads.max(1);
    if a.dir.exists() {
        std::fs::remove_dir_all(&a.dir).with_context(|| format!("emptying {}", a.dir.display()))?;
    }
    std::fs::create_dir_all(&a.dir)?;
    let source = format!("file:{}", a.dir.join("source.img").display());
    let target = format!("file:{}", a.dir.join("target.img").display());

    // 1. A source volume with data and holes.
    println!("1. creating {source} ({}) with data", human(size));
    {
        let (vol, _) = VolumeSpec::parse(&source)?.create(size, None)?;
        for b in 0..size / BLOCK {
            if !initial_is_hole(b) {
                vol.write_at(&expected(b, 0), b * BLOCK)?;
            }
        }
        vol.flush()?;
    }

    // 2. Serve it, with the control socket up.
    let lun = Lun::open(&source)?;
    let registry = Arc::new(Registry::default());
    registry.add(&lun);
    let server = ControlServer::start(registry.clone());
    match &server {
        Ok(s) => println!(
            "2. serving it; try `ferry migrate status {source}` (socket {})",
            s.path().display()
        ),
        Err(e) => println!("2. serving it (no control socket: {e})"),
    }

    // 3. A verifying workload: thread t owns blocks with b % threads == t.
    let blocks = size / BLOCK;
    let versions: Arc<Vec<AtomicU64>> = Arc::new((0..blocks).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let next_version = Arc::new(AtomicU64::new(1));
    let writes = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (lun, versions, stop) = (lun.clone(), versions.clone(), stop.clone());
            let (next_version, writes, reads) =
                (next_version.clone(), writes.clone(), reads.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut rng = StdRng::seed_from_u64(t);
                let mut buf = vec![0u8; BLOCK as usize];
                while !stop.load(Ordering::Acquire) {
                    let b = rng.random_range(0..blocks / threads) * threads + t;
                    if b >= blocks {
                        continue;
                    }
                    if rng.random_bool(0.4) {
                        let v = next_version.fetch_add(1, Ordering::Relaxed);
                        lun.write_at(&expected(b, v), b * BLOCK)?;
                        versions[b as usize].store(v, Ordering::Release);
                        writes.fetch_add(1, Ordering::Relaxed);
                    } else {
                        lun.read_at(&mut buf, b * BLOCK)?;
                        let v = versions[b as usize].load(Ordering::Acquire);
                        if buf != expected(b, v) {
                            bail!("block {b} read back wrong data during the migration");
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Ok(())
            })
        })
        .collect();
    println!("3. workload running: {threads} threads writing and verifying 64 KiB blocks");

    // 4. Migrate live.
    println!(
        "4. migrating to {target} (rate limit {})",
        rate.map(|r| format!("{}/s", human(r)))
            .unwrap_or_else(|| "unlimited".into())
    );
    let began = Instant::now();
    lun.start_migration(
        &target,
        &StartOptions {
            region_size: None,
            rate_limit: rate,
            ..StartOptions::default()
        },
    )?;
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "   {msg:8} [{elapsed_precise}] [{bar:40.cyan/blue}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut paused_once = false;
    loop {
        let p = lun.status().context("migration vanished")?;
        bar.set_position(p.bytes_done);
        bar.set_message(if p.paused {
            "paused".into()
        } else {
            p.state.to_string()
        });
        if p.state == MigrationState::Copied {
            break;
        }
        if let Some(e) = p.last_error {
            bail!("copier error: {e}");
        }
        if !paused_once && p.bytes_done * 5 >= size * 2 {
            paused_once = true;
            lun.set_paused(true)?;
            bar.set_message("paused");
            std::thread::sleep(Duration::from_millis(800));
            lun.set_paused(false)?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    let copy_time = began.elapsed();
    let p = lun.commit()?;
    println!(
        "   copied {} in {:.1} s, then committed; {} regions were written during the copy",
        human(p.bytes_total),
        copy_time.as_secs_f64(),
        p.regions_written
    );

    // 5. Keep the workload going on the committed volume briefly, then stop.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Release);
    for w in workers {
        w.join().expect("worker panicked")?;
    }
    lun.flush()?;
    drop(server);
    registry.remove(&lun);
    drop(lun);

    // 6. Reopen by the original spec (resolves to the target) and check all.
    println!(
        "5. workload done: {} writes and {} verified reads during the migration",
        writes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed)
    );
    let reopened = Lun::open(&source)?;
    let (alone, _) = VolumeSpec::parse(&target)?.open_read_only()?;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut buf2 = vec![0u8; BLOCK as usize];
    let mut bad = 0u64;
    for b in 0..blocks {
        let want = expected(b, versions[b as usize].load(Ordering::Acquire));
        reopened.read_at(&mut buf, b * BLOCK)?;
        alone.read_at(&mut buf2, b * BLOCK)?;
        if buf != want || buf2 != want {
            bad += 1;
        }
    }
    if bad > 0 {
        bail!("{bad} of {blocks} blocks differ after the migration");
    }
    println!(
        "6. verified all {blocks} blocks ({}) through the LUN and on {target} alone: 0 mismatches",
        human(size)
    );
    println!("   the source {source} is no longer used and can be removed");
    Ok(())
}
