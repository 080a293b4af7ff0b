//! The crate's error type, for what is ZooKeeper's own: reading a
//! `zk://` URL or a document path, starting the client, connecting and
//! authenticating.
//!
//! Requests on the map itself fail with [`MapError`], whatever store keeps
//! the map: [`crate::ZkStore`] implements [`ferry_map::store::MapStore`],
//! whose callers (the agent, the CLI) act on its variants (a `Conflict` is
//! re-read and retried, an `Unreachable` waited out), and a
//! [`crate::ZkDocument`]'s writes are compare-and-sets that fail with its
//! `Conflict` too. Every [`ZkError`] converts into a `MapError` with the
//! same message, for callers that handle both alike.
use std::io;
use std::time::Duration;

use ferry_map::MapError;
use zookeeper_client as zk;

/// What connecting to ZooKeeper can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZkError {
    /// A `zk://` URL that cannot be read.
    #[error(
        "invalid ZooKeeper URL {url:?}: {why} (expected zk://host:port[,host:port...][/root])"
    )]
    BadUrl { url: String, why: &'static str },
    /// A document path that is empty, absolute or has empty, `.` or `..`
    /// components.
    #[error("invalid document path {path:?} under {root}")]
    BadDocumentPath { path: String, root: String },
    /// The client's private runtime could not be started.
    #[error("starting ZooKeeper client runtime: {0}")]
    Runtime(#[source] io::Error),
    /// No server answered within the connect timeout.
    #[error("map store {store} unreachable: no server answered within {timeout:?}")]
    ConnectTimeout { store: String, timeout: Duration },
    /// Connecting to the servers failed.
    #[error("map store {store} unreachable: {source}")]
    Connect {
        store: String,
        #[source]
        source: zk::Error,
    },
    /// The servers refused the credentials.
    #[error("not authorized to authenticate to {root}: check the credentials (--zk-auth)")]
    AuthFailed { root: String },
    /// Connected, but setting the map up (its layout, its watch) failed.
    #[error(transparent)]
    Map(#[from] MapError),
}

impl ZkError {
    /// Whether trying again later may succeed (the servers were not
    /// reached, or the session ended meanwhile).
    pub fn is_transient(&self) -> bool {
        match self {
            ZkError::ConnectTimeout { .. } | ZkError::Connect { .. } => true,
            ZkError::Map(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl From<ZkError> for MapError {
    fn from(e: ZkError) -> Self {
        match e {
            ZkError::BadUrl { .. } | ZkError::BadDocumentPath { .. } => {
                MapError::invalid(e.to_string())
            }
            ZkError::Runtime(source) => MapError::Io {
                op: "starting",
                path: "ZooKeeper client runtime".into(),
                source,
            },
            ZkError::ConnectTimeout { store, timeout } => MapError::Unreachable {
                store,
                why: format!("no server answered within {timeout:?}"),
            },
            ZkError::Connect { store, source } => MapError::Unreachable {
                store,
                why: source.to_string(),
            },
            ZkError::AuthFailed { root } => MapError::NotAuthorized {
                op: "authenticate to",
                path: root,
            },
            ZkError::Map(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converted_errors_keep_their_message() {
        let cases = [
            ZkError::BadUrl {
                url: "zk://".into(),
                why: "no servers",
            },
            ZkError::BadDocumentPath {
                path: "../x".into(),
                root: "/ferry".into(),
            },
            ZkError::Runtime(io::Error::other("no threads")),
            ZkError::ConnectTimeout {
                store: "zk://h:1/ferry".into(),
                timeout: Duration::from_secs(2),
            },
            ZkError::Connect {
                store: "zk://h:1/ferry".into(),
                source: zk::Error::NoHosts,
            },
            ZkError::AuthFailed {
                root: "/ferry".into(),
            },
            ZkError::Map(MapError::SessionExpired),
        ];
        for e in cases {
            let (said, transient) = (e.to_string(), e.is_transient());
            let map = MapError::from(e);
            assert_eq!(map.to_string(), said);
            assert_eq!(map.is_transient(), transient, "{said}");
        }
    }
}
