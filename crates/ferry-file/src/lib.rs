//! ferry's embedded default backend: a volume is a sparse local file.
//!
//! Holes are found with `SEEK_DATA`/`SEEK_HOLE`, zeroing punches holes, and
//! flush is `fdatasync`. A volume opened for writing holds an exclusive
//! `flock`, so two processes never serve (or migrate) one file at once; the
//! kernel drops the lock when the holder dies, even by SIGKILL.
//!
//! Migration metadata lives beside the file it describes:
//! `<path>.ferry-migration` (the record), `<path>.ferry-index` (the region
//! index) and, on a source, `<path>.ferry-source-of` (the marker). Records
//! and markers are replaced atomically (temp file, fsync, rename, fsync of
//! the directory).
//!
//! The crate's own operations (create, open, lock, rename, snapshots,
//! sidecar files) fail with a [`FileError`] naming the operation and the
//! path; the [`Volume`] and [`MetaStore`] impls return the engine's error,
//! which every `FileError` converts into with the same message.
#![forbid(unsafe_code)]

mod error;
pub mod snapshot;
pub mod steps;

pub use error::FileError;

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ferry_core::volume::check_range;
use ferry_core::{Error, Extent, MetaStore, Result, SourceMarker, Volume};
use parking_lot::Mutex;
use rustix::fs::{FallocateFlags, SeekFrom};

/// How a file volume is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write, holding the exclusive lock.
    Exclusive,
    /// Read only, no lock (inspection tools).
    ReadOnly,
}

/// A volume backed by a local file.
pub struct FileVolume {
    name: String,
    path: PathBuf,
    file: File,
    /// Changes only in [`Volume::resize`], which callers run with I/O held off.
    size: std::sync::atomic::AtomicU64,
    punch_holes: std::sync::atomic::AtomicBool,
    /// Set once an fsync of the file failed: the kernel may have dropped
    /// the dirty pages, and a later fsync would succeed without them, so
    /// every flush fails from then on (reopen the volume).
    sync_failed: std::sync::atomic::AtomicBool,
}

