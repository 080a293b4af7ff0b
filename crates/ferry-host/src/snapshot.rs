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
    pub fn snapshot(&self, op: &SnapshotOp, name: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        let target = self.snapshot_target(match op {
            SnapshotOp::Restore => "restore a snapshot",
            _ => "take or change snapshots",
        })?;
        // Every operation but a listing names a snapshot, checked once here
        // for every kind of volume (names become file and snapshot names).
        let name = match op {
            SnapshotOp::List => "",
            _ => {
                let n = name.ok_or_else(|| Error::BadSpec {
                    spec: self.spec().to_string(),
                    why: "a snapshot name is required".into(),
                })?;
                files::check_name(n).map_err(|why| Error::BadSpec {
                    spec: n.to_string(),
                    why,
                })?;
                n
            }
        };
        // Without the `rbd` feature, files are the only kind of volume.
        #[allow(clippy::infallible_destructuring_match)]
        let path = match &target {
            VolumeSpec::File(path) => path,
            #[cfg(feature = "rbd")]
            VolumeSpec::Rbd(rbd) => return self.rbd_snapshot(op, name, rbd),
        };
        match op {
            SnapshotOp::List => {
                let all = files::list(path).map_err(io("listing snapshots of", path))?;
                Ok(all.into_iter().map(info).collect())
            }
            SnapshotOp::Delete => {
                files::delete(path, name).map_err(io("deleting a snapshot of", path))?;
                Ok(Vec::new())
            }
            SnapshotOp::Create => {
                let snap = self.quiesced(|vol| {
                    // ORDERING: flushed before it is copied.
                    ferry_file::steps::before(ferry_core::faults::SNAPSHOT_FLUSH_VOLUME, path)
                        .map_err(io("flushing", path))?;
                    vol.flush()?;
                    let (s, kind) = files::create(path, name).map_err(io("snapshotting", path))?;
                    log::info!("{}: snapshot {name} taken ({kind:?})", self.spec());
                    Ok((s, None))
                })?;
                Ok(vec![info(snap)])
            }
            SnapshotOp::Restore => {
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
                    // ORDERING: the volume is flushed before it is copied
                    // as the `before-restore` snapshot.
                    ferry_file::steps::before(ferry_core::faults::SNAPSHOT_FLUSH_VOLUME, path)
                        .map_err(io("flushing", path))?;
                    vol.flush()?;
                    let (s, _) = files::create(path, &safety).map_err(io("snapshotting", path))?;
                    let tmp = files::prepare_restore(path, name)
                        .map_err(io("restoring a snapshot of", path))?;
                    // Lock the restored copy, then move it over the volume:
                    // the lock moves with it, and nothing that can fail
                    // comes after the rename (a failure before it leaves
                    // the volume as it was, still served). The old
                    // descriptor belongs to the replaced file from then on.
                    let opened = FileVolume::open(&tmp, Access::Exclusive).inspect_err(|_| {
                        let _ = std::fs::remove_file(&tmp);
                    })?;
                    let restored = opened.rename_to(path)?;
                    // ORDERING: the restore is acknowledged only once the
                    // rename is durable. Past the rename the restored file
                    // is the volume (the old descriptor is an unlinked
                    // file), so if the directory sync fails the LUN serves
                    // nothing: a write flushed on top of a rename that
                    // power loss may undo would be lost. A restart decides
                    // from what the disk holds.
                    if let Err(e) = restored.sync_dir() {
                        log::error!("{}: restore fenced: {e}", self.spec());
                        let fenced = Arc::new(Fenced {
                            name: restored.name().to_string(),
                            size: restored.size(),
                            why: e.to_string(),
                        });
                        return Ok((Err(e), Some(fenced as Arc<dyn Volume>)));
                    }
                    let restored: Arc<dyn Volume> = Arc::new(restored);
                    log::info!(
                        "{}: restored snapshot {name} (previous state kept as {safety})",
                        self.spec()
                    );
                    Ok((Ok(s), Some(restored)))
                })??;
                Ok(vec![info(snap)])
            }
        }
    }
}

/// What a LUN serves after a restore whose rename may not be durable:
/// every I/O fails until the LUN is reopened.
struct Fenced {
    name: String,
    size: u64,
    why: String,
}

impl Fenced {
    fn refuse<T>(&self) -> Result<T> {
        Err(Error::Fenced(format!(
            "{}: a snapshot restore could not sync its rename: {}",
            self.name, self.why
        )))
    }
}

