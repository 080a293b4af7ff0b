//! Running a script in the QEMU test guest (scripts/guest/): the image
//! is built or reused, the files a script needs are staged into a share,
//! the guest boots on the script and its log comes back.
//!
//! Why a guest: the host kernel here has no LIO, TCMU, iSCSI initiator or
//! dm-multipath and cannot load modules; the guest runs Debian 12's stock
//! kernel under TCG. Guest tests need root (debootstrap, and the guest
//! image's ownership), QEMU and debootstrap (`scripts/setup.sh` installs
//! them), and fail without them. The image is cached in
//! `$FERRY_GUEST_CACHE` (default `/var/tmp/ferry-guest`).
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
pub fn require_runnable() {
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

pub fn repo() -> PathBuf {
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
pub fn handler_so() -> PathBuf {
    let so = super::target_dir().join("libhandler_ferry.so");
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

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Builds (or reuses) the guest image, stages `files` (source, name in the
/// share) and the named scripts of scripts/guest/ into a fresh share,
/// boots the guest on `script` for at most `timeout_s` seconds and
/// returns the guest's log. A failed run panics with its logs' tails
/// (`logs`: files of the share worth showing) and keeps the share.
pub fn run(script: &str, files: &[(PathBuf, &str)], timeout_s: u32, logs: &[&str]) -> String {
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
    for (from, name) in files {
        stage(from, name);
    }
    stage(&scripts.join("lib.sh"), "lib.sh");
    stage(&scripts.join(script), script);

    let t = Instant::now();
    let out = Command::new("bash")
        .arg(scripts.join("run-guest.sh"))
        .arg(&cache)
        .arg(share.path())
        .arg(script)
        .arg(timeout_s.to_string())
        .output()
        .expect("running run-guest.sh");
    let guest_log = std::fs::read_to_string(share.path().join("guest.log")).unwrap_or_default();
    eprintln!("guest ran {:.1} s:\n{guest_log}", t.elapsed().as_secs_f64());
    if !out.status.success() {
        // Keep the share for a look at the logs.
        let kept = share.keep();
        let tails: String = logs
            .iter()
            .chain(&["console.log"])
            .map(|l| format!("\n--- {l} (tail) ---\n{}", tail(&kept.join(l), 40)))
            .collect();
        panic!(
            "the guest run failed ({}):\n{}{tails}\n(logs kept in {})",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            kept.display()
        );
    }
    assert!(guest_log.contains("all checks passed"), "{guest_log}");
    guest_log
}
