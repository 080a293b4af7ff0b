//! RBD LUNs over iSCSI: a tgtd LUN on a Ceph RBD image (loopback cluster,
//! `CEPH_CONF`) migrated live under a verifying iSCSI load between pools,
//! across clusters (`CEPH_CONF_B`) and from RBD to a local file,
//! each migration committed and checked. Every test here is `#[ignore]`d
//! (a plain test run reports it skipped): `scripts/test.sh` starts the
//! clusters and runs them.
#![cfg(feature = "rbd")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, check, Tgtd};
use serde_json::Value;

/// An image name no earlier run of the tests used (the loopback clusters
/// keep their images between runs).
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}{}x{nanos}", std::process::id())
}

fn iscsi(args: &[&str]) -> String {
    let out = Command::new(bin("ferry-iscsi"))
        .args(args)
        .output()
        .unwrap();
    check(&out, &format!("ferry-iscsi {args:?}"))
}

/// Blocks each step loads: step `k` owns `[k * STEP, (k + 1) * STEP)`, so
/// its log and the pattern around it can be checked on their own.
const STEP: u64 = 16384;

/// Migrates the LUN's volume to `target` under load on step `k`'s blocks,
/// commits, verifies.
fn migrate_under_load(t: &Tgtd, lun_spec: &str, target: &str, log: &Path, url: &str, k: u64) {
    let (first, count) = ((k * STEP).to_string(), STEP.to_string());
    let load = Command::new(bin("ferry-iscsi"))
        .args([
            "load",
            url,
            "--seconds",
            "4",
            "--qd",
            "8",
            "--read-pct",
            "50",
            "--random",
        ])
        .args(["--seed", "5", "--offset-blocks", &first, "--blocks", &count])
        .arg("--log")
        .arg(log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let p = t.ferry_json(&[
        "migrate", "start", lun_spec, target, "--rate", "64M", "--json",
    ]);
    assert_eq!(p["state"], "copying", "{p}");
    check(&load.wait_with_output().unwrap(), "load");
    let deadline = Instant::now() + Duration::from_secs(120);
    while t.ferry_json(&["migrate", "status", lun_spec, "--json"])["state"] != "copied" {
        assert!(
            Instant::now() < deadline,
            "the copy to {target} did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        t.ferry_json(&["migrate", "commit", lun_spec, "--json"])["state"],
        "committed"
    );
    iscsi(&["load", url, "--verify-log", log.to_str().unwrap()]);
    iscsi(&[
        "verify-pattern",
        url,
        "--seed",
        "9",
        "--skip-log",
        log.to_str().unwrap(),
        "--offset-blocks",
        &first,
        "--blocks",
        &count,
    ]);
}

#[test]
#[ignore = "needs two Ceph clusters (CEPH_CONF, CEPH_CONF_B): scripts/test.sh starts them"]
fn rbd_lun_migrates_between_pools_clusters_and_to_a_file_under_iscsi_load() {
    common::require("tgtd");
    let conf = common::ceph_conf();
    let conf_b = common::ceph_conf_b();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("tgt");
    let src = format!("rbd:ferry-a/{name}?conf={conf}");
    let t = Tgtd::start(&dir.path().join("run"));
    check(
        &Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["volume", "create", &src, "--size", "64M"])
            .output()
            .unwrap(),
        "create the RBD image",
    );
    t.serve(&src);
    let url = t.url(1, 1);
    // 65536 blocks of 512 bytes: the first 32 MiB get a pattern and a load.
    iscsi(&["write-pattern", &url, "--seed", "9", "--blocks", "65536"]);
    let serial = iscsi(&["info", &url, "--json"]);

    // Between pools of one cluster.
    let pool_b = format!("rbd:ferry-b/{name}?conf={conf}");
    migrate_under_load(&t, &src, &pool_b, &dir.path().join("l1.log"), &url, 0);

    // Across clusters.
    let other = format!("rbd:ferry-a/{name}?conf={conf_b}");
    migrate_under_load(&t, &src, &other, &dir.path().join("l2.log"), &url, 1);

    // And out of Ceph onto a local file; the file then holds the LUN.
    let file = dir.path().join("final.img");
    migrate_under_load(
        &t,
        &src,
        &format!("file:{}", file.display()),
        &dir.path().join("l3.log"),
        &url,
        2,
    );
    for log in ["l1.log", "l3.log"] {
        iscsi(&[
            "load",
            &url,
            "--verify-log",
            dir.path().join(log).to_str().unwrap(),
        ]);
    }
    let over_iscsi = iscsi(&["checksum", &url]).trim().to_string();
    let out = Command::new("sha256sum").arg(&file).output().unwrap();
    let on_disk = check(&out, "sha256sum")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(over_iscsi, on_disk);
    assert_eq!(
        iscsi(&["info", &url, "--json"]),
        serial,
        "the LUN's identity changed"
    );
}

#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn file_volume_migrates_into_rbd_offline_with_the_cli() {
    use ferry_core::Volume;
    let conf = common::ceph_conf();
    let dir = tempfile::tempdir().unwrap();
    let src = format!("file:{}", dir.path().join("src.img").display());
    // The loopback clusters outlive a run: a name from the pid alone
    // met an image a run before left behind.
    let name = unique("fromfile");
    let dst = format!("rbd:ferry-b/{name}?conf={conf}");
    let data = ferry_core::pattern::bytes(77, 8 << 20);
    {
        let (vol, _) = ferry_host::VolumeSpec::parse(&src)
            .unwrap()
            .create(16 << 20, None)
            .unwrap();
        vol.write_at(&data, 4 << 20).unwrap(); // a hole, data, a hole
        vol.flush().unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["migrate", "start", &src, &dst, "--commit", "--json"])
        .env("FERRY_RUN_DIR", dir.path().join("run"))
        .output()
        .unwrap();
    let p: Value = serde_json::from_str(&check(&out, "file -> rbd migration")).unwrap();
    assert_eq!(p["state"], "committed");
    let (vol, _) = ferry_host::VolumeSpec::parse(&dst).unwrap().open().unwrap();
    let mut got = vec![0u8; 16 << 20];
    vol.read_at(&mut got, 0).unwrap();
    assert!(got[..4 << 20].iter().all(|&b| b == 0));
    assert!(
        got[4 << 20..12 << 20] == data[..],
        "the RBD image lacks the file's data"
    );
    assert!(got[12 << 20..].iter().all(|&b| b == 0));
}

