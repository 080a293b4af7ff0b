//! The plugin's I/O runtime: a pool of worker threads executing commands
//! and an eventfd through which completions return to tgtd's main thread.
//!
//! tgtd calls `bs_cmd_submit` on its single main thread and requires
//! `target_cmd_io_done` on that same thread. Workers therefore never touch
//! tgtd: they run the command against the volume, queue the result and
//! poke the eventfd; the eventfd's handler (registered with
//! `tgt_event_add`, so it runs in tgtd's epoll loop) sets status and sense
//! and completes each command. Commands of one LUN run in parallel on all
//! workers: nothing serializes a LUN.
use std::ffi::{c_int, c_void};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{Receiver, Sender};
use ferry_pr::Refusal;
use ferry_scsi::{LunContext, Sense};
use parking_lot::Mutex;

use crate::ffi::{self, ScsiCmd};
use crate::LunState;

/// A command pointer handed between threads. tgtd keeps the command (and
/// its buffers) alive and untouched until we call `target_cmd_io_done`.
pub struct CmdPtr(pub *mut ScsiCmd);
// SAFETY: see above: exactly one thread works on a command at a time
// (main thread at submit, one worker, main thread at completion), and the
// hand-offs go through channels, which order the memory accesses.
unsafe impl Send for CmdPtr {}

/// A raw buffer of a command (data-in or data-out).
pub struct RawBuf {
    pub ptr: *mut u8,
    pub len: usize,
}
// SAFETY: the buffer belongs to the command and follows it (see CmdPtr).
unsafe impl Send for RawBuf {}

/// One command to run.
pub struct Job {
    pub cmd: CmdPtr,
    /// The nexus that sent it.
    pub nexus: Arc<ferry_pr::Nexus>,
    /// A PERSISTENT RESERVE IN/OUT.
    pub pr: bool,
    pub lun: Arc<LunState>,
    pub cdb: Vec<u8>,
    pub write_cache: bool,
    pub cache_mode: ferry_core::CacheMode,
    pub data_out: RawBuf,
    pub data_in: RawBuf,
}

struct Done {
    cmd: CmdPtr,
    /// Bytes of data-in filled, or why the command failed.
    outcome: Result<usize, Refusal>,
    /// The reply is shorter than the buffer (PR IN, GET LBA STATUS) and
    /// tgtd must be told the residual; for reads and writes tgtd works
    /// residuals out itself from the CDB and the expected length.
    sized_reply: bool,
}

pub struct Runtime {
    jobs: Sender<Job>,
    done: Mutex<Vec<Done>>,
    efd: c_int,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Starts the runtime once; must be called on tgtd's main thread (from
/// `bs_init`), after tgtd has blocked SIGUSR2, so workers inherit a mask
/// that keeps tgtd's signals on its own threads.
pub fn start() -> Result<&'static Runtime, &'static str> {
    RUNTIME.get_or_init(init).as_ref().map_err(|e| e.as_str())
}

fn init() -> Result<Runtime, String> {
    let tgtd = ffi::tgtd().map_err(str::to_string)?;
    // SAFETY: plain syscall; the result is checked.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `nr_iothreads` is tgtd's global int (resolved by name).
    let wanted = unsafe { *tgtd.nr_iothreads };
    // tgtd's default is 16 threads per LU; ferry's pool is shared by all
    // LUNs, so bound it by what two to a few dozen cores can use.
    let workers = usize::try_from(wanted).unwrap_or(16).clamp(4, 64);
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    for i in 0..workers {
        let rx: Receiver<Job> = rx.clone();
        std::thread::Builder::new()
            .name(format!("bs_ferry-{i}"))
            .spawn(move || worker(rx))
            .map_err(|e| format!("spawning worker: {e}"))?;
    }
    // SAFETY: registering our handler for the eventfd with tgtd's event
    // loop, on the main thread as tgt_event_add requires.
    let rc =
        unsafe { (tgtd.tgt_event_add)(efd, libc::EPOLLIN, on_completions, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!("tgt_event_add failed ({rc})"));
    }
    log::info!("runtime started: {workers} workers");
    Ok(Runtime {
        jobs: tx,
        done: Mutex::new(Vec::new()),
        efd,
    })
}

impl Runtime {
    pub fn submit(&self, job: Job) {
        if let Err(e) = self.jobs.send(job) {
            // Workers never exit while the sender lives; keep the command
            // from hanging all the same.
            log::error!("no worker takes commands; answering HARDWARE ERROR");
            let job = e.into_inner();
            self.complete(
                job.cmd,
                Err(Refusal::Check(Sense::internal_failure())),
                false,
            );
        }
    }

    fn complete(&self, cmd: CmdPtr, outcome: Result<usize, Refusal>, sized_reply: bool) {
        self.done.lock().push(Done {
            cmd,
            outcome,
            sized_reply,
        });
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd; a full
        // counter (EAGAIN) still leaves the handler readable, so the
        // result is safe to ignore.
        unsafe { libc::write(self.efd, (&one as *const u64).cast(), 8) };
    }
}

fn worker(rx: Receiver<Job>) {
    block_signals();
    // Wait for `init` to publish the runtime: workers start before it
    // returns, and one that gave up here would drop its receiver; with
    // every worker gone, each command failed with HARDWARE ERROR (seen
    // on a loaded machine, where the spawning thread ran last).
    let rt = match RUNTIME.wait() {
        Ok(rt) => rt,
        Err(_) => return,
    };
    while let Ok(job) = rx.recv() {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&job)))
            .unwrap_or_else(|_| {
                log::error!("a command panicked; answering HARDWARE ERROR");
                Err(Refusal::Check(Sense::internal_failure()))
            });
        let sized_reply = job.pr || ferry_scsi::cdb::is_get_lba_status(&job.cdb);
        rt.complete(job.cmd, outcome, sized_reply);
    }
}

