//! A private ZooKeeper server for a test: standalone, on a free loopback
//! port, with its own data directory, killable and restartable.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's zookeeper package puts the server here.
const JAR: &str = "/usr/share/java/zookeeper.jar";

pub struct ZooKeeper {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl ZooKeeper {
    /// Starts a server; fails the test when ZooKeeper is not installed.
    pub fn start(dir: &Path) -> ZooKeeper {
        super::require("java");
        assert!(
            Path::new(JAR).exists(),
            "{JAR} is missing: run scripts/setup.sh (it installs zookeeper)"
        );
        let port = super::free_port();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // tickTime 250 ms lets tests ask for sessions down to 0.5 s;
        // the session timeouts tests use are a few seconds.
        std::fs::write(
            dir.join("zoo.cfg"),
            format!(
                "tickTime=250\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\nminSessionTimeout=500\nmaxSessionTimeout=60000\n\
                 4lw.commands.whitelist=ruok\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let mut zk = ZooKeeper {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        zk.spawn();
        zk
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("zookeeper.log"))
            .unwrap();
        let child = Command::new("java")
            .args(["-Xmx256m", "-cp", &format!("/etc/zookeeper/conf:{JAR}")])
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.dir.join("zoo.cfg"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting ZooKeeper");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ok() {
            assert!(
                Instant::now() < deadline,
                "ZooKeeper did not come up on {}: {}",
                self.port,
                std::fs::read_to_string(self.dir.join("zookeeper.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the server answers `ruok`.
    pub fn ok(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut out = String::new();
        s.write_all(b"ruok").is_ok() && s.read_to_string(&mut out).is_ok() && out == "imok"
    }

    /// The map URL under a root of the test's choosing.
    pub fn url(&self, root: &str) -> String {
        format!("zk://127.0.0.1:{}/{root}", self.port)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same port and data (sessions survive
    /// a restart shorter than their timeout).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.kill9();
    }
}
