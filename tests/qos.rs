//! Per-LUN QoS over iSCSI: a real tgtd with bs_ferry and libiscsi
//! initiators. The limits set live with `ferry volume qos` hold the LUN
//! to its rate (within ±10 % over a run), reads and writes apart; a
//! cleared limit frees it; bad limits are refused and change nothing.
//! Then the map's `--qos` reaches the serving node through its agent.
mod common;

use std::process::Command;
use std::time::Duration;

use common::{check, Tgtd};
use serde_json::Value;

const SECONDS: u32 = 6;

/// IOPS of a `ferry-iscsi load` run.
fn iops(url: &str, read_pct: u32, block_size: u32, qd: u32) -> f64 {
    let out = Command::new(common::bin("ferry-iscsi"))
        .args(["load", url, "--random", "--seed", "9"])
        .args(["--seconds", &SECONDS.to_string()])
        .args(["--qd", &qd.to_string()])
        .args(["--read-pct", &read_pct.to_string()])
        .args(["--block-size", &block_size.to_string()])
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&check(&out, "load")).unwrap();
    v["iops"].as_f64().unwrap()
}

fn within(measured: f64, limit: f64, what: &str) {
    let ratio = measured / limit;
    eprintln!("{what}: {measured:.1} against a limit of {limit} ({ratio:.3}x)");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{what}: {measured:.1} is not within 10 % of the limit {limit}"
    );
}

fn qos_json(t: &Tgtd, spec: &str, args: &[&str]) -> Value {
    let mut all = vec!["volume", "qos", spec, "--json"];
    all.extend_from_slice(args);
    t.ferry_json(&all)
}

#[test]
#[ignore = "needs tgtd and libiscsi (scripts/test.sh)"]
fn limits_hold_a_lun_to_its_rate_over_iscsi_and_bad_limits_change_nothing() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let t = Tgtd::start(&dir.path().join("run"));
    let spec = common::file_volume(dir.path(), 64 << 20);
    // Data everywhere, so a migration below has all of it to copy.
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8 ^ 0x33).collect();
    std::fs::write(spec.strip_prefix("file:").unwrap(), &data).unwrap();
    t.add_target(1);
    check(&t.add_ferry_lun(1, 1, &spec), "adding the LUN");
    let url = t.url(1, 1);

    // Reads held to 300 IOPS at queue depth 8; writes are not limited.
    let q = qos_json(&t, &spec, &["--read-iops", "300"]);
    assert_eq!(q["read-iops"], 300);
    within(
        iops(&url, 100, 4096, 8),
        300.0,
        "4K random reads, read-iops=300",
    );
    let free_writes = iops(&url, 0, 4096, 8);
    assert!(
        free_writes > 450.0,
        "writes are not read-limited: {free_writes}"
    );

    // Writes held to 4 MiB/s of 64 KiB writes (64 IOPS), reads freed.
    let q = qos_json(
        &t,
        &spec,
        &["--read-iops", "unlimited", "--write-bps", "4M"],
    );
    assert!(q.get("read-iops").is_none(), "{q}");
    assert_eq!(q["write-bps"], 4 << 20);
    let bytes = iops(&url, 0, 65536, 4) * 65536.0;
    within(
        bytes,
        (4 << 20) as f64,
        "64K random writes, write-bps=4M (bytes/s)",
    );

    // Refused: zero, negative, not a number; the limits stay as they were.
    for bad in [
        ["--write-iops", "0"],
        ["--read-bps", "-5M"],
        ["--read-iops", "lots"],
    ] {
        let mut args = vec!["volume", "qos", &spec];
        args.extend_from_slice(&bad);
        let out = t.ferry(&args);
        assert!(!out.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
    }
    assert_eq!(qos_json(&t, &spec, &[]), q);

    // Cleared: the LUN runs free again.
    let q = qos_json(&t, &spec, &["--clear"]);
    assert_eq!(q, serde_json::json!({}));
    let free = iops(&url, 0, 65536, 4) * 65536.0;
    assert!(
        free > 2.0 * (4 << 20) as f64,
        "no longer limited: {free} bytes/s"
    );

    // The copier's reads and writes are not the LUN's: held to 1 MiB/s
    // each way, the LUN still migrates its 64 MiB at the copier's own
    // pace (flat out here), not at the limit.
    qos_json(&t, &spec, &["--read-bps", "1M", "--write-bps", "1M"]);
    let target = format!("file:{}", dir.path().join("t.img").display());
    let started = std::time::Instant::now();
    check(
        &t.ferry(&["migrate", "start", &spec, &target, "--no-adaptive"]),
        "migrate start",
    );
    loop {
        let out = t.ferry(&["migrate", "status", &spec, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["state"] == "copied" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the copy is held back: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rate = (64 << 20) as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "copy under a 1 MiB/s LUN limit: {:.1} MiB/s",
        rate / 1048576.0
    );
    assert!(rate > 4.0 * 1048576.0, "the copier ran at {rate} bytes/s");
    check(&t.ferry(&["migrate", "abort", &spec]), "abort");
}

#[test]
#[ignore = "needs tgtd and libiscsi (scripts/test.sh)"]
fn the_maps_qos_reaches_the_serving_node() {
    use common::cluster::*;
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file:{}", dir.path().join("map").display());
    let mut a = Node::add("a", dir.path(), &url);
    a.start_agent(&url);
    let spec = common::file_volume(dir.path(), 32 << 20);
    ferry(&url, &["map", "target", "add", TARGET]);
    // An unknown field or a zero limit is refused and nothing is added.
    for bad in ["read-ipos=5", "write-iops=0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["map", "lun", "add", "db", "--target", TARGET, "--lun", "1"])
            .args(["--spec", &spec, "--qos", bad])
            .env("FERRY_MAP", &url)
            .output()
            .unwrap();
        assert!(!out.status.success(), "--qos {bad} accepted");
        assert!(show(&url)["map"]["luns"].get("db").is_none());
    }
    // The node reports serving the map as it is now only once its target
    // is ready for logins (its QoS may be set a pass before that).
    add_lun_served_by_a(&url, "db", &spec, &["--qos", "read-iops=200,write-bps=8M"]);
    let served = |want: Value| {
        let started = std::time::Instant::now();
        loop {
            let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["volume", "qos", &spec, "--json"])
                .env("FERRY_RUN_DIR", &a.tgtd.run_dir)
                .output()
                .unwrap();
            if out.status.success() {
                let got: Value = serde_json::from_slice(&out.stdout).unwrap();
                if got == want {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the LUN's QoS never became {want}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    served(serde_json::json!({"read-iops": 200, "write-bps": 8 << 20}));
    let reads = {
        let out = Command::new(common::bin("ferry-iscsi"))
            .args([
                "load",
                &a.url(1),
                "--random",
                "--qd",
                "4",
                "--read-pct",
                "100",
            ])
            .args(["--seconds", "4"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_str(&check(&out, "load")).unwrap();
        v["iops"].as_f64().unwrap()
    };
    within(reads, 200.0, "map LUN reads, read-iops=200");
    ferry(&url, &["map", "lun", "set", "db", "--qos", "unlimited"]);
    served(serde_json::json!({}));
}
