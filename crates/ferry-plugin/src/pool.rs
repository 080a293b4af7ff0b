//! Worker threads taking jobs from a channel: a plugin's one pool, shared
//! by all of its LUNs.
//!
//! Hosts call a plugin on threads of their own that must not wait for
//! I/O (tgtd's single main thread; tcmu-runner's per-device command
//! thread), so a plugin queues each command here and returns; a worker
//! carries it out and completes it. Commands of one LUN therefore run in
//! parallel on all workers, and a slow one (a write to both legs, a flush that
//! checkpoints a migration) holds up nothing else.
//!
//! Workers block all signals ([`crate::block_signals`]) before taking
//! work, and survive a panicking job (logged); a job that must answer
//! its host whatever happens catches its own panics first. The workers
//! run until the pool is dropped and the queue is empty.
#![forbid(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::Error;

/// A job that is its own work: a closure run once on a worker.
pub type Task = Box<dyn FnOnce() + Send>;

/// A pool of worker threads running jobs of type `J`.
pub struct Pool<J> {
    jobs: Sender<J>,
    workers: usize,
}

impl<J: Send + 'static> Pool<J> {
    /// Starts `workers` threads (at least one) named `<name>-<i>`, each
    /// running `run` on the jobs it takes, one at a time.
    pub fn start<F>(name: &str, workers: usize, run: F) -> Result<Pool<J>, Error>
    where
        F: Fn(J) + Send + Sync + 'static,
    {
        let workers = workers.max(1);
        let run: Arc<dyn Fn(J) + Send + Sync> = Arc::new(run);
        let (tx, rx) = crossbeam_channel::unbounded::<J>();
        for index in 0..workers {
            let (rx, run) = (rx.clone(), run.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || work(&rx, &*run))
                .map_err(|source| Error::Spawn { index, source })?;
        }
        Ok(Pool { jobs: tx, workers })
    }

    /// Queues `job`; gives it back if no worker can take it (none left).
    pub fn submit(&self, job: J) -> Result<(), J> {
        self.jobs.send(job).map_err(|e| e.into_inner())
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

impl Pool<Task> {
    /// A pool whose jobs are closures ([`Task`]s).
    pub fn start_tasks(name: &str, workers: usize) -> Result<Pool<Task>, Error> {
        Pool::start(name, workers, |task: Task| task())
    }
}

/// A worker's life: signals blocked, then jobs until the pool is gone.
fn work<J>(jobs: &Receiver<J>, run: &(dyn Fn(J) + Send + Sync)) {
    crate::block_signals();
    while let Ok(job) = jobs.recv() {
        if catch_unwind(AssertUnwindSafe(|| run(job))).is_err() {
            log::error!("a queued job panicked outside its own boundary");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_string()
    }

    #[test]
    fn tasks_run_on_named_workers() {
        let pool = Pool::start_tasks("ferry-test", 2).unwrap();
        assert_eq!(pool.workers(), 2);
        let (tx, rx) = crossbeam_channel::bounded(1);
        pool.submit(Box::new(move || tx.send(thread_name()).unwrap()))
            .map_err(|_| "rejected")
            .unwrap();
        let name = rx.recv().unwrap();
        assert!(name.starts_with("ferry-test-"), "{name}");
    }

    #[test]
    fn jobs_go_to_the_pools_function() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let pool = Pool::start("ferry-test", 3, move |n: u32| tx.send(n * 2).unwrap()).unwrap();
        for n in 0..10 {
            pool.submit(n).unwrap();
        }
        let mut got: Vec<u32> = rx.iter().take(10).collect();
        got.sort_unstable();
        assert_eq!(got, (0..10).map(|n| n * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_panicking_job_does_not_take_its_worker_down() {
        let pool = Pool::start_tasks("ferry-test", 1).unwrap();
        pool.submit(Box::new(|| panic!("boom")))
            .map_err(|_| "rejected")
            .unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        pool.submit(Box::new(move || tx.send(()).unwrap()))
            .map_err(|_| "rejected")
            .unwrap();
        rx.recv().unwrap();
    }

    #[test]
    fn a_pool_has_at_least_one_worker() {
        let pool = Pool::start("ferry-test", 0, |(): ()| ()).unwrap();
        assert_eq!(pool.workers(), 1);
    }
}
