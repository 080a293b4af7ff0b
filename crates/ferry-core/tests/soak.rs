//! The random model run long: writes, zeroings, flushes, copier steps,
//! aborts, commits and same-boot restarts at random, with crashes (process
//! or power loss) armed at random device calls, checked against a
//! reference disk after every crash. A finished migration is followed by
//! a new one from the volume it left, so a run never stops migrating.
//!
//! `FERRY_SOAK_OPS` sets the number of operations (default 20,000, which
//! CI runs); `scripts/soak.sh` runs 10^6 or more in a release build and
//! prints the counts.
use std::sync::Arc;

use ferry_core::copier::{CopierConfig, CopyCursor, Step};
use ferry_core::migrate::Reopened;
use ferry_core::sim::{read_all, ReferenceDisk, SimWorld};
use ferry_core::{Error, MigratingVolume, MigrationState, Volume};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const REGION: u64 = 4096;
/// Twenty regions and a short tail.
const SIZE: u64 = 20 * REGION + 1024;

fn config() -> CopierConfig {
    CopierConfig {
        batch_bytes: 3 * REGION,
        batch_age: std::time::Duration::from_secs(3600),
        parallel: 1,
        ..CopierConfig::default()
    }
}

#[derive(Default, Debug)]
struct Counts {
    ops: u64,
    acked_writes: u64,
    flushes: u64,
    process_crashes: u64,
    power_losses: u64,
    restarts: u64,
    migrations: u64,
    commits: u64,
    aborts: u64,
}

/// One migration's world and what it serves.
struct Life {
    world: SimWorld,
    served: Reopened,
    cursor: CopyCursor,
}

impl Life {
    /// A new migration out of a source holding `data` (durably).
    fn start(data: &[u8]) -> Life {
        let world = SimWorld::new(data, REGION);
        let m = world.start(world.plan()).unwrap();
        Life {
            world,
            served: Reopened::Migrating(m),
            cursor: CopyCursor::new(config()),
        }
    }

    fn volume(&self) -> Arc<dyn Volume> {
        self.served.volume()
    }

    fn migrating(&self) -> Option<&Arc<MigratingVolume>> {
        match &self.served {
            Reopened::Migrating(m) if !self.ended() => Some(m),
            _ => None,
        }
    }

    /// Whether the migration is over (committed, aborted, or reopened as
    /// the plain volume it left).
    fn ended(&self) -> bool {
        match &self.served {
            Reopened::Migrating(m) => {
                matches!(
                    m.state(),
                    MigrationState::Committed | MigrationState::Aborted
                )
            }
            Reopened::Plain(_) => true,
        }
    }
}

#[test]
fn random_model_with_restarts_and_power_losses() {
    let target: u64 = std::env::var("FERRY_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("FERRY_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut initial = vec![0u8; SIZE as usize];
    rng.fill(&mut initial[..]);
    let mut model = ReferenceDisk::new(initial.clone(), REGION);
    let mut life = Life::start(&initial);
    let mut counts = Counts {
        migrations: 1,
        ..Counts::default()
    };
    let mut armed = false;
    while counts.ops < target {
        counts.ops += 1;
        if !armed && rng.random_range(0..40) == 0 {
            // A crash somewhere in the next few dozen device calls.
            life.world.faults.arm(rng.random_range(0..60));
            armed = true;
        }
        let vol = life.volume();
        let roll = rng.random_range(0..100);
        let (result, intended): (ferry_core::Result<()>, Option<(u64, Vec<u8>)>) = match roll {
            0..=54 => {
                let off = rng.random_range(0..SIZE);
                let len = rng.random_range(1..=(3 * REGION).min(SIZE - off));
                let data: Vec<u8> = (0..len).map(|_| rng.random::<u8>() | 1).collect();
                (vol.write_at(&data, off), Some((off, data)))
            }
            55..=64 => {
                let off = rng.random_range(0..SIZE);
                let len = rng.random_range(1..=(2 * REGION).min(SIZE - off));
                let r = if rng.random_bool(0.5) {
                    vol.discard(off, len)
                } else {
                    vol.write_zeroes(off, len)
                };
                (r, Some((off, vec![0; len as usize])))
            }
            65..=76 => (vol.flush(), None),
            77..=91 => {
                let r = match life.migrating() {
                    Some(m) => {
                        let m = m.clone();
                        let mut r = Ok(());
                        for _ in 0..rng.random_range(1..6) {
                            match life.cursor.step(&m) {
                                Ok(Step::Finished) => break,
                                Ok(_) => {}
                                Err(e) => {
                                    r = Err(e);
                                    break;
                                }
                            }
                        }
                        r
                    }
                    None => Ok(()),
                };
                (r, None)
            }
            92..=93 => {
                let r = match life.migrating() {
                    Some(m) if m.state() != MigrationState::Aborting => {
                        counts.aborts += 1;
                        m.abort()
                    }
                    _ => Ok(()),
                };
                (r, None)
            }
            94..=96 => {
                let r = match life.migrating() {
                    Some(m) => match m.commit() {
                        Ok(()) => {
                            counts.commits += 1;
                            Ok(())
                        }
                        Err(Error::NotCopied { .. }) | Err(Error::WrongState { .. }) => Ok(()),
                        Err(e) => Err(e),
                    },
                    None => Ok(()),
                };
                (r, None)
            }
            _ => {
                // kill -9 and a reopen in the same boot, no crash armed.
                counts.restarts += 1;
                drop(vol);
                life.served = Reopened::Plain(life.world.source.clone());
                let r = life.world.reopen().map(|s| life.served = s);
                life.cursor = CopyCursor::new(config());
                (r, None)
            }
        };
        match result {
            Ok(()) => {
                if let Some((off, data)) = intended {
                    counts.acked_writes += 1;
                    model.wrote(off, data);
                } else if (65..=76).contains(&roll) {
                    counts.flushes += 1;
                    model.flushed();
                }
                if life.ended() && !armed {
                    // A migration that ended starts the next one from the
                    // volume it left, once that volume is flushed.
                    let vol = life.volume();
                    vol.flush().unwrap();
                    model.flushed();
                    let data = read_all(vol.as_ref());
                    assert_eq!(data, model.acked, "after the migration ended");
                    life = Life::start(&data);
                    counts.migrations += 1;
                }
            }
            Err(Error::Injected(_)) | Err(Error::Fenced(_)) => {
                assert!(
                    life.world.faults.crashed(),
                    "op {}: error without a crash",
                    counts.ops
                );
                armed = false;
                life.world.faults.disarm();
                let power = rng.random_bool(0.5);
                life.served = Reopened::Plain(life.world.source.clone());
                if power {
                    counts.power_losses += 1;
                    life.world.power_loss(&mut rng);
                } else {
                    counts.process_crashes += 1;
                }
                let served = life
                    .world
                    .reopen()
                    .unwrap_or_else(|e| panic!("op {}: reopen failed: {e}", counts.ops));
                let got = read_all(served.volume().as_ref());
                let checked = if power {
                    model.check_power_loss(&got, intended)
                } else {
                    model.check_process_crash(&got, intended)
                };
                if let Err(e) = checked {
                    panic!(
                        "op {} (seed {seed}), {} crash: {e}",
                        counts.ops,
                        if power { "power" } else { "process" }
                    );
                }
                life.served = served;
                life.cursor = CopyCursor::new(config());
            }
            Err(e) => panic!("op {}: unexpected error {e}", counts.ops),
        }
    }
    let got = read_all(life.volume().as_ref());
    assert_eq!(got, model.acked, "at the end of the soak");
    eprintln!("soak: {counts:?}");
}
