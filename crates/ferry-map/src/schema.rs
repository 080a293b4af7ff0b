//! The desired state admins edit: targets, LUNs, initiator ACLs and
//! gateway nodes. Each entity is one document (one znode in ZooKeeper, one
//! entry of the map file) keyed by its name, so edits to different
//! entities never conflict and edits to one entity are compare-and-set on
//! its version. `docs/map.md` describes the layout for admins.
//!
//! Validation here is what every writer runs before committing: names and
//! IQNs are checked for syntax, and cross-references (a LUN's target, an
//! initiator's LUNs, a LUN's nodes) must exist in the same map.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::MapError;

/// The kinds of documents in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Target,
    Lun,
    Initiator,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Target, Kind::Lun, Kind::Initiator, Kind::Node];

    /// The directory (znode) holding documents of this kind.
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Target => "targets",
            Kind::Lun => "luns",
            Kind::Initiator => "initiators",
            Kind::Node => "nodes",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Kind::Target => "target",
            Kind::Lun => "LUN",
            Kind::Initiator => "initiator",
            Kind::Node => "node",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// CHAP credentials. Passwords are stored in the map (protected by its
/// ACL) and never printed or logged; `Debug` masks them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapCredential {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for ChapCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChapCredential")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// An iSCSI target: the name initiators log in to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub iqn: String,
    /// Portals (`address:port`) admins want the target reachable on; each
    /// serving node listens on its own portal (see [`Node`]), so this is
    /// what LIO binds and what discovery should advertise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub portals: Vec<String>,
    /// Incoming CHAP: initiators must authenticate with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<ChapCredential>,
    /// Mutual CHAP: the target authenticates to initiators with this
    /// (they check it); needs `chap`, with another secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap: Option<ChapCredential>,
}

/// How a LUN's writes reach stable storage (seed 003); see
/// `ferry_scsi::cache`.
pub use ferry_scsi::qos::QosLimits;
pub use ferry_scsi::CacheMode;

/// A logical unit: a volume exported under a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lun {
    pub name: String,
    /// The target (IQN) exporting it.
    pub target: String,
    /// The SCSI LUN number under the target (1-255; 0 is tgt's controller).
    pub lun: u32,
    /// The volume spec (`file:/path`, `rbd:pool/image`).
    pub spec: String,
    #[serde(default)]
    pub cache_mode: CacheMode,
    /// Nodes allowed to serve it, in order of preference; empty means any
    /// node in the map.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Bumped by a change of `nodes` and by `ferry map lun move`: the map
    /// asking for the LUN to be where the order says. The owner then hands
    /// it to the first live node of the order; nothing else moves a LUN
    /// from a live owner (a node coming back does not take it back).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub order_seq: u64,
    /// IOPS and bandwidth limits, applied live by the serving node.
    #[serde(default, skip_serializing_if = "QosLimits::is_unlimited")]
    pub qos: QosLimits,
    /// The size the LUN should have at least, bytes (`None`: its
    /// volume's). The serving node grows a smaller volume to it, online;
    /// a larger volume is left as it is (only `ferry volume resize
    /// --force` shrinks, once the map's size is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An initiator and the LUNs it may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Initiator {
    pub iqn: String,
    #[serde(default)]
    pub luns: BTreeSet<String>,
}

/// The target front-end a node drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Frontend {
    #[default]
    Tgt,
    Lio,
}

/// A gateway node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Where its target listens (`address:port`).
    pub portal: String,
    #[serde(default)]
    pub frontend: Frontend,
    /// The node's ALUA target port group (and relative target port) id,
    /// the same for every LUN it exports; by default a hash of its name
    /// ([`Node::port_group`]). Set it only to break a collision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_group: Option<u16>,
}

/// The whole desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub targets: BTreeMap<String, Target>,
    pub luns: BTreeMap<String, Lun>,
    pub initiators: BTreeMap<String, Initiator>,
    pub nodes: BTreeMap<String, Node>,
}

/// The longest name a map entity may have (IQNs: RFC 3720 allows 223 bytes).
const MAX_IQN: usize = 223;
const MAX_NAME: usize = 63;

