//! SCSI conformance over iSCSI: libiscsi's iscsi-test-cu, every test in
//! its own process, then the whole SCSI family in one process, against a
//! ferry LUN (idle, and mid-migration) and tgt's own rdwr backing store in
//! the same tgtd (`scripts/conformance.sh`). Every test that passes on
//! rdwr must pass on ferry, every test the recorded run (docs/conformance/)
//! passed on ferry must still pass, and in the single process every test
//! that passes on its own must pass too: a long session may not change an
//! outcome (it did: a libiscsi test left a PDU hook behind that rewrote
//! every later 16-byte CDB, after tgtd refused COMPARE AND WRITE).
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn load(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(t, r)| (t.to_string(), r.to_string()))
        .collect()
}

#[test]
fn ferry_passes_what_tgt_rdwr_passes_idle_and_while_migrating() {
    common::require("tgtd");
    common::require("iscsi-test-cu");
    common::install_plugin();
    let out = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/conformance.sh");
    let run = Command::new("bash")
        .arg(&script)
        .arg(out.path())
        .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
        .env("CONFORMANCE_PORT", port.to_string())
        .output()
        .unwrap();
    let summary = common::check(&run, "conformance.sh");
    println!("{summary}");
    let rdwr = load(&out.path().join("rdwr.tsv"));
    assert!(rdwr.len() > 150, "only {} tests ran", rdwr.len());
    let recorded = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/conformance/ferry.tsv"));
    let mut regressions = Vec::new();
    for target in ["ferry", "ferry-migrating"] {
        let got = load(&out.path().join(format!("{target}.tsv")));
        for (test, r) in &rdwr {
            let mine = got.get(test).map(String::as_str).unwrap_or("missing");
            if r == "pass" && mine != "pass" {
                regressions.push(format!("{target}: {test} is {mine}, tgt rdwr passes it"));
            }
            if recorded.get(test).map(String::as_str) == Some("pass") && mine != "pass" {
                regressions.push(format!(
                    "{target}: {test} is {mine}, the recorded run passed it"
                ));
            }
        }
    }
    // One process, --test=SCSI.
    let single_rdwr = load(&out.path().join("single-rdwr.tsv"));
    assert!(
        single_rdwr.len() > 150,
        "only {} tests ran in one process",
        single_rdwr.len()
    );
    for target in ["ferry", "ferry-migrating"] {
        let alone = load(&out.path().join(format!("{target}.tsv")));
        let single = load(&out.path().join(format!("single-{target}.tsv")));
        for (test, r) in &single_rdwr {
            let mine = single.get(test).map(String::as_str).unwrap_or("missing");
            if r == "pass" && mine != "pass" {
                regressions.push(format!(
                    "{target}, one process: {test} is {mine}, tgt rdwr passes it"
                ));
            }
        }
        // The per-test run covers every family; the SCSI family's tests
        // are the ones the single process ran on rdwr.
        for (test, r) in alone.iter().filter(|(t, _)| single_rdwr.contains_key(*t)) {
            let mine = single.get(test).map(String::as_str).unwrap_or("missing");
            if r == "pass" && mine != "pass" {
                regressions.push(format!(
                    "{target}, one process: {test} is {mine}, it passes in a process of its own"
                ));
            }
        }
    }
    assert!(
        regressions.is_empty(),
        "conformance regressions:\n{}",
        regressions.join("\n")
    );
}