impl FileVolume {
    /// Refuses once an fsync failed (see `sync_failed`).
    fn check_synced(&self) -> Result<()> {
        if self.sync_failed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::Fenced(format!(
                "{}: an earlier fsync failed; reopen the volume",
                self.name
            )));
        }
        Ok(())
    }

    /// Creates a new sparse file of `size` bytes; refuses to overwrite.
    pub fn create(path: &Path, size: u64) -> Result<Self, FileError> {
        if size == 0 || !size.is_multiple_of(512) {
            return Err(FileError::BadSize {
                path: path.to_path_buf(),
                size,
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(FileError::volume("create", path))?;
        file.set_len(size)
            .map_err(FileError::volume("set size of", path))?;
        file.sync_all().map_err(FileError::volume("sync", path))?;
        sync_dir(path)?;
        drop(file);
        Self::open(path, Access::Exclusive)
    }

    /// Opens an existing file volume.
    pub fn open(path: &Path, access: Access) -> Result<Self, FileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::Exclusive)
            .open(path)
            .map_err(FileError::volume("open", path))?;
        let meta = file.metadata().map_err(FileError::volume("stat", path))?;
        if !meta.is_file() {
            return Err(FileError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        if access == Access::Exclusive {
            // ORDERING: a process that died after renaming a file over
            // this one (a snapshot restore) or over its reservations slot,
            // before syncing the directory, left a rename only the page
            // cache holds. Sync it before anything is served on top of it:
            // a write flushed after this reopen must not come back, after
            // power loss, under the name of the replaced file.
            steps::before(ferry_core::faults::VOLUME_OPEN_SYNC_DIR, path)
                .map_err(FileError::volume("sync the directory of", path))?;
            sync_dir(path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(FileError::Locked {
                        path: path.to_path_buf(),
                    })
                }
                Err(fs::TryLockError::Error(e)) => return Err(FileError::volume("lock", path)(e)),
            }
        }
        Ok(FileVolume {
            name: path.display().to_string(),
            path: path.to_path_buf(),
            file,
            size: std::sync::atomic::AtomicU64::new(meta.len()),
            punch_holes: std::sync::atomic::AtomicBool::new(true),
            sync_failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Moves the (open, locked) file to `to`, replacing what is there:
    /// the lock moves with the file, so nothing can open `to` in between.
    /// The rename is durable only after [`FileVolume::sync_dir`].
    pub fn rename_to(mut self, to: &Path) -> Result<Self, FileError> {
        steps::before(ferry_core::faults::RESTORE_RENAME, to)
            .map_err(FileError::volume("rename", &self.path))?;
        fs::rename(&self.path, to).map_err(FileError::volume("rename", &self.path))?;
        self.name = to.display().to_string();
        self.path = to.to_path_buf();
        Ok(self)
    }

    /// fsyncs the directory holding the file: a rename to it
    /// ([`FileVolume::rename_to`]) is durable once this returns.
    pub fn sync_dir(&self) -> Result<(), FileError> {
        steps::before(ferry_core::faults::RESTORE_SYNC_DIR, &self.path)
            .map_err(FileError::volume("sync the directory of", &self.path))?;
        sync_dir(&self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn seek(&self, whence: SeekFrom) -> io::Result<Option<u64>> {
        match rustix::fs::seek(&self.file, whence) {
            Ok(off) => Ok(Some(off)),
            // ENXIO: no data (or hole) at or after the offset.
            Err(rustix::io::Errno::NXIO) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Volume for FileVolume {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::volume_io("read", &self.name, offset, e))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::volume_io("write", &self.name, offset, e))
    }

    fn flush(&self) -> Result<()> {
        self.check_synced()?;
        self.file.sync_data().map_err(|e| {
            self.sync_failed
                .store(true, std::sync::atomic::Ordering::Release);
            Error::volume_io("fdatasync", &self.name, 0, e)
        })
    }

    /// ftruncate, then fsync: the length is one metadata update, so a
    /// crash leaves the old length or the new one.
    fn resize(&self, size: u64) -> Result<()> {
        if size == 0 || !size.is_multiple_of(512) {
            return Err(Error::CannotResize {
                volume: self.name.clone(),
                why: format!("{size} bytes is not a positive multiple of 512"),
            });
        }
        self.check_synced()?;
        steps::before(ferry_core::faults::VOLUME_RESIZE, &self.path)
            .and_then(|()| self.file.set_len(size))
            .map_err(|e| Error::CannotResize {
                volume: self.name.clone(),
                why: format!("setting the file's length to {size} bytes: {e}"),
            })?;
        // The fsync also writes back data written before: if it fails,
        // so does every later flush (see `sync_failed`).
        self.file.sync_all().map_err(|e| {
            self.sync_failed
                .store(true, std::sync::atomic::Ordering::Release);
            Error::CannotResize {
                volume: self.name.clone(),
                why: format!("syncing the file at {size} bytes: {e}"),
            }
        })?;
        self.size.store(size, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(self.size(), offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.punch_holes.load(std::sync::atomic::Ordering::Relaxed) {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            match rustix::fs::fallocate(&self.file, flags, offset, len) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP) => {
                    log::info!("{}: hole punching unsupported, writing zeroes", self.name);
                    self.punch_holes
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    return Err(Error::volume_io(
                        "punch hole in",
                        &self.name,
                        offset,
                        e.into(),
                    ))
                }
            }
        }
        let zeroes = vec![0u8; len.min(1 << 20) as usize]; // ≤ 1 MiB
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64);
            self.write_at(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    fn allocated(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(self.size(), offset, len)?;
        let end = offset + len;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let Some(data) = self
                .seek(SeekFrom::Data(pos))
                .map_err(|e| Error::volume_io("seek data in", &self.name, pos, e))?
            else {
                break;
            };
            if data >= end {
                break;
            }
            let hole = self
                .seek(SeekFrom::Hole(data))
                .map_err(|e| Error::volume_io("seek hole in", &self.name, data, e))?
                .unwrap_or(self.size())
                .min(end);
            out.push(Extent {
                offset: data,
                len: hole - data,
            });
            pos = hole;
        }
        Ok(out)
    }
}

/// fsyncs the directory holding `path`, so a create/rename in it is durable.
fn sync_dir(path: &Path) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| FileError::SyncDir {
            dir: dir.to_path_buf(),
            source,
        })
}

/// The named steps of a replacement (`ferry_core::faults`), announced to
/// [`steps`] before each is done.
struct ReplaceSteps {
    write: &'static str,
    sync: &'static str,
    rename: &'static str,
    sync_dir: &'static str,
}

/// A reservations save: a PR OUT is acknowledged once it returns.
const RESERVATION_STEPS: ReplaceSteps = ReplaceSteps {
    write: ferry_core::faults::PR_WRITE_TEMP,
    sync: ferry_core::faults::PR_SYNC_TEMP,
    rename: ferry_core::faults::PR_RENAME,
    sync_dir: ferry_core::faults::PR_SYNC_DIR,
};

/// Writes `bytes` to `path` atomically and durably.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    replace_file_in_steps(path, bytes, None)
}

/// [`replace_file`], announcing each step as `named` says.
// ORDERING: the temporary file is synced before the rename, and the
// directory after it: a crash at any step leaves the old contents or
// the new ones, and the new ones are durable when this returns.
fn replace_file_in_steps(
    path: &Path,
    bytes: &[u8],
    named: Option<&ReplaceSteps>,
) -> Result<(), FileError> {
    let tmp = sidecar(path, ".tmp");
    let announce = |point: Option<&'static str>, at: &Path, op: &'static str| match point {
        Some(p) => steps::before(p, at).map_err(FileError::sidecar(op, path)),
        None => Ok(()),
    };
    announce(named.map(|n| n.write), &tmp, "create")?;
    let mut f = File::create(&tmp).map_err(FileError::sidecar("create", path))?;
    f.write_all(bytes)
        .map_err(FileError::sidecar("write", path))?;
    announce(named.map(|n| n.sync), &tmp, "fsync")?;
    f.sync_all().map_err(FileError::sidecar("fsync", path))?;
    announce(named.map(|n| n.rename), path, "rename")?;
    fs::rename(&tmp, path).map_err(FileError::sidecar("rename", path))?;
    announce(named.map(|n| n.sync_dir), path, "fsync directory")?;
    sync_dir(path)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FileError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::sidecar("read", path)(e)),
    }
}

fn remove_optional(path: &Path) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FileError::sidecar("remove", path)(e)),
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), as 16 bytes. If it
/// cannot be read, all-ones: every reopen then looks like the same boot,
/// which keeps kill -9 safety and is logged, since power-loss detection is
/// lost.
fn boot_id() -> [u8; 16] {
    static ID: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let text = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let hex: String = text.chars().filter(char::is_ascii_hexdigit).collect();
        let mut id = [0xffu8; 16];
        if hex.len() == 32 {
            for (i, b) in id.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0xff);
            }
        } else {
            log::warn!("no boot id; power loss cannot be told from a process crash");
        }
        id
    })
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Migration metadata kept in files beside a volume file.
pub struct FileMetaStore {
    volume: PathBuf,
    index_file: Mutex<Option<File>>,
}

