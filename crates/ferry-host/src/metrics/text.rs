//! Prometheus' text exposition format (version 0.0.4): families with
//! `# HELP` and `# TYPE` lines, each family's samples together, label
//! values escaped. What each ferry metric means is listed in the README
//! ("Metrics"), and `promtool check metrics` is run on this output by the
//! tests.
use std::fmt::Write as _;

use ferry_core::MigrationState;

use super::{LunReport, LATENCY_BOUNDS};

/// The content type the format is served with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: String,
}

/// A page of metrics being written: samples may be added in any order and
/// come out grouped by family, in the order families were first used.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

/// Labels of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) -> &mut String {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    kind,
                    help,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[i].samples
    }

    fn line(
        out: &mut String,
        name: &str,
        suffix: &str,
        labels: Labels,
        extra: Option<(&str, &str)>,
        v: f64,
    ) {
        out.push_str(name);
        out.push_str(suffix);
        let all = labels.iter().copied().chain(extra);
        let mut first = true;
        for (k, val) in all {
            out.push(if first { '{' } else { ',' });
            first = false;
            out.push_str(k);
            out.push_str("=\"");
            escape(val, out);
            out.push('"');
        }
        if !first {
            out.push('}');
        }
        let _ = writeln!(out, " {}", number(v));
    }

    /// A counter's or gauge's sample.
    pub fn sample(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        labels: Labels,
        v: f64,
    ) {
        let out = self.family(name, kind, help);
        Self::line(out, name, "", labels, None, v);
    }

    /// A histogram's samples from per-bucket (not cumulative) counts for
    /// `bounds` and a last `+Inf` bucket.
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        bounds: &[f64],
        buckets: &[u64],
        sum: f64,
    ) {
        let out = self.family(name, Kind::Histogram, help);
        let mut cumulative = 0u64;
        for (i, n) in buckets.iter().enumerate() {
            cumulative += n;
            let le = bounds.get(i).map_or("+Inf".to_string(), |b| number(*b));
            Self::line(
                out,
                name,
                "_bucket",
                labels,
                Some(("le", &le)),
                cumulative as f64,
            );
        }
        Self::line(out, name, "_sum", labels, None, sum);
        Self::line(out, name, "_count", labels, None, cumulative as f64);
    }

    /// The page.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.name());
            out.push_str(&f.samples);
        }
        out
    }
}

const STATES: [MigrationState; 5] = [
    MigrationState::Copying,
    MigrationState::Copied,
    MigrationState::Committed,
    MigrationState::Aborting,
    MigrationState::Aborted,
];

/// Writes what served LUNs (and their migrations) report.
pub fn luns(page: &mut Exposition, luns: &[LunReport]) {
    use Kind::{Counter, Gauge};
    for lun in luns {
        let v = [("volume", lun.spec.as_str())];
        page.sample(
            "ferry_lun_capacity_bytes",
            Gauge,
            "Capacity the LUN reports to initiators, in bytes.",
            &v,
            lun.capacity_bytes as f64,
        );
        page.sample(
            "ferry_lun_queue_depth",
            Gauge,
            "Commands of the LUN running now.",
            &v,
            lun.counts.in_flight as f64,
        );
        page.sample(
            "ferry_lun_reservation_conflicts_total",
            Counter,
            "Commands refused with RESERVATION CONFLICT.",
            &v,
            lun.counts.reservation_conflicts as f64,
        );
        for (key, n) in &lun.counts.errors {
            page.sample(
                "ferry_lun_errors_total",
                Counter,
                "Commands that ended in CHECK CONDITION, by sense key.",
                &[("volume", lun.spec.as_str()), ("sense_key", key.as_str())],
                *n as f64,
            );
        }
        for k in &lun.counts.kinds {
            let labels = [("volume", lun.spec.as_str()), ("kind", k.kind.name())];
            page.sample(
                "ferry_lun_commands_total",
                Counter,
                "Commands the LUN ran, by kind.",
                &labels,
                k.commands as f64,
            );
            page.sample(
                "ferry_lun_bytes_total",
                Counter,
                "Data bytes the LUN's commands moved (data-out plus data-in), by kind.",
                &labels,
                k.bytes as f64,
            );
            page.histogram(
                "ferry_lun_command_duration_seconds",
                "Time from a command reaching the LUN to its answer, by kind.",
                &labels,
                &LATENCY_BOUNDS,
                &k.buckets,
                k.latency_seconds,
            );
        }
        if let Some(m) = &lun.migration {
            migration(page, &lun.spec, m);
        }
    }
}

/// Writes the ALUA target ports' states: for each port, 1 for the state
/// its own group is in, 0 for the others.
pub fn ports(page: &mut Exposition, ports: &[crate::port::PortInfo]) {
    use ferry_scsi::alua::AccessState;
    const ALL: [(AccessState, &str); 4] = [
        (AccessState::ActiveOptimized, "active_optimized"),
        (AccessState::Standby, "standby"),
        (AccessState::Unavailable, "unavailable"),
        (AccessState::Transitioning, "transitioning"),
    ];
    for p in ports {
        let group = p.own_group.to_string();
        for (state, name) in ALL {
            page.sample(
                "ferry_port_access_state",
                Kind::Gauge,
                "1 for the ALUA access state of this gateway's target port group for the LUN.",
                &[
                    ("volume", p.spec.as_str()),
                    ("group", &group),
                    ("state", name),
                ],
                f64::from(u8::from(p.state == state)),
            );
        }
    }
}

