//! Per-LUN QoS: IOPS and bandwidth limits, reads and writes apart.
//!
//! Each limit is a token bucket kept as one atomic, in the form of the
//! generic cell rate algorithm: the bucket's *theoretical arrival time*
//! (TAT) is when it would be empty again at its rate. A command costing
//! `c` (one I/O, or its bytes) moves the TAT on by `c / rate`; it may
//! start once the TAT it found is within [`BURST`] of now. A LUN under its
//! limit always finds the TAT in the past (or within the burst), so it
//! waits for nothing: the check is one compare-and-swap per limit set,
//! and none at all when the LUN has no limits.
//!
//! The wait is not slept on the command path: [`Lun::throttle`] reserves
//! the command's tokens and says how long it must wait, and the
//! front-end holds the command back that long before handing it to a
//! worker (the plugins' workers are shared by all LUNs, and a sleeping
//! worker would slow every other LUN down). The copier's reads and
//! writes do not pass here: they count against the copy budget
//! (`ferry_core::pace`, `ferry_core::share`), not the LUN's limits.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use ferry_scsi::qos::{class_of, Class, QosLimits};

use crate::lun::Lun;

/// How far ahead of its rate a bucket lets commands go: a burst of this
/// long at the limit passes at once (an idle LUN's first commands, and
/// the jitter of a steady stream, are not delayed).
pub const BURST: Duration = Duration::from_millis(100);

/// Nanoseconds since the process's first use of QoS: the buckets' clock.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One limit: a rate (0: none) and its TAT.
#[derive(Default)]
struct Bucket {
    rate: AtomicU64,
    tat: AtomicU64,
}

impl Bucket {
    /// Takes `cost` tokens at `now`; the nanoseconds to wait before the
    /// command may start.
    fn take(&self, cost: u64, now: u64) -> u64 {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 || cost == 0 {
            return 0;
        }
        let step =
            u64::try_from(u128::from(cost) * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX);
        let burst = BURST.as_nanos() as u64;
        let mut found = 0;
        // fetch_update retries on a race with another command; each try
        // is a few instructions.
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                found = tat.max(now);
                Some(found.saturating_add(step))
            });
        found.saturating_sub(now.saturating_add(burst))
    }

    fn set(&self, rate: Option<u64>) {
        let rate = rate.unwrap_or(0);
        if self.rate.swap(rate, Ordering::Relaxed) != rate {
            // A new rate starts from a full bucket: a lowered limit does
            // not make commands pay what they used at the old one.
            self.tat.store(0, Ordering::Relaxed);
        }
    }
}

/// A LUN's buckets.
#[derive(Default)]
pub(crate) struct Qos {
    read_iops: Bucket,
    write_iops: Bucket,
    read_bps: Bucket,
    write_bps: Bucket,
    limits: parking_lot::Mutex<QosLimits>,
    /// Whether any limit is set: an unlimited LUN skips the buckets.
    any: std::sync::atomic::AtomicBool,
}

impl Qos {
    fn set(&self, limits: QosLimits) {
        let mut held = self.limits.lock();
        self.read_iops.set(limits.read_iops);
        self.write_iops.set(limits.write_iops);
        self.read_bps.set(limits.read_bps);
        self.write_bps.set(limits.write_bps);
        self.any.store(!limits.is_unlimited(), Ordering::Release);
        *held = limits;
    }

    fn take(&self, class: Class, now: u64) -> Duration {
        let ns = match class {
            Class::Free => 0,
            Class::Read(bytes) => self
                .read_iops
                .take(1, now)
                .max(self.read_bps.take(bytes, now)),
            Class::Write(bytes) => self
                .write_iops
                .take(1, now)
                .max(self.write_bps.take(bytes, now)),
        };
        Duration::from_nanos(ns)
    }
}

impl Lun {
    /// Sets the LUN's limits (live: the next command counts against
    /// them). Refuses a limit of zero.
    pub fn set_qos(&self, limits: QosLimits) -> Result<(), crate::HostError> {
        limits.check().map_err(|why| crate::HostError::Qos {
            lun: self.spec().to_string(),
            why,
        })?;
        let old = self.qos.limits.lock().to_owned();
        self.qos.set(limits);
        if old != limits {
            log::info!("{}: QoS {old} -> {limits}", self.spec());
        }
        Ok(())
    }

    /// The LUN's limits.
    pub fn qos(&self) -> QosLimits {
        *self.qos.limits.lock()
    }

    /// Reserves what `cdb` costs against the LUN's limits; how long the
    /// front-end must hold the command back before running it (zero
    /// under the limits, and for a LUN without any).
    pub fn throttle(&self, cdb: &[u8]) -> Duration {
        if !self.qos.any.load(Ordering::Acquire) {
            return Duration::ZERO;
        }
        let class = class_of(cdb, u64::from(self.block_size()));
        self.qos.take(class, now_ns())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commands at 1000 IOPS against a 100 IOPS limit: the burst passes
    /// at once, then each waits its turn, 10 ms apart.
    #[test]
    fn a_bucket_spaces_commands_at_its_rate_after_the_burst() {
        let q = Qos::default();
        q.set(QosLimits {
            read_iops: Some(100),
            ..Default::default()
        });
        let start = 1_000_000_000u64;
        let waits: Vec<u64> = (0..30)
            .map(|i| q.take(Class::Read(4096), start + i * 1_000_000).as_nanos() as u64)
            .collect();
        // Arrivals 1 ms apart, tokens 10 ms apart, 100 ms of burst: the
        // i-th command's slot is at i * 10 ms, it arrives at i * 1 ms.
        for (i, w) in waits.iter().enumerate() {
            let i = i as u64;
            let want = (i * 10_000_000).saturating_sub(i * 1_000_000 + 100_000_000);
            assert_eq!(*w, want, "command {i}");
        }
        assert_eq!(waits[0..12].iter().sum::<u64>(), 0);
        // Writes are not limited.
        assert_eq!(q.take(Class::Write(1 << 20), start), Duration::ZERO);
    }

    #[test]
    fn under_the_limit_nothing_waits_and_the_bytes_limit_counts_bytes() {
        let q = Qos::default();
        q.set(QosLimits {
            write_bps: Some(1 << 20),
            ..Default::default()
        });
        // 64 KiB every 100 ms is 640 KiB/s: under 1 MiB/s.
        for i in 0..100u64 {
            assert_eq!(q.take(Class::Write(65536), i * 100_000_000), Duration::ZERO);
        }
        // 4 MiB at once: 100 ms of burst passes, the rest waits ~3.9 s
        // for the next command.
        let t = 20_000_000_000u64;
        assert_eq!(q.take(Class::Write(4 << 20), t), Duration::ZERO);
        let w = q.take(Class::Write(4096), t);
        assert_eq!(w, Duration::from_millis(3900));
    }
}