impl FileMetaStore {
    pub fn new(volume: &Path) -> Self {
        FileMetaStore {
            volume: volume.to_path_buf(),
            index_file: Mutex::new(None),
        }
    }

    pub fn record_path(&self) -> PathBuf {
        sidecar(&self.volume, ".ferry-migration")
    }

    pub fn index_path(&self) -> PathBuf {
        sidecar(&self.volume, ".ferry-index")
    }

    pub fn marker_path(&self) -> PathBuf {
        sidecar(&self.volume, ".ferry-source-of")
    }

    pub fn reservations_path(&self) -> PathBuf {
        sidecar(&self.volume, ".ferry-pr")
    }

    fn with_index<T>(
        &self,
        f: impl FnOnce(&File) -> io::Result<T>,
        op: &'static str,
    ) -> Result<T, FileError> {
        let path = self.index_path();
        let mut slot = self.index_file.lock();
        if slot.is_none() {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(FileError::sidecar("open", &path))?;
            *slot = Some(file);
        }
        f(slot.as_ref().expect("opened above")).map_err(FileError::sidecar(op, &path))
    }
}

impl MetaStore for FileMetaStore {
    fn describe(&self) -> String {
        self.record_path().display().to_string()
    }

    fn load_record(&self) -> Result<Option<Vec<u8>>> {
        Ok(read_optional(&self.record_path())?)
    }

    fn store_record(&self, bytes: &[u8]) -> Result<()> {
        Ok(replace_file(&self.record_path(), bytes)?)
    }

    fn read_index(&self) -> Result<Option<Vec<u8>>> {
        Ok(read_optional(&self.index_path())?)
    }

