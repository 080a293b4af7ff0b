//! Mutual CHAP through a real tgtd and its agent, seen by a real
//! initiator (libiscsi): the map gives the target CHAP and mutual CHAP;
//! an initiator with both right logs in, one that expects another target
//! secret refuses the target, and one without credentials is refused.
//! Neither secret appears in any tgtadm process's arguments (a tgtadm
//! wrapper on the agent's PATH logs every call), in the agent's log or in
//! `ferry map show`.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::check;
use common::cluster::*;

const SECRET: &str = "initiator-secret-1234";
const MUTUAL: &str = "target-secret-98765";

fn info(url: &str) -> std::process::Output {
    Command::new(common::bin("ferry-iscsi"))
        .args(["--timeout", "5", "info", url])
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs tgtd and libiscsi (scripts/test.sh)"]
fn mutual_chap_is_checked_both_ways_and_no_secret_reaches_process_arguments() {
    common::require("tgtd");
    let dir = tempfile::tempdir().unwrap();
    // Every tgtadm the agent runs goes through this, which logs its
    // arguments first.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = dir.path().join("tgtadm-calls.log");
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v tgtadm"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let wrapper = bin.join("tgtadm");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec {} \"$@\"\n",
            calls.display(),
            real.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // SAFETY of the environment change: this test's process is its own
    // (nextest), and no other thread reads the environment meanwhile.
    std::env::set_var("PATH", &path);

    let url = format!("file:{}", dir.path().join("map").display());
    let mut a = Node::add("a", dir.path(), &url);
    a.start_agent(&url);
    let f1 = dir.path().join("chap");
    let f2 = dir.path().join("mutual");
    std::fs::write(&f1, SECRET).unwrap();
    std::fs::write(&f2, MUTUAL).unwrap();
    // Mutual CHAP without CHAP, or with the CHAP secret again: refused.
    let alone = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["map", "target", "add", TARGET])
        .args(["--mutual-chap-user", "tgt", "--mutual-chap-secret-file"])
        .arg(&f2)
        .env("FERRY_MAP", &url)
        .output()
        .unwrap();
    assert!(
        !alone.status.success(),
        "mutual CHAP without CHAP was accepted"
    );
    assert!(String::from_utf8_lossy(&alone.stderr).contains("chap-user"));
    // The target with CHAP (alice, f1) and mutual CHAP (tgt, `mutual`).
    let add_target = |mutual: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["map", "target", "add", TARGET])
            .args(["--chap-user", "alice", "--chap-secret-file"])
            .arg(&f1)
            .args(["--mutual-chap-user", "tgt", "--mutual-chap-secret-file"])
            .arg(mutual)
            .env("FERRY_MAP", &url)
            .output()
            .unwrap()
    };
    let same = add_target(&f1);
    assert!(
        !same.status.success(),
        "the same secret both ways was accepted"
    );
    assert!(String::from_utf8_lossy(&same.stderr).contains("its own user and secret"));
    let out = add_target(&f2);
    check(&out, "target add with mutual CHAP");
    let spec = common::file_volume(dir.path(), 8 << 20);
    add_lun_served_by_a(&url, "db", &spec, &[]);

    let base = format!("{}/{TARGET}/1", a.portal());
    let right = format!("iscsi://alice%{SECRET}@{base}?target_user=tgt&target_password={MUTUAL}");
    check(&info(&right), "login with both secrets right");
    let wrong_target =
        format!("iscsi://alice%{SECRET}@{base}?target_user=tgt&target_password=not-it-at-all");
    let out = info(&wrong_target);
    assert!(
        !out.status.success(),
        "the initiator accepted a target with the wrong secret"
    );
    eprintln!(
        "wrong target secret: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let out = info(&format!("iscsi://{base}"));
    assert!(!out.status.success(), "a login without CHAP was let in");
    let out = info(&format!("iscsi://alice%wrong-secret-000@{base}"));
    assert!(!out.status.success(), "a wrong initiator secret was let in");

    let logged = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        logged.contains("--mode target"),
        "the wrapper saw no tgtadm call: {logged}"
    );
    let shown = ferry(&url, &["map", "show", "--json"]);
    for secret in [SECRET, MUTUAL] {
        assert!(
            !logged.contains(secret),
            "a secret in tgtadm's arguments: {logged}"
        );
        assert!(
            !a.log_text().contains(secret),
            "a secret in the agent's log"
        );
        assert!(!shown.contains(secret), "a secret in map show");
    }
    let tgtd_accounts = a.tgtd.tgtadm(&["--mode", "target", "--op", "show"]);
    let text = String::from_utf8_lossy(&tgtd_accounts.stdout);
    assert!(
        text.contains("tgt (outgoing)") && text.contains("alice"),
        "{text}"
    );
}
