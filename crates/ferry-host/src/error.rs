//! ferry-host's errors.
//!
//! What the engine reports passes through as [`HostError::Engine`], and
//! what a reservation store reports as [`HostError::Reservations`]: their
//! callers read the same message and can still match on the engine's
//! variants. The rest is ferry-host's own: geometry, snapshots asked at
//! the wrong time or without a name, and the control and relay sockets.
use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// What hosting a LUN can fail with, beyond the engine's own errors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HostError {
    #[error(transparent)]
    Engine(#[from] ferry_core::Error),
    /// The geometry a front-end asked for does not fit the volume.
    #[error("{lun}: {why}")]
    Geometry { lun: String, why: String },
    /// An ALUA target port refused a state change (see [`crate::port`]).
    #[error("target port of {lun}: {why}")]
    Port { lun: String, why: String },
    /// A file volume's own failure (a snapshot name that cannot be a
    /// file name, a snapshot that is missing or already there).
    #[error(transparent)]
    File(#[from] ferry_file::FileError),
    /// A snapshot operation asked of a LUN whose migration is under way:
    /// the copy would have to span two volumes.
    #[error(
        "cannot {what} of {lun} while it is being migrated ({state} to {target}); \
         commit or abort the migration first"
    )]
    Migrating {
        what: &'static str,
        lun: String,
        state: String,
        target: String,
    },
    /// A snapshot operation other than a listing, without a name.
    #[error("{lun}: a snapshot name is required")]
    NoSnapshotName { lun: String },
    /// Setting up a control or relay socket (its directory, the socket,
    /// its thread) failed.
    #[error("{op} {}: {source}", path.display())]
    Socket {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A resize that cannot be done (see [`crate::resize`]).
    #[error("cannot resize {lun}: {why}")]
    Resize { lun: String, why: String },
    /// A QoS setting that cannot be applied (a limit of zero).
    #[error("QoS of {lun}: {why}")]
    Qos { lun: String, why: String },
    /// The metrics endpoint could not listen where it was asked to.
    #[error("metrics address {addr}: {why}")]
    Metrics { addr: String, why: String },
    /// Asking a control socket failed: nobody listens, or the answer
    /// never came or did not parse.
    #[error("control socket {}: {source}", path.display())]
    Call {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl HostError {
    /// Wraps an I/O error from setting up the socket at `path`.
    pub(crate) fn socket(
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| HostError::Socket { op, path, source }
    }

    /// Wraps an I/O error from a call to the control socket at `path`.
    pub(crate) fn call(path: &std::path::Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| HostError::Call { path, source }
    }
}
