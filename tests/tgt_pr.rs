//! Persistent reservations on ferry LUNs served by a real tgtd, driven by
//! real initiators (libiscsi): iscsi-test-cu's PR families, and two hosts
//! whose registrations and reservation hold through a tgtd SIGKILL, a
//! move to another gateway, a migration with commit, and a restart after
//! it; preemption with its unit attention; bad PR input.
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::pr::{
    connect, prout, read_keys, read_reservation, read_status, write_status, HOST_A, HOST_B,
};
use common::{check, Tgtd};
use ferry_initiator::{ScsiStatus, Session};

const KEY_A: u64 = 0xa1a1;
const KEY_B: u64 = 0xb2b2;

/// `tests N ran passed failed` from iscsi-test-cu's summary.
fn summary(log: &str) -> (u32, u32, u32) {
    let line = log
        .lines()
        .find(|l| l.split_whitespace().next() == Some("tests"))
        .unwrap_or_else(|| panic!("no summary in:\n{log}"));
    let n: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().unwrap())
        .collect();
    (n[1], n[2], n[3])
}

/// A tgtd serving a fresh file volume of `bytes` as target 1, LUN 1:
/// tgtd, the volume's spec, and the directory holding both (dropped last).
fn serving(bytes: u64) -> (Tgtd, String, tempfile::TempDir) {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let t = Tgtd::start(&dir.path().join("run"));
    let spec = common::file_volume(dir.path(), bytes);
    t.serve(&spec);
    (t, spec, dir)
}

#[test]
fn iscsi_test_cu_persistent_reserve_families_pass() {
    common::require("tgtd");
    common::require("iscsi-test-cu");
    let dir = tempfile::tempdir().unwrap();
    let t = Tgtd::start(&dir.path().join("run"));
    t.serve(&common::file_volume(dir.path(), 64 << 20));
    let mut total = 0;
    for family in ["SCSI.Prin*", "SCSI.Prout*"] {
        let out = Command::new("iscsi-test-cu")
            .args(["--dataloss", "-t", family, &t.url(1, 1)])
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        let messages = String::from_utf8_lossy(&out.stderr).into_owned();
        let (ran, passed, failed) = summary(&log);
        assert_eq!(
            (passed, failed),
            (ran, 0),
            "{family}:\n{log}\n{messages}\n{}",
            t.log_text()
        );
        // CUnit counts a skipped test as passed; libiscsi says so only in
        // its messages (stderr). Every PR test must have run for real.
        let skipped: Vec<&str> = log
            .lines()
            .chain(messages.lines())
            .filter(|l| l.contains("[SKIPPED]"))
            .collect();
        assert!(
            skipped.is_empty(),
            "{family}: tests skipped (counted as passed by CUnit):\n{}\n{log}",
            skipped.join("\n")
        );
        total += ran;
    }
    // PrinReadKeys (2), PrinServiceactionRange, PrinReportCapabilities,
    // ProutRegister, ProutReserve (13), ProutClear, ProutPreempt.
    assert_eq!(total, 20);
    // The state lives beside the volume, not in tgtd.
    assert!(dir.path().join("v.img.ferry-pr").exists());
}

/// Host A holds Write Exclusive; host B is registered and may read only.
fn assert_a_holds_write_exclusive(t: &Tgtd, where_: &str) {
    let mut a = connect(t, HOST_A, 1);
    let mut b = connect(t, HOST_B, 2);
    assert_eq!(read_reservation(&mut b), Some((KEY_A, 1)), "{where_}");
    let (_, mut keys) = read_keys(&mut b);
    keys.sort_unstable();
    assert_eq!(keys, vec![KEY_A, KEY_B], "{where_}");
    assert_eq!(
        write_status(&mut b),
        ScsiStatus::ReservationConflict,
        "{where_}"
    );
    assert_eq!(read_status(&mut b), ScsiStatus::Good, "{where_}");
    assert_eq!(write_status(&mut a), ScsiStatus::Good, "{where_}");
    // The same host from another port (a new ISID) is another nexus,
    // unregistered: it may read but not write.
    let mut a2 = connect(t, HOST_A, 7);
    assert_eq!(
        write_status(&mut a2),
        ScsiStatus::ReservationConflict,
        "{where_}"
    );
    assert_eq!(read_status(&mut a2), ScsiStatus::Good, "{where_}");
}

