//! Where a LUN's reservations are kept, as traits the host implements.
//!
//! [`crate::Reservations`] decides; a [`ReservationStore`] keeps the saved
//! form. Every volume has a slot for it in its metadata, which holds either
//! the document itself or a [`Pointer`] to a document kept elsewhere (the
//! ZooKeeper map of the cluster whose agents serve the LUN). Following a
//! pointer is a [`ReservationHomes`]' job, injected by whoever starts the
//! LUN: the `ferry` command and the agent open ZooKeeper themselves, the
//! target plugins ask the node's agent, so no data-path process links a
//! ZooKeeper client.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::PrError;

/// Keeps one LUN's saved reservations.
pub trait ReservationStore: Send + Sync {
    /// The saved document (`None`: nothing saved yet).
    fn load(&self) -> Result<Option<Vec<u8>>, PrError>;
    /// Saves `bytes` durably before returning.
    fn save(&self, bytes: &[u8]) -> Result<(), PrError>;
    /// Where, for messages (`zk://.../reservations/db`, a file's path).
    fn describe(&self) -> String;
}

/// The slot's content when the document is kept outside the volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// The map: `zk://host:port[,host:port...]/root`.
    pub kept_in: String,
    /// The LUN's name in the map: the document is
    /// `<root>/reservations/<lun>`.
    pub lun: String,
    /// Credentials (`user:password`) for the map, read from this file on
    /// every gateway; never stored in the slot itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_file: Option<PathBuf>,
}

impl Pointer {
    /// A pointer to LUN `lun`'s document in the map at `map_url`.
    pub fn new(map_url: &str, lun: &str, auth_file: Option<&Path>) -> Pointer {
        Pointer {
            kept_in: map_url.to_string(),
            lun: lun.to_string(),
            auth_file: auth_file.map(Path::to_path_buf),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a pointer serializes")
    }

    /// The slot holds a pointer (rather than the document itself).
    pub fn decode(bytes: &[u8]) -> Option<Pointer> {
        serde_json::from_slice(bytes).ok()
    }

    /// The document, as `zk://servers/root/reservations/<lun>`.
    pub fn describe(&self) -> String {
        format!("{}/reservations/{}", self.kept_in, self.lun)
    }
}

/// How a home is opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenMode {
    /// To read it (an administrator's tool, a LUN opened offline).
    Read,
    /// To serve the LUN: this opener becomes the document's only writer
    /// (it is written back unchanged), so a gateway that served the LUN
    /// before and still runs somewhere fails its next save. A missing
    /// document is an error: it is written before any pointer to it, so
    /// missing means deleted, and the registrations hosts rely on for
    /// fencing must not pass for none.
    Claim,
    /// To replace what it holds with these bytes (moving a LUN's
    /// reservations into the map), then write it.
    Replace(Vec<u8>),
}

/// A home opened: its store, with what it held when opened.
pub type OpenedHome = (Box<dyn ReservationStore>, Option<Vec<u8>>);

/// Follows pointers to where reservations are kept.
pub trait ReservationHomes: Send + Sync {
    /// Opens the document `pointer` names; returns it with what it held
    /// when opened (after a `Replace`, the new bytes).
    fn open(&self, pointer: &Pointer, mode: OpenMode) -> Result<OpenedHome, PrError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_and_states_are_told_apart() {
        let p = Pointer::new(
            "zk://127.0.0.1:2181/ferry",
            "db",
            Some(Path::new("/etc/ferry/zk")),
        );
        assert_eq!(Pointer::decode(&p.encode()), Some(p.clone()));
        let p2 = Pointer::new("zk://a:1,b:2/x", "web", None);
        assert!(!String::from_utf8(p2.encode())
            .unwrap()
            .contains("auth_file"));
        assert_eq!(Pointer::decode(&p2.encode()), Some(p2));
        // A saved state is not a pointer, nor is garbage.
        let state = crate::PrState::default().encode();
        assert_eq!(Pointer::decode(&state), None);
        assert_eq!(Pointer::decode(b"{\"kept_in\": 1}"), None);
        assert_eq!(Pointer::decode(b"\x00\x01"), None);
    }
}
