//! Crash-point exploration: every named fault point of the engine
//! (`ferry_core::faults`), every time a scenario reaches it, is a place
//! where the process dies. For each one the test crashes there both ways
//! (process crash: the page cache survives; power loss: unsynced writes
//! are dropped and the boot id changes), reopens, checks a reference
//! model, then lives a second life in the same boot (writes, a flush, a
//! kill -9, a reopen) and a power loss after it, checking the model after
//! each. A third pass also crashes *during the recovery* of every power
//! loss, at each point the recovery reaches.
//!
//! The model: `acked` is what every acknowledged write left, `durable` what
//! the last acknowledged flush covered, `since_flush` the writes
//! acknowledged after it. After a process crash the volume must read as
//! `acked`, except the op the crash cut short, each of whose region pieces
//! must be all old or all new. After power loss every byte must be
//! `durable`'s or one an unflushed (or cut-short) write wrote.
use std::collections::BTreeSet;
use std::sync::Arc;

use ferry_core::copier::{CopierConfig, CopyCursor, Step};
use ferry_core::migrate::Reopened;
use ferry_core::sim::{read_all, ReferenceDisk, SimWorld};
use ferry_core::{faults, Error, MigratingVolume, MigrationState, Volume};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REGION: u64 = 4096;
/// Twelve regions and a short tail.
const SIZE: u64 = 12 * REGION + 1536;

#[derive(Debug, Clone, Copy)]
enum Op {
    Start,
    Write {
        off: u64,
        len: u64,
        seed: u8,
    },
    Zero {
        off: u64,
        len: u64,
        discard: bool,
    },
    Flush,
    Copy {
        steps: u32,
    },
    Abort,
    Commit,
    /// kill -9 and reopen, in the same boot.
    Restart,
    /// The source refuses its next write (a thin source on a full pool).
    SourceFull,
}

use Op::*;

/// A migration carried to commit, with a same-boot restart in the middle.
fn forward() -> Vec<Op> {
    vec![
        Start,
        Write {
            off: 100,
            len: 600,
            seed: 1,
        }, // to both legs: region 0 is not copied yet
        Write {
            off: 3 * REGION,
            len: REGION,
            seed: 2,
        }, // whole region 3
        Write {
            off: 5 * REGION + 7,
            len: REGION + 9,
            seed: 3,
        }, // spans 5 and 6
        Zero {
            off: 7 * REGION + 512,
            len: 1024,
            discard: true,
        },
        Zero {
            off: 8 * REGION,
            len: REGION,
            discard: false,
        },
        Flush,
        Copy { steps: 3 },
        Write {
            off: REGION + 1,
            len: 33,
            seed: 4,
        },
        SourceFull,
        Write {
            off: 10 * REGION,
            len: 100,
            seed: 5,
        }, // the source refuses it: region 10 moves to the target now
        Flush,
        Restart,
        Write {
            off: 11 * REGION + 50,
            len: 50,
            seed: 6,
        },
        Write {
            off: 12 * REGION,
            len: 1536,
            seed: 7,
        }, // the short tail region
        Flush,
        Copy { steps: 100 },
        Write {
            off: 2 * REGION,
            len: 10,
            seed: 8,
        },
        Commit,
        Write {
            off: 4 * REGION,
            len: 20,
            seed: 9,
        },
        Flush,
    ]
}

/// A migration aborted half way, with I/O during the copy-back.
fn aborted() -> Vec<Op> {
    vec![
        Start,
        Write {
            off: 100,
            len: 600,
            seed: 11,
        },
        Write {
            off: 3 * REGION,
            len: REGION,
            seed: 12,
        },
        Flush,
        Copy { steps: 5 },
        Write {
            off: 6 * REGION + 3,
            len: 200,
            seed: 13,
        },
        Abort,
        Write {
            off: 120,
            len: 30,
            seed: 14,
        }, // migrated: both legs
        Write {
            off: 9 * REGION,
            len: 64,
            seed: 15,
        }, // not migrated: source
        Copy { steps: 2 },
        Flush,
        Restart,
        Write {
            off: 3 * REGION + 8,
            len: 8,
            seed: 16,
        },
        Copy { steps: 100 },
        Write {
            off: 5 * REGION,
            len: 10,
            seed: 17,
        },
        Flush,
    ]
}

fn pattern(len: u64, seed: u8, off: u64) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(((off + i) % 251) as u8) | 1)
        .collect()
}

fn config() -> CopierConfig {
    CopierConfig {
        batch_bytes: 2 * REGION,
        batch_age: std::time::Duration::from_secs(3600),
        parallel: 1,
        ..CopierConfig::default()
    }
}

fn initial() -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut data = vec![0u8; SIZE as usize];
    for (i, chunk) in data.chunks_mut(REGION as usize).enumerate() {
        if i % 4 != 2 {
            rng.fill(chunk); // every fourth region is a hole
        }
    }
    data
}

fn new_world() -> SimWorld {
    SimWorld::new(&initial(), REGION)
}

