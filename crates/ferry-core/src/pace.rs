//! The copier's pace: as fast as the foreground's impact budget allows.
//!
//! A migration must not be felt, and it must finish. Backing off whenever
//! foreground I/O exists (what the copier did before) protects the
//! foreground so well that under a load that never stops the copy barely
//! moves. Instead the copier is steered by what the foreground *feels*:
//!
//! - the migrating volume times every foreground command ([`Meter`]);
//! - every [`PROBE_EVERY`] of copying under load, the copier holds off for
//!   [`PROBE`] and the foreground's latency in that window is its
//!   *baseline*, what it would be without the copy (a moving average, so
//!   a workload that changes is followed);
//! - over each [`WINDOW`] of copying (the copier's steps and the pauses
//!   between them), the foreground's mean latency against the baseline is
//!   the *impact*. Above the budget (default [`DEFAULT_BUDGET`]: at most
//!   20 % more latency, about 0.8x of idle throughput at a fixed queue
//!   depth) the pause after each step grows; well below it, it shrinks, so
//!   the copy uses everything the budget leaves;
//! - a *floor* rate bounds the pause: however busy the LUN, the copy
//!   advances at least that fast (default [`DEFAULT_FLOOR`]), so it
//!   converges;
//! - with no foreground I/O at all there is nothing to protect: no pause
//!   and no probes.
//!
//! [`Pacer`] is plain arithmetic on the samples it is given, so its tests
//! drive it with a synthetic latency signal and a synthetic clock.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default impact budget: the foreground's mean latency while the copy
/// runs may be this much above its baseline.
pub const DEFAULT_BUDGET: f64 = 0.2;

/// Default floor: the copy advances at least this many bytes per second
/// (a busy 1 TiB LUN still moves in under a day).
pub const DEFAULT_FLOOR: u64 = 16 << 20;

/// How long a probe holds the copy off to measure the baseline. Only its
/// second half is measured ([`Pacer::settled`]): the copy's own writes
/// still reach the disk for a while after it stops.
pub const PROBE: Duration = Duration::from_millis(500);

/// How much copying under load passes between probes.
pub const PROBE_EVERY: Duration = Duration::from_secs(4);

/// How much copying each decision looks at.
pub const WINDOW: Duration = Duration::from_millis(400);

/// Fewer foreground commands than this in a window mean no load.
pub const MIN_OPS: u64 = 8;

/// Longest pause after a step (the floor bounds it further).
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Foreground commands and the time they took, counted without a lock.
#[derive(Debug, Default)]
pub struct Meter {
    ops: AtomicU64,
    nanos: AtomicU64,
}

/// A reading of a [`Meter`]: totals since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub ops: u64,
    pub nanos: u64,
}

impl Sample {
    fn since(self, earlier: Sample) -> Sample {
        Sample {
            ops: self.ops.wrapping_sub(earlier.ops),
            nanos: self.nanos.wrapping_sub(earlier.nanos),
        }
    }

    fn add(&mut self, other: Sample) {
        self.ops += other.ops;
        self.nanos += other.nanos;
    }

    fn mean(self) -> Option<f64> {
        (self.ops > 0).then(|| self.nanos as f64 / self.ops as f64)
    }
}

impl Meter {
    /// Counts one command that took `took`.
    pub fn record(&self, took: Duration) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(ns, Ordering::Relaxed);
    }

    /// Starts timing a command; counted when the guard drops.
    pub fn time(&self) -> Timing<'_> {
        Timing {
            meter: self,
            started: Instant::now(),
        }
    }

    pub fn sample(&self) -> Sample {
        Sample {
            ops: self.ops.load(Ordering::Relaxed),
            nanos: self.nanos.load(Ordering::Relaxed),
        }
    }
}

/// Times one command (see [`Meter::time`]).
pub struct Timing<'a> {
    meter: &'a Meter,
    started: Instant,
}

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        self.meter.record(self.started.elapsed());
    }
}

/// What the copier does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Copy the next step at once.
    Copy,
    /// Pause this long, then copy.
    Pause(Duration),
    /// Hold off this long to measure the baseline, then copy.
    Probe(Duration),
}

/// The settings a [`Pacer`] steers by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Allowed foreground slowdown (0.2: 20 % more latency).
    pub impact: f64,
    /// Minimum copy rate, bytes per second.
    pub floor: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            impact: DEFAULT_BUDGET,
            floor: DEFAULT_FLOOR,
        }
    }
}

/// What the pacer measured, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// The foreground's mean latency without the copy, nanoseconds.
    pub baseline_ns: Option<f64>,
    /// The last window's impact (0.15: 15 % more latency).
    pub impact: Option<f64>,
    /// The pause after each step now.
    pub delay: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Was {
    Copying,
    Pausing,
    Probing,
}

/// Decides the copier's pace from foreground samples (see the module
/// docs). The copier calls [`Pacer::stepped`] after each step and
/// [`Pacer::waited`] after each pause or probe.
#[derive(Debug)]
pub struct Pacer {
    budget: Budget,
    delay: Duration,
    baseline: Option<f64>,
    impact: Option<f64>,
    /// The meter at the last call.
    last: Sample,
    /// Foreground samples and time of copying (steps and the pauses
    /// between them) since the last decision.
    window: Sample,
    window_time: Duration,
    /// Copying under load since the last probe.
    since_probe: Duration,
    was: Was,
    at: Instant,
}

