//! Model-based tests of the migration engine against an in-memory reference
//! disk, with crashes injected at every fault point of the backends.
//!
//! Volumes are small (tens of KiB, 4 KiB regions) so that random operations
//! hit every routing case: whole and partial regions, spans across regions,
//! the short last region, holes, and every copier/abort/commit interleaving.
use std::sync::Arc;

use ferry_core::copier::{CopierConfig, CopyCursor, Step};
use ferry_core::migrate::Reopened;
use ferry_core::sim::{
    info, pieces_all_or_nothing, read_all, Faults, SimStore, SimVolume, SimWorld,
};
use ferry_core::{Error, MetaStore, MigratingVolume, MigrationPlan, MigrationState, Volume};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REGION: u64 = 4096;

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: u64, seed: u8 },
    Zero { off: u64, len: u64, discard: bool },
    Read { off: u64, len: u64 },
    Flush,
    Copy { steps: u8 },
    Abort,
    Commit,
}

fn op_strategy(size: u64) -> impl Strategy<Value = Op> {
    let span = (0..size, 1..(3 * REGION + 100));
    prop_oneof![
        5 => span.clone().prop_flat_map(|(off, len)| (Just(off), Just(len), any::<u8>()))
            .prop_map(|(off, len, seed)| Op::Write { off, len, seed }),
        // Region-aligned writes, so whole-region paths are common.
        2 => (0..size / REGION, 1..3u64, any::<u8>())
            .prop_map(|(r, n, seed)| Op::Write { off: r * REGION, len: n * REGION, seed }),
        2 => (span.clone(), any::<bool>()).prop_map(|((off, len), discard)| Op::Zero { off, len, discard }),
        3 => span.prop_map(|(off, len)| Op::Read { off, len }),
        1 => Just(Op::Flush),
        3 => (1..6u8).prop_map(|steps| Op::Copy { steps }),
        1 => Just(Op::Abort),
        1 => Just(Op::Commit),
    ]
}

fn pattern(len: usize, seed: u8, off: u64) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add(((off as usize + i) % 251) as u8) | 1)
        .collect()
}

/// A world of `size` bytes whose source holds `initial` (zeroes past it).
fn world(size: u64, initial: &[u8]) -> SimWorld {
    let mut data = initial.to_vec();
    data.resize(size as usize, 0);
    SimWorld::new(&data, REGION)
}

fn start(world: &SimWorld) -> ferry_core::Result<Arc<MigratingVolume>> {
    world.start(world.plan())
}

/// The volume a restarted host serves.
fn reopen(world: &SimWorld) -> ferry_core::Result<Arc<dyn Volume>> {
    world.reopen().map(|r| r.volume())
}

/// The migration a restarted host resumes, if one is still in progress.
fn reopen_migrating(world: &SimWorld) -> Option<Arc<MigratingVolume>> {
    match world.reopen().unwrap() {
        Reopened::Migrating(m) => Some(m),
        Reopened::Plain(_) => None,
    }
}

/// Device calls the ops make on a fresh world, counted from the start of
/// the migration (`count_start`) or from just after it.
fn dry_run_points(seed: u64, size: u64, ops: &[Op], count_start: bool) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = initial_data(size, &mut rng);
    let world = world(size, &model);
    if count_start {
        world.faults.arm(u64::MAX);
    }
    let vol = start(&world).unwrap();
    if !count_start {
        world.faults.arm(u64::MAX);
    }
    let mut cursor = CopyCursor::new(small_config());
    for op in ops {
        apply(&vol, &mut cursor, &mut model, op).unwrap();
    }
    world.faults.points()
}

fn initial_data(size: u64, rng: &mut StdRng) -> Vec<u8> {
    let mut data = vec![0u8; size as usize];
    // Every third region is a hole; others hold random bytes.
    for (i, chunk) in data.chunks_mut(REGION as usize).enumerate() {
        if i % 3 != 1 {
            rng.fill(chunk);
        }
    }
    data
}

