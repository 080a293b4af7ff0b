//! The agent's error type: what stops a pass or a migration request, each
//! saying what failed and where. The local target's own failures (a
//! tgtadm command, a configfs step) are its sources.
//!
//! Failures of one LUN during a pass do not stop it: they are reported in
//! the node's status, by LUN, as text (see [`crate::PassReport`]).
use std::path::PathBuf;

use ferry_map::MapError;

use crate::lio::LioError;
use crate::tgt::TgtError;

/// What an agent's pass, or a request it carries out, can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Reading the map, registering, claiming or reporting in it failed.
    #[error(transparent)]
    Map(#[from] MapError),
    /// This node is not in the map.
    #[error("unknown node {node} (add it with `ferry map node add {node} --portal ADDR:PORT`)")]
    UnknownNode { node: String },
    /// The map gives this node another kind of target than the agent
    /// drives.
    #[error(
        "node {node} is a {in_map} node in the map, but this agent drives {drives} (--frontend)"
    )]
    WrongFrontend {
        node: String,
        in_map: &'static str,
        drives: &'static str,
    },
    /// A tgtadm command failed.
    #[error(transparent)]
    Tgt(#[from] TgtError),
    /// A step in LIO's configfs failed.
    #[error(transparent)]
    Lio(#[from] LioError),
    /// There is no LIO under the configfs directory given.
    #[error("{} has no LIO (load target_core_mod and mount configfs)", root.display())]
    NoLio { root: PathBuf },
    /// A LUN's volume could not be parsed, opened or fenced.
    #[error(transparent)]
    Volume(#[from] ferry_core::Error),
    /// The persistent reservations kept at `what` (a volume's slot, or
    /// where its pointer leads) could not be read or saved.
    #[error("persistent reservations in {what}: {source}")]
    Reservations {
        what: String,
        #[source]
        source: ferry_host::ferry_pr::PrError,
    },
    /// No process on this node serves the volume (no control socket in
    /// the run directory lists it).
    #[error("no process on this node serves {spec}")]
    NotServed { spec: String },
    /// The serving process's control socket could not be reached, or a
    /// socket of the agent's own (the reservations relay) set up.
    #[error(transparent)]
    Host(#[from] ferry_host::HostError),
    /// The serving process refused a request, saying why.
    #[error("{0}")]
    Refused(String),
}

impl AgentError {
    /// Whether the map store was not reached (or the session ended): the
    /// agent then fences itself once it has been silent long enough.
    pub fn is_transient(&self) -> bool {
        matches!(self, AgentError::Map(e) if e.is_transient())
    }

    /// Whether the session with the map store ended, taking this node's
    /// claims with it.
    pub fn is_session_expired(&self) -> bool {
        matches!(self, AgentError::Map(MapError::SessionExpired))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These failures were map errors before the agent had its own type;
    /// admins (and the status the node reports) read the same words.
    #[test]
    fn node_errors_say_what_the_map_errors_said() {
        let unknown = AgentError::UnknownNode { node: "a".into() };
        let before = MapError::NotFound {
            kind: ferry_map::Kind::Node,
            name: "a (add it with `ferry map node add a --portal ADDR:PORT`)".into(),
        };
        assert_eq!(unknown.to_string(), before.to_string());
        assert!(!unknown.is_transient());
        let wrong = AgentError::WrongFrontend {
            node: "a".into(),
            in_map: "lio",
            drives: "tgt",
        };
        assert_eq!(
            wrong.to_string(),
            "node a is a lio node in the map, but this agent drives tgt (--frontend)"
        );
    }

    #[test]
    fn only_map_outages_are_transient() {
        assert!(AgentError::from(MapError::SessionExpired).is_session_expired());
        assert!(AgentError::from(MapError::Unreachable {
            store: "zk://h:1/ferry".into(),
            why: "down".into(),
        })
        .is_transient());
        assert!(!AgentError::NotServed {
            spec: "file:/v".into()
        }
        .is_transient());
    }
}
