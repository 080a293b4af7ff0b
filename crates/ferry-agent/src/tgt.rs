//! Driving tgtd through `tgtadm`: reading what it serves, and turning the
//! difference from what it should serve into the fewest commands.
//!
//! The agent manages the targets that the map names plus any target with
//! a ferry-backed LUN (a LUN it created earlier); every other target in
//! the same tgtd is left alone, so admins may run other targets beside.
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use ferry_map::ChapCredential;

use crate::tgtd_ipc;

/// A target as `tgtadm --op show` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShownTarget {
    pub tid: u32,
    pub iqn: String,
    /// LUN number -> (backing-store type, path); LUN 0 (the controller)
    /// is left out.
    pub luns: BTreeMap<u32, (String, String)>,
    /// Incoming accounts (initiators log in with them).
    pub accounts: BTreeSet<String>,
    /// The outgoing account (mutual CHAP: the target's own).
    pub outgoing: BTreeSet<String>,
    /// Bound initiator names and addresses.
    pub acls: BTreeSet<String>,
    /// tgtd's target state is `ready` (not `offline`).
    pub ready: bool,
}

/// Parses `tgtadm --lld iscsi --mode target --op show`.
pub fn parse_show(text: &str) -> Vec<ShownTarget> {
    #[derive(PartialEq)]
    enum Section {
        Other,
        System,
        Luns,
        Accounts,
        Acls,
    }
    let mut out: Vec<ShownTarget> = Vec::new();
    let mut section = Section::Other;
    let mut lun: Option<u32> = None;
    let mut bstype = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = line.strip_prefix("Target ") {
            if let Some((tid, iqn)) = rest.split_once(": ") {
                if let Ok(tid) = tid.parse() {
                    out.push(ShownTarget {
                        tid,
                        iqn: iqn.trim().to_string(),
                        ready: true,
                        ..Default::default()
                    });
                    section = Section::Other;
                    continue;
                }
            }
        }
        let Some(cur) = out.last_mut() else {
            continue;
        };
        match t {
            "LUN information:" => section = Section::Luns,
            "Account information:" => section = Section::Accounts,
            "ACL information:" => section = Section::Acls,
            "System information:" => section = Section::System,
            "I_T nexus information:" => section = Section::Other,
            _ if section == Section::System && t.starts_with("State: ") => {
                cur.ready = t == "State: ready";
            }
            _ => match section {
                Section::Luns => {
                    if let Some(n) = t.strip_prefix("LUN: ") {
                        lun = n.parse().ok();
                    } else if let Some(b) = t.strip_prefix("Backing store type: ") {
                        bstype = b.to_string();
                    } else if let Some(p) = t.strip_prefix("Backing store path: ") {
                        if let Some(n) = lun.filter(|n| *n != 0) {
                            cur.luns.insert(n, (bstype.clone(), p.to_string()));
                        }
                    }
                }
                Section::Accounts if !t.is_empty() => {
                    // Outgoing accounts are shown as "user (outgoing)".
                    match t.strip_suffix(" (outgoing)") {
                        Some(user) => cur.outgoing.insert(user.to_string()),
                        None => cur.accounts.insert(t.to_string()),
                    };
                }
                Section::Acls if !t.is_empty() => {
                    cur.acls.insert(t.to_string());
                }
                _ => {}
            },
        }
    }
    out
}

/// What one target should look like on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WantedTarget {
    /// LUN number -> (LUN name, volume spec).
    pub luns: BTreeMap<u32, (String, String)>,
    /// The LUNs (by number) this node exports in standby: another node
    /// owns them.
    pub standby: BTreeSet<u32>,
    /// This node's ALUA target port group.
    pub group: Option<u16>,
    pub initiators: BTreeSet<String>,
    pub chap: Option<ChapCredential>,
    /// The target's own credentials, which initiators check (mutual CHAP).
    pub mutual_chap: Option<ChapCredential>,
}

/// How a new LU's ALUA target port starts (bs_ferry's `--bsopts alua=`
/// and `tpg=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStart {
    /// Standby: the volume is not opened until the agent turns the
    /// node's group active.
    pub standby: bool,
    pub group: Option<u16>,
}

impl PortStart {
    fn of(w: &WantedTarget, lun: u32) -> PortStart {
        PortStart {
            standby: w.standby.contains(&lun),
            group: w.group,
        }
    }
}

