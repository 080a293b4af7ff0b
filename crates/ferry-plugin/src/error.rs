//! The crate's error type.
#![forbid(unsafe_code)]

use std::io;

/// What can go wrong setting a plugin up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The host does not export a symbol the plugin calls: it is not the
    /// host (or the version of it) the plugin's declarations were written
    /// for.
    #[error("{name} is not exported by {host}")]
    MissingSymbol { host: &'static str, name: String },
    /// A worker thread of a [`crate::Pool`] could not be started.
    #[error("spawning worker {index}: {source}")]
    Spawn {
        index: usize,
        #[source]
        source: io::Error,
    },
    /// An [`crate::EventFd`] could not be created.
    #[error("eventfd: {0}")]
    EventFd(#[source] io::Error),
}
