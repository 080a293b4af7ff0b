//! A private tgtd for one test: its own iSCSI port and control port, a
//! target with one `rdwr` LUN on a temp file, stopped (or killed) on drop.
//!
//! Tests call [`Tgtd::start`], which fails the test, saying why, when tgt
//! is not installed (`scripts/setup.sh` installs it) or we are not root.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub const IQN: &str = "iqn.2026-11.org.ferry:t1";

/// The `ferry-iscsi` binary of this crate.
pub fn ferry_iscsi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry-iscsi"))
}

/// Fails the test, saying why, where tgt-backed tests cannot run.
fn require_tgt() {
    let installed = ["tgtd", "tgtadm"].iter().all(|b| {
        Command::new(b)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    assert!(
        installed,
        "tgtd/tgtadm are not installed: run scripts/setup.sh (it installs tgt)"
    );
    assert!(root, "tgtd needs root");
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().unwrap().port()
}

/// A control port for the portal `port`; a clash with another tgtd makes
/// ours exit at once ("another tgtd is using ... lock"), and `start` then
/// tries another port.
fn control_port(port: u16) -> u16 {
    20000 + port % 10000
}

pub struct Tgtd {
    child: Option<Child>,
    /// The iSCSI portal's port.
    pub port: u16,
    /// tgtd's control port number (`-C`; a `short` in tgtd, so below
    /// 32768), derived from `port`.
    pub control: u16,
    pub lun_path: PathBuf,
    dir: tempfile::TempDir,
    launches: usize,
}

impl Tgtd {
    /// Starts tgtd with one LUN of `lun_bytes` (a sparse temp file).
    pub fn start(lun_bytes: u64) -> Tgtd {
        require_tgt();
        let dir = tempfile::tempdir().expect("temp dir");
        let lun_path = dir.path().join("lun.img");
        File::create(&lun_path)
            .and_then(|f| f.set_len(lun_bytes))
            .expect("creating the LUN file");
        let mut t = Tgtd {
            child: None,
            port: 0,
            control: 0,
            lun_path,
            dir,
            launches: 0,
        };
        let mut last = String::new();
        for _ in 0..5 {
            match t.launch(free_port()) {
                Ok(()) => {
                    t.configure();
                    return t;
                }
                Err(e) => last = e,
            }
        }
        panic!("could not start tgtd: {last}");
    }

    /// `iscsi://127.0.0.1:<port>/<iqn>/1`
    pub fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}/{IQN}/1", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Spawns tgtd on `port` and waits for the portal to accept.
    fn launch(&mut self, port: u16) -> Result<(), String> {
        self.launches += 1;
        let log = self.dir.path().join(format!("tgtd-{}.log", self.launches));
        let out = File::create(&log).expect("tgtd log");
        let child = Command::new("tgtd")
            .args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}")])
            .args(["-C", &control_port(port).to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .map_err(|e| format!("spawning tgtd: {e}"))?;
        self.child = Some(child);
        self.port = port;
        self.control = control_port(port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                return Err(format!("tgtd exited ({st}): {}", read(&log)));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("portal {port} never accepted: {}", read(&log)));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Runs `tgtadm -C <port> args...`, panicking with its output on
    /// failure.
    pub fn tgtadm(&self, args: &[&str]) {
        let out = Command::new("tgtadm")
            .args(["-C", &self.control.to_string()])
            .args(args)
            .output()
            .expect("running tgtadm");
        assert!(
            out.status.success(),
            "tgtadm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Target 1 with LUN 1 on the file (thin provisioned, so UNMAP and
    /// WRITE SAME with UNMAP punch holes), open to every initiator.
    fn configure(&self) {
        let lun = self.lun_path.to_str().unwrap();
        self.tgtadm(&[
            "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", IQN,
        ]);
        self.tgtadm(&[
            "--lld",
            "iscsi",
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            lun,
        ]);
        self.tgtadm(&[
            "--lld",
            "iscsi",
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "--params",
            "thin_provisioning=1",
        ]);
        self.tgtadm(&[
            "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ]);
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts tgtd again on the same port and LUN file (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.launch(self.port) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => panic!("restarting tgtd: {e}"),
                Err(_) => sleep(Duration::from_millis(200)),
            }
        }
        self.configure();
    }

    /// Orderly stop: tgtd ignores SIGTERM, and exits on `delete system`
    /// only once no target is left.
    fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let port = self.control.to_string();
        let quiet = |args: &[&str]| {
            let _ = Command::new("tgtadm")
                .args(["-C", &port])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&[
            "--lld", "iscsi", "--op", "delete", "--force", "--mode", "target", "--tid", "1",
        ]);
        quiet(&["--op", "delete", "--mode", "system"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.stop();
        // tgtd leaves its control socket and lock file behind.
        if self.control != 0 {
            for suffix in ["", ".lock"] {
                let _ =
                    std::fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.control));
            }
        }
    }
}

fn read(p: &Path) -> String {
    let mut s = String::new();
    let _ = File::open(p).and_then(|mut f| f.read_to_string(&mut s));
    s
}
