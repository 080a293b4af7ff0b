//! Backends behind a trait: each kind of volume (local files, Ceph RBD
//! images) registers here how to parse its specs, and each parsed spec
//! knows how to open, create, fence and snapshot the volume it names.
//! [`VolumeSpec`] is a thin wrapper over one of them.
//!
//! - [`Backend`]: a kind of volume, chosen by the scheme before a spec's
//!   first `:` (`file:`, `rbd:`); a spec without one is a file path.
//! - [`BackendSpec`]: a parsed spec of that kind.
//!
//! [`BACKENDS`] is the one place a build feature decides which kinds
//! exist; a scheme this build lacks is refused with the reason
//! ([`NOT_BUILT`]).
//!
//! Operations handed an open volume as a `&dyn Volume` (the source of a
//! migration, the volume a LUN serves) find the backend's own handle for
//! it without downcasting: the RBD backend keeps the images it opened (see
//! `rbd.rs`), files need nothing beyond their path.
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ferry_core::migrate::Opened;
use ferry_core::{Error, MetaStore, Result, Volume};
use ferry_file::Access;

use crate::lun::Lun;
use crate::snapshot::{SnapshotInfo, SnapshotOp};
use crate::spec::VolumeSpec;

mod file;
#[cfg(feature = "rbd")]
mod rbd;

/// Every backend this build has. A spec without a scheme goes to the
/// first (files).
static BACKENDS: &[&dyn Backend] = &[
    &file::File,
    #[cfg(feature = "rbd")]
    &rbd::Rbd,
];

/// Schemes a build may lack, and what a spec using one is told.
const NOT_BUILT: &[(&str, &str)] = &[(
    "rbd",
    "this ferry build has no RBD backend (rebuild with --features rbd)",
)];

/// A spec being parsed.
pub(crate) struct SpecText<'a> {
    /// As given (named in errors).
    pub given: &'a str,
    /// Trimmed of surrounding white space: what is parsed.
    pub trimmed: &'a str,
    /// Where what follows the scheme's `:` starts in `trimmed` (0 without
    /// a scheme).
    rest_at: usize,
}

impl SpecText<'_> {
    /// What follows the scheme's `:` (all of the spec without a scheme).
    pub fn rest(&self) -> &str {
        &self.trimmed[self.rest_at..]
    }

    /// A [`Error::BadSpec`] naming the spec as given.
    pub fn bad(&self, why: impl Into<String>) -> Error {
        Error::BadSpec {
            spec: self.given.to_string(),
            why: why.into(),
        }
    }
}

/// A kind of volume.
pub(crate) trait Backend: Sync {
    /// The scheme of its specs, without the `:` (also the `backend` entry
    /// of a volume's identity).
    fn scheme(&self) -> &'static str;

    /// Parses a spec of this kind.
    fn parse(&self, text: &SpecText<'_>) -> Result<Arc<dyn BackendSpec>>;
}

/// A parsed spec: a volume of one backend, which may not exist yet.
/// `Display` prints the canonical spec, which parses back to an equal one
/// from any working directory (migration records keep it).
pub(crate) trait BackendSpec: fmt::Display + Send + Sync {
    fn backend(&self) -> &'static dyn Backend;

    /// Opens the volume and its metadata store; see [`VolumeSpec::open`].
    fn open(&self, access: Access) -> Result<Opened>;

    /// The volume's metadata store.
    fn store(&self) -> Result<Arc<dyn MetaStore>>;

    /// The metadata store of `vol`, an open volume of this spec (sharing
    /// its handle where the backend has one).
    fn store_of(&self, vol: &dyn Volume) -> Result<Arc<dyn MetaStore>> {
        let _ = vol;
        self.store()
    }

    /// Whether the volume exists; an error when that cannot be told.
    fn exists(&self) -> Result<bool>;

    /// Creates the volume, `size` bytes, shaped like `like` where the
    /// backend can (a migration target like its source).
    fn create(&self, size: u64, like: Option<&dyn Volume>) -> Result<Opened>;

    /// Fences the volume's other clients; returns what was fenced.
    fn fence_other_clients(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Other clients with the volume open.
    fn other_clients(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Refuses a migration from `source` (open under this spec) to
    /// `target` that could not finish.
    fn precheck(&self, source: &dyn Volume, target: &VolumeSpec) -> Result<()> {
        let _ = (source, target);
        Ok(())
    }

    /// What identifies `vol` (open under this spec) besides its spec,
    /// size and backend.
    fn identity(&self, vol: &dyn Volume) -> BTreeMap<String, String>;

    /// Runs a snapshot operation on `lun`, which serves this volume and is
    /// not being migrated; `name` has been checked (empty for a listing).
    fn snapshot(&self, lun: &Lun, op: &SnapshotOp, name: &str) -> Result<Vec<SnapshotInfo>>;

    /// The local file, for a file volume.
    fn file_path(&self) -> Option<&Path> {
        None
    }
}

/// Parses `given` (not empty, no NUL or newline) with the backend its
/// scheme names.
pub(crate) fn parse(given: &str, trimmed: &str) -> Result<Arc<dyn BackendSpec>> {
    let mut text = SpecText {
        given,
        trimmed,
        rest_at: 0,
    };
    let Some((scheme, _)) = trimmed
        .split_once(':')
        .filter(|(scheme, _)| !scheme.contains('/'))
    else {
        return BACKENDS[0].parse(&text);
    };
    text.rest_at = scheme.len() + 1;
    if let Some(b) = BACKENDS.iter().find(|b| b.scheme() == scheme) {
        return b.parse(&text);
    }
    if let Some((_, why)) = NOT_BUILT.iter().find(|(s, _)| *s == scheme) {
        return Err(text.bad(*why));
    }
    let mut known: Vec<&str> = BACKENDS.iter().map(|b| b.scheme()).collect();
    for (s, _) in NOT_BUILT {
        if !known.contains(s) {
            known.push(s);
        }
    }
    let known: Vec<String> = known.iter().map(|s| format!("{s}:")).collect();
    Err(text.bad(format!(
        "unknown volume type {scheme:?}; expected {}",
        known.join(" or ")
    )))
}
