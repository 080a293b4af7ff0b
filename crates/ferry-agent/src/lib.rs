//! The per-node agent (`ferry agent`): keeps one gateway node's target in
//! line with the cluster LUN map.
//!
//! Each pass: read a snapshot of the map, [`plan`] which LUNs this node
//! serves (its claims) and which it may claim, give up what it must, take
//! claims whose turn came, compute the target this node should present,
//! apply only the difference to tgtd, execute pending migration requests
//! for the LUNs it serves, and report status. Passes run when the map
//! changes (a watch, not polling), and on timers only for claim turns,
//! retries after errors and migration progress reports.
//!
//! Fencing, so two nodes never write one volume:
//! - a claim is an ephemeral node: it lasts exactly as long as this
//!   node's session, and another node claims only after it is gone;
//! - this node stops serving (removes every LUN) as soon as its session
//!   is known expired, or once it has been cut off from the store for
//!   the whole session timeout (by then the store has expired it);
//! - the volume itself is locked by the process serving it (an exclusive
//!   `flock` on file volumes), so a new owner cannot open it until the
//!   old server let go; that attempt fails, is reported, and is retried.
//!
//! A LUN given up is removed from tgtd before its claim is released.
//!
//! Errors: a pass, and a migration request it carries out, fail with an
//! [`AgentError`]; the local target's failures (tgtadm, configfs) are its
//! sources.
//!
//! [`plan`]: ferry_map::placement::plan
mod error;
pub mod frontend;
pub mod lio;
pub mod metrics;
pub mod ports;
pub mod reservations;
pub mod tgt;
pub mod tgtd_ipc;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_core::MigrationState;
use ferry_host::control::{self, Request};
use ferry_host::ferry_scsi::alua::AccessState;
use ferry_host::StartOptions;
use ferry_map::placement::{hand_over_to, plan, NodePlan};
use ferry_map::state::{now_ms, LiveNode, MigrationAction, MigrationStatus, NodeStatus, Snapshot};
use ferry_map::store::{Event, MapStore, Session};
use ferry_map::MapError;

pub use crate::error::AgentError;
pub use crate::frontend::{Exports, Frontend, LioFrontend, PrepareLun, TgtFrontend};

/// How often a pass runs anyway while something waits: a claim turn, a
/// retry after an error, a migration in progress.
const RETRY: Duration = Duration::from_secs(1);

/// How often a pass runs with nothing pending: a resync in case tgtd was
/// changed behind the agent's back (not how map changes are seen).
const RESYNC: Duration = Duration::from_secs(30);

/// Makes a fresh store connection (after a session expired).
pub type Connect = Box<dyn Fn() -> Result<Box<dyn MapStore>, MapError> + Send>;

/// The agent's settings.
pub struct AgentConfig {
    pub node: String,
    pub frontend: Box<dyn Frontend>,
    /// Where the serving processes' control sockets are (tgtd's
    /// `FERRY_RUN_DIR`), for migration requests.
    pub run_dir: PathBuf,
}

/// Asks the serving process behind the control socket `sock`; a request
/// it refuses is an error saying why.
pub(crate) fn ask(sock: &Path, req: &Request) -> Result<control::Response, AgentError> {
    let r = control::call(sock, req)?;
    if r.ok {
        Ok(r)
    } else {
        Err(AgentError::Refused(
            r.error.unwrap_or_else(|| "refused".into()),
        ))
    }
}

/// The agent of one node.
pub struct Agent {
    cfg: AgentConfig,
    connect: Connect,
    store: Option<Box<dyn MapStore>>,
    registered: bool,
    /// When this node first saw each unowned LUN it may claim.
    unowned_since: BTreeMap<String, Instant>,
    /// Whether this node currently serves nothing because it fenced itself.
    fenced: bool,
    /// LUNs claimed whose previous server is not fenced yet.
    unfenced: BTreeSet<String>,
    /// The `order_seq` of each LUN this node serves when it last kept it:
    /// the map asking for the order again is a planned move.
    kept_at: BTreeMap<String, u64>,
    /// When a snapshot of the store last succeeded.
    last_contact: Instant,
    /// What the agent did, for the metrics endpoint.
    metrics: std::sync::Arc<metrics::NodeMetrics>,
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct PassReport {
    pub serving: Vec<String>,
    pub errors: BTreeMap<String, String>,
    /// When the next pass should run at the latest.
    pub next: Option<Duration>,
}

impl Agent {
    pub fn new(cfg: AgentConfig, connect: Connect) -> Agent {
        Agent {
            cfg,
            connect,
            store: None,
            registered: false,
            unowned_since: BTreeMap::new(),
            fenced: false,
            unfenced: BTreeSet::new(),
            kept_at: BTreeMap::new(),
            last_contact: Instant::now(),
            metrics: Default::default(),
        }
    }

