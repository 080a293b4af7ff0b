//! Which node serves which LUN.
//!
//! A LUN is served by the node holding its claim (an ephemeral znode: it
//! disappears when that node's session ends). Claims are sticky: a node
//! that comes back after a failure does not take its LUNs back, so a
//! flapping node cannot make LUNs flap. When a LUN has no claim, the live
//! nodes permitted to serve it try in order of preference, each waiting
//! [`CLAIM_STEP`] times its rank, so the most preferred live node wins
//! unless it is slow or failing, and the claim itself (an atomic create)
//! guarantees a single winner either way.
use std::collections::BTreeMap;
use std::time::Duration;

use crate::schema::Lun;
use crate::state::Snapshot;

/// The wait per rank before a less preferred node claims an unowned LUN.
/// Only live nodes are ranked, so a failover does not wait for a dead
/// node's turn; the step is the time a live but loaded node gets to see
/// a change and claim before the next one takes the LUN for good (claims
/// are sticky). CI saw 750 ms missed right after a ZooKeeper restart.
pub const CLAIM_STEP: Duration = Duration::from_secs(2);

/// The nodes permitted to serve `lun` that are live now, most preferred
/// first. A LUN without a node list may run on any node in the map, in
/// name order.
pub fn candidates<'a>(snap: &'a Snapshot, lun: &'a Lun) -> Vec<&'a str> {
    permitted(snap, lun)
        .into_iter()
        .filter(|n| snap.live.contains_key(*n))
        .collect()
}

/// The nodes permitted to serve `lun`, live or not, most preferred
/// first: its node list, or every node of the map in name order.
pub fn permitted<'a>(snap: &'a Snapshot, lun: &'a Lun) -> Vec<&'a str> {
    if lun.nodes.is_empty() {
        snap.map.nodes.keys().map(String::as_str).collect()
    } else {
        lun.nodes
            .iter()
            .map(String::as_str)
            .filter(|n| snap.map.nodes.contains_key(*n))
            .collect()
    }
}

/// What a node's target port group is for a LUN, as the map says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It holds the LUN's claim.
    Owner,
    /// Live, and may take the LUN over.
    Standby,
    /// Not live (or gone from the map).
    Down,
}

/// One node's target port group for a LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub node: String,
    pub group: u16,
    pub role: Role,
    /// The LUN's most preferred node.
    pub preferred: bool,
}

/// Every permitted node's port group for `lun`, as every node derives it
/// from the same snapshot (so RTPG agrees on every path).
pub fn port_groups(snap: &Snapshot, lun: &Lun) -> Vec<GroupView> {
    let owner = snap.owners.get(&lun.name).map(String::as_str);
    permitted(snap, lun)
        .into_iter()
        .enumerate()
        .map(|(i, n)| GroupView {
            node: n.to_string(),
            group: snap.map.nodes[n].port_group(),
            role: if owner == Some(n) {
                Role::Owner
            } else if snap.live.contains_key(n) {
                Role::Standby
            } else {
                Role::Down
            },
            preferred: i == 0,
        })
        .collect()
}

/// Whether the owner `me` of `lun` should hand it to a more preferred
/// live node: the map asked for its node order again (`order_seq`) since
/// `me` last kept it (`kept_at`). A node coming back does not take its
/// LUNs back by itself: only an edit of the order moves a LUN from a live
/// owner (no failback ping-pong).
pub fn hand_over_to<'a>(
    snap: &'a Snapshot,
    lun: &'a Lun,
    me: &str,
    kept_at: u64,
) -> Option<&'a str> {
    if lun.order_seq == kept_at {
        return None;
    }
    candidates(snap, lun).first().copied().filter(|n| *n != me)
}

/// What one node should do about the LUNs of a snapshot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodePlan {
    /// LUNs this node holds the claim of and should serve.
    pub serve: Vec<String>,
    /// LUNs this node may serve but another node holds (or nobody yet):
    /// exported in standby, the volume not opened.
    pub standby: Vec<String>,
    /// Unclaimed LUNs this node may claim, with how long to wait first.
    pub claim: BTreeMap<String, Duration>,
    /// Claims this node holds but should give up (LUN removed from the
    /// map, or this node no longer permitted): stop serving, then release.
    pub release: Vec<String>,
}

