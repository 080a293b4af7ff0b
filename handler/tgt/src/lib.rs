//! `bs_ferry.so`: a tgtd backing store serving ferry volumes.
//!
//! ```text
//! tgtadm --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 \
//!        --bstype ferry --backing-store file:/srv/vol.img
//! ```
//!
//! The backing-store string is a ferry volume spec. The LUN opens whatever
//! the spec names now (following a migration in progress, which resumes
//! with its copier, or a committed one), so a LUN configured once keeps
//! serving the same data through migrations and tgtd restarts. Migrations
//! are started and steered with `ferry migrate ...` through the control
//! socket this tgtd opens (`/run/ferry/ferry-<pid>.sock`).
//!
//! Layout:
//! - [`ffi`]: hand-written declarations of tgtd's structs (pinned by
//!   layout tests) and its functions, resolved with `dlsym` at load;
//! - [`shim`]: the functions tgtd calls (`register_bs_module`, the `bs_*`
//!   callbacks, the opcode-table hooks, the completions' event handler):
//!   panic boundary, pointer checks, one call into safe Rust, results
//!   written back. All `unsafe` code is in these two; every other module
//!   forbids it;
//! - [`lun`]: an LU's slot: `--bsopts`, opening, registering and closing
//!   its LUN;
//! - [`optable`]: what the LU's opcode-table hooks do: persistent
//!   reservations answered by ferry, GET LBA STATUS, COMPARE AND WRITE;
//! - [`runtime`]: the worker pool commands run on, and the eventfd that
//!   brings their completions back to tgtd's main thread;
//! - [`Error`]: why an LU is refused.
//!
//! What the tcmu plugin needs as well (symbol lookup, the panic boundary,
//! logging into the host, the workers' signal mask and pool) comes from
//! `ferry_plugin`.
#![deny(unsafe_code)]

mod error;
pub mod ffi;
pub mod lun;
pub mod optable;
pub mod runtime;
pub mod shim;

pub use error::Error;
