//! End to end through the Linux kernel's target (LIO) and tcmu-runner, in
//! a QEMU guest: `handler_ferry.so` serves a ferry volume as a
//! `user:ferry` backstore configured with targetcli, open-iscsi logs in
//! over loopback, and the volume is migrated live under a verifying fio
//! load, with tcmu-runner killed and restarted mid-migration and after the
//! commit; a second backstore of 4096-byte logical blocks
//! (`control=hw_block_size=4096`) checks placement at LBA * 4096 and
//! refusal past its end. The checks run inside the guest
//! (`scripts/guest/tcmu-migrate.sh`, whose header lists them); this test
//! builds or reuses the guest image, stages the freshly built handler and
//! `ferry` binary into the share, boots the guest and reports its log.
//!
//! Why a guest: the host kernel here has no LIO, TCMU or iSCSI initiator
//! and cannot load modules; the guest runs Debian 12's stock kernel under
//! TCG. The test is `#[ignore]`d, as it takes minutes: a plain test run
//! reports it skipped, `scripts/test.sh` runs it. It needs root
//! (debootstrap, and the guest image's ownership), QEMU and debootstrap
//! (`scripts/setup.sh` installs them), and fails without them. The image is
//! cached in `$FERRY_GUEST_CACHE` (default `/var/tmp/ferry-guest`):
//! a cold build takes about a minute or two, a run 170-220 s (25 s of
//! it the 4096-byte LUN).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Fails the test, saying why, where it cannot run.
fn require_runnable() {
    assert!(
        is_root(),
        "the guest test needs root (debootstrap, and the guest image's ownership)"
    );
    let missing: Vec<&str> = ["qemu-system-x86_64", "debootstrap"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    assert!(
        missing.is_empty(),
        "{} not installed: run scripts/setup.sh (it installs them)",
        missing.join(" and ")
    );
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

/// The handler built in this profile (`cargo build --workspace` builds
/// it; the root package does not depend on it).
fn handler_so() -> PathBuf {
    let so = common::target_dir().join("libhandler_ferry.so");
    assert!(
        so.exists(),
        "{} is not built: run `cargo build -p ferry-tcmu` (or --workspace) first",
        so.display()
    );
    let built = std::fs::metadata(&so).and_then(|m| m.modified()).ok();
    let source = newest_mtime(&repo().join("handler/tcmu/src"));
    if let (Some(built), Some(source)) = (built, source) {
        if source > built {
            eprintln!(
                "warning: {} is older than handler/tcmu/src: rebuild with `cargo build -p ferry-tcmu`",
                so.display()
            );
        }
    }
    so
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
#[ignore = "boots a QEMU guest for about 3 minutes (root, QEMU, debootstrap): scripts/test.sh runs it"]
fn tcmu_runner_serves_a_live_migration_in_a_guest() {
    require_runnable();
    let cache = std::env::var_os("FERRY_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/ferry-guest"));
    let scripts = repo().join("scripts/guest");

    let t = Instant::now();
    let out = Command::new("bash")
        .arg(scripts.join("build-image.sh"))
        .arg(&cache)
        .output()
        .expect("running build-image.sh");
    assert!(
        out.status.success(),
        "build-image.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "guest image ready in {:.1} s\n{}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).trim()
    );

    let share = tempfile::Builder::new()
        .prefix("ferry-guest-share")
        .tempdir()
        .unwrap();
    let stage = |from: &Path, name: &str| {
        let to = share.path().join(name);
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("staging {}: {e}", from.display()));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    stage(&handler_so(), "libhandler_ferry.so");
    stage(Path::new(env!("CARGO_BIN_EXE_ferry")), "ferry");
    stage(&scripts.join("lib.sh"), "lib.sh");
    stage(&scripts.join("tcmu-migrate.sh"), "tcmu-migrate.sh");

    let t = Instant::now();
    let out = Command::new("bash")
        .arg(scripts.join("run-guest.sh"))
        .arg(&cache)
        .arg(share.path())
        .arg("tcmu-migrate.sh")
        .arg("400")
        .output()
        .expect("running run-guest.sh");
    let guest_log = std::fs::read_to_string(share.path().join("guest.log")).unwrap_or_default();
    eprintln!("guest ran {:.1} s:\n{guest_log}", t.elapsed().as_secs_f64());
    if !out.status.success() {
        // Keep the share for a look at the logs.
        let kept = share.keep();
        panic!(
            "the guest run failed ({}):\n{}\n--- tcmu-runner.log (tail) ---\n{}\n--- console (tail) ---\n{}\n(logs kept in {})",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&kept.join("tcmu-runner.log"), 40),
            tail(&kept.join("console.log"), 40),
            kept.display()
        );
    }
    assert!(guest_log.contains("all checks passed"), "{guest_log}");
}
