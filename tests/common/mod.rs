//! Shared harness of the end-to-end tests: a private tgtd serving ferry
//! LUNs on its own loopback port, the freshly built bs_ferry.so installed
//! where tgtd loads it, and the project's binaries.
#![allow(dead_code)]

pub mod cluster;
pub mod guest;
pub mod pr;
pub mod zk;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>`, from the test binary's own location.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// A binary built from this workspace (`cargo build --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Fails the test, naming the tool, when `tool` is not installed:
/// `scripts/setup.sh` installs every tool the tests use, so a missing one
/// is an error, never a silent pass.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is not installed: run scripts/setup.sh (it installs what the tests need)"
    );
}

/// The loopback cluster's ceph.conf from `CEPH_CONF`. Tests calling this
/// are `#[ignore]`d: `scripts/test.sh` starts the cluster and runs them; a
/// run without it fails here rather than passing.
pub fn ceph_conf() -> String {
    conf_from("CEPH_CONF", "a Ceph cluster")
}

/// The second loopback cluster's ceph.conf from `CEPH_CONF_B` (for
/// cross-cluster migrations), as [`ceph_conf`].
pub fn ceph_conf_b() -> String {
    conf_from("CEPH_CONF_B", "a second Ceph cluster")
}

fn conf_from(var: &str, what: &str) -> String {
    match std::env::var(var) {
        Ok(c) if Path::new(&c).exists() => c,
        Ok(c) if !c.is_empty() => panic!("{var}={c} does not exist"),
        _ => panic!(
            "this test needs {what} ({var}): run it through scripts/test.sh, which starts \
             the loopback clusters, or export {var} (scripts/ceph-cluster.sh start DIR)"
        ),
    }
}

/// Copies the built plugin to where tgtd loads it, atomically (a new
/// inode), so tgtds already running keep their mapped copy intact.
pub fn install_plugin() {
    let built = target_dir().join("libbs_ferry.so");
    assert!(
        built.exists(),
        "{} is not built: run `cargo build --workspace`",
        built.display()
    );
    let dir = Path::new("/usr/lib/tgt/backing-store");
    std::fs::create_dir_all(dir).unwrap();
    let dest = dir.join("bs_ferry.so");
    let new = std::fs::read(&built).unwrap();
    if std::fs::read(&dest).ok().as_deref() == Some(&new[..]) {
        return;
    }
    // tgtd dlopens every file in the directory, so the temporary name
    // starts with a dot (tgtd skips those).
    let tmp = dir.join(format!(".bs_ferry.so.{}", std::process::id()));
    std::fs::write(&tmp, &new).unwrap();
    std::fs::rename(&tmp, &dest).unwrap();
}

