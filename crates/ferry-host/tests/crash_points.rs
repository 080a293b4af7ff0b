//! Crash-point exploration of a file LUN's snapshot restore and of its
//! persistent-reservation saves, on real files in a temporary directory.
//!
//! Every durable step of those paths is announced to `ferry_file::steps`
//! by its name in `ferry_core::faults` (`SNAPSHOT`, `RESERVATIONS`). A
//! dry run gives the trace of steps; then, for every index of the trace,
//! the "process" dies there (that step and every later one is refused)
//! and the test recovers both ways:
//! - process crash (kill -9): the files stay as the page cache has them;
//! - power loss: the [`Recorder`] follows the steps, so it knows what an
//!   fsync made durable (a file's contents) and what a directory fsync did
//!   (its names). The directory is rewritten to what survives, twice: with
//!   only the synced names, and with every name the dead process left
//!   (a rename or link that reached the journal without its directory
//!   fsync) but still only synced contents. Unsynced file data is dropped
//!   in both: the strictest case. There is no boot id to change: a plain
//!   file volume, its snapshots and its reservations slot have no
//!   epoch-dependent recovery.
//!
//! Then the LUN is reopened, checked against the model, restarted again
//! (a second kill -9 in the same boot), given a write and a flush, and
//! power-lost again. The model: the LUN reads either entirely the data
//! before the restore or entirely the snapshot's, the restored data once
//! the restore was acknowledged; every listed snapshot reads whole; what
//! was acknowledged and flushed is there; the reservations are the state
//! before the PR OUT being saved or the state after it, and every PR OUT
//! acknowledged is in them.
//!
//! A last pass fails each step once without a crash: the operation must
//! fail, and the LUN keeps serving (or fences) without losing anything.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_core::{faults, Volume};
use ferry_host::ferry_pr::{Nexus, PrState};
use ferry_host::snapshot::SnapshotOp;
use ferry_host::Lun;

/// Three data extents with holes between them: a sparse copy passes a
/// `snapshot.copy_data` step for each.
const SIZE: u64 = 256 << 10;
const EXTENTS: [(u64, u64); 3] = [(0, 8192), (64 << 10, 12288), (200 << 10, 4096)];

/// Follows the durable steps, crashes or fails one of them, and keeps
/// what power loss would leave.
struct Recorder {
    dir: PathBuf,
    inner: Mutex<Rec>,
}

#[derive(Default)]
struct Rec {
    trace: Vec<&'static str>,
    crash_at: Option<usize>,
    fail_at: Option<usize>,
    crashed: bool,
    /// The restore's flush of the volume has been done.
    volume_flushed: bool,
    /// The step announced last, done by the time the next is announced.
    pending: Option<(&'static str, PathBuf)>,
    /// Names (to inodes) as the last directory fsync left them.
    names: BTreeMap<OsString, u64>,
    /// Each inode's contents as its last fsync left them, with an open
    /// handle so that the inode number is not reused meanwhile.
    contents: HashMap<u64, (Vec<u8>, File)>,
}

fn listing(dir: &Path) -> BTreeMap<OsString, u64> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), e.metadata().unwrap().ino())
        })
        .collect()
}

impl Rec {
    fn file_synced(&mut self, path: &Path) {
        let f = File::open(path).unwrap();
        let ino = f.metadata().unwrap().ino();
        self.contents.insert(ino, (fs::read(path).unwrap(), f));
    }

    /// The step announced last has been done.
    fn settle(&mut self, dir: &Path) {
        let Some((point, path)) = self.pending.take() else {
            return;
        };
        match point {
            faults::SNAPSHOT_FLUSH_VOLUME => {
                self.file_synced(&path);
                self.volume_flushed = true;
            }
            faults::SNAPSHOT_SYNC_COPY | faults::PR_SYNC_TEMP => self.file_synced(&path),
            faults::SNAPSHOT_SYNC_DIR
            | faults::RESTORE_SYNC_DIR
            | faults::PR_SYNC_DIR
            | faults::VOLUME_OPEN_SYNC_DIR => self.names = listing(dir),
            _ => {}
        }
    }
}