impl Volume for Fenced {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> Result<()> {
        self.refuse()
    }
    fn write_at(&self, _: &[u8], _: u64) -> Result<()> {
        self.refuse()
    }
    fn flush(&self) -> Result<()> {
        self.refuse()
    }
    fn write_zeroes(&self, _: u64, _: u64) -> Result<()> {
        self.refuse()
    }
    fn discard(&self, _: u64, _: u64) -> Result<()> {
        self.refuse()
    }
    fn allocated(&self, _: u64, _: u64) -> Result<Vec<ferry_core::Extent>> {
        self.refuse()
    }
}

#[cfg(feature = "rbd")]
impl Lun {
    fn rbd_snapshot(
        &self,
        op: &SnapshotOp,
        name: &str,
        spec: &ferry_rbd::RbdSpec,
    ) -> Result<Vec<SnapshotInfo>> {
        use ferry_core::SourceMarker;
        let what = spec.to_string();
        let what = what.as_str();
        let rbd = move |op: &'static str| move |e: ferry_rbd::RbdError| e.into_core(op, what);
        let image_of = |vol: &Arc<dyn Volume>| -> Result<Arc<ferry_rbd::Image>> {
            vol.as_any()
                .and_then(|a| a.downcast_ref::<ferry_rbd::RbdVolume>())
                .map(|v| v.image().clone())
                .ok_or(Error::Unsupported("snapshots of this volume"))
        };
        let list = |image: &ferry_rbd::Image| -> Result<Vec<SnapshotInfo>> {
            Ok(image
                .snap_list()
                .map_err(rbd("listing snapshots of"))?
                .into_iter()
                .map(|s| SnapshotInfo {
                    name: s.name,
                    size: s.size,
                    allocated: s.size,
                    created: 0,
                })
                .collect())
        };
        match op {
            SnapshotOp::List => self.quiesced(|vol| {
                let image = image_of(vol)?;
                Ok((list(&image)?, None))
            }),
            SnapshotOp::Delete => self.quiesced(|vol| {
                image_of(vol)?
                    .snap_remove_protected(name)
                    .map_err(rbd("deleting a snapshot of"))?;
                Ok((Vec::new(), None))
            }),
            SnapshotOp::Create => self.quiesced(|vol| {
                vol.flush()?;
                let image = image_of(vol)?;
                image
                    .snap_create_protected(name)
                    .map_err(rbd("snapshotting"))?;
                log::info!("{}: snapshot {name} taken", self.spec());
                let all = list(&image)?;
                Ok((all.into_iter().filter(|s| s.name == name).collect(), None))
            }),
            SnapshotOp::Restore => {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let safety = format!("before-restore-{ms}");
                let mut clone = spec.clone();
                clone.image = format!("{}-r{ms}", spec.image);
                let clone_spec = VolumeSpec::Rbd(clone.clone());
                let out = self.quiesced(|vol| {
                    let image = image_of(vol)?;
                    if !image.snap_list().map_err(rbd("listing snapshots of"))?.iter().any(|s| s.name == name) {
                        return Err(Error::BadSpec {
                            spec: name.to_string(),
                            why: format!("no snapshot {name} of {}", spec.short()),
                        });
                    }
                    vol.flush()?;
                    image.snap_create_protected(&safety).map_err(rbd("snapshotting"))?;
                    ferry_rbd::clone_image(&image, name, image.ioctx(), &clone.image)
                        .map_err(rbd("cloning"))?;
                    let (new_vol, new_store) = clone_spec.open()?;
                    // From now on the configured name leads to the clone,
                    // and the reservations go with it.
                    let store = self.served().store_of(vol.as_ref())?;
                    self.move_reservations(new_store, || {
                        store.store_source_marker(&SourceMarker {
                            target: clone_spec.to_string(),
                            committed: true,
                        })
                    })?;
                    log::info!(
                        "{}: restored snapshot {name} as clone {} (previous state kept as {safety})",
                        self.spec(),
                        clone.short()
                    );
                    let kept = SnapshotInfo {
                        name: safety.clone(),
                        size: vol.size(),
                        allocated: vol.size(),
                        created: 0,
                    };
                    Ok((vec![kept], Some(new_vol)))
                })?;
                self.set_served(clone_spec);
                Ok(out)
            }
        }
    }
}
