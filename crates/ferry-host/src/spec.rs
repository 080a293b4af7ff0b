//! Volume specs: the strings admins write in tgtadm `--backing-store`,
//! targetcli `cfgstring` and on the `ferry` command line.
//!
//! - `file:/abs/path` or a plain path: a local sparse file (the default);
//! - `rbd:pool/image[@snap][?conf=/path/ceph.conf&id=admin&keyring=/path]`:
//!   a Ceph RBD image (with the `rbd` feature; a build without it says so).
//!
//! Specs stored in migration records are always canonical (`file:` plus an
//! absolute path), so a record can be reopened from any working directory.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_core::migrate::Opened;
use ferry_core::{Error, MetaStore, Result, Volume};
use ferry_file::{Access, FileMetaStore, FileVolume};

/// A parsed volume spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSpec {
    File(PathBuf),
    #[cfg(feature = "rbd")]
    Rbd(ferry_rbd::RbdSpec),
}

#[cfg(feature = "rbd")]
fn rbd_err<'a>(op: &'static str, what: &'a str) -> impl FnOnce(ferry_rbd::RbdError) -> Error + 'a {
    move |e| e.into_core(op, what)
}

impl VolumeSpec {
    /// Parses a spec string.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: &str| Error::BadSpec {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let spec_trim = spec.trim();
        if spec_trim.is_empty() {
            return Err(bad(
                "empty volume spec; expected file:/path or rbd:pool/image",
            ));
        }
        if spec_trim.contains('\0') || spec_trim.contains('\n') {
            return Err(bad("the spec contains a NUL or newline"));
        }
        if spec_trim.starts_with("rbd:") {
            #[cfg(feature = "rbd")]
            return ferry_rbd::RbdSpec::parse(spec_trim)
                .map(VolumeSpec::Rbd)
                .map_err(|e| e.into_core("parse", spec_trim));
            #[cfg(not(feature = "rbd"))]
            return Err(bad(
                "this ferry build has no RBD backend (rebuild with --features rbd)",
            ));
        }
        let path = match spec_trim.split_once(':') {
            Some(("file", p)) => p,
            Some((scheme, _)) if !scheme.contains('/') => {
                return Err(bad(&format!(
                    "unknown volume type {scheme:?}; expected file: or rbd:"
                )))
            }
            _ => spec_trim,
        };
        if path.is_empty() {
            return Err(bad("file: needs a path"));
        }
        let path = Path::new(path);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| bad(&format!("cannot resolve a relative path: {e}")))?
                .join(path)
        };
        let path = normalize(&abs);
        // The canonical spec (`file:` and this path) is what migration
        // records keep and what is parsed again on reopening; a spec is
        // trimmed before it is read, so a path ending in white space (left
        // last by `..` or `.`, as in `/srv/vol /.`) would come back as
        // another file.
        if path.to_str().is_some_and(|p| p.trim_end().len() != p.len()) {
            return Err(bad(
                "the path ends with white space, which a spec cannot name",
            ));
        }
        Ok(VolumeSpec::File(path))
    }

    /// Opens the volume and its metadata store for serving, or for working
    /// on it offline, as its only writer: a file volume holds an exclusive
    /// `flock`, an RBD image its exclusive lock (see
    /// `ferry_rbd::Image::hold_exclusive`), until it is closed. A volume
    /// another process holds so is refused, naming that process where the
    /// backend can tell (RBD: client and address).
    pub fn open(&self) -> Result<Opened> {
        self.open_with(Access::Exclusive)
    }

    /// Opens read-only, without the lock (status tools).
    pub fn open_read_only(&self) -> Result<Opened> {
        self.open_with(Access::ReadOnly)
    }

    fn open_with(&self, access: Access) -> Result<Opened> {
        match self {
            VolumeSpec::File(path) => {
                let vol: Arc<dyn Volume> = Arc::new(FileVolume::open(path, access)?);
                let store: Arc<dyn MetaStore> = Arc::new(FileMetaStore::new(path));
                Ok((vol, store))
            }
            #[cfg(feature = "rbd")]
            VolumeSpec::Rbd(s) => {
                // One image handle for data and metadata: two handles in
                // one process would fight over the exclusive lock.
                let what = s.to_string();
                let vol = ferry_rbd::RbdVolume::open(s).map_err(rbd_err("open", &what))?;
                if access == Access::Exclusive && s.snap.is_none() {
                    vol.image()
                        .hold_exclusive()
                        .map_err(rbd_err("lock", &what))?;
                }
                let store: Arc<dyn MetaStore> = Arc::new(vol.meta_store());
                Ok((Arc::new(vol), store))
            }
        }
    }

    /// Fences every other client of the volume before this process (or
    /// the target it configures) starts serving it after a failover;
    /// returns what was fenced. RBD: blocklist the image's other clients
    /// and break their lock, for the volume and, while it migrates, its
    /// target. Files: nothing to do here; the serving process's exclusive
    /// `flock` is the fence (released by the kernel when it dies).
    pub fn fence_other_clients(&self) -> Result<Vec<String>> {
        match self {
            VolumeSpec::File(_) => Ok(Vec::new()),
            #[cfg(feature = "rbd")]
            VolumeSpec::Rbd(s) => {
                let what = s.to_string();
                let mut fenced =
                    ferry_rbd::fence::fence_other_clients(s).map_err(rbd_err("fence", &what))?;
                if let Some(m) = self.store()?.load_source_marker()? {
                    let target = VolumeSpec::parse(&m.target)?;
                    if matches!(target, VolumeSpec::Rbd(_)) && target != *self {
                        fenced.extend(target.fence_other_clients()?);
                    }
                }
                Ok(fenced)
            }
        }
    }

    /// Other clients with the volume open, for RBD (watchers); files say
    /// none (an exclusive `flock` keeps a second server out instead).
    pub fn other_clients(&self) -> Result<Vec<String>> {
        match self {
            VolumeSpec::File(_) => Ok(Vec::new()),
            #[cfg(feature = "rbd")]
            VolumeSpec::Rbd(s) => ferry_rbd::fence::other_clients(s)
                .map_err(rbd_err("list clients of", &s.to_string())),
        }
    }

    /// Metadata store of the volume (for RBD this opens the image).
    pub fn store(&self) -> Result<Arc<dyn MetaStore>> {
        match self {
            VolumeSpec::File(path) => Ok(Arc::new(FileMetaStore::new(path))),
            #[cfg(feature = "rbd")]
            VolumeSpec::Rbd(s) => Ok(Arc::new(
                ferry_rbd::RbdMetaStore::open(s).map_err(rbd_err("open", &s.to_string()))?,
            )),
        }
    }

    /// Metadata store of `vol`, an open volume of this spec: for RBD it
    /// shares the volume's image handle instead of opening another.
    pub fn store_of(&self, vol: &dyn Volume) -> Result<Arc<dyn MetaStore>> {
        let _ = vol;
        #[cfg(feature = "rbd")]
        if let Some(rbd) = vol
            .as_any()
            .and_then(|a| a.downcast_ref::<ferry_rbd::RbdVolume>())
        {
            return Ok(Arc::new(rbd.meta_store()));
        }
        self.store()
    }

    /// Whether the volume exists. Errors (an unreachable cluster) are not
    /// "no": callers must not conclude a volume is gone when they cannot
    /// tell.
    pub fn exists(&self) -> Result<bool> {
        match self {
            VolumeSpec::File(path) => Ok(path.exists()),
            #[cfg(feature = "rbd")]
            VolumeSpec::Rbd(s) => {
                let what = s.to_string();
                let cluster = ferry_rbd::Cluster::connect(&s.connect_options())
                    .map_err(rbd_err("connect", &what))?;
                let io = cluster
                    .ioctx(&s.pool)
                    .map_err(rbd_err("open pool", &what))?;
                ferry_rbd::image_exists(&io, &s.image).map_err(rbd_err("look up", &what))
            }
        }
    }

    /// Creates a new, empty volume of `size` bytes; refuses an existing one.
    /// `like` is the source of a migration: an RBD target copies its object
    /// size, features, striping and image metadata when the source is RBD.
    pub fn create(&self, size: u64, like: Option<&dyn Volume>) -> Result<Opened> {
        match self {
            VolumeSpec::File(path) => {
                let _ = like;
                let vol: Arc<dyn Volume> = Arc::new(FileVolume::create(path, size)?);
                let store: Arc<dyn MetaStore> = Arc::new(FileMetaStore::new(path));
                Ok((vol, store))
            }
            #[cfg(feature = "rbd")]
            VolumeSpec::Rbd(s) => {
                let what = s.to_string();
                let like = like
                    .and_then(|v| v.as_any())
                    .and_then(|a| a.downcast_ref::<ferry_rbd::RbdVolume>());
                let vol = ferry_rbd::RbdVolume::create(s, size, like)
                    .map_err(rbd_err("create", &what))?;
                // The creator is its only writer from the start.
                if let Err(e) = vol.image().hold_exclusive() {
                    let io = vol.image().ioctx().clone();
                    drop(vol);
                    let _ = ferry_rbd::remove_image(&io, &s.image);
                    return Err(e.into_core("lock", &what));
                }
                if let Some(src) = like {
                    let n = ferry_rbd::copy_metadata(src, &vol)
                        .map_err(rbd_err("copy metadata to", &what))?;
                    log::info!("{what}: copied {n} image metadata keys from {}", src.spec());
                }
                let store: Arc<dyn MetaStore> = Arc::new(vol.meta_store());
                Ok((Arc::new(vol), store))
            }
        }
    }

    /// Checks that a migration from `source` (served under this spec) to
    /// `target` can start: for RBD, the seed's prechecks (no other client,
    /// target pool present, writable and large enough, no image of that
    /// name), each with its own message.
    pub fn precheck(&self, source: &dyn Volume, target: &VolumeSpec) -> Result<()> {
        let _ = (source, target);
        #[cfg(feature = "rbd")]
        if let (Some(src), VolumeSpec::Rbd(t)) = (
            source
                .as_any()
                .and_then(|a| a.downcast_ref::<ferry_rbd::RbdVolume>()),
            target,
        ) {
            let what = t.to_string();
            ferry_rbd::precheck_migration(src, t)
                .and_then(|r| r.ensure_ok())
                .map_err(rbd_err("precheck migration to", &what))?;
        }
        Ok(())
    }

    /// Identity facts recorded in a target as "original volume info".
    pub fn identity(&self, vol: &dyn Volume) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        m.insert("spec".to_string(), self.to_string());
        m.insert("size".to_string(), vol.size().to_string());
        match self {
            #[cfg(feature = "rbd")]
            VolumeSpec::Rbd(_) => {
                if let Some(Ok(id)) = vol
                    .as_any()
                    .and_then(|a| a.downcast_ref::<ferry_rbd::RbdVolume>())
                    .map(|r| r.identity())
                {
                    m.extend(id);
                }
                m.insert("backend".to_string(), "rbd".to_string());
            }
            VolumeSpec::File(path) => {
                m.insert("backend".to_string(), "file".to_string());
                if let Ok(meta) = std::fs::metadata(path) {
                    use std::os::unix::fs::MetadataExt;
                    m.insert("device".to_string(), meta.dev().to_string());
                    m.insert("inode".to_string(), meta.ino().to_string());
                }
                if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
                    m.insert("host".to_string(), host.trim().to_string());
                }
            }
        }
        m
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

