//! ferry LUNs served by a real tgtd (bs_ferry.so) to a real iSCSI
//! initiator (libiscsi): data integrity through a live migration with
//! pause/resume, a SIGKILL of tgtd mid-migration and its restart, commit,
//! another restart; abort; LUN identity throughout; bad input.
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, check, Tgtd};
use ferry_initiator::{ScsiStatus, Session};
use serde_json::Value;

/// 128 MiB: 262144 blocks of 512 bytes, in four ranges of 65536 blocks
/// that the phases of a test load one each, so each phase's log can be
/// checked on its own at the end.
const SIZE: &str = "128M";
const RANGE: u64 = 65536;

fn iscsi(args: &[&str]) -> std::process::Output {
    Command::new(bin("ferry-iscsi"))
        .args(args)
        .output()
        .unwrap()
}

/// Starts a verifying load on range `r` in the background.
fn load(url: &str, r: u64, seconds: u32, log: &Path) -> Child {
    Command::new(bin("ferry-iscsi"))
        .args(["load", url, "--qd", "8", "--read-pct", "50", "--random"])
        .args(["--seconds", &seconds.to_string(), "--seed", "11"])
        .args([
            "--offset-blocks",
            &(r * RANGE).to_string(),
            "--blocks",
            &RANGE.to_string(),
        ])
        .arg("--log")
        .arg(log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn verify_log(url: &str, log: &Path) {
    let out = iscsi(&["load", url, "--verify-log", log.to_str().unwrap()]);
    check(&out, &format!("verify-log {}", log.display()));
}

fn verify_pattern(url: &str, r: u64, log: &Path) {
    let out = iscsi(&[
        "verify-pattern",
        url,
        "--seed",
        "7",
        "--offset-blocks",
        &(r * RANGE).to_string(),
        "--blocks",
        &RANGE.to_string(),
        "--skip-log",
        log.to_str().unwrap(),
    ]);
    check(&out, "verify-pattern");
}

fn identity(url: &str) -> (String, String) {
    let v: Value = serde_json::from_str(&check(&iscsi(&["info", url, "--json"]), "info")).unwrap();
    (v["serial"].to_string(), v["device_id"].to_string())
}

fn status(t: &Tgtd, vol: &str) -> Value {
    t.ferry_json(&["migrate", "status", vol, "--json"])
}

fn wait_state(t: &Tgtd, vol: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = status(t, vol);
        if s["state"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "migration never became {want}: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    check(&out, "sha256sum")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn migration_over_iscsi_survives_pause_tgtd_kill_restart_and_commit() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let src = format!("file:{}", dir.path().join("src.img").display());
    let dst_path = dir.path().join("dst.img");
    let dst = format!("file:{}", dst_path.display());
    let logs: Vec<_> = (0..4)
        .map(|i| dir.path().join(format!("load{i}.log")))
        .collect();
    let mut t = Tgtd::start(&dir.path().join("run"));
    check(
        &t.ferry(&["volume", "create", &src, "--size", SIZE]),
        "volume create",
    );
    t.serve(&src);
    let url = t.url(1, 1);
    check(
        &iscsi(&["write-pattern", &url, "--seed", "7"]),
        "write-pattern",
    );
    let id0 = identity(&url);

    // Phase 0: migration starts under load; pause and resume mid-way.
    let p = t.ferry_json(&[
        "migrate",
        "start",
        &src,
        &dst,
        "--rate",
        "8M",
        "--region-size",
        "1M",
        "--json",
    ]);
    assert_eq!(p["state"], "copying");
    let l0 = load(&url, 0, 3, &logs[0]);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        t.ferry_json(&["migrate", "pause", &src, "--json"])["paused"],
        true
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        t.ferry_json(&["migrate", "resume", &src, "--json"])["paused"],
        false
    );
    check(&l0.wait_with_output().unwrap(), "load 0");
    verify_log(&url, &logs[0]);

    // Phase 1: tgtd is killed with SIGKILL under load, mid-migration.
    let l1 = load(&url, 1, 30, &logs[1]);
    std::thread::sleep(Duration::from_millis(1500));
    let before = status(&t, &src);
    assert_eq!(before["state"], "copying", "{before}");
    t.kill9();
    let out = l1.wait_with_output().unwrap();
    assert!(!out.status.success(), "the load should see the target die");
    t.restart();
    t.serve(&src); // the same configuration as before the crash
    let after = status(&t, &src);
    assert_eq!(after["state"], "copying", "{after}");
    assert!(
        after["regions_done"].as_u64() >= before["regions_done"].as_u64(),
        "{before} -> {after}"
    );
    verify_log(&url, &logs[0]);
    verify_log(&url, &logs[1]);
    assert_eq!(
        identity(&url),
        id0,
        "the LUN's identity changed across the crash"
    );

    // Phase 2: the copy finishes under load; commit.
    let l2 = load(&url, 2, 3, &logs[2]);
    t.ferry_json(&["migrate", "rate", &src, "unlimited", "--json"]);
    check(&l2.wait_with_output().unwrap(), "load 2");
    wait_state(&t, &src, "copied");
    assert_eq!(
        t.ferry_json(&["migrate", "commit", &src, "--json"])["state"],
        "committed"
    );
    for (i, log) in logs.iter().take(3).enumerate() {
        verify_log(&url, log);
        verify_pattern(&url, i as u64, log);
    }
    assert_eq!(identity(&url), id0);

    // Phase 3: an orderly restart with the same configuration serves the
    // committed target; writes continue.
    t.stop();
    t.restart();
    t.serve(&src);
    assert_eq!(identity(&url), id0);
    check(
        &load(&url, 3, 2, &logs[3]).wait_with_output().unwrap(),
        "load 3",
    );
    for log in &logs {
        verify_log(&url, log);
    }
    let over_iscsi = check(&iscsi(&["checksum", &url]), "checksum")
        .trim()
        .to_string();
    assert_eq!(
        over_iscsi,
        sha256_file(&dst_path),
        "the LUN is not the target file"
    );
    let info = t.ferry_json(&["volume", "info", &src, "--json"]);
    assert_eq!(info["migrated_to"]["committed"], true);
}

#[test]
fn abort_over_iscsi_gives_the_source_every_write_back() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src.img");
    let src = format!("file:{}", src_path.display());
    let dst_path = dir.path().join("dst.img");
    let dst = format!("file:{}", dst_path.display());
    let log = dir.path().join("load.log");
    let t = Tgtd::start(&dir.path().join("run"));
    check(
        &t.ferry(&["volume", "create", &src, "--size", SIZE]),
        "volume create",
    );
    t.serve(&src);
    let url = t.url(1, 1);
    check(
        &iscsi(&["write-pattern", &url, "--seed", "7"]),
        "write-pattern",
    );
    t.ferry_json(&[
        "migrate",
        "start",
        &src,
        &dst,
        "--rate",
        "16M",
        "--region-size",
        "1M",
        "--json",
    ]);
    let l = load(&url, 1, 4, &log);
    std::thread::sleep(Duration::from_millis(1500));
    // Abort while the load runs; I/O continues through the copy-back.
    assert_eq!(
        t.ferry_json(&["migrate", "abort", &src, "--json"])["state"],
        "aborting"
    );
    check(&l.wait_with_output().unwrap(), "load");
    wait_state(&t, &src, "aborted");
    verify_log(&url, &log);
    verify_pattern(&url, 1, &log);
    assert!(!dst_path.exists(), "the aborted target was not discarded");
    let over_iscsi = check(&iscsi(&["checksum", &url]), "checksum")
        .trim()
        .to_string();
    assert_eq!(
        over_iscsi,
        sha256_file(&src_path),
        "the source does not hold the LUN's data"
    );
}

fn expect_sense(s: &mut Session, cdb: &[u8], out: Option<&[u8]>, key: u8, asc: u8, what: &str) {
    let r = s
        .raw_cdb(cdb, out, if out.is_some() { 0 } else { 4096 })
        .unwrap();
    assert_eq!(r.status, ScsiStatus::CheckCondition, "{what}: {r:?}");
    let sense = r.sense.unwrap_or_else(|| panic!("{what}: no sense"));
    assert_eq!((sense.key, sense.asc), (key, asc), "{what}: {sense:?}");
}

fn expect_good(s: &mut Session, cdb: &[u8], out: Option<&[u8]>, in_len: usize, what: &str) {
    let r = s.raw_cdb(cdb, out, in_len).unwrap();
    assert_eq!(r.status, ScsiStatus::Good, "{what}: {r:?}");
}

#[test]
fn bad_input_gets_errors_or_sense_and_tgtd_survives() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let src = format!("file:{}", dir.path().join("src.img").display());
    let mut t = Tgtd::start(&dir.path().join("run"));
    check(
        &t.ferry(&["volume", "create", &src, "--size", "16M"]),
        "volume create",
    );
    t.add_target(1);
    // Bad backing-store specs and options are refused; tgtd carries on.
    for spec in ["nbd:volume", "file:/nonexistent/ferry.img", "rbd:"] {
        let out = t.add_ferry_lun(1, 1, spec);
        assert!(!out.status.success(), "{spec:?} was accepted");
    }
    let out = t.add_ferry_lun_with(1, 1, &src, &["--bsopts", "bogus=1"]);
    assert!(!out.status.success(), "unknown --bsopts accepted");
    assert!(t.alive());
    let log = t.log_text();
    assert!(log.contains("unknown volume type"), "{log}");
    assert!(log.contains("No such file"), "{log}");
    assert!(log.contains("bogus"), "{log}");

    check(&t.add_ferry_lun(1, 1, &src), "a good LUN");
    let mut s = Session::connect(&t.url(1, 1)).unwrap();
    let blocks = s.num_blocks();
    // READ(16) past the end: ILLEGAL REQUEST / LBA OUT OF RANGE.
    let mut read16 = [0u8; 16];
    read16[0] = 0x88;
    read16[2..10].copy_from_slice(&(blocks - 1).to_be_bytes());
    read16[13] = 2;
    expect_sense(&mut s, &read16, None, 0x05, 0x21, "READ(16) past the end");
    // An LBA so large that LBA + length overflows.
    read16[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
    expect_sense(&mut s, &read16, None, 0x05, 0x21, "READ(16) overflowing");
    // Zero-length READ and WRITE complete without touching the volume.
    expect_good(
        &mut s,
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        None,
        0,
        "READ(10) of 0 blocks",
    );
    expect_good(
        &mut s,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        None,
        0,
        "WRITE(10) of 0 blocks",
    );
    // WRITE SAME(10) with 0 blocks runs to the end of the LUN.
    let last = (blocks - 4) as u32;
    let mut ws = [0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    ws[2..6].copy_from_slice(&last.to_be_bytes());
    expect_good(&mut s, &ws, Some(&[0x5a; 512]), 0, "WRITE SAME to the end");
    let tail = s.read(blocks - 4, 4).unwrap();
    assert!(tail.iter().all(|&b| b == 0x5a));
    // VERIFY(10) with BYTCHK and wrong data: MISCOMPARE.
    expect_sense(
        &mut s,
        &[0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0],
        Some(&[0xee; 512]),
        0x0e,
        0x1d,
        "VERIFY miscompare",
    );
    // UNMAP with a descriptor past the end.
    let mut list = vec![0u8, 22, 0, 16, 0, 0, 0, 0];
    list.extend_from_slice(&blocks.to_be_bytes());
    list.extend_from_slice(&8u32.to_be_bytes());
    list.extend_from_slice(&[0; 4]);
    expect_sense(
        &mut s,
        &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0],
        Some(&list),
        0x05,
        0x21,
        "UNMAP past the end",
    );
    // Malformed CDBs: protection fields, a vendor-specific opcode.
    expect_sense(
        &mut s,
        &[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0],
        None,
        0x05,
        0x24,
        "READ(10) with RDPROTECT",
    );
    let r = s.raw_cdb(&[0xc5, 0, 0, 0, 0, 0], None, 0).unwrap();
    assert_eq!(r.status, ScsiStatus::CheckCondition, "vendor opcode: {r:?}");
    // And the LUN still works.
    s.write(0, &[1u8; 4096]).unwrap();
    assert_eq!(s.read(0, 8).unwrap(), vec![1u8; 4096]);
    assert!(t.alive(), "tgtd died: {}", t.log_text());
}

/// The WCE bit of the caching mode page, read with MODE SENSE(6).
fn wce(s: &mut Session) -> bool {
    // DBD set, page 8 (caching), current values.
    let r = s
        .raw_cdb(&[0x1a, 0x08, 0x08, 0, 255, 0], None, 255)
        .unwrap();
    assert_eq!(r.status, ScsiStatus::Good, "MODE SENSE: {r:?}");
    // 4-byte header, no block descriptor; page byte 2 bit 2 is WCE.
    assert_eq!(
        r.data[4] & 0x3f,
        0x08,
        "caching page expected: {:?}",
        r.data
    );
    r.data[6] & 0x04 != 0
}

#[test]
fn cache_modes_show_in_wce_and_follow_changes() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let vol = format!("file:{}", dir.path().join("v.img").display());
    let t = Tgtd::start(&dir.path().join("run"));
    check(
        &t.ferry(&["volume", "create", &vol, "--size", "16M"]),
        "volume create",
    );
    t.add_target(1);
    // A typo in the mode is refused; a LUN starts in the mode asked for.
    let lun = |n: u32, bsopts: &str| t.add_ferry_lun_with(1, n, &vol, &["--bsopts", bsopts]);
    assert!(!lun(1, "cache=fast").status.success());
    check(&lun(1, "cache=writethrough"), "LUN in writethrough");
    let mut s = Session::connect(&t.url(1, 1)).unwrap();
    assert!(!wce(&mut s), "writethrough shows WCE=0");
    // An initiator cannot turn the cache on in writethrough: the mode
    // wins again by the next command.
    expect_good(
        &mut s,
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        None,
        512,
        "READ",
    );

    let set = |m: &str| check(&t.ferry(&["volume", "cache-mode", &vol, m]), "cache-mode");
    assert!(set("writeback").contains("cache mode writeback"));
    expect_good(
        &mut s,
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        None,
        512,
        "READ",
    );
    assert!(wce(&mut s), "writeback starts with WCE=1");
    set("directsync");
    expect_good(
        &mut s,
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        None,
        512,
        "READ",
    );
    assert!(!wce(&mut s), "directsync shows WCE=0");
    set("unsafe");
    expect_good(
        &mut s,
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        None,
        512,
        "READ",
    );
    assert!(wce(&mut s), "unsafe shows WCE=1");
    // Writes and SYNCHRONIZE CACHE still succeed in every mode.
    for m in ["unsafe", "none", "writethrough"] {
        set(m);
        let mut w = [0u8; 10];
        w[0] = 0x2a;
        w[1] = 0x08; // FUA
        w[8] = 1;
        expect_good(&mut s, &w, Some(&[0x5a; 512]), 0, "WRITE(10) FUA");
        expect_good(
            &mut s,
            &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            None,
            0,
            "SYNCHRONIZE CACHE",
        );
    }
    let out = t.ferry(&["volume", "cache-mode", &vol, "fast"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown cache mode"));
}

#[test]
fn snapshot_restore_under_load_keeps_the_initiator_connected() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let vol = format!("file:{}", dir.path().join("v.img").display());
    let t = Tgtd::start(&dir.path().join("run"));
    check(
        &t.ferry(&["volume", "create", &vol, "--size", SIZE]),
        "volume create",
    );
    t.serve(&vol);
    let url = t.url(1, 1);
    let range0 = ["--offset-blocks", "0", "--blocks", &RANGE.to_string()];
    let pattern = |seed: &str, verb: &str| {
        let mut args = vec![verb, url.as_str(), "--seed", seed];
        args.extend(range0);
        check(&iscsi(&args), &format!("{verb} {seed}"));
    };
    pattern("7", "write-pattern");
    check(
        &t.ferry(&["snapshot", "create", &vol, "s1"]),
        "snapshot create",
    );
    pattern("8", "write-pattern");
    pattern("8", "verify-pattern");

    // A session that stays logged in across the restore.
    let mut s = Session::connect(&url).unwrap();
    expect_good(
        &mut s,
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        None,
        512,
        "READ before",
    );
    // A verifying load on the other half runs through the restore.
    let log = dir.path().join("load.log");
    let load = load(&url, 1, 4, &log);
    std::thread::sleep(Duration::from_millis(1500));
    let out = check(
        &t.ferry(&["snapshot", "restore", &vol, "s1"]),
        "snapshot restore",
    );
    assert!(out.contains("before-restore-"), "{out}");
    // The restore rolls back the load's own earlier writes, so its
    // verification reports mismatches by design; what must hold is that
    // no command failed and the initiator was never disconnected.
    let out = load.wait_with_output().unwrap();
    let stats: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("load output: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(stats["errors"], 0, "{stats:#}");
    assert!(
        stats["writes"].as_u64().unwrap() > 0 && stats["first_error"].is_null(),
        "{stats:#}"
    );
    expect_good(
        &mut s,
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        None,
        512,
        "READ after, same session",
    );
    pattern("7", "verify-pattern");

    let list = check(
        &t.ferry(&["snapshot", "list", &vol, "--json"]),
        "snapshot list",
    );
    let list: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"s1") && names.iter().any(|n| n.starts_with("before-restore-")),
        "{names:?}"
    );
    // Restoring the safety snapshot undoes the restore.
    let before = names
        .iter()
        .find(|n| n.starts_with("before-restore-"))
        .unwrap();
    check(
        &t.ferry(&["snapshot", "restore", &vol, before]),
        "undo the restore",
    );
    pattern("8", "verify-pattern");

    // Bad input and a migration in progress are refused clearly.
    for (args, want) in [
        (
            vec!["snapshot", "create", vol.as_str(), "../x"],
            "invalid snapshot name",
        ),
        (
            vec!["snapshot", "restore", vol.as_str(), "nope"],
            "no snapshot nope",
        ),
        (
            vec!["snapshot", "create", vol.as_str(), "s1"],
            "already exists",
        ),
        (
            vec!["snapshot", "delete", vol.as_str(), "nope"],
            "no snapshot nope",
        ),
    ] {
        let out = t.ferry(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    let dst = format!("file:{}", dir.path().join("dst.img").display());
    check(
        &t.ferry(&["migrate", "start", &vol, &dst, "--paused", "--json"]),
        "migrate start",
    );
    let out = t.ferry(&["snapshot", "create", &vol, "s2"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("being migrated"), "{e}");
    check(
        &t.ferry(&["migrate", "abort", &vol, "--json"]),
        "migrate abort",
    );
    check(
        &t.ferry(&["snapshot", "delete", &vol, "s1"]),
        "snapshot delete",
    );
}

/// GET LBA STATUS is answered from the volume's allocation (tgtd's own
/// looks at a file descriptor a ferry LU does not have): written 4 KiB
/// units are mapped, unmapped ones deallocated, past the end is refused.
#[test]
fn get_lba_status_follows_writes_and_unmaps() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let t = Tgtd::start(&dir.path().join("run"));
    t.serve(&common::file_volume(dir.path(), 8 << 20));
    let mut s = Session::connect(&t.url(1, 1)).unwrap();
    s.write(64, &[7u8; 64 * 512]).unwrap();
    s.unmap(80, 16).unwrap();
    let status = |s: &mut Session, lba: u64| -> Vec<(u64, u32, u8)> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x12;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&4096u32.to_be_bytes());
        let r = s.raw_cdb(&cdb, None, 4096).unwrap();
        assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
        let len = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
        assert_eq!(r.data.len(), len + 4, "the reply is exactly its length");
        r.data[8..]
            .chunks(16)
            .map(|d| {
                (
                    u64::from_be_bytes(d[0..8].try_into().unwrap()),
                    u32::from_be_bytes(d[8..12].try_into().unwrap()),
                    d[12],
                )
            })
            .collect()
    };
    let blocks = 8 << 20 >> 9;
    assert_eq!(
        status(&mut s, 0),
        vec![
            (0, 64, 1),
            (64, 16, 0),
            (80, 16, 1),
            (96, 32, 0),
            (128, blocks - 128, 1)
        ]
    );
    assert_eq!(status(&mut s, 90)[0], (90, 6, 1));
    let mut beyond = [0u8; 16];
    beyond[0] = 0x9e;
    beyond[1] = 0x12;
    beyond[2..10].copy_from_slice(&u64::from(blocks).to_be_bytes());
    beyond[13] = 64;
    let r = s.raw_cdb(&beyond, None, 64).unwrap();
    let sense = r.sense.expect("sense");
    assert_eq!((sense.key, sense.asc), (5, 0x21), "{r:?}");
}

/// A 16-byte READ/WRITE-layout CDB: `opcode`, LBA, block count.
fn cdb16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn lun_of_4096_byte_blocks_places_data_by_4096_and_refuses_past_the_end() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let t = Tgtd::start(&dir.path().join("run"));
    // 8 MiB: 2048 blocks of 4096 bytes.
    let spec = common::file_volume(dir.path(), 8 << 20);
    let blocks: u64 = 2048;
    t.add_target(1);
    check(
        &t.add_ferry_lun_with(1, 1, &spec, &["--blocksize", "4096"]),
        "adding a ferry LUN with 4096-byte blocks",
    );
    let mut s = Session::connect(&t.url(1, 1)).unwrap();
    // READ CAPACITY(16): the last LBA and the block length.
    let mut rc16 = [0u8; 16];
    rc16[0] = 0x9e;
    rc16[1] = 0x10;
    rc16[13] = 32;
    let r = s.raw_cdb(&rc16, None, 32).unwrap();
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    assert_eq!(
        u64::from_be_bytes(r.data[0..8].try_into().unwrap()),
        blocks - 1
    );
    assert_eq!(u32::from_be_bytes(r.data[8..12].try_into().unwrap()), 4096);

    // The last two blocks: WRITE(16) with FUA, READ(16), VERIFY(16) with
    // BYTCHK, and the bytes in the file at LBA * 4096.
    let data: Vec<u8> = (0..2 * 4096).map(|i| (i % 251) as u8).collect();
    let mut write = cdb16(0x8a, blocks - 2, 2);
    write[1] = 0x08;
    expect_good(
        &mut s,
        &write,
        Some(&data),
        0,
        "WRITE(16) of the last 2 blocks",
    );
    let r = s
        .raw_cdb(&cdb16(0x88, blocks - 2, 2), None, 2 * 4096)
        .unwrap();
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    assert_eq!(r.data, data, "READ(16) of the last 2 blocks");
    let mut verify = cdb16(0x8f, blocks - 2, 2);
    verify[1] = 0x02;
    expect_good(
        &mut s,
        &verify,
        Some(&data),
        0,
        "VERIFY(16) of the last 2 blocks",
    );
    let mut other = data.clone();
    other[4096 + 7] ^= 0xff;
    expect_sense(
        &mut s,
        &verify,
        Some(&other),
        0x0e,
        0x1d,
        "VERIFY(16) miscompare",
    );
    let file = std::fs::read(dir.path().join("v.img")).unwrap();
    assert_eq!(file.len(), 8 << 20, "the file did not grow");
    assert_eq!(&file[(blocks as usize - 2) * 4096..], &data[..]);

    // Past the end: one block beyond, and two blocks over it, for each
    // kind of command; nothing lands in the file.
    let block = vec![0x5au8; 4096];
    let two = vec![0x5au8; 2 * 4096];
    // With BYTCHK: tgtd answers a VERIFY without it itself, GOOD without
    // looking at the range.
    let mut verify_over = cdb16(0x8f, blocks - 1, 2);
    verify_over[1] = 0x02;
    for (cdb, out, what) in [
        (
            cdb16(0x8a, blocks, 1),
            Some(&block[..]),
            "WRITE(16) one past",
        ),
        (cdb16(0x8a, blocks - 1, 2), Some(&two[..]), "WRITE(16) over"),
        (cdb16(0x88, blocks, 1), None, "READ(16) one past"),
        (cdb16(0x88, blocks - 1, 2), None, "READ(16) over"),
        (verify_over, Some(&two[..]), "VERIFY(16) over"),
        (
            cdb16(0x93, blocks - 1, 2),
            Some(&block[..]),
            "WRITE SAME(16) over",
        ),
    ] {
        expect_sense(&mut s, &cdb, out, 5, 0x21, what);
    }
    let write10 = [0x2a, 0, 0, 0, 0x08, 0x00, 0, 0, 1, 0]; // LBA 2048
    expect_sense(
        &mut s,
        &write10,
        Some(&block),
        5,
        0x21,
        "WRITE(10) one past",
    );
    let file = std::fs::read(dir.path().join("v.img")).unwrap();
    assert_eq!(file.len(), 8 << 20, "the file did not grow");
    assert_eq!(&file[(blocks as usize - 2) * 4096..], &data[..]);
}