/// Plans for node `me`.
pub fn plan(snap: &Snapshot, me: &str) -> NodePlan {
    let mut p = NodePlan::default();
    for (name, lun) in &snap.map.luns {
        let permitted = lun.nodes.is_empty() || lun.nodes.iter().any(|n| n == me);
        match snap.owners.get(name).map(String::as_str) {
            Some(owner) if owner == me => {
                if permitted && snap.map.nodes.contains_key(me) {
                    p.serve.push(name.clone());
                } else {
                    p.release.push(name.clone());
                }
            }
            Some(_) => {
                if permitted && snap.map.nodes.contains_key(me) {
                    p.standby.push(name.clone());
                }
            }
            None => {
                if let Some(rank) = candidates(snap, lun).iter().position(|n| *n == me) {
                    // rank < number of nodes, far below u32::MAX.
                    p.claim.insert(name.clone(), CLAIM_STEP * rank as u32);
                    p.standby.push(name.clone());
                }
            }
        }
    }
    for (lun, owner) in &snap.owners {
        if owner == me && !snap.map.luns.contains_key(lun) {
            p.release.push(lun.clone());
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::*;
    use crate::state::LiveNode;

    fn snap(nodes: &[&str], live: &[&str]) -> Snapshot {
        let mut s = Snapshot::default();
        for n in nodes {
            s.map.nodes.insert(
                n.to_string(),
                Node {
                    name: n.to_string(),
                    portal: "127.0.0.1:3260".into(),
                    frontend: Frontend::Tgt,
                    port_group: None,
                },
            );
        }
        for n in live {
            s.live.insert(
                n.to_string(),
                LiveNode {
                    portal: String::new(),
                    pid: 1,
                    since: 0,
                    host: String::new(),
                    pid_start: 0,
                },
            );
        }
        s
    }

    fn lun(s: &mut Snapshot, name: &str, nodes: &[&str]) {
        s.map.luns.insert(
            name.into(),
            Lun {
                name: name.into(),
                target: "iqn.2026-11.org.ferry:t".into(),
                lun: 1,
                spec: format!("file:/{name}"),
                cache_mode: CacheMode::default(),
                nodes: nodes.iter().map(|n| n.to_string()).collect(),
                order_seq: 0,
                qos: Default::default(),
                size: None,
            },
        );
    }

    #[test]
    fn most_preferred_live_node_claims_first() {
        let mut s = snap(&["a", "b", "c"], &["b", "c"]);
        lun(&mut s, "l", &["a", "b", "c"]);
        assert_eq!(plan(&s, "b").claim["l"], Duration::ZERO);
        assert_eq!(plan(&s, "c").claim["l"], CLAIM_STEP);
        assert!(plan(&s, "a").claim.is_empty());
    }

    #[test]
    fn claims_are_sticky_when_the_preferred_node_returns() {
        let mut s = snap(&["a", "b"], &["a", "b"]);
        lun(&mut s, "l", &["a", "b"]);
        s.owners.insert("l".into(), "b".into());
        assert_eq!(
            plan(&s, "a"),
            NodePlan {
                standby: vec!["l".into()],
                ..NodePlan::default()
            }
        );
        assert_eq!(plan(&s, "b").serve, vec!["l".to_string()]);
        // The order was not asked for again: no hand-over.
        let l = &s.map.luns["l"];
        assert_eq!(hand_over_to(&s, l, "b", l.order_seq), None);
    }

    #[test]
    fn an_order_asked_for_again_hands_the_lun_to_its_first_live_node() {
        let mut s = snap(&["a", "b", "c"], &["a", "b"]);
        lun(&mut s, "l", &["b", "a"]);
        s.owners.insert("l".into(), "a".into());
        s.map.luns.get_mut("l").unwrap().order_seq = 1;
        let l = &s.map.luns["l"];
        assert_eq!(hand_over_to(&s, l, "a", 0), Some("b"));
        assert_eq!(hand_over_to(&s, l, "a", 1), None);
        // Not to a node that is down; and not to itself.
        lun(&mut s, "l", &["c", "a"]);
        s.map.luns.get_mut("l").unwrap().order_seq = 2;
        let l = &s.map.luns["l"];
        assert_eq!(hand_over_to(&s, l, "a", 1), None);
    }

    #[test]
    fn every_node_sees_the_same_port_groups() {
        let mut s = snap(&["a", "b", "c"], &["a", "b"]);
        lun(&mut s, "l", &["b", "a", "c"]);
        s.owners.insert("l".into(), "a".into());
        let g = port_groups(&s, &s.map.luns["l"]);
        let roles: Vec<_> = g
            .iter()
            .map(|v| (v.node.as_str(), v.role, v.preferred))
            .collect();
        assert_eq!(
            roles,
            vec![
                ("b", Role::Standby, true),
                ("a", Role::Owner, false),
                ("c", Role::Down, false)
            ]
        );
        assert_eq!(g[0].group, s.map.nodes["b"].port_group());
        assert_ne!(g[0].group, g[1].group);
    }

    #[test]
    fn owner_releases_luns_removed_or_no_longer_permitted() {
        let mut s = snap(&["a", "b"], &["a", "b"]);
        lun(&mut s, "l", &["b"]);
        s.owners.insert("l".into(), "a".into());
        s.owners.insert("gone".into(), "a".into());
        let p = plan(&s, "a");
        assert_eq!(p.release, vec!["l".to_string(), "gone".to_string()]);
        assert!(p.serve.is_empty());
        assert!(p.standby.is_empty(), "a may not serve l at all");
    }

    #[test]
    fn lun_without_node_list_runs_anywhere() {
        let mut s = snap(&["a", "b"], &["a", "b"]);
        lun(&mut s, "l", &[]);
        assert_eq!(plan(&s, "a").claim["l"], Duration::ZERO);
        assert_eq!(plan(&s, "b").claim["l"], CLAIM_STEP);
    }
}