/// Checks an iSCSI name: `iqn.yyyy-mm.reversed.domain[:anything]`,
/// `eui.` + 16 hex digits or `naa.` + 16 or 32 hex digits (RFC 3720 3.2.6).
/// Names are compared case-insensitively by initiators, so only lower case
/// is accepted here to keep one spelling per name.
pub fn check_iqn(name: &str) -> Result<(), MapError> {
    let bad = |why: &str| {
        Err(MapError::invalid(format!(
            "invalid iSCSI name {name:?}: {why} (expected iqn.yyyy-mm.reversed.domain[:id], eui.<16 hex> or naa.<16|32 hex>)"
        )))
    };
    if name.len() > MAX_IQN {
        return bad("longer than 223 bytes");
    }
    if !name.is_ascii() {
        return bad("only lower-case ASCII letters, digits, '-', '.' and ':' are allowed");
    }
    if let Some(hex) = name.strip_prefix("eui.") {
        if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        return bad("eui. takes 16 hex digits");
    }
    if let Some(hex) = name.strip_prefix("naa.") {
        if (hex.len() == 16 || hex.len() == 32) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        return bad("naa. takes 16 or 32 hex digits");
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return bad("it must start with iqn., eui. or naa.");
    };
    let date = rest.get(..7).unwrap_or("");
    let date_ok = date.len() == 7
        && date[..4].bytes().all(|b| b.is_ascii_digit())
        && date.as_bytes()[4] == b'-'
        && date[5..].bytes().all(|b| b.is_ascii_digit())
        && matches!(date[5..].parse::<u8>(), Ok(1..=12));
    if !date_ok {
        return bad("no yyyy-mm date after iqn.");
    }
    let authority = &rest[7..];
    let Some(authority) = authority.strip_prefix('.') else {
        return bad("no naming authority after the date");
    };
    let (domain, _id) = authority.split_once(':').unwrap_or((authority, ""));
    if domain.is_empty()
        || domain.split('.').any(str::is_empty)
        || !domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return bad("the naming authority must be a reversed domain name in lower case");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':'))
    {
        return bad("only lower-case letters, digits, '-', '.' and ':' are allowed");
    }
    Ok(())
}

/// Checks a LUN or node name: it becomes a znode name and a file name.
pub fn check_name(kind: Kind, name: &str) -> Result<(), MapError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(MapError::invalid(format!(
            "invalid {} name {name:?}: 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit",
            kind.noun()
        )))
    }
}

/// Checks an `address:port` portal.
pub fn check_portal(portal: &str) -> Result<(), MapError> {
    portal
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| {
            MapError::invalid(format!(
                "invalid portal {portal:?}: expected address:port, e.g. 192.0.2.10:3260"
            ))
        })
}

fn check_chap(c: &ChapCredential) -> Result<(), MapError> {
    // RFC 3720 wants secrets of 12-16 bytes at least for CHAP to resist
    // offline guessing; tgt and LIO accept 12 and up.
    // tgtd takes the account as "user=U,password=S": a comma in the user
    // would cut it short; a NUL ends either early.
    if c.user.is_empty()
        || c.user
            .contains(|ch: char| ch.is_whitespace() || ch == ',' || ch == '\0')
    {
        return Err(MapError::invalid(
            "CHAP user must be non-empty, without spaces or commas",
        ));
    }
    if c.password.len() < 12 || c.password.len() > 255 {
        return Err(MapError::invalid("CHAP secret must be 12-255 bytes"));
    }
    if c.password.contains('\0') {
        return Err(MapError::invalid("a CHAP secret cannot hold a NUL byte"));
    }
    Ok(())
}

impl Target {
    pub fn validate(&self) -> Result<(), MapError> {
        check_iqn(&self.iqn)?;
        for p in &self.portals {
            check_portal(p)?;
        }
        if let Some(c) = &self.chap {
            check_chap(c)?;
        }
        if let Some(m) = &self.mutual_chap {
            check_chap(m)?;
            let Some(c) = &self.chap else {
                return Err(MapError::invalid(format!(
                    "target {}: mutual CHAP needs CHAP (initiators authenticate first)",
                    self.iqn
                )));
            };
            if c.password == m.password || c.user == m.user {
                return Err(MapError::invalid(format!(
                    "target {}: mutual CHAP needs its own user and secret, not the CHAP ones",
                    self.iqn
                )));
            }
        }
        Ok(())
    }
}

impl Node {
    pub fn validate(&self) -> Result<(), MapError> {
        check_name(Kind::Node, &self.name)?;
        if self.port_group == Some(0) {
            return Err(MapError::invalid(format!(
                "node {}: port group 0 is reserved (1 to 65535)",
                self.name
            )));
        }
        check_portal(&self.portal)
    }