    fn create_index(&self, bytes: &[u8]) -> Result<()> {
        *self.index_file.lock() = None;
        Ok(replace_file(&self.index_path(), bytes)?)
    }

    fn write_index(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        Ok(self.with_index(|f| f.write_all_at(bytes, offset), "write")?)
    }

    fn sync_index(&self) -> Result<()> {
        Ok(self.with_index(|f| f.sync_data(), "fdatasync")?)
    }

    /// The host's boot id: index words and volume data written through
    /// the page cache survive a process crash but not a reboot.
    fn epoch(&self) -> Option<[u8; 16]> {
        Some(boot_id())
    }

    fn load_source_marker(&self) -> Result<Option<SourceMarker>> {
        let path = self.marker_path();
        match read_optional(&path)? {
            None => Ok(None),
            Some(b) => SourceMarker::decode(&String::from_utf8_lossy(&b))
                .map(Some)
                .ok_or_else(|| {
                    FileError::Corrupt {
                        path,
                        why: "the source marker is not `migrating <spec>` or `committed <spec>`"
                            .into(),
                    }
                    .into()
                }),
        }
    }

    fn store_source_marker(&self, marker: &SourceMarker) -> Result<()> {
        Ok(replace_file(
            &self.marker_path(),
            marker.encode().as_bytes(),
        )?)
    }

    fn remove_source_marker(&self) -> Result<()> {
        Ok(remove_optional(&self.marker_path())?)
    }

    fn load_reservations(&self) -> Result<Option<Vec<u8>>> {
        Ok(read_optional(&self.reservations_path())?)
    }

    fn store_reservations(&self, bytes: &[u8]) -> Result<()> {
        Ok(replace_file_in_steps(
            &self.reservations_path(),
            bytes,
            Some(&RESERVATION_STEPS),
        )?)
    }

    fn remove_index(&self) -> Result<()> {
        *self.index_file.lock() = None;
        Ok(remove_optional(&self.index_path())?)
    }

    fn remove_record(&self) -> Result<()> {
        Ok(remove_optional(&self.record_path())?)
    }

    fn destroy_volume(&self) -> Result<()> {
        // The volume first: a leftover record without its volume is
        // recognisably an aborted migration, the reverse would not be.
        remove_optional(&self.volume)
            .map_err(|e| FileError::sidecar("remove", &self.volume)(e.into()))?;
        self.remove_index()?;
        remove_optional(&self.reservations_path())?;
        self.remove_record()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_volume_is_all_hole_and_reads_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileVolume::create(&dir.path().join("v"), 1 << 20).unwrap();
        assert_eq!(v.allocated(0, 1 << 20).unwrap(), vec![]);
        let mut buf = vec![1u8; 4096];
        v.read_at(&mut buf, 8192).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn allocated_reports_written_extents_and_punched_holes() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileVolume::create(&dir.path().join("v"), 1 << 20).unwrap();
        v.write_at(&[7u8; 4096], 65536).unwrap();
        v.write_at(&[7u8; 4096], 65536 + 4096).unwrap();
        let ext = v.allocated(0, 1 << 20).unwrap();
        assert_eq!(ext.len(), 1);
        assert!(
            ext[0].offset <= 65536 && ext[0].end() >= 65536 + 8192,
            "{ext:?}"
        );
        v.write_zeroes(65536, 8192).unwrap();
        assert_eq!(v.allocated(0, 1 << 20).unwrap(), vec![]);
    }

    #[test]
    fn second_writer_is_refused_while_first_holds_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        let _v = FileVolume::create(&p, 1 << 20).unwrap();
        let err = FileVolume::open(&p, Access::Exclusive).err().unwrap();
        assert!(err.to_string().contains("another process"), "{err}");
        assert!(FileVolume::open(&p, Access::ReadOnly).is_ok());
    }

    #[test]
    fn out_of_range_io_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = FileVolume::create(&dir.path().join("v"), 1 << 20).unwrap();
        assert!(matches!(
            v.write_at(&[0u8; 512], (1 << 20) - 256),
            Err(Error::OutOfRange { .. })
        ));
    }

    #[test]
    fn create_refuses_to_overwrite_and_bad_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        drop(FileVolume::create(&p, 4096).unwrap());
        assert!(FileVolume::create(&p, 4096).is_err());
        assert!(FileVolume::create(&dir.path().join("w"), 1000).is_err());
    }
}
