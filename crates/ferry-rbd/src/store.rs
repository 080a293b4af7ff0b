//! [`RbdMetaStore`]: ferry's migration metadata kept with an RBD image.
//!
//! - The record (`ferry.migration`) and the source marker
//!   (`ferry.source-of`) are image metadata: key/values in the image
//!   header's omap, replaced atomically by `rbd_metadata_set` and gone with
//!   the image. They are text (checksummed JSON, one marker line), which
//!   suits librbd's C-string values.
//! - The region index is a RADOS object in the image's pool named after the
//!   image id, `ferry_index.<id>`: ids are never reused, so a leftover
//!   index can never be mistaken for another image's. It is created with
//!   `rados_write_full` and updated in place with `rados_write`.
//!
//! Durability: RADOS acknowledges a write only once it is durable on every
//! replica (committed to the OSD's write-ahead log), and omap updates are
//! the same. So every store operation is durable when it returns,
//! `sync_index` has nothing to do, and [`MetaStore::epoch`] is `None`: no
//! cache can lose an acknowledged index write. The engine's ordering rule
//! (a region's migrated bit reaches the index only after its data is
//! durable on the target) then holds because the target's writes are also
//! acknowledged durable (the librbd cache is off, see `rados.rs`).
use std::io;
use std::sync::Arc;

use ferry_core::{Error, MetaStore, Result, SourceMarker};
use parking_lot::Mutex;

use crate::error::RbdError;
use crate::image::{remove_image, Image};
use crate::rados::IoCtx;
use crate::spec::RbdSpec;
use crate::volume::RbdVolume;

/// Image metadata key of the migration record.
pub const RECORD_KEY: &str = "ferry.migration";
/// Image metadata key of the source marker.
pub const MARKER_KEY: &str = "ferry.source-of";
/// Image metadata key of the LUN's persistent-reservation state.
pub const RESERVATIONS_KEY: &str = "ferry.pr";
/// Prefix of every image metadata key ferry owns.
pub const FERRY_KEY_PREFIX: &str = "ferry.";
/// Prefix of the region index object; the image id follows.
pub const INDEX_PREFIX: &str = "ferry_index.";

/// Where ferry keeps its metadata for one image.
pub struct RbdMetaStore {
    describe: String,
    io: IoCtx,
    image_name: String,
    index_oid: String,
    /// Shared with the volume; taken (closed) by `destroy_volume`.
    image: Mutex<Option<Arc<Image>>>,
}

impl std::fmt::Debug for RbdMetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdMetaStore")
            .field("image", &self.describe)
            .field("index", &self.index_oid)
            .finish()
    }
}

fn meta_err(op: &'static str, what: &str, e: RbdError) -> Error {
    let source = match &e {
        RbdError::Call { errno, .. } => io::Error::from_raw_os_error(*errno),
        other => io::Error::other(other.to_string()),
    };
    Error::meta_io(op, what, source)
}

impl RbdMetaStore {
    /// The store of an open image (see [`RbdVolume::meta_store`]).
    pub fn new(image: Arc<Image>, volume_name: &str) -> Self {
        RbdMetaStore {
            describe: format!("{volume_name} (rbd image metadata)"),
            io: image.ioctx().clone(),
            image_name: image.name().to_string(),
            index_oid: format!("{INDEX_PREFIX}{}", image.id()),
            image: Mutex::new(Some(image)),
        }
    }

    /// Opens the image of `spec` just for its metadata. Do not use this
    /// while the same process has the image open as a volume: use
    /// [`RbdVolume::meta_store`], which shares the handle.
    pub fn open(spec: &RbdSpec) -> crate::Result<Self> {
        let v = RbdVolume::open(spec)?;
        Ok(v.meta_store())
    }

    /// Name of the RADOS object holding the region index.
    pub fn index_object(&self) -> &str {
        &self.index_oid
    }

    fn image(&self) -> Result<Arc<Image>> {
        self.image.lock().clone().ok_or_else(|| {
            Error::meta_io(
                "use",
                &self.describe,
                io::Error::new(io::ErrorKind::NotFound, "the image was destroyed"),
            )
        })
    }

    fn get_text(&self, key: &str) -> Result<Option<String>> {
        self.image()?
            .metadata_get(key)
            .map_err(|e| meta_err("read", &self.describe, e))
    }

