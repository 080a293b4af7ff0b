//! The SCSI block-command layer the front-ends share.
//!
//! [`cdb`] parses command descriptor blocks into typed [`cdb::Command`]s,
//! checking lengths and fields; [`exec`] carries a command out against a
//! [`ferry_core::Volume`] and answers with data or [`sense::Sense`]. Nothing
//! here knows about tgtd or tcmu-runner, so every command is unit-tested
//! from literal bytes. Opcodes the SCSI cores answer themselves (INQUIRY,
//! MODE SENSE, READ CAPACITY, REPORT LUNS, ...) are not handled here.
#![forbid(unsafe_code)]

pub mod alua;
pub mod cache;
pub mod cdb;
pub mod exec;
pub mod qos;
pub mod sense;

pub use cache::CacheMode;
pub use cdb::{parse, Command};
pub use exec::{execute, LunContext};
pub use sense::Sense;

/// The largest size a LUN may be given: 2^56 bytes (64 PiB), far past
/// any backend here, so a typo of a few digits is refused, not tried.
/// The cluster map's LUN size and an online resize are held to it.
pub const MAX_LUN_SIZE: u64 = 1 << 56;
