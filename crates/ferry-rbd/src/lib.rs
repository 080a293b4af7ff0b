//! ferry's Ceph RBD backend: an RBD image is a `ferry_core::Volume`, and
//! the migration metadata lives in the image and its pool
//! (`ferry_core::MetaStore`), so a migration between pools or clusters
//! is the same engine run as between files.
//!
//! Specs are `rbd:<pool>/<image>[@<snap>][?conf=PATH&id=NAME&keyring=PATH]`
//! (`RbdSpec`). `RbdVolume` opens or creates an image (a target takes its
//! source's object size, features and striping), `RbdMetaStore` keeps the
//! record and source marker in image metadata and the region index in a
//! RADOS object, and `precheck` refuses migrations that could not finish.
//!
//! Everything sits behind the `rbd` feature, off by default, because it
//! links librbd and librados (Debian's librbd-dev and librados-dev): without
//! the feature this crate is empty and the workspace builds anywhere.
//!
//! Layering: `ferry-rbd-sys` holds the generated bindings; `rados.rs` and
//! `image.rs` are the only places that call them, each call in an `unsafe`
//! block with its `SAFETY:` reasoning, and turn negative errno into
//! `RbdError`s naming the operation and the object; the rest is safe Rust
//! on top.
#[cfg(feature = "rbd")]
mod error;
#[cfg(feature = "rbd")]
pub mod fence;
#[cfg(feature = "rbd")]
mod image;
#[cfg(feature = "rbd")]
pub mod precheck;
#[cfg(feature = "rbd")]
mod rados;
#[cfg(feature = "rbd")]
mod spec;
#[cfg(feature = "rbd")]
mod store;
#[cfg(feature = "rbd")]
mod volume;

#[cfg(feature = "rbd")]
pub use error::{RbdError, Result};
#[cfg(feature = "rbd")]
pub use image::{
    clone_image, create_image, image_exists, remove_image, CreateOptions, Image, ImageStat, Locker,
    SnapInfo, Watcher,
};
#[cfg(feature = "rbd")]
pub use precheck::{precheck_migration, PrecheckReport};
#[cfg(feature = "rbd")]
pub use rados::{Cluster, ClusterStat, ConnectOptions, IoCtx, PoolStat};
#[cfg(feature = "rbd")]
pub use spec::{RbdSpec, SCHEME};
#[cfg(feature = "rbd")]
pub use store::{RbdMetaStore, FERRY_KEY_PREFIX, INDEX_PREFIX, MARKER_KEY, RECORD_KEY};
#[cfg(feature = "rbd")]
pub use volume::{copy_metadata, RbdVolume};