/// Seed 002 on RBD: snapshot + protect, and restore as a clone the LUN is
/// switched to while an initiator stays logged in; the LUN keeps its name
/// across a tgtd restart (the old image forwards to the clone).
#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn rbd_snapshot_restore_switches_the_lun_to_a_clone() {
    common::require("tgtd");
    let conf = common::ceph_conf();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("snap");
    let vol = format!("rbd:ferry-a/{name}?conf={conf}");
    let mut t = Tgtd::start(&dir.path().join("run"));
    check(
        &t.ferry(&["volume", "create", &vol, "--size", "32M"]),
        "create the image",
    );
    t.serve(&vol);
    let url = t.url(1, 1);
    iscsi(&["write-pattern", &url, "--seed", "7"]);
    check(
        &t.ferry(&["snapshot", "create", &vol, "s1"]),
        "snapshot create",
    );
    iscsi(&["write-pattern", &url, "--seed", "8"]);
    let mut s = ferry_initiator::Session::connect(&url).unwrap();
    let read = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    assert_eq!(
        s.raw_cdb(&read, None, 512).unwrap().status,
        ferry_initiator::ScsiStatus::Good
    );
    let out = check(
        &t.ferry(&["snapshot", "restore", &vol, "s1"]),
        "snapshot restore",
    );
    assert!(out.contains("before-restore-"), "{out}");
    assert_eq!(
        s.raw_cdb(&read, None, 512).unwrap().status,
        ferry_initiator::ScsiStatus::Good,
        "the session outlived the switch"
    );
    iscsi(&["verify-pattern", &url, "--seed", "7"]);
    // s1 now has a clone: it cannot go while the LUN runs on it.
    let out = t.ferry(&["snapshot", "delete", &vol, "s1"]);
    assert!(!out.status.success(), "a snapshot with a clone was deleted");
    // The configured name survives a restart: it forwards to the clone.
    t.kill9();
    t.restart();
    t.serve(&vol); // the same LUN after a restart
    iscsi(&["verify-pattern", &url, "--seed", "7"]);
    let info = check(&t.ferry(&["volume", "info", &vol, "--json"]), "volume info");
    assert!(info.contains(&format!("{name}-r")), "{info}");
}