/// Polls `vol`'s status until `want` holds (bounded); returns it.
fn status_until(t: &Tgtd, vol: &str, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(t, vol);
        if want(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never saw {what}: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn migrations_in_one_tgtd_share_the_node_copy_bandwidth_by_priority() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let t = Tgtd::start(&dir.path().join("run"));
    let spec = |name: &str| format!("file:{}", dir.path().join(name).display());
    let (a, b) = (spec("a.img"), spec("b.img"));
    // Written through (the copy skips holes, which cost no bandwidth).
    for name in ["a.img", "b.img"] {
        std::fs::write(dir.path().join(name), vec![0x5a; 64 << 20]).unwrap();
    }
    t.add_target(1);
    check(&t.add_ferry_lun(1, 1, &a), "LUN a");
    check(&t.add_ferry_lun(1, 2, &b), "LUN b");
    check(&t.ferry(&["migrate", "bandwidth", "4M"]), "bandwidth");
    for (src, dst, prio) in [(&a, spec("a2.img"), "100"), (&b, spec("b2.img"), "300")] {
        let p = t.ferry_json(&[
            "migrate",
            "start",
            src,
            &dst,
            "--priority",
            prio,
            "--region-size",
            "1M",
            "--json",
        ]);
        assert_eq!(p["priority"], prio.parse::<u64>().unwrap(), "{p}");
    }
    // Both copying: 1 : 3 of the node's 4 MiB/s.
    let mib = 1u64 << 20;
    status_until(&t, &a, "a's share of a quarter", |s| {
        s["share_rate"] == mib && s["node_bandwidth"] == 4 * mib
    });
    status_until(&t, &b, "b's share of three quarters", |s| {
        s["share_rate"] == 3 * mib
    });
    // A paused migration takes no share: a gets it all.
    t.ferry_json(&["migrate", "pause", &b, "--json"]);
    status_until(&t, &a, "a's share of all of it", |s| {
        s["share_rate"] == 4 * mib
    });
    // Held to 4 MiB/s, a 64 MiB copy is nowhere near done (flat out, it
    // takes well under a second here).
    let s = status(&t, &a);
    assert_eq!(s["state"], "copying", "{s}");
    assert!(s["bytes_done"].as_u64().unwrap() < 48 * mib, "{s}");
    // Lifting the bandwidth lets both finish.
    check(
        &t.ferry(&["migrate", "bandwidth", "unlimited"]),
        "bandwidth",
    );
    t.ferry_json(&["migrate", "resume", &b, "--json"]);
    wait_state(&t, &a, "copied");
    wait_state(&t, &b, "copied");
    let s = status(&t, &a);
    assert_eq!(s["node_bandwidth"], Value::Null, "{s}");
}
