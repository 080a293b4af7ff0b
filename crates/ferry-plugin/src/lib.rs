//! What ferry's two plugins share around their own ABI declarations:
//! `bs_ferry.so` (`handler/tgt`, a tgtd backing store) and
//! `handler_ferry.so` (`handler/tcmu`, a tcmu-runner handler) are both
//! loaded into a C process they must never crash or unwind into, call
//! back into it through symbols looked up at run time, log into its log,
//! and run commands on worker threads of their own.
//!
//! - [`Resolver`]: the host's functions and globals, looked up with
//!   `dlsym` when the plugin first needs them. Each plugin keeps its own
//!   list of symbols and their C types (its `ffi.rs`); a missing one is
//!   an [`Error`] naming it, never a failed `dlopen`.
//! - [`boundary`]: the panic boundary every exported function runs its
//!   body in (a panic becomes an error value for the host).
//! - [`logger`]: the `log` facade forwarded to the host's logger; the
//!   plugin supplies the call into its host's printf-like function.
//! - [`block_signals`]: the mask of the plugin's own threads, so signals
//!   sent to the process reach the host's threads (whose handlers expect
//!   them), never ours.
//! - [`Pool`]: worker threads taking jobs from a channel, shared by all
//!   of a plugin's LUNs.
//! - [`delay::Delayer`]: holds commands of a LUN over its QoS limit back
//!   until their time, off the workers;
//! - [`EventFd`]: a counter worker threads poke to wake a host's event
//!   loop (tgtd completes commands only on its main thread).
//!
//! All of the crate's `unsafe` code is in `ffi.rs`; every other module
//! forbids it.
#![deny(unsafe_code)]

mod boundary;
pub mod delay;
mod error;
mod ffi;
pub mod logger;
mod pool;

pub use boundary::boundary;
pub use error::Error;
pub use ffi::{block_signals, EventFd, Resolver};
pub use pool::{Pool, Task};
