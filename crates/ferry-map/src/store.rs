//! The store interface and the one way the desired state changes.
//!
//! Every edit is read-modify-write under optimistic concurrency: read a
//! [`Snapshot`], apply the change to a copy, validate the whole result,
//! then commit the changed documents in one atomic operation that also
//! requires the map's global version to be the one read (and bumps it).
//! If another admin committed in between, the commit fails and [`edit`]
//! re-reads and re-applies the change, so the result is always a map that
//! validated as a whole: two admins adding the same LUN get one success
//! and one "already exists"; a delete racing a reference to it cannot
//! leave a dangling reference. An explicit `expect` version on a document
//! turns a lost race into a [`MapError::Conflict`] instead of a retry.
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::schema::{ClusterMap, Kind};
use crate::state::{LiveNode, MigrationRequest, MigrationStatus, NodeStatus, Snapshot};
use crate::MapError;

/// One document change in a commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create a document that must not exist yet.
    Create {
        kind: Kind,
        name: String,
        doc: Value,
    },
    /// Replace a document at a version.
    Set {
        kind: Kind,
        name: String,
        doc: Value,
        version: i32,
    },
    Delete {
        kind: Kind,
        name: String,
        version: i32,
    },
}

/// What woke a [`MapStore::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Changed,
    Timeout,
}

/// The health of the client's session with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    Connected,
    /// Lost contact at this instant; the session may still be alive on the
    /// server.
    Disconnected(Instant),
    /// The server dropped the session: every ephemeral registration and
    /// claim of this client is gone.
    Expired,
}

/// A backend holding the map: ZooKeeper for a cluster, a file for one node.
pub trait MapStore: Send + Sync {
    /// Where the store is, for messages (never with credentials).
    fn describe(&self) -> String;
    /// One consistent read of everything.
    fn snapshot(&self) -> Result<Snapshot, MapError>;
    /// Applies `ops` atomically if the map is still at `base`; returns the
    /// new version. Fails with [`MapError::Conflict`] naming the first
    /// document that moved.
    fn commit(&self, base: i32, ops: &[Op]) -> Result<i32, MapError>;
    /// Files a migration request for a LUN; `expect` is the request
    /// document's version (None: it must not exist yet).
    fn request_migration(
        &self,
        lun: &str,
        req: &MigrationRequest,
        expect: Option<i32>,
    ) -> Result<(), MapError>;

    /// Registers this node for as long as its session lives.
    fn register(&self, node: &str, live: &LiveNode) -> Result<(), MapError>;
    /// Takes the serving claim of a LUN; false if another node holds it.
    /// The claim lives as long as the session.
    fn claim(&self, lun: &str, node: &str) -> Result<bool, MapError>;
    /// Drops this node's claim (after it stopped serving the LUN).
    fn release(&self, lun: &str, node: &str) -> Result<(), MapError>;
    fn put_status(&self, node: &str, status: &NodeStatus) -> Result<(), MapError>;
    fn put_migration_status(&self, lun: &str, status: &MigrationStatus) -> Result<(), MapError>;
    /// Blocks until something under the map changes, or `timeout`.
    fn wait(&self, timeout: Duration) -> Result<Event, MapError>;
    fn session(&self) -> Session;
    /// The session timeout the store granted (how long a dead node keeps
    /// its claims).
    fn session_timeout(&self) -> Duration;
}

/// The commit that turns `old` into `new`, given the versions read.
pub fn diff_ops(snap: &Snapshot, new: &ClusterMap) -> Result<Vec<Op>, MapError> {
    let old = &snap.map;
    let mut ops = Vec::new();
    fn docs<T: serde::Serialize>(
        m: &std::collections::BTreeMap<String, T>,
    ) -> Result<std::collections::BTreeMap<&String, Value>, MapError> {
        m.iter()
            .map(|(k, v)| {
                serde_json::to_value(v)
                    .map(|v| (k, v))
                    .map_err(|e| MapError::invalid(e.to_string()))
            })
            .collect()
    }
    for kind in Kind::ALL {
        let (o, n) = match kind {
            Kind::Target => (docs(&old.targets)?, docs(&new.targets)?),
            Kind::Lun => (docs(&old.luns)?, docs(&new.luns)?),
            Kind::Initiator => (docs(&old.initiators)?, docs(&new.initiators)?),
            Kind::Node => (docs(&old.nodes)?, docs(&new.nodes)?),
        };
        for (name, doc) in &n {
            match o.get(name) {
                None => ops.push(Op::Create {
                    kind,
                    name: (*name).clone(),
                    doc: doc.clone(),
                }),
                Some(prev) if prev != doc => ops.push(Op::Set {
                    kind,
                    name: (*name).clone(),
                    doc: doc.clone(),
                    version: snap.doc_version(kind, name).unwrap_or(0),
                }),
                Some(_) => {}
            }
        }
        for name in o.keys() {
            if !n.contains_key(name) {
                ops.push(Op::Delete {
                    kind,
                    name: (*name).clone(),
                    version: snap.doc_version(kind, name).unwrap_or(0),
                });
            }
        }
    }
    Ok(ops)
}

/// How many times [`edit`] re-reads after losing a race before it gives up
/// (each loss means another edit landed, so this bounds starvation only).
const EDIT_RETRIES: usize = 20;

/// Applies `change` to the current map and commits it; returns the new
/// version (or the current one when the change was a no-op). `change` may
/// run several times, on successively newer maps.
pub fn edit(
    store: &dyn MapStore,
    mut change: impl FnMut(&Snapshot, &mut ClusterMap) -> Result<(), MapError>,
) -> Result<i32, MapError> {
    let mut last = None;
    for _ in 0..EDIT_RETRIES {
        let snap = store.snapshot()?;
        let mut map = snap.map.clone();
        change(&snap, &mut map)?;
        map.validate()?;
        let ops = diff_ops(&snap, &map)?;
        if ops.is_empty() {
            return Ok(snap.version);
        }
        match store.commit(snap.version, &ops) {
            Ok(v) => return Ok(v),
            // Only a move of the global version is retried: a document
            // conflict here means the snapshot itself was torn, which the
            // next read repairs the same way.
            Err(e @ MapError::Conflict { .. }) => {
                log::debug!("edit lost a race, re-reading: {e}");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| MapError::invalid("edit did not converge")))
}
