//! Local files: `file:/abs/path`, or a plain path (relative ones are
//! resolved against the working directory when parsed). The canonical spec
//! is `file:` and the absolute path without `.` or `..`.
//!
//! A file volume opened for serving holds an exclusive `flock` (see
//! `ferry_file`), which is also its fence: the kernel drops it when the
//! holder dies. Its metadata lives beside it (`FileMetaStore`), and its
//! snapshots are reflink or sparse copies beside it (`ferry_file::snapshot`).
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_core::migrate::Opened;
use ferry_core::{Error, MetaStore, Result, Volume};
use ferry_file::snapshot as files;
use ferry_file::{Access, FileMetaStore, FileVolume};

use super::{Backend, BackendSpec, SpecText};
use crate::lun::Lun;
use crate::snapshot::{SnapshotInfo, SnapshotOp};

/// The file backend.
pub(crate) struct File;

impl Backend for File {
    fn scheme(&self) -> &'static str {
        "file"
    }

    fn parse(&self, text: &SpecText<'_>) -> Result<Arc<dyn BackendSpec>> {
        let path = text.rest();
        if path.is_empty() {
            return Err(text.bad("file: needs a path"));
        }
        let path = Path::new(path);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| text.bad(format!("cannot resolve a relative path: {e}")))?
                .join(path)
        };
        let path = normalize(&abs);
        // The canonical spec (`file:` and this path) is what migration
        // records keep and what is parsed again on reopening; a spec is
        // trimmed before it is read, so a path ending in white space (left
        // last by `..` or `.`, as in `/srv/vol /.`) would come back as
        // another file.
        if path.to_str().is_some_and(|p| p.trim_end().len() != p.len()) {
            return Err(text.bad("the path ends with white space, which a spec cannot name"));
        }
        Ok(Arc::new(FileSpec(path)))
    }
}

/// Removes `.` and `..` components without touching the file system (the
/// file may not exist yet).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A file volume's absolute, normalized path.
struct FileSpec(PathBuf);

impl fmt::Display for FileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file:{}", self.0.display())
    }
}

impl BackendSpec for FileSpec {
    fn backend(&self) -> &'static dyn Backend {
        &File
    }

    fn open(&self, access: Access) -> Result<Opened> {
        let vol: Arc<dyn Volume> = Arc::new(FileVolume::open(&self.0, access)?);
        Ok((vol, self.store()?))
    }

    fn store(&self) -> Result<Arc<dyn MetaStore>> {
        Ok(Arc::new(FileMetaStore::new(&self.0)))
    }

    fn exists(&self) -> Result<bool> {
        Ok(self.0.exists())
    }

    /// A file has no layout to copy: `like` is not used.
    fn create(&self, size: u64, _like: Option<&dyn Volume>) -> Result<Opened> {
        let vol: Arc<dyn Volume> = Arc::new(FileVolume::create(&self.0, size)?);
        Ok((vol, self.store()?))
    }

    /// The device and inode of the file, and the host it is on.
    fn identity(&self, _vol: &dyn Volume) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if let Ok(meta) = std::fs::metadata(&self.0) {
            use std::os::unix::fs::MetadataExt;
            m.insert("device".to_string(), meta.dev().to_string());
            m.insert("inode".to_string(), meta.ino().to_string());
        }
        if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
            m.insert("host".to_string(), host.trim().to_string());
        }
        m
    }

    fn snapshot(&self, lun: &Lun, op: &SnapshotOp, name: &str) -> Result<Vec<SnapshotInfo>> {
        snapshot(lun, &self.0, op, name)
    }

    fn file_path(&self) -> Option<&Path> {
        Some(&self.0)
    }
}

/// The engine's error for a snapshot step `op` on the volume at `path`
/// that failed with `source` (a `FileError` or a refused step).
fn io<'a, E: Into<std::io::Error>>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(E) -> Error + 'a {
    move |source| Error::Snapshot {
        op,
        volume: path.display().to_string(),
        source: source.into(),
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

/// Snapshots of the file at `path`, which `lun` serves; see
/// [`crate::snapshot`].
fn snapshot(lun: &Lun, path: &Path, op: &SnapshotOp, name: &str) -> Result<Vec<SnapshotInfo>> {
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
            let snap = lun.quiesced(|vol| {
                // ORDERING: flushed before it is copied.
                ferry_file::steps::before(ferry_core::faults::SNAPSHOT_FLUSH_VOLUME, path)
                    .map_err(io("flushing", path))?;
                vol.flush()?;
                let (s, kind) = files::create(path, name).map_err(io("snapshotting", path))?;
                log::info!("{}: snapshot {name} taken ({kind:?})", lun.spec());
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
            let snap = lun.quiesced(|vol| {
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
                    log::error!("{}: restore fenced: {e}", lun.spec());
                    let fenced = Arc::new(Fenced {
                        name: restored.name().to_string(),
                        size: restored.size(),
                        why: e.to_string(),
                    });
                    return Ok((Err(Error::from(e)), Some(fenced as Arc<dyn Volume>)));
                }
                let restored: Arc<dyn Volume> = Arc::new(restored);
                log::info!(
                    "{}: restored snapshot {name} (previous state kept as {safety})",
                    lun.spec()
                );
                Ok((Ok(s), Some(restored)))
            })??;
            Ok(vec![info(snap)])
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
