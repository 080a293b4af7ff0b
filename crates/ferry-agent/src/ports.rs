//! The ALUA target ports of this node's serving processes, driven through
//! their control sockets: every exported LUN's port learns every port
//! group's state from the map, and this node's own group's state from
//! what the agent decided (active once the previous owner is fenced,
//! transitioning until then, standby otherwise).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferry_host::control::{self, Request};
use ferry_host::ferry_scsi::alua::{AccessState, PortGroup};
use ferry_host::port::PortInfo;
use ferry_host::VolumeSpec;
use ferry_map::placement::{port_groups, Role};
use ferry_map::Snapshot;

use crate::{ask, AgentError};

/// What one LUN's port on this node should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedPort {
    pub spec: String,
    pub own_group: u16,
    /// Every permitted node's group, this node's in `own`'s state.
    pub groups: Vec<PortGroup>,
}

/// The port of LUN `lun` on node `me`, whose own state is `own`; `None`
/// when the map does not know the LUN or the node.
pub fn wanted_port(snap: &Snapshot, lun: &str, me: &str, own: AccessState) -> Option<WantedPort> {
    let l = snap.map.luns.get(lun)?;
    let own_group = snap.map.nodes.get(me)?.port_group();
    let mut groups: Vec<PortGroup> = port_groups(snap, l)
        .into_iter()
        .map(|g| PortGroup {
            id: g.group,
            state: match g.role {
                Role::Owner => AccessState::ActiveOptimized,
                Role::Standby => AccessState::Standby,
                Role::Down => AccessState::Unavailable,
            },
            // Marked only while the preferred node owns the LUN: Linux's
            // prio alua ranks a preferred non-active path above the
            // active one, so a preferred standby would draw the I/O.
            preferred: g.preferred && g.role == Role::Owner,
        })
        .collect();
    match groups.iter_mut().find(|g| g.id == own_group) {
        Some(g) => g.state = own,
        None => groups.push(PortGroup {
            id: own_group,
            state: own,
            preferred: false,
        }),
    }
    Some(WantedPort {
        spec: l.spec.clone(),
        own_group,
        groups,
    })
}

fn canonical(spec: &str) -> String {
    VolumeSpec::parse(spec)
        .map(|s| s.to_string())
        .unwrap_or_else(|_| spec.to_string())
}

/// The ports of the serving processes in `run_dir`, by canonical spec,
/// and the sockets that did not say.
fn ports(run_dir: &Path) -> (BTreeMap<String, (PathBuf, PortInfo)>, Vec<String>) {
    let mut found = BTreeMap::new();
    let mut silent = Vec::new();
    for (sock, answer) in control::ports_in(run_dir) {
        match answer {
            Ok(ports) => found.extend(
                ports
                    .into_iter()
                    .map(|p| (canonical(&p.spec), (sock.clone(), p))),
            ),
            Err(why) => silent.push(format!("{}: {why}", sock.display())),
        }
    }
    (found, silent)
}

/// The LUNs of `wanted` whose port is active now and stays active: a
/// target that reports states itself (LIO) keeps saying active/optimized
/// for them while the others change.
pub fn staying_active(run_dir: &Path, wanted: &BTreeMap<String, WantedPort>) -> BTreeSet<String> {
    let (found, _) = ports(run_dir);
    wanted
        .iter()
        .filter(|(_, w)| {
            w.groups
                .iter()
                .any(|g| g.id == w.own_group && g.state.is_active())
        })
        .filter(|(_, w)| {
            found
                .get(&canonical(&w.spec))
                .is_some_and(|(_, info)| info.own_group == w.own_group && info.state.is_active())
        })
        .map(|(lun, _)| lun.clone())
        .collect()
}

/// Gives each LUN's port what `wanted` says (only where it differs), by
/// LUN name, running `prepare` (LUN name, spec) before a port turns
/// active; returns each LUN's own state after, or why it failed (no
/// port: the LU is not set up; a refused activation: the volume could
/// not be opened yet).
pub fn apply(
    run_dir: &Path,
    wanted: &BTreeMap<String, WantedPort>,
    prepare: &dyn Fn(&str, &str) -> Result<(), String>,
) -> BTreeMap<String, Result<AccessState, String>> {
    let (found, _) = ports(run_dir);
    let mut out = BTreeMap::new();
    for (lun, w) in wanted {
        let Some((sock, info)) = found.get(&canonical(&w.spec)) else {
            out.insert(
                lun.clone(),
                Err("no target port for it in this node's target".into()),
            );
            continue;
        };
        if info.own_group == w.own_group && info.groups == w.groups {
            out.insert(lun.clone(), Ok(info.state));
            continue;
        }
        let activating = w
            .groups
            .iter()
            .any(|g| g.id == w.own_group && g.state.is_active())
            && !info.state.is_active();
        if activating {
            if let Err(why) = prepare(lun, &w.spec) {
                out.insert(lun.clone(), Err(why));
                continue;
            }
        }
        let req = Request::Alua {
            volume: w.spec.clone(),
            own_group: w.own_group,
            groups: w.groups.clone(),
        };
        let result = match ask(sock, &req) {
            Ok(r) => {
                let state = r
                    .ports
                    .and_then(|p| p.first().map(|i| i.state))
                    .unwrap_or(AccessState::Unavailable);
                log::info!("LUN {lun}: port group {} {state}", w.own_group);
                Ok(state)
            }
            Err(e) => Err(e.to_string()),
        };
        out.insert(lun.clone(), result);
    }
    out
}

