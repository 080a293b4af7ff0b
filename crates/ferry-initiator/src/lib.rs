//! A real iSCSI initiator for ferry's tests and benchmarks, built on
//! libiscsi.
//!
//! ferry serves LUNs through tgt; to test what an initiator sees (data,
//! sense codes, behaviour under load and across a target crash) the tests
//! need an initiator that speaks real iSCSI over TCP without a kernel
//! initiator, root-only `iscsiadm` state or block devices. libiscsi is
//! that: a user-space initiator with sync and async APIs.
//!
//! - [`Session`] (`session.rs`): one logged-in connection to one LUN, with
//!   typed sync commands, a raw-CDB escape hatch and an async
//!   submit/service API. All `unsafe` code of the crate lives there (and
//!   in the generated `sys` bindings).
//! - [`load`]: the verifying load generator and its after-crash log check.
//! - [`region`] and [`pattern`]: deterministic data to write and verify.
//!
//! The `ferry-iscsi` binary is the command-line face of all of this.
#![deny(unsafe_code)]

pub mod error;
pub mod load;
pub mod pattern;
pub mod region;
pub mod scsi;
#[allow(unsafe_code)]
mod session;
#[allow(unsafe_code)]
mod sys;

pub use error::{Error, Result};
pub use load::{read_log, run_load, verify_log, LoadConfig, LoadSummary, VerifySummary};
pub use region::{verify_pattern, write_pattern, PatternCheck, Region};
pub use scsi::{Designator, DeviceId, ScsiOutcome, ScsiStatus, Sense};
pub use session::{Completion, ConnectOptions, Session, DEFAULT_INITIATOR, MAX_TRANSFER};
