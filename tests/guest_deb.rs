//! The Debian package on a real systemd: the test guest boots systemd as
//! PID 1, installs the package built by `scripts/deb.sh`, and checks
//! (`scripts/guest/deb-systemd.sh`) that `ferry-agent.service` serves a
//! map's LUN through Debian's tgt.service with the packaged plugin, that
//! systemd restarts the agent after SIGKILL while the LUN keeps being
//! served, and that stopping the unit leaves tgtd serving.
//!
//! `#[ignore]`d like the other guest tests (see `common::guest`);
//! `scripts/test.sh` runs it.
mod common;

use std::path::Path;
use std::process::Command;

use common::{check, guest};

#[test]
#[ignore = "builds the package and boots a QEMU guest with systemd (root, QEMU, debootstrap): scripts/test.sh runs it"]
fn the_packaged_agent_runs_under_systemd_and_comes_back_after_sigkill() {
    guest::require_runnable();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = check(
        &Command::new("bash")
            .arg(repo.join("scripts/deb.sh"))
            .output()
            .unwrap(),
        "scripts/deb.sh",
    );
    let deb = repo.join(out.lines().last().expect("a path").trim());
    // SAFETY of the environment change: this test's process is its own
    // (nextest); run-guest.sh reads it.
    std::env::set_var("FERRY_GUEST_INIT", "systemd");
    let log = guest::run(
        "deb-systemd.sh",
        &[(deb, "ferry.deb")],
        400,
        &["console.log"],
    );
    assert!(log.contains("restarted by systemd"), "{log}");
}