    /// The agent's counters, which the metrics endpoint reads.
    pub fn metrics(&self) -> std::sync::Arc<metrics::NodeMetrics> {
        self.metrics.clone()
    }

    /// Runs passes until `stop` is set: on every change of the map, and
    /// otherwise when a pass asked to run again (claim turns, retries,
    /// migration reports) or every 30 s as a resync of tgtd's state.
    pub fn run(&mut self, stop: &AtomicBool) {
        log::info!("agent for node {} starting", self.cfg.node);
        let mut due = Instant::now();
        let mut changed = false;
        // When a change of the map was seen that no pass has applied yet.
        let mut seen: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            if changed || Instant::now() >= due {
                if changed {
                    seen.get_or_insert_with(Instant::now);
                }
                let result = self.pass();
                self.metrics.pass(result.is_ok());
                let next = match result {
                    Ok(r) => {
                        if let Some(at) = seen.take() {
                            self.metrics.applied(at.elapsed());
                        }
                        self.metrics.serving(r.serving.len());
                        r.next.unwrap_or(RESYNC)
                    }
                    Err(e) => {
                        log::warn!("node {}: {e}", self.cfg.node);
                        if e.is_session_expired() {
                            self.lost_session();
                            RETRY / 4
                        } else if e.is_transient() {
                            self.fence_if_silent();
                            RETRY / 4
                        } else {
                            RETRY
                        }
                    }
                };
                due = Instant::now() + next.min(RESYNC);
            }
            // Short slices so a stop request is seen within a second.
            let slice = due.saturating_duration_since(Instant::now()).min(RETRY);
            changed = self.wait(slice);
        }
        log::info!(
            "agent for node {} stopping (LUNs keep being served)",
            self.cfg.node
        );
    }

    /// Waits for a change of the map; true if one came.
    fn wait(&mut self, timeout: Duration) -> bool {
        let Some(store) = &self.store else {
            std::thread::sleep(timeout);
            return true;
        };
        match store.wait(timeout) {
            Ok(Event::Changed) => true,
            Ok(Event::Timeout) => false,
            Err(MapError::SessionExpired) => {
                self.lost_session();
                true
            }
            Err(e) => {
                log::warn!("watching the map: {e}");
                std::thread::sleep(timeout);
                true
            }
        }
    }

    /// The session ended: every claim is gone, so stop serving at once.
    fn lost_session(&mut self) {
        log::warn!(
            "node {}: session with the map expired; fencing",
            self.cfg.node
        );
        self.fence();
        self.metrics.session_lost();
        self.store = None;
        self.registered = false;
    }

    /// Stops media access to every ferry LUN of the local target (tgt:
    /// its ports turn unavailable; otherwise the LUNs are removed);
    /// retried by later passes until it succeeds.
    fn fence(&mut self) {
        match self.cfg.frontend.fence(&self.cfg.run_dir) {
            Ok(()) => {
                self.fenced = true;
                self.metrics.fence(true);
                self.metrics.serving(0);
            }
            Err(e) => log::error!("fencing failed (retrying): {e}"),
        }
    }

    /// Fences once the store has not been heard from for half the session
    /// timeout. The server expires the session a full timeout after it
    /// last heard from this node, and only then may another node claim
    /// its LUNs, so this node has stopped serving well before.
    fn fence_if_silent(&mut self) {
        let Some(timeout) = self.store.as_ref().map(|s| s.session_timeout()) else {
            return;
        };
        let silent = self.last_contact.elapsed();
        if !self.fenced && !timeout.is_zero() && silent >= timeout / 2 {
            log::warn!(
                "node {}: no contact with the map for {silent:?} (session timeout {timeout:?}); fencing",
                self.cfg.node
            );
            self.fence();
        }
    }

