//! Hosting: everything between a front-end (tgt, tcmu-runner, the `ferry`
//! command) and the engine.
//!
//! - [`spec`]: parse the volume specs admins write, open and create volumes;
//! - [`lun`]: a served LUN whose volume can start migrating, and finish,
//!   underneath the front-end;
//! - [`pr_home`]: where a LUN's persistent reservations are saved (with
//!   the volume, or in the ZooKeeper map);
//! - [`snapshot`]: snapshots taken and restored while a LUN is served;
//! - [`control`]: the Unix-socket control path the `ferry` CLI uses to reach
//!   whichever process serves a LUN.
#![forbid(unsafe_code)]

pub mod control;
pub mod lun;
pub mod pr_home;
pub mod snapshot;
pub mod spec;

pub use control::{ControlServer, Registry, Request, Response};
pub use ferry_pr;
pub use lun::{Lun, StartOptions};
pub use spec::VolumeSpec;
