//! The initiator against a real tgtd: every session command, the async
//! API, the `ferry-iscsi` binary's pattern/load/verify-log modes, a target
//! crash under load, and connection failures that must fail fast.

mod common;

use std::io::BufRead;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ferry_iscsi, Tgtd};
use ferry_initiator::scsi::{asc, sense_key};
use ferry_initiator::{pattern, ConnectOptions, Error, ScsiStatus, Session};

const LUN_BYTES: u64 = 64 << 20;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running ferry-iscsi");
    eprintln!(
        "{cmd:?} -> {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn blocks(seed: u64, lba: u64, n: usize, bs: usize) -> Vec<u8> {
    let mut v = vec![0; n * bs];
    for (i, b) in v.chunks_mut(bs).enumerate() {
        pattern::fill_lba(seed, lba + i as u64, b);
    }
    v
}

#[test]
fn session_commands_round_trip() {
    let t = Tgtd::start(LUN_BYTES);
    let mut s = Session::connect(&t.url()).expect("login");
    let (bs, n) = s.read_capacity().unwrap();
    assert_eq!((bs, n), (512, LUN_BYTES / 512));
    let bsz = bs as usize;

    // WRITE(16) / READ(16), with and without FUA.
    let data = blocks(1, 100, 8, bsz);
    s.write(100, &data).unwrap();
    assert_eq!(s.read(100, 8).unwrap(), data);
    let data2 = blocks(2, 200, 3, bsz);
    s.write_fua(200, &data2).unwrap();
    assert_eq!(s.read(200, 3).unwrap(), data2);
    s.synchronize_cache().unwrap();

    // UNMAP reads back as zeros on a thin-provisioned rdwr LUN.
    s.unmap(100, 8).unwrap();
    assert_eq!(s.read(100, 8).unwrap(), vec![0; 8 * bsz]);

    // WRITE SAME: one block repeated; with UNMAP, zeros.
    let one = blocks(3, 0, 1, bsz);
    s.write_same(300, 16, &one, false).unwrap();
    assert_eq!(s.read(300, 16).unwrap(), one.repeat(16));
    s.write_same(300, 16, &vec![0; bsz], true).unwrap();
    assert_eq!(s.read(300, 16).unwrap(), vec![0; 16 * bsz]);

    // COMPARE AND WRITE: swaps on match, MISCOMPARE otherwise. tgt 1.0.85
    // does not implement it (opcode 0x89 is disabled in its sbc.c), and
    // then the sense must say exactly that.
    let old = blocks(4, 400, 1, bsz);
    let new = blocks(5, 400, 1, bsz);
    s.write(400, &old).unwrap();
    match s.compare_and_write(400, &[old.clone(), new.clone()].concat()) {
        Ok(()) => {
            assert_eq!(s.read(400, 1).unwrap(), new);
            let e = s
                .compare_and_write(400, &[old.clone(), old.clone()].concat())
                .unwrap_err();
            assert!(e.is_miscompare(), "{e}");
            assert_eq!(s.read(400, 1).unwrap(), new);
        }
        Err(e) => {
            let sense = e.sense().unwrap_or_else(|| panic!("{e}"));
            assert_eq!(sense.key, sense_key::ILLEGAL_REQUEST, "{e}");
            assert_eq!(sense.asc, asc::INVALID_COMMAND_OPERATION_CODE, "{e}");
            assert_eq!(s.read(400, 1).unwrap(), old, "nothing written");
            println!("note: this target does not implement COMPARE AND WRITE");
        }
    }
    assert!(matches!(
        s.compare_and_write(400, &old),
        Err(Error::Invalid(_))
    ));

    // INQUIRY VPD pages.
    let serial = s.inquiry_serial().unwrap();
    assert!(!serial.is_empty());
    let id = s.inquiry_device_id().unwrap();
    assert!(!id.designators.is_empty());
    assert!(id.naa().is_some_and(|n| n.starts_with("naa.")), "{id:?}");

    // Raw CDBs: TEST UNIT READY, standard INQUIRY, WRITE(16) with data-out.
    let tur = s.raw_cdb(&[0; 6], None, 0).unwrap();
    assert_eq!(tur.status, ScsiStatus::Good);
    let inq = s.raw_cdb(&[0x12, 0, 0, 0, 96, 0], None, 96).unwrap();
    assert!(inq.is_good());
    assert!(inq.data.len() >= 36);
    assert_eq!(inq.data[0] & 0x1f, 0, "a disk");
    let mut w16 = [0u8; 16];
    w16[0] = 0x8a;
    w16[2..10].copy_from_slice(&500u64.to_be_bytes());
    w16[10..14].copy_from_slice(&2u32.to_be_bytes());
    let raw_data = blocks(6, 500, 2, bsz);
    let w = s.raw_cdb(&w16, Some(&raw_data), 0).unwrap();
    assert!(w.is_good(), "{w:?}");
    assert_eq!(s.read(500, 2).unwrap(), raw_data);

    // READ(16) past the end: ILLEGAL REQUEST, LBA OUT OF RANGE.
    let mut r16 = [0u8; 16];
    r16[0] = 0x88;
    r16[2..10].copy_from_slice(&(n + 10).to_be_bytes());
    r16[10..14].copy_from_slice(&1u32.to_be_bytes());
    let oor = s.raw_cdb(&r16, None, bsz).unwrap();
    assert_eq!(oor.status, ScsiStatus::CheckCondition);
    let sense = oor.sense.expect("sense data");
    assert_eq!(sense.key, sense_key::ILLEGAL_REQUEST);
    assert_eq!(sense.asc, asc::LBA_OUT_OF_RANGE);
    // The same through the typed API is an error carrying the sense.
    let e = s.read(n + 10, 1).unwrap_err();
    assert!(
        matches!(e, Error::CheckCondition { sense, .. } if sense.key == sense_key::ILLEGAL_REQUEST && sense.asc == asc::LBA_OUT_OF_RANGE),
        "{e}"
    );
    // An unknown opcode.
    let bad = s.raw_cdb(&[0xff, 0, 0, 0, 0, 0], None, 0).unwrap();
    assert_eq!(bad.status, ScsiStatus::CheckCondition);
    assert_eq!(bad.sense.unwrap().key, sense_key::ILLEGAL_REQUEST);

    // Bad arguments never reach the wire, and the session stays usable.
    assert!(matches!(s.write(0, &[0; 100]), Err(Error::Invalid(_))));
    assert!(matches!(
        s.write_same(0, 1, &[0; 100], false),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        s.raw_cdb(&[0; 3], None, 0),
        Err(Error::Invalid(_))
    ));
    assert_eq!(s.read(200, 3).unwrap(), data2);

    // A second session sees the first one's writes.
    let mut s2 = Session::connect(&t.url()).unwrap();
    assert_eq!(s2.read(500, 2).unwrap(), raw_data);
}