    fn store(&mut self) -> Result<&dyn MapStore, MapError> {
        if self.store.is_none() {
            self.store = Some((self.connect)()?);
            self.metrics.new_connection();
            self.registered = false;
        }
        Ok(self.store.as_deref().expect("set above"))
    }

    /// One reconcile pass.
    pub fn pass(&mut self) -> Result<PassReport, AgentError> {
        let node = self.cfg.node.clone();
        let metrics = self.metrics.clone();
        let store = self.store()?;
        match store.session() {
            Session::Expired => return Err(MapError::SessionExpired.into()),
            Session::Disconnected(_) => {
                self.metrics.connected(false);
                self.fence_if_silent();
                return Ok(PassReport {
                    // Short steps, so the fence lands on time.
                    next: Some(RETRY / 4),
                    ..Default::default()
                });
            }
            Session::Connected => metrics.connected(true),
        }
        let mut snap = store.snapshot()?;
        self.last_contact = Instant::now();
        if !snap.map.nodes.contains_key(&node) {
            return Err(AgentError::UnknownNode { node });
        }
        if !self.registered || !snap.live.contains_key(&node) {
            let live = LiveNode::this_process(&snap.map.nodes[&node].portal);
            self.store()?.register(&node, &live)?;
            self.registered = true;
            // Plan with this node counted as live.
            snap = self.store()?.snapshot()?;
        }
        let mut report = PassReport::default();
        let p = plan(&snap, &node);
        let (serve, taking_over) = self.claim_turns(&snap, &p, &mut report)?;
        if let Some(n) = snap.map.nodes.get(&node) {
            let want = match n.frontend {
                ferry_map::Frontend::Tgt => "tgt",
                ferry_map::Frontend::Lio => "lio",
            };
            if want != self.cfg.frontend.name() {
                return Err(AgentError::WrongFrontend {
                    node,
                    in_map: want,
                    drives: self.cfg.frontend.name(),
                });
            }
        }
        let handing = self.hand_overs(&snap, &serve);
        let serve: Vec<String> = serve.into_iter().filter(|l| !handing.contains(l)).collect();
        let exports = Exports {
            serve: serve.clone(),
            standby: p
                .standby
                .iter()
                .chain(&taking_over)
                .chain(&handing)
                .filter(|l| !serve.contains(l))
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            group: snap.map.nodes.get(&node).map(|n| n.port_group()),
        };
        // LUNs the target could not export; a LUN still fencing its old
        // owner is exported (its port says transitioning).
        let failed = self.cfg.frontend.reconcile(&snap, &exports)?;
        let (active, failed) =
            self.sync_ports(&snap, &exports, &taking_over, &handing, failed, &mut report);
        report.errors.extend(failed);
        // Ordering: a handed-over LUN's claim goes only once its port
        // here is no longer active (its volume closed and flushed).
        for lun in &handing {
            if !active.contains(lun) && !report.errors.contains_key(lun) {
                self.store()?.release(lun, &node)?;
                self.metrics.hand_over();
                self.kept_at.remove(lun);
            }
        }
        let failed_luns: BTreeSet<String> = report.errors.keys().cloned().collect();
        // Give up a claim only once the target no longer serves the LUN:
        // its removal did not fail (failures of LUNs the map no longer
        // knows cannot be attributed, so any failure holds those back).
        for lun in &p.release {
            let attributable = snap.map.luns.contains_key(lun);
            if !report.errors.contains_key(lun) && (attributable || report.errors.is_empty()) {
                self.store()?.release(lun, &node)?;
            }
        }
        self.fenced = false;
        self.metrics.fence(false);
        report.serving = serve
            .into_iter()
            .filter(|l| !failed_luns.contains(l) && active.contains(l))
            .collect();
        if !handing.is_empty() || !taking_over.is_empty() {
            report.next = Some(report.next.map_or(RETRY / 4, |n| n.min(RETRY / 4)));
        }
        self.sync_lun_settings(&snap, &report.serving, &mut report.errors);
        let migrating = self.migrations(&snap, &report.serving)?;
        if !report.errors.is_empty() || migrating {
            report.next = Some(report.next.map_or(RETRY, |n| n.min(RETRY)));
        }
        let status = NodeStatus {
            applied_version: snap.version,
            serving: report.serving.clone(),
            errors: report.errors.clone(),
            at_ms: now_ms(),
        };
        self.store()?.put_status(&node, &status)?;
        Ok(report)
    }