impl Pacer {
    pub fn new(budget: Budget, now: Instant, meter: Sample) -> Self {
        Pacer {
            budget,
            delay: Duration::ZERO,
            baseline: None,
            impact: None,
            last: meter,
            window: Sample::default(),
            window_time: Duration::ZERO,
            since_probe: Duration::ZERO,
            was: Was::Copying,
            at: now,
        }
    }

    pub fn set_budget(&mut self, budget: Budget) {
        self.budget = budget;
    }

    pub fn reading(&self) -> Reading {
        Reading {
            baseline_ns: self.baseline,
            impact: self.impact,
            delay: self.delay,
        }
    }

    /// Closes the interval since the last call with the meter at `meter`.
    fn close(&mut self, now: Instant, meter: Sample) -> (Sample, Duration) {
        let got = meter.since(self.last);
        let took = now.saturating_duration_since(self.at);
        self.last = meter;
        self.at = now;
        (got, took)
    }

    /// A step copied `bytes` in `took`; returns what to do next.
    pub fn stepped(&mut self, now: Instant, meter: Sample, bytes: u64, took: Duration) -> Next {
        let (got, span) = self.close(now, meter);
        self.was = Was::Copying;
        self.window.add(got);
        self.window_time += span;
        if self.window_time < WINDOW {
            return self.pause(bytes, took);
        }
        let window = std::mem::take(&mut self.window);
        let window_time = std::mem::take(&mut self.window_time);
        let loaded = window.ops >= MIN_OPS;
        if !loaded {
            // Nothing to protect: copy flat out, and forget a baseline
            // that may no longer hold when the load comes back.
            self.delay = Duration::ZERO;
            self.impact = None;
            self.since_probe = Duration::ZERO;
            self.baseline = None;
            return Next::Copy;
        }
        self.since_probe += window_time;
        let Some(baseline) = self.baseline else {
            return self.probe();
        };
        if self.since_probe >= PROBE_EVERY {
            return self.probe();
        }
        let mean = window.mean().unwrap_or(baseline);
        let impact = mean / baseline - 1.0;
        self.impact = Some(impact);
        let budget = self.budget.impact.max(0.0);
        if impact > budget {
            // Back off in proportion to the overshoot, from at least a
            // quarter of a step's time.
            let grow = (1.0 + (impact - budget) / budget.max(0.01)).min(2.0);
            let from = self.delay.max(took / 4);
            self.delay = from.mul_f64(grow);
        } else if impact < budget / 2.0 {
            self.delay = self.delay.mul_f64(0.7);
            if self.delay < Duration::from_micros(500) {
                self.delay = Duration::ZERO;
            }
        }
        self.pause(bytes, took)
    }

    /// Half of a probe has passed: what the foreground did so far still
    /// felt the copy, and does not count.
    pub fn settled(&mut self, now: Instant, meter: Sample) {
        if self.was == Was::Probing {
            self.close(now, meter);
        }
    }

    /// A pause or probe ended.
    pub fn waited(&mut self, now: Instant, meter: Sample) {
        let (got, span) = self.close(now, meter);
        match self.was {
            Was::Probing => {
                if let Some(mean) = got.mean().filter(|_| got.ops >= MIN_OPS / 2) {
                    self.baseline = Some(match self.baseline {
                        Some(b) => (b + mean) / 2.0,
                        None => mean,
                    });
                }
            }
            Was::Pausing | Was::Copying => {
                // The pause between steps is part of what copying costs
                // the foreground (it is where the foreground recovers).
                self.window.add(got);
                self.window_time += span;
            }
        }
        self.was = Was::Copying;
    }

    fn probe(&mut self) -> Next {
        self.since_probe = Duration::ZERO;
        self.was = Was::Probing;
        Next::Probe(PROBE)
    }

