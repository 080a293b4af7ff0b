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
//! RBD images: native snapshots, protected so they can be cloned. A
//! restore is redirect-on-write, as seed 002 describes: snapshot the
//! current state (`before-restore-<time>`), clone the chosen snapshot as
//! a new image (`<image>-r<time>`, instant), and switch the LUN to the
//! clone. The image served before gets a forwarding marker (as a
//! committed migration's source does), so the LUN keeps its configured
//! name across restarts. A snapshot with clones cannot be deleted until
//! they are (librbd reports it busy).
//!
//! Each backend runs its own operations (`crate::backend`); the checks
//! common to all (no migration under way, a valid name) are made here.
//!
//! A LUN being migrated refuses snapshots with an error that says so:
//! the copy would have to span two volumes; take it before starting, or
//! after the commit (or abort).
use ferry_file::snapshot as files;
use serde::{Deserialize, Serialize};

use crate::lun::Lun;
use crate::spec::VolumeSpec;
use crate::HostError;

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

impl Lun {
    fn snapshot_target(&self, what: &'static str) -> Result<VolumeSpec, HostError> {
        if let Some(p) = self.status() {
            if !matches!(
                p.state,
                ferry_core::MigrationState::Committed | ferry_core::MigrationState::Aborted
            ) {
                return Err(HostError::Migrating {
                    what,
                    lun: self.spec().to_string(),
                    state: p.state.to_string(),
                    target: p.target,
                });
            }
        }
        Ok(self.served())
    }

    /// Runs a snapshot operation on the served volume.
    pub fn snapshot(
        &self,
        op: &SnapshotOp,
        name: Option<&str>,
    ) -> Result<Vec<SnapshotInfo>, HostError> {
        let target = self.snapshot_target(match op {
            SnapshotOp::Restore => "restore a snapshot",
            _ => "take or change snapshots",
        })?;
        // Every operation but a listing names a snapshot, checked once here
        // for every kind of volume (names become file and snapshot names).
        let name = match op {
            SnapshotOp::List => "",
            _ => {
                let n = name.ok_or_else(|| HostError::NoSnapshotName {
                    lun: self.spec().to_string(),
                })?;
                files::check_name(n)?;
                n
            }
        };
        Ok(target.backend().snapshot(self, op, name)?)
    }
}