    /// The LUNs of `serve` whose node order the map asked for again since
    /// this node last kept them: they go to the first live node of the
    /// order, demoted here (volume closed and flushed) before the claim
    /// is released.
    fn hand_overs(&mut self, snap: &Snapshot, serve: &[String]) -> Vec<String> {
        let node = &self.cfg.node;
        self.kept_at.retain(|l, _| serve.contains(l));
        let mut handing = Vec::new();
        for lun in serve {
            let Some(l) = snap.map.luns.get(lun) else {
                continue;
            };
            let kept = self.kept_at.entry(lun.clone()).or_insert(l.order_seq);
            match hand_over_to(snap, l, node, *kept) {
                Some(to) => {
                    log::info!(
                        "node {node}: handing LUN {lun} to {to} (its node order was asked for)"
                    );
                    handing.push(lun.clone());
                }
                // This order keeps the LUN here.
                None => *kept = l.order_seq,
            }
        }
        handing
    }

    /// Gives every exported LUN's port its groups' states: this node's
    /// own group active where it serves the LUN, transitioning while it
    /// takes it over or hands it over, standby elsewhere. Ordering: a
    /// target that reports states itself (LIO) is told every non-active
    /// state before the serving process's port closes its volume, and
    /// this node's active state only after the port opened it. `failed`:
    /// the LUNs the target could not export. Returns the LUNs whose port
    /// is active now, and `failed` with what failed here.
    fn sync_ports(
        &mut self,
        snap: &Snapshot,
        exports: &Exports,
        taking_over: &[String],
        handing: &[String],
        mut failed: BTreeMap<String, String>,
        report: &mut PassReport,
    ) -> (BTreeSet<String>, BTreeMap<String, String>) {
        let own_state = |lun: &String| {
            if exports.serve.contains(lun) {
                AccessState::ActiveOptimized
            } else if taking_over.contains(lun) || handing.contains(lun) {
                AccessState::Transitioning
            } else {
                AccessState::Standby
            }
        };
        let wanted: BTreeMap<String, ports::WantedPort> = exports
            .serve
            .iter()
            .chain(&exports.standby)
            .filter(|l| !failed.contains_key(*l))
            .filter_map(|l| {
                ports::wanted_port(snap, l, &self.cfg.node, own_state(l)).map(|w| (l.clone(), w))
            })
            .collect();
        let staying = ports::staying_active(&self.cfg.run_dir, &wanted);
        failed.extend(self.cfg.frontend.publish_alua(snap, &wanted, &staying));
        let frontend = &self.cfg.frontend;
        let prepare = |lun: &str, spec: &str| frontend.prepare(lun, spec);
        let mut active = BTreeSet::new();
        for (lun, r) in ports::apply(&self.cfg.run_dir, &wanted, &prepare) {
            match r {
                Ok(s) if s.is_active() => {
                    active.insert(lun);
                }
                Ok(_) => {}
                Err(why) => {
                    report.errors.insert(lun, format!("target port: {why}"));
                }
            }
        }
        failed.extend(self.cfg.frontend.publish_alua(snap, &wanted, &active));
        // tcmu-runner restarting reopens every device standby (their
        // volumes closed, LIO's configfs still saying active): the next
        // pass, within a second, turns them active again.
        if self.cfg.frontend.name() == "lio" && !wanted.is_empty() {
            report.next = Some(report.next.map_or(RETRY, |n| n.min(RETRY)));
        }
        (active, failed)
    }