fn ferry(t: &Tgtd, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_RUN_DIR", &t.run_dir)
        .output()
        .unwrap();
    check(&out, &format!("ferry {args:?}"))
}

#[test]
fn reservations_hold_through_crash_gateway_move_and_migration() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let spec = common::file_volume(dir.path(), 32 << 20);

    let mut gw1 = Tgtd::start(&dir.path().join("run1"));
    gw1.serve(&spec);
    {
        let mut a = connect(&gw1, HOST_A, 1);
        let mut b = connect(&gw1, HOST_B, 2);
        assert_eq!(prout(&mut a, 0, 0, 0, KEY_A), ScsiStatus::Good);
        assert_eq!(prout(&mut b, 0, 0, 0, KEY_B), ScsiStatus::Good);
        // A stranger's key and a wrong key are refused.
        assert_eq!(
            prout(&mut b, 1, 1, KEY_A, 0),
            ScsiStatus::ReservationConflict
        );
        assert_eq!(prout(&mut a, 1, 1, KEY_A, 0), ScsiStatus::Good);
        assert_eq!(read_keys(&mut a).0, 2);
    }
    assert_a_holds_write_exclusive(&gw1, "served");

    // A crash of the gateway forgets nothing: the state was saved before
    // each PR OUT was acknowledged.
    gw1.kill9();
    gw1.restart();
    gw1.serve(&spec);
    assert_a_holds_write_exclusive(&gw1, "after tgtd SIGKILL");

    // Another gateway takes the LUN over (the same target name, another
    // tgtd with its own portal).
    gw1.stop();
    let mut gw2 = Tgtd::start(&dir.path().join("run2"));
    gw2.serve(&spec);
    assert_a_holds_write_exclusive(&gw2, "on another gateway");

    // A migration to another volume, committed: the reservations move
    // with the data, and a restart of the gateway finds them there.
    let target = dir.path().join("w.img");
    let tspec = format!("file:{}", target.display());
    ferry(&gw2, &["migrate", "start", &spec, &tspec]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ferry(&gw2, &["migrate", "status", &spec, "--json"]).contains("\"copied\"") {
        assert!(Instant::now() < deadline, "the copy never finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    ferry(&gw2, &["migrate", "commit", &spec]);
    assert!(dir.path().join("w.img.ferry-pr").exists());
    assert_a_holds_write_exclusive(&gw2, "after the commit");
    gw2.kill9();
    gw2.restart();
    gw2.serve(&spec);
    assert_a_holds_write_exclusive(&gw2, "after the commit and a restart");

    // B preempts A: A hears REGISTRATIONS PREEMPTED once, then is a
    // stranger to an Exclusive Access reservation.
    let mut a = connect(&gw2, HOST_A, 1);
    let mut b = connect(&gw2, HOST_B, 2);
    assert_eq!(prout(&mut b, 4, 3, KEY_B, KEY_A), ScsiStatus::Good);
    let r = a
        .raw_cdb(&[0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0], None, 512)
        .unwrap();
    let sense = r.sense.expect("a unit attention");
    assert_eq!((sense.key, sense.asc, sense.ascq), (6, 0x2a, 0x05), "{r:?}");
    assert_eq!(read_status(&mut a), ScsiStatus::ReservationConflict);
    assert_eq!(read_reservation(&mut a), Some((KEY_B, 3)));
    assert_eq!(read_keys(&mut a).1, vec![KEY_B]);
    assert_eq!(write_status(&mut b), ScsiStatus::Good);
    // The administrator sees the state and clears it (a host died
    // holding it): the LUN is open to all again, and the registrants hear
    // RESERVATIONS PREEMPTED.
    let shown = ferry(&gw2, &["pr", "show", &spec, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["reservation"]["type"], "exclusive-access", "{v}");
    assert_eq!(v["registrations"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["reservation"]["holder"]["initiator"]
        .as_str()
        .unwrap()
        .starts_with(HOST_B));
    // Where the state is kept cannot move under a serving gateway.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["pr", "move", &spec, "--to-volume"])
        .env("FERRY_RUN_DIR", &gw2.run_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("stop serving it first"), "{why}");
    ferry(&gw2, &["pr", "clear", &spec]);
    let r = b.raw_cdb(&[0x00; 6], None, 0).unwrap();
    assert_eq!(
        r.sense.map(|s| (s.asc, s.ascq)),
        Some((0x2a, 0x03)),
        "{r:?}"
    );
    let r = a
        .raw_cdb(&[0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0], Some(&[0; 512]), 0)
        .unwrap();
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    // Offline, with no gateway serving it, the volume still tells.
    drop((a, b));
    gw2.stop();
    let shown = ferry(&gw2, &["pr", "show", &spec]);
    assert!(shown.contains("registrations: 0"), "{shown}");
}

#[test]
fn bad_persistent_reserve_input_gets_sense_and_changes_nothing() {
    let (t, _, _dir) = serving(8 << 20);
    let mut s = connect(&t, HOST_A, 1);
    let sense_of = |s: &mut Session, cdb: &[u8], out: Option<&[u8]>| {
        let r = s
            .raw_cdb(cdb, out, if out.is_some() { 0 } else { 256 })
            .unwrap();
        assert_eq!(r.status, ScsiStatus::CheckCondition, "{cdb:02x?}: {r:?}");
        let sense = r.sense.unwrap();
        (sense.key, sense.asc, sense.ascq)
    };
    let params = [0u8; 24];
    // Parameter list length 23: PARAMETER LIST LENGTH ERROR.
    let mut cdb = [0x5f, 0, 0, 0, 0, 0, 0, 0, 23, 0];
    assert_eq!(sense_of(&mut s, &cdb, Some(&params[..23])), (5, 0x1a, 0));
    // REGISTER AND MOVE without a TransportID or target port: INVALID
    // FIELD IN PARAMETER LIST.
    cdb[8] = 24;
    cdb[1] = 7;
    assert_eq!(sense_of(&mut s, &cdb, Some(&params)), (5, 0x26, 0));
    // Reserved service actions, PR IN SA 4+.
    for sa in [9u8, 0x1f] {
        cdb[1] = sa;
        assert_eq!(
            sense_of(&mut s, &cdb, Some(&params)),
            (5, 0x24, 0),
            "SA {sa}"
        );
    }
    assert_eq!(
        sense_of(&mut s, &[0x5e, 4, 0, 0, 0, 0, 0, 1, 0, 0], None),
        (5, 0x24, 0)
    );
    // RESERVE with a reserved type, once registered: INVALID FIELD IN CDB.
    assert_eq!(prout(&mut s, 0, 0, 0, 9), ScsiStatus::Good);
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&9u64.to_be_bytes());
    assert_eq!(
        sense_of(&mut s, &[0x5f, 1, 2, 0, 0, 0, 0, 0, 24, 0], Some(&p)),
        (5, 0x24, 0)
    );
    // SPEC_I_PT without its TransportID list: PARAMETER LIST LENGTH
    // ERROR; with RESERVE: INVALID FIELD IN PARAMETER LIST.
    p[20] = 0x08;
    assert_eq!(
        sense_of(&mut s, &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0], Some(&p)),
        (5, 0x1a, 0)
    );
    assert_eq!(
        sense_of(&mut s, &[0x5f, 1, 1, 0, 0, 0, 0, 0, 24, 0], Some(&p)),
        (5, 0x26, 0)
    );
    // Nothing changed but the one registration; tgtd is fine.
    assert_eq!(read_keys(&mut s), (1, vec![9]));
    assert_eq!(read_reservation(&mut s), None);
    assert_eq!(write_status(&mut s), ScsiStatus::Good);

    // ALL_TG_PT is taken (REPORT CAPABILITIES: ATP_C), and READ FULL
    // STATUS shows which registration was made with it.
    let mut b = connect(&t, HOST_B, 2);
    let caps = b
        .raw_cdb(&[0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0], None, 8)
        .unwrap();
    assert!(caps.is_good(), "{caps:?}");
    assert_eq!(caps.data[2] & 0x04, 0x04, "ATP_C");
    let mut p = [0u8; 24];
    p[8..16].copy_from_slice(&0xbu64.to_be_bytes());
    p[20] = 0x04;
    let r = b
        .raw_cdb(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0], Some(&p), 0)
        .unwrap();
    assert_eq!(r.status, ScsiStatus::Good, "REGISTER with ALL_TG_PT: {r:?}");
    let full = b
        .raw_cdb(&[0x5e, 3, 0, 0, 0, 0, 0, 0x10, 0, 0], None, 4096)
        .unwrap();
    assert!(full.is_good(), "{full:?}");
    let mut d = &full.data[8..];
    let mut flags = std::collections::BTreeMap::new();
    while d.len() >= 24 {
        let key = u64::from_be_bytes(d[0..8].try_into().unwrap());
        flags.insert(key, d[12] & 0x02);
        let tid_len = u32::from_be_bytes(d[20..24].try_into().unwrap()) as usize;
        d = &d[24 + tid_len..];
    }
    assert_eq!(flags, [(9, 0), (0xb, 0x02)].into_iter().collect());
}

/// The TransportID READ FULL STATUS reports for the registration with
/// `key`.
fn transport_id_of(s: &mut Session, key: u64) -> Vec<u8> {
    let full = s
        .raw_cdb(&[0x5e, 3, 0, 0, 0, 0, 0, 0x10, 0, 0], None, 4096)
        .unwrap();
    assert!(full.is_good(), "{full:?}");
    let mut d = &full.data[8..];
    while d.len() >= 24 {
        let len = u32::from_be_bytes(d[20..24].try_into().unwrap()) as usize;
        if u64::from_be_bytes(d[0..8].try_into().unwrap()) == key {
            return d[24..24 + len].to_vec();
        }
        d = &d[24 + len..];
    }
    panic!("no registration with key {key:#x} in READ FULL STATUS");
}

/// SPEC_I_PT over iSCSI: host A registers itself and host B's initiator
/// port (named by the TransportID READ FULL STATUS gave for it) in one
/// REGISTER; B then reserves with that key.
#[test]
fn spec_i_pt_registers_another_hosts_port() {
    let (t, _, _dir) = serving(8 << 20);
    let mut a = connect(&t, HOST_A, 1);
    let mut b = connect(&t, HOST_B, 2);
    assert_eq!(prout(&mut b, 0, 0, 0, KEY_B), ScsiStatus::Good);
    let b_tid = transport_id_of(&mut b, KEY_B);
    assert_eq!(prout(&mut b, 0, 0, KEY_B, 0), ScsiStatus::Good);
    assert_eq!(read_keys(&mut a).1, Vec::<u64>::new());
    let mut p = vec![0u8; 24];
    p[8..16].copy_from_slice(&KEY_A.to_be_bytes());
    p[20] = 0x08;
    p.extend_from_slice(&(b_tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&b_tid);
    let len = p.len() as u8;
    let r = a
        .raw_cdb(&[0x5f, 0, 0, 0, 0, 0, 0, 0, len, 0], Some(&p), 0)
        .unwrap();
    assert_eq!(r.status, ScsiStatus::Good, "REGISTER with SPEC_I_PT: {r:?}");
    assert_eq!(read_keys(&mut a).1, vec![KEY_A, KEY_A]);
    assert_eq!(prout(&mut b, 1, 1, KEY_A, 0), ScsiStatus::Good);
    assert_eq!(read_reservation(&mut a), Some((KEY_A, 1)));
    assert_eq!(write_status(&mut b), ScsiStatus::Good);
    assert_eq!(write_status(&mut a), ScsiStatus::ReservationConflict);
}

/// REGISTER AND MOVE over iSCSI: the holder hands its reservation to
/// another host's initiator port, named by the TransportID READ FULL
/// STATUS reports for it, and unregisters itself (UNREG).
#[test]
fn register_and_move_hands_the_reservation_to_another_host() {
    let (mut t, spec, _dir) = serving(8 << 20);
    let mut a = connect(&t, HOST_A, 1);
    let mut b = connect(&t, HOST_B, 2);
    assert_eq!(prout(&mut a, 0, 0, 0, KEY_A), ScsiStatus::Good);
    assert_eq!(prout(&mut a, 1, 1, KEY_A, 0), ScsiStatus::Good);
    assert_eq!(prout(&mut b, 0, 0, 0, KEY_B), ScsiStatus::Good);
    let b_tid = transport_id_of(&mut b, KEY_B);
    // Keys, UNREG, relative target port 1, the TransportID.
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&KEY_A.to_be_bytes());
    p[8..16].copy_from_slice(&KEY_B.to_be_bytes());
    p[17] = 0x02;
    p[18..20].copy_from_slice(&1u16.to_be_bytes());
    p[20..24].copy_from_slice(&(b_tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&b_tid);
    let len = p.len() as u8;
    let r = a
        .raw_cdb(&[0x5f, 7, 0, 0, 0, 0, 0, 0, len, 0], Some(&p), 0)
        .unwrap();
    assert_eq!(r.status, ScsiStatus::Good, "REGISTER AND MOVE: {r:?}");
    assert_eq!(read_reservation(&mut a), Some((KEY_B, 1)));
    assert_eq!(read_keys(&mut a).1, vec![KEY_B]);
    assert_eq!(write_status(&mut b), ScsiStatus::Good);
    assert_eq!(write_status(&mut a), ScsiStatus::ReservationConflict);
    // The move was saved: it holds through a tgtd crash and restart.
    drop((a, b));
    t.restart();
    t.serve(&spec);
    let mut b = connect(&t, HOST_B, 2);
    assert_eq!(read_reservation(&mut b), Some((KEY_B, 1)));
}

/// Fencing as `fence_scsi` does it: host B preempts-and-aborts host A
/// while A writes at queue depth 16. Once B's command returns, nothing A
/// sent lands any more: two reads of A's range a second apart agree, and
/// A's writes fail from then on.
#[test]
fn preempt_and_abort_fences_a_writing_host_at_once() {
    let (t, _, _dir) = serving(16 << 20);
    {
        let mut a = connect(&t, HOST_A, 1);
        assert_eq!(prout(&mut a, 0, 0, 0, KEY_A), ScsiStatus::Good);
        assert_eq!(prout(&mut a, 1, 1, KEY_A, 0), ScsiStatus::Good);
    }
    const BLOCKS: u32 = 2048;
    let load = Command::new(common::bin("ferry-iscsi"))
        .args(["--initiator", HOST_A, "--isid", "1", "load", &t.url(1, 1)])
        .args([
            "--qd",
            "16",
            "--read-pct",
            "0",
            "--random",
            "--seconds",
            "5",
        ])
        .args(["--blocks", &BLOCKS.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut b = connect(&t, HOST_B, 2);
    assert_eq!(prout(&mut b, 0, 0, 0, KEY_B), ScsiStatus::Good);
    assert_eq!(prout(&mut b, 5, 1, KEY_B, KEY_A), ScsiStatus::Good);
    let snapshot = |s: &mut Session| -> Vec<u8> {
        (0..BLOCKS / 256)
            .flat_map(|i| s.read(u64::from(i) * 256, 256).unwrap())
            .collect()
    };
    let first = snapshot(&mut b);
    std::thread::sleep(Duration::from_secs(1));
    let second = snapshot(&mut b);
    assert!(
        first == second,
        "host A's writes landed after the preemption"
    );
    let out = load.wait_with_output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(summary["writes"].as_u64().unwrap() > 0, "{summary}");
    assert!(
        summary["errors"].as_u64().unwrap() > 0,
        "A kept writing after the preemption: {summary}"
    );
}

/// A damaged reservations document keeps the LUN from opening with a
/// message naming the way out, rather than serving it unreserved (hosts
/// fencing each other would lose their fence); `ferry pr clear` on the
/// volume replaces it and the LUN opens.
#[test]
fn a_damaged_reservations_document_blocks_the_lun_until_cleared() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let spec = common::file_volume(dir.path(), 8 << 20);
    std::fs::write(
        dir.path().join("v.img.ferry-pr"),
        b"{\"format\": 1, \"gener",
    )
    .unwrap();
    let t = Tgtd::start(&dir.path().join("run"));
    t.add_target(1);
    let out = t.add_ferry_lun(1, 1, &spec);
    assert!(!out.status.success(), "a LUN with damaged PR state opened");
    let log = t.log_text();
    assert!(log.contains("ferry pr clear"), "{log}");
    let shown = ferry(&t, &["pr", "clear", &spec]);
    assert!(shown.contains("cleared"), "{shown}");
    check(&t.add_ferry_lun(1, 1, &spec), "the LUN after the clear");
    let mut s = connect(&t, HOST_A, 1);
    assert_eq!(read_keys(&mut s), (1, vec![]));
    assert_eq!(write_status(&mut s), ScsiStatus::Good);
}