#[test]
fn async_api_keeps_commands_in_flight() {
    let t = Tgtd::start(LUN_BYTES);
    let mut s = Session::connect(&t.url()).unwrap();
    let bs = s.block_size() as usize;
    // 32 writes of 8 blocks, all queued before any completes.
    for i in 0..32u64 {
        s.submit_write(i, i * 8, blocks(9, i * 8, 8, bs), false)
            .unwrap();
    }
    assert_eq!(s.in_flight(), 32);
    let mut done = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.in_flight() > 0 && Instant::now() < deadline {
        s.service(Duration::from_millis(100)).unwrap();
        done.extend(s.take_completions());
    }
    assert_eq!(done.len(), 32);
    for c in &done {
        let back = c.result.as_ref().expect("write ok");
        assert_eq!(back, &blocks(9, c.tag * 8, 8, bs), "the buffer comes back");
    }
    // Then read them all back at once.
    for i in 0..32u64 {
        s.submit_read(100 + i, i * 8, 8).unwrap();
    }
    let mut reads = Vec::new();
    while s.in_flight() > 0 && Instant::now() < deadline {
        s.service(Duration::from_millis(100)).unwrap();
        reads.extend(s.take_completions());
    }
    assert_eq!(reads.len(), 32);
    for c in reads {
        let i = c.tag - 100;
        assert_eq!(c.result.unwrap(), blocks(9, i * 8, 8, bs));
    }
    // An async read past the end completes with the sense, not a hang.
    s.submit_read(999, s.num_blocks(), 1).unwrap();
    while s.in_flight() > 0 && Instant::now() < deadline {
        s.service(Duration::from_millis(100)).unwrap();
    }
    let c = s.take_completions().pop().unwrap();
    assert_eq!(c.tag, 999);
    assert_eq!(
        c.result.unwrap_err().sense().unwrap().asc,
        asc::LBA_OUT_OF_RANGE
    );

    // Dropping a session with commands in flight cancels them cleanly.
    for i in 0..16u64 {
        s.submit_write(2000 + i, 4096 + i * 8, blocks(10, i, 8, bs), false)
            .unwrap();
        s.submit_read(3000 + i, i * 8, 8).unwrap();
    }
    drop(s);
    let mut s = Session::connect(&t.url()).unwrap();
    assert_eq!(s.read(0, 8).unwrap(), blocks(9, 0, 8, bs));
}

