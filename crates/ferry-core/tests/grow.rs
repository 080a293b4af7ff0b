//! Growing a volume while it is being migrated, crashed at every named
//! point it reaches (`faults::GROW`, and the checkpoint and index points
//! it passes on the way), both ways: a process crash (the page cache
//! survives) and power loss (unflushed writes may be lost, the boot id
//! changes). After each crash the volume must reopen, at the old size or
//! the new one, holding what the reference model allows; writes past the
//! old end acknowledged before the crash mean it must be the new size.
//! A crash *during* the reopen that finishes a grow cut short is crashed
//! too. Then a second life: grown (again, if the crash undid it), written
//! past the old end, copied to the end, committed, reopened, checked.
use std::collections::BTreeSet;

use ferry_core::copier::{CopierConfig, CopyCursor, Step};
use ferry_core::migrate::Reopened;
use ferry_core::sim::{read_all, ReferenceDisk, SimWorld};
use ferry_core::{faults, Error, Volume};
use rand::rngs::StdRng;
use rand::SeedableRng;

const REGION: u64 = 4096;
/// Twelve regions and a short tail.
const SIZE: u64 = 12 * REGION + 1536;
/// Five more regions, and the short tail made whole.
const NEW: u64 = 18 * REGION;

#[derive(Debug, Clone, Copy)]
enum Op {
    Start,
    Write { off: u64, len: u64, seed: u8 },
    Flush,
    Copy { steps: u32 },
    Grow(u64),
    Commit,
}
use Op::*;

fn scenario() -> Vec<Op> {
    vec![
        Start,
        Write {
            off: 100,
            len: 600,
            seed: 1,
        },
        Write {
            off: 3 * REGION,
            len: REGION,
            seed: 2,
        },
        Flush,
        Copy { steps: 3 },
        // Not flushed before the grow: its checkpoint makes it durable.
        Write {
            off: 5 * REGION + 7,
            len: 300,
            seed: 3,
        },
        Write {
            off: 12 * REGION,
            len: 1536,
            seed: 4,
        },
        Grow(NEW),
        Write {
            off: SIZE + 100,
            len: 2000,
            seed: 5,
        },
        Write {
            off: 12 * REGION + 10,
            len: 3000,
            seed: 6,
        },
        Flush,
        Copy { steps: 100 },
        Write {
            off: 2 * REGION,
            len: 10,
            seed: 7,
        },
        Commit,
        Flush,
    ]
}

fn pattern(len: u64, seed: u8, off: u64) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(((off + i) % 251) as u8) | 1)
        .collect()
}

fn initial() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 253) as u8 ^ 0x5a).collect()
}

fn config() -> CopierConfig {
    CopierConfig {
        batch_bytes: 2 * REGION,
        batch_age: std::time::Duration::from_secs(3600),
        parallel: 1,
        ..CopierConfig::default()
    }
}

/// The model at the new size: the bytes a grow adds read as zeroes.
fn new_model() -> ReferenceDisk {
    let mut data = initial();
    data.resize(NEW as usize, 0);
    ReferenceDisk::new(data, REGION)
}