/// Turns every port of the serving processes in `run_dir` unavailable
/// (this node lost the map), all at once, each reporting only its own
/// group (its view of the others may be stale, and initiators take any
/// path's report for every group); returns how many there were. A
/// process that does not answer, or a port that does not close, is an
/// error: the caller falls back to removing the LUNs.
pub fn make_all_unavailable(run_dir: &Path) -> Result<usize, AgentError> {
    let (found, silent) = ports(run_dir);
    if let Some(why) = silent.first() {
        return Err(AgentError::Refused(format!(
            "cannot list target ports: {why}"
        )));
    }
    let results: Vec<Result<(), AgentError>> = std::thread::scope(|scope| {
        let calls: Vec<_> = found
            .values()
            .map(|(sock, info)| {
                scope.spawn(move || {
                    let req = Request::Alua {
                        volume: info.spec.clone(),
                        own_group: info.own_group,
                        groups: vec![PortGroup {
                            id: info.own_group,
                            state: AccessState::Unavailable,
                            preferred: false,
                        }],
                    };
                    ask(sock, &req).map(drop)
                })
            })
            .collect();
        calls
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| Err(AgentError::Refused("a fencing call panicked".into())))
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_map::schema::{CacheMode, Frontend, Lun, Node};
    use ferry_map::state::LiveNode;

    fn snap() -> Snapshot {
        let mut s = Snapshot::default();
        for n in ["a", "b", "c"] {
            s.map.nodes.insert(
                n.into(),
                Node {
                    name: n.into(),
                    portal: "127.0.0.1:3260".into(),
                    frontend: Frontend::Tgt,
                    port_group: None,
                },
            );
        }
        for n in ["a", "b"] {
            s.live.insert(
                n.into(),
                LiveNode {
                    portal: String::new(),
                    pid: 1,
                    since: 0,
                    host: String::new(),
                    pid_start: 0,
                },
            );
        }
        s.map.luns.insert(
            "l".into(),
            Lun {
                name: "l".into(),
                target: "iqn.2026-11.org.ferry:t".into(),
                lun: 1,
                spec: "file:/v".into(),
                cache_mode: CacheMode::default(),
                nodes: vec!["a".into(), "b".into(), "c".into()],
                order_seq: 0,
                qos: Default::default(),
                size: None,
            },
        );
        s.owners.insert("l".into(), "a".into());
        s
    }

    #[test]
    fn each_node_says_the_same_of_the_others_and_its_own_state_for_itself() {
        let s = snap();
        let g = |n: &str| s.map.nodes[n].port_group();
        let on_b = wanted_port(&s, "l", "b", AccessState::Standby).unwrap();
        assert_eq!(on_b.own_group, g("b"));
        assert_eq!(
            on_b.groups,
            vec![
                PortGroup {
                    id: g("a"),
                    state: AccessState::ActiveOptimized,
                    preferred: true
                },
                PortGroup {
                    id: g("b"),
                    state: AccessState::Standby,
                    preferred: false
                },
                PortGroup {
                    id: g("c"),
                    state: AccessState::Unavailable,
                    preferred: false
                },
            ]
        );
        // The owner still fencing its predecessor says transitioning.
        let on_a = wanted_port(&s, "l", "a", AccessState::Transitioning).unwrap();
        assert_eq!(on_a.groups[0].state, AccessState::Transitioning);
        assert_eq!(on_a.groups[1..], on_b.groups[1..]);
        assert!(wanted_port(&s, "nope", "a", AccessState::Standby).is_none());
        // After a failover the preferred node a is a standby: nobody is
        // marked preferred (Linux would rank a's standby path first).
        let mut s = s;
        s.owners.insert("l".into(), "b".into());
        let on_b = wanted_port(&s, "l", "b", AccessState::ActiveOptimized).unwrap();
        assert!(
            on_b.groups.iter().all(|g| !g.preferred),
            "{:?}",
            on_b.groups
        );
    }
}