/// Applies one op to the volume and, when acknowledged, to the model.
/// Returns the op's error, if any.
fn apply(
    vol: &MigratingVolume,
    cursor: &mut CopyCursor,
    model: &mut [u8],
    op: &Op,
) -> Result<(), Error> {
    let size = model.len() as u64;
    let clip = |off: u64, len: u64| (off, len.min(size - off));
    match *op {
        Op::Write { off, len, seed } => {
            let (off, len) = clip(off, len);
            let data = pattern(len as usize, seed, off);
            vol.write_at(&data, off)?;
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
        Op::Zero { off, len, discard } => {
            let (off, len) = clip(off, len);
            if discard {
                vol.discard(off, len)?;
            } else {
                vol.write_zeroes(off, len)?;
            }
            model[off as usize..(off + len) as usize].fill(0);
        }
        Op::Read { off, len } => {
            let (off, len) = clip(off, len);
            let mut buf = vec![0u8; len as usize];
            vol.read_at(&mut buf, off)?;
            assert_eq!(
                buf,
                &model[off as usize..(off + len) as usize],
                "read {off}+{len} differs from the model"
            );
        }
        Op::Flush => vol.flush()?,
        Op::Copy { steps } => {
            for _ in 0..steps {
                if cursor.step(vol)? == Step::Finished {
                    break;
                }
            }
        }
        Op::Abort => match vol.abort() {
            Ok(()) | Err(Error::WrongState { .. }) => {}
            Err(e) => return Err(e),
        },
        Op::Commit => match vol.commit() {
            Ok(()) | Err(Error::NotCopied { .. }) | Err(Error::WrongState { .. }) => {}
            Err(e) => return Err(e),
        },
    }
    Ok(())
}

fn small_config() -> CopierConfig {
    CopierConfig {
        batch_bytes: 2 * REGION,
        batch_age: std::time::Duration::from_secs(3600),
        // One region per step keeps the fault points in a fixed order, so
        // proptest can replay and shrink failures.
        parallel: 1,
        ..CopierConfig::default()
    }
}

/// Drives a migration to its end (commit, or the end of an abort).
fn finish(vol: &MigratingVolume) {
    let mut cursor = CopyCursor::new(small_config());
    cursor.run_to_end(vol).unwrap();
    if vol.state() == MigrationState::Copied {
        vol.commit().unwrap();
    }
}

/// Sizes that exercise an exact multiple of the region and a short tail.
fn size_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![Just(16 * REGION), Just(12 * REGION + 1536)]
}