    /// Takes the claims whose turn came; returns the LUNs to serve and
    /// those this node holds but whose previous server is not fenced yet.
    fn claim_turns(
        &mut self,
        snap: &Snapshot,
        p: &NodePlan,
        report: &mut PassReport,
    ) -> Result<(Vec<String>, Vec<String>), MapError> {
        let node = self.cfg.node.clone();
        let mut serve = p.serve.clone();
        self.unowned_since.retain(|l, _| p.claim.contains_key(l));
        let now = Instant::now();
        for (lun, delay) in &p.claim {
            let since = *self.unowned_since.entry(lun.clone()).or_insert(now);
            let due = since + *delay;
            if now >= due {
                if self.store()?.claim(lun, &node)? {
                    log::info!("node {node}: claimed LUN {lun}");
                    self.metrics.claim();
                    self.unfenced.insert(lun.clone());
                    serve.push(lun.clone());
                }
                self.unowned_since.remove(lun);
            } else {
                let left = due - now;
                report.next = Some(report.next.map_or(left, |n| n.min(left)));
            }
        }
        // A LUN this node just took over is served only once whoever
        // served it before is fenced; until then it is reported and
        // retried.
        self.unfenced.retain(|l| serve.contains(l));
        let pending: Vec<String> = self.unfenced.iter().cloned().collect();
        let mut taking_over = Vec::new();
        for lun in pending {
            match self.fence_previous(&lun, snap) {
                Ok(()) => {
                    self.unfenced.remove(&lun);
                }
                Err(e) => {
                    log::error!("node {node}: LUN {lun}: fencing its previous server failed: {e}");
                    report.errors.insert(lun.clone(), format!("fencing: {e}"));
                    serve.retain(|l| *l != lun);
                    taking_over.push(lun);
                }
            }
        }
        serve.sort();
        Ok((serve, taking_over))
    }

    /// Fences whoever served a LUN before this node claimed it (see
    /// `VolumeSpec::fence_other_clients`).
    fn fence_previous(&self, lun: &str, snap: &Snapshot) -> Result<(), AgentError> {
        let Some(l) = snap.map.luns.get(lun) else {
            return Ok(());
        };
        let fenced =
            ferry_host::VolumeSpec::parse(&l.spec).and_then(|s| s.fence_other_clients())?;
        if !fenced.is_empty() {
            self.metrics.fenced_previous();
            log::warn!(
                "node {}: LUN {lun}: fenced {}",
                self.cfg.node,
                fenced.join(", ")
            );
        }
        Ok(())
    }

    /// Gives each served LUN the size, QoS limits and cache mode the map
    /// sets (a size only grows), through the serving process's control
    /// socket: none needs the target reconfigured (tgt LUNs also start in
    /// the cache mode, see `Tgtadm::apply`).
    fn sync_lun_settings(
        &self,
        snap: &Snapshot,
        serving: &[String],
        errors: &mut BTreeMap<String, String>,
    ) {
        let served: BTreeMap<String, _> = control::hosts_in(&self.cfg.run_dir)
            .into_iter()
            .flat_map(|(path, list)| {
                list.into_iter()
                    .map(move |s| (s.spec, (path.clone(), s.cache_mode, s.qos, s.size)))
            })
            .collect();
        for name in serving {
            let Some(l) = snap.map.luns.get(name) else {
                continue;
            };
            let Ok(spec) = ferry_host::VolumeSpec::parse(&l.spec).map(|s| s.to_string()) else {
                continue;
            };
            let Some((sock, mode, qos, size)) = served.get(&spec) else {
                continue;
            };
            let mut now = *size;
            match l.size {
                Some(want) if want > *size => {
                    let req = Request::Resize {
                        volume: spec.clone(),
                        size: want,
                        force: false,
                    };
                    match ask(sock, &req) {
                        Ok(_) => {
                            now = want;
                            log::info!(
                                "node {}: LUN {name}: grown from {size} to {want} bytes",
                                self.cfg.node
                            )
                        }
                        Err(e) => {
                            errors.insert(name.clone(), format!("resize: {e}"));
                        }
                    }
                }
                _ => {}
            }
            // A front-end that reports the capacity itself (LIO) follows
            // the volume, whoever resized it.
            if let Err(e) = self.cfg.frontend.capacity(&spec, now) {
                errors.insert(name.clone(), format!("capacity: {e}"));
            }
            if *qos != l.qos {
                let req = Request::Qos {
                    volume: spec.clone(),
                    limits: Some(l.qos),
                };
                match ask(sock, &req) {
                    Ok(_) => {
                        log::info!("node {}: LUN {name}: QoS {qos} -> {}", self.cfg.node, l.qos)
                    }
                    Err(e) => {
                        errors.insert(name.clone(), format!("QoS: {e}"));
                    }
                }
            }
            if *mode == l.cache_mode {
                continue;
            }
            let req = Request::CacheMode {
                volume: spec.clone(),
                mode: l.cache_mode,
            };
            match ask(sock, &req) {
                Ok(_) => log::info!(
                    "node {}: LUN {name}: cache mode {mode} -> {}",
                    self.cfg.node,
                    l.cache_mode
                ),
                Err(e) => {
                    errors.insert(name.clone(), format!("cache mode: {e}"));
                }
            }
        }
    }

