//! Deterministic tests of the durability rule's hard cases: a flush after a
//! same-boot restart, flushes that overlap, and a failed index write.
//! Each builds the interleaving it needs with channels and fault points,
//! not sleeps, and checks what power loss *at the instant a flush returns*
//! would leave (`fork_power_lost`).
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::migrate::{reopen_target, Reopened};
use ferry_core::sim::{info, Faults, SimStore, SimVolume};
use ferry_core::{Error, MetaStore, MigratingVolume, MigrationPlan, Volume};
use parking_lot::Mutex;

/// 16 KiB regions of 512-byte blocks, so an 8-block write is a copy-up.
const REGION: u64 = 16384;
const SIZE: u64 = 8 * REGION;

struct World {
    faults: Arc<Faults>,
    source: Arc<SimVolume>,
    source_store: Arc<SimStore>,
    target: Arc<dyn Volume>,
    target_sim: Arc<SimVolume>,
    target_store: Arc<SimStore>,
}

fn source_bytes() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8 | 0x80).collect()
}

fn world_with_target(wrap: impl FnOnce(Arc<SimVolume>) -> Arc<dyn Volume>) -> World {
    let faults = Faults::new();
    let source = SimVolume::new("src", SIZE, REGION, faults.clone());
    source.fill(&source_bytes());
    let target_sim = SimVolume::new("dst", SIZE, REGION, faults.clone());
    World {
        source_store: SimStore::new("src", faults.clone()),
        target: wrap(target_sim.clone()),
        target_sim,
        target_store: SimStore::new("dst", faults.clone()),
        source,
        faults,
    }
}

fn world() -> World {
    world_with_target(|t| t)
}

fn start(w: &World) -> Arc<MigratingVolume> {
    MigratingVolume::start(
        w.source.clone(),
        w.source_store.clone(),
        w.target.clone(),
        w.target_store.clone(),
        MigrationPlan {
            source_spec: "sim:src".into(),
            target_spec: "sim:dst".into(),
            source_info: info(&[]),
            region_size: REGION,
            rate_limit: None,
            adaptive: false,
            paused: true,
        },
    )
    .unwrap()
}

/// Reopens by the target's name with the given objects (a restart).
fn reopen(
    source: Arc<SimVolume>,
    source_store: Arc<SimStore>,
    target: Arc<dyn Volume>,
    target_store: Arc<SimStore>,
) -> Arc<MigratingVolume> {
    let src: (Arc<dyn Volume>, Arc<dyn MetaStore>) = (source, source_store);
    match reopen_target((target, target_store), |_| Ok(src)).unwrap() {
        Reopened::Migrating(m) => m,
        Reopened::Plain(_) => panic!("the migration should still be in progress"),
    }
}

/// What power loss right now would leave, reopened after the reboot.
fn power_lost_now(w: &World) -> Arc<MigratingVolume> {
    reopen(
        w.source.fork_power_lost(),
        w.source_store.fork_power_lost(),
        w.target_sim.fork_power_lost(),
        w.target_store.fork_power_lost(),
    )
}

fn read(vol: &dyn Volume, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    vol.read_at(&mut buf, off).unwrap();
    buf
}

/// Defect 1 of issue 13, in the engine: a copy-up left unconfirmed by a
/// killed process, a restart in the same boot, then a write flushed
/// twice. Power loss after that must keep both writes.
#[test]
fn flush_after_a_same_boot_restart_confirms_what_the_dead_process_migrated() {
    let w = world();
    let vol = start(&w);
    let first = vec![0x11; 4096]; // 8 blocks at LBA 0: a copy-up of region 0
    vol.write_at(&first, 0).unwrap();
    // kill -9: the page cache (and so the migrated bit) survives.
    drop(vol);
    let vol = reopen(
        w.source.clone(),
        w.source_store.clone(),
        w.target.clone(),
        w.target_store.clone(),
    );
    assert!(vol.index().is_migrated(0), "same boot: the bit is trusted");
    let second = vec![0x22; 512]; // LBA 8 with FUA, then SYNCHRONIZE CACHE
    vol.write_at(&second, 4096).unwrap();
    vol.flush().unwrap();
    vol.flush().unwrap();
    let after = power_lost_now(&w);
    assert_eq!(read(after.as_ref(), 0, 4096), first, "first write lost");
    assert_eq!(
        read(after.as_ref(), 4096, 512),
        second,
        "flushed write lost"
    );
    assert_eq!(
        read(after.as_ref(), 4608, (REGION - 4608) as usize),
        source_bytes()[4608..REGION as usize],
        "the rest of the region must still be the source's"
    );
}

/// A target whose first flush waits until the test opens a gate.
struct GatedFlush {
    inner: Arc<SimVolume>,
    gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl Volume for GatedFlush {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn object_size(&self) -> u64 {
        self.inner.object_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> ferry_core::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> ferry_core::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> ferry_core::Result<()> {
        let gate = self.gate.lock().take();
        if let Some((entered, open)) = gate {
            entered.send(()).unwrap();
            open.recv().unwrap();
        }
        self.inner.flush()
    }
    fn allocated(&self, offset: u64, len: u64) -> ferry_core::Result<Vec<ferry_core::Extent>> {
        self.inner.allocated(offset, len)
    }
}

/// Defect 2 of issue 13: while one flush's checkpoint is inside its data
/// flush, a second flush must not return before that checkpoint has
/// confirmed the region the first one took. Power loss at the instant the
/// second flush returns must keep the write both flushes cover.
#[test]
fn a_flush_does_not_return_while_an_earlier_checkpoint_is_still_running() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (open_tx, open_rx) = mpsc::channel();
    let w = world_with_target(|inner| {
        Arc::new(GatedFlush {
            inner,
            gate: Mutex::new(Some((entered_tx, open_rx))),
        })
    });
    let w = Arc::new(w);
    let vol = start(&w);
    let data = vec![0x33; REGION as usize];
    vol.write_at(&data, REGION).unwrap(); // a whole region: marked at once
    std::thread::scope(|s| {
        let first = s.spawn(|| vol.flush());
        entered_rx.recv().unwrap(); // the first checkpoint is in its flush
        let (done_tx, done_rx) = mpsc::channel();
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
        open_tx.send(()).unwrap();
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
    // Dry run: how many device calls a copy-up write makes.
    let dry = world();
    let vol = start(&dry);
    dry.faults.arm(u64::MAX);
    vol.write_at(&[0x44; 512], 2 * REGION).unwrap();
    let calls = dry.faults.points();
    assert!(calls >= 3, "written bit, data, migrated bit: {calls} calls");

    let w = world();
    let vol = start(&w);
    w.faults.fail_once(calls - 1); // the last one: the migrated bit
    let err = vol.write_at(&[0x44; 512], 2 * REGION).unwrap_err();
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
    let vol = reopen(
        w.source.clone(),
        w.source_store.clone(),
        w.target.clone(),
        w.target_store.clone(),
    );
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
    use ferry_core::copier::{CopierConfig, CopyCursor};
    let w = world();
    let vol = start(&w);
    let mut cursor = CopyCursor::new(CopierConfig {
        batch_bytes: u64::MAX,
        batch_age: Duration::from_secs(3600),
        parallel: 1,
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
