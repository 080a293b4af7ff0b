//! Hosting: everything between a front-end (tgt, tcmu-runner, the `ferry`
//! command) and the engine.
//!
//! - [`spec`]: parse the volume specs admins write, open and create volumes;
//! - `backend`: what each kind of volume (files, RBD images) does behind a
//!   spec: open, create, fence, snapshot;
//! - [`command`]: the one command path both front-ends call,
//!   [`Lun::execute`];
//! - [`lun`]: a served LUN whose volume can start migrating, and finish,
//!   underneath the front-end;
//! - [`port`]: a LUN at one gateway's ALUA target port: active with its
//!   volume open, or standby without opening it;
//! - [`qos`]: per-LUN IOPS and bandwidth limits (token buckets);
//! - [`resize`]: a served LUN grown (or, forced, shrunk) online;
//! - [`reservations`]: where a LUN's persistent reservations are saved
//!   (with the volume, or wherever its slot points: the ZooKeeper map);
//! - [`relay`]: how the target plugins reach reservations kept in the map,
//!   through the node's agent, without a ZooKeeper client of their own;
//! - [`metrics`]: what each LUN's commands and migration did, counted
//!   without locks and served to Prometheus;
//! - [`snapshot`]: snapshots taken and restored while a LUN is served;
//! - [`control`]: the Unix-socket control path the `ferry` CLI uses to reach
//!   whichever process serves a LUN.
#![forbid(unsafe_code)]

mod backend;
pub mod command;
pub mod control;
mod error;
pub mod lun;
pub mod metrics;
pub mod port;
pub mod qos;
pub mod relay;
pub mod reservations;
pub mod resize;
pub mod snapshot;
mod socket;
pub mod spec;

pub use control::{ControlServer, Registry, Request, Response};
pub use error::HostError;
pub use ferry_pr;
pub use ferry_pr::{Nexus, Refusal};
pub use ferry_scsi;
pub use lun::{default_homes, set_default_homes, Lun, OpenOptions, StartOptions};
pub use port::LunPort;
pub use spec::VolumeSpec;
