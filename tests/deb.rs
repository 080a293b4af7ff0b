//! The Debian package, built by `scripts/deb.sh` (cargo-deb) and checked
//! as installed files: the binaries, both plugins where tgtd and
//! tcmu-runner look for them, the systemd units (verified by
//! systemd-analyze), the defaults file as a conffile, and a man page per
//! command generated from the command line's own definitions. Then a real
//! tgtd loads the packaged bs_ferry.so and serves a LUN the packaged
//! `ferry agent` configures from a map, started with the unit's own
//! ExecStart line and environment file, and a libiscsi initiator reads
//! it.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::check;

fn run(cmd: &mut Command, what: &str) -> String {
    check(&cmd.output().unwrap(), what)
}

fn build() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(
        Command::new("bash").arg(repo.join("scripts/deb.sh")),
        "scripts/deb.sh",
    );
    let deb = repo.join(out.lines().last().expect("a path").trim());
    assert!(deb.exists(), "{} missing", deb.display());
    deb
}

/// The unit's `Key=` values.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "builds the release package with cargo-deb (scripts/test.sh)"]
fn the_package_installs_binaries_plugins_units_and_man_pages_that_work() {
    common::require("tgtd");
    common::require("dpkg-deb");
    let deb = build();
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb), "dpkg-deb -c");
    for path in [
        "./usr/bin/ferry",
        "./usr/bin/ferry-iscsi",
        "./usr/lib/tgt/backing-store/bs_ferry.so",
        "./usr/lib/x86_64-linux-gnu/tcmu-runner/handler_ferry.so",
        "./lib/systemd/system/ferry-agent.service",
        "./lib/systemd/system/ferry-serve.service",
        "./etc/default/ferry",
        "./usr/share/man/man1/ferry.1",
        "./usr/share/man/man1/ferry-agent.1",
        "./usr/share/man/man1/ferry-volume-resize.1",
        "./usr/share/man/man1/ferry-map-lun-add.1",
    ] {
        assert!(
            listing.lines().any(|l| l.contains(path)),
            "{path} is not in the package:\n{listing}"
        );
    }
    let control = run(Command::new("dpkg-deb").arg("-I").arg(&deb), "dpkg-deb -I");
    assert!(control.contains("Package: ferry"), "{control}");
    assert!(
        control.contains("Depends:") && control.contains("libc6"),
        "{control}"
    );
    assert!(
        control.contains("conffiles") || control.contains("/etc/default/ferry"),
        "{control}"
    );

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb -x",
    );
    // Every command's page renders.
    let man = root.join("usr/share/man/man1");
    let pages: Vec<_> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(pages.len() >= 30, "{} man pages", pages.len());
    let agent_page = std::fs::read_to_string(man.join("ferry-agent.1"))
        .or_else(|_| {
            let out = Command::new("zcat")
                .arg(man.join("ferry-agent.1.gz"))
                .output()?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .unwrap();
    assert!(
        agent_page.contains("metrics") && agent_page.contains("node"),
        "{agent_page}"
    );

    // The units verify, and say what they run.
    let agent_unit =
        std::fs::read_to_string(root.join("lib/systemd/system/ferry-agent.service")).unwrap();
    assert_eq!(unit_values(&agent_unit, "Restart"), ["always"]);
    assert!(unit_values(&agent_unit, "After")[0].contains("tgt.service"));
    assert!(unit_values(&agent_unit, "After")[0].contains("tcmu-runner.service"));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        // Unknown keys, bad values and missing sections are reported;
        // that /usr/bin/ferry is not installed on this machine is not a
        // fault of the units.
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(root.join("lib/systemd/system/ferry-agent.service"))
            .arg(root.join("lib/systemd/system/ferry-serve.service"))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = said
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.contains("Command /usr/bin/ferry is not executable"))
            .collect();
        assert!(problems.is_empty(), "systemd-analyze verify: {said}");
    }

    // The packaged plugin in a real tgtd, and the packaged agent started
    // the way the unit starts it: ExecStart with the defaults file's
    // variables set.
    let tgt_dir = Path::new("/usr/lib/tgt/backing-store");
    let plugin = root.join("usr/lib/tgt/backing-store/bs_ferry.so");
    std::fs::copy(&plugin, tgt_dir.join(".bs_ferry.pkg")).unwrap();
    std::fs::rename(tgt_dir.join(".bs_ferry.pkg"), tgt_dir.join("bs_ferry.so")).unwrap();
    let run_dir = dir.path().join("run");
    let mut t = common::Tgtd::start_with_installed_plugin(&run_dir);
    let ferry = root.join("usr/bin/ferry");
    let map = format!("file:{}", dir.path().join("map").display());
    let portal = format!("127.0.0.1:{}", t.port);
    let map_cmd = |args: &[&str]| {
        run(
            Command::new(&ferry)
                .args(["map"])
                .args(args)
                .env("FERRY_MAP", &map),
            &format!("ferry map {args:?}"),
        )
    };
    map_cmd(&["node", "add", "gw1", "--portal", &portal]);
    let iqn = "iqn.2026-11.org.ferry:pkg";
    map_cmd(&["target", "add", iqn]);
    let spec = common::file_volume(dir.path(), 8 << 20);
    map_cmd(&[
        "lun", "add", "db", "--target", iqn, "--lun", "1", "--spec", &spec,
    ]);
    map_cmd(&[
        "initiator",
        "add",
        "iqn.2026-11.org.ferry:initiator",
        "--lun",
        "db",
    ]);
    let defaults = dir.path().join("ferry.default");
    std::fs::write(
        &defaults,
        format!(
            "FERRY_NODE=gw1\nFERRY_MAP={map}\nFERRY_AGENT_ARGS=\"--tgtd-control {} --run-dir {} --metrics 127.0.0.1:0\"\n",
            t.ctl,
            run_dir.display()
        ),
    )
    .unwrap();
    let exec =
        unit_values(&agent_unit, "ExecStart")[0].replace("/usr/bin/ferry", ferry.to_str().unwrap());
    let mut agent = Command::new("sh")
        .args([
            "-c",
            &format!("set -a; . {}; exec {exec}", defaults.display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let url = format!("iscsi://{portal}/{iqn}/1");
    let started = std::time::Instant::now();
    let served = loop {
        let out = Command::new(root.join("usr/bin/ferry-iscsi"))
            .args(["--timeout", "3", "info", &url])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = agent.kill();
            panic!(
                "the packaged agent did not serve the LUN: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        served.contains("8388608") || served.contains("16384"),
        "{served}"
    );
    t.stop();
}