impl fmt::Display for VolumeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeSpec::File(p) => write!(f, "file:{}", p.display()),
            #[cfg(feature = "rbd")]
            VolumeSpec::Rbd(s) => write!(f, "{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_file_paths_are_canonical_file_specs() {
        assert_eq!(
            VolumeSpec::parse("/a/b/../c").unwrap().to_string(),
            "file:/a/c"
        );
        assert_eq!(
            VolumeSpec::parse("file:/x/./y").unwrap().to_string(),
            "file:/x/y"
        );
        assert!(VolumeSpec::parse("rel/p")
            .unwrap()
            .to_string()
            .starts_with("file:/"));
    }

    #[test]
    fn bad_specs_say_why() {
        for (spec, why) in [
            ("", "empty"),
            ("nbd:foo", "unknown volume type"),
            ("file:", "needs a path"),
            #[cfg(not(feature = "rbd"))]
            ("rbd:pool/img", "no RBD backend"),
        ] {
            let err = VolumeSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains(why), "{spec:?}: {err}");
        }
    }

    /// Found by the `volume_spec` fuzz target: `"\u{f}\u{b}/ "` parsed
    /// to a path ending in a space, whose canonical spec named another
    /// file.
    #[test]
    fn canonical_specs_parse_back_to_the_same_volume() {
        for spec in [
            "/srv/vol /.",
            "/srv/vol /x/..",
            "file:/a\u{b}/",
            "\u{f}\u{b}/ ",
        ] {
            let err = VolumeSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains("white space"), "{spec:?}: {err}");
        }
        for spec in ["/srv/v ol", "/srv/vol/ x/..", "file:/srv/vol0.img"] {
            let parsed = VolumeSpec::parse(spec).unwrap();
            assert_eq!(VolumeSpec::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = VolumeSpec::parse("/nonexistent/ferry/vol")
            .unwrap()
            .open()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("No such file"), "{err}");
    }
}