/// A sparse file `v.img` of `bytes` in `dir`, as a volume spec.
pub fn file_volume(dir: &Path, bytes: u64) -> String {
    let path = dir.join("v.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    format!("file:{}", path.display())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tgtd of the test's own.
pub struct Tgtd {
    pub port: u16,
    /// tgtd's management channel number (`-C`); it must fit a C short.
    pub ctl: u16,
    pub run_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Tgtd {
    /// Starts tgtd on a free loopback port; its control socket for
    /// `ferry migrate` goes to `run_dir`.
    pub fn start(run_dir: &Path) -> Tgtd {
        install_plugin();
        Self::start_with_installed_plugin(run_dir)
    }

    /// Starts tgtd with whatever bs_ferry.so is installed (a package's).
    pub fn start_with_installed_plugin(run_dir: &Path) -> Tgtd {
        let port = free_port();
        let mut t = Tgtd {
            port,
            // 10000-19999: clear of the initiator crate's 20000-29999.
            ctl: 10000 + port % 10000,
            run_dir: run_dir.to_path_buf(),
            log: run_dir.with_extension(format!("tgtd-{port}.log")),
            child: None,
        };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.run_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("tgtd")
            .args(["-f", "--iscsi", &format!("portal=127.0.0.1:{}", self.port)])
            .args(["-C", &self.ctl.to_string()])
            .env("FERRY_RUN_DIR", &self.run_dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting tgtd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tgtd did not listen on {}: {}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn tgtadm(&self, args: &[&str]) -> Output {
        Command::new("tgtadm")
            .args(["-C", &self.ctl.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) {
        let out = self.tgtadm(args);
        assert!(
            out.status.success(),
            "tgtadm {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
    }

    pub fn iqn(tid: u32) -> String {
        format!("iqn.2026-11.org.ferry:test{tid}")
    }

    /// Creates target `tid` with good defaults (large data segments).
    pub fn add_target(&self, tid: u32) {
        let tid_s = tid.to_string();
        self.ok(&[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            &tid_s,
            "-T",
            &Self::iqn(tid),
        ]);
        self.ok(&[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            &tid_s,
            "--name",
            "MaxRecvDataSegmentLength",
            "--value",
            "262144",
        ]);
        self.ok(&[
            "--op", "bind", "--mode", "target", "--tid", &tid_s, "-I", "ALL",
        ]);
    }

    /// Adds a ferry LUN; returns tgtadm's output (callers check failures).
    pub fn add_ferry_lun(&self, tid: u32, lun: u32, spec: &str) -> Output {
        self.add_ferry_lun_with(tid, lun, spec, &[])
    }

    /// [`Tgtd::add_ferry_lun`] with more tgtadm options (`--bsopts ...`,
    /// `--blocksize ...`).
    pub fn add_ferry_lun_with(&self, tid: u32, lun: u32, spec: &str, extra: &[&str]) -> Output {
        let (tid, lun) = (tid.to_string(), lun.to_string());
        let mut args = vec![
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            &tid,
            "--lun",
            &lun,
            "--bstype",
            "ferry",
            "--backing-store",
            spec,
        ];
        args.extend_from_slice(extra);
        self.tgtadm(&args)
    }

    /// Target 1 with `spec` as its LUN 1 (which must open).
    pub fn serve(&self, spec: &str) {
        self.add_target(1);
        let out = self.add_ferry_lun(1, 1, spec);
        check(&out, &format!("adding the ferry LUN {spec}"));
    }

    pub fn url(&self, tid: u32, lun: u32) -> String {
        format!("iscsi://127.0.0.1:{}/{}/{lun}", self.port, Self::iqn(tid))
    }

    /// Runs `ferry args` against this tgtd's LUNs (their control sockets
    /// are in its run dir).
    pub fn ferry(&self, args: &[&str]) -> Output {
        run(Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .env("FERRY_RUN_DIR", &self.run_dir))
    }

    /// [`Tgtd::ferry`] that must succeed, its output parsed as JSON.
    pub fn ferry_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ferry(args);
        serde_json::from_str(&check(&out, &format!("ferry {args:?}"))).unwrap()
    }

    /// tgtd's process id (it runs in the foreground: the child itself).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Whether tgtd is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Crash: SIGKILL, no shutdown of any kind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts tgtd again on the same port (after `kill9`).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Orderly stop (tgtd ignores SIGTERM, and refuses to stop while a
    /// target exists): delete the targets, then the system.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            let show = self.tgtadm(&["--op", "show", "--mode", "target"]);
            for line in String::from_utf8_lossy(&show.stdout).lines() {
                if let Some(tid) = line
                    .strip_prefix("Target ")
                    .and_then(|l| l.split(':').next())
                {
                    self.tgtadm(&[
                        "--op", "delete", "--mode", "target", "--tid", tid, "--force",
                    ]);
                }
            }
            let _ = Command::new("tgtadm")
                .args([
                    "-C",
                    &self.ctl.to_string(),
                    "--op",
                    "delete",
                    "--mode",
                    "system",
                ])
                .output();
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            self.kill9();
        }
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion, returning its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running a command")
}

/// Asserts a command succeeded, showing its stderr otherwise.
pub fn check(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