#[test]
fn binary_info_patterns_load_and_verify_log() {
    let t = Tgtd::start(LUN_BYTES);
    let url = t.url();

    let info = run(ferry_iscsi().args(["info", &url, "--json"]));
    assert!(info.status.success());
    let v = json(&info);
    assert_eq!(v["block_size"], 512);
    assert_eq!(v["capacity_bytes"], LUN_BYTES);
    assert!(v["serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["device_id"]
        .as_str()
        .is_some_and(|s| s.starts_with("naa.")));

    let region = ["--offset-blocks", "1000", "--blocks", "5000"];
    let w = run(ferry_iscsi()
        .args(["write-pattern", &url, "--seed", "11"])
        .args(region));
    assert!(w.status.success());
    let ok = run(ferry_iscsi()
        .args(["verify-pattern", &url, "--seed", "11"])
        .args(region));
    assert!(ok.status.success());
    let bad = run(ferry_iscsi()
        .args(["verify-pattern", &url, "--seed", "12"])
        .args(region));
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("mismatch at lba 1000"));

    // Mixed random load with a log, then re-check the log.
    let log = t.dir().join("load.log");
    let log_s = log.to_str().unwrap();
    let load = run(ferry_iscsi().args([
        "load",
        &url,
        "--seconds",
        "2",
        "--qd",
        "8",
        "--block-size",
        "4096",
        "--read-pct",
        "50",
        "--random",
        "--seed",
        "5",
        "--log",
        log_s,
        "--blocks",
        "16384",
    ]));
    assert!(load.status.success());
    let sum = json(&load);
    assert_eq!(sum["errors"], 0);
    assert_eq!(sum["mismatches"], 0);
    assert!(sum["writes"].as_u64().unwrap() > 100, "{sum}");
    assert!(sum["reads"].as_u64().unwrap() > 100, "{sum}");
    let reads = sum["reads"].as_u64().unwrap();
    assert!(
        sum["unchecked_reads"].as_u64().unwrap() < reads,
        "some reads were checked"
    );
    assert!(sum["iops"].as_f64().unwrap() > 0.0);
    assert!(sum["lat_p99_us"].as_u64().unwrap() >= sum["lat_p50_us"].as_u64().unwrap());
    let lines = std::fs::read_to_string(&log).unwrap();
    let writes = lines.lines().filter(|l| l.starts_with("W ")).count() as u64;
    assert_eq!(
        writes,
        sum["writes"].as_u64().unwrap(),
        "one line per acknowledged write"
    );

    let verify = run(ferry_iscsi().args(["load", &url, "--verify-log", log_s]));
    assert!(verify.status.success());
    let v = json(&verify);
    assert_eq!(v["mismatches"], 0);
    assert_eq!(v["logged_writes"], writes);
    assert!(v["checked_blocks"].as_u64().unwrap() >= 8);

    // Overwrite one logged block behind the log's back: verify-log fails
    // and names it.
    let last = lines.lines().rfind(|l| l.starts_with("W ")).unwrap();
    let lba: u64 = last.split_whitespace().nth(2).unwrap().parse().unwrap();
    let mut s = Session::connect(&url).unwrap();
    s.write(lba + 3, &[0x5a; 512]).unwrap();
    let verify = run(ferry_iscsi().args(["load", &url, "--verify-log", log_s]));
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains(&format!("mismatch at lba {}", lba + 3)),
        "names the block"
    );

    // Sequential write-only load with FUA, in-process.
    let cfg = ferry_initiator::LoadConfig {
        duration: Duration::from_millis(500),
        qd: 4,
        io_size: 8192,
        read_pct: 0,
        random: false,
        fua: true,
        seed: 7,
        ..Default::default()
    };
    let sum = ferry_initiator::run_load(&mut s, &cfg).unwrap();
    assert!(sum.ok() && sum.writes > 0 && sum.reads == 0, "{sum:?}");
}

