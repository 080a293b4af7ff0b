//! Foreground writers on several threads race the real copier thread while
//! the main thread pauses, resumes, re-rates, aborts and commits. Each
//! writer owns interleaved 512-byte slots, so every region is shared by all
//! writers and the copier, yet each thread can check its own bytes.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::sim::{read_all, Faults, SimWorld};
use ferry_core::{Copier, CopierConfig, MigratingVolume, MigrationPlan, MigrationState, Volume};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REGION: u64 = 4096;
const SIZE: u64 = 64 * REGION;
const SLOT: u64 = 512;
const THREADS: u64 = 4;

struct Setup {
    vol: Arc<MigratingVolume>,
    world: SimWorld,
    model: Vec<u8>,
}

fn setup(seed: u64) -> Setup {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = vec![0u8; SIZE as usize];
    rng.fill(&mut model[..]);
    let world = SimWorld::new(&model, REGION);
    let vol = world
        .start(MigrationPlan {
            rate_limit: Some(64 * REGION),
            adaptive: true,
            ..world.plan()
        })
        .unwrap();
    Setup { vol, world, model }
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
    // Commit while the writers run: the switch waits for their in-flight
    // I/O, and they carry on against the target alone.
    s.vol.commit().unwrap();
    assert_eq!(s.vol.state(), MigrationState::Committed);
    // 200 more commands land after the commit before the writers stop.
    let during = s.vol.foreground().ops;
    while s.vol.foreground().ops < during + 200 {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Release);
    let want = merge(writers.into_iter().map(|h| h.join().unwrap()).collect());
    assert!(
        read_all(s.vol.as_ref()) == want,
        "volume differs from the writers' model"
    );
    assert!(
        s.world.target.contents() == want,
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
        s.world.source.contents() == want,
        "source differs from the writers' model after abort"
    );
}

/// What one writer thread knows of its own slots: every acknowledged
/// value, what its last completed flush covered, and what it wrote since.
struct Owned {
    acked: Vec<u8>,
    flushed: Vec<u8>,
    since: Vec<(u64, Vec<u8>)>,
    cut: Option<(u64, Vec<u8>)>,
}

/// Writers and flushes on four threads race the copier thread until the
/// armed fault point crashes the "process"; returns each thread's view.
fn crash_under_load(s: &Setup, faults: &Faults, crash_at: u64, ops: u64) -> Vec<Owned> {
    let copier = Copier::spawn(s.vol.clone(), CopierConfig::default()).unwrap();
    copier.set_rate_limit(None).unwrap();
    copier.set_adaptive(false).unwrap();
    faults.arm(crash_at);
    let views = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let vol = s.vol.clone();
                let model = s.model.clone();
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(t + 100);
                    let slots: Vec<u64> = (0..SIZE / SLOT).filter(|s| s % THREADS == t).collect();
                    let mut me = Owned {
                        acked: model.clone(),
                        flushed: model,
                        since: Vec::new(),
                        cut: None,
                    };
                    for _ in 0..ops {
                        let slot = slots[rng.random_range(0..slots.len())];
                        let off = slot * SLOT + rng.random_range(0..SLOT / 2);
                        let len = rng.random_range(1..=SLOT / 2);
                        if rng.random_range(0..8) == 0 {
                            // Everything acknowledged so far must be durable
                            // once this returns.
                            let covered = me.acked.clone();
                            if vol.flush().is_err() {
                                break;
                            }
                            me.flushed = covered;
                            me.since.clear();
                            continue;
                        }
                        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                        if vol.write_at(&data, off).is_err() {
                            me.cut = Some((off, data));
                            break;
                        }
                        me.acked[off as usize..(off + len) as usize].copy_from_slice(&data);
                        me.since.push((off, data));
                    }
                    me
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(copier);
    views
}

fn owned_ranges(t: u64) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..SIZE / SLOT)
        .filter(move |s| s % THREADS == t)
        .map(|s| (s * SLOT) as usize..((s + 1) * SLOT) as usize)
}

