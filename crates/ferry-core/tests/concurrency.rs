//! Foreground writers on several threads race the real copier thread while
//! the main thread pauses, resumes, re-rates, aborts and commits. Each
//! writer owns interleaved 512-byte slots, so every region is shared by all
//! writers and the copier, yet each thread can check its own bytes.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::sim::{info, Faults, SimStore, SimVolume};
use ferry_core::{Copier, CopierConfig, MigratingVolume, MigrationPlan, MigrationState, Volume};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REGION: u64 = 4096;
const SIZE: u64 = 64 * REGION;
const SLOT: u64 = 512;
const THREADS: u64 = 4;

struct Setup {
    vol: Arc<MigratingVolume>,
    source: Arc<SimVolume>,
    target: Arc<SimVolume>,
    model: Vec<u8>,
}

fn setup(seed: u64) -> Setup {
    let mut rng = StdRng::seed_from_u64(seed);
    let faults = Faults::new();
    let source = SimVolume::new("src", SIZE, REGION, faults.clone());
    let mut model = vec![0u8; SIZE as usize];
    rng.fill(&mut model[..]);
    source.fill(&model);
    let target = SimVolume::new("dst", SIZE, REGION, faults.clone());
    let vol = MigratingVolume::start(
        source.clone(),
        SimStore::new("src", faults.clone()),
        target.clone(),
        SimStore::new("dst", faults),
        MigrationPlan {
            source_spec: "sim:src".into(),
            target_spec: "sim:dst".into(),
            source_info: info(&[]),
            region_size: REGION,
            rate_limit: Some(64 * REGION),
            adaptive: true,
            paused: false,
        },
    )
    .unwrap();
    Setup {
        vol,
        source,
        target,
        model,
    }
}

/// Runs writers until `stop`; returns each thread's view of its slots.
fn run_writers(
    vol: Arc<MigratingVolume>,
    model: Vec<u8>,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<u8>>> {
    (0..THREADS)
        .map(|t| {
            let vol = vol.clone();
            let stop = stop.clone();
            let mut mine = model.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(t);
                let slots: Vec<u64> = (0..SIZE / SLOT).filter(|s| s % THREADS == t).collect();
                while !stop.load(Ordering::Acquire) {
                    let slot = slots[rng.random_range(0..slots.len())];
                    let off = slot * SLOT + rng.random_range(0..SLOT / 2);
                    let len = rng.random_range(1..=SLOT / 2);
                    match rng.random_range(0..4) {
                        0 | 1 => {
                            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                            vol.write_at(&data, off).unwrap();
                            mine[off as usize..(off + len) as usize].copy_from_slice(&data);
                        }
                        2 => {
                            vol.write_zeroes(off, len).unwrap();
                            mine[off as usize..(off + len) as usize].fill(0);
                        }
                        _ => {
                            let mut buf = vec![0u8; len as usize];
                            vol.read_at(&mut buf, off).unwrap();
                            assert_eq!(
                                buf,
                                &mine[off as usize..(off + len) as usize],
                                "thread {t} slot {slot}"
                            );
                        }
                    }
                    if rng.random_range(0..50) == 0 {
                        vol.flush().unwrap();
                    }
                }
                mine
            })
        })
        .collect()
}

/// Merges the threads' views: each owns its own slots.
fn merge(views: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = views[0].clone();
    for (t, view) in views.iter().enumerate() {
        for slot in (0..SIZE / SLOT).filter(|s| s % THREADS == t as u64) {
            let r = (slot * SLOT) as usize..((slot + 1) * SLOT) as usize;
            out[r.clone()].copy_from_slice(&view[r]);
        }
    }
    out
}

fn read_all(vol: &dyn Volume) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size() as usize];
    vol.read_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn writers_race_copier_with_pause_resume_and_commit() {
    let s = setup(1);
    let copier = Copier::spawn(s.vol.clone(), CopierConfig::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = run_writers(s.vol.clone(), s.model.clone(), stop.clone());
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(15));
        match i % 4 {
            0 => copier.set_paused(true).unwrap(),
            1 => copier.set_paused(false).unwrap(),
            2 => copier.set_rate_limit(Some(1 << 20)).unwrap(),
            _ => copier.set_rate_limit(None).unwrap(),
        }
    }
    copier.set_paused(false).unwrap();
    copier.set_adaptive(false).unwrap();
    assert!(
        copier.wait_idle(Duration::from_secs(30)),
        "copier did not finish: {:?}",
        copier.progress()
    );
    stop.store(true, Ordering::Release);
    let want = merge(writers.into_iter().map(|h| h.join().unwrap()).collect());
    s.vol.commit().unwrap();
    assert_eq!(s.vol.state(), MigrationState::Committed);
    assert!(
        read_all(s.vol.as_ref()) == want,
        "volume differs from the writers' model"
    );
    assert!(
        s.target.contents() == want,
        "target alone differs from the model"
    );
}

#[test]
fn writers_race_abort_copy_back() {
    let s = setup(2);
    let copier = Copier::spawn(s.vol.clone(), CopierConfig::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = run_writers(s.vol.clone(), s.model.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(100));
    copier.abort().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    copier.set_rate_limit(None).unwrap();
    copier.set_adaptive(false).unwrap();
    assert!(
        copier.wait_idle(Duration::from_secs(30)),
        "abort did not finish: {:?}",
        copier.progress()
    );
    stop.store(true, Ordering::Release);
    let want = merge(writers.into_iter().map(|h| h.join().unwrap()).collect());
    assert_eq!(s.vol.state(), MigrationState::Aborted);
    assert!(
        s.source.contents() == want,
        "source differs from the writers' model after abort"
    );
}
