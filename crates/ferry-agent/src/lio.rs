//! Driving LIO through configfs (`/sys/kernel/config/target`), the
//! kernel interface targetcli itself writes through (rtslib): ferry LUNs
//! are `user:ferry` backstores (TCMU devices served by tcmu-runner with
//! handler_ferry.so), exported under iSCSI targets with per-initiator
//! mapped LUNs (LIO masks per LUN, unlike tgt's per-target ACLs).
//!
//! Managed objects: backstores whose TCMU config is `ferry/...`, and
//! targets that the map names or that export such a backstore; anything
//! else configured in LIO is left alone.
//!
//! Changes are idempotent steps applied in an order the kernel accepts:
//! mapped LUNs and LUN links go before the backstores they point to, and
//! new backstores before the LUNs that link them.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ferry_map::ChapCredential;

/// The TCMU subtype of handler_ferry.
const SUBTYPE: &str = "ferry";

/// A ferry backstore as configfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backstore {
    /// `core/user_N/<name>`.
    pub dir: PathBuf,
    /// The volume spec, canonical (`file:/path`, `rbd:pool/image`).
    pub spec: String,
    /// The handler's `tpg=` option: the node's port group the device was
    /// set up with (none for a backstore made before ALUA, or by hand).
    pub group: Option<u16>,
}

/// An iSCSI target (TPG 1) as configfs shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LioTarget {
    /// TPG LUN number -> backstore name.
    pub luns: BTreeMap<u32, String>,
    /// Initiator -> mapped LUN numbers (the same number as the TPG LUN).
    pub acls: BTreeMap<String, BTreeSet<u32>>,
}

/// What the agent wants of one target on a LIO node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WantedLio {
    /// LUN number -> (LUN name = backstore name, volume spec).
    pub luns: BTreeMap<u32, (String, String)>,
    /// The LUNs (by number) exported in standby: their backstores are
    /// created with the handler's `alua=standby`, so the volume is not
    /// opened until this node's group turns active.
    pub standby: BTreeSet<u32>,
    /// This node's ALUA target port group (the handler's `tpg=`).
    pub group: Option<u16>,
    /// Initiator -> the LUN numbers it may use.
    pub acls: BTreeMap<String, BTreeSet<u32>>,
    pub chap: Option<ChapCredential>,
    /// The target's own credentials (mutual CHAP): each ACL's
    /// `auth/userid_mutual` and `auth/password_mutual` (targetcli's mutual_userid and mutual_password).
    pub mutual_chap: Option<ChapCredential>,
}

/// The TCMU cfgstring for a spec (rtslib forbids ':' in it, so `rbd:`
/// is spelled `rbd/`, and file volumes are plain absolute paths).
/// Control options every backstore the agent creates gets, before it is
/// enabled:
/// - `hw_max_sectors=2048`: commands of up to 1 MiB (at 512-byte blocks).
///   The TCMU default, 128 sectors (64 KiB), splits every 1 MiB request
///   an initiator sends into 16 commands, each a round trip through the
///   ring and the handler.
/// - `max_data_area_mb=256`: the ring's data area, room for a full queue
///   ([`TCMU_QUEUE_DEPTH`] commands) of 1 MiB with room to spare; pages
///   are allocated as commands use them, so an idle LUN pins little.
pub const BACKSTORE_DEFAULTS: [&str; 2] = ["hw_max_sectors=2048", "max_data_area_mb=256"];

/// The queue depth of a TCMU device (fixed by the kernel), which the
/// agent also gives each target portal group as its command window.
pub const TCMU_QUEUE_DEPTH: u32 = 128;

/// configfs's code of the transitioning ALUA state.
const TRANSITIONING: u8 = 15;

