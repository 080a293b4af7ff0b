//! The cluster LUN map (seed 004): which LUNs exist, under which targets,
//! which initiators may use them and which gateway nodes may serve them,
//! kept in one store every node agrees on.
//!
//! - [`schema`]: the documents admins edit, and their validation;
//! - [`state`]: what the store holds besides the desired state: live
//!   nodes, LUN owners, migration requests, per-node status;
//! - [`placement`]: which node serves which LUN, decided from a snapshot;
//! - [`store`]: the [`MapStore`] trait every backend implements
//!   (ZooKeeper in `ferry-zk`, the embedded [`FileStore`] here) and
//!   [`edit`], the read-validate-commit loop every writer uses.
//!
//! Nothing here does I/O on a data path: agents read snapshots and hand
//! the front-end an immutable configuration.
#![forbid(unsafe_code)]

pub mod file;
pub mod placement;
pub mod schema;
pub mod state;
pub mod store;

pub use file::FileStore;
pub use schema::{
    CacheMode, ChapCredential, ClusterMap, Frontend, Initiator, Kind, Lun, Node, Target,
};
pub use state::{
    LiveNode, MigrationAction, MigrationRequest, MigrationStatus, NodeStatus, Snapshot,
};
pub use store::{edit, Event, MapStore, Op, Session};

/// Errors of the map and its stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    #[error("{0}")]
    Invalid(String),
    #[error("unknown {kind} {name}")]
    NotFound { kind: Kind, name: String },
    #[error("{kind} {name} already exists")]
    Exists { kind: Kind, name: String },
    /// A compare-and-set lost: someone else changed the document first.
    #[error("conflict: {what} changed (expected version {expected}, now {actual}); re-read the map and retry")]
    Conflict {
        what: String,
        expected: i32,
        actual: i32,
    },
    #[error("map store {store} unreachable: {why}")]
    Unreachable { store: String, why: String },
    #[error("not authorized to {op} {path}: check the credentials (--zk-auth)")]
    NotAuthorized { op: &'static str, path: String },
    #[error("session with the map store expired")]
    SessionExpired,
    #[error("map store {op} {path}: {why}")]
    Store {
        op: &'static str,
        path: String,
        why: String,
    },
    #[error("corrupt document {path}: {why}")]
    Corrupt { path: String, why: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl MapError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        MapError::Invalid(msg.into())
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            MapError::Unreachable { .. } | MapError::SessionExpired
        )
    }
}