/// What a restarted host opens by the volume's name.
fn reopen(world: &SimWorld) -> ferry_core::Result<Served> {
    Ok(match world.reopen()? {
        Reopened::Migrating(m) => Served::Migrating(m),
        Reopened::Plain(v) => Served::Plain(v),
    })
}

enum Served {
    None,
    Plain(Arc<dyn Volume>),
    Migrating(Arc<MigratingVolume>),
}

impl Served {
    fn volume(&self) -> Option<&dyn Volume> {
        match self {
            Served::None => None,
            Served::Plain(v) => Some(v.as_ref()),
            Served::Migrating(m) => Some(m.as_ref()),
        }
    }
}

type Model = ReferenceDisk;

fn new_model() -> Model {
    ReferenceDisk::new(initial(), REGION)
}

/// The bytes a write-like op means to leave.
fn intended(op: &Op) -> Option<(u64, Vec<u8>)> {
    match *op {
        Write { off, len, seed } => Some((off, pattern(len, seed, off))),
        Zero { off, len, .. } => Some((off, vec![0; len as usize])),
        _ => None,
    }
}

/// Runs `ops` against `world`, updating `model` with what is acknowledged.
/// Returns the op a crash cut short, if one did.
fn run(world: &SimWorld, served: &mut Served, ops: &[Op], model: &mut Model) -> Option<Op> {
    let mut cursor = CopyCursor::new(config());
    for op in ops {
        let result: ferry_core::Result<()> = (|| {
            match *op {
                Start => *served = Served::Migrating(world.start(world.plan())?),
                Write { off, len, seed } => {
                    let data = pattern(len, seed, off);
                    served.volume().expect("served").write_at(&data, off)?;
                }
                Zero { off, len, discard } => {
                    let v = served.volume().expect("served");
                    if discard {
                        v.discard(off, len)?
                    } else {
                        v.write_zeroes(off, len)?
                    }
                }
                Flush => served.volume().expect("served").flush()?,
                Copy { steps } => {
                    if let Served::Migrating(m) = served {
                        for _ in 0..steps {
                            if cursor.step(m)? == Step::Finished {
                                break;
                            }
                        }
                    }
                }
                Abort => {
                    if let Served::Migrating(m) = served {
                        m.abort()?;
                    }
                }
                Commit => {
                    if let Served::Migrating(m) = served {
                        m.commit()?;
                    }
                }
                Restart => {
                    *served = Served::None;
                    *served = reopen(world)?;
                    cursor = CopyCursor::new(config());
                }
                SourceFull => world.source.refuse_next_write(),
            }
            Ok(())
        })();
        match result {
            Ok(()) => match intended(op) {
                Some((off, data)) => model.wrote(off, data),
                None if matches!(op, Flush) => model.flushed(),
                None => {}
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

/// Reopens after a crash and checks the model; returns what is served.
fn recover(world: &SimWorld, model: &mut Model, power: bool, cut: Option<Op>, ctx: &str) -> Served {
    let served = reopen(world).unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
    let got = read_all(served.volume().expect("served"));
    let cut = cut.as_ref().and_then(intended);
    if power {
        model
            .check_power_loss(&got, cut)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    } else {
        model
            .check_process_crash(&got, cut)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    }
    served
}

/// The second life after a recovery: writes and a flush, kill -9, reopen,
/// then power loss, reopen, and the migration driven to its end.
fn second_life(
    world: &SimWorld,
    mut served: Served,
    model: &mut Model,
    rng: &mut StdRng,
    ctx: &str,
) {
    let ops = [
        Write {
            off: 77,
            len: 300,
            seed: 21,
        },
        Write {
            off: 9 * REGION + 1,
            len: REGION,
            seed: 22,
        },
        Flush,
        Write {
            off: 6 * REGION,
            len: 40,
            seed: 23,
        },
    ];
    assert!(run(world, &mut served, &ops, model).is_none());
    drop(served);
    let served = recover(world, model, false, None, &format!("{ctx}, second kill -9"));
    drop(served);
    world.power_loss(rng);
    let served = recover(world, model, true, None, &format!("{ctx}, then power loss"));
    // Whatever survived must survive the end of the migration too.
    if let Served::Migrating(m) = &served {
        CopyCursor::new(config()).run_to_end(m).unwrap();
        if m.state() == MigrationState::Copied {
            m.commit().unwrap();
        }
        assert_eq!(
            read_all(m.as_ref()),
            model.acked,
            "{ctx}: finishing changed data"
        );
    }
    drop(served);
    let again = reopen(world).unwrap();
    assert_eq!(
        read_all(again.volume().unwrap()),
        model.acked,
        "{ctx}: the final reopen changed data"
    );
}

/// The named points a clean run of `ops` passes, in order.
fn dry_run(ops: &[Op]) -> Vec<&'static str> {
    let world = new_world();
    world.faults.arm_named(usize::MAX);
    let mut model = new_model();
    let mut served = Served::None;
    assert!(run(&world, &mut served, ops, &mut model).is_none());
    assert_eq!(
        read_all(served.volume().unwrap()),
        model.acked,
        "the clean run disagrees with the model"
    );
    world.faults.named_trace()
}

/// Named points a power-loss recovery of `crash_at` passes.
fn recovery_trace(ops: &[Op], crash_at: usize, seed: u64) -> Vec<&'static str> {
    let world = new_world();
    let mut model = new_model();
    let mut served = Served::None;
    world.faults.arm_named(crash_at);
    run(&world, &mut served, ops, &mut model);
    drop(served);
    world.faults.disarm();
    world.power_loss(&mut StdRng::seed_from_u64(seed));
    world.faults.arm_named(usize::MAX);
    let served = reopen(&world).unwrap();
    if let Served::Migrating(m) = &served {
        CopyCursor::new(config()).run_to_end(m).unwrap();
        if m.state() == MigrationState::Copied {
            m.commit().unwrap();
        }
    }
    world.faults.named_trace()
}

fn explore(name: &str, ops: &[Op]) -> (BTreeSet<&'static str>, usize) {
    let trace = dry_run(ops);
    let mut seen: BTreeSet<&'static str> = trace.iter().copied().collect();
    let mut cases = 0;
    for (at, point) in trace.iter().enumerate() {
        for power in [false, true] {
            let ctx = format!(
                "{name}: {} crash at named point {at} ({point})",
                if power { "power" } else { "process" }
            );
            let mut rng = StdRng::seed_from_u64(at as u64 * 2 + power as u64);
            let world = new_world();
            let mut model = new_model();
            let mut served = Served::None;
            world.faults.arm_named(at);
            let cut = run(&world, &mut served, ops, &mut model);
            assert!(
                world.faults.crashed(),
                "{ctx}: the armed point was not reached"
            );
            assert!(cut.is_some(), "{ctx}: the crash did not stop the run");
            drop(served);
            world.faults.disarm();
            if power {
                world.power_loss(&mut rng);
            }
            // Trace the recovery too: some points are only reached there.
            world.faults.arm_named(usize::MAX);
            let served = recover(&world, &mut model, power, cut, &ctx);
            second_life(&world, served, &mut model, &mut rng, &ctx);
            seen.extend(world.faults.named_trace());
            cases += 1;
        }
        // A crash during the recovery of a power loss at this point, at
        // each point the recovery passes.
        let seed = at as u64 + 1000;
        let recovery = recovery_trace(ops, at, seed);
        seen.extend(recovery.iter().copied());
        for (again, again_point) in recovery.iter().enumerate() {
            let ctx = format!(
                "{name}: power crash at {at} ({point}), then a crash in recovery at {again} ({again_point})"
            );
            let world = new_world();
            let mut model = new_model();
            let mut served = Served::None;
            world.faults.arm_named(at);
            let cut = run(&world, &mut served, ops, &mut model);
            drop(served);
            world.faults.disarm();
            let mut rng = StdRng::seed_from_u64(seed);
            world.power_loss(&mut rng);
            // The recovery, crashing at its `again`-th point.
            world.faults.arm_named(again);
            let mut served = match reopen(&world) {
                Ok(s) => s,
                Err(_) => Served::None,
            };
            if let Served::Migrating(m) = &served {
                let _ = CopyCursor::new(config()).run_to_end(m);
                if m.state() == MigrationState::Copied {
                    let _ = m.commit();
                }
            }
            assert!(
                world.faults.crashed(),
                "{ctx}: the armed point was not reached"
            );
            served = Served::None;
            drop(served);
            world.faults.disarm();
            // The recovery wrote nothing an initiator saw, so the first
            // power loss's rules still hold, now after a second crash of
            // either kind; check with a process crash, then power loss.
            let served = reopen(&world).unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
            let got = read_all(served.volume().unwrap());
            let mut m2 = model.clone();
            m2.check_power_loss(&got, cut.as_ref().and_then(intended))
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            second_life(&world, served, &mut m2, &mut rng, &ctx);
            cases += 1;
        }
    }
    (seen, cases)
}

#[test]
fn every_named_point_crashed_both_ways_keeps_every_acknowledged_write() {
    let (mut seen, forward_cases) = explore("forward", &forward());
    let (aborted_seen, aborted_cases) = explore("aborted", &aborted());
    seen.extend(aborted_seen);
    let all: BTreeSet<&'static str> = faults::ENGINE.iter().copied().collect();
    let unknown: Vec<_> = seen.difference(&all).collect();
    assert!(
        unknown.is_empty(),
        "points missing from faults::ENGINE: {unknown:?}"
    );
    let missed: Vec<_> = all.difference(&seen).collect();
    assert!(missed.is_empty(), "points no scenario reaches: {missed:?}");
    eprintln!(
        "crash points: {} named points, {} crash sequences (forward {forward_cases}, aborted {aborted_cases})",
        all.len(),
        forward_cases + aborted_cases
    );
}
