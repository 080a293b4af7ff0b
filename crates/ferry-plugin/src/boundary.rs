//! The panic boundary of the plugins' exported functions.
//!
//! A panic must never unwind into the host's C frames (that is undefined
//! behaviour, and at best kills tgtd or tcmu-runner with every LUN it
//! serves). Every function a host calls runs its body through
//! [`boundary`] first, and answers the host with an error value of its
//! own ABI when the body panicked.
#![forbid(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning a panic into `on_panic` (logged as "`what`
/// panicked"), never unwinding out.
///
/// `f` is not required to be unwind-safe: what a panicking body leaves
/// behind (a half-updated LUN) is the same whether the panic is caught
/// here or the process aborts, and catching it keeps the host serving
/// its other LUNs.
pub fn boundary<T>(what: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::error!("{what} panicked");
        on_panic
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_returns_the_bodys_value() {
        assert_eq!(boundary("body", -1, || 7), 7);
    }

    #[test]
    fn boundary_turns_a_panic_into_the_error_value() {
        assert_eq!(boundary("body", -1, || panic!("boom")), -1);
    }
}
