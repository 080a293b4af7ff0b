//! ferry's migration engine.
//!
//! A [`Volume`] is a byte-addressed block store (a local file, an RBD image,
//! ...). A [`MigratingVolume`] is itself a `Volume` built from a *source* and a
//! *target*: it routes each I/O per region through a persistent
//! [`RegionIndex`], while a [`Copier`] streams the regions across in the
//! background. Front-ends (tgt, tcmu-runner) only ever see a `Volume`, so a
//! LUN keeps serving while its data moves underneath it.
//!
//! The crate is plain safe Rust: every backend and every piece of durable
//! metadata is reached through the [`Volume`] and [`MetaStore`] traits, which
//! is also how the tests inject crashes (see the `sim` module).
#![forbid(unsafe_code)]

pub mod copier;
pub mod error;
pub mod faults;
pub mod index;
pub mod locks;
pub mod migrate;
pub mod pace;
pub mod pattern;
pub mod record;
pub mod share;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod store;
pub mod volume;

pub use copier::{Copier, CopierConfig, CopierControl, Progress};
pub use error::{Error, Result};
pub use index::RegionIndex;
pub use migrate::{MigratingVolume, MigrationPlan};
pub use record::{MigrationRecord, MigrationState};
pub use store::{MetaStore, SourceMarker};
pub use volume::{Extent, Volume};

/// Default region (object) size: 4 MiB, the RBD default object size, so one
/// index bit covers one RADOS object when the backend is Ceph.
pub const DEFAULT_REGION_SIZE: u64 = 4 << 20;
