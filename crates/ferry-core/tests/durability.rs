//! Deterministic tests of the durability rule's hard cases: a flush after a
//! same-boot restart, flushes that overlap, and a failed index write.
//! Each builds the interleaving it needs with channels and fault points,
//! not sleeps, and checks what power loss *at the instant a flush returns*
//! would leave (`fork_power_lost`).
use std::sync::Arc;
use std::time::Duration;

use ferry_core::copier::{CopierConfig, CopyCursor};
use ferry_core::migrate::{reopen_target, Reopened};
use ferry_core::sim::{SimStore, SimVolume, SimWorld};
use ferry_core::{Error, MetaStore, MigratingVolume, MigrationPlan, Volume};

/// 16 KiB regions of 512-byte blocks, so an 8-block write is a partial
/// write (to both legs while its region is not copied yet).
const REGION: u64 = 16384;
const SIZE: u64 = 8 * REGION;

fn source_bytes() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8 | 0x80).collect()
}

fn world() -> SimWorld {
    SimWorld::new(&source_bytes(), REGION)
}

/// A paused migration: only the test's own writes move regions.
fn start(w: &SimWorld) -> Arc<MigratingVolume> {
    w.start(MigrationPlan {
        paused: true,
        ..w.plan()
    })
    .unwrap()
}

/// A restart: the migration reopened by the target's name.
fn reopen(w: &SimWorld) -> Arc<MigratingVolume> {
    match w.reopen().unwrap() {
        Reopened::Migrating(m) => m,
        Reopened::Plain(_) => panic!("the migration should still be in progress"),
    }
}

/// What power loss right now would leave, reopened after the reboot.
fn power_lost_now(w: &SimWorld) -> Arc<MigratingVolume> {
    let source: Arc<dyn Volume> = w.source.fork_power_lost();
    let source_store: Arc<dyn MetaStore> = w.source_store.fork_power_lost();
    let target: Arc<SimVolume> = w.target.fork_power_lost();
    let target_store: Arc<SimStore> = w.target_store.fork_power_lost();
    match reopen_target((target, target_store), |_| Ok((source, source_store))).unwrap() {
        Reopened::Migrating(m) => m,
        Reopened::Plain(_) => panic!("the migration should still be in progress"),
    }
}

fn read(vol: &dyn Volume, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    vol.read_at(&mut buf, off).unwrap();
    buf
}

/// Defect 1 of issue 13, in the engine: a region a killed process
/// migrated and left unconfirmed (then by a copy-up; now by a write of the
/// whole region), a restart in the same boot, then a write flushed twice.
/// Power loss after that must keep both writes.
#[test]
fn flush_after_a_same_boot_restart_confirms_what_the_dead_process_migrated() {
    let w = world();
    let vol = start(&w);
    let first = vec![0x11; REGION as usize]; // all of region 0: marked at once
    vol.write_at(&first, 0).unwrap();
    // kill -9: the page cache (and so the migrated bit) survives.
    drop(vol);
    let vol = reopen(&w);
    assert!(vol.index().is_migrated(0), "same boot: the bit is trusted");
    let second = vec![0x22; 512]; // LBA 8 with FUA, then SYNCHRONIZE CACHE
    vol.write_at(&second, 4096).unwrap();
    vol.flush().unwrap();
    vol.flush().unwrap();
    let after = power_lost_now(&w);
    assert_eq!(
        read(after.as_ref(), 0, 4096),
        first[..4096],
        "first write lost"
    );
    assert_eq!(
        read(after.as_ref(), 4096, 512),
        second,
        "flushed write lost"
    );
    assert_eq!(
        read(after.as_ref(), 4608, (REGION - 4608) as usize),
        first[4608..],
        "the rest of the first write lost"
    );
}

/// A partial write to a region not yet copied goes to both legs, and
/// reads of the region stay on the source until the copier has copied
/// it: so a flush must make the source durable too, or power loss would
/// lose a flushed write. Then the copier copies the region with the write
/// in it.
#[test]
fn a_flushed_write_to_a_region_not_yet_copied_survives_power_loss() {
    let w = world();
    let vol = start(&w);
    let data = vec![0x66; 512];
    vol.write_at(&data, REGION + 1024).unwrap();
    assert!(!vol.index().is_migrated(1), "no copy-up: the region stays");
    vol.flush().unwrap();
    let after = power_lost_now(&w);
    assert_eq!(read(after.as_ref(), REGION + 1024, 512), data);
    assert_eq!(
        read(after.as_ref(), REGION, 1024),
        source_bytes()[REGION as usize..REGION as usize + 1024]
    );
    // The copier carries the write across with the rest of the region.
    let mut cursor = CopyCursor::new(CopierConfig {
        parallel: 1,
        ..CopierConfig::default()
    });
    cursor.run_to_end(after.as_ref()).unwrap();
    assert!(after.index().is_migrated(1));
    assert_eq!(read(after.as_ref(), REGION + 1024, 512), data);
}

