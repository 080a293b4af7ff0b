//! The local target an agent drives: tgtd (through tgtadm) or LIO
//! (through configfs). Both take the same input, the snapshot and the
//! LUNs this node serves, and change only what differs.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferry_host::ferry_scsi::alua::AccessState;
use ferry_host::VolumeSpec;
use ferry_map::{ChapCredential, Snapshot};

use crate::lio::{Lio, WantedLio};
use crate::tgt::{diff, scsi_identity, TgtOp, Tgtadm, WantedTarget};
use crate::AgentError;

/// What a node's target should export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exports {
    /// LUNs this node owns (or is taking over): exported with the
    /// volume open once the node's port group turns active.
    pub serve: Vec<String>,
    /// LUNs another node owns that this one may take over: exported in
    /// standby, the volume not opened (front-ends with ALUA ports).
    pub standby: Vec<String>,
    /// This node's ALUA target port group.
    pub group: Option<u16>,
}

impl Exports {
    /// Every exported LUN, with whether it is exported standby.
    pub fn luns(&self) -> impl Iterator<Item = (&String, bool)> {
        let standby = self.standby.iter().map(|n| (n, true));
        self.serve.iter().map(|n| (n, false)).chain(standby)
    }
}

/// A node's target.
pub trait Frontend: Send {
    fn name(&self) -> &'static str;
    /// Makes the target present exactly the LUNs `exports` names (with
    /// their targets, ACLs and CHAP). Returns what failed, by LUN name
    /// where it concerns one LUN; an error aborts the pass.
    fn reconcile(
        &mut self,
        snap: &Snapshot,
        exports: &Exports,
    ) -> Result<BTreeMap<String, String>, AgentError>;
    /// Stops serving every ferry LUN (fencing).
    fn clear(&mut self) -> Result<(), AgentError>;
    /// Stops media access to every ferry LUN because this node lost the
    /// map: by default by removing them ([`Frontend::clear`]).
    fn fence(&mut self, run_dir: &Path) -> Result<(), AgentError> {
        let _ = run_dir;
        self.clear()
    }
    /// Publishes the ALUA states of `wanted`'s ports where the target
    /// itself reports them (LIO: configfs). Called before the serving
    /// processes' ports change, with `active` the LUNs whose port is
    /// active and stays so, and after, with the LUNs whose port is active
    /// now: this node's own group turns active here only once its volume
    /// is open, and leaves active before it closes. Returns what failed,
    /// by LUN.
    fn publish_alua(
        &mut self,
        snap: &Snapshot,
        wanted: &BTreeMap<String, crate::ports::WantedPort>,
        active: &BTreeSet<String>,
    ) -> BTreeMap<String, String> {
        let _ = (snap, wanted, active);
        BTreeMap::new()
    }
    /// Work on LUN `lun`'s volume (`spec`) before this node opens it: run
    /// when a LUN is added active, and before a standby port turns
    /// active (a standby node may not touch the volume the owner holds).
    fn prepare(&self, lun: &str, spec: &str) -> Result<(), String> {
        let _ = (lun, spec);
        Ok(())
    }

    /// The volume `spec` serves now has `bytes` (it was resized): a
    /// front-end whose core reports the capacity itself learns it here
    /// (LIO's TCMU device size). tgt's plugin follows on its own.
    fn capacity(&self, spec: &str, bytes: u64) -> Result<(), String> {
        let _ = (spec, bytes);
        Ok(())
    }
}

/// The targets this node presents for `exports` (tgt's view: initiators
/// per target).
pub fn wanted_targets(snap: &Snapshot, exports: &Exports) -> BTreeMap<String, WantedTarget> {
    let mut out: BTreeMap<String, WantedTarget> = BTreeMap::new();
    for (name, is_standby) in exports.luns() {
        let Some(l) = snap.map.luns.get(name) else {
            continue;
        };
        let Some(t) = snap.map.targets.get(&l.target) else {
            continue;
        };
        let w = out.entry(l.target.clone()).or_insert_with(|| WantedTarget {
            luns: BTreeMap::new(),
            initiators: snap.map.initiators_of_target(&l.target),
            chap: t.chap.clone(),
            mutual_chap: t.mutual_chap.clone(),
            standby: BTreeSet::new(),
            group: exports.group,
        });
        w.luns.insert(l.lun, (l.name.clone(), l.spec.clone()));
        if is_standby {
            w.standby.insert(l.lun);
        }
    }
    out
}

/// Work done on a LUN's volume before this node starts serving it: the
/// LUN's name and spec; an error keeps the LUN from being served.
pub type PrepareLun = Box<dyn Fn(&str, &str) -> Result<(), String> + Send>;

