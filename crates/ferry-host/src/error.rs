//! ferry-host's errors.
use thiserror::Error;

/// What hosting a LUN can fail with, beyond the engine's own errors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HostError {
    #[error(transparent)]
    Engine(#[from] ferry_core::Error),
    /// The geometry a front-end asked for does not fit the volume.
    #[error("{lun}: {why}")]
    Geometry { lun: String, why: String },
    #[error(transparent)]
    Reservations(#[from] ferry_pr::PrError),
}