    /// The node's target port group id: `port_group`, or a stable hash
    /// of its name into 1..=65535, so every node names every other
    /// node's group alike without agreeing on anything else.
    pub fn port_group(&self) -> u16 {
        self.port_group.unwrap_or_else(|| {
            let mut h: u32 = 0x811c9dc5;
            for b in self.name.bytes() {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x01000193);
            }
            // 1..=65535: fits u16.
            (h % 0xffff + 1) as u16
        })
    }
}

impl Initiator {
    pub fn validate(&self) -> Result<(), MapError> {
        check_iqn(&self.iqn)
    }
}

impl Lun {
    /// Checks the LUN on its own (not its references).
    pub fn validate(&self) -> Result<(), MapError> {
        check_name(Kind::Lun, &self.name)?;
        check_iqn(&self.target)?;
        if !(1..=255).contains(&self.lun) {
            return Err(MapError::invalid(format!(
                "LUN number {} out of range 1-255 (0 is the target's controller)",
                self.lun
            )));
        }
        if self.spec.trim().is_empty() {
            return Err(MapError::invalid("empty volume spec"));
        }
        let mut seen = BTreeSet::new();
        for n in &self.nodes {
            check_name(Kind::Node, n)?;
            if !seen.insert(n) {
                return Err(MapError::invalid(format!("node {n} listed twice")));
            }
        }
        if let Some(size) = self.size {
            if size == 0 || size % 512 != 0 || size > ferry_scsi::MAX_LUN_SIZE {
                return Err(MapError::invalid(format!(
                    "LUN {}: size {size} is not a positive multiple of 512 bytes up to 64 PiB",
                    self.name
                )));
            }
        }
        self.qos
            .check()
            .map_err(|why| MapError::invalid(format!("LUN {}: QoS {why}", self.name)))
    }
}