/// tgtd, reached through tgtadm.
pub struct TgtFrontend {
    pub tgt: Tgtadm,
    /// CHAP secrets applied per target since start (tgtd cannot show them).
    chap: BTreeMap<String, ChapCredential>,
    /// Run before each LUN is added to tgtd (the agent points the LUN's
    /// persistent reservations at the ZooKeeper map).
    prepare: Option<PrepareLun>,
}

impl TgtFrontend {
    pub fn new(tgt: Tgtadm) -> Self {
        TgtFrontend {
            tgt,
            chap: BTreeMap::new(),
            prepare: None,
        }
    }

    /// Runs `prepare` before each LUN is added.
    pub fn with_prepare(mut self, prepare: PrepareLun) -> Self {
        self.prepare = Some(prepare);
        self
    }
}

impl Frontend for TgtFrontend {
    fn name(&self) -> &'static str {
        "tgt"
    }

    fn reconcile(
        &mut self,
        snap: &Snapshot,
        exports: &Exports,
    ) -> Result<BTreeMap<String, String>, AgentError> {
        let wanted = wanted_targets(snap, exports);
        let shown = self.tgt.show()?;
        let ops = diff(&shown, &wanted, &self.chap);
        if !ops.is_empty() {
            log::info!(
                "tgt: applying {} change(s) for map version {}",
                ops.len(),
                snap.version
            );
        }
        let lun_of_path = |tid: u32, lun: u32| {
            shown
                .iter()
                .find(|t| t.tid == tid)
                .and_then(|t| t.luns.get(&lun))
                .and_then(|(_, path)| {
                    snap.map
                        .luns
                        .values()
                        .find(|l| l.spec.trim() == path.trim())
                })
                .map(|l| l.name.clone())
        };
        let iqn_of = |tid: u32| {
            shown
                .iter()
                .find(|t| t.tid == tid)
                .map(|t| t.iqn.clone())
                .or_else(|| {
                    ops.iter().find_map(|o| match o {
                        TgtOp::NewTarget { tid: t, iqn } if *t == tid => Some(iqn.clone()),
                        _ => None,
                    })
                })
        };
        let mut errors = BTreeMap::new();
        let mut failed_tids = BTreeSet::new();
        for op in &ops {
            let tid = match op {
                TgtOp::NewLun { tid, .. }
                | TgtOp::Bind { tid, .. }
                | TgtOp::Account { tid, .. }
                | TgtOp::Ready { tid } => Some(*tid),
                _ => None,
            };
            if tid.is_some_and(|t| failed_tids.contains(&t)) {
                continue;
            }
            if let TgtOp::NewLun {
                name, spec, port, ..
            } = op
            {
                if port.standby {
                    // Opens nothing: prepared when it turns active.
                } else if let Err(why) = self.prepare(name, spec) {
                    log::warn!("LUN {name}: not served: {why}");
                    errors.insert(name.clone(), why);
                    continue;
                }
            }
            let cache = match op {
                TgtOp::NewLun { name, .. } => snap.map.luns.get(name).map(|l| l.cache_mode),
                _ => None,
            };
            match self.tgt.apply(op, cache) {
                Ok(()) => {
                    if let TgtOp::Account {
                        chap,
                        tid,
                        outgoing,
                    } = op
                    {
                        if let Some(iqn) = iqn_of(*tid) {
                            let key = if *outgoing {
                                crate::tgt::outgoing_key(&iqn)
                            } else {
                                iqn
                            };
                            self.chap.insert(key, chap.clone());
                        }
                    }
                }
                Err(e) => {
                    log::warn!("{e}");
                    let key = match op {
                        TgtOp::NewLun { name, .. } => name.clone(),
                        TgtOp::DeleteLun { tid, lun, .. } => lun_of_path(*tid, *lun)
                            .unwrap_or_else(|| format!("tid {tid} lun {lun}")),
                        TgtOp::NewTarget { tid, iqn } => {
                            failed_tids.insert(*tid);
                            format!("target {iqn}")
                        }
                        // A target without its ACLs or CHAP must not
                        // turn ready: it stays offline (logins retried)
                        // until a later pass completes it.
                        TgtOp::Bind { tid, .. }
                        | TgtOp::Account { tid, .. }
                        | TgtOp::Offline { tid } => {
                            failed_tids.insert(*tid);
                            format!("{op:?}")
                                .split_whitespace()
                                .next()
                                .unwrap_or("tgt")
                                .to_string()
                        }
                        other => format!("{other:?}")
                            .split_whitespace()
                            .next()
                            .unwrap_or("tgt")
                            .to_string(),
                    };
                    errors.insert(key, e.why);
                }
            }
        }
        Ok(errors)
    }

    /// Turns every ferry port of this node's tgtd unavailable (each
    /// closes its volume; the LUNs stay exported, so initiators see the
    /// state rather than a LUN gone); removes the LUNs if any port cannot
    /// be reached.
    fn fence(&mut self, run_dir: &Path) -> Result<(), AgentError> {
        match crate::ports::make_all_unavailable(run_dir) {
            Ok(n) => {
                log::warn!("fenced: {n} target port(s) unavailable");
                Ok(())
            }
            Err(e) => {
                log::error!("fencing by port state failed ({e}); removing the LUNs");
                self.clear()
            }
        }
    }

    fn prepare(&self, lun: &str, spec: &str) -> Result<(), String> {
        self.prepare.as_ref().map_or(Ok(()), |p| p(lun, spec))
    }

    fn clear(&mut self) -> Result<(), AgentError> {
        let shown = self.tgt.show()?;
        let mut first = Ok(());
        for op in diff(&shown, &BTreeMap::new(), &BTreeMap::new()) {
            if let Err(e) = self.tgt.apply(&op, None) {
                log::error!("fencing: {e}");
                if first.is_ok() {
                    first = Err(e.into());
                }
            }
        }
        first
    }
}