/// Runs `ops`; the model takes what is acknowledged. Returns the op a
/// crash cut short, and whether any acknowledged write lies past the old
/// end.
fn run(
    world: &SimWorld,
    served: &mut Option<Reopened>,
    ops: &[Op],
    model: &mut ReferenceDisk,
) -> Option<Op> {
    let mut cursor = CopyCursor::new(config());
    for op in ops {
        let result: ferry_core::Result<()> = (|| {
            match *op {
                Start => *served = Some(Reopened::Migrating(world.start(world.plan())?)),
                Write { off, len, seed } => {
                    let v = served.as_ref().expect("served").volume();
                    v.write_at(&pattern(len, seed, off), off)?
                }
                Flush => served.as_ref().expect("served").volume().flush()?,
                Copy { steps } => {
                    if let Some(Reopened::Migrating(m)) = served {
                        for _ in 0..steps {
                            if cursor.step(m)? == Step::Finished {
                                break;
                            }
                        }
                    }
                }
                Grow(size) => match served {
                    Some(Reopened::Migrating(m)) => {
                        let grown = m.grow(size)?;
                        *served = Some(Reopened::Migrating(grown));
                        cursor = CopyCursor::new(config());
                    }
                    // The migration never started: the plain source.
                    Some(Reopened::Plain(v)) => v.resize(size)?,
                    None => panic!("nothing served"),
                },
                Commit => {
                    if let Some(Reopened::Migrating(m)) = served {
                        m.commit()?;
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => match *op {
                Write { off, len, seed } => model.wrote(off, pattern(len, seed, off)),
                Flush => model.flushed(),
                _ => {}
            },
            Err(Error::Injected(_)) | Err(Error::Fenced(_)) => {
                assert!(world.faults.crashed(), "an error without a crash: {op:?}");
                return Some(*op);
            }
            Err(e) => panic!("{op:?} failed: {e}"),
        }
    }
    None
}

fn cut_write(op: Option<Op>) -> Option<(u64, Vec<u8>)> {
    match op {
        Some(Write { off, len, seed }) => Some((off, pattern(len, seed, off))),
        _ => None,
    }
}

/// Reopens after a crash and checks size and contents.
fn recover(
    world: &SimWorld,
    model: &mut ReferenceDisk,
    power: bool,
    cut: Option<Op>,
    ctx: &str,
) -> Reopened {
    let served = world
        .reopen()
        .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
    let v = served.volume();
    let size = v.size();
    assert!(
        size == SIZE || size == NEW,
        "{ctx}: reopened at {size} bytes"
    );
    let past_end = model.acked[SIZE as usize..].iter().any(|&b| b != 0);
    if past_end && !power {
        assert_eq!(
            size, NEW,
            "{ctx}: writes past the old end were acknowledged"
        );
    }
    // Past the end of a volume at the old size is what a grow adds:
    // zeroes, which the model must then hold there too.
    let mut got = read_all(v.as_ref());
    got.resize(NEW as usize, 0);
    if let Some((off, data)) = cut_write(cut) {
        assert!(
            off + data.len() as u64 <= size,
            "{ctx}: a write past the old end was cut short, yet it reopened at {size} bytes"
        );
    }
    let check = if power {
        model.check_power_loss(&got, cut_write(cut))
    } else {
        model.check_process_crash(&got, cut_write(cut))
    };
    check.unwrap_or_else(|e| panic!("{ctx}: {e}"));
    served
}

/// After a recovery: grown if the crash undid the grow, written past the
/// old end, copied to the end, committed, reopened, checked.
fn second_life(world: &SimWorld, served: Reopened, model: &mut ReferenceDisk, ctx: &str) {
    let mut served = Some(served);
    let mut ops = Vec::new();
    if served.as_ref().expect("served").volume().size() < NEW {
        ops.push(Grow(NEW));
    }
    ops.extend([
        Write {
            off: NEW - 700,
            len: 700,
            seed: 9,
        },
        Flush,
        Copy { steps: 200 },
        Commit,
        Flush,
    ]);
    assert!(
        run(world, &mut served, &ops, model).is_none(),
        "{ctx}: second life crashed"
    );
    let served = world
        .reopen()
        .unwrap_or_else(|e| panic!("{ctx}: final reopen: {e}"));
    assert_eq!(served.volume().size(), NEW, "{ctx}");
    model
        .check_process_crash(&read_all(served.volume().as_ref()), None)
        .unwrap_or_else(|e| panic!("{ctx}: after the commit: {e}"));
}

fn dry_run() -> Vec<&'static str> {
    let world = SimWorld::new(&initial(), REGION);
    let mut model = new_model();
    world.faults.arm_named(usize::MAX);
    assert!(run(&world, &mut None, &scenario(), &mut model).is_none());
    world.faults.named_trace()
}

#[test]
fn a_grow_crashed_at_every_point_reopens_at_the_old_or_new_size_with_every_acknowledged_write() {
    let trace = dry_run();
    let mut seen: BTreeSet<&'static str> = trace.iter().copied().collect();
    let mut crashes = 0;
    for (n, point) in trace.iter().enumerate() {
        for power in [false, true] {
            let ctx = format!("crash at {point} (named point {n}), power loss {power}");
            let world = SimWorld::new(&initial(), REGION);
            let mut model = new_model();
            let mut served = None;
            world.faults.arm_named(n);
            let cut = run(&world, &mut served, &scenario(), &mut model);
            assert!(cut.is_some(), "{ctx}: never reached");
            drop(served);
            world.faults.disarm();
            if power {
                world.power_loss(&mut StdRng::seed_from_u64(n as u64));
            }
            // The reopen crashed at each point it reaches, then reopened.
            world.faults.arm_named(usize::MAX);
            let reopened = world.reopen();
            let recovery = world.faults.named_trace();
            drop(reopened);
            for (r, rpoint) in recovery.iter().enumerate() {
                seen.insert(rpoint);
                let w2 = SimWorld::new(&initial(), REGION);
                let mut m2 = new_model();
                let mut s2 = None;
                w2.faults.arm_named(n);
                let cut2 = run(&w2, &mut s2, &scenario(), &mut m2);
                drop(s2);
                w2.faults.disarm();
                if power {
                    w2.power_loss(&mut StdRng::seed_from_u64(n as u64));
                }
                w2.faults.arm_named(r);
                assert!(
                    w2.reopen().is_err(),
                    "{ctx}: the reopen's crash at {rpoint}"
                );
                w2.faults.disarm();
                let ctx2 = format!("{ctx}, then at {rpoint} of its reopen");
                let s = recover(&w2, &mut m2, power, cut2, &ctx2);
                second_life(&w2, s, &mut m2, &ctx2);
                crashes += 1;
            }
            world.faults.disarm();
            let served = recover(&world, &mut model, power, cut, &ctx);
            second_life(&world, served, &mut model, &ctx);
            crashes += 1;
        }
    }
    for p in faults::GROW {
        assert!(seen.contains(p), "{p} is never reached");
    }
    let unknown: Vec<_> = seen.iter().filter(|p| !faults::ALL.contains(p)).collect();
    assert!(unknown.is_empty(), "points not in faults::ALL: {unknown:?}");
    eprintln!("{} named points, {crashes} crashes explored", trace.len());
}

#[test]
fn growing_refuses_to_shrink_and_a_finished_migration_resizes_its_leg() {
    let world = SimWorld::new(&initial(), REGION);
    let m = world.start(world.plan()).unwrap();
    let e = m.grow(SIZE - 512).err().expect("refused").to_string();
    assert!(e.contains("only grows"), "{e}");
    assert_eq!(m.size(), SIZE);
    let mut cursor = CopyCursor::new(config());
    while cursor.step(&m).unwrap() != Step::Finished {}
    m.commit().unwrap();
    let e = m.grow(NEW).err().expect("refused").to_string();
    assert!(e.contains("committed"), "{e}");
    m.resize(NEW).unwrap();
    assert_eq!((m.size(), world.target.size()), (NEW, NEW));
    let mut tail = vec![1u8; 512];
    m.read_at(&mut tail, NEW - 512).unwrap();
    assert!(tail.iter().all(|&b| b == 0));
}

#[test]
fn growing_a_copied_migration_copies_the_added_regions_before_a_commit() {
    use ferry_core::MigrationState;
    let world = SimWorld::new(&initial(), REGION);
    let m = world.start(world.plan()).unwrap();
    let mut cursor = CopyCursor::new(config());
    while cursor.step(&m).unwrap() != Step::Finished {}
    assert_eq!(m.state(), MigrationState::Copied);
    let g = m.grow(NEW).unwrap();
    assert_eq!(g.state(), MigrationState::Copying);
    assert_eq!(g.record().state, MigrationState::Copying);
    assert!(g.index().migrated_count() < g.index().regions());
    let e = g
        .commit()
        .expect_err("a commit before the added regions are copied");
    assert!(e.to_string().contains("not migrated yet"), "{e}");
    g.write_at(&pattern(1000, 3, SIZE + 10), SIZE + 10).unwrap();
    let mut cursor = CopyCursor::new(config());
    while cursor.step(&g).unwrap() != Step::Finished {}
    assert_eq!(g.state(), MigrationState::Copied);
    assert_eq!(g.index().migrated_count(), g.index().regions());
    g.commit().unwrap();
    let mut want = initial();
    want.resize(NEW as usize, 0);
    want[(SIZE + 10) as usize..(SIZE + 1010) as usize].copy_from_slice(&pattern(
        1000,
        3,
        SIZE + 10,
    ));
    assert_eq!(read_all(g.as_ref()), want);
    assert_eq!(world.target.contents(), want);
}

#[test]
fn a_grow_whose_index_would_be_huge_is_refused_before_anything_changes() {
    let world = SimWorld::new(&initial(), REGION);
    let m = world.start(world.plan()).unwrap();
    // 4 KiB regions: 2^46 bytes need a 6 GiB index.
    let e = m.grow(1 << 46).err().expect("refused").to_string();
    assert!(e.contains("region index would take"), "{e}");
    assert_eq!(
        (world.source.size(), world.target.size(), m.size()),
        (SIZE, SIZE, SIZE)
    );
    assert!(!m.is_fenced() && !m.index_replaced());
}