/// A crash at a random point while writers, flushes and the copier run,
/// both ways. After a process crash each thread's acknowledged writes read
/// back (the write the crash cut short all old or all new); after power
/// loss every byte is what the thread's last flush covered or something it
/// wrote since.
#[test]
fn crash_while_writers_flush_and_the_copier_runs_keeps_what_was_acknowledged() {
    for case in 0..12u64 {
        let power = case % 2 == 1;
        let seed = 40 + case;
        // Dry run: the number of device calls this workload makes.
        let dry = setup(seed);
        let dry_faults = dry.world.faults.clone();
        crash_under_load(&dry, &dry_faults, u64::MAX, 150);
        let mut total = dry_faults.points();
        // The copier's share of the device calls depends on scheduling, so
        // a run can make fewer calls than the dry run did. A run that ends
        // before its crash point is tried again with the point taken from
        // that run's own count; three misses in a row fail the test.
        let mut attempt = 0;
        let (s, faults, views, crash_at) = loop {
            let crash_at = total * (case + 1) / 14;
            let s = setup(seed);
            let faults = s.world.faults.clone();
            let views = crash_under_load(&s, &faults, crash_at, 150);
            if faults.crashed() {
                break (s, faults, views, crash_at);
            }
            attempt += 1;
            assert!(
                attempt < 3,
                "case {case}: point {crash_at} of {total} not reached in {attempt} runs"
            );
            total = faults.points();
        };
        faults.disarm();
        let mut rng = StdRng::seed_from_u64(seed);
        if power {
            s.world.power_loss(&mut rng);
        }
        let vol = s.world.reopen().unwrap().volume();
        let got = read_all(vol.as_ref());
        for (t, me) in views.iter().enumerate() {
            let cut_ok = |i: usize| {
                me.cut.as_ref().is_some_and(|(off, d)| {
                    let o = *off as usize;
                    i >= o && i < o + d.len() && got[i] == d[i - o]
                })
            };
            if let Some((off, d)) = &me.cut {
                // The cut-short write lies in one slot, so in one region:
                // all of it or none of it.
                let r = *off as usize..*off as usize + d.len();
                assert!(
                    got[r.clone()] == d[..] || got[r.clone()] == me.acked[r.clone()] || power,
                    "case {case}: thread {t}'s cut-short write is half there"
                );
            }
            for r in owned_ranges(t as u64) {
                for i in r {
                    let ok = if power {
                        got[i] == me.flushed[i]
                            || cut_ok(i)
                            || me.since.iter().any(|(off, d)| {
                                let o = *off as usize;
                                i >= o && i < o + d.len() && got[i] == d[i - o]
                            })
                    } else {
                        got[i] == me.acked[i] || cut_ok(i)
                    };
                    assert!(
                        ok,
                        "case {case} ({} crash at {crash_at}/{total}): thread {t} byte {i} is {}, acked {} flushed {}",
                        if power { "power" } else { "process" },
                        got[i],
                        me.acked[i],
                        me.flushed[i]
                    );
                }
            }
        }
    }
}

/// Once `set_paused(true)` returns, the copier copies nothing more: no
/// device call and no region marked while paused, and it finishes once
/// resumed. (It used to return while a step could still run.) The pause
/// is asked for while the copier is held inside a step, at its first
/// checkpoint's flush.
#[test]
fn a_pause_stops_copying_when_it_returns() {
    let s = setup(5);
    let held = s.world.target.hold_next_flush();
    let copier = Copier::spawn(
        s.vol.clone(),
        CopierConfig {
            batch_bytes: REGION,
            ..CopierConfig::default()
        },
    )
    .unwrap();
    copier.set_adaptive(false).unwrap();
    // 16 regions a second: the once-a-second checkpoint lands mid-copy.
    copier.set_rate_limit(Some(16 * REGION)).unwrap();
    held.arrived.recv().unwrap(); // mid-step, in a checkpoint's flush
    std::thread::scope(|scope| {
        let (returned_tx, returned) = std::sync::mpsc::channel();
        let copier = &copier;
        let pause = scope.spawn(move || {
            let r = copier.set_paused(true);
            returned_tx.send(()).unwrap();
            r
        });
        // The pause must not return while the step is held; the bound only
        // decides how long to give a broken one to do so.
        let returned_early = returned.recv_timeout(Duration::from_millis(300)).is_ok();
        held.release.send(()).unwrap();
        assert!(
            !returned_early,
            "the pause returned while the copier was mid-step"
        );
        pause.join().unwrap().unwrap();
    });
    let (regions, calls) = (s.vol.index().migrated_count(), s.world.faults.points());
    assert!(
        regions < SIZE / REGION,
        "the copy finished before the pause"
    );
    // The bound only gives a broken pause time to show itself.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        s.vol.index().migrated_count(),
        regions,
        "regions copied while paused"
    );
    assert_eq!(s.world.faults.points(), calls, "device calls while paused");
    copier.set_paused(false).unwrap();
    assert!(
        copier.wait_idle(Duration::from_secs(30)),
        "{:?}",
        copier.progress()
    );
    assert_eq!(s.vol.state(), MigrationState::Copied);
}