    /// Executes new migration requests of served LUNs and reports their
    /// progress; true while any of them is still copying.
    fn migrations(&mut self, snap: &Snapshot, serving: &[String]) -> Result<bool, MapError> {
        let node = self.cfg.node.clone();
        let mut active = false;
        for lun in serving {
            let Some((req, _)) = snap.migrations.get(lun) else {
                continue;
            };
            let spec = &snap.map.luns[lun].spec;
            let prev = snap.migration_status.get(lun);
            let done = prev.map_or(0, |s| s.done_seq);
            let mut status = MigrationStatus {
                done_seq: done,
                node: node.clone(),
                error: prev.and_then(|p| p.error.clone()),
                state: prev.and_then(|p| p.state.clone()),
                progress: None,
                at_ms: now_ms(),
            };
            if req.seq > done {
                log::info!(
                    "node {node}: migration request {} for {lun}: {:?}",
                    req.seq,
                    req.action
                );
                status.error = self.execute(spec, &req.action).err().map(|e| e.to_string());
                status.done_seq = req.seq;
            }
            let progress = self
                .control(
                    spec,
                    Request::Status {
                        volume: spec.clone(),
                    },
                )
                .ok()
                .and_then(|r| r.progress);
            match &progress {
                Some(p) => {
                    active |= matches!(p.state, MigrationState::Copying | MigrationState::Aborting);
                    status.state = Some(p.state.to_string());
                }
                // The serving process forgets a migration once it ended;
                // the last request executed says how.
                None if status.error.is_none() => match req.action {
                    MigrationAction::Commit { .. } => status.state = Some("committed".into()),
                    MigrationAction::Abort => status.state = Some("aborted".into()),
                    _ => {}
                },
                None => {}
            }
            status.progress = progress.and_then(|p| serde_json::to_value(p).ok());
            let changed = prev.is_none_or(|p| {
                p.done_seq != status.done_seq
                    || p.error != status.error
                    || p.state != status.state
                    || p.progress != status.progress
            });
            if changed {
                self.store()?.put_migration_status(lun, &status)?;
            }
        }
        Ok(active)
    }

    fn control(&self, spec: &str, req: Request) -> Result<control::Response, AgentError> {
        let socket = control::find_host_in(&self.cfg.run_dir, spec).ok_or_else(|| {
            AgentError::NotServed {
                spec: spec.to_string(),
            }
        })?;
        ask(&socket, &req)
    }

    fn execute(&self, spec: &str, action: &MigrationAction) -> Result<(), AgentError> {
        let volume = spec.to_string();
        let req = match action {
            MigrationAction::Start { target, rate } => {
                // Idempotent across a move: a migration already under way
                // (resumed from its record) is the one requested.
                if let Ok(r) = self.control(
                    spec,
                    Request::Status {
                        volume: volume.clone(),
                    },
                ) {
                    if r.progress.is_some() {
                        return Ok(());
                    }
                }
                Request::Start {
                    volume,
                    target: target.clone(),
                    options: StartOptions {
                        rate_limit: *rate,
                        ..StartOptions::default()
                    },
                }
            }
            MigrationAction::Pause => Request::Pause { volume },
            MigrationAction::Resume => Request::Resume { volume },
            MigrationAction::Rate { rate } => Request::Rate {
                volume,
                bytes_per_sec: *rate,
            },
            MigrationAction::Abort => Request::Abort { volume },
            MigrationAction::Commit { remove_source } => Request::Commit {
                volume,
                remove_source: *remove_source,
            },
        };
        self.control(spec, req).map(drop)
    }
}
