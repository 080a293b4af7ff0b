//! The plugin's I/O runtime: a pool of worker threads executing commands
//! and an eventfd through which completions return to tgtd's main thread.
//!
//! tgtd calls `bs_cmd_submit` on its single main thread and requires
//! `target_cmd_io_done` on that same thread. Workers therefore never touch
//! tgtd: they run the command against the volume, queue the result and
//! poke the eventfd; the eventfd's handler (in the shim, registered with
//! `tgt_event_add`, so it runs in tgtd's epoll loop) takes the finished
//! commands ([`Runtime::finished`]), sets status and sense and completes
//! each. Commands of one LUN run in parallel on all workers: nothing
//! serializes a LUN.
#![forbid(unsafe_code)]

use std::ffi::c_int;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use ferry_plugin::delay::Delayer;
use ferry_plugin::{EventFd, Pool};
use ferry_pr::Refusal;
use ferry_scsi::Sense;
use parking_lot::Mutex;

pub use crate::shim::{CmdPtr, RawBuf};
use crate::Error;

/// One command to run: [`ferry_host::Lun::execute`]'s arguments.
pub struct Job {
    pub cmd: CmdPtr,
    /// The nexus that sent it.
    pub nexus: Arc<ferry_pr::Nexus>,
    pub lun: Arc<ferry_host::Lun>,
    pub cdb: Vec<u8>,
    pub data_out: RawBuf,
    pub data_in: RawBuf,
}

/// A command run, waiting for tgtd's main thread to complete it.
pub struct Done {
    pub cmd: CmdPtr,
    /// Bytes of data-in filled, or why the command failed.
    pub outcome: Result<usize, Refusal>,
    /// The reply is shorter than the buffer (PR IN, GET LBA STATUS) and
    /// tgtd must be told the residual; for reads and writes tgtd works
    /// residuals out itself from the CDB and the expected length.
    pub sized_reply: bool,
}

/// Commands run, and the eventfd that wakes tgtd's main thread for them.
struct Completions {
    done: Mutex<Vec<Done>>,
    wake: EventFd,
}

impl Completions {
    fn push(&self, done: Done) {
        self.done.lock().push(done);
        self.wake.notify();
    }
}

pub struct Runtime {
    pool: Arc<Pool<Job>>,
    completions: Arc<Completions>,
    /// Commands of LUNs over their QoS limits, waiting for their turn
    /// (`ferry_host::qos`), then queued on the workers.
    held: Delayer<Job>,
}

impl Runtime {
    /// Starts the workers, as many as tgtd's `nr_iothreads` (within 4 to
    /// 64). Their completions wait until the shim has tgtd watch
    /// [`Runtime::completion_fd`].
    pub fn start(nr_iothreads: c_int) -> Result<Runtime, Error> {
        // tgtd's default is 16 threads per LU; ferry's pool is shared by
        // all LUNs, so bound it by what two to a few dozen cores can use.
        let workers = usize::try_from(nr_iothreads).unwrap_or(16).clamp(4, 64);
        let completions = Arc::new(Completions {
            done: Mutex::new(Vec::new()),
            wake: EventFd::new()?,
        });
        let queue = completions.clone();
        let pool = Arc::new(Pool::start("bs_ferry", workers, move |job| {
            queue.push(execute(job))
        })?);
        let held = {
            let (pool, completions) = (pool.clone(), completions.clone());
            Delayer::start("bs_ferry-qos", move |job| {
                submit_to(&pool, &completions, job)
            })?
        };
        Ok(Runtime {
            pool,
            completions,
            held,
        })
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.pool.workers()
    }

    /// The fd that becomes readable when commands are done.
    pub fn completion_fd(&self) -> BorrowedFd<'_> {
        self.completions.wake.as_fd()
    }

    /// Queues `job` on the workers, once its LUN's QoS limits let it
    /// (at once under them).
    pub fn submit(&self, job: Job) {
        let wait = job.lun.throttle(&job.cdb);
        if wait.is_zero() {
            submit_to(&self.pool, &self.completions, job);
        } else {
            self.held.after(wait, job);
        }
    }

    /// Completes `done` without running it (a command answered with a
    /// refusal found after tgtd had handed it over).
    pub fn answer(&self, done: Done) {
        self.completions.push(done);
    }

    /// The commands done since the last call, for tgtd's main thread to
    /// complete; resets the eventfd.
    pub fn finished(&self) -> Vec<Done> {
        self.completions.wake.drain();
        std::mem::take(&mut *self.completions.done.lock())
    }
}

/// Queues `job` on the workers; a pool that refuses answers it HARDWARE
/// ERROR rather than leave it hanging.
fn submit_to(pool: &Pool<Job>, completions: &Completions, job: Job) {
    if let Err(job) = pool.submit(job) {
        // Workers never exit while the pool lives; keep the command
        // from hanging all the same.
        log::error!("no worker takes commands; answering HARDWARE ERROR");
        completions.push(Done {
            cmd: job.cmd,
            outcome: Err(Refusal::Check(Sense::internal_failure())),
            sized_reply: false,
        });
    }
}

/// A worker's part: runs `job` (a panic answers HARDWARE ERROR).
fn execute(mut job: Job) -> Done {
    let outcome = ferry_plugin::boundary(
        "a command",
        Err(Refusal::Check(Sense::internal_failure())),
        || {
            let (data_out, data_in) = (job.data_out.as_slice(), job.data_in.as_mut_slice());
            job.lun.execute(&job.nexus, &job.cdb, data_out, data_in)
        },
    );
    Done {
        sized_reply: sized_reply(&job.cdb),
        cmd: job.cmd,
        outcome,
    }
}

/// Whether the reply to `cdb` may be shorter than its buffer, which tgtd
/// must then be told (PERSISTENT RESERVE IN/OUT, GET LBA STATUS); for
/// reads and writes tgtd works residuals out itself from the CDB.
fn sized_reply(cdb: &[u8]) -> bool {
    matches!(cdb.first(), Some(0x5e | 0x5f)) || ferry_scsi::cdb::is_get_lba_status(cdb)
}

#[cfg(test)]
mod tests {
    #[test]
    fn replies_of_reservations_and_lba_status_are_sized() {
        assert!(super::sized_reply(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0]));
        assert!(super::sized_reply(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0]));
        let mut get_lba_status = [0u8; 16];
        get_lba_status[0] = 0x9e;
        get_lba_status[1] = 0x12;
        assert!(super::sized_reply(&get_lba_status));
        assert!(!super::sized_reply(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]));
    }
}
