//! Ceph RBD images: `rbd:pool/image[@snap][?conf=/path/ceph.conf&id=admin&keyring=/path]`
//! (`ferry_rbd::RbdSpec`; its `Display` is the canonical spec).
//!
//! One image handle per image and process: data, metadata and snapshots
//! go through the handle the volume was opened with, since a second
//! handle would fight over the image's exclusive lock and look like
//! another client. The backend therefore keeps the volumes it opened
//! ([`OPENED`]): an operation handed back one of them as a `&dyn Volume`
//! (the source of a migration, the volume a LUN serves) finds its
//! [`RbdVolume`] there by identity, and any other volume (a file, a
//! migrating volume in front of an image) is simply not one of its own.
//!
//! Snapshots are native, protected so they can be cloned; a restore is
//! redirect-on-write (see [`crate::snapshot`]).
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use ferry_core::migrate::Opened;
use ferry_core::{Error, MetaStore, Result, SourceMarker, Volume};
use ferry_file::Access;
use ferry_rbd::{RbdError, RbdSpec, RbdVolume};

use super::{Backend, BackendSpec, SpecText};
use crate::lun::Lun;
use crate::snapshot::{SnapshotInfo, SnapshotOp};
use crate::spec::VolumeSpec;

/// The RBD backend.
pub(crate) struct Rbd;

impl Backend for Rbd {
    fn scheme(&self) -> &'static str {
        "rbd"
    }

    fn parse(&self, text: &SpecText<'_>) -> Result<Arc<dyn BackendSpec>> {
        let spec = RbdSpec::parse(text.trimmed).map_err(|e| e.into_core("parse", text.trimmed))?;
        Ok(Arc::new(ImageSpec(spec)))
    }
}

/// The volumes this backend opened or created in this process, alive or
/// not (dead entries are dropped at the next open). A `Weak` keeps its
/// allocation, so no other volume can appear at the address of one listed.
static OPENED: Mutex<Vec<Weak<RbdVolume>>> = Mutex::new(Vec::new());

/// Lists `vol` among the volumes this backend handed out.
fn hand_out(vol: RbdVolume) -> Arc<RbdVolume> {
    let vol = Arc::new(vol);
    let mut opened = OPENED.lock().unwrap_or_else(PoisonError::into_inner);
    opened.retain(|w| w.strong_count() > 0);
    opened.push(Arc::downgrade(&vol));
    vol
}

/// The image `vol` is, if this backend handed it out. `vol` is the volume
/// itself (`Arc::as_ref` of what was handed out), not an `Arc` of it seen
/// through `Volume for Arc<T>`.
fn own(vol: &dyn Volume) -> Option<Arc<RbdVolume>> {
    let opened = OPENED.lock().unwrap_or_else(PoisonError::into_inner);
    opened
        .iter()
        .find(|w| std::ptr::addr_eq(w.as_ptr(), vol))
        .and_then(Weak::upgrade)
}

fn rbd_err<'a>(op: &'static str, what: &'a str) -> impl FnOnce(RbdError) -> Error + 'a {
    move |e| e.into_core(op, what)
}

/// The volume and its metadata store, which shares its image handle.
fn opened(vol: Arc<RbdVolume>) -> Opened {
    let store: Arc<dyn MetaStore> = Arc::new(vol.meta_store());
    (vol, store)
}

