//! The store's contents besides the desired state: what nodes report and
//! claim, and the migration requests admins file.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::schema::{ClusterMap, Kind};

/// A node's registration while its agent's session lives (an ephemeral
/// znode in ZooKeeper).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveNode {
    pub portal: String,
    pub pid: u32,
    /// Seconds since the epoch at registration.
    pub since: u64,
    /// The agent's host and its process start time (clock ticks since
    /// boot), so a restarted agent can tell its own dead predecessor from
    /// a live agent.
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid_start: u64,
}

impl LiveNode {
    /// This process's registration.
    pub fn this_process(portal: &str) -> LiveNode {
        let pid = std::process::id();
        LiveNode {
            portal: portal.to_string(),
            pid,
            since: now_ms() / 1000,
            host: hostname(),
            pid_start: process_start_time(pid).unwrap_or(0),
        }
    }

    /// Whether this registration was made by a process of this host that
    /// no longer runs (an agent killed before its session ended).
    pub fn is_dead_on_this_host(&self) -> bool {
        !self.host.is_empty()
            && self.host == hostname()
            && process_start_time(self.pid) != Some(self.pid_start)
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// A process's start time (clock ticks since boot), to tell a live
/// process from a recycled pid.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the command name (which may hold spaces).
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// What a node's agent last applied, written after every reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The map version the node's front-end reflects.
    pub applied_version: i32,
    /// LUNs the node serves now.
    pub serving: Vec<String>,
    /// LUNs that could not be applied, with why.
    #[serde(default)]
    pub errors: BTreeMap<String, String>,
    /// Milliseconds since the epoch of this report.
    pub at_ms: u64,
}

/// What an admin asks of a LUN's migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum MigrationAction {
    Start {
        target: String,
        #[serde(default)]
        rate: Option<u64>,
    },
    Pause,
    Resume,
    Rate {
        rate: Option<u64>,
    },
    Abort,
    Commit {
        #[serde(default)]
        remove_source: bool,
    },
}

/// A migration request: actions are numbered so the node executing them
/// (and the next one, after a move) runs each exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRequest {
    pub seq: u64,
    #[serde(flatten)]
    pub action: MigrationAction,
}

/// The serving node's report on a LUN's migration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// The last request executed (successfully or not).
    pub done_seq: u64,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// copying, copied, committed, aborting or aborted (the progress's
    /// state while the serving process has a migration, then how the last
    /// one ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The copier's progress as the serving process reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
    pub at_ms: u64,
}

/// One consistent read of the store.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Bumped by every committed edit of the desired state.
    pub version: i32,
    pub map: ClusterMap,
    /// Each document's own version, for compare-and-set.
    pub versions: BTreeMap<(Kind, String), i32>,
    pub live: BTreeMap<String, LiveNode>,
    /// LUN -> the node holding its serving claim.
    pub owners: BTreeMap<String, String>,
    pub migrations: BTreeMap<String, (MigrationRequest, i32)>,
    pub migration_status: BTreeMap<String, MigrationStatus>,
    pub status: BTreeMap<String, NodeStatus>,
}

impl Snapshot {
    pub fn doc_version(&self, kind: Kind, name: &str) -> Option<i32> {
        self.versions.get(&(kind, name.to_string())).copied()
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64) // ms since 1970 fit u64 for 500M years
        .unwrap_or(0)
}
