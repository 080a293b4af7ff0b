//! The file backend's error type: every failure names the operation and
//! the file it was done to (the volume, a sidecar, a snapshot copy).
//!
//! The `Volume` and `MetaStore` impls return the engine's error, so each
//! variant converts into a `ferry_core::Error` (`From`). For the volume
//! and metadata variants the converted error says exactly what this one
//! says, and is the variant the engine and the sense mapping expect
//! (`VolumeIo`, `MetaIo`, `BadSpec`, `Corrupt`).
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

/// Why the exclusive lock was refused (the message admins and tests see).
const LOCKED: &str = "another process has this volume open";

/// Everything that can go wrong with a file volume, its sidecars and its
/// snapshots.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// A volume cannot be created with this size.
    #[error(
        "bad volume spec {:?}: size {size} must be a non-zero multiple of 512 bytes",
        path.display().to_string()
    )]
    BadSize { path: PathBuf, size: u64 },
    /// The path names something that is not a regular file.
    #[error("bad volume spec {:?}: not a regular file", path.display().to_string())]
    NotAFile { path: PathBuf },
    /// Another process holds the volume's exclusive lock: it serves or
    /// migrates the file, and is its only writer.
    #[error("lock on volume {} at offset 0 failed: {LOCKED}", path.display())]
    Locked { path: PathBuf },
    /// Creating, opening, locking, renaming or syncing the volume file
    /// failed.
    #[error("{op} on volume {} at offset 0 failed: {source}", path.display())]
    Volume {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading, replacing or removing a sidecar (record, index, source
    /// marker, reservations), or syncing the directory holding it, failed.
    /// `path` is the file the sidecar describes or is.
    #[error("{op} of migration metadata for {} failed: {source}", path.display())]
    Sidecar {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Syncing the directory holding a volume or a sidecar (which makes a
    /// create, rename or removal in it durable) failed.
    #[error("fsync directory of migration metadata for {} failed: {source}", dir.display())]
    SyncDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A sidecar holds something it never should.
    #[error("migration metadata of {} is corrupt: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    /// A snapshot name that cannot become a file name.
    #[error(
        "invalid snapshot name {name:?}: 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    SnapshotName { name: String },
    /// A snapshot of that name is already there.
    #[error("snapshot {name} of {} already exists", volume.display())]
    SnapshotExists { name: String, volume: PathBuf },
    /// No snapshot of that name.
    #[error("no snapshot {name} of {}", volume.display())]
    NoSnapshot { name: String, volume: PathBuf },
    /// A step of taking, listing, restoring or deleting a snapshot
    /// (copying, publishing, renaming, syncing) failed on `path`.
    #[error("{op} {}: {source}", path.display())]
    Snapshot {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl FileError {
    /// Wraps an I/O error from an operation on the volume file.
    pub(crate) fn volume(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| FileError::Volume { op, path, source }
    }

    /// Wraps an I/O error from an operation on a sidecar.
    pub(crate) fn sidecar(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| FileError::Sidecar { op, path, source }
    }

    /// Wraps an I/O error from a step of a snapshot operation.
    pub(crate) fn snapshot(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| FileError::Snapshot { op, path, source }
    }

    /// The kind of I/O error this is, or is closest to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FileError::BadSize { .. } | FileError::NotAFile { .. } => ErrorKind::InvalidInput,
            FileError::SnapshotName { .. } => ErrorKind::InvalidInput,
            FileError::Locked { .. } => ErrorKind::ResourceBusy,
            FileError::Corrupt { .. } => ErrorKind::InvalidData,
            FileError::SnapshotExists { .. } => ErrorKind::AlreadyExists,
            FileError::NoSnapshot { .. } => ErrorKind::NotFound,
            FileError::Volume { source, .. }
            | FileError::Sidecar { source, .. }
            | FileError::SyncDir { source, .. }
            | FileError::Snapshot { source, .. } => source.kind(),
        }
    }
}

/// An I/O error of the same kind that says what this error says.
impl From<FileError> for io::Error {
    fn from(e: FileError) -> Self {
        io::Error::new(e.kind(), e)
    }
}

impl From<FileError> for ferry_core::Error {
    fn from(e: FileError) -> Self {
        use ferry_core::Error;
        let shown = |p: &Path| p.display().to_string();
        match e {
            FileError::BadSize { path, size } => Error::BadSpec {
                spec: shown(&path),
                why: format!("size {size} must be a non-zero multiple of 512 bytes"),
            },
            FileError::NotAFile { path } => Error::BadSpec {
                spec: shown(&path),
                why: "not a regular file".into(),
            },
            FileError::Locked { path } => Error::volume_io(
                "lock",
                &shown(&path),
                0,
                io::Error::new(ErrorKind::ResourceBusy, LOCKED),
            ),
            FileError::Volume { op, path, source } => {
                Error::volume_io(op, &shown(&path), 0, source)
            }
            FileError::Sidecar { op, path, source } => Error::meta_io(op, &shown(&path), source),
            FileError::SyncDir { dir, source } => {
                Error::meta_io("fsync directory", &shown(&dir), source)
            }
            FileError::Corrupt { path, why } => Error::Corrupt {
                what: shown(&path),
                why,
            },
            FileError::SnapshotName { ref name } => Error::BadSpec {
                spec: name.clone(),
                why: e.to_string(),
            },
            FileError::Snapshot { op, path, source } => Error::Snapshot {
                op,
                volume: shown(&path),
                source,
            },
            FileError::SnapshotExists { ref volume, .. }
            | FileError::NoSnapshot { ref volume, .. } => Error::Snapshot {
                op: "snapshot",
                volume: shown(volume),
                source: e.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's error for a volume or metadata failure says what the
    /// file backend's said: messages admins and tests read do not change.
    #[test]
    fn converted_volume_and_metadata_errors_keep_their_message() {
        let p = || PathBuf::from("/srv/v");
        let cases = [
            FileError::BadSize {
                path: p(),
                size: 1000,
            },
            FileError::NotAFile { path: p() },
            FileError::Locked { path: p() },
            FileError::Volume {
                op: "open",
                path: p(),
                source: ErrorKind::NotFound.into(),
            },
            FileError::Sidecar {
                op: "fsync",
                path: p(),
                source: io::Error::other("disk gone"),
            },
            FileError::SyncDir {
                dir: p(),
                source: io::Error::other("disk gone"),
            },
            FileError::Corrupt {
                path: p(),
                why: "bad marker".into(),
            },
            FileError::Snapshot {
                op: "publish",
                path: p(),
                source: io::Error::other("no space"),
            },
        ];
        for e in cases {
            let said = e.to_string();
            let core = ferry_core::Error::from(e);
            assert_eq!(core.to_string(), said);
        }
    }

    #[test]
    fn refused_lock_becomes_a_busy_volume_io_error() {
        let core = ferry_core::Error::from(FileError::Locked {
            path: PathBuf::from("/v"),
        });
        match core {
            ferry_core::Error::VolumeIo { op, source, .. } => {
                assert_eq!(op, "lock");
                assert_eq!(source.kind(), ErrorKind::ResourceBusy);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_size_becomes_bad_spec() {
        let core = ferry_core::Error::from(FileError::BadSize {
            path: PathBuf::from("/v"),
            size: 7,
        });
        assert!(
            matches!(&core, ferry_core::Error::BadSpec { spec, why }
                if spec == "/v" && why == "size 7 must be a non-zero multiple of 512 bytes"),
            "{core:?}"
        );
    }
}
