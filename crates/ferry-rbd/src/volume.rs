//! [`RbdVolume`]: an RBD image as a ferry [`Volume`].
//!
//! Reads, writes, write-zeroes and flushes go through librbd's aio calls
//! (see `image.rs`). `discard` zeroes too: ferry promises that discarded
//! bytes read as zeroes, and `rbd_discard` does not (under the default
//! `rbd_skip_partial_discard` it leaves partial objects untouched), while
//! `rbd_write_zeroes` deallocates whole objects and zeroes the rest.
//! `allocated` asks `rbd_diff_iterate2` for whole objects, which the object
//! map answers without an OSD round trip when fast-diff is on; the engine
//! copies per region, and the default region is one 4 MiB object.
//!
//! Durability: the librbd cache is off on every connection (see
//! `rados.rs`), so a write is on the OSDs, durably, when it returns, and
//! `flush` only waits for nothing in flight.
use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_core::volume::check_range;
use ferry_core::{Extent, Volume};
use ferry_rbd_sys as sys;

use crate::error::{RbdError, Result};
use crate::image::{create_image, remove_image, CreateOptions, Image, Watcher};
use crate::rados::Cluster;
use crate::spec::RbdSpec;
use crate::store::{RbdMetaStore, FERRY_KEY_PREFIX};

/// An RBD image served as a volume.
pub struct RbdVolume {
    name: String,
    spec: RbdSpec,
    cluster: Cluster,
    image: Arc<Image>,
    /// Changes only in [`Volume::resize`], run with I/O held off.
    size: std::sync::atomic::AtomicU64,
    order: u32,
}

impl std::fmt::Debug for RbdVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdVolume")
            .field("spec", &self.name)
            .field("size", &self.size())
            .field("order", &self.order)
            .finish()
    }
}

/// Feature bits a new image may be created with: the source's, less those
/// librbd sets by itself (striping, data pool) or manages internally
/// (operations, migrating, non-primary, dirty cache).
fn creatable_features(features: u64) -> u64 {
    let not_settable = u64::from(
        sys::RBD_FEATURES_INTERNAL
            | sys::RBD_FEATURES_MUTABLE_INTERNAL
            | sys::RBD_FEATURE_STRIPINGV2
            | sys::RBD_FEATURE_DATA_POOL
            | sys::RBD_FEATURE_MIGRATING,
    );
    features & u64::from(sys::RBD_FEATURES_ALL) & !not_settable
}

fn check_creatable(spec: &RbdSpec) -> Result<()> {
    if spec.snap.is_some() {
        return Err(RbdError::BadSpec {
            spec: spec.to_string(),
            why: "cannot create a snapshot; name an image without @snap".into(),
        });
    }
    Ok(())
}

impl RbdVolume {
    /// Connects to the spec's cluster and opens the image (read-only at a
    /// snapshot).
    pub fn open(spec: &RbdSpec) -> Result<RbdVolume> {
        let cluster = Cluster::connect(&spec.connect_options())?;
        Self::open_in(&cluster, spec)
    }

    /// Opens the image through an existing connection (the spec's conf,
    /// id and keyring are then not used to connect).
    pub fn open_in(cluster: &Cluster, spec: &RbdSpec) -> Result<RbdVolume> {
        let io = cluster.ioctx(&spec.pool)?;
        let image = Image::open(&io, &spec.image, spec.snap.as_deref(), false)?;
        // Pool and image overrides (`rbd config pool|image set ... rbd_cache`)
        // beat the client setting; a cache would break the durability the
        // engine relies on, so refuse rather than serve.
        if image
            .config()?
            .iter()
            .any(|(k, v)| k == "rbd_cache" && v == "true")
        {
            return Err(RbdError::Unexpected {
                what: format!("image {}", spec.short()),
                why: "its pool or image config enables rbd_cache; ferry needs every write \
                      acknowledged by the OSDs (remove it with `rbd config image rm` / \
                      `rbd config pool rm`)"
                    .into(),
            });
        }
        let st = image.stat()?;
        Ok(RbdVolume {
            name: spec.to_string(),
            spec: spec.clone(),
            cluster: cluster.clone(),
            image: Arc::new(image),
            size: std::sync::atomic::AtomicU64::new(st.size),
            order: st.order,
        })
    }

    /// Creates an image of `size` bytes and opens it. With `like`, the new
    /// image takes that volume's object size, features and striping (a
    /// migration target should behave like its source); without, the
    /// cluster's defaults. Refuses an existing name.
    pub fn create(spec: &RbdSpec, size: u64, like: Option<&RbdVolume>) -> Result<RbdVolume> {
        check_creatable(spec)?;
        let cluster = Cluster::connect(&spec.connect_options())?;
        Self::create_in(&cluster, spec, size, like)
    }

