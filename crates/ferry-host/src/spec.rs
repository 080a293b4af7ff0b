//! Volume specs: the strings admins write in tgtadm `--backing-store`,
//! targetcli `cfgstring` and on the `ferry` command line.
//!
//! - `file:/abs/path` or a plain path: a local sparse file (the default);
//! - `rbd:pool/image[@snap][?conf=/path/ceph.conf&id=admin&keyring=/path]`:
//!   a Ceph RBD image (with the `rbd` feature; a build without it says so).
//!
//! Specs stored in migration records are always canonical (`file:` plus an
//! absolute path), so a record can be reopened from any working directory.
//!
//! Each kind of volume is a backend (`crate::backend`); a [`VolumeSpec`]
//! wraps the spec its backend parsed and hands every operation to it.
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ferry_core::migrate::Opened;
use ferry_core::{Error, MetaStore, Result, Volume};
use ferry_file::Access;

use crate::backend::{self, BackendSpec};

/// A parsed volume spec: a volume of one of the backends this build has
/// (see the `backend` module). Specs are equal when their canonical forms
/// are.
#[derive(Clone)]
pub struct VolumeSpec {
    canonical: String,
    backend: Arc<dyn BackendSpec>,
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
        backend::parse(spec, spec_trim).map(Self::from_backend)
    }

    pub(crate) fn from_backend(backend: Arc<dyn BackendSpec>) -> Self {
        VolumeSpec {
            canonical: backend.to_string(),
            backend,
        }
    }

    pub(crate) fn backend(&self) -> &dyn BackendSpec {
        self.backend.as_ref()
    }

    /// The kind of volume: `file` or `rbd`.
    pub fn scheme(&self) -> &'static str {
        self.backend.backend().scheme()
    }

    /// The local file a file spec names (absolute); `None` for other kinds.
    pub fn file_path(&self) -> Option<&Path> {
        self.backend.file_path()
    }

    /// Opens the volume and its metadata store for serving, or for working
    /// on it offline, as its only writer: a file volume holds an exclusive
    /// `flock`, an RBD image its exclusive lock (see
    /// `ferry_rbd::Image::hold_exclusive`), until it is closed. A volume
    /// another process holds so is refused, naming that process where the
    /// backend can tell (RBD: client and address).
    pub fn open(&self) -> Result<Opened> {
        self.backend.open(Access::Exclusive)
    }

    /// Opens read-only, without the lock (status tools).
    pub fn open_read_only(&self) -> Result<Opened> {
        self.backend.open(Access::ReadOnly)
    }

    /// The volume's size, learned without taking the volume: a file's
    /// length (the file may be locked by the process serving it), an
    /// image opened read-only (no exclusive lock, no data read). What a
    /// standby port reports as the LUN's capacity.
    pub fn size_unlocked(&self) -> Result<u64> {
        if let Some(path) = self.file_path() {
            return std::fs::metadata(path).map(|m| m.len()).map_err(|e| {
                ferry_core::Error::volume_io("stat", &path.display().to_string(), 0, e)
            });
        }
        let (vol, _) = self.open_read_only()?;
        Ok(vol.size())
    }

    /// Fences every other client of the volume before this process (or
    /// the target it configures) starts serving it after a failover;
    /// returns what was fenced. RBD: blocklist the image's other clients
    /// and break their lock, for the volume and, while it migrates, its
    /// target. Files: nothing to do here; the serving process's exclusive
    /// `flock` is the fence (released by the kernel when it dies).
    pub fn fence_other_clients(&self) -> Result<Vec<String>> {
        self.backend.fence_other_clients()
    }

    /// Other clients with the volume open, for RBD (watchers); files say
    /// none (an exclusive `flock` keeps a second server out instead).
    pub fn other_clients(&self) -> Result<Vec<String>> {
        self.backend.other_clients()
    }

    /// Metadata store of the volume (for RBD this opens the image).
    pub fn store(&self) -> Result<Arc<dyn MetaStore>> {
        self.backend.store()
    }

    /// Metadata store of `vol`, an open volume of this spec: for RBD it
    /// shares the volume's image handle instead of opening another.
    pub fn store_of(&self, vol: &dyn Volume) -> Result<Arc<dyn MetaStore>> {
        self.backend.store_of(vol)
    }

    /// Whether the volume exists. Errors (an unreachable cluster) are not
    /// "no": callers must not conclude a volume is gone when they cannot
    /// tell.
    pub fn exists(&self) -> Result<bool> {
        self.backend.exists()
    }

    /// Creates a new, empty volume of `size` bytes; refuses an existing one.
    /// `like` is the source of a migration: an RBD target copies its object
    /// size, features, striping and image metadata when the source is RBD.
    pub fn create(&self, size: u64, like: Option<&dyn Volume>) -> Result<Opened> {
        self.backend.create(size, like)
    }

    /// Checks that a migration from `source` (served under this spec) to
    /// `target` can start: for RBD, the seed's prechecks (no other client,
    /// target pool present, writable and large enough, no image of that
    /// name), each with its own message.
    pub fn precheck(&self, source: &dyn Volume, target: &VolumeSpec) -> Result<()> {
        self.backend.precheck(source, target)
    }

    /// Identity facts recorded in a target as "original volume info": the
    /// spec, size and backend, and what the backend adds (a file's device,
    /// inode and host; an image's cluster, pool, ids and layout).
    pub fn identity(&self, vol: &dyn Volume) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("spec".to_string(), self.to_string());
        m.insert("size".to_string(), vol.size().to_string());
        m.extend(self.backend.identity(vol));
        m.insert("backend".to_string(), self.scheme().to_string());
        m
    }
}

impl PartialEq for VolumeSpec {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for VolumeSpec {}

impl fmt::Debug for VolumeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("VolumeSpec").field(&self.canonical).finish()
    }
}

impl fmt::Display for VolumeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
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

    #[test]
    fn unknown_schemes_are_told_every_kind_of_volume_in_any_build() {
        let err = VolumeSpec::parse("nbd:foo").unwrap_err().to_string();
        assert!(
            err.contains(r#"unknown volume type "nbd"; expected file: or rbd:"#),
            "{err}"
        );
    }

    #[test]
    fn a_file_spec_names_its_backend_and_path() {
        let spec = VolumeSpec::parse("/srv/../srv/vol0.img").unwrap();
        assert_eq!(spec.scheme(), "file");
        assert_eq!(spec.file_path(), Some(Path::new("/srv/vol0.img")));
        assert_eq!(format!("{spec:?}"), r#"VolumeSpec("file:/srv/vol0.img")"#);
    }

    #[test]
    fn identity_names_the_spec_size_and_backend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol");
        let spec = VolumeSpec::parse(path.to_str().unwrap()).unwrap();
        let (vol, _) = spec.create(1 << 20, None).unwrap();
        let id = spec.identity(vol.as_ref());
        assert_eq!(id["spec"], spec.to_string());
        assert_eq!(id["size"], (1u64 << 20).to_string());
        assert_eq!(id["backend"], "file");
        assert!(id.contains_key("inode"), "{id:?}");
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