/// Gathers every serving process of a run dir (tgtd, tcmu-runner, `ferry
/// serve`) through its control socket and writes what they report, and
/// for each process whether it answered.
pub fn run_dir(page: &mut Exposition, dir: &std::path::Path) {
    for (socket, answer) in crate::control::metrics_in(dir) {
        let name = socket.display().to_string();
        page.sample(
            "ferry_process_up",
            Kind::Gauge,
            "1 if the serving process behind this control socket answered.",
            &[("socket", &name)],
            f64::from(u8::from(answer.is_ok())),
        );
        match answer {
            Ok(r) => process(page, &r),
            Err(e) => log::warn!("metrics of {name}: {e}"),
        }
    }
}

/// Writes what one serving process answered to `metrics`: its LUNs (and
/// their migrations) and its ALUA target ports.
pub fn process(page: &mut Exposition, answer: &crate::control::Response) {
    luns(page, answer.metrics.as_deref().unwrap_or_default());
    ports(page, answer.ports.as_deref().unwrap_or_default());
}

fn migration(page: &mut Exposition, volume: &str, m: &ferry_core::copier::Progress) {
    use Kind::{Counter, Gauge};
    let v = [("volume", volume), ("target", m.target.as_str())];
    for s in STATES {
        let name = s.to_string();
        page.sample(
            "ferry_migration_state",
            Gauge,
            "1 for the migration's current state, 0 for the others.",
            &[
                ("volume", volume),
                ("target", m.target.as_str()),
                ("state", &name),
            ],
            f64::from(u8::from(m.state == s)),
        );
    }
    let gauges: [(&'static str, &'static str, f64); 9] = [
        (
            "ferry_migration_paused",
            "1 while the copier is paused.",
            f64::from(u8::from(m.paused)),
        ),
        (
            "ferry_migration_regions",
            "Regions of the volume.",
            m.regions_total as f64,
        ),
        (
            "ferry_migration_regions_copied",
            "Regions on the target now.",
            m.regions_done as f64,
        ),
        (
            "ferry_migration_size_bytes",
            "Bytes of the volume.",
            m.bytes_total as f64,
        ),
        (
            "ferry_migration_copied_bytes",
            "Bytes on the target now.",
            m.bytes_done as f64,
        ),
        (
            "ferry_migration_copy_rate_bytes",
            "Recent copy rate, bytes per second.",
            m.rate_bps as f64,
        ),
        (
            "ferry_migration_impact_budget_ratio",
            "The foreground slowdown the copier allows itself (0.1 = 10 %).",
            f64::from(m.impact_budget) / 100.0,
        ),
        (
            "ferry_migration_floor_rate_bytes",
            "The copier's floor rate, bytes per second.",
            m.floor_rate as f64,
        ),
        (
            "ferry_migration_rate_limit_bytes",
            "The copier's rate limit, bytes per second (0: none).",
            m.rate_limit.unwrap_or(0) as f64,
        ),
    ];
    for (name, help, value) in gauges {
        page.sample(name, Gauge, help, &v, value);
    }
    if let Some(impact) = m.impact {
        page.sample(
            "ferry_migration_impact_ratio",
            Gauge,
            "The foreground slowdown the copier measured last (0.1 = 10 %).",
            &v,
            impact / 100.0,
        );
    }
    let c = &m.counts;
    for (leg, reads, bytes) in [
        ("source", c.reads_source, c.read_bytes_source),
        ("target", c.reads_target, c.read_bytes_target),
    ] {
        let l = [
            ("volume", volume),
            ("target", m.target.as_str()),
            ("leg", leg),
        ];
        page.sample(
            "ferry_migration_reads_total",
            Counter,
            "Foreground reads (or pieces of them) served by each leg.",
            &l,
            reads as f64,
        );
        page.sample(
            "ferry_migration_read_bytes_total",
            Counter,
            "Foreground bytes read from each leg.",
            &l,
            bytes as f64,
        );
    }
    let counters: [(&'static str, &'static str, f64); 5] = [
        (
            "ferry_migration_both_leg_writes_total",
            "Writes to a region not copied yet, sent to both legs.",
            c.both_leg_writes as f64,
        ),
        (
            "ferry_migration_copy_ups_total",
            "Regions a foreground write moved to the target.",
            c.copy_ups as f64,
        ),
        (
            "ferry_migration_checkpoints_total",
            "Checkpoints completed (data flushed, then the index confirmed).",
            c.checkpoints as f64,
        ),
        (
            "ferry_migration_checkpoint_seconds_total",
            "Time spent in completed checkpoints.",
            c.checkpoint_seconds,
        ),
        (
            "ferry_migration_index_writes_total",
            "Words of the migrated-region index written to its store.",
            c.index_writes as f64,
        ),
    ];
    for (name, help, value) in counters {
        page.sample(name, Counter, help, &v, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_group_their_samples_and_labels_are_escaped() {
        let mut p = Exposition::default();
        p.sample("a_total", Kind::Counter, "A.", &[("x", "1")], 1.0);
        p.sample("b", Kind::Gauge, "B.", &[], 2.5);
        p.sample("a_total", Kind::Counter, "A.", &[("x", "q\"\\\n")], 3.0);
        p.histogram(
            "h_seconds",
            "H.",
            &[("k", "r")],
            &[0.1, 1.0],
            &[2, 0, 1],
            1.5,
        );
        assert_eq!(
            p.render(),
            "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 1\n\
             a_total{x=\"q\\\"\\\\\\n\"} 3\n\
             # HELP b B.\n# TYPE b gauge\nb 2.5\n\
             # HELP h_seconds H.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{k=\"r\",le=\"0.1\"} 2\nh_seconds_bucket{k=\"r\",le=\"1\"} 2\n\
             h_seconds_bucket{k=\"r\",le=\"+Inf\"} 3\nh_seconds_sum{k=\"r\"} 1.5\n\
             h_seconds_count{k=\"r\"} 3\n"
        );
    }
}