    /// [`RbdVolume::create`] through an existing connection.
    pub fn create_in(
        cluster: &Cluster,
        spec: &RbdSpec,
        size: u64,
        like: Option<&RbdVolume>,
    ) -> Result<RbdVolume> {
        check_creatable(spec)?;
        let opts = match like {
            None => CreateOptions::default(),
            Some(src) => {
                let (unit, count) = src.image.striping()?;
                CreateOptions {
                    order: Some(src.order),
                    features: Some(creatable_features(src.image.features()?)),
                    stripe_unit: Some(unit),
                    stripe_count: Some(count),
                }
            }
        };
        let io = cluster.ioctx(&spec.pool)?;
        create_image(&io, &spec.image, size, &opts)?;
        Self::open_in(cluster, spec).inspect_err(|_| {
            // Do not leave a half-made image behind.
            let _ = remove_image(&io, &spec.image);
        })
    }

    /// The spec this volume was opened with.
    pub fn spec(&self) -> &RbdSpec {
        &self.spec
    }

    /// The connection the volume uses.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The open image.
    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }

    /// Object size as a power of two.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// The store of ferry's metadata for this image, sharing its handle
    /// (one handle per image and process: two would fight over the
    /// exclusive lock).
    pub fn meta_store(&self) -> RbdMetaStore {
        RbdMetaStore::new(self.image.clone(), &self.name)
    }

    /// What identifies the image, for the migration record's
    /// `source_info`: cluster fsid, pool, image name and id, size, order,
    /// features and striping.
    pub fn identity(&self) -> Result<BTreeMap<String, String>> {
        let (unit, count) = self.image.striping()?;
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("backend", "rbd".into());
        put("fsid", self.cluster.fsid().into());
        put("pool", self.spec.pool.clone());
        put("pool_id", self.image.ioctx().pool_id().to_string());
        put("image", self.spec.image.clone());
        put("image_id", self.image.id().into());
        if let Some(snap) = &self.spec.snap {
            put("snap", snap.clone());
        }
        put("size", self.size().to_string());
        put("order", self.order.to_string());
        put("object_size", (1u64 << self.order).to_string());
        put("features", self.image.features()?.to_string());
        put("stripe_unit", unit.to_string());
        put("stripe_count", count.to_string());
        Ok(m)
    }

    /// Bytes in objects that hold data (whole objects): what a copy of the
    /// image needs at most, before replication.
    pub fn used_bytes(&self) -> Result<u64> {
        Ok(self
            .image
            .allocated(0, self.size(), true)?
            .iter()
            .map(|e| e.len)
            .sum())
    }

    /// Clients other than this process's connection that have the image
    /// open (each open handle watches the image header).
    pub fn other_clients(&self) -> Result<Vec<Watcher>> {
        let me = self.cluster.instance_id();
        Ok(self
            .image
            .watchers()?
            .into_iter()
            .filter(|w| u64::try_from(w.id).ok() != Some(me))
            .collect())
    }

    fn io_err(&self, op: &'static str, offset: u64, e: RbdError) -> ferry_core::Error {
        match e {
            RbdError::Call { errno, .. } => ferry_core::Error::volume_io(
                op,
                &self.name,
                offset,
                std::io::Error::from_raw_os_error(errno),
            ),
            other => other.into_core(op, &self.name),
        }
    }
}

/// Copies image metadata (key/values such as `conf_*` overrides) from one
/// image to another, except ferry's own keys. Returns how many were copied.
pub fn copy_metadata(from: &RbdVolume, to: &RbdVolume) -> Result<usize> {
    let mut n = 0;
    for (k, v) in from.image.metadata_list()? {
        if k.starts_with(FERRY_KEY_PREFIX) {
            continue;
        }
        to.image.metadata_set(&k, &v)?;
        n += 1;
    }
    Ok(n)
}

impl Volume for RbdVolume {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn resize(&self, size: u64) -> ferry_core::Result<()> {
        self.image
            .resize(size)
            .map_err(|e| ferry_core::Error::CannotResize {
                volume: self.name.clone(),
                why: e.to_string(),
            })?;
        self.size.store(size, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn object_size(&self) -> u64 {
        1 << self.order
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> ferry_core::Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        self.image
            .read(buf, offset)
            .map_err(|e| self.io_err("read", offset, e))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> ferry_core::Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        self.image
            .write(buf, offset)
            .map_err(|e| self.io_err("write", offset, e))
    }

    fn flush(&self) -> ferry_core::Result<()> {
        self.image.flush().map_err(|e| self.io_err("flush", 0, e))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> ferry_core::Result<()> {
        check_range(self.size(), offset, len)?;
        self.image
            .write_zeroes(offset, len)
            .map_err(|e| self.io_err("write zeroes", offset, e))
    }

    fn discard(&self, offset: u64, len: u64) -> ferry_core::Result<()> {
        // See the module docs: rbd_discard may leave data behind.
        self.write_zeroes(offset, len)
    }

    fn allocated(&self, offset: u64, len: u64) -> ferry_core::Result<Vec<Extent>> {
        check_range(self.size(), offset, len)?;
        self.image
            .allocated(offset, len, true)
            .map_err(|e| self.io_err("list allocated extents of", offset, e))
    }
}
