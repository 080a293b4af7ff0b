//! Point-in-time copies of a file volume, kept beside it as
//! `<path>.snap-<name>`.
//!
//! A copy is a reflink (`FICLONE`: instant, blocks shared until written)
//! where the filesystem can (XFS, Btrfs), else a sparse copy of the
//! allocated ranges (SEEK_DATA/SEEK_HOLE), so a snapshot costs what the
//! volume holds. The caller quiesces the volume first (no write in flight,
//! data flushed): the copy is taken of the file as it is on disk.
//!
//! Restoring writes the snapshot to a temporary file beside the volume,
//! syncs it, and renames it over the volume (then syncs the directory), so
//! a crash leaves either the old contents or the restored ones; the caller
//! then reopens the path and switches its I/O to the new file.
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use ferry_core::faults;
use rustix::fs::SeekFrom;

use crate::{steps, FileError};

type Result<T> = std::result::Result<T, FileError>;

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Reflink,
    SparseCopy,
}

/// A snapshot of a file volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSnapshot {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// Bytes of data it holds (allocated), for sparse copies.
    pub allocated: u64,
    /// Seconds since the epoch.
    pub created: u64,
}

const INFIX: &str = ".snap-";

/// Snapshot names become file names: a letter or digit, then letters,
/// digits, '-', '_' or '.', at most 64.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(FileError::SnapshotName {
            name: name.to_string(),
        })
    }
}

pub fn snapshot_path(volume: &Path, name: &str) -> PathBuf {
    let mut p = volume.as_os_str().to_owned();
    p.push(INFIX);
    p.push(name);
    PathBuf::from(p)
}

fn sync_dir(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FileError::snapshot("sync the directory", dir))
}

/// Copies `src` to a new file `dst` (which must not exist): a reflink if
/// the filesystem shares blocks, else the allocated ranges only. The copy
/// is written under a temporary name (`<dst>~partial`, which is no
/// snapshot's: `~` is not allowed in names), synced, and only then linked
/// as `dst` (refused if `dst` appeared meanwhile), and the directory
/// synced: a crash at any point leaves no `dst` or a whole, durable one,
/// never a partial copy that [`list`] shows and a restore would accept.
pub fn copy_volume(src: &Path, dst: &Path) -> Result<CopyKind> {
    let tmp = partial_path(dst);
    remove_stale(&tmp)?;
    let kind = copy_into(src, &tmp)?;
    // ORDERING: the copy is synced (copy_into) before it gets its name,
    // and the name is synced before this returns.
    let published =
        steps::before(faults::SNAPSHOT_PUBLISH, dst).and_then(|()| fs::hard_link(&tmp, dst));
    if let Err(e) = published {
        discard(&tmp);
        return Err(FileError::snapshot("publish the copy as", dst)(e));
    }
    steps::before(faults::SNAPSHOT_REMOVE_TEMP, &tmp)
        .and_then(|()| fs::remove_file(&tmp))
        .map_err(FileError::snapshot("remove the temporary copy", &tmp))?;
    steps::before(faults::SNAPSHOT_SYNC_DIR, dst)
        .map_err(FileError::snapshot("sync the directory of", dst))?;
    sync_dir(dst)?;
    Ok(kind)
}

/// `<path>~partial`: where a copy is written before it is published.
fn partial_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("~partial");
    PathBuf::from(p)
}

/// Removes what a crashed copy left at `tmp`, if anything.
fn remove_stale(tmp: &Path) -> Result<()> {
    let removed = steps::before(faults::SNAPSHOT_REMOVE_STALE, tmp).and_then(|()| {
        match fs::remove_file(tmp) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    });
    removed.map_err(FileError::snapshot("remove the stale copy", tmp))
}

/// Removes a copy abandoned after a failure (unless the process is
/// meant to be dead: a crash test refuses the step).
fn discard(tmp: &Path) {
    if steps::before(faults::SNAPSHOT_DISCARD_COPY, tmp).is_ok() {
        let _ = fs::remove_file(tmp);
    }
}

/// Copies `src` to a new file `dst`, synced; its name is not (the caller
/// publishes it). Removes `dst` on failure.
fn copy_into(src: &Path, dst: &Path) -> Result<CopyKind> {
    steps::before(faults::SNAPSHOT_COPY_DATA, dst).map_err(FileError::snapshot("copy to", dst))?;
    let from = File::open(src).map_err(FileError::snapshot("open", src))?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(FileError::snapshot("create", dst))?;
    let result = (|| -> io::Result<CopyKind> {
        let kind = match rustix::fs::ioctl_ficlone(&to, &from) {
            Ok(()) => CopyKind::Reflink,
            Err(_) => {
                let len = from.metadata()?.len();
                to.set_len(len)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut off = 0u64;
                while off < len {
                    let data = match rustix::fs::seek(&from, SeekFrom::Data(off)) {
                        Ok(d) => d,
                        Err(rustix::io::Errno::NXIO) => break, // only a hole is left
                        Err(e) => return Err(e.into()),
                    };
                    let hole = rustix::fs::seek(&from, SeekFrom::Hole(data))
                        .map_err(io::Error::from)?
                        .min(len);
                    let mut at = data;
                    while at < hole {
                        let n = ((hole - at) as usize).min(buf.len()); // < 1 MiB
                        steps::before(faults::SNAPSHOT_COPY_DATA, dst)?;
                        from.read_exact_at(&mut buf[..n], at)?;
                        to.write_all_at(&buf[..n], at)?;
                        at += n as u64;
                    }
                    off = hole;
                }
                CopyKind::SparseCopy
            }
        };
        steps::before(faults::SNAPSHOT_SYNC_COPY, dst)?;
        to.sync_all()?;
        Ok(kind)
    })();
    if result.is_err() {
        discard(dst);
    }
    result.map_err(FileError::snapshot("copy to", dst))
}