pub fn cfgstring(spec: &str) -> String {
    if let Some(p) = spec.strip_prefix("file:") {
        format!("{SUBTYPE}/{p}")
    } else if let Some(r) = spec.strip_prefix("rbd:") {
        format!("{SUBTYPE}/rbd/{r}")
    } else {
        format!("{SUBTYPE}/{spec}")
    }
}

/// The spec a TCMU config string stands for, if it is a ferry one.
pub fn spec_of_config(config: &str) -> Option<String> {
    let rest = config.strip_prefix(SUBTYPE)?.strip_prefix('/')?;
    let rest = rest.split(';').next().unwrap_or(rest);
    Some(match rest.strip_prefix("rbd/") {
        Some(r) => format!("rbd:{r}"),
        None => format!("file:{}", rest.strip_prefix("file:").unwrap_or(rest)),
    })
}

/// Pulls `Key: value` out of a configfs `info` file.
fn info_field(info: &str, key: &str) -> Option<String> {
    let flat = info.split_whitespace().collect::<Vec<_>>();
    let k = format!("{key}:");
    flat.iter()
        .position(|w| *w == k)
        .and_then(|i| flat.get(i + 1))
        .map(|v| v.to_string())
}

fn dirs(p: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<_> = fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

/// The first symlink in a directory, as the name of what it points to.
fn link_target_name(dir: &Path) -> Option<String> {
    fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let t = fs::read_link(e.path()).ok()?;
        Some(t.file_name()?.to_string_lossy().into_owned())
    })
}

/// A step failed: which file and why.
#[derive(Debug, thiserror::Error)]
#[error("configfs {op} {path}: {source}")]
pub struct LioError {
    pub op: &'static str,
    pub path: String,
    #[source]
    pub source: io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LioError + 'a {
    move |source| LioError {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// LIO's configfs tree.
#[derive(Debug, Clone)]
pub struct Lio {
    pub root: PathBuf,
    /// Portal every target listens on (`address:port`).
    pub portal: String,
}

impl Lio {
    fn core(&self) -> PathBuf {
        self.root.join("core")
    }

    fn tpg(&self, iqn: &str) -> PathBuf {
        self.root.join("iscsi").join(iqn).join("tpgt_1")
    }

    /// Ferry backstores by name.
    pub fn backstores(&self) -> BTreeMap<String, Backstore> {
        let mut out = BTreeMap::new();
        for (hba, hba_dir) in dirs(&self.core()) {
            if !hba.starts_with("user_") {
                continue;
            }
            for (name, dir) in dirs(&hba_dir) {
                let info = fs::read_to_string(dir.join("info")).unwrap_or_default();
                let config = info_field(&info, "Config").unwrap_or_default();
                if let Some(spec) = spec_of_config(&config) {
                    let group = config
                        .split(';')
                        .find_map(|o| o.strip_prefix("tpg="))
                        .and_then(|g| g.parse().ok());
                    out.insert(name, Backstore { dir, spec, group });
                }
            }
        }
        out
    }

    /// iSCSI targets by IQN.
    pub fn targets(&self) -> BTreeMap<String, LioTarget> {
        let mut out = BTreeMap::new();
        for (iqn, _) in dirs(&self.root.join("iscsi")) {
            if !iqn.contains('.') {
                continue;
            }
            let tpg = self.tpg(&iqn);
            let mut t = LioTarget::default();
            for (lun, dir) in dirs(&tpg.join("lun")) {
                if let (Some(n), Some(b)) = (
                    lun.strip_prefix("lun_").and_then(|n| n.parse().ok()),
                    link_target_name(&dir),
                ) {
                    t.luns.insert(n, b);
                }
            }
            for (init, dir) in dirs(&tpg.join("acls")) {
                let mapped = dirs(&dir)
                    .into_iter()
                    .filter_map(|(m, _)| m.strip_prefix("lun_").and_then(|n| n.parse().ok()))
                    .collect();
                t.acls.insert(init, mapped);
            }
            out.insert(iqn, t);
        }
        out
    }

    fn mkdir(&self, p: &Path) -> Result<(), LioError> {
        match fs::create_dir(p) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(err("mkdir", p)(e)),
            _ => Ok(()),
        }
    }

    fn rmdir(&self, p: &Path) -> Result<(), LioError> {
        match fs::remove_dir(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err("rmdir", p)(e)),
            _ => Ok(()),
        }
    }

