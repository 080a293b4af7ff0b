//! The `ferry` command as an admin uses it: volumes, offline migrations,
//! migrations of a volume served by another process (control socket), and
//! bad input.
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_core::{pattern, Volume};
use ferry_host::VolumeSpec;
use serde_json::Value;

fn ferry(run_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_RUN_DIR", run_dir)
        .output()
        .unwrap()
}

fn ok_json(run_dir: &Path, args: &[&str]) -> Value {
    let out = ferry(run_dir, args);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ferry {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn fails_with(run_dir: &Path, args: &[&str], needle: &str) {
    let out = ferry(run_dir, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "ferry {args:?} should fail: {err}"
    );
    assert!(
        err.contains(needle),
        "ferry {args:?}: {err:?} lacks {needle:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A 4 MiB source with data; returns its spec and contents.
fn source_with_data(dir: &Path) -> (String, Vec<u8>) {
    let spec = format!("file:{}", dir.join("src.img").display());
    let (vol, _) = VolumeSpec::parse(&spec)
        .unwrap()
        .create(4 << 20, None)
        .unwrap();
    let data = pattern::bytes(9, 4 << 20);
    vol.write_at(&data, 0).unwrap();
    vol.flush().unwrap();
    (spec, data)
}

fn contents(spec: &str) -> Vec<u8> {
    let (vol, _) = VolumeSpec::parse(spec).unwrap().open_read_only().unwrap();
    let mut buf = vec![0u8; vol.size() as usize];
    vol.read_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn volume_create_and_info() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let spec = dir.path().join("v.img");
    let out = ferry(
        &run,
        &["volume", "create", spec.to_str().unwrap(), "--size", "16M"],
    );
    assert!(out.status.success());
    let info = ok_json(&run, &["volume", "info", spec.to_str().unwrap(), "--json"]);
    assert_eq!(info["size"], 16 << 20);
    assert_eq!(info["allocated"], 0);
    assert!(info["migration_record"].is_null());
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (src, data) = source_with_data(dir.path());
    let dst = format!("file:{}", dir.path().join("dst.img").display());
    fails_with(
        &run,
        &["volume", "create", "/x.img", "--size", "12Q"],
        "unknown size suffix",
    );
    fails_with(
        &run,
        &["volume", "create", "nbd:x", "--size", "1M"],
        "unknown volume type",
    );
    fails_with(
        &run,
        &["volume", "info", "/no/such/volume.img"],
        "No such file",
    );
    fails_with(
        &run,
        &["migrate", "start", &src, &dst, "--region-size", "3M"],
        "power of two",
    );
    fails_with(&run, &["migrate", "status", &src], "not being migrated");
    fails_with(&run, &["migrate", "commit", &src], "no migration");
    fails_with(&run, &["migrate", "start", &src, &src], "own volume");
    assert!(
        !dir.path().join("dst.img").exists(),
        "a refused start left a target"
    );
    // The source was not touched and is still free to migrate.
    assert_eq!(contents(&src), data);
    let done = ok_json(&run, &["migrate", "start", &src, &dst, "--json"]);
    assert_eq!(done["state"], "copied");
    fails_with(
        &run,
        &["migrate", "start", &src, &dst],
        "already being migrated",
    );
}

#[test]
fn offline_migration_copies_commits_and_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (src, data) = source_with_data(dir.path());
    let dst = format!("file:{}", dir.path().join("dst.img").display());
    let p = ok_json(
        &run,
        &[
            "migrate",
            "start",
            &src,
            &dst,
            "--region-size",
            "64K",
            "--json",
        ],
    );
    assert_eq!(p["state"], "copied");
    assert_eq!(p["bytes_done"], 4 << 20);
    assert_eq!(p["regions_total"], 64);
    let p = ok_json(&run, &["migrate", "status", &dst, "--json"]);
    assert_eq!(p["state"], "copied");
    let p = ok_json(&run, &["migrate", "commit", &src, "--json"]);
    assert_eq!(p["state"], "committed");
    assert_eq!(contents(&dst), data);
    let info = ok_json(&run, &["volume", "info", &src, "--json"]);
    assert_eq!(info["migrated_to"]["committed"], true);
    // The LUN keeps its name: migrating "src" again moves the volume that
    // now serves it (dst), never the stale source.
    let again = format!("file:{}", dir.path().join("again.img").display());
    let p = ok_json(
        &run,
        &["migrate", "start", &src, &again, "--commit", "--json"],
    );
    assert_eq!(p["source"], dst.as_str());
    assert_eq!(p["state"], "committed");
    assert_eq!(contents(&again), data);
}

#[test]
fn offline_abort_restores_source_and_discards_target() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (src, data) = source_with_data(dir.path());
    let dst = format!("file:{}", dir.path().join("dst.img").display());
    let p = ok_json(
        &run,
        &["migrate", "start", &src, &dst, "--no-wait", "--json"],
    );
    assert_eq!(p["state"], "copying");
    let p = ok_json(&run, &["migrate", "abort", &src, "--json"]);
    assert_eq!(p["state"], "aborted");
    assert!(!dir.path().join("dst.img").exists());
    assert_eq!(contents(&src), data);
    let info = ok_json(&run, &["volume", "info", &src, "--json"]);
    assert!(info["migrated_to"].is_null());
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn migration_of_a_served_volume_is_steered_through_the_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let (src, data) = source_with_data(dir.path());
    let dst = format!("file:{}", dir.path().join("dst.img").display());
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["serve", &src])
            .env("FERRY_RUN_DIR", &run)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        || std::fs::read_dir(&run).is_ok_and(|mut d| d.next().is_some()),
        "the control socket",
    );
    // The served volume is locked: an offline start would be refused, so
    // this start must have gone through the socket.
    let p = ok_json(
        &run,
        &[
            "migrate",
            "start",
            &src,
            &dst,
            "--paused",
            "--region-size",
            "64K",
            "--json",
        ],
    );
    assert_eq!(p["state"], "copying");
    assert_eq!(p["paused"], true);
    std::thread::sleep(Duration::from_millis(300));
    let p = ok_json(&run, &["migrate", "status", &dst, "--json"]);
    assert_eq!(p["regions_done"], 0, "a paused copier copied");
    ok_json(&run, &["migrate", "rate", &src, "unlimited", "--json"]);
    let p = ok_json(&run, &["migrate", "resume", &src, "--json"]);
    assert_eq!(p["paused"], false);
    wait_for(
        || ok_json(&run, &["migrate", "status", &src, "--json"])["state"] == "copied",
        "the copy to finish",
    );
    let p = ok_json(
        &run,
        &["migrate", "commit", &src, "--remove-source", "--json"],
    );
    assert_eq!(p["state"], "committed");
    drop(server);
    assert_eq!(contents(&dst), data);
    // The source is gone; its marker still forwards the LUN's name.
    assert!(
        !dir.path().join("src.img").exists(),
        "--remove-source kept the source"
    );
    let info = ok_json(&run, &["volume", "info", &dst, "--json"]);
    assert_eq!(info["size"], 4 << 20);
}
