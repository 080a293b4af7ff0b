//! The engine's one error type. Each variant names the operation that failed
//! and carries its cause, so a message read by an admin says what and where.
use std::io;

/// Result of engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call on a volume failed.
    #[error("{op} on volume {volume} at offset {offset} failed: {source}")]
    VolumeIo {
        op: &'static str,
        volume: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// A volume could not change size.
    #[error("cannot resize {volume}: {why}")]
    CannotResize { volume: String, why: String },
    /// A request addressed bytes past the end of the volume.
    #[error("range {offset}+{len} is outside the volume of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The region size is not usable.
    #[error("region size {0} is invalid: it must be a power of two between 4 KiB and 1 GiB")]
    BadRegionSize(u64),
    /// The target cannot hold the source.
    #[error("target {target} has {target_size} bytes, smaller than source {source_name} with {source_size} bytes")]
    TargetTooSmall {
        target: String,
        target_size: u64,
        source_name: String,
        source_size: u64,
    },
    /// The source is already being migrated somewhere.
    #[error("source {source_name} is already being migrated (to {target})")]
    SourceBusy { source_name: String, target: String },
    /// The source was migrated away and committed; its data is stale.
    #[error("{source_name} was migrated to {target} and committed; its data is stale (migrate {target} instead)")]
    SourceRetired { source_name: String, target: String },
    /// The target already carries a migration record.
    #[error("target {0} already holds a migration; resume, commit or abort it first")]
    TargetBusy(String),
    /// No migration record where one was expected.
    #[error("no migration found for {0}")]
    NoMigration(String),
    /// Durable metadata (record or index) failed validation.
    #[error("migration metadata of {what} is corrupt: {why}")]
    Corrupt { what: String, why: String },
    /// Reading or writing durable metadata failed.
    #[error("{op} of migration metadata for {what} failed: {source}")]
    MetaIo {
        op: &'static str,
        what: String,
        #[source]
        source: io::Error,
    },
    /// The operation is not allowed in the migration's current state.
    #[error("cannot {op}: migration is {state}")]
    WrongState { op: &'static str, state: String },
    /// Commit asked before every region is on the target.
    #[error("cannot commit: {remaining} of {total} regions are not migrated yet")]
    NotCopied { remaining: u64, total: u64 },
    /// A flush failed earlier; the volume refuses I/O so no write is
    /// acknowledged on top of data whose durability is unknown.
    #[error("volume is fenced after a failed flush ({0}); reopen it to recover")]
    Fenced(String),
    /// A volume specification or option could not be understood.
    #[error("bad volume spec {spec:?}: {why}")]
    BadSpec { spec: String, why: String },
    /// The backend does not implement an optional operation.
    #[error("{0} is not supported by this volume")]
    Unsupported(&'static str),
    /// A snapshot operation failed.
    #[error("{op} {volume}: {source}")]
    Snapshot {
        op: &'static str,
        volume: String,
        #[source]
        source: io::Error,
    },
    /// The persistent reservations could not be read or saved where
    /// they are kept.
    #[error("persistent reservations in {what}: {why}")]
    Reservations { what: String, why: String },
    /// The LUN is busy with something that excludes the request.
    #[error("{0}")]
    Busy(String),
    /// A fault injected by a test.
    #[error("injected fault at {0}")]
    Injected(String),
}

impl Error {
    /// Wraps an I/O error from a volume operation.
    pub fn volume_io(op: &'static str, volume: &str, offset: u64, source: io::Error) -> Self {
        Error::VolumeIo {
            op,
            volume: volume.to_string(),
            offset,
            source,
        }
    }

    /// Wraps an I/O error from a metadata operation.
    pub fn meta_io(op: &'static str, what: &str, source: io::Error) -> Self {
        Error::MetaIo {
            op,
            what: what.to_string(),
            source,
        }
    }

    /// The closest errno, for front-ends that report errors as negative errno
    /// (tgtd, tcmu-runner).
    pub fn errno(&self) -> i32 {
        match self {
            Error::VolumeIo { source, .. }
            | Error::MetaIo { source, .. }
            | Error::Snapshot { source, .. } => source.raw_os_error().unwrap_or(5),
            Error::OutOfRange { .. } => 34, // ERANGE
            Error::Unsupported(_) => 95,    // EOPNOTSUPP
            Error::SourceBusy { .. }
            | Error::SourceRetired { .. }
            | Error::TargetBusy(_)
            | Error::Busy(_) => 16, // EBUSY
            Error::NoMigration(_) => 2,     // ENOENT
            Error::BadRegionSize(_) | Error::BadSpec { .. } | Error::TargetTooSmall { .. } => 22, // EINVAL
            _ => 5, // EIO
        }
    }
}
