//! Online resize over iSCSI: a real tgtd with bs_ferry and a libiscsi
//! session that stays logged in. `ferry volume resize` grows the served
//! volume; the session's next command gets CAPACITY DATA HAS CHANGED,
//! READ CAPACITY then reports the new size, and data written past the
//! old end reads back (and the data before it is untouched). Shrinking
//! without --force, a size of zero, an absurd size and a
//! migration's shrink are refused and change nothing. A LUN being
//! migrated grows too (both legs and the index), and its data survives
//! the commit and a restart. A volume nothing serves is resized offline.
mod common;

use std::process::Command;

use common::{check, Tgtd};
use ferry_initiator::Session;

fn refused(out: &std::process::Output, says: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "accepted; stdout {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains(says), "{err}");
}

fn block(seed: u8) -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn read10(lba: u32) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[8] = 1;
    c
}

/// The next command of `s` is told CAPACITY DATA HAS CHANGED.
fn capacity_changed(s: &mut Session) {
    let r = s.raw_cdb(&read10(0), None, 512).unwrap();
    assert_eq!(
        r.sense.map(|x| (x.key, x.asc, x.ascq)),
        Some((0x06, 0x2a, 0x09)),
        "{r:?}"
    );
}

#[test]
#[ignore = "needs tgtd and libiscsi (scripts/test.sh)"]
fn a_served_lun_grows_and_a_logged_in_initiator_sees_it() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let t = Tgtd::start(&dir.path().join("run"));
    let spec = common::file_volume(dir.path(), 32 << 20);
    t.add_target(1);
    check(&t.add_ferry_lun(1, 1, &spec), "adding the LUN");
    let mut s = Session::connect(&t.url(1, 1)).unwrap();
    assert_eq!(s.read_capacity().unwrap(), (512, 65536));
    s.write(65528, &block(1)).unwrap(); // the last 4 KiB

    check(
        &t.ferry(&["volume", "resize", &spec, "48M"]),
        "resize to 48M",
    );
    // The next command the session sends is told, once.
    capacity_changed(&mut s);
    assert!(s.raw_cdb(&read10(0), None, 512).unwrap().is_good());
    assert_eq!(s.read_capacity().unwrap(), (512, 98304));
    // Past the old end: written and read back; the old end is intact.
    s.write(81920, &block(2)).unwrap();
    assert_eq!(s.read(81920, 8).unwrap(), block(2));
    assert_eq!(s.read(98296, 8).unwrap(), vec![0u8; 4096]);
    assert_eq!(s.read(65528, 8).unwrap(), block(1));
    // A second session logged in now starts at the new size, owed nothing.
    let mut s2 = Session::connect(&t.url(1, 1)).unwrap();
    assert!(s2.raw_cdb(&read10(0), None, 512).unwrap().is_good());
    assert_eq!(s2.read_capacity().unwrap(), (512, 98304));

    // Refused, nothing changed: smaller without --force, zero, absurd,
    // not a whole block.
    refused(&t.ferry(&["volume", "resize", &spec, "16M"]), "--force");
    refused(
        &t.ferry(&["volume", "resize", &spec, "0"]),
        "not a positive",
    );
    refused(
        &t.ferry(&["volume", "resize", &spec, "900000T"]),
        "more than",
    );
    refused(&t.ferry(&["volume", "resize", &spec, "50000001"]), "blocks");
    assert!(
        s.raw_cdb(&read10(0), None, 512).unwrap().is_good(),
        "no new unit attention"
    );
    assert_eq!(s.read_capacity().unwrap(), (512, 98304));
    let path = spec.strip_prefix("file:").unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), 48 << 20);

    // Forced shrink: the data past the new end is gone, the rest stays.
    check(
        &t.ferry(&["volume", "resize", &spec, "40M", "--force"]),
        "forced shrink",
    );
    capacity_changed(&mut s);
    assert_eq!(s.read_capacity().unwrap(), (512, 81920));
    assert_eq!(s.read(65528, 8).unwrap(), block(1));
    let past = s.raw_cdb(&read10(81920), None, 512).unwrap();
    assert_eq!(
        past.sense.map(|x| (x.key, x.asc)),
        Some((0x05, 0x21)),
        "LBA out of range"
    );

    // Grown while it is being migrated: both legs and the index grow;
    // the data written past the old end is copied and survives the commit
    // and a restart of tgtd.
    let target = format!("file:{}", dir.path().join("t.img").display());
    check(
        &t.ferry(&["migrate", "start", &spec, &target, "--rate", "8M"]),
        "migrate start",
    );
    s.write(100, &block(3)).unwrap();
    check(
        &t.ferry(&["volume", "resize", &spec, "64M"]),
        "grow while migrating",
    );
    capacity_changed(&mut s);
    assert_eq!(s.read_capacity().unwrap(), (512, 131072));
    s.write(131064, &block(4)).unwrap(); // the new last 4 KiB
    refused(
        &t.ferry(&["volume", "resize", &spec, "48M", "--force"]),
        "only grows",
    );
    let tpath = target.strip_prefix("file:").unwrap();
    assert_eq!(std::fs::metadata(tpath).unwrap().len(), 64 << 20);
    let started = std::time::Instant::now();
    loop {
        let out = t.ferry(&["migrate", "status", &spec, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["state"] == "copied" {
            assert_eq!(v["bytes_total"], 64 << 20);
            break;
        }
        assert!(
            started.elapsed().as_secs() < 60,
            "the copy did not finish: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    check(&t.ferry(&["migrate", "commit", &spec]), "commit");
    drop((s, s2));
    let mut t = t;
    t.restart();
    t.add_target(1);
    check(
        &t.add_ferry_lun(1, 1, &spec),
        "the LUN again, after the restart",
    );
    let mut s = Session::connect(&t.url(1, 1)).unwrap();
    assert_eq!(s.read_capacity().unwrap(), (512, 131072));
    assert_eq!(s.read(131064, 8).unwrap(), block(4));
    assert_eq!(s.read(65528, 8).unwrap(), block(1));
    assert_eq!(s.read(100, 8).unwrap(), block(3));
}

#[test]
fn a_volume_nothing_serves_is_resized_offline_and_bad_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = common::file_volume(dir.path(), 4 << 20);
    let path = spec.strip_prefix("file:").unwrap().to_string();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env("FERRY_RUN_DIR", dir.path().join("run"))
            .output()
            .unwrap()
    };
    check(&run(&["volume", "resize", &spec, "8M"]), "offline grow");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);
    refused(&run(&["volume", "resize", &spec, "2M"]), "--force");
    refused(&run(&["volume", "resize", &spec, "lots"]), "size");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 << 20);
    check(
        &run(&["volume", "resize", &spec, "2M", "--force"]),
        "offline shrink",
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);
}

