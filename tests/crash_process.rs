//! A real process serving a write workload on file volumes is killed with
//! SIGKILL, many times, in the middle of a live migration. After each kill
//! the volume is reopened by its original spec and every acknowledged
//! write must read back; the migration resumes in the next process and
//! finally commits.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_core::sim::read_all;
use ferry_core::{pattern, Volume};
use ferry_host::{Lun, VolumeSpec};
use rand::{Rng, SeedableRng};

const SIZE: u64 = 64 << 20;

#[derive(Clone, Copy)]
struct Write {
    off: u64,
    len: u64,
    zero: bool,
}

impl Write {
    fn data(&self, seq: u64) -> Vec<u8> {
        if self.zero {
            vec![0; self.len as usize]
        } else {
            pattern::bytes(seq, self.len as usize)
        }
    }
}

/// Applies acknowledged writes from the log to `model`; returns the one
/// write begun but not acknowledged (at most one: the workload is serial)
/// and the highest sequence number seen.
fn replay(log: &Path, model: &mut [u8]) -> (Option<(u64, Write)>, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut begun: BTreeMap<u64, Write> = BTreeMap::new();
    let mut max_seq = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["B", seq, off, len, kind] => {
                let seq: u64 = seq.parse().unwrap();
                max_seq = max_seq.max(seq);
                begun.insert(
                    seq,
                    Write {
                        off: off.parse().unwrap(),
                        len: len.parse().unwrap(),
                        zero: *kind == "z",
                    },
                );
            }
            ["A", seq] => {
                let seq: u64 = seq.parse().unwrap();
                let w = begun.remove(&seq).expect("ack without begin");
                model[w.off as usize..(w.off + w.len) as usize].copy_from_slice(&w.data(seq));
            }
            _ => panic!("malformed log line {line:?}"),
        }
    }
    assert!(
        begun.len() <= 1,
        "more than one write in flight: {}",
        begun.len()
    );
    (begun.into_iter().next(), max_seq)
}

/// Checks the reopened volume against the model; bytes of the write in
/// flight may be old or new. Returns what was read (the new truth).
fn verify(
    spec: &str,
    model: &[u8],
    in_flight: Option<(u64, Write)>,
    round: usize,
) -> (Vec<u8>, Option<u64>) {
    let lun = Lun::open_with(spec, false).expect("reopen after kill");
    let status = lun.status();
    eprintln!(
        "round {round}: {:?}",
        status
            .as_ref()
            .map(|p| (p.state, p.regions_done, p.regions_total))
    );
    // Regions done while copying; None once the migration is over.
    let done = status
        .filter(|p| p.state == ferry_core::MigrationState::Copying)
        .map(|p| p.regions_done);
    let got = read_all(lun.as_ref());
    let new = in_flight.map(|(seq, w)| (w, w.data(seq)));
    for i in 0..model.len() {
        if got[i] == model[i] {
            continue;
        }
        let ok = new.as_ref().is_some_and(|(w, data)| {
            let o = w.off as usize;
            i >= o && i < o + w.len as usize && got[i] == data[i - o]
        });
        assert!(
            ok,
            "round {round}: byte {i} is {} but an acknowledged write left {}",
            got[i], model[i]
        );
    }
    (got, done)
}

fn workload(dir: &Path, source: &str, target: &str, first_seq: u64, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args([
        "workload",
        "--volume",
        source,
        "--target",
        target,
        "--region-size",
        "64K",
    ])
    .arg("--log")
    .arg(dir.join("log"))
    .args(["--first-seq", &first_seq.to_string()])
    .args(extra)
    .env("FERRY_RUN_DIR", dir.join("run"))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

#[test]
fn sigkill_mid_migration_many_times_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let source = format!("file:{}", dir.path().join("src.img").display());
    let target = format!("file:{}", dir.path().join("dst.img").display());
    let mut model = vec![0u8; SIZE as usize];
    {
        let (vol, _) = VolumeSpec::parse(&source)
            .unwrap()
            .create(SIZE, None)
            .unwrap();
        // Data in three of every four 64 KiB blocks; the rest are holes.
        for b in 0..SIZE / 65536 {
            if b % 4 != 2 {
                let data = pattern::bytes(1 << 40 | b, 65536);
                vol.write_at(&data, b * 65536).unwrap();
                model[(b * 65536) as usize..((b + 1) * 65536) as usize].copy_from_slice(&data);
            }
        }
        vol.flush().unwrap();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut next_seq = 1;
    let rounds = 12;
    let mut killed_while_copying = 0;
    let mut done_before: Option<u64> = None;
    let mut first_done: Option<u64> = None;
    for round in 0..rounds {
        let mut child = workload(
            dir.path(),
            &source,
            &target,
            next_seq,
            &["--rate", "1M", "--op-delay-us", "5000"],
        )
        .spawn()
        .unwrap();
        // Mostly short lives; every third one outlasts the copier's batch
        // age (1 s), so its marks are committed and the next process has
        // progress to resume from (writes no longer move regions: they go
        // to both legs).
        let life = if round % 3 == 2 {
            rng.random_range(1300..1700)
        } else {
            rng.random_range(80..400)
        };
        std::thread::sleep(Duration::from_millis(life));
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "workload exited early ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (in_flight, max_seq) = replay(&dir.path().join("log"), &mut model);
        let (got, done) = verify(&source, &model, in_flight, round);
        model = got;
        if let Some(done) = done {
            killed_while_copying += 1;
            // A kill keeps the page cache: nothing migrated is forgotten.
            if let Some(before) = done_before {
                assert!(
                    done >= before,
                    "round {round}: {done} regions done after the restart, {before} before"
                );
            }
            done_before = Some(done);
            first_done.get_or_insert(done);
        }
        // Start each round with a fresh log: `model` holds the past. (A
        // child killed before it opened its log acknowledged nothing.)
        match std::fs::remove_file(dir.path().join("log")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("removing the log: {e}"),
            _ => {}
        }
        next_seq = max_seq + 1;
    }
    assert!(
        killed_while_copying >= rounds / 2,
        "only {killed_while_copying} of {rounds} kills hit a migration in progress"
    );
    // Each restarted process resumed the copy where the last one was.
    assert!(
        done_before > first_done,
        "the migration did not advance across restarts: {first_done:?} -> {done_before:?}"
    );
    // Let the last process finish the copy, commit and exit cleanly.
    let out = workload(
        dir.path(),
        &source,
        &target,
        next_seq,
        &["--seconds", "60", "--commit", "--rate", "unlimited"],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (in_flight, _) = replay(&dir.path().join("log"), &mut model);
    assert!(in_flight.is_none());
    verify(&source, &model, None, rounds);
    let lun = Lun::open_with(&source, false).unwrap();
    assert!(lun.status().is_none(), "migration should be committed");
    assert_eq!(
        lun.served().to_string(),
        target,
        "the LUN is served from the target"
    );
}