/// One tgtadm step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TgtOp {
    DeleteTarget {
        tid: u32,
    },
    DeleteLun {
        tid: u32,
        lun: u32,
        name: Option<String>,
    },
    Unbind {
        tid: u32,
        initiator: String,
    },
    UnbindAccount {
        tid: u32,
        user: String,
        /// The target's outgoing (mutual CHAP) account.
        outgoing: bool,
    },
    NewTarget {
        tid: u32,
        iqn: String,
    },
    NewLun {
        tid: u32,
        lun: u32,
        name: String,
        spec: String,
        port: PortStart,
    },
    Bind {
        tid: u32,
        initiator: String,
    },
    /// (Re)creates the account and binds it: incoming (initiators log
    /// in with it) or outgoing (the target's own, for mutual CHAP).
    Account {
        tid: u32,
        chap: ChapCredential,
        outgoing: bool,
    },
    /// Refuses new logins (tgtd answers them with a target error, which
    /// initiators retry): a ready target whose account is about to be
    /// replaced goes offline first, since tgtd replaces an account by
    /// deleting it (unbinding it) and a target without an incoming
    /// account lets anyone in. It turns ready again only once its
    /// accounts are back.
    Offline {
        tid: u32,
    },
    /// Lets initiators log in: a target is created `offline` (tgtd then
    /// refuses logins with a target error, which initiators retry) and
    /// turns `ready` only once its LUNs, ACLs and CHAP are in place. A
    /// login in between would be refused as "target not found", which
    /// open-iscsi does not retry: a gateway coming back would lose its
    /// multipath paths for good.
    Ready {
        tid: u32,
    },
}

/// The key of a target's outgoing account in `diff`'s `known_chap`.
pub fn outgoing_key(iqn: &str) -> String {
    format!("{iqn} (outgoing)")
}

fn same_spec(a: &str, b: &str) -> bool {
    a.trim() == b.trim()
}

/// The steps from `shown` to `wanted`: removals first (so a LUN that
/// moves or goes away stops being served before anything new starts),
/// then additions. `known_chap` is what this agent applied since it
/// started (tgtd cannot show secrets), so a secret is re-applied after a
/// restart or a change: by target name for incoming accounts, by
/// [`outgoing_key`] for outgoing ones.
pub fn diff(
    shown: &[ShownTarget],
    wanted: &BTreeMap<String, WantedTarget>,
    known_chap: &BTreeMap<String, ChapCredential>,
) -> Vec<TgtOp> {
    let mut removals = Vec::new();
    let mut additions = Vec::new();
    // Last: targets turn ready once everything else is in place.
    let mut ready = Vec::new();
    let managed = |t: &ShownTarget| {
        wanted.contains_key(&t.iqn) || t.luns.values().any(|(bs, _)| bs == "ferry")
    };
    let used: BTreeSet<u32> = shown.iter().map(|t| t.tid).collect();
    let mut free = (1u32..).filter(|t| !used.contains(t));
    for t in shown.iter().filter(|t| managed(t)) {
        let Some(w) = wanted.get(&t.iqn) else {
            removals.push(TgtOp::DeleteTarget { tid: t.tid });
            continue;
        };
        for (n, (bs, path)) in &t.luns {
            match w.luns.get(n) {
                Some((_, spec)) if bs == "ferry" && same_spec(spec, path) => {}
                other => removals.push(TgtOp::DeleteLun {
                    tid: t.tid,
                    lun: *n,
                    name: other.map(|(name, _)| name.clone()),
                }),
            }
        }
        for (n, (name, spec)) in &w.luns {
            let present = t
                .luns
                .get(n)
                .is_some_and(|(bs, path)| bs == "ferry" && same_spec(spec, path));
            if !present {
                additions.push(TgtOp::NewLun {
                    tid: t.tid,
                    lun: *n,
                    name: name.clone(),
                    spec: spec.clone(),
                    port: PortStart::of(w, *n),
                });
            }
        }
        for a in t.acls.difference(&w.initiators) {
            removals.push(TgtOp::Unbind {
                tid: t.tid,
                initiator: a.clone(),
            });
        }
        for a in w.initiators.difference(&t.acls) {
            additions.push(TgtOp::Bind {
                tid: t.tid,
                initiator: a.clone(),
            });
        }
        let mut swapping = false;
        for (outgoing, have, want, key) in [
            (false, &t.accounts, &w.chap, t.iqn.clone()),
            (true, &t.outgoing, &w.mutual_chap, outgoing_key(&t.iqn)),
        ] {
            let wanted_user = want.as_ref().map(|c| c.user.as_str());
            for u in have {
                if Some(u.as_str()) != wanted_user {
                    removals.push(TgtOp::UnbindAccount {
                        tid: t.tid,
                        user: u.clone(),
                        outgoing,
                    });
                }
            }
            if let Some(c) = want {
                if !have.contains(&c.user) || known_chap.get(&key) != Some(c) {
                    additions.push(TgtOp::Account {
                        tid: t.tid,
                        chap: c.clone(),
                        outgoing,
                    });
                    swapping = true;
                }
            }
        }
        // Offline before any account of a ready target is touched (see
        // TgtOp::Offline), ready again last.
        if swapping && t.ready {
            removals.insert(0, TgtOp::Offline { tid: t.tid });
        }
        if !t.ready || swapping {
            ready.push(TgtOp::Ready { tid: t.tid });
        }
    }
    for (iqn, w) in wanted {
        if shown.iter().any(|t| &t.iqn == iqn) {
            continue;
        }
        let tid = free.next().expect("tids are unbounded");
        additions.push(TgtOp::NewTarget {
            tid,
            iqn: iqn.clone(),
        });
        for (n, (name, spec)) in &w.luns {
            additions.push(TgtOp::NewLun {
                tid,
                lun: *n,
                name: name.clone(),
                spec: spec.clone(),
                port: PortStart::of(w, *n),
            });
        }
        for a in &w.initiators {
            additions.push(TgtOp::Bind {
                tid,
                initiator: a.clone(),
            });
        }
        for (outgoing, want) in [(false, &w.chap), (true, &w.mutual_chap)] {
            if let Some(c) = want {
                additions.push(TgtOp::Account {
                    tid,
                    chap: c.clone(),
                    outgoing,
                });
            }
        }
        ready.push(TgtOp::Ready { tid });
    }
    removals.extend(additions);
    removals.extend(ready);
    removals
}