/// Keeps process-directed signals (tgtd's SIGUSR2 among them) off our
/// threads, whatever mask we inherited.
fn block_signals() {
    // SAFETY: sigfillset initialises the set; pthread_sigmask changes only
    // this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn run(job: &Job) -> Result<usize, Refusal> {
    // SAFETY: the buffers are the command's data buffers, valid for their
    // lengths until the command completes, and touched by no one else
    // meanwhile (see CmdPtr). Null pointers come with length 0.
    let (data_out, data_in): (&[u8], &mut [u8]) = unsafe {
        (
            if job.data_out.ptr.is_null() {
                &[]
            } else {
                std::slice::from_raw_parts(job.data_out.ptr, job.data_out.len)
            },
            if job.data_in.ptr.is_null() {
                &mut []
            } else {
                std::slice::from_raw_parts_mut(job.data_in.ptr, job.data_in.len)
            },
        )
    };
    let lun = &job.lun.lun;
    if job.pr {
        return match job.cdb.first() {
            Some(&ferry_pr::prin::OPCODE) => lun.pr_in(&job.nexus, &job.cdb, data_in),
            _ => lun.pr_out(&job.nexus, &job.cdb, data_out).map(|()| 0),
        };
    }
    let cmd = match ferry_scsi::parse(&job.cdb).map_err(Refusal::Check)? {
        Some(c) => c,
        None => return Err(Refusal::Check(Sense::invalid_opcode())),
    };
    let ctx = LunContext {
        volume: job.lun.lun.as_ref(),
        block_shift: job.lun.block_shift,
        write_cache: job.write_cache,
        cache_mode: job.cache_mode,
        caw_lock: &job.lun.caw,
    };
    // Checked again here, where it runs: tgtd's main thread checked it at
    // dispatch, but a PR OUT (PREEMPT AND ABORT fencing this host) may
    // have completed since. Holding the gate to the end means no write of
    // a preempted host lands after the preemption was acknowledged.
    lun.pr_checked(&job.nexus, &job.cdb, || {
        ferry_scsi::execute(&ctx, &cmd, data_out, data_in).map_err(Refusal::Check)
    })?
}

/// tgtd event handler for the eventfd: completes finished commands. Runs
/// on tgtd's main thread.
unsafe extern "C" fn on_completions(fd: c_int, _events: c_int, _data: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        let mut counter = 0u64;
        // SAFETY: reading 8 bytes into a valid u64 from our eventfd
        // (non-blocking; EAGAIN just means nothing new).
        unsafe { libc::read(fd, (&mut counter as *mut u64).cast(), 8) };
        let (Some(Ok(rt)), Ok(tgtd)) = (RUNTIME.get(), ffi::tgtd()) else {
            return;
        };
        let batch = std::mem::take(&mut *rt.done.lock());
        for Done {
            cmd,
            outcome,
            sized_reply,
        } in batch
        {
            let cmd = cmd.0;
            // SAFETY: `cmd` is a live command we accepted in bs_cmd_submit
            // and have not completed; we are on tgtd's main thread, where
            // sense_data_build and target_cmd_io_done must run.
            unsafe {
                let result = match outcome {
                    Ok(n) => {
                        (*cmd).sense_len = 0;
                        let len = (*cmd).in_sdb.length;
                        if sized_reply {
                            // What scsi_set_in_resid_by_actual does: the
                            // reply is n bytes of the initiator's buffer
                            // (fewer for PR IN and GET LBA STATUS).
                            let n = u32::try_from(n).unwrap_or(u32::MAX).min(len);
                            (*cmd).in_sdb.transfer_len = n;
                            (*cmd).in_sdb.resid = (len - n) as i32;
                        }
                        ffi::SAM_STAT_GOOD
                    }
                    Err(Refusal::Conflict) => ffi::SAM_STAT_RESERVATION_CONFLICT,
                    Err(Refusal::Check(s)) => {
                        build_sense(tgtd, cmd, &s);
                        ffi::SAM_STAT_CHECK_CONDITION
                    }
                };
                (*cmd).result = result;
                (tgtd.target_cmd_io_done)(cmd, result);
            }
        }
    });
}

/// Puts `s` in `cmd`'s sense data, through tgtd (which knows the LU's
/// sense format).
///
/// # Safety
/// `cmd` is a live command on tgtd's main thread.
pub(crate) unsafe fn build_sense(tgtd: &ffi::Tgtd, cmd: *mut ScsiCmd, s: &Sense) {
    // SAFETY: per the contract.
    unsafe {
        match s.info {
            Some(info) => (tgtd.sense_data_build_with_info)(cmd, s.key, s.asc, info),
            None => (tgtd.sense_data_build)(cmd, s.key, s.asc),
        }
    }
}