/// LIO, through configfs; the LUNs run in tcmu-runner (handler_ferry).
pub struct LioFrontend {
    pub root: PathBuf,
    pub node: String,
}

/// What LIO should present for `exports`: per target, the LUNs and, per
/// initiator, the LUNs it is mapped to (LIO masks per LUN).
pub fn wanted_lio(snap: &Snapshot, exports: &Exports) -> BTreeMap<String, WantedLio> {
    let mut out: BTreeMap<String, WantedLio> = BTreeMap::new();
    for (name, is_standby) in exports.luns() {
        let Some(l) = snap.map.luns.get(name) else {
            continue;
        };
        let Some(t) = snap.map.targets.get(&l.target) else {
            continue;
        };
        let w = out.entry(l.target.clone()).or_insert_with(|| WantedLio {
            chap: t.chap.clone(),
            mutual_chap: t.mutual_chap.clone(),
            group: exports.group,
            ..Default::default()
        });
        w.luns.insert(l.lun, (l.name.clone(), l.spec.clone()));
        if is_standby {
            w.standby.insert(l.lun);
        }
        for i in snap
            .map
            .initiators
            .values()
            .filter(|i| i.luns.contains(name))
        {
            w.acls.entry(i.iqn.clone()).or_default().insert(l.lun);
        }
    }
    out
}

fn volume_size(spec: &str) -> Result<u64, String> {
    VolumeSpec::parse(spec)
        .and_then(|s| s.size_unlocked())
        .map_err(|e| e.to_string())
}

impl LioFrontend {
    /// The configfs tree, for what needs no portal (a device's size,
    /// removing everything).
    fn configfs(&self) -> Lio {
        Lio {
            root: self.root.clone(),
            portal: String::new(),
        }
    }

    fn lio(&self, snap: &Snapshot) -> Lio {
        let portal = snap
            .map
            .nodes
            .get(&self.node)
            .map(|n| n.portal.clone())
            .unwrap_or_else(|| "0.0.0.0:3260".into());
        Lio {
            root: self.root.clone(),
            portal,
        }
    }
}

impl Frontend for LioFrontend {
    fn name(&self) -> &'static str {
        "lio"
    }

    fn reconcile(
        &mut self,
        snap: &Snapshot,
        exports: &Exports,
    ) -> Result<BTreeMap<String, String>, AgentError> {
        if !self.root.join("core").is_dir() {
            return Err(AgentError::NoLio {
                root: self.root.clone(),
            });
        }
        let wanted = wanted_lio(snap, exports);
        Ok(self
            .lio(snap)
            .reconcile(&wanted, &volume_size, &|name| scsi_identity(name).1))
    }

    fn capacity(&self, spec: &str, bytes: u64) -> Result<(), String> {
        self.configfs()
            .set_capacity(spec, bytes)
            .map_err(|e| e.to_string())
    }

    fn publish_alua(
        &mut self,
        snap: &Snapshot,
        wanted: &BTreeMap<String, crate::ports::WantedPort>,
        active: &BTreeSet<String>,
    ) -> BTreeMap<String, String> {
        let lio = self.lio(snap);
        let mut errors = BTreeMap::new();
        for (name, w) in wanted {
            let Some(l) = snap.map.luns.get(name) else {
                continue;
            };
            let groups: Vec<(u16, u8, bool)> = w
                .groups
                .iter()
                .map(|g| {
                    let state = if g.id != w.own_group || active.contains(name) {
                        g.state
                    } else if g.state.is_active() {
                        // Not open yet: LIO must not let media access in.
                        AccessState::Transitioning
                    } else {
                        g.state
                    };
                    (g.id, state.code(), g.preferred)
                })
                .collect();
            if let Err(e) = lio.set_alua(name, &l.target, l.lun, w.own_group, &groups, true) {
                errors.insert(name.clone(), format!("ALUA: {e}"));
            }
        }
        errors
    }

    fn clear(&mut self) -> Result<(), AgentError> {
        Ok(self.configfs().clear()?)
    }
}