#[test]
fn acknowledged_writes_survive_a_target_crash() {
    let mut t = Tgtd::start(LUN_BYTES);
    let url = t.url();
    let log = t.dir().join("crash.log");
    let log_s = log.to_str().unwrap().to_string();
    let mut idle = Session::connect_with(
        &url,
        &ConnectOptions {
            timeout: Duration::from_secs(3),
            ..Default::default()
        },
    )
    .unwrap();

    let load = ferry_iscsi()
        .args([
            "--timeout",
            "3",
            "load",
            &url,
            "--seconds",
            "30",
            "--qd",
            "16",
        ])
        .args([
            "--read-pct",
            "30",
            "--random",
            "--seed",
            "21",
            "--log",
            &log_s,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Crash the target mid-run, once a good number of writes are logged.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = std::fs::File::open(&log)
            .map(|f| std::io::BufReader::new(f).lines().count())
            .unwrap_or(0);
        if n > 2000 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    t.kill();
    let killed = Instant::now();
    let out = load.wait_with_output().unwrap();
    eprintln!(
        "load after crash: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "the load noticed"
    );
    assert_eq!(out.status.code(), Some(2), "errors, not mismatches");
    let sum = json(&out);
    assert!(sum["errors"].as_u64().unwrap() > 0);
    assert_eq!(sum["mismatches"], 0);

    // The idle session's next command fails quickly, and so does the one
    // after (the session is marked failed).
    let t0 = Instant::now();
    assert!(idle.read(0, 1).is_err());
    assert!(idle.read(0, 1).is_err());
    assert!(t0.elapsed() < Duration::from_secs(10));
    drop(idle);

    // Same file, new tgtd: every acknowledged write is there.
    t.restart();
    let verify = run(ferry_iscsi().args(["load", &url, "--verify-log", &log_s]));
    assert!(verify.status.success());
    let v = json(&verify);
    assert_eq!(v["mismatches"], 0);
    assert!(v["logged_writes"].as_u64().unwrap() > 0);
}

#[test]
fn connection_failures_are_prompt_errors() {
    // Nothing listening: refused at once.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = ConnectOptions {
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let t0 = Instant::now();
    let e = Session::connect_with(
        &format!("iscsi://127.0.0.1:{port}/{}/1", common::IQN),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));

    // A listener that accepts and never answers the login: the timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = silent.accept();
        let _ = done_rx.recv_timeout(Duration::from_secs(20));
        drop(conn);
    });
    let t0 = Instant::now();
    let e = Session::connect_with(&format!("iscsi://{addr}/{}/1", common::IQN), &opts).unwrap_err();
    let took = t0.elapsed();
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(e.is_timeout(), "{e}");
    assert!(took < Duration::from_secs(6), "{took:?}");

    // Not a URL.
    assert!(matches!(
        Session::connect("http://x/y"),
        Err(Error::Url { .. })
    ));

    // The binary reports it and exits 2.
    let out = run(ferry_iscsi().args([
        "--timeout",
        "2",
        "info",
        &format!("iscsi://127.0.0.1:{port}/{}/1", common::IQN),
    ]));
    assert_eq!(out.status.code(), Some(2));

    // A real target that does not have this IQN.
    let t = Tgtd::start(1 << 20);
    let e = Session::connect_with(
        &format!("iscsi://127.0.0.1:{}/iqn.2026-11.org.ferry:nope/1", t.port),
        &opts,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e}");
}
