//! The handler's worker threads, shared by all its devices: one
//! [`ferry_plugin::Pool`] of closures, started on first use.
//!
//! tcmu-runner (with `nr_threads = 0`) calls the I/O callouts on each
//! device's single command thread; a callout only queues the command here
//! and returns, and a worker carries it out against the volume and
//! completes it through tcmu-runner. Commands of one device therefore run
//! in parallel on all workers, and a slow one (a write to both legs, a flush that
//! checkpoints a migration) holds up nothing else. The workers block all
//! signals, so tcmu-runner's signal handling stays on its threads.
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use ferry_plugin::delay::Delayer;
use ferry_plugin::{Pool, Task};

/// A queued command: runs once on a worker and must complete its command
/// whatever happens (the shim's closures catch their own panics).
pub type Job = Task;

/// Default worker count: enough to keep a few files or an RBD image busy
/// on a small machine; `FERRY_TCMU_WORKERS` (1 to 64) overrides it.
const DEFAULT_WORKERS: usize = 8;

static POOL: OnceLock<Result<Pool<Job>, ferry_plugin::Error>> = OnceLock::new();

/// The pool, started on first use.
pub fn pool() -> Result<&'static Pool<Job>, &'static ferry_plugin::Error> {
    POOL.get_or_init(start).as_ref()
}

static HELD: OnceLock<Result<Delayer<Job>, ferry_plugin::Error>> = OnceLock::new();

/// Queues `job` on the workers after `wait` (a LUN over its QoS limit,
/// `ferry_host::qos`): it waits on the delayer's thread, not a worker's.
/// Gives the job back if neither could take it.
pub fn submit_after(
    pool: &'static Pool<Job>,
    wait: std::time::Duration,
    job: Job,
) -> Result<(), Job> {
    if wait.is_zero() {
        return pool.submit(job);
    }
    let held = HELD.get_or_init(|| {
        Delayer::start("ferry-tcmu-qos", move |job: Job| {
            // The pool outlives the process's devices; if it refused, the
            // job still completes its command, here.
            if let Err(job) = pool.submit(job) {
                job();
            }
        })
    });
    match held {
        Ok(d) => {
            d.after(wait, job);
            Ok(())
        }
        Err(e) => {
            log::error!("cannot hold commands for QoS ({e}); running them at once");
            pool.submit(job)
        }
    }
}

fn worker_count(var: Option<&str>) -> usize {
    var.and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(DEFAULT_WORKERS, |n| n.clamp(1, 64))
}

fn start() -> Result<Pool<Job>, ferry_plugin::Error> {
    let workers = worker_count(std::env::var("FERRY_TCMU_WORKERS").ok().as_deref());
    let pool = Pool::start_tasks("ferry-tcmu", workers)?;
    log::info!("{workers} I/O workers started");
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn worker_count_is_bounded() {
        assert_eq!(worker_count(None), DEFAULT_WORKERS);
        assert_eq!(worker_count(Some("0")), 1);
        assert_eq!(worker_count(Some("100")), 64);
        assert_eq!(worker_count(Some(" 3 ")), 3);
        assert_eq!(worker_count(Some("x")), DEFAULT_WORKERS);
    }

    #[test]
    fn jobs_run_on_workers() {
        let p = pool().unwrap();
        let (tx, rx) = mpsc::sync_channel(1);
        p.submit(Box::new(move || {
            tx.send(std::thread::current().name().map(str::to_string))
                .unwrap();
        }))
        .map_err(|_| "rejected")
        .unwrap();
        let name = rx.recv().unwrap().unwrap();
        assert!(name.starts_with("ferry-tcmu-"), "{name}");
        // A panicking job does not take its worker down.
        for _ in 0..p.workers() {
            p.submit(Box::new(|| panic!("boom")))
                .map_err(|_| "rejected")
                .unwrap();
        }
        let (tx, rx) = mpsc::sync_channel(1);
        p.submit(Box::new(move || tx.send(()).unwrap()))
            .map_err(|_| "rejected")
            .unwrap();
        rx.recv().unwrap();
    }
}