impl ClusterMap {
    /// Checks every entity and every reference; what a commit must pass.
    pub fn validate(&self) -> Result<(), MapError> {
        let mut chap_users = BTreeMap::new();
        for (k, t) in &self.targets {
            check_key(Kind::Target, k, &t.iqn)?;
            t.validate()?;
            // tgt's accounts are global: two targets cannot have one user
            // with different secrets (nor share one and stay independent).
            // The same goes for a target's mutual CHAP user (tgt's outgoing
            // account): re-applying one account unbinds it everywhere.
            for c in [&t.chap, &t.mutual_chap].into_iter().flatten() {
                if let Some(other) = chap_users.insert(c.user.clone(), &t.iqn) {
                    return Err(MapError::invalid(format!(
                        "CHAP user {} is already used by target {other}; give each target its own",
                        c.user
                    )));
                }
            }
        }
        let mut groups = BTreeMap::new();
        for (k, n) in &self.nodes {
            check_key(Kind::Node, k, &n.name)?;
            n.validate()?;
            if let Some(other) = groups.insert(n.port_group(), &n.name) {
                return Err(MapError::invalid(format!(
                    "nodes {other} and {} both have port group {}; give one its own port_group",
                    n.name,
                    n.port_group()
                )));
            }
        }
        let mut numbers = BTreeMap::new();
        let mut specs = BTreeMap::new();
        for (k, l) in &self.luns {
            check_key(Kind::Lun, k, &l.name)?;
            l.validate()?;
            if !self.targets.contains_key(&l.target) {
                return Err(MapError::NotFound {
                    kind: Kind::Target,
                    name: l.target.clone(),
                });
            }
            for n in &l.nodes {
                if !self.nodes.contains_key(n) {
                    return Err(MapError::NotFound {
                        kind: Kind::Node,
                        name: n.clone(),
                    });
                }
            }
            if let Some(other) = numbers.insert((&l.target, l.lun), &l.name) {
                return Err(MapError::invalid(format!(
                    "LUN number {} of {} is taken by {other}",
                    l.lun, l.target
                )));
            }
            if let Some(other) = specs.insert(l.spec.trim(), &l.name) {
                return Err(MapError::invalid(format!(
                    "volume {} is already exported as LUN {other}",
                    l.spec
                )));
            }
            if !l.cache_mode.safe_for_shared() && self.sharers(&l.name) > 1 {
                return Err(unsafe_shared(l));
            }
        }
        for (k, i) in &self.initiators {
            check_key(Kind::Initiator, k, &i.iqn)?;
            i.validate()?;
            for l in &i.luns {
                if !self.luns.contains_key(l) {
                    return Err(MapError::NotFound {
                        kind: Kind::Lun,
                        name: l.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// How many initiators may use a LUN.
    pub fn sharers(&self, lun: &str) -> usize {
        self.initiators
            .values()
            .filter(|i| i.luns.contains(lun))
            .count()
    }

    /// Initiators allowed on a target: those mapped to any of its LUNs.
    /// (tgt's ACLs are per target; LIO's mapped LUNs are finer.)
    pub fn initiators_of_target(&self, iqn: &str) -> BTreeSet<String> {
        self.initiators
            .values()
            .filter(|i| {
                i.luns
                    .iter()
                    .any(|l| self.luns.get(l).is_some_and(|l| l.target == iqn))
            })
            .map(|i| i.iqn.clone())
            .collect()
    }
}

/// A document is filed under the name of the entity it describes (a
/// target's and an initiator's IQN, a LUN's and a node's name): references
/// name entities and lookups go by key, so the two must agree. A store may
/// still hold a document that does not (a hand-edited `map.json`, another
/// writer's bug); it is refused here, not trusted.
fn check_key(kind: Kind, key: &str, name: &str) -> Result<(), MapError> {
    if key == name {
        return Ok(());
    }
    Err(MapError::invalid(format!(
        "the {noun} document {key:?} describes {noun} {name:?}; a document must be filed under its own name",
        noun = kind.noun()
    )))
}

fn unsafe_shared(l: &Lun) -> MapError {
    MapError::invalid(format!(
        "LUN {} is shared by several initiators and cache mode {} could show them stale or lost data; use writethrough, none or directsync",
        l.name, l.cache_mode
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iqn_syntax_accepts_the_three_forms() {
        for ok in [
            "iqn.2026-11.org.ferry:lun1",
            "iqn.1994-05.com.redhat:5b3c9a1f",
            "iqn.2003-01.org.linux-iscsi.host.x8664:sn.1234",
            "eui.02004567a425678d",
            "naa.52004567ba64678d",
            "naa.52004567ba64678d52004567ba64678d",
        ] {
            check_iqn(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn iqn_syntax_rejects_malformed_names() {
        for bad in [
            "",
            "iqn",
            "iqn.2026.org.ferry",
            "iqn.2026-13.org.ferry:x",
            "iqn.2026-11:x",
            "iqn.2026-11.Org.Ferry:x",
            "iqn.2026-11.org..ferry",
            "iqn.2026-11.org.ferry:has space",
            "eui.123",
            "naa.zz004567ba64678d",
            "target1",
        ] {
            assert!(check_iqn(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_iqn(&format!("iqn.2026-11.org.ferry:{}", "a".repeat(220))).is_err());
        assert!(
            check_iqn("iqn.201é1-11.org.x").is_err(),
            "no panic on non-ASCII"
        );
    }

    #[test]
    fn names_become_znodes_so_slashes_are_refused() {
        assert!(check_name(Kind::Lun, "db-01").is_ok());
        for bad in ["", "a/b", ".hidden", "-x", "a b", &"x".repeat(64)] {
            assert!(check_name(Kind::Lun, bad).is_err(), "{bad:?}");
        }
    }

    fn sample() -> ClusterMap {
        let mut m = ClusterMap::default();
        let t = "iqn.2026-11.org.ferry:t1".to_string();
        m.targets.insert(
            t.clone(),
            Target {
                iqn: t.clone(),
                portals: vec![],
                chap: None,
                mutual_chap: None,
            },
        );
        m.nodes.insert(
            "a".into(),
            Node {
                name: "a".into(),
                portal: "127.0.0.1:3260".into(),
                frontend: Frontend::Tgt,
                port_group: None,
            },
        );
        m.luns.insert(
            "l1".into(),
            Lun {
                name: "l1".into(),
                target: t,
                lun: 1,
                spec: "file:/v/l1".into(),
                cache_mode: CacheMode::Writeback,
                nodes: vec!["a".into()],
                order_seq: 0,
                qos: Default::default(),
                size: None,
            },
        );
        m
    }

    fn add_initiator(m: &mut ClusterMap, iqn: &str, lun: &str) {
        m.initiators.insert(
            iqn.into(),
            Initiator {
                iqn: iqn.into(),
                luns: [lun.to_string()].into(),
            },
        );
    }

    #[test]
    fn writeback_is_refused_once_a_second_initiator_shares_the_lun() {
        let mut m = sample();
        add_initiator(&mut m, "iqn.2026-11.org.ferry:h1", "l1");
        m.validate().unwrap();
        add_initiator(&mut m, "iqn.2026-11.org.ferry:h2", "l1");
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("writethrough, none or directsync"), "{e}");
        m.luns.get_mut("l1").unwrap().cache_mode = CacheMode::None;
        m.validate().unwrap();
    }

    #[test]
    fn references_must_exist() {
        let mut m = sample();
        m.luns.get_mut("l1").unwrap().nodes = vec!["zz".into()];
        assert!(matches!(
            m.validate(),
            Err(MapError::NotFound {
                kind: Kind::Node,
                ..
            })
        ));
        let mut m = sample();
        add_initiator(&mut m, "iqn.2026-11.org.ferry:h1", "nope");
        assert!(matches!(
            m.validate(),
            Err(MapError::NotFound {
                kind: Kind::Lun,
                ..
            })
        ));
    }

    #[test]
    fn one_volume_is_exported_once() {
        let mut m = sample();
        let mut l2 = m.luns["l1"].clone();
        l2.name = "l2".into();
        l2.lun = 2;
        m.luns.insert("l2".into(), l2);
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("already exported"));
    }

    #[test]
    fn two_targets_cannot_share_a_chap_user() {
        let mut m = sample();
        let chap = ChapCredential {
            user: "u".into(),
            password: "0123456789ab".into(),
        };
        m.targets.get_mut("iqn.2026-11.org.ferry:t1").unwrap().chap = Some(chap.clone());
        m.targets.insert(
            "iqn.2026-11.org.ferry:t2".into(),
            Target {
                iqn: "iqn.2026-11.org.ferry:t2".into(),
                portals: vec![],
                chap: Some(chap),
                mutual_chap: None,
            },
        );
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("already used"));
    }

    /// Found by the `map_json` fuzz target: a target filed under another
    /// IQN failed a `debug_assert` (a panic in debug builds) and was
    /// accepted in release builds.
    #[test]
    fn documents_filed_under_another_name_are_refused() {
        let mut m = sample();
        let t = m.targets.remove("iqn.2026-11.org.ferry:t1").unwrap();
        m.targets.insert("iqn.202(6-11.org.ferry:t1".into(), t);
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("filed under its own name"), "{err}");

        let mut m = sample();
        let l = m.luns.remove("l1").unwrap();
        m.luns.insert("l9".into(), l);
        assert!(m.validate().is_err());

        let mut m = sample();
        let n = m.nodes.remove("a").unwrap();
        m.nodes.insert("b".into(), n);
        assert!(m.validate().is_err());

        let mut m = sample();
        add_initiator(&mut m, "iqn.1994-05.com.redhat:h1", "l1");
        let i = m.initiators.remove("iqn.1994-05.com.redhat:h1").unwrap();
        m.initiators.insert("iqn.1994-05.com.redhat:h2".into(), i);
        assert!(m.validate().is_err());
    }

    #[test]
    fn chap_secret_is_masked_in_debug() {
        let c = ChapCredential {
            user: "u".into(),
            password: "supersecret123".into(),
        };
        assert!(!format!("{c:?}").contains("supersecret"));
    }

    #[test]
    fn a_luns_qos_refuses_unknown_fields_and_zero_limits() {
        let doc = r#"{"name":"l","target":"iqn.2026-11.org.ferry:t","lun":1,"spec":"file:/v","qos":{"read-ipos":5}}"#;
        let e = serde_json::from_str::<Lun>(doc).unwrap_err().to_string();
        assert!(e.contains("unknown field `read-ipos`"), "{e}");
        let doc = r#"{"name":"l","target":"iqn.2026-11.org.ferry:t","lun":1,"spec":"file:/v","qos":{"write-iops":0}}"#;
        let l: Lun = serde_json::from_str(doc).unwrap();
        assert!(l
            .validate()
            .unwrap_err()
            .to_string()
            .contains("write-iops of 0"));
        let doc = r#"{"name":"l","target":"iqn.2026-11.org.ferry:t","lun":1,"spec":"file:/v","qos":{"read-bps":1048576}}"#;
        let l: Lun = serde_json::from_str(doc).unwrap();
        l.validate().unwrap();
        assert_eq!(l.qos.read_bps, Some(1 << 20));
    }
}