/// An image (or a snapshot of one, read-only).
struct ImageSpec(RbdSpec);

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl BackendSpec for ImageSpec {
    fn backend(&self) -> &'static dyn Backend {
        &Rbd
    }

    /// Holds the image's exclusive lock (`ferry_rbd::Image::hold_exclusive`)
    /// for `Access::Exclusive`, unless it names a snapshot.
    fn open(&self, access: Access) -> Result<Opened> {
        let s = &self.0;
        let what = s.to_string();
        let vol = RbdVolume::open(s).map_err(rbd_err("open", &what))?;
        if access == Access::Exclusive && s.snap.is_none() {
            vol.image()
                .hold_exclusive()
                .map_err(rbd_err("lock", &what))?;
        }
        Ok(opened(hand_out(vol)))
    }

    /// Opens the image (a handle of its own).
    fn store(&self) -> Result<Arc<dyn MetaStore>> {
        let store =
            ferry_rbd::RbdMetaStore::open(&self.0).map_err(rbd_err("open", &self.0.to_string()))?;
        Ok(Arc::new(store))
    }

    /// Shares `vol`'s image handle when this backend opened it.
    fn store_of(&self, vol: &dyn Volume) -> Result<Arc<dyn MetaStore>> {
        match own(vol) {
            Some(rbd) => Ok(Arc::new(rbd.meta_store())),
            None => self.store(),
        }
    }

    fn exists(&self) -> Result<bool> {
        let s = &self.0;
        let what = s.to_string();
        let cluster =
            ferry_rbd::Cluster::connect(&s.connect_options()).map_err(rbd_err("connect", &what))?;
        let io = cluster
            .ioctx(&s.pool)
            .map_err(rbd_err("open pool", &what))?;
        ferry_rbd::image_exists(&io, &s.image).map_err(rbd_err("look up", &what))
    }

    /// Copies the object size, features, striping and image metadata of
    /// `like` when it is an image this backend opened.
    fn create(&self, size: u64, like: Option<&dyn Volume>) -> Result<Opened> {
        let s = &self.0;
        let what = s.to_string();
        let like = like.and_then(own);
        let vol = RbdVolume::create(s, size, like.as_deref()).map_err(rbd_err("create", &what))?;
        // The creator is its only writer from the start.
        if let Err(e) = vol.image().hold_exclusive() {
            let io = vol.image().ioctx().clone();
            drop(vol);
            let _ = ferry_rbd::remove_image(&io, &s.image);
            return Err(e.into_core("lock", &what));
        }
        if let Some(src) = like {
            let n =
                ferry_rbd::copy_metadata(&src, &vol).map_err(rbd_err("copy metadata to", &what))?;
            log::info!("{what}: copied {n} image metadata keys from {}", src.spec());
        }
        Ok(opened(hand_out(vol)))
    }

    /// Blocklists the image's other clients and breaks their lock, and,
    /// while it migrates, its target's.
    fn fence_other_clients(&self) -> Result<Vec<String>> {
        let what = self.0.to_string();
        let mut fenced =
            ferry_rbd::fence::fence_other_clients(&self.0).map_err(rbd_err("fence", &what))?;
        if let Some(m) = self.store()?.load_source_marker()? {
            let target = VolumeSpec::parse(&m.target)?;
            if target.to_string() != what {
                fenced.extend(target.fence_other_clients()?);
            }
        }
        Ok(fenced)
    }

    /// The image's watchers besides this process.
    fn other_clients(&self) -> Result<Vec<String>> {
        ferry_rbd::fence::other_clients(&self.0)
            .map_err(rbd_err("list clients of", &self.0.to_string()))
    }

    /// The seed's prechecks (`ferry_rbd::precheck_migration`), for an image
    /// this backend opened migrating to another image.
    fn precheck(&self, source: &dyn Volume, target: &VolumeSpec) -> Result<()> {
        let Some(src) = own(source) else {
            return Ok(());
        };
        if target.scheme() != Rbd.scheme() {
            return Ok(());
        }
        // The canonical spec, which `RbdSpec::parse` reads back unchanged.
        let what = target.to_string();
        let t = RbdSpec::parse(&what).map_err(rbd_err("parse", &what))?;
        ferry_rbd::precheck_migration(&src, &t)
            .and_then(|r| r.ensure_ok())
            .map_err(rbd_err("precheck migration to", &what))
    }

    /// Cluster fsid, pool, image name and id, order, features and striping
    /// (`RbdVolume::identity`), when this backend opened `vol`.
    fn identity(&self, vol: &dyn Volume) -> BTreeMap<String, String> {
        own(vol).and_then(|r| r.identity().ok()).unwrap_or_default()
    }

    fn snapshot(&self, lun: &Lun, op: &SnapshotOp, name: &str) -> Result<Vec<SnapshotInfo>> {
        snapshot(lun, &self.0, op, name)
    }
}

/// Snapshots of the image `spec`, which `lun` serves; see
/// [`crate::snapshot`].
fn snapshot(lun: &Lun, spec: &RbdSpec, op: &SnapshotOp, name: &str) -> Result<Vec<SnapshotInfo>> {
    let what = spec.to_string();
    let what = what.as_str();
    let rbd = move |op: &'static str| move |e: RbdError| e.into_core(op, what);
    let image_of = |vol: &Arc<dyn Volume>| -> Result<Arc<ferry_rbd::Image>> {
        own(vol.as_ref())
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
        SnapshotOp::List => lun.quiesced(|vol| {
            let image = image_of(vol)?;
            Ok((list(&image)?, None))
        }),
        SnapshotOp::Delete => lun.quiesced(|vol| {
            image_of(vol)?
                .snap_remove_protected(name)
                .map_err(rbd("deleting a snapshot of"))?;
            Ok((Vec::new(), None))
        }),
        SnapshotOp::Create => lun.quiesced(|vol| {
            vol.flush()?;
            let image = image_of(vol)?;
            image
                .snap_create_protected(name)
                .map_err(rbd("snapshotting"))?;
            log::info!("{}: snapshot {name} taken", lun.spec());
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
            let clone_spec = VolumeSpec::from_backend(Arc::new(ImageSpec(clone.clone())));
            let out = lun.quiesced(|vol| {
                let image = image_of(vol)?;
                if !image
                    .snap_list()
                    .map_err(rbd("listing snapshots of"))?
                    .iter()
                    .any(|s| s.name == name)
                {
                    return Err(Error::BadSpec {
                        spec: name.to_string(),
                        why: format!("no snapshot {name} of {}", spec.short()),
                    });
                }
                vol.flush()?;
                image
                    .snap_create_protected(&safety)
                    .map_err(rbd("snapshotting"))?;
                ferry_rbd::clone_image(&image, name, image.ioctx(), &clone.image)
                    .map_err(rbd("cloning"))?;
                let (new_vol, new_store) = clone_spec.open()?;
                // From now on the configured name leads to the clone,
                // and the reservations go with it.
                let store = lun.served().store_of(vol.as_ref())?;
                lun.move_reservations(new_store, || {
                    store.store_source_marker(&SourceMarker {
                        target: clone_spec.to_string(),
                        committed: true,
                    })
                })?;
                log::info!(
                    "{}: restored snapshot {name} as clone {} (previous state kept as {safety})",
                    lun.spec(),
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
            lun.set_served(clone_spec);
            Ok(out)
        }
    }
}
