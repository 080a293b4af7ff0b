//! `handler_ferry.so`: a tcmu-runner handler serving ferry volumes through
//! LIO, so a Linux kernel target (iSCSI, or any LIO fabric) serves a LUN
//! whose volume can be migrated live.
//!
//! ```text
//! targetcli /backstores/user:ferry create name=lun0 size=1G cfgstring=/srv/vol0.img
//! ferry migrate start /srv/vol0.img /fast/vol0.img   # live, no targetcli change
//! ```
//!
//! tcmu-runner (Debian 12's 1.5.4) loads every `handler_*.so` in its
//! handler directory and calls `handler_init`, which registers the `ferry`
//! subtype. A backstore's cfgstring is a ferry volume spec
//! ([`config`]); its LUN opens whatever the spec names now (following a
//! migration in progress, which resumes with its copier, or a committed
//! one), so a backstore configured once keeps serving the same data
//! through migrations and tcmu-runner restarts. Migrations are steered
//! with `ferry migrate ...` through the control socket this tcmu-runner
//! opens (`$FERRY_RUN_DIR/ferry-<pid>.sock`, default `/run/ferry`).
//!
//! Layout:
//! - [`ffi`]: hand-written declarations of tcmu-runner's structs (pinned
//!   by layout tests) and its functions, resolved with `dlsym` at load;
//! - [`shim`]: the exported functions: panic boundary, pointer checks,
//!   one call into safe Rust. All `unsafe` code is in these two; every
//!   other module forbids it;
//! - [`config`]: the cfgstring;
//! - [`device`]: open (size checks), close, resize, the control socket;
//! - [`exec`]: reads, writes, flushes, unmaps and CDBs (via `ferry_scsi`)
//!   against the LUN, with errors mapped to TCMU status or sense;
//! - [`pool`]: the worker threads the callouts queue commands to, so a
//!   device's commands run in parallel and complete asynchronously;
//! - [`Error`]: why a cfgstring, an open or a reconfig is refused.
//!
//! What the tgt plugin needs as well (symbol lookup, the panic boundary,
//! logging into the host, the workers' signal mask and pool) comes from
//! `ferry_plugin`.
//!
//! Per-device state is a `Box<Arc<DevState>>` stored with
//! `tcmur_dev_set_private` in `open` and reclaimed in `close`.

#![deny(unsafe_code)]

pub mod config;
pub mod device;
mod error;
pub mod exec;
pub mod ffi;
pub mod pool;
pub mod shim;

pub use error::Error;