/// The source-written flag is set after the source write, not before:
/// a checkpoint that takes the flag while a write to a region not yet
/// copied is half way (on the target, not yet on the source) flushes the
/// source before that write lands there, and the flush asked after the
/// write must still flush the source. Power loss the instant that flush
/// returns keeps the write.
#[test]
fn a_checkpoint_during_a_write_to_both_legs_does_not_take_its_source_flush() {
    let w = world();
    let vol = start(&w);
    let data = vec![0x72; 512];
    let held = w.source.hold_next_write();
    std::thread::scope(|s| {
        let writer = s.spawn(|| vol.write_at(&data, 2 * REGION + 512));
        held.arrived.recv().unwrap(); // on the target, about to hit the source
        vol.flush().unwrap(); // a checkpoint while the write is half way
        held.release.send(()).unwrap();
        writer.join().unwrap().unwrap();
    });
    vol.flush().unwrap();
    let image = power_lost_now(&w);
    assert_eq!(read(image.as_ref(), 2 * REGION + 512, 512), data);
}

/// Found in review: a process killed after a write to a region not yet
/// copied reached the source (page cache only) left nothing that said the
/// source needed a flush; the next process's first flush checkpointed the
/// target alone, and power loss then lost the flushed write.
#[test]
fn a_flush_after_a_restart_flushes_what_the_dead_process_wrote_to_the_source() {
    let w = world();
    let vol = start(&w);
    let data = vec![0x5c; 512];
    vol.write_at(&data, 3 * REGION + 512).unwrap();
    drop(vol); // kill -9
    let vol = reopen(&w);
    vol.flush().unwrap();
    let after = power_lost_now(&w);
    assert_eq!(read(after.as_ref(), 3 * REGION + 512, 512), data);
}

/// A thin source on a full pool refuses a write to a region not yet
/// copied: the write is still acknowledged, its region moved to the
/// target at once (the rest of it from the source), and nothing is
/// fenced; a flush makes it durable.
#[test]
fn a_write_the_source_refuses_moves_its_region_to_the_target() {
    let w = world();
    let vol = start(&w);
    let data = vec![0x3d; 1024];
    w.source.refuse_next_write();
    vol.write_at(&data, 4 * REGION + 2048).unwrap();
    assert!(!vol.is_fenced());
    assert!(vol.index().is_migrated(4));
    let src = source_bytes();
    let region = |v: &dyn Volume| read(v, 4 * REGION, REGION as usize);
    let mut want = src[4 * REGION as usize..5 * REGION as usize].to_vec();
    want[2048..3072].copy_from_slice(&data);
    assert_eq!(region(vol.as_ref()), want);
    vol.flush().unwrap();
    assert_eq!(region(power_lost_now(&w).as_ref()), want);
}

/// Defect 2 of issue 13: while one flush's checkpoint is inside its data
/// flush, a second flush must not return before that checkpoint has
/// confirmed the region the first one took. Power loss at the instant the
/// second flush returns must keep the write both flushes cover.
#[test]
fn a_flush_does_not_return_while_an_earlier_checkpoint_is_still_running() {
    let w = world();
    let vol = start(&w);
    let data = vec![0x33; REGION as usize];
    vol.write_at(&data, REGION).unwrap(); // a whole region: marked at once
    let held = w.target.hold_next_flush();
    std::thread::scope(|s| {
        let first = s.spawn(|| vol.flush());
        held.arrived.recv().unwrap(); // the first checkpoint is in its flush
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (vol2, w2) = (&vol, &w);
        let second = s.spawn(move || {
            let result = vol2.flush();
            // Power fails the instant the second flush is acknowledged.
            let image = result.as_ref().ok().map(|_| power_lost_now(w2));
            done_tx.send(()).unwrap();
            (result, image)
        });
        // Give the second flush the chance to return early (it must not);
        // the bound only decides when to stop waiting for that.
        let returned_early = done_rx.recv_timeout(Duration::from_millis(500)).is_ok();
        held.release.send(()).unwrap();
        first.join().unwrap().unwrap();
        let (result, image) = second.join().unwrap();
        result.unwrap();
        let image = image.unwrap();
        assert!(
            !returned_early || image.index().is_migrated(1),
            "the second flush returned while the first checkpoint ran"
        );
        assert_eq!(read(image.as_ref(), REGION, REGION as usize), data);
    });
}

