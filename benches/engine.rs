//! Engine benchmarks, reported as ratios against peers measured in the same
//! run (absolute numbers on a shared 2-core machine mean little):
//!
//! 1. routing overhead: 4 KiB random reads and writes through a migrating
//!    volume (half the regions migrated) and through a LUN wrapper, versus
//!    the same I/O on a plain file volume;
//! 2. copier throughput: ferry's copier moving a volume versus a plain
//!    read/write copy loop and versus `std::fs::copy` (copy_file_range),
//!    each ending with the data durable.
//!
//! Run: `cargo bench --bench engine` (add `-- --quick` for a short run).
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::copier::{CopierConfig, CopyCursor};
use ferry_core::{pattern, MigratingVolume, MigrationPlan, Volume};
use ferry_file::{Access, FileMetaStore, FileVolume};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn create_with_data(path: &Path, size: u64) -> Arc<FileVolume> {
    let vol = Arc::new(FileVolume::create(path, size).unwrap());
    let chunk = 1 << 20;
    for off in (0..size).step_by(chunk) {
        vol.write_at(&pattern::bytes(off, chunk), off).unwrap();
    }
    vol.flush().unwrap();
    vol
}

fn migrating(dir: &Path, src: &Path, size: u64, region: u64) -> Arc<MigratingVolume> {
    let dst = dir.join(format!("dst-{}", rand::random::<u32>()));
    let target = Arc::new(FileVolume::create(&dst, size).unwrap());
    let source = Arc::new(FileVolume::open(src, Access::ReadOnly).unwrap());
    MigratingVolume::start(
        source,
        Arc::new(FileMetaStore::new(src)),
        target,
        Arc::new(FileMetaStore::new(&dst)),
        MigrationPlan {
            source_spec: format!("file:{}", src.display()),
            target_spec: format!("file:{}", dst.display()),
            source_info: Default::default(),
            region_size: region,
            rate_limit: None,
            adaptive: false,
            impact_percent: None,
            floor_rate: None,
            priority: None,
            paused: false,
        },
    )
    .unwrap()
}

/// Nanoseconds per op of `ops` random 4 KiB I/Os.
fn random_io(vol: &dyn Volume, ops: u64, write: bool) -> f64 {
    let mut rng = StdRng::seed_from_u64(1);
    let blocks = vol.size() / 4096;
    let mut buf = pattern::bytes(3, 4096);
    let start = Instant::now();
    for _ in 0..ops {
        let off = rng.random_range(0..blocks) * 4096;
        if write {
            vol.write_at(&buf, off).unwrap();
        } else {
            vol.read_at(&mut buf, off).unwrap();
        }
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

fn best_of<F: FnMut() -> f64>(n: usize, mut f: F) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn routing(dir: &Path, quick: bool) {
    let size: u64 = 256 << 20;
    let ops = if quick { 20_000 } else { 200_000 };
    let src = dir.join("route-src");
    let plain = create_with_data(&src, size);
    drop(plain);
    // Half the regions migrated: reads take both routes.
    let mig = migrating(dir, &src, size, 4 << 20);
    let mut cursor = CopyCursor::new(CopierConfig::default());
    while mig.index().migrated_count() < mig.index().regions() / 2 {
        cursor.step(&mig).unwrap();
    }
    cursor.commit_batch(&mig).unwrap();
    let plain: Arc<dyn Volume> = Arc::new(
        FileVolume::open(
            &dir.join(mig.record().target.trim_start_matches("file:")),
            Access::ReadOnly,
        )
        .unwrap(),
    );
    // Warm the page cache of both files.
    random_io(plain.as_ref(), ops, false);
    random_io(mig.as_ref(), ops, false);
    let read_plain = best_of(3, || random_io(plain.as_ref(), ops, false));
    let read_mig = best_of(3, || random_io(mig.as_ref(), ops, false));
    println!(
        "routing  4K random read : plain {read_plain:.0} ns/op, migrating {read_mig:.0} ns/op, ratio {:.2}x",
        read_mig / read_plain
    );
    // Writes: on a fully migrated volume (the steady state of the copy)
    // versus the plain target file.
    cursor.run_to_end(&mig).unwrap();
    // The peer is an equally allocated plain file: the source itself.
    let wplain = Arc::new(FileVolume::open(&src, Access::Exclusive).unwrap());
    random_io(wplain.as_ref(), ops, true);
    random_io(mig.as_ref(), ops, true); // first touch marks written bits
    let write_plain = best_of(3, || random_io(wplain.as_ref(), ops, true));
    let write_mig = best_of(3, || random_io(mig.as_ref(), ops, true));
    println!(
        "routing  4K random write: plain {write_plain:.0} ns/op, migrating {write_mig:.0} ns/op, ratio {:.2}x",
        write_mig / write_plain
    );
}

fn copier(dir: &Path, quick: bool) {
    let size: u64 = if quick { 128 << 20 } else { 512 << 20 };
    let src = dir.join("copy-src");
    drop(create_with_data(&src, size));
    let mb = size as f64 / (1 << 20) as f64;
    let plain_loop = || {
        let dst = dir.join(format!("copy-loop-{}", rand::random::<u32>()));
        let start = Instant::now();
        let from = std::fs::File::open(&src).unwrap();
        let to = std::fs::File::create(&dst).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        use std::os::unix::fs::FileExt;
        for off in (0..size).step_by(buf.len()) {
            from.read_exact_at(&mut buf, off).unwrap();
            to.write_all_at(&buf, off).unwrap();
        }
        to.sync_data().unwrap();
        let t = start.elapsed();
        std::fs::remove_file(&dst).unwrap();
        t
    };
    let fs_copy = || {
        let dst = dir.join(format!("copy-fs-{}", rand::random::<u32>()));
        let start = Instant::now();
        std::fs::copy(&src, &dst).unwrap();
        std::fs::File::open(&dst).unwrap().sync_data().unwrap();
        let t = start.elapsed();
        std::fs::remove_file(&dst).unwrap();
        t
    };
    let ferry = || {
        let mig = migrating(dir, &src, size, 4 << 20);
        let start = Instant::now();
        CopyCursor::new(CopierConfig::default())
            .run_to_end(&mig)
            .unwrap();
        let t = start.elapsed();
        mig.abort().unwrap();
        CopyCursor::new(CopierConfig::default())
            .run_to_end(&mig)
            .unwrap();
        t
    };
    let best = |f: &dyn Fn() -> Duration| (0..3).map(|_| f()).min().unwrap().as_secs_f64();
    let t_loop = best(&plain_loop);
    let t_fs = best(&fs_copy);
    let t_ferry = best(&ferry);
    println!(
        "copier   {mb:.0} MiB: read/write loop {:.0} MiB/s, std::fs::copy {:.0} MiB/s, ferry copier {:.0} MiB/s",
        mb / t_loop,
        mb / t_fs,
        mb / t_ferry
    );
    println!(
        "copier   ratio ferry/loop {:.2}x, ferry/fs::copy {:.2}x",
        t_loop / t_ferry,
        t_fs / t_ferry
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // cargo bench passes --bench; ignore other harness flags.
    let dir = tempfile::tempdir_in(
        std::env::var("FERRY_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .unwrap();
    println!(
        "index memory: {} KiB per TiB at 4 MiB regions (two bits per region)",
        (1u64 << 40) / (4 << 20) * 2 / 8 / 1024
    );
    routing(dir.path(), quick);
    copier(dir.path(), quick);
}
