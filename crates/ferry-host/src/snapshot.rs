//! Snapshots of a served LUN (seed 002), taken and restored while it is
//! served: I/O is quiesced (the LUN's volume lock is taken for writing, so
//! every command in flight finishes first and new ones wait), the volume
//! flushed, the snapshot taken or restored, and I/O resumed, on the
//! restored volume when it was a restore. Initiators stay logged in and
//! see only a pause.
//!
//! File volumes: reflink or sparse copies beside the file
//! (`ferry_file::snapshot`). A restore first snapshots the current state
//! as `before-restore-<time>`, so it can itself be undone.
//!
//! A LUN being migrated refuses snapshots with an error that says so:
//! the copy would have to span two volumes; take it before starting, or
//! after the commit (or abort).
use std::path::Path;
use std::sync::Arc;

use ferry_core::{Error, Result, Volume};
use ferry_file::snapshot as files;
use ferry_file::{Access, FileVolume};
use serde::{Deserialize, Serialize};

use crate::lun::Lun;
use crate::spec::VolumeSpec;

/// A snapshot as the control socket and the CLI report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub size: u64,
    /// Bytes of data the snapshot holds.
    pub allocated: u64,
    /// Seconds since the epoch.
    pub created: u64,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotOp {
    Create,
    List,
    Delete,
    Restore,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Snapshot {
        op,
        volume: path.display().to_string(),
        source,
    }
}

fn info(s: files::FileSnapshot) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name,
        size: s.size,
        allocated: s.allocated,
        created: s.created,
    }
}

impl Lun {
    fn snapshot_target(&self, what: &str) -> Result<VolumeSpec> {
        if let Some(p) = self.status() {
            if !matches!(
                p.state,
                ferry_core::MigrationState::Committed | ferry_core::MigrationState::Aborted
            ) {
                return Err(Error::Busy(format!(
                    "cannot {what} of {} while it is being migrated ({} to {}); commit or abort the migration first",
                    self.spec(),
                    p.state,
                    p.target
                )));
            }
        }
        Ok(self.served())
    }

    /// Runs a snapshot operation on the served volume.
    // Without the `rbd` feature, files are the only kind of volume.
    #[allow(irrefutable_let_patterns)]
    pub fn snapshot(&self, op: &SnapshotOp, name: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        let need_name = || {
            name.ok_or_else(|| Error::BadSpec {
                spec: self.spec().to_string(),
                why: "a snapshot name is required".into(),
            })
        };
        let target = self.snapshot_target(match op {
            SnapshotOp::Restore => "restore a snapshot",
            _ => "take or change snapshots",
        })?;
        let VolumeSpec::File(path) = &target else {
            return Err(Error::Unsupported("snapshots of this kind of volume"));
        };
        let bad_name = |e: String| Error::BadSpec {
            spec: name.unwrap_or_default().to_string(),
            why: e,
        };
        match op {
            SnapshotOp::List => {
                let all = files::list(path).map_err(io("listing snapshots of", path))?;
                Ok(all.into_iter().map(info).collect())
            }
            SnapshotOp::Delete => {
                let name = need_name()?;
                files::check_name(name).map_err(bad_name)?;
                files::delete(path, name).map_err(io("deleting a snapshot of", path))?;
                Ok(Vec::new())
            }
            SnapshotOp::Create => {
                let name = need_name()?;
                files::check_name(name).map_err(bad_name)?;
                let snap = self.quiesced(|vol| {
                    vol.flush()?;
                    let (s, kind) = files::create(path, name).map_err(io("snapshotting", path))?;
                    log::info!("{}: snapshot {name} taken ({kind:?})", self.spec());
                    Ok((s, None))
                })?;
                Ok(vec![info(snap)])
            }
            SnapshotOp::Restore => {
                let name = need_name()?;
                files::check_name(name).map_err(bad_name)?;
                let safety = format!(
                    "before-restore-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis())
                );
                let snap = self.quiesced(|vol| {
                    if !files::snapshot_path(path, name).exists() {
                        return Err(Error::BadSpec {
                            spec: name.to_string(),
                            why: format!("no snapshot {name} of {}", path.display()),
                        });
                    }
                    vol.flush()?;
                    let (s, _) = files::create(path, &safety).map_err(io("snapshotting", path))?;
                    files::restore(path, name).map_err(io("restoring a snapshot of", path))?;
                    // The old descriptor (and its lock) belong to the
                    // replaced file; serve the restored one from now on.
                    let restored: Arc<dyn Volume> =
                        Arc::new(FileVolume::open(path, Access::Exclusive)?);
                    log::info!(
                        "{}: restored snapshot {name} (previous state kept as {safety})",
                        self.spec()
                    );
                    Ok((s, Some(restored)))
                })?;
                Ok(vec![info(snap)])
            }
        }
    }
}