impl ferry_file::steps::StepHook for Recorder {
    fn before(&self, point: &'static str, path: &Path) -> io::Result<()> {
        let mut r = self.inner.lock().unwrap();
        if r.crashed {
            return Err(io::Error::other(format!("{point} after the crash")));
        }
        r.settle(&self.dir);
        let n = r.trace.len();
        r.trace.push(point);
        if r.crash_at == Some(n) {
            r.crashed = true;
            return Err(io::Error::other(format!("crash at {point} (step {n})")));
        }
        if r.fail_at == Some(n) {
            return Err(io::Error::other(format!("{point} fails once (step {n})")));
        }
        r.pending = Some((point, path.to_path_buf()));
        Ok(())
    }
}

impl Recorder {
    fn new(dir: &Path) -> Arc<Self> {
        let r = Arc::new(Recorder {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Rec::default()),
        });
        r.all_durable();
        r
    }

    /// Everything in the directory is durable (test setup, or what a
    /// power loss left).
    fn all_durable(&self) {
        let mut r = self.inner.lock().unwrap();
        r.pending = None;
        r.contents.clear();
        r.names = listing(&self.dir);
        let names: Vec<OsString> = r.names.keys().cloned().collect();
        for n in names {
            r.file_synced(&self.dir.join(n));
        }
    }

    /// The test flushed the volume at `path` itself.
    fn synced(&self, path: &Path) {
        let mut r = self.inner.lock().unwrap();
        r.settle(&self.dir);
        r.file_synced(path);
    }

    fn arm(&self, crash_at: Option<usize>, fail_at: Option<usize>) {
        let mut r = self.inner.lock().unwrap();
        r.trace.clear();
        r.crash_at = crash_at;
        r.fail_at = fail_at;
        r.crashed = false;
        r.volume_flushed = false;
    }

    /// The run is over (the process lives on, or has just died).
    fn disarm(&self) -> Vec<&'static str> {
        let mut r = self.inner.lock().unwrap();
        if !r.crashed {
            r.settle(&self.dir);
        }
        r.pending = None;
        r.crash_at = None;
        r.fail_at = None;
        r.crashed = false;
        r.trace.clone()
    }

    fn crashed(&self) -> bool {
        self.inner.lock().unwrap().crashed
    }

    fn volume_flushed(&self) -> bool {
        self.inner.lock().unwrap().volume_flushed
    }

    /// Power loss: the directory holds the synced names (or, with
    /// `names_landed`, every name the dead process left), each with its
    /// synced contents; never-synced files are empty.
    fn power_loss(&self, names_landed: bool) {
        let survivors: Vec<(OsString, Vec<u8>)> = {
            let r = self.inner.lock().unwrap();
            let names = if names_landed {
                listing(&self.dir)
            } else {
                r.names.clone()
            };
            names
                .into_iter()
                .map(|(n, ino)| {
                    let data = r
                        .contents
                        .get(&ino)
                        .map(|c| c.0.clone())
                        .unwrap_or_default();
                    (n, data)
                })
                .collect()
        };
        for e in fs::read_dir(&self.dir).unwrap() {
            fs::remove_file(e.unwrap().path()).unwrap();
        }
        for (n, data) in survivors {
            fs::write(self.dir.join(n), data).unwrap();
        }
        self.all_durable();
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    let mut data = vec![0u8; SIZE as usize];
    for &(off, len) in &EXTENTS {
        for i in off..off + len {
            data[i as usize] = seed.wrapping_mul(37).wrapping_add((i % 251) as u8) | 1;
        }
    }
    data
}