fn allocated(f: &File, len: u64) -> u64 {
    let mut total = 0;
    let mut off = 0u64;
    while off < len {
        let Ok(data) = rustix::fs::seek(f, SeekFrom::Data(off)) else {
            break;
        };
        let hole = rustix::fs::seek(f, SeekFrom::Hole(data)).map_or(len, |h| h.min(len));
        total += hole.saturating_sub(data);
        off = hole.max(data + 1);
    }
    total
}

/// Takes a snapshot of the (quiesced) volume at `volume`.
pub fn create(volume: &Path, name: &str) -> Result<(FileSnapshot, CopyKind)> {
    check_name(name)?;
    let dst = snapshot_path(volume, name);
    if dst.exists() {
        return Err(FileError::SnapshotExists {
            name: name.to_string(),
            volume: volume.to_path_buf(),
        });
    }
    let kind = copy_volume(volume, &dst)?;
    let snap = info(volume, name)?;
    Ok((snap, kind))
}

fn info(volume: &Path, name: &str) -> Result<FileSnapshot> {
    let path = snapshot_path(volume, name);
    let f = File::open(&path).map_err(FileError::snapshot("open", &path))?;
    let md = f.metadata().map_err(FileError::snapshot("stat", &path))?;
    Ok(FileSnapshot {
        name: name.to_string(),
        size: md.len(),
        allocated: allocated(&f, md.len()),
        created: md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs()),
        path,
    })
}

/// The volume's snapshots, oldest first.
pub fn list(volume: &Path) -> Result<Vec<FileSnapshot>> {
    let dir = volume
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(base) = volume.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{base}{INFIX}");
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(FileError::snapshot("list", dir))?;
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(name) = n.strip_prefix(&prefix) {
            if check_name(name).is_ok() {
                out.push(info(volume, name)?);
            }
        }
    }
    out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
    Ok(out)
}

pub fn delete(volume: &Path, name: &str) -> Result<()> {
    check_name(name)?;
    let p = snapshot_path(volume, name);
    fs::remove_file(&p).map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            FileError::NoSnapshot {
                name: name.to_string(),
                volume: volume.to_path_buf(),
            }
        } else {
            FileError::snapshot("remove", &p)(e)
        }
    })?;
    sync_dir(&p)
}

/// The first half of a restore: copies snapshot `name` of `volume` to a
/// temporary file beside it (`<path>.restoring`, synced) and returns its
/// path. The caller
/// opens it (taking its lock) and renames it over the volume
/// (`FileVolume::rename_to`), so the volume's path is never unlocked.
pub fn prepare_restore(volume: &Path, name: &str) -> Result<PathBuf> {
    check_name(name)?;
    let snap = snapshot_path(volume, name);
    if !snap.exists() {
        return Err(FileError::NoSnapshot {
            name: name.to_string(),
            volume: volume.to_path_buf(),
        });
    }
    let mut tmp = volume.as_os_str().to_owned();
    tmp.push(".restoring");
    let tmp = PathBuf::from(tmp);
    remove_stale(&tmp)?;
    // Synced here; its name becomes durable with the rename over the
    // volume and the directory sync after it (`FileVolume::rename_to`).
    copy_into(&snap, &tmp)?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_restore_delete() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path().join("vol");
        let f = File::create(&v).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"before", 4 << 20).unwrap();
        let (s, _) = create(&v, "s1").unwrap();
        assert_eq!(s.size, 8 << 20);
        assert!(s.allocated < 8 << 20, "the copy stays sparse");
        f.write_all_at(b"after!", 4 << 20).unwrap();
        assert!(create(&v, "s1").is_err(), "names are unique");
        assert_eq!(list(&v).unwrap().len(), 1);
        let tmp = prepare_restore(&v, "s1").unwrap();
        fs::rename(tmp, &v).unwrap();
        let mut got = [0u8; 6];
        File::open(&v)
            .unwrap()
            .read_exact_at(&mut got, 4 << 20)
            .unwrap();
        assert_eq!(&got, b"before");
        delete(&v, "s1").unwrap();
        assert!(list(&v).unwrap().is_empty());
        assert!(delete(&v, "s1").is_err());
        assert!(create(&v, "../x").is_err());
    }
}