    /// The pause after a step of `bytes` that took `took`, bounded by the
    /// floor rate.
    fn pause(&mut self, bytes: u64, took: Duration) -> Next {
        let floor = self.budget.floor.max(1);
        let cycle = Duration::from_secs_f64(bytes as f64 / floor as f64);
        let most = cycle.saturating_sub(took).min(MAX_DELAY);
        self.delay = self.delay.min(MAX_DELAY);
        let d = self.delay.min(most);
        if d.is_zero() {
            Next::Copy
        } else {
            self.was = Was::Pausing;
            Next::Pause(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LUN whose foreground commands take `base` when the copy is idle
    /// and `base * (1 + cost)` while a step runs, at `iops` commands a
    /// second, copied in steps of `step` bytes taking `step_time`.
    struct Synthetic {
        base: Duration,
        cost: f64,
        iops: u64,
        step: u64,
        step_time: Duration,
    }

    struct Run {
        /// Mean foreground latency over the run, against `base`.
        impact: f64,
        /// Bytes copied per second.
        rate: f64,
        probes: usize,
    }

    impl Synthetic {
        /// Foreground commands in `span`, each taking `lat`.
        fn commands(&self, meter: &mut Sample, span: Duration, lat: Duration) -> (u64, u64) {
            let ops = (self.iops as f64 * span.as_secs_f64()).round() as u64;
            let ns = ops * lat.as_nanos() as u64;
            meter.ops += ops;
            meter.nanos += ns;
            (ops, ns)
        }

        fn run(&self, budget: Budget, seconds: u64) -> Run {
            let start = Instant::now();
            let mut now = start;
            let mut meter = Sample::default();
            let mut pacer = Pacer::new(budget, now, meter);
            let (mut ops, mut ns, mut copied, mut probes) = (0u64, 0u64, 0u64, 0usize);
            let copying = self.base.mul_f64(1.0 + self.cost);
            while now.duration_since(start) < Duration::from_secs(seconds) {
                let (o, n) = self.commands(&mut meter, self.step_time, copying);
                (ops, ns) = (ops + o, ns + n);
                now += self.step_time;
                copied += self.step;
                let (wait, probe) = match pacer.stepped(now, meter, self.step, self.step_time) {
                    Next::Copy => continue,
                    Next::Pause(d) => (d, false),
                    Next::Probe(d) => {
                        probes += 1;
                        (d, true)
                    }
                };
                if probe {
                    // The copy's writes linger through the first half.
                    let half = wait / 2;
                    let (o, n) = self.commands(&mut meter, half, copying);
                    (ops, ns) = (ops + o, ns + n);
                    now += half;
                    pacer.settled(now, meter);
                    let (o, n) = self.commands(&mut meter, wait - half, self.base);
                    (ops, ns) = (ops + o, ns + n);
                    now += wait - half;
                } else {
                    let (o, n) = self.commands(&mut meter, wait, self.base);
                    (ops, ns) = (ops + o, ns + n);
                    now += wait;
                }
                pacer.waited(now, meter);
            }
            let secs = now.duration_since(start).as_secs_f64();
            Run {
                impact: (ns as f64 / ops.max(1) as f64) / self.base.as_nanos() as f64 - 1.0,
                rate: copied as f64 / secs,
                probes,
            }
        }
    }

    fn lun(cost: f64, iops: u64) -> Synthetic {
        Synthetic {
            base: Duration::from_micros(200),
            cost,
            iops,
            step: 16 << 20,
            step_time: Duration::from_millis(40), // 400 MiB/s flat out
        }
    }

    const FLAT_OUT: f64 = (16 << 20) as f64 / 0.040;

    #[test]
    fn an_idle_lun_is_copied_flat_out_without_probes() {
        let r = lun(1.0, 0).run(Budget::default(), 30);
        assert!(r.rate > 0.99 * FLAT_OUT, "rate {}", r.rate);
        assert_eq!(r.probes, 0);
    }

    #[test]
    fn a_cheap_copy_runs_flat_out_under_load() {
        // Copying costs the foreground 10 %: within the 20 % budget.
        let r = lun(0.1, 5000).run(Budget::default(), 60);
        assert!(r.rate > 0.85 * FLAT_OUT, "rate {} of {FLAT_OUT}", r.rate);
        assert!(r.impact <= 0.2, "impact {}", r.impact);
    }

    #[test]
    fn a_costly_copy_is_held_to_the_budget_and_uses_what_it_leaves() {
        // Copying doubles foreground latency: the budget allows about a
        // fifth of the time copying.
        let r = lun(1.0, 5000).run(Budget::default(), 120);
        assert!(r.impact <= 0.2 * 1.15, "impact {}", r.impact);
        assert!(
            r.impact >= 0.2 * 0.5,
            "the budget is left unused: {}",
            r.impact
        );
        assert!(r.rate >= 0.1 * FLAT_OUT, "rate {}", r.rate);
        assert!(r.probes > 0);
        // A bigger budget copies faster.
        let wide = lun(1.0, 5000).run(
            Budget {
                impact: 0.5,
                ..Budget::default()
            },
            120,
        );
        assert!(wide.rate > 1.5 * r.rate, "{} vs {}", wide.rate, r.rate);
        assert!(wide.impact <= 0.5 * 1.15, "impact {}", wide.impact);
    }

    #[test]
    fn the_floor_keeps_a_copy_moving_whatever_it_costs() {
        // Copying makes every foreground command 20 times slower: the
        // budget alone would stop the copy; the floor does not let it.
        let floor = 32 << 20;
        let r = lun(20.0, 5000).run(
            Budget {
                floor,
                ..Budget::default()
            },
            120,
        );
        assert!(
            r.rate >= 0.95 * floor as f64,
            "rate {} below the floor",
            r.rate
        );
        assert!(r.rate < 0.5 * FLAT_OUT, "rate {}", r.rate);
    }

    #[test]
    fn the_meter_counts_commands_and_their_time() {
        let m = Meter::default();
        m.record(Duration::from_micros(3));
        {
            let _t = m.time();
        }
        let s = m.sample();
        assert_eq!(s.ops, 2);
        assert!(s.nanos >= 3000);
    }
}