proptest! {
    // FERRY_PROPTEST_CASES raises the count for soak runs.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("FERRY_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300),
        ..ProptestConfig::default()
    })]

    /// Every read matches the model at every point, and after driving the
    /// migration to its end the surviving volume holds the model.
    #[test]
    fn random_ops_match_reference_disk(
        size in size_strategy(),
        seed in any::<u64>(),
        ops in proptest::collection::vec(op_strategy(16 * REGION), 1..60),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = initial_data(size, &mut rng);
        let world = world(size, &model);
        let vol = start(&world).unwrap();
        let mut cursor = CopyCursor::new(small_config());
        for op in &ops {
            let op = clamp(op, size);
            apply(&vol, &mut cursor, &mut model, &op).unwrap();
        }
        prop_assert!(same(&read_all(vol.as_ref()), &model), "{}", diff(&read_all(vol.as_ref()), &model));
        finish(&vol);
        prop_assert!(same(&read_all(vol.as_ref()), &model), "{}", diff(&read_all(vol.as_ref()), &model));
        // The migration ended one way or the other; what a restart opens
        // holds the same bytes.
        drop(vol);
        let reopened = reopen(&world).unwrap();
        prop_assert!(same(&read_all(reopened.as_ref()), &model), "{}", diff(&read_all(reopened.as_ref()), &model));
    }

    /// Abort at a random point, finish the copy-back, and the source alone
    /// holds every acknowledged write; the target is discarded.
    #[test]
    fn abort_at_random_point_leaves_source_complete(
        seed in any::<u64>(),
        ops in proptest::collection::vec(op_strategy(16 * REGION), 1..50),
        tail in proptest::collection::vec(op_strategy(16 * REGION), 0..20),
    ) {
        let size = 16 * REGION;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = initial_data(size, &mut rng);
        let world = world(size, &model);
        let vol = start(&world).unwrap();
        let mut cursor = CopyCursor::new(small_config());
        for op in ops.iter().filter(|o| !matches!(o, Op::Abort | Op::Commit)) {
            apply(&vol, &mut cursor, &mut model, op).unwrap();
        }
        vol.abort().unwrap();
        // I/O keeps flowing during the copy-back.
        for op in tail.iter().filter(|o| !matches!(o, Op::Abort | Op::Commit)) {
            apply(&vol, &mut cursor, &mut model, op).unwrap();
        }
        cursor.run_to_end(&vol).unwrap();
        prop_assert_eq!(vol.state(), MigrationState::Aborted);
        prop_assert!(world.target_store.destroyed());
        prop_assert_eq!(world.source_store.load_source_marker().unwrap(), None);
        prop_assert!(same(&world.source.contents(), &model), "{}", diff(&world.source.contents(), &model));
    }

    /// A crash (process kill or power loss) at any fault point: afterwards
    /// the reopened volume holds every acknowledged write (power loss: every
    /// write acknowledged before the last acknowledged flush), the migration
    /// resumes, and it can be finished without losing anything. The crash
    /// point is drawn from a dry run's count, so every case crashes; a
    /// second crash may hit the recovery itself, and a kill -9 may be
    /// followed by a power loss before the recovery.
    #[test]
    fn crash_at_any_point_then_reopen_keeps_acknowledged_writes(
        seed in any::<u64>(),
        power in any::<bool>(),
        kill_then_power in any::<bool>(),
        abort_after in any::<bool>(),
        crash_frac in 0.0f64..1.0,
        recovery_crash in proptest::option::of(0.0f64..1.0),
        ops in proptest::collection::vec(op_strategy(16 * REGION), 1..60),
    ) {
        let size = 16 * REGION;
        // Dry run: how many fault points these ops pass.
        let points = dry_run_points(seed, size, &ops, true);
        let crash_at = (crash_frac * points as f64) as u64;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = initial_data(size, &mut rng);
        let world = world(size, &model);
        world.faults.arm(crash_at);
        // What may be on disk for each byte: the value at the last flush and
        // every value written since (power loss may keep any of them).
        let mut durable = model.clone();
        let mut since_flush: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut in_flight: Option<(u64, Vec<u8>)> = None;
        if let Ok(vol) = start(&world) {
            let mut cursor = CopyCursor::new(small_config());
            for op in &ops {
                let before = model.clone();
                match apply(&vol, &mut cursor, &mut model, op) {
                    Ok(()) => {
                        if matches!(op, Op::Flush) {
                            durable = model.clone();
                            since_flush.clear();
                        } else if let Some(w) = written_range(op, size, &before, &model) {
                            since_flush.push(w);
                        }
                    }
                    Err(Error::Injected(_)) | Err(Error::Fenced(_)) => {
                        in_flight = intended(op, size);
                        break;
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }
        prop_assert!(world.faults.crashed(), "point {} of {} was not reached", crash_at, points);
        // Restart.
        world.faults.disarm();
        if !power && kill_then_power {
            // kill -9, a reopen that serves nothing, then power loss.
            drop(reopen(&world).unwrap());
        }
        let power = power || kill_then_power;
        if power {
            world.power_loss(&mut rng);
        }
        if let Some(frac) = recovery_crash {
            // The recovery crashes too (a process crash in the same boot),
            // at a point of its own: the reopen and the rest of the copy.
            world.faults.arm(u64::MAX);
            if let Some(m) = reopen_migrating(&world) {
                let _ = CopyCursor::new(small_config()).run_to_end(&m);
            }
            let recovery_points = world.faults.points();
            world.faults.arm((frac * recovery_points as f64) as u64);
            // The recovery may crash anywhere, so its errors are expected.
            if let Ok(Reopened::Migrating(m)) = world.reopen() {
                let _ = CopyCursor::new(small_config()).run_to_end(&m);
            }
            world.faults.disarm();
        }
        let vol = reopen(&world).unwrap();
        let got = read_all(vol.as_ref());
        if !power {
            if let Some((off, data)) = &in_flight {
                if let Err(e) = pieces_all_or_nothing(&got, &model, *off, data, REGION) {
                    prop_assert!(false, "{}", e);
                }
            }
        }
        for i in 0..size as usize {
            let mut ok = got[i] == model[i];
            if let Some((off, data)) = &in_flight {
                let o = *off as usize;
                ok |= i >= o && i < o + data.len() && got[i] == data[i - o];
            }
            if power {
                ok |= got[i] == durable[i];
                ok |= since_flush.iter().any(|(off, data)| {
                    let o = *off as usize;
                    i >= o && i < o + data.len() && got[i] == data[i - o]
                });
            }
            prop_assert!(ok, "byte {} is {} after {} crash at point {}, model {} durable {}",
                i, got[i], if power { "power" } else { "process" }, crash_at, model[i], durable[i]);
        }
        // Whatever survived is now the truth; finishing must keep it.
        drop(vol);
        if let Some(m) = reopen_migrating(&world) {
            if abort_after {
                m.abort().unwrap();
            }
            finish(&m);
            prop_assert!(same(&read_all(m.as_ref()), &got), "after finish: {}", diff(&read_all(m.as_ref()), &got));
        }
        let again = reopen(&world).unwrap();
        prop_assert!(same(&read_all(again.as_ref()), &got), "after reopen: {}", diff(&read_all(again.as_ref()), &got));
    }

    /// One device call fails and the process carries on. The op that saw
    /// it fails; a failed metadata write or flush fences the volume, so no
    /// later op is acknowledged on top of it; a failed data write does
    /// not. Every acknowledged write reads back, now and after a restart.
    #[test]
    fn one_failed_device_call_is_reported_and_nothing_acknowledged_is_lost(
        seed in any::<u64>(),
        fail_frac in 0.0f64..1.0,
        ops in proptest::collection::vec(op_strategy(16 * REGION), 1..60),
    ) {
        let size = 16 * REGION;
        let points = dry_run_points(seed, size, &ops, false);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut model = initial_data(size, &mut rng);
        let world = world(size, &model);
        let vol = start(&world).unwrap();
        world.faults.fail_once((fail_frac * points as f64) as u64);
        let mut cursor = CopyCursor::new(small_config());
        let mut failed = false;
        let mut uncertain: Option<(u64, Vec<u8>)> = None;
        for op in &ops {
            match apply(&vol, &mut cursor, &mut model, op) {
                Ok(()) => {}
                Err(Error::Injected(_)) if !failed => {
                    failed = true;
                    // The failed op's pieces are each old or new; adopt
                    // what is there.
                    if let Some((off, data)) = intended(op, size) {
                        if vol.is_fenced() {
                            uncertain = Some((off, data));
                            continue;
                        }
                        let mut got = vec![0u8; data.len()];
                        vol.read_at(&mut got, off).unwrap();
                        model[off as usize..off as usize + data.len()].copy_from_slice(&got);
                    }
                }
                Err(Error::Fenced(_)) => prop_assert!(failed, "fenced without a failure"),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        world.faults.disarm();
        if vol.is_fenced() {
            // Fenced after the failure: nothing was acknowledged since. A
            // restart must hold every write acknowledged before it.
            drop(vol);
            let again = reopen(&world).unwrap();
            let got = read_all(again.as_ref());
            if let Some((off, data)) = &uncertain {
                // The failed op: each region piece all old or all new.
                if let Err(e) = pieces_all_or_nothing(&got, &model, *off, data, REGION) {
                    prop_assert!(false, "{}", e);
                }
                let r = *off as usize..*off as usize + data.len();
                model[r.clone()].copy_from_slice(&got[r]);
            }
            prop_assert!(same(&got, &model), "after fence and restart: {}", diff(&got, &model));
        } else {
            prop_assert!(same(&read_all(vol.as_ref()), &model), "{}", diff(&read_all(vol.as_ref()), &model));
            drop(vol);
            let again = reopen(&world).unwrap();
            prop_assert!(same(&read_all(again.as_ref()), &model), "after restart: {}", diff(&read_all(again.as_ref()), &model));
        }
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a == b
}

/// Where two images first differ, for failure messages that stay readable.
fn diff(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => format!(
            "first difference at byte {i} (region {}): got {} want {}",
            i as u64 / REGION,
            got[i],
            want[i]
        ),
        None => format!("lengths {} vs {}", got.len(), want.len()),
    }
}

fn clamp(op: &Op, size: u64) -> Op {
    let fix = |off: u64| off.min(size - 1);
    match op.clone() {
        Op::Write { off, len, seed } => Op::Write {
            off: fix(off),
            len,
            seed,
        },
        Op::Zero { off, len, discard } => Op::Zero {
            off: fix(off),
            len,
            discard,
        },
        Op::Read { off, len } => Op::Read { off: fix(off), len },
        other => other,
    }
}

/// The bytes an acknowledged write-like op left in the model.
fn written_range(op: &Op, size: u64, _before: &[u8], after: &[u8]) -> Option<(u64, Vec<u8>)> {
    let (off, len) = match *op {
        Op::Write { off, len, .. } | Op::Zero { off, len, .. } => (off, len.min(size - off)),
        _ => return None,
    };
    Some((off, after[off as usize..(off + len) as usize].to_vec()))
}

/// The bytes a write-like op meant to leave, for the op a crash cut short.
fn intended(op: &Op, size: u64) -> Option<(u64, Vec<u8>)> {
    match *op {
        Op::Write { off, len, seed } => {
            let len = len.min(size - off);
            Some((off, pattern(len as usize, seed, off)))
        }
        Op::Zero { off, len, .. } => Some((off, vec![0; len.min(size - off) as usize])),
        _ => None,
    }
}

#[test]
fn bad_region_size_is_refused_and_nothing_written() {
    let world = world(16 * REGION, &[]);
    let err = MigratingVolume::start(
        world.source.clone(),
        world.source_store.clone(),
        world.target.clone(),
        world.target_store.clone(),
        MigrationPlan {
            source_spec: "s".into(),
            target_spec: "t".into(),
            source_info: info(&[]),
            region_size: 3 * 4096,
            rate_limit: None,
            adaptive: false,
            impact_percent: None,
            floor_rate: None,
            priority: None,
            paused: false,
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::BadRegionSize(12288)), "{err}");
    assert!(world.target_store.load_record().unwrap().is_none());
    assert!(world.source_store.load_source_marker().unwrap().is_none());
}

#[test]
fn target_smaller_than_source_is_refused() {
    let faults = Faults::new();
    let source = SimVolume::new("src", 8 * REGION, REGION, faults.clone());
    let target = SimVolume::new("dst", 4 * REGION, REGION, faults.clone());
    let tstore = SimStore::new("dst", faults.clone());
    let err = MigratingVolume::start(
        source,
        SimStore::new("src", faults.clone()),
        target,
        tstore.clone(),
        MigrationPlan {
            source_spec: "s".into(),
            target_spec: "t".into(),
            source_info: info(&[]),
            region_size: REGION,
            rate_limit: None,
            adaptive: false,
            impact_percent: None,
            floor_rate: None,
            priority: None,
            paused: false,
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::TargetTooSmall { .. }), "{err}");
    assert!(tstore.load_record().unwrap().is_none());
}

#[test]
fn source_already_migrating_is_refused() {
    let world = world(16 * REGION, &[]);
    let _vol = start(&world).unwrap();
    let other_target = SimVolume::new("dst2", 16 * REGION, REGION, world.faults.clone());
    let other_store = SimStore::new("dst2", world.faults.clone());
    let err = MigratingVolume::start(
        world.source.clone(),
        world.source_store.clone(),
        other_target,
        other_store.clone(),
        MigrationPlan {
            source_spec: "s".into(),
            target_spec: "t2".into(),
            source_info: info(&[]),
            region_size: REGION,
            rate_limit: None,
            adaptive: false,
            impact_percent: None,
            floor_rate: None,
            priority: None,
            paused: false,
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, Error::SourceBusy { .. }), "{err}");
    assert!(err.to_string().contains("sim:dst"), "{err}");
    assert!(other_store.load_record().unwrap().is_none());
}

#[test]
fn corrupt_record_is_reported_not_guessed() {
    let world = world(16 * REGION, &[]);
    drop(start(&world).unwrap());
    let mut raw = world.target_store.raw_record().unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x20;
    world.target_store.set_raw_record(Some(raw));
    let err = reopen(&world).err().unwrap();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn corrupt_index_is_reported_not_guessed() {
    let world = world(16 * REGION, &[]);
    drop(start(&world).unwrap());
    world.target_store.set_raw_index(vec![0xff; 40]);
    let err = reopen(&world).err().unwrap();
    assert!(err.to_string().contains("index"), "{err}");
}

#[test]
fn commit_before_copy_finishes_is_refused_with_counts() {
    let world = world(16 * REGION, &[]);
    let vol = start(&world).unwrap();
    let err = vol.commit().unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotCopied {
                remaining: 16,
                total: 16
            }
        ),
        "{err}"
    );
}

#[test]
fn holes_are_marked_without_writing_the_target() {
    let size = 16 * REGION;
    let mut rng = StdRng::seed_from_u64(7);
    let model = initial_data(size, &mut rng);
    let world = world(size, &model);
    let vol = start(&world).unwrap();
    finish(&vol);
    assert_eq!(vol.state(), MigrationState::Committed);
    // Regions 1, 4, 7, ... were holes in the source and stay holes.
    let holes = world.target.allocated(REGION, REGION).unwrap();
    assert!(holes.is_empty(), "{holes:?}");
    assert_eq!(world.target.contents(), model);
}

#[test]
fn failed_flush_fences_the_volume() {
    let world = world(16 * REGION, &[]);
    let vol = start(&world).unwrap();
    vol.write_at(&[1u8; 512], 0).unwrap();
    world.faults.arm(0);
    assert!(vol.flush().is_err());
    world.faults.disarm();
    // The fault is gone, but the fence stays until reopen.
    let err = vol.write_at(&[2u8; 512], 0).unwrap_err();
    assert!(matches!(err, Error::Fenced(_)), "{err}");
}