fn overlay(base: &[u8], off: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    out[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    out
}

fn write_all(lun: &Lun, data: &[u8]) {
    for &(off, len) in &EXTENTS {
        lun.write_at(&data[off as usize..(off + len) as usize], off)
            .unwrap();
    }
}

fn read_all(vol: &dyn Volume) -> ferry_core::Result<Vec<u8>> {
    let mut buf = vec![0u8; vol.size() as usize];
    vol.read_at(&mut buf, 0)?;
    Ok(buf)
}

fn nexus(name: &str) -> Nexus {
    Nexus::new(
        format!("iqn.2026-11.test:{name},i,0x000000000001"),
        "iqn.t,t,0x0001",
    )
}

/// PERSISTENT RESERVE OUT with a 24-byte parameter list.
fn pr_out(lun: &Lun, who: &str, action: u8, kind: u8, key: u64, sa_key: u64) -> bool {
    let cdb = [0x5f, action, kind, 0, 0, 0, 0, 0, 24, 0];
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    lun.pr_out(&nexus(who), &cdb, &p).is_ok()
}

/// A small write after the restore, flushed.
const AFTER: (u64, &[u8]) = (64 << 10, b"written after the restore");
/// Acknowledged but not flushed before the restore (its flush does).
const UNFLUSHED: (u64, &[u8]) = (200 << 10, b"not flushed by the initiator");

/// One scenario's files and what the model expects of them.
struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    vol: PathBuf,
    rec: Arc<Recorder>,
    _hook: ferry_file::steps::Installed,
    /// The snapshot `s1`'s data.
    snap: Vec<u8>,
    /// What the LUN held, flushed, before the restore.
    flushed: Vec<u8>,
    /// ... and with the unflushed write.
    acked: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    /// Restore `s1`, write and flush, then two PR OUTs.
    Restore,
    /// Three PR OUTs, the first on an empty slot.
    Reservations,
}

