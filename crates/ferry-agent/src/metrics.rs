//! The node's own metrics (its agent's view), beside what the serving
//! processes report (`ferry_host::metrics`): the map session, how long a
//! map change takes to be applied, the LUNs served, takeovers, hand-overs
//! and fence actions. Bumped by the agent's thread, read by the metrics
//! endpoint's, through atomics.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_host::metrics::text::{Exposition, Kind};

/// Bucket bounds of the change-to-applied histogram, seconds.
pub const APPLY_BOUNDS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The agent's counters.
#[derive(Default)]
pub struct NodeMetrics {
    connected: AtomicBool,
    connections: AtomicU64,
    session_losses: AtomicU64,
    passes: AtomicU64,
    pass_errors: AtomicU64,
    /// One per bound of [`APPLY_BOUNDS`], then `+Inf`.
    apply_buckets: [AtomicU64; APPLY_BOUNDS.len() + 1],
    apply_nanos: AtomicU64,
    serving: AtomicU64,
    claims: AtomicU64,
    hand_overs: AtomicU64,
    self_fences: AtomicU64,
    fenced: AtomicBool,
    fenced_previous: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl NodeMetrics {
    pub(crate) fn connected(&self, yes: bool) {
        self.connected.store(yes, Ordering::Relaxed);
    }
    pub(crate) fn new_connection(&self) {
        bump(&self.connections);
    }
    pub(crate) fn session_lost(&self) {
        bump(&self.session_losses);
        self.connected(false);
    }
    pub(crate) fn pass(&self, ok: bool) {
        bump(&self.passes);
        if !ok {
            bump(&self.pass_errors);
        }
    }
    /// A change of the map seen `took` before the pass that applied it
    /// completed.
    pub(crate) fn applied(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = APPLY_BOUNDS.partition_point(|&b| b < secs);
        bump(&self.apply_buckets[i]);
        self.apply_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
    pub(crate) fn serving(&self, n: usize) {
        self.serving.store(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn claim(&self) {
        bump(&self.claims);
    }
    pub(crate) fn hand_over(&self) {
        bump(&self.hand_overs);
    }
    pub(crate) fn fence(&self, fenced: bool) {
        if fenced && !self.fenced.swap(true, Ordering::Relaxed) {
            bump(&self.self_fences);
        }
        if !fenced {
            self.fenced.store(false, Ordering::Relaxed);
        }
    }
    pub(crate) fn fenced_previous(&self) {
        bump(&self.fenced_previous);
    }

    /// Writes the node's metrics, labelled with its name.
    pub fn write(&self, page: &mut Exposition, node: &str) {
        use Kind::{Counter, Gauge};
        let n = [("node", node)];
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let flag = |b: &AtomicBool| f64::from(u8::from(b.load(Ordering::Relaxed)));
        let rows: [(&'static str, Kind, &'static str, f64); 11] = [
            (
                "ferry_node_map_connected",
                Gauge,
                "1 while the agent has a live session with the map.",
                flag(&self.connected),
            ),
            (
                "ferry_node_map_connections_total",
                Counter,
                "Sessions the agent opened with the map (the first, then each reconnection).",
                get(&self.connections),
            ),
            (
                "ferry_node_map_sessions_lost_total",
                Counter,
                "Map sessions that expired under the agent.",
                get(&self.session_losses),
            ),
            (
                "ferry_node_passes_total",
                Counter,
                "Reconcile passes the agent ran.",
                get(&self.passes),
            ),
            (
                "ferry_node_pass_errors_total",
                Counter,
                "Reconcile passes that failed.",
                get(&self.pass_errors),
            ),
            (
                "ferry_node_luns_serving",
                Gauge,
                "LUNs this node owns and serves (its port active).",
                get(&self.serving),
            ),
            (
                "ferry_node_claims_total",
                Counter,
                "LUNs this node claimed: first placement, takeover from a dead owner, or a planned move here.",
                get(&self.claims),
            ),
            (
                "ferry_node_hand_overs_total",
                Counter,
                "LUNs this node handed to another node (planned moves).",
                get(&self.hand_overs),
            ),
            (
                "ferry_node_fenced",
                Gauge,
                "1 while this node has fenced itself (lost the map) and serves nothing.",
                flag(&self.fenced),
            ),
            (
                "ferry_node_self_fences_total",
                Counter,
                "Times this node fenced itself after losing the map.",
                get(&self.self_fences),
            ),
            (
                "ferry_node_fenced_previous_owners_total",
                Counter,
                "Fence actions on a LUN's previous owner before serving it here (RBD blocklist and lock break, file lock).",
                get(&self.fenced_previous),
            ),
        ];
        for (name, kind, help, v) in rows {
            page.sample(name, kind, help, &n, v);
        }
        let buckets: Vec<u64> = self
            .apply_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        page.histogram(
            "ferry_node_map_apply_seconds",
            "Time from the agent seeing a change of the map to the pass that applied it completing.",
            &n,
            &APPLY_BOUNDS,
            &buckets,
            self.apply_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
    }
}