/// Persistent reservations on an RBD LUN live in the image's metadata:
/// they follow the LUN to the clone a snapshot restore switches it to,
/// and a tgtd started after a SIGKILL finds them there.
#[test]
#[ignore = "needs a Ceph cluster (CEPH_CONF): scripts/test.sh starts one"]
fn rbd_reservations_are_kept_in_image_metadata_and_follow_a_restore() {
    use common::pr::{
        connect, prout, read_keys, read_reservation, read_status, write_status, HOST_A, HOST_B,
    };
    use ferry_initiator::ScsiStatus;
    common::require("tgtd");
    let conf = common::ceph_conf();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("pr");
    let vol = format!("rbd:ferry-a/{name}?conf={conf}");
    let mut t = Tgtd::start(&dir.path().join("run"));
    check(
        &t.ferry(&["volume", "create", &vol, "--size", "16M"]),
        "create the image",
    );
    t.serve(&vol);
    {
        let mut a = connect(&t, HOST_A, 1);
        let mut b = connect(&t, HOST_B, 2);
        assert_eq!(prout(&mut a, 0, 0, 0, 0xa), ScsiStatus::Good);
        assert_eq!(prout(&mut b, 0, 0, 0, 0xb), ScsiStatus::Good);
        // Exclusive Access, Registrants Only.
        assert_eq!(prout(&mut a, 1, 6, 0xa, 0), ScsiStatus::Good);
    }
    let check_state = |t: &Tgtd, when: &str| {
        let mut b = connect(t, HOST_B, 2);
        assert_eq!(read_reservation(&mut b), Some((0xa, 6)), "{when}");
        assert_eq!(read_keys(&mut b).0, 2, "{when}");
        // Reads only: after a SIGKILL the dead tgtd's client keeps the
        // image's exclusive lock until Ceph times its watch out (the
        // agent fences it at once; plain tgtadm does not), and a write
        // would wait for that. A conflict is answered before any I/O.
        assert_eq!(
            read_status(&mut b),
            ScsiStatus::Good,
            "{when}: a registrant"
        );
        let mut stranger = connect(t, "iqn.2026-11.org.ferry:host-c", 3);
        for status in [read_status(&mut stranger), write_status(&mut stranger)] {
            assert_eq!(status, ScsiStatus::ReservationConflict, "{when}");
        }
    };
    check_state(&t, "served");
    // From a node that does not serve it, the image is open elsewhere: a
    // clear there would be overwritten by the serving gateway, so it is
    // refused.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["pr", "clear", &vol])
        .env("FERRY_RUN_DIR", dir.path().join("elsewhere"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is open by"), "{err}");
    check(&t.ferry(&["snapshot", "create", &vol, "s1"]), "snapshot");
    check(&t.ferry(&["snapshot", "restore", &vol, "s1"]), "restore");
    check_state(&t, "on the restored clone");
    t.kill9();
    t.restart();
    t.serve(&vol);
    check_state(&t, "on the clone after a tgtd SIGKILL");
}