    fn write(&self, p: &Path, v: &str) -> Result<(), LioError> {
        fs::write(p, v).map_err(err("write", p))
    }

    /// Gives the TCMU device serving `spec` the size `bytes` when it has
    /// another: the kernel tells tcmu-runner (the handler's `reconfig`,
    /// which checks the volume covers it) and answers READ CAPACITY with
    /// it; initiators see it at their next rescan.
    pub fn set_capacity(&self, spec: &str, bytes: u64) -> Result<(), LioError> {
        for b in self.backstores().into_values().filter(|b| b.spec == spec) {
            let attr = b.dir.join("attrib").join("dev_size");
            let now = fs::read_to_string(&attr).unwrap_or_default();
            if now.trim().parse::<u64>().ok() != Some(bytes) {
                self.write(&attr, &bytes.to_string())?;
                log::info!(
                    "LIO backstore {}: {} -> {bytes} bytes",
                    b.dir.display(),
                    now.trim()
                );
            }
        }
        Ok(())
    }

    /// Removes the links inside a configfs dir, then the dir.
    fn unlink_and_rmdir(&self, dir: &Path) -> Result<(), LioError> {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_symlink()) {
                fs::remove_file(e.path()).map_err(err("unlink", &e.path()))?;
            }
        }
        self.rmdir(dir)
    }

    fn delete_acl(&self, iqn: &str, init: &str) -> Result<(), LioError> {
        let dir = self.tpg(iqn).join("acls").join(init);
        for (m, d) in dirs(&dir) {
            if m.starts_with("lun_") {
                self.unlink_and_rmdir(&d)?;
            }
        }
        self.rmdir(&dir)
    }

    fn delete_target(&self, iqn: &str, t: &LioTarget) -> Result<(), LioError> {
        let tpg = self.tpg(iqn);
        let _ = self.write(&tpg.join("enable"), "0");
        for init in t.acls.keys() {
            self.delete_acl(iqn, init)?;
        }
        for n in t.luns.keys() {
            self.unlink_and_rmdir(&tpg.join("lun").join(format!("lun_{n}")))?;
        }
        for (np, d) in dirs(&tpg.join("np")) {
            let _ = np;
            self.rmdir(&d)?;
        }
        self.rmdir(&tpg)?;
        self.rmdir(&self.root.join("iscsi").join(iqn))
    }

    fn delete_backstore(&self, b: &Backstore) -> Result<(), LioError> {
        // The ALUA groups made for it first: configfs keeps a directory
        // with groups someone made inside.
        // A group that still has a LUN (its unlink failed) stays: its
        // LUN would fall back to the default group, which is active.
        for (g, dir) in dirs(&b.dir.join("alua")) {
            let empty = fs::read_to_string(dir.join("members")).is_ok_and(|m| m.trim().is_empty());
            if g.starts_with("ferry_") && empty {
                self.rmdir(&dir)?;
            }
        }
        self.rmdir(&b.dir)?;
        // rtslib makes one HBA per storage object; drop it when empty.
        if let Some(hba) = b.dir.parent() {
            if dirs(hba).is_empty() {
                let _ = fs::remove_dir(hba);
            }
        }
        Ok(())
    }

    fn create_backstore(
        &self,
        name: &str,
        spec: &str,
        size: u64,
        serial: &str,
        options: &str,
    ) -> Result<(), LioError> {
        let used: BTreeSet<u32> = dirs(&self.core())
            .into_iter()
            .filter_map(|(h, _)| h.strip_prefix("user_").and_then(|n| n.parse().ok()))
            .collect();
        let idx = (1u32..).find(|i| !used.contains(i)).expect("unbounded");
        let hba = self.core().join(format!("user_{idx}"));
        self.mkdir(&hba)?;
        let dir = hba.join(name);
        self.mkdir(&dir)?;
        let configure = || -> Result<(), LioError> {
            self.write(
                &dir.join("control"),
                &format!("dev_config={}{options}", cfgstring(spec)),
            )?;
            self.write(&dir.join("control"), &format!("dev_size={size}"))?;
            // Before enable, or the kernel's defaults stick. Tuning only:
            // a kernel that refuses one still serves the LUN.
            for option in BACKSTORE_DEFAULTS {
                if let Err(e) = self.write(&dir.join("control"), option) {
                    log::warn!(
                        "LIO backstore {name}: {option} refused, keeping the kernel's default: {e}"
                    );
                }
            }
            self.write(&dir.join("enable"), "1")?;
            // The same unit serial on every node (and as tgt reports), so
            // a LUN that moves stays one device to initiators.
            self.write(&dir.join("wwn").join("vpd_unit_serial"), serial)
        };
        configure().inspect_err(|_| {
            let _ = fs::remove_dir(&dir);
            let _ = fs::remove_dir(&hba);
        })
    }

    fn ensure_target(&self, iqn: &str, chap: Option<&ChapCredential>) -> Result<(), LioError> {
        let tpg = self.tpg(iqn);
        let fresh = !tpg.exists();
        self.mkdir(&self.root.join("iscsi"))?;
        self.mkdir(&self.root.join("iscsi").join(iqn))?;
        self.mkdir(&tpg)?;
        if fresh {
            self.mkdir(&tpg.join("np").join(&self.portal))?;
        }
        let attrib = tpg.join("attrib");
        // Access is by explicit ACLs only.
        self.write(&attrib.join("generate_node_acls"), "0")?;
        // As many commands per session as a TCMU device queues (LIO's
        // default, 64, leaves half of its queue unused).
        let depth = attrib.join("default_cmdsn_depth");
        if let Err(e) = self.write(&depth, &TCMU_QUEUE_DEPTH.to_string()) {
            log::warn!("LIO target {iqn}: keeping the default command window: {e}");
        }
        self.write(&attrib.join("demo_mode_write_protect"), "0")?;
        self.write(
            &attrib.join("authentication"),
            if chap.is_some() { "1" } else { "0" },
        )?;
        // Fresh, or left disabled by a removal that failed half-way.
        let enabled = fs::read_to_string(tpg.join("enable")).is_ok_and(|v| v.trim() == "1");
        if fresh || !enabled {
            self.write(&tpg.join("enable"), "1")?;
        }
        Ok(())
    }

    /// Makes LIO present exactly `wanted` (plus whatever ferry does not
    /// manage). `size_of` gives a volume's size for a new backstore.
    /// Returns per-LUN errors; steps that fail for one LUN do not stop the
    /// others.
    pub fn reconcile(
        &self,
        wanted: &BTreeMap<String, WantedLio>,
        size_of: &dyn Fn(&str) -> Result<u64, String>,
        serial_of: &dyn Fn(&str) -> String,
    ) -> BTreeMap<String, String> {
        let mut errors = BTreeMap::new();
        let backstores = self.backstores();
        let targets = self.targets();
        let ours = |t: &LioTarget| t.luns.values().any(|b| backstores.contains_key(b));
        // Removals: whole targets, then stale mapped LUNs / ACLs / LUNs.
        for (iqn, t) in &targets {
            let Some(w) = wanted.get(iqn) else {
                if ours(t) {
                    if let Err(e) = self.delete_target(iqn, t) {
                        errors.insert(format!("target {iqn}"), e.to_string());
                    }
                }
                continue;
            };
            for (init, mapped) in &t.acls {
                let keep = w.acls.get(init);
                if keep.is_none() {
                    if let Err(e) = self.delete_acl(iqn, init) {
                        errors.insert(format!("initiator {init}"), e.to_string());
                    }
                    continue;
                }
                // A mapping stays if the initiator keeps the LUN and the
                // LUN keeps its backstore.
                let stays = |m: &u32| {
                    keep.is_some_and(|k| k.contains(m))
                        && w.luns
                            .get(m)
                            .is_some_and(|(name, _)| t.luns.get(m) == Some(name))
                };
                for m in mapped.iter().filter(|m| !stays(m)) {
                    let d = self
                        .tpg(iqn)
                        .join("acls")
                        .join(init)
                        .join(format!("lun_{m}"));
                    if let Err(e) = self.unlink_and_rmdir(&d) {
                        errors.insert(format!("initiator {init}"), e.to_string());
                    }
                }
            }
            for (n, b) in &t.luns {
                let keep = w.luns.get(n).is_some_and(|(name, spec)| {
                    name == b
                        && backstores.get(b).is_some_and(|bs| {
                            &bs.spec == spec && (w.group.is_none() || bs.group == w.group)
                        })
                });
                if !keep && (backstores.contains_key(b) || w.luns.contains_key(n)) {
                    let d = self.tpg(iqn).join("lun").join(format!("lun_{n}"));
                    if let Err(e) = self.unlink_and_rmdir(&d) {
                        errors.insert(b.clone(), e.to_string());
                    }
                }
            }
        }
        // Backstores no wanted LUN uses (or with another volume) go.
        let wanted_bs: BTreeMap<&String, &String> = wanted
            .values()
            .flat_map(|w| w.luns.values().map(|(n, s)| (n, s)))
            .collect();
        let groups: BTreeMap<&String, Option<u16>> = wanted
            .values()
            .flat_map(|w| w.luns.values().map(move |(n, _)| (n, w.group)))
            .collect();
        for (name, b) in &backstores {
            // A backstore set up for another port group (or before ALUA)
            // is made again: its handler would refuse this node's group.
            let other_group = groups
                .get(name)
                .is_some_and(|g| g.is_some() && *g != b.group);
            if other_group || wanted_bs.get(name).is_none_or(|s| **s != b.spec) {
                if let Err(e) = self.delete_backstore(b) {
                    errors.insert(name.clone(), e.to_string());
                }
            }
        }
        // Additions.
        let backstores = self.backstores();
        for (iqn, w) in wanted {
            if let Err(e) = self.ensure_target(iqn, w.chap.as_ref()) {
                for (name, _) in w.luns.values() {
                    errors.insert(name.clone(), e.to_string());
                }
                continue;
            }
            let current = self.targets().remove(iqn).unwrap_or_default();
            for (n, (name, spec)) in &w.luns {
                if let Some(b) = backstores.get(name).filter(|b| &b.spec != spec) {
                    // A stale backstore of this name (its removal failed):
                    // never export it in place of the wanted volume.
                    errors.insert(
                        name.clone(),
                        format!("backstore {name} still holds {}, not {spec}", b.spec),
                    );
                    continue;
                }
                if !backstores.contains_key(name) {
                    // With ALUA, every device starts standby (also after a
                    // tcmu-runner restart): the agent turns it active once
                    // the node may serve it, so a device never opens a
                    // volume another node owns.
                    let options = w
                        .group
                        .map(|g| format!(";alua=standby;tpg={g}"))
                        .unwrap_or_default();
                    let made = size_of(spec).and_then(|size| {
                        self.create_backstore(name, spec, size, &serial_of(name), &options)
                            .map_err(|e| e.to_string())
                    });
                    if let Err(e) = made {
                        errors.insert(name.clone(), e);
                        continue;
                    }
                }
                if current.luns.get(n) != Some(name) {
                    let lun_dir = self.tpg(iqn).join("lun").join(format!("lun_{n}"));
                    let bs = self.backstores();
                    let Some(b) = bs.get(name).filter(|b| &b.spec == spec) else {
                        errors.insert(
                            name.clone(),
                            format!("backstore {name} for {spec} is missing"),
                        );
                        continue;
                    };
                    let linked = self.mkdir(&lun_dir).and_then(|_| {
                        std::os::unix::fs::symlink(&b.dir, lun_dir.join(format!("ferry_{n}")))
                            .map_err(err("symlink", &lun_dir))
                    });
                    if let Err(e) = linked {
                        errors.insert(name.clone(), e.to_string());
                        continue;
                    }
                }
                // Into this node's group before any initiator is mapped
                // (the default group is active/optimized); transitioning
                // until the agent sets the states.
                if let Some(g) = w.group {
                    if let Err(e) =
                        self.set_alua(name, iqn, *n, g, &[(g, TRANSITIONING, false)], false)
                    {
                        errors.insert(name.clone(), e.to_string());
                    }
                }
            }
            let current = self.targets().remove(iqn).unwrap_or_default();
            for (init, luns) in &w.acls {
                let acl = self.tpg(iqn).join("acls").join(init);
                if let Err(e) = self.mkdir(&acl) {
                    errors.insert(format!("initiator {init}"), e.to_string());
                    continue;
                }
                if let Some(c) = &w.chap {
                    let auth = acl.join("auth");
                    // Written into configfs, never a process's arguments.
                    // LIO clears a value on "NULL" (an empty write never
                    // reaches it): a mutual CHAP the map dropped goes.
                    let had_mutual = fs::read_to_string(auth.join("userid_mutual"))
                        .is_ok_and(|v| !v.trim().is_empty());
                    let mutual = match &w.mutual_chap {
                        Some(m) => Some((m.user.as_str(), m.password.as_str())),
                        None if had_mutual => Some(("NULL", "NULL")),
                        None => None,
                    };
                    let set = self
                        .write(&auth.join("userid"), &c.user)
                        .and_then(|_| self.write(&auth.join("password"), &c.password))
                        .and_then(|_| match mutual {
                            Some((user, password)) => self
                                .write(&auth.join("userid_mutual"), user)
                                .and_then(|_| self.write(&auth.join("password_mutual"), password)),
                            None => Ok(()),
                        });
                    if let Err(e) = set {
                        errors.insert(format!("initiator {init}"), e.to_string());
                    }
                }
                let have = current.acls.get(init).cloned().unwrap_or_default();
                for n in luns.difference(&have) {
                    if !current.luns.contains_key(n) {
                        continue;
                    }
                    let m = acl.join(format!("lun_{n}"));
                    let tpg_lun = self.tpg(iqn).join("lun").join(format!("lun_{n}"));
                    let mapped = self.mkdir(&m).and_then(|_| {
                        std::os::unix::fs::symlink(&tpg_lun, m.join(format!("ferry_{n}")))
                            .map_err(err("symlink", &m))
                    });
                    if let Err(e) = mapped {
                        errors.insert(format!("initiator {init}"), e.to_string());
                    }
                }
            }
        }
        errors
    }

    /// Gives backstore `name`'s ALUA target port groups (one per node,
    /// `ferry_<id>`, implicit ALUA; created when missing) the states in
    /// `groups`, and binds the LUN `lun` of target `iqn` to this node's
    /// group `own`. LIO then answers REPORT TARGET PORT GROUPS, reports
    /// TPGS and the port designators, refuses media access in a
    /// non-active group and raises ASYMMETRIC ACCESS STATE CHANGED.
    pub fn set_alua(
        &self,
        name: &str,
        iqn: &str,
        lun: u32,
        own: u16,
        groups: &[(u16, u8, bool)],
        overwrite: bool,
    ) -> Result<(), LioError> {
        let Some(b) = self.backstores().remove(name) else {
            return Err(LioError {
                op: "finding the backstore of",
                path: name.to_string(),
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        };
        let alua = b.dir.join("alua");
        let current = |p: &Path| {
            fs::read_to_string(p)
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        for &(id, state, preferred) in groups {
            let g = alua.join(format!("ferry_{id}"));
            let fresh = !g.is_dir();
            if fresh {
                self.mkdir(&g)?;
            }
            // Checked every time: a write that failed once would leave a
            // group tcmu-runner cannot read (the default type, implicit
            // and explicit, makes its INQUIRY fail).
            if current(&g.join("tg_pt_gp_id")) != id.to_string() {
                self.write(&g.join("tg_pt_gp_id"), &id.to_string())?;
            }
            if current(&g.join("alua_access_type")) != "Implicit" {
                self.write(&g.join("alua_access_type"), "1")?;
            }
            if (fresh || overwrite) && current(&g.join("alua_access_state")) != state.to_string() {
                self.write(&g.join("alua_access_state"), &state.to_string())?;
            }
            let pref = if preferred { "1" } else { "0" };
            if (fresh || overwrite) && current(&g.join("preferred")) != pref {
                self.write(&g.join("preferred"), pref)?;
            }
        }
        let bind = self
            .tpg(iqn)
            .join("lun")
            .join(format!("lun_{lun}"))
            .join("alua_tg_pt_gp");
        let want = format!("ferry_{own}");
        let bound = fs::read_to_string(&bind).unwrap_or_default();
        if !bound.split_whitespace().any(|w| w == want) {
            self.write(&bind, &want)?;
        }
        Ok(())
    }

    /// Removes every ferry target and backstore (fencing).
    pub fn clear(&self) -> Result<(), LioError> {
        self.reconcile(&BTreeMap::new(), &|_| Err("none".into()), &|_| {
            String::new()
        })
        .into_values()
        .next()
        .map_or(Ok(()), |e| {
            Err(LioError {
                op: "clearing",
                path: self.root.display().to_string(),
                source: io::Error::other(e),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfgstrings_round_trip_without_colons() {
        for spec in ["file:/srv/v1.img", "rbd:pool/img", "rbd:pool/img@snap"] {
            let c = cfgstring(spec);
            assert!(!c.contains(':'), "{c}");
            assert_eq!(spec_of_config(&c).as_deref(), Some(spec));
        }
        assert_eq!(spec_of_config("rbd/pool/img"), None, "not ours");
    }

    #[test]
    fn info_fields_are_found_in_flattened_text() {
        let info = "Status: ACTIVATED  Max Queue Depth: 0  SectorSize: 512  HwMaxSectors: 128\n        Config: ferry//srv/a.img Size: 268435456 MaxDataAreaMB: 1024 DataPagesPerBlk: 1";
        assert_eq!(
            info_field(info, "Config").as_deref(),
            Some("ferry//srv/a.img")
        );
        assert_eq!(info_field(info, "Size").as_deref(), Some("268435456"));
        assert_eq!(info_field(info, "Nope"), None);
    }

    /// A configfs-shaped tree in a temporary directory (plain mkdir and
    /// symlinks; the kernel's side effects are not modelled).
    #[test]
    fn state_is_read_from_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let bs = root.join("core/user_1/db");
        fs::create_dir_all(&bs).unwrap();
        fs::write(
            bs.join("info"),
            "Status: ACTIVATED Config: ferry//srv/db.img Size: 1",
        )
        .unwrap();
        let other = root.join("core/user_2/x");
        fs::create_dir_all(&other).unwrap();
        fs::write(other.join("info"), "Config: rbd/pool/x Size: 1").unwrap();
        let tpg = root.join("iscsi/iqn.2026-11.org.ferry:t/tpgt_1");
        fs::create_dir_all(tpg.join("lun/lun_1")).unwrap();
        std::os::unix::fs::symlink(&bs, tpg.join("lun/lun_1/ferry_1")).unwrap();
        fs::create_dir_all(tpg.join("acls/iqn.2026-11.org.ferry:h/lun_1")).unwrap();
        let lio = Lio {
            root: root.to_path_buf(),
            portal: "0.0.0.0:3260".into(),
        };
        let b = lio.backstores();
        assert_eq!(b.len(), 1);
        assert_eq!(b["db"].spec, "file:/srv/db.img");
        let t = &lio.targets()["iqn.2026-11.org.ferry:t"];
        assert_eq!(t.luns[&1], "db");
        assert_eq!(t.acls["iqn.2026-11.org.ferry:h"], [1].into());
    }

    /// Mutual CHAP reaches an ACL that already exists, and a dropped one is
    /// cleared there with "NULL" (configfs ignores an empty write), not
    /// left for the initiator to keep trusting. The tree is a plain
    /// directory, so "NULL" stays as written instead of reading back empty.
    #[test]
    fn mutual_chap_is_set_and_cleared_on_existing_acls() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let iqn = "iqn.2026-11.org.ferry:t";
        let host = "iqn.2026-11.org.ferry:h";
        let bs = root.join("core/user_1/db");
        fs::create_dir_all(&bs).unwrap();
        fs::write(bs.join("info"), "Config: ferry//srv/db.img Size: 1").unwrap();
        let tpg = root.join("iscsi").join(iqn).join("tpgt_1");
        fs::create_dir_all(tpg.join("lun/lun_1")).unwrap();
        fs::create_dir_all(tpg.join("attrib")).unwrap();
        fs::write(tpg.join("enable"), "1").unwrap();
        std::os::unix::fs::symlink(&bs, tpg.join("lun/lun_1/ferry_1")).unwrap();
        let acl = tpg.join("acls").join(host);
        fs::create_dir_all(acl.join("lun_1")).unwrap();
        fs::create_dir_all(acl.join("auth")).unwrap();
        let lio = Lio {
            root: root.to_path_buf(),
            portal: "0.0.0.0:3260".into(),
        };
        let cred = |user: &str, password: &str| ChapCredential {
            user: user.into(),
            password: password.into(),
        };
        let mut wanted = WantedLio {
            luns: [(1, ("db".to_string(), "file:/srv/db.img".to_string()))].into(),
            acls: [(host.to_string(), [1].into())].into(),
            chap: Some(cred("u", "initiator-secret")),
            mutual_chap: Some(cred("t", "target-secret")),
            ..Default::default()
        };
        let read = |f: &str| fs::read_to_string(acl.join("auth").join(f)).unwrap();
        let pass = |w: &WantedLio| {
            let errors = lio.reconcile(
                &[(iqn.to_string(), w.clone())].into(),
                &|_| Ok(1 << 20),
                &|_| "serial".into(),
            );
            assert!(errors.is_empty(), "{errors:?}");
        };

        pass(&wanted);
        assert_eq!(read("userid"), "u");
        assert_eq!(read("password"), "initiator-secret");
        assert_eq!(read("userid_mutual"), "t");
        assert_eq!(read("password_mutual"), "target-secret");
        assert_eq!(
            fs::read_to_string(tpg.join("attrib/authentication")).unwrap(),
            "1"
        );

        wanted.mutual_chap = None;
        pass(&wanted);
        assert_eq!(read("userid_mutual"), "NULL");
        assert_eq!(read("password_mutual"), "NULL");
        assert_eq!(read("userid"), "u", "CHAP itself stays");

        // An ACL that never had mutual CHAP is not written to.
        fs::remove_file(acl.join("auth/userid_mutual")).unwrap();
        fs::remove_file(acl.join("auth/password_mutual")).unwrap();
        pass(&wanted);
        assert!(!acl.join("auth/userid_mutual").exists());
    }
}