/// What the run saw acknowledged.
#[derive(Default, Debug)]
struct Acked {
    /// The write before the restore, not flushed by the initiator.
    unflushed: bool,
    restore: bool,
    after_flushed: bool,
    /// PR states: [0] before the first PR OUT, then after each one
    /// acknowledged.
    pr: Vec<PrState>,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let vol = dir.join("vol");
        drop(ferry_file::FileVolume::create(&vol, SIZE).unwrap());
        let snap = pattern(1);
        let flushed = pattern(2);
        let acked = overlay(&flushed, UNFLUSHED.0, UNFLUSHED.1);
        {
            let lun = Lun::open(vol.to_str().unwrap()).unwrap();
            write_all(&lun, &snap);
            lun.flush().unwrap();
            lun.snapshot(&SnapshotOp::Create, Some("s1")).unwrap();
            write_all(&lun, &flushed);
            lun.flush().unwrap();
        }
        // Setup is durable: the recorder starts from it.
        let rec = Recorder::new(&dir);
        let hook = ferry_file::steps::install(&dir, rec.clone());
        World {
            _tmp: tmp,
            dir,
            vol,
            rec,
            _hook: hook,
            snap,
            flushed,
            acked,
        }
    }

    fn open(&self) -> Arc<Lun> {
        Lun::open(self.vol.to_str().unwrap())
            .unwrap_or_else(|e| panic!("reopening {}: {e}", self.vol.display()))
    }

    /// Runs the scenario; stops at the first failed operation.
    fn run(&self, scenario: Scenario, acked: &mut Acked) {
        // No PR OUT before the run.
        acked.pr.push(PrState::default());
        // Opening the LUN passes a step too.
        let Ok(lun) = Lun::open(self.vol.to_str().unwrap()) else {
            return;
        };
        if scenario == Scenario::Restore {
            lun.write_at(UNFLUSHED.1, UNFLUSHED.0).unwrap();
            acked.unflushed = true;
            if lun.snapshot(&SnapshotOp::Restore, Some("s1")).is_err() {
                if !self.rec.crashed() {
                    // A failed step, the process alive: the LUN serves the
                    // old data still, or is fenced.
                    match read_all(lun.as_ref()) {
                        Ok(data) => assert!(data == self.acked, "a failed restore changed data"),
                        Err(_) => {
                            assert!(lun.write_at(b"x", 0).is_err(), "a fenced LUN takes writes")
                        }
                    }
                }
                return;
            }
            acked.restore = true;
            if lun.write_at(AFTER.1, AFTER.0).is_err() || lun.flush().is_err() {
                return;
            }
            self.rec.synced(&self.vol);
            acked.after_flushed = true;
        }
        let outs: &[(&str, u8, u8, u64, u64)] = &[
            ("a", 0, 0, 0, 0xa), // REGISTER a
            ("b", 0, 0, 0, 0xb), // REGISTER b
            ("a", 1, 3, 0xa, 0), // RESERVE, Exclusive Access
        ];
        let outs = match scenario {
            Scenario::Restore => &outs[..2],
            Scenario::Reservations => outs,
        };
        for &(who, action, kind, key, sa_key) in outs {
            if !pr_out(&lun, who, action, kind, key, sa_key) {
                // A failed save changes nothing, in memory either.
                assert_eq!(Some(&lun.reservations().state()), acked.pr.last());
                return;
            }
            acked.pr.push(lun.reservations().state());
        }
    }

    /// The data the LUN may read now, after a crash of either kind.
    fn expected(&self, acked: &Acked, power: bool) -> Vec<Vec<u8>> {
        if !acked.unflushed {
            return vec![self.flushed.clone()];
        }
        let restored = if acked.after_flushed {
            overlay(&self.snap, AFTER.0, AFTER.1)
        } else {
            self.snap.clone()
        };
        if acked.restore {
            return vec![restored];
        }
        // Unflushed before the restore, the write may be lost to power
        // until the restore's own flush makes it durable.
        let mut may = vec![self.acked.clone(), restored];
        if power && !self.rec.volume_flushed() {
            may.push(self.flushed.clone());
        }
        may
    }

    /// Checks the reopened LUN against the model; returns it.
    fn check(&self, acked: &Acked, pr_next: Option<&PrState>, power: bool, ctx: &str) -> Arc<Lun> {
        let lun = self.open();
        let got = read_all(lun.as_ref()).unwrap();
        let may = self.expected(acked, power);
        assert!(
            may.contains(&got),
            "{ctx}: the LUN reads neither the data before the restore nor the snapshot's (restore acknowledged: {})",
            acked.restore
        );
        // Every listed snapshot reads whole.
        for s in lun.snapshot(&SnapshotOp::List, None).unwrap() {
            let data = fs::read(self.dir.join(format!("vol.snap-{}", s.name))).unwrap();
            let ok = match s.name.as_str() {
                "s1" => data == self.snap,
                n if n.starts_with("before-restore-") => data == self.acked,
                n => panic!("{ctx}: unexpected snapshot {n}"),
            };
            assert!(ok, "{ctx}: snapshot {} does not read whole", s.name);
        }
        // Reservations: the last acknowledged state, or the one being
        // saved.
        let pr = lun.reservations().state();
        let last = acked.pr.last().expect("the state before any PR OUT");
        assert!(
            pr == *last || Some(&pr) == pr_next,
            "{ctx}: reservations are neither the acknowledged state nor the one being saved: {pr:?}"
        );
        lun
    }
}

/// The states a clean run passes: the PR state after each PR OUT.
fn dry_run(scenario: Scenario) -> (Vec<&'static str>, Vec<PrState>) {
    let w = World::new();
    w.rec.arm(None, None);
    let mut acked = Acked::default();
    w.run(scenario, &mut acked);
    let trace = w.rec.disarm();
    if scenario == Scenario::Restore {
        assert!(acked.restore && acked.after_flushed);
    }
    let expected_outs = if scenario == Scenario::Restore { 2 } else { 3 };
    assert_eq!(acked.pr.len(), expected_outs + 1, "every PR OUT succeeds");
    w.check(&acked, None, false, "dry run");
    (trace, acked.pr)
}

/// After recovery: restart again in the same boot, write and flush, kill
/// -9, and lose power; the model holds throughout.
fn second_life(w: &World, lun: Arc<Lun>, ctx: &str) {
    let before = read_all(lun.as_ref()).unwrap();
    let pr = lun.reservations().state();
    drop(lun);
    let lun = w.open();
    assert!(
        read_all(lun.as_ref()).unwrap() == before,
        "{ctx}: a second restart changed data"
    );
    assert_eq!(
        lun.reservations().state(),
        pr,
        "{ctx}: a second restart changed reservations"
    );
    let later = overlay(&before, 0, b"second life");
    lun.write_at(b"second life", 0).unwrap();
    lun.flush().unwrap();
    w.rec.synced(&w.vol);
    drop(lun);
    for names_landed in [false, true] {
        w.rec.power_loss(names_landed);
        let lun = w.open();
        assert!(
            read_all(lun.as_ref()).unwrap() == later,
            "{ctx}: power loss after the second life lost a flushed write"
        );
        assert_eq!(
            lun.reservations().state(),
            pr,
            "{ctx}: power loss changed reservations"
        );
    }
}

