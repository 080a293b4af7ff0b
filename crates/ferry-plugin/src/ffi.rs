//! The crate's `unsafe` code: looking symbols up in the host process,
//! the signal mask of the plugins' threads, and an eventfd.
#![allow(unsafe_code)]

use std::ffi::{c_void, CStr};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::Error;

/// Looks up the functions and globals of the process a plugin was loaded
/// into.
///
/// A plugin resolves its host's symbols when it first needs them rather
/// than linking them: it then loads (and reports which symbol is missing)
/// even in a host it does not fit, and its rlib links into ordinary test
/// binaries. The lookup is `dlsym(RTLD_DEFAULT)`, the global scope: the
/// host executable's exported symbols (tgtd is linked with `-E`;
/// tcmu-runner exports its `tcmur_*` functions through a dynamic list)
/// and the libraries loaded with `RTLD_GLOBAL` (libtcmu), whatever scope
/// the plugin itself was loaded with (tcmu-runner uses `RTLD_LOCAL`).
#[derive(Debug, Clone, Copy)]
pub struct Resolver {
    host: &'static str,
}

impl Resolver {
    /// A resolver for the host `host` names (as errors show it: `tgtd`).
    pub const fn new(host: &'static str) -> Resolver {
        Resolver { host }
    }

    /// The address of the symbol `name`.
    pub fn address(&self, name: &CStr) -> Result<NonNull<c_void>, Error> {
        // SAFETY: dlsym with RTLD_DEFAULT only searches the global scope;
        // `name` is a valid C string. A null result becomes an error and
        // is never used.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        NonNull::new(p).ok_or_else(|| Error::MissingSymbol {
            host: self.host,
            name: name.to_string_lossy().into_owned(),
        })
    }

    /// The host's function `name`, as the function pointer type `F`
    /// (usually inferred from the field it is stored in).
    ///
    /// # Safety
    /// `F` is a function pointer type (`unsafe extern "C" fn(..) -> ..`)
    /// whose signature is the C signature of the host's function `name`.
    pub unsafe fn function<F: Copy>(&self, name: &CStr) -> Result<F, Error> {
        const {
            assert!(
                size_of::<F>() == size_of::<*mut c_void>(),
                "F must be a function pointer type"
            )
        };
        let p = self.address(name)?.as_ptr();
        // SAFETY: `p` is the non-null address of the function `name`;
        // per the contract `F` is a pointer to a function of its
        // signature, which has the size of a data pointer (checked above)
        // and, as POSIX requires for dlsym, the same representation.
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
    }

    /// The address of the host's global variable `name`, of C type `T`
    /// (dereferencing it is the caller's business).
    pub fn global<T>(&self, name: &CStr) -> Result<NonNull<T>, Error> {
        Ok(self.address(name)?.cast())
    }
}

/// Blocks every signal on the calling thread.
///
/// Signals sent to the process (tgtd's SIGUSR2 and its SIGTERM/SIGINT
/// handling, tcmu-runner's SIGTERM, SIGINT and SIGHUP) are delivered to
/// some thread that does not block them; the plugins' own threads must
/// never be that thread, as the hosts' handlers and `signalfd`s expect to
/// see them on their own threads. Every [`crate::Pool`] worker calls
/// this first, whatever mask it inherited from the thread that started
/// the pool.
pub fn block_signals() {
    // SAFETY: sigfillset initialises the set (all-zero bytes are a valid
    // sigset_t to start from); pthread_sigmask changes only this thread's
    // mask and accepts a null old set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// A non-blocking eventfd: worker threads [`notify`](EventFd::notify)
/// it, and a host's event loop watching it for input (tgtd's epoll loop,
/// through `tgt_event_add`) [`drain`](EventFd::drain)s it and collects
/// what the workers queued for it.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new eventfd, its counter at 0 (close-on-exec, non-blocking).
    pub fn new() -> Result<EventFd, Error> {
        // SAFETY: a plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::EventFd(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a descriptor just opened, owned by nothing else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one to the counter, making the fd readable. A full counter
    /// (EAGAIN) leaves it readable too, so the result needs no check.
    pub fn notify(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes the 8 bytes of a valid buffer to our own fd.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Resets the counter, returning what it was (0 when nothing was
    /// pending: the read fails with EAGAIN).
    pub fn drain(&self) -> u64 {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a valid buffer of 8 from our
        // own (non-blocking) fd.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 8 {
            u64::from_ne_bytes(buf)
        } else {
            0
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Strlen = unsafe extern "C" fn(*const std::ffi::c_char) -> usize;

    #[test]
    fn resolver_finds_the_process_functions() {
        // libc is in every test binary's global scope.
        let r = Resolver::new("this test");
        // SAFETY: strlen's C signature is `size_t strlen(const char *)`.
        let strlen: Strlen = unsafe { r.function(c"strlen") }.unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { strlen(c"ferry".as_ptr()) }, 5);
    }

    #[test]
    fn a_missing_symbol_is_an_error_naming_it() {
        let r = Resolver::new("this test");
        let err = r.address(c"ferry_no_such_symbol").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ferry_no_such_symbol is not exported by this test"
        );
        // SAFETY: never called: the lookup fails.
        let f: Result<Strlen, _> = unsafe { r.function(c"ferry_no_such_symbol") };
        assert!(matches!(f, Err(Error::MissingSymbol { .. })));
    }

    #[test]
    fn block_signals_masks_the_hosts_signals() {
        std::thread::spawn(|| {
            block_signals();
            // SAFETY: reads this thread's mask into a zeroed set.
            let blocked = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
                [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2]
                    .map(|s| libc::sigismember(&set, s) == 1)
            };
            assert_eq!(blocked, [true; 4]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn eventfd_counts_notifications_until_drained() {
        let efd = EventFd::new().unwrap();
        assert_eq!(efd.drain(), 0);
        efd.notify();
        efd.notify();
        assert_eq!(efd.drain(), 2);
        assert_eq!(efd.drain(), 0);
    }
}