    fn set_text(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let text = std::str::from_utf8(bytes).map_err(|_| {
            Error::meta_io(
                "store",
                &self.describe,
                io::Error::new(io::ErrorKind::InvalidData, "metadata must be UTF-8 text"),
            )
        })?;
        self.image()?
            .metadata_set(key, text)
            .map_err(|e| meta_err("store", &self.describe, e))
    }

    fn remove_key(&self, key: &str) -> Result<()> {
        self.image()?
            .metadata_remove(key)
            .map(|_| ())
            .map_err(|e| meta_err("remove", &self.describe, e))
    }

    fn index_what(&self) -> String {
        format!(
            "{} (index object {}/{})",
            self.describe,
            self.io.pool(),
            self.index_oid
        )
    }
}

impl MetaStore for RbdMetaStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn load_record(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.get_text(RECORD_KEY)?.map(String::into_bytes))
    }

    fn store_record(&self, bytes: &[u8]) -> Result<()> {
        // One omap key set: atomic and durable when acknowledged.
        self.set_text(RECORD_KEY, bytes)
    }

    fn load_reservations(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.get_text(RESERVATIONS_KEY)?.map(String::into_bytes))
    }

    fn store_reservations(&self, bytes: &[u8]) -> Result<()> {
        // One omap key set, like the record: atomic and durable when
        // acknowledged, and visible to every gateway of the cluster.
        self.set_text(RESERVATIONS_KEY, bytes)
    }

    fn read_index(&self) -> Result<Option<Vec<u8>>> {
        self.io
            .read_object(&self.index_oid)
            .map_err(|e| meta_err("read", &self.index_what(), e))
    }

    fn create_index(&self, bytes: &[u8]) -> Result<()> {
        // write_full replaces the object atomically (up to 16 MiB) and is
        // durable when acknowledged.
        self.io
            .write_object_full(&self.index_oid, bytes)
            .map_err(|e| meta_err("create", &self.index_what(), e))
    }

    fn write_index(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        // DURABILITY: acknowledged means on every replica's WAL, so this
        // already survives power loss (see the module docs).
        self.io
            .write_object(&self.index_oid, offset, bytes)
            .map_err(|e| meta_err("write", &self.index_what(), e))
    }

    fn sync_index(&self) -> Result<()> {
        // DURABILITY: nothing to do; every completed write_index is durable
        // (RADOS acknowledges writes only once committed). The engine's
        // "index synced" points therefore hold as soon as reached.
        Ok(())
    }

    fn epoch(&self) -> Option<[u8; 16]> {
        // No client-side cache holds index writes: nothing is lost by a
        // reboot of this host.
        None
    }

    fn load_source_marker(&self) -> Result<Option<SourceMarker>> {
        match self.get_text(MARKER_KEY)? {
            None => Ok(None),
            Some(text) => SourceMarker::decode(&text)
                .map(Some)
                .ok_or_else(|| Error::Corrupt {
                    what: self.describe.clone(),
                    why: format!(
                        "metadata {MARKER_KEY} is not `migrating <spec>` or `committed <spec>`"
                    ),
                }),
        }
    }

    fn store_source_marker(&self, marker: &SourceMarker) -> Result<()> {
        self.set_text(MARKER_KEY, marker.encode().as_bytes())
    }

    fn remove_source_marker(&self) -> Result<()> {
        self.remove_key(MARKER_KEY)
    }

    fn remove_index(&self) -> Result<()> {
        self.io
            .remove_object(&self.index_oid)
            .map(|_| ())
            .map_err(|e| meta_err("remove", &self.index_what(), e))
    }

    fn remove_record(&self) -> Result<()> {
        self.remove_key(RECORD_KEY)
    }

    fn destroy_volume(&self) -> Result<()> {
        // The index first: the record lives in the image, so if we crash
        // between the two steps the image still carries its `aborted`
        // record and the next open finishes the job; the reverse order
        // would orphan the index object.
        self.remove_index()?;
        // Close our handle (shared with the volume, which the engine has
        // dropped by now): librbd refuses to remove a watched image.
        drop(self.image.lock().take());
        match remove_image(&self.io, &self.image_name) {
            Ok(()) | Err(RbdError::NoImage { .. }) => Ok(()),
            Err(e) => Err(meta_err("remove image", &self.describe, e)),
        }
    }
}