/// Crashes at every step of the scenario both ways; returns the points
/// seen and the crash sequences run.
fn explore(scenario: Scenario) -> (BTreeSet<&'static str>, usize) {
    let (trace, states) = dry_run(scenario);
    let mut seen: BTreeSet<&'static str> = trace.iter().copied().collect();
    let mut cases = 0;
    for (at, point) in trace.iter().enumerate() {
        // process crash, power loss (synced names only), power loss (every
        // name landed)
        for kind in 0..3 {
            let ctx = format!(
                "{scenario:?}: {} at step {at} ({point})",
                ["process crash", "power loss", "power loss, names landed"][kind]
            );
            let w = World::new();
            w.rec.arm(Some(at), None);
            let mut acked = Acked::default();
            w.run(scenario, &mut acked);
            assert!(w.rec.crashed(), "{ctx}: the step was not reached");
            w.rec.disarm();
            if kind > 0 {
                w.rec.power_loss(kind == 2);
            }
            let next = states.get(acked.pr.len());
            let lun = w.check(&acked, next, kind > 0, &ctx);
            second_life(&w, lun, &ctx);
            cases += 1;
        }
    }
    // One failed step, no crash: the operation fails, and nothing it did
    // not acknowledge is half done.
    for (at, point) in trace.iter().enumerate() {
        let ctx = format!("{scenario:?}: step {at} ({point}) fails once");
        let w = World::new();
        w.rec.arm(None, Some(at));
        let mut acked = Acked::default();
        w.run(scenario, &mut acked);
        seen.extend(w.rec.disarm());
        let next = states.get(acked.pr.len());
        let lun = w.check(&acked, next, false, &ctx);
        second_life(&w, lun, &ctx);
        cases += 1;
    }
    (seen, cases)
}

/// Every point seen is listed in `faults::SNAPSHOT` or
/// `faults::RESERVATIONS`, and every point of `list` was seen.
fn assert_covers(seen: &BTreeSet<&'static str>, list: &[&'static str], what: &str) {
    let unknown: Vec<_> = seen
        .iter()
        .filter(|p| !faults::SNAPSHOT.contains(p) && !faults::RESERVATIONS.contains(p))
        .collect();
    assert!(
        unknown.is_empty(),
        "points missing from faults::SNAPSHOT and faults::RESERVATIONS: {unknown:?}"
    );
    let listed: BTreeSet<&'static str> = list.iter().copied().collect();
    let missed: Vec<_> = listed.difference(seen).collect();
    assert!(
        missed.is_empty(),
        "points of faults::{what} no scenario reaches: {missed:?}"
    );
}

#[test]
fn snapshot_restore_crashed_at_every_step_reads_old_or_restored_data() {
    let (seen, cases) = explore(Scenario::Restore);
    // The scenario saves reservations after the restore too.
    assert_covers(&seen, faults::SNAPSHOT, "SNAPSHOT");
    assert_covers(&seen, faults::RESERVATIONS, "RESERVATIONS");
    eprintln!(
        "crash points: snapshot restore (then a write and PR saves): {} named points, {cases} crash sequences",
        faults::SNAPSHOT.len()
    );
}

#[test]
fn reservation_saves_crashed_at_every_step_keep_old_or_new_state() {
    let (seen, cases) = explore(Scenario::Reservations);
    assert_covers(&seen, faults::RESERVATIONS, "RESERVATIONS");
    eprintln!(
        "crash points: reservation saves: {} named points, {cases} crash sequences",
        faults::RESERVATIONS.len()
    );
}
