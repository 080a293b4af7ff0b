//! Volume specs: the strings admins write in tgtadm `--backing-store`,
//! targetcli `cfgstring` and on the `ferry` command line.
//!
//! - `file:/abs/path` or a plain path: a local sparse file (the default);
//! - `rbd:pool/image[@snap]`: a Ceph RBD image (needs the `rbd` backend,
//!   which this build reports as missing with a clear error).
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
        if let Some(rest) = spec_trim.strip_prefix("rbd:") {
            let _ = rest;
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
        Ok(VolumeSpec::File(normalize(&abs)))
    }

    /// Opens the volume and its metadata store for serving.
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
        }
    }

    /// Metadata store of the volume, without opening the volume itself.
    pub fn store(&self) -> Arc<dyn MetaStore> {
        match self {
            VolumeSpec::File(path) => Arc::new(FileMetaStore::new(path)),
        }
    }

    /// Whether the volume exists.
    pub fn exists(&self) -> bool {
        match self {
            VolumeSpec::File(path) => path.exists(),
        }
    }

    /// Creates a new, empty volume of `size` bytes; refuses an existing one.
    pub fn create(&self, size: u64) -> Result<Opened> {
        match self {
            VolumeSpec::File(path) => {
                let vol: Arc<dyn Volume> = Arc::new(FileVolume::create(path, size)?);
                let store: Arc<dyn MetaStore> = Arc::new(FileMetaStore::new(path));
                Ok((vol, store))
            }
        }
    }

    /// Identity facts recorded in a target as "original volume info".
    pub fn identity(&self, vol: &dyn Volume) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        m.insert("spec".to_string(), self.to_string());
        m.insert("size".to_string(), vol.size().to_string());
        match self {
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
            ("rbd:pool/img", "no RBD backend"),
        ] {
            let err = VolumeSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains(why), "{spec:?}: {err}");
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
