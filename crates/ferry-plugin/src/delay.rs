//! Holding commands back: a thread that hands each job on when its time
//! comes. A LUN over its QoS limit has its commands wait here, not on a
//! worker (the workers are shared by every LUN of the process; a worker
//! sleeping for one LUN's limit would slow the others).
#![forbid(unsafe_code)]

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::Error;

struct Entry<J> {
    due: Instant,
    seq: u64,
    job: J,
}

impl<J> PartialEq for Entry<J> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl<J> Eq for Entry<J> {}
impl<J> PartialOrd for Entry<J> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<J> Ord for Entry<J> {
    /// Reversed: the heap's top is the earliest (then the first queued).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

struct Queue<J> {
    heap: BinaryHeap<Entry<J>>,
    seq: u64,
    closed: bool,
}

struct Shared<J> {
    queue: Mutex<Queue<J>>,
    wake: Condvar,
}

/// Jobs waiting for their time, handed to `run` (on the delayer's thread)
/// when it comes, in order of due time.
pub struct Delayer<J: Send + 'static> {
    shared: Arc<Shared<J>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<J: Send + 'static> Delayer<J> {
    pub fn start(name: &str, run: impl Fn(J) + Send + 'static) -> Result<Self, Error> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                heap: BinaryHeap::new(),
                seq: 0,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    crate::block_signals();
                    hand_on(&shared, &run)
                })
                .map_err(|source| Error::Spawn { index: 0, source })?
        };
        Ok(Delayer {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands `job` on after `wait`.
    pub fn after(&self, wait: Duration, job: J) {
        let mut q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        q.seq += 1;
        let seq = q.seq;
        q.heap.push(Entry {
            due: Instant::now() + wait,
            seq,
            job,
        });
        drop(q);
        self.shared.wake.notify_one();
    }

    /// Jobs waiting now.
    pub fn waiting(&self) -> usize {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .heap
            .len()
    }
}

impl<J: Send + 'static> Drop for Delayer<J> {
    /// Hands every job still waiting on at once, then stops.
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hand_on<J>(shared: &Shared<J>, run: &dyn Fn(J)) {
    let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let now = Instant::now();
        match q.heap.peek() {
            Some(e) if q.closed || e.due <= now => {
                let e = q.heap.pop().expect("peeked");
                drop(q);
                run(e.job);
                q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            }
            Some(e) => {
                let wait = e.due - now;
                q = shared
                    .wake
                    .wait_timeout(q, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            None if q.closed => return,
            None => {
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn jobs_come_out_in_due_order_not_before_their_time() {
        let (tx, rx) = mpsc::channel();
        let d = Delayer::start("t", move |j: (u32, Instant)| {
            tx.send((j.0, j.1.elapsed())).unwrap()
        })
        .unwrap();
        let t = Instant::now();
        d.after(Duration::from_millis(60), (3, t));
        d.after(Duration::from_millis(20), (1, t));
        d.after(Duration::from_millis(40), (2, t));
        d.after(Duration::ZERO, (0, t));
        let got: Vec<(u32, Duration)> = (0..4).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        for (i, (_, at)) in got.iter().enumerate() {
            assert!(
                *at >= Duration::from_millis(20 * i as u64),
                "job {i} at {at:?}"
            );
        }
        assert_eq!(d.waiting(), 0);
    }

    #[test]
    fn dropping_hands_on_what_waits() {
        let (tx, rx) = mpsc::channel();
        let d = Delayer::start("t", move |j: u32| tx.send(j).unwrap()).unwrap();
        d.after(Duration::from_secs(3600), 7);
        drop(d);
        assert_eq!(rx.recv().unwrap(), 7);
    }
}