#[test]
#[ignore = "needs tgtd and libiscsi (scripts/test.sh)"]
fn the_maps_size_grows_the_served_lun_and_never_shrinks_it() {
    use common::cluster::*;
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file:{}", dir.path().join("map").display());
    let mut a = Node::add("a", dir.path(), &url);
    a.start_agent(&url);
    let spec = common::file_volume(dir.path(), 16 << 20);
    let path = spec.strip_prefix("file:").unwrap().to_string();
    ferry(&url, &["map", "target", "add", TARGET]);
    add_lun_served_by_a(&url, "db", &spec, &[]);
    let mut s = Session::connect(&a.url(1)).unwrap();
    assert_eq!(s.read_capacity().unwrap(), (512, 32768));
    ferry(&url, &["map", "lun", "set", "db", "--size", "24M"]);
    let started = std::time::Instant::now();
    while std::fs::metadata(&path).unwrap().len() != 24 << 20 {
        assert!(
            started.elapsed().as_secs() < 30,
            "the agent did not grow the LUN"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    capacity_changed(&mut s);
    assert_eq!(s.read_capacity().unwrap(), (512, 49152));
    // Smaller than the map's size: refused by the map; bad sizes too.
    for bad in ["8M", "0", "100000000T"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["map", "lun", "set", "db", "--size", bad])
            .env("FERRY_MAP", &url)
            .output()
            .unwrap();
        assert!(!out.status.success(), "--size {bad} accepted");
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 24 << 20);
}
