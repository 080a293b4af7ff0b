//! A cluster of gateway nodes on one machine for the end-to-end tests:
//! each node its own tgtd on its own loopback port and its own agent,
//! all on one map; the `ferry` CLI to edit and read the map.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{bin, check, Tgtd};

pub const TARGET: &str = "iqn.2026-11.org.ferry:cluster";
/// ferry-iscsi's default initiator name.
pub const INITIATOR: &str = "iqn.2026-11.org.ferry:initiator";
/// The agents' ZooKeeper session timeout: a dead node's LUNs move after it.
pub const SESSION: Duration = Duration::from_secs(5);

pub struct Node {
    pub name: String,
    pub tgtd: Tgtd,
    pub agent: Option<Child>,
    pub log: PathBuf,
    /// Where the agent serves its metrics (`--metrics`); by default a
    /// free loopback port, since the nodes share one machine.
    pub metrics: String,
}

impl Node {
    /// Starts the node's tgtd and names the node in the map; its agent is
    /// started apart (`start_agent`), once the map is ready for it.
    pub fn add(name: &str, dir: &std::path::Path, url: &str) -> Node {
        let tgtd = Tgtd::start(&dir.join(format!("run-{name}")));
        let portal = format!("127.0.0.1:{}", tgtd.port);
        ferry(url, &["map", "node", "add", name, "--portal", &portal]);
        Node {
            name: name.to_string(),
            tgtd,
            agent: None,
            metrics: "127.0.0.1:0".into(),
            log: dir.join(format!("agent-{name}.log")),
        }
    }

    pub fn start_agent(&mut self, url: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["agent", "--node", &self.name])
            .args(["--tgtd-control", &self.tgtd.ctl.to_string()])
            .arg("--run-dir")
            .arg(&self.tgtd.run_dir)
            .args(["--session-timeout", &format!("{}s", SESSION.as_secs())])
            .args(["--metrics", &self.metrics])
            .env("FERRY_MAP", url)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    pub fn portal(&self) -> String {
        format!("127.0.0.1:{}", self.tgtd.port)
    }

    pub fn url(&self, lun: u32) -> String {
        format!("iscsi://{}/{TARGET}/{lun}", self.portal())
    }

    /// The node dies: agent and tgtd both get SIGKILL.
    pub fn kill9(&mut self) {
        self.kill_agent();
        self.tgtd.kill9();
    }

    /// Only the agent dies: tgtd keeps serving what it served (a node cut
    /// off from the map but not from storage or ZooKeeper).
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

pub fn ferry(url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_MAP", url)
        .output()
        .unwrap();
    check(&out, &format!("ferry {args:?}"))
}

/// Like `check`, showing the node's tgtd log when the command failed.
pub fn check_on(n: &Node, out: &std::process::Output, what: &str) {
    if !out.status.success() {
        eprintln!("--- tgtd log of node {} ---\n{}", n.name, n.tgtd.log_text());
    }
    check(out, what);
}

pub fn show(url: &str) -> Value {
    serde_json::from_str(&ferry(url, &["map", "show", "--json"])).unwrap()
}

pub fn iscsi(args: &[&str]) -> std::process::Output {
    Command::new(bin("ferry-iscsi"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Waits until `cond` holds on the map (up to `limit`); returns how long
/// it took.
pub fn wait_map(url: &str, limit: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        let s = show(url);
        if cond(&s) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "{what}: not within {limit:?}; map: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `node` reports serving `lun` at map version `v` or later.
pub fn serves(s: &Value, node: &str, lun: &str, v: i64) -> bool {
    let st = &s["status"][node];
    st["applied_version"].as_i64().unwrap_or(-1) >= v
        && st["serving"]
            .as_array()
            .is_some_and(|a| a.iter().any(|l| l == lun))
        && s["owners"][lun] == node
}

pub fn owner(s: &Value, lun: &str) -> Option<String> {
    s["owners"][lun].as_str().map(str::to_string)
}

/// Gateway nodes a and b with their agents running.
pub fn two_nodes(dir: &std::path::Path, url: &str) -> BTreeMap<String, Node> {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for n in ["a", "b"] {
        nodes.insert(n.to_string(), Node::add(n, dir, url));
    }
    for n in nodes.values_mut() {
        n.start_agent(url);
    }
    nodes
}

/// LUN 1 of the target (added already), `name` on `spec` with `flags`
/// (`--qos`, `--size`, ...), mapped to the test initiator; returns once
/// node a serves the map as it is then, so its target is ready for logins.
pub fn add_lun_served_by_a(url: &str, name: &str, spec: &str, flags: &[&str]) {
    let mut args = vec![
        "map", "lun", "add", name, "--target", TARGET, "--lun", "1", "--spec", spec,
    ];
    args.extend_from_slice(flags);
    ferry(url, &args);
    ferry(url, &["map", "initiator", "add", INITIATOR, "--lun", name]);
    let v = show(url)["version"].as_i64().unwrap();
    wait_map(
        url,
        Duration::from_secs(30),
        &format!("a serves {name}"),
        |s| serves(s, "a", name, v),
    );
}

/// LUN 1 of the target, `name` on `spec`, permitted on a then b, mapped
/// to the test initiator and the two PR hosts; returns once a serves it.
pub fn add_shared_lun(url: &str, name: &str, spec: &str) {
    use super::pr::{HOST_A, HOST_B};
    ferry(url, &["map", "target", "add", TARGET]);
    ferry(
        url,
        &[
            "map", "lun", "add", name, "--target", TARGET, "--lun", "1", "--spec", spec, "--nodes",
            "a,b",
        ],
    );
    for host in [INITIATOR, HOST_A, HOST_B] {
        ferry(url, &["map", "initiator", "add", host, "--lun", name]);
    }
    let v = show(url)["version"].as_i64().unwrap();
    wait_map(
        url,
        Duration::from_secs(20),
        &format!("{name} served by a"),
        |s| serves(s, "a", name, v),
    );
}