/// Defect 3 of issue 13: the index write that marks a copied-up region
/// fails once. The write is refused, and so is every later I/O (before,
/// the bit stayed set in memory and the next write to the region was
/// acknowledged while the store lacked it); a restart routes nothing to
/// data the store does not know about.
#[test]
fn a_failed_index_write_fences_the_volume_instead_of_acknowledging_later_writes() {
    // Dry run: how many device calls a write of a whole region makes.
    let whole = vec![0x44; REGION as usize];
    let dry = world();
    let vol = start(&dry);
    dry.faults.arm(u64::MAX);
    vol.write_at(&whole, 2 * REGION).unwrap();
    let calls = dry.faults.points();
    assert!(calls >= 3, "written bit, data, migrated bit: {calls} calls");

    let w = world();
    let vol = start(&w);
    w.faults.fail_once(calls - 1); // the last one: the migrated bit
    let err = vol.write_at(&whole, 2 * REGION).unwrap_err();
    assert!(matches!(err, Error::Injected(_)), "{err}");
    assert!(!w.faults.crashed(), "one failure, not a crash");
    // The next write to the same region must not be acknowledged.
    let next = vol.write_at(&[0x55; 512], 2 * REGION + 512);
    assert!(
        matches!(next, Err(Error::Fenced(_))),
        "a write after a failed index write was answered {next:?}"
    );
    assert!(matches!(vol.flush(), Err(Error::Fenced(_))));
    assert!(vol.is_fenced());
    // A restart finds the region where the store says it is: the source,
    // whose bytes are intact.
    drop(vol);
    w.faults.disarm();
    let vol = reopen(&w);
    let got = read(vol.as_ref(), 2 * REGION, 1024);
    let src = &source_bytes()[2 * REGION as usize..2 * REGION as usize + 1024];
    assert!(
        got == src || got[..512] == [0x44; 512][..],
        "region 2 holds neither the source nor the refused write"
    );
    assert_ne!(
        got[512..],
        [0x55; 512][..],
        "the refused second write landed"
    );
}

/// Found in review: after a failed flush fenced the volume, the copier's
/// pending batch was still marked (and an abort could still finish and
/// discard the target), relying on pages the failed flush may have
/// dropped. Now nothing changes the index or the state once fenced.
#[test]
fn a_fenced_volume_marks_no_batch_and_finishes_no_abort() {
    let w = world();
    let vol = start(&w);
    let mut cursor = CopyCursor::new(CopierConfig {
        batch_bytes: u64::MAX,
        batch_age: Duration::from_secs(3600),
        parallel: 1,
        ..CopierConfig::default()
    });
    cursor.step(&vol).unwrap(); // region 0 copied, batched, not marked
    w.faults.fail_once(0); // the next device call: the flush below
    assert!(vol.flush().is_err());
    assert!(vol.is_fenced());
    assert!(matches!(cursor.commit_batch(&vol), Err(Error::Fenced(_))));
    assert!(
        !vol.index().is_migrated(0),
        "a batch was marked after the fence"
    );
    assert!(matches!(vol.finish_copy(), Err(Error::Fenced(_))));

    // The abort side: a copied-back batch is not handed to the source.
    let w = world();
    let vol = start(&w);
    vol.write_at(&[9; REGION as usize], 0).unwrap();
    vol.flush().unwrap();
    vol.abort().unwrap();
    let mut cursor = CopyCursor::new(CopierConfig {
        batch_bytes: u64::MAX,
        batch_age: Duration::from_secs(3600),
        parallel: 1,
        ..CopierConfig::default()
    });
    cursor.step(&vol).unwrap(); // region 0 copied back, batched
    w.faults.fail_once(0);
    assert!(vol.flush().is_err());
    assert!(matches!(cursor.commit_batch(&vol), Err(Error::Fenced(_))));
    assert!(
        vol.index().is_migrated(0),
        "a region was handed back after the fence"
    );
    assert!(matches!(vol.finish_abort(), Err(Error::Fenced(_))));
    assert!(
        !w.target_store.destroyed(),
        "the target was discarded while fenced"
    );
}

/// A write acknowledged to the plain source (no flush: writeback, WCE
/// on), then the switch to a migration, then SYNCHRONIZE CACHE: power
/// loss after that keeps the write, because the switch flushes the
/// source (`MigratingVolume::activate`); a flush of the migrating volume
/// alone would only checkpoint the target.
#[test]
fn a_flush_after_the_switch_keeps_writes_the_plain_source_took_before_it() {
    let w = world();
    let before = vec![0x5a; 4096];
    w.source.write_at(&before, 2 * REGION).unwrap();
    let vol = start(&w);
    vol.activate().unwrap();
    vol.flush().unwrap();
    let after = power_lost_now(&w);
    assert_eq!(
        read(after.as_ref(), 2 * REGION, 4096),
        before,
        "a write acknowledged before the switch was lost to power loss after a flush"
    );
}