/// A failed tgtadm command (its arguments never include secrets).
#[derive(Debug, thiserror::Error)]
#[error("tgtadm {args}: {why}")]
pub struct TgtError {
    pub args: String,
    pub why: String,
}

/// One tgtd, reached through its management channel.
#[derive(Debug, Clone)]
pub struct Tgtadm {
    /// tgtd's `-C` control port (None: the default channel).
    pub control: Option<u16>,
}

/// The INQUIRY vendor of the LUNs agents create, which initiators'
/// multipath configurations match on (README: multipath.conf).
pub const VENDOR: &str = "FERRY";
/// Their INQUIRY product.
pub const PRODUCT: &str = "VOLUME";

/// The SCSI identity of a LUN, the same on every node that serves it, so
/// initiators (and multipath) see one device wherever it moves. tgt's
/// default (IET + tid + lun) would differ from node to node.
pub fn scsi_identity(lun_name: &str) -> (String, String) {
    // FNV-1a: a stable, dependency-free hash for a 16-hex-digit serial.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in lun_name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let sn = format!("{h:016x}");
    // tgt takes up to 24 bytes of SCSI ID.
    let id: String = format!("ferry-{lun_name}").chars().take(24).collect();
    (id, sn)
}

impl Tgtadm {
    fn run(&self, args: &[&str], redact: bool) -> Result<String, TgtError> {
        let mut cmd = Command::new("tgtadm");
        if let Some(c) = self.control {
            cmd.args(["-C", &c.to_string()]);
        }
        cmd.args(["--lld", "iscsi"]).args(args);
        let shown = if redact {
            "--mode account --op new (credentials hidden)".to_string()
        } else {
            args.join(" ")
        };
        let out = cmd.output().map_err(|e| TgtError {
            args: shown.clone(),
            why: format!("cannot run tgtadm: {e}"),
        })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(TgtError {
                args: shown,
                why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    fn set_state(&self, tid: u32, state: &str) -> Result<(), TgtError> {
        self.run(
            &[
                "--mode",
                "target",
                "--op",
                "update",
                "--tid",
                &tid.to_string(),
                "--name",
                "state",
                "--value",
                state,
            ],
            false,
        )
        .map(drop)
    }

    pub fn show(&self) -> Result<Vec<ShownTarget>, TgtError> {
        self.run(&["--mode", "target", "--op", "show"], false)
            .map(|t| parse_show(&t))
    }

    /// Applies one step; a new LUN starts in `cache` mode (bs_ferry's
    /// `--bsopts cache=`), so it never runs a command in another mode.
    pub fn apply(&self, op: &TgtOp, cache: Option<ferry_map::CacheMode>) -> Result<(), TgtError> {
        let s = |v: &u32| v.to_string();
        match op {
            TgtOp::DeleteTarget { tid } => self
                .run(
                    &[
                        "--mode",
                        "target",
                        "--op",
                        "delete",
                        "--force",
                        "--tid",
                        &s(tid),
                    ],
                    false,
                )
                .map(drop),
            TgtOp::DeleteLun { tid, lun, .. } => self
                .run(
                    &[
                        "--mode",
                        "logicalunit",
                        "--op",
                        "delete",
                        "--tid",
                        &s(tid),
                        "--lun",
                        &s(lun),
                    ],
                    false,
                )
                .map(drop),
            TgtOp::Unbind { tid, initiator } => self
                .run(
                    &[
                        "--mode",
                        "target",
                        "--op",
                        "unbind",
                        "--tid",
                        &s(tid),
                        acl_flag(initiator),
                        initiator,
                    ],
                    false,
                )
                .map(drop),
            TgtOp::UnbindAccount {
                tid,
                user,
                outgoing,
            } => account_request(
                self.control,
                tgtd_ipc::Op::Unbind,
                *tid,
                direction(*outgoing),
                &format!("user={user}"),
                &format!("--mode account --op unbind --tid {tid} --user {user}"),
            ),
            TgtOp::NewTarget { tid, iqn } => {
                self.run(
                    &[
                        "--mode",
                        "target",
                        "--op",
                        "new",
                        "--tid",
                        &s(tid),
                        "--targetname",
                        iqn,
                    ],
                    false,
                )?;
                self.set_state(*tid, "offline")
            }
            TgtOp::Ready { tid } => self.set_state(*tid, "ready"),
            TgtOp::Offline { tid } => self.set_state(*tid, "offline"),
            TgtOp::NewLun {
                tid,
                lun,
                name,
                spec,
                port,
            } => {
                let mut bsopts: Vec<String> =
                    cache.map(|c| format!("cache={c}")).into_iter().collect();
                if port.standby {
                    bsopts.push("alua=standby".into());
                }
                if let Some(g) = port.group {
                    bsopts.push(format!("tpg={g}"));
                }
                self.run(
                    &[
                        "--mode",
                        "logicalunit",
                        "--op",
                        "new",
                        "--tid",
                        &s(tid),
                        "--lun",
                        &s(lun),
                        "--bstype",
                        "ferry",
                        "--backing-store",
                        spec,
                        "--bsopts",
                        &bsopts.join(";"),
                    ],
                    false,
                )?;
                let (id, sn) = scsi_identity(name);
                self.run(
                    &[
                        "--mode",
                        "logicalunit",
                        "--op",
                        "update",
                        "--tid",
                        &s(tid),
                        "--lun",
                        &s(lun),
                        "--params",
                        &format!(
                            "vendor_id={VENDOR},product_id={PRODUCT},scsi_id={id},scsi_sn={sn}"
                        ),
                    ],
                    false,
                )
                .map(drop)
            }
            TgtOp::Bind { tid, initiator } => self
                .run(
                    &[
                        "--mode",
                        "target",
                        "--op",
                        "bind",
                        "--tid",
                        &s(tid),
                        acl_flag(initiator),
                        initiator,
                    ],
                    false,
                )
                .map(drop),
            TgtOp::Account {
                tid,
                chap,
                outgoing,
            } => {
                // Accounts are global in tgtd: replace it so a changed
                // secret takes effect. Through tgtd's socket, never
                // tgtadm: the secret would be in a process's arguments.
                let user = format!("user={}", chap.user);
                let _ = account_request(
                    self.control,
                    tgtd_ipc::Op::Delete,
                    u32::MAX,
                    tgtd_ipc::Direction::Incoming,
                    &user,
                    "--mode account --op delete",
                );
                let creds =
                    tgtd_ipc::credentials(&chap.user, &chap.password).map_err(|why| TgtError {
                        args: "--mode account --op new (credentials hidden)".into(),
                        why,
                    })?;
                account_request(
                    self.control,
                    tgtd_ipc::Op::New,
                    u32::MAX,
                    tgtd_ipc::Direction::Incoming,
                    &creds,
                    "--mode account --op new (credentials hidden)",
                )?;
                account_request(
                    self.control,
                    tgtd_ipc::Op::Bind,
                    *tid,
                    direction(*outgoing),
                    &user,
                    &format!(
                        "--mode account --op bind --tid {tid} --user {}{}",
                        chap.user,
                        if *outgoing { " --outgoing" } else { "" }
                    ),
                )
            }
        }
    }
}

fn direction(outgoing: bool) -> tgtd_ipc::Direction {
    if outgoing {
        tgtd_ipc::Direction::Outgoing
    } else {
        tgtd_ipc::Direction::Incoming
    }
}

/// One account request over tgtd's socket; `shown` is what an error
/// names (never a secret).
fn account_request(
    control: Option<u16>,
    op: tgtd_ipc::Op,
    tid: u32,
    dir: tgtd_ipc::Direction,
    params: &str,
    shown: &str,
) -> Result<(), TgtError> {
    let tid = i32::try_from(tid).unwrap_or(-1);
    tgtd_ipc::account(control, op, tid, dir, params).map_err(|why| TgtError {
        args: shown.to_string(),
        why,
    })
}

/// tgt binds initiators by name (`-Q`) or by address (`-I`).
fn acl_flag(who: &str) -> &'static str {
    if who.starts_with("iqn.") || who.starts_with("eui.") || who.starts_with("naa.") {
        "--initiator-name"
    } else {
        "--initiator-address"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Target 3: iqn.2026-11.org.ferry:probe
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            Backing store type: ferry
            Backing store path: /tmp/probe.img
            Backing store flags: 
    Account information:
        bob
    ACL information:
        iqn.1994-05.com.redhat:host1
Target 4: iqn.2026-11.org.other:plain
    System information:
    LUN information:
        LUN: 0
            Backing store type: null
            Backing store path: None
        LUN: 1
            Backing store type: rdwr
            Backing store path: /tmp/other.img
    Account information:
    ACL information:
        ALL
";

    fn iqn() -> String {
        "iqn.2026-11.org.ferry:probe".into()
    }

    #[test]
    fn show_output_is_parsed_per_target() {
        let t = parse_show(SHOW);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].tid, 3);
        assert_eq!(t[0].iqn, iqn());
        assert_eq!(
            t[0].luns[&1],
            ("ferry".to_string(), "/tmp/probe.img".to_string())
        );
        assert!(!t[0].luns.contains_key(&0));
        assert!(t[0].accounts.contains("bob"));
        assert!(t[0].acls.contains("iqn.1994-05.com.redhat:host1"));
        assert_eq!(t[1].acls, ["ALL".to_string()].into());
    }

    /// The map's wish for exactly what `SHOW` holds, and its CHAP account.
    fn wanted_as_shown() -> (BTreeMap<String, WantedTarget>, ChapCredential) {
        let chap = ChapCredential {
            user: "bob".into(),
            password: "0123456789ab".into(),
        };
        let wanted = BTreeMap::from([(
            iqn(),
            WantedTarget {
                luns: BTreeMap::from([(1, ("l1".into(), "/tmp/probe.img".into()))]),
                initiators: ["iqn.1994-05.com.redhat:host1".to_string()].into(),
                chap: Some(chap.clone()),
                ..WantedTarget::default()
            },
        )]);
        (wanted, chap)
    }

    #[test]
    fn nothing_to_do_when_tgtd_matches() {
        let shown = parse_show(SHOW);
        let (wanted, chap) = wanted_as_shown();
        let known = BTreeMap::from([(iqn(), chap)]);
        assert_eq!(diff(&shown, &wanted, &known), vec![]);
    }

    #[test]
    fn unwanted_ferry_target_goes_and_foreign_targets_stay() {
        let shown = parse_show(SHOW);
        let ops = diff(&shown, &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(ops, vec![TgtOp::DeleteTarget { tid: 3 }]);
    }

    #[test]
    fn new_target_gets_a_free_tid_and_removals_come_first() {
        let shown = parse_show(SHOW);
        let wanted = BTreeMap::from([
            (
                iqn(),
                WantedTarget {
                    luns: BTreeMap::from([(2, ("l2".into(), "/v/l2".into()))]),
                    initiators: BTreeSet::new(),
                    chap: None,
                    ..WantedTarget::default()
                },
            ),
            (
                "iqn.2026-11.org.ferry:new".to_string(),
                WantedTarget {
                    luns: BTreeMap::from([(1, ("n1".into(), "/v/n1".into()))]),
                    initiators: ["iqn.2026-11.org.ferry:h".to_string()].into(),
                    chap: None,
                    mutual_chap: None,
                    standby: [1].into(),
                    group: Some(9),
                },
            ),
        ]);
        let ops = diff(&shown, &wanted, &BTreeMap::new());
        assert_eq!(
            ops,
            vec![
                TgtOp::DeleteLun {
                    tid: 3,
                    lun: 1,
                    name: None
                },
                TgtOp::Unbind {
                    tid: 3,
                    initiator: "iqn.1994-05.com.redhat:host1".into()
                },
                TgtOp::UnbindAccount {
                    tid: 3,
                    user: "bob".into(),
                    outgoing: false
                },
                TgtOp::NewLun {
                    tid: 3,
                    lun: 2,
                    name: "l2".into(),
                    spec: "/v/l2".into(),
                    port: PortStart::default(),
                },
                TgtOp::NewTarget {
                    tid: 1,
                    iqn: "iqn.2026-11.org.ferry:new".into()
                },
                TgtOp::NewLun {
                    tid: 1,
                    lun: 1,
                    name: "n1".into(),
                    spec: "/v/n1".into(),
                    port: PortStart {
                        standby: true,
                        group: Some(9),
                    },
                },
                TgtOp::Bind {
                    tid: 1,
                    initiator: "iqn.2026-11.org.ferry:h".into()
                },
                TgtOp::Ready { tid: 1 },
            ]
        );
    }

    /// A target left offline (its set-up stopped half-way) is made ready
    /// once the rest is in place; the show output says which is which.
    #[test]
    fn an_offline_target_is_made_ready_last() {
        let offline = SHOW.replacen("State: ready", "State: offline", 1);
        let shown = parse_show(&offline);
        assert!(!shown[0].ready);
        assert!(parse_show(SHOW)[0].ready);
        let (wanted, chap) = wanted_as_shown();
        let ops = diff(&shown, &wanted, &BTreeMap::new());
        assert_eq!(
            ops,
            vec![
                TgtOp::Account {
                    tid: 3,
                    chap,
                    outgoing: false
                },
                TgtOp::Ready { tid: 3 }
            ]
        );
    }

    #[test]
    fn unknown_chap_secret_is_reapplied_with_the_target_offline_meanwhile() {
        let shown = parse_show(SHOW);
        let (wanted, chap) = wanted_as_shown();
        // tgtd replaces an account by deleting it: a ready target would
        // let anyone in until it is back.
        assert_eq!(
            diff(&shown, &wanted, &BTreeMap::new()),
            vec![
                TgtOp::Offline { tid: 3 },
                TgtOp::Account {
                    tid: 3,
                    chap: chap.clone(),
                    outgoing: false
                },
                TgtOp::Ready { tid: 3 }
            ]
        );
        // Known and bound: nothing to do.
        let known = BTreeMap::from([(shown[0].iqn.clone(), chap)]);
        assert_eq!(diff(&shown, &wanted, &known), vec![]);
    }

    #[test]
    fn outgoing_accounts_parse_apart_and_a_mutual_chap_is_bound_outgoing() {
        let text = SHOW.replacen("        bob\n", "        bob\n        tgt1 (outgoing)\n", 1);
        let shown = parse_show(&text);
        assert!(shown[0].accounts.contains("bob"), "{:?}", shown[0]);
        assert!(shown[0].outgoing.contains("tgt1"), "{:?}", shown[0]);
        assert!(!shown[0].accounts.contains("tgt1"));
    }

    #[test]
    fn scsi_identity_is_stable_and_bounded() {
        assert_eq!(scsi_identity("db"), scsi_identity("db"));
        assert_ne!(scsi_identity("db").1, scsi_identity("dc").1);
        assert!(scsi_identity(&"x".repeat(63)).0.len() <= 24);
    }
}
