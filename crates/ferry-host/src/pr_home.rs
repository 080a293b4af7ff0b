//! Where a LUN's persistent reservations are saved.
//!
//! Every volume has a slot for them in its metadata (RBD image metadata
//! `ferry.pr`, a file volume's `<path>.ferry-pr`). The slot holds either
//! the state itself (`ferry_pr`'s document) or a [`Pointer`] to a
//! document in the cluster's ZooKeeper map, `<root>/reservations/<lun>`.
//! A LUN served by the map's agents keeps its reservations there (the
//! agent leaves the pointer before a node first serves it); a LUN outside
//! any map keeps them in the slot.
//!
//! Either way the slot travels with the volume: a migration commit or a
//! snapshot restore copies the slot's content to the new volume, so
//! whoever opens the LUN next finds the same reservations.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_core::{Error, MetaStore, Result};
use ferry_pr::PrState;
use ferry_zk::{ZkConfig, ZkDocument};

use crate::spec::VolumeSpec;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The slot's content when the state lives in ZooKeeper.
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
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a pointer serializes")
    }

    /// The slot holds a pointer (rather than the state itself).
    pub fn decode(bytes: &[u8]) -> Option<Pointer> {
        serde_json::from_slice(bytes).ok()
    }

    /// The document, as `zk://servers/root/reservations/<lun>`.
    pub fn describe(&self) -> String {
        format!("{}/reservations/{}", self.kept_in, self.lun)
    }

    /// Connects to the document.
    pub fn connect(&self) -> Result<ZkDocument> {
        let bad = |why: String| Error::Reservations {
            what: self.describe(),
            why,
        };
        let mut cfg = ZkConfig::parse(&self.kept_in).map_err(|e| bad(e.to_string()))?;
        if let Some(f) = &self.auth_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| bad(format!("reading the credentials {}: {e}", f.display())))?;
            cfg.auth = Some(text.trim().to_string());
        }
        if self.lun.is_empty() || self.lun.contains('/') {
            return Err(bad(format!("bad LUN name {:?}", self.lun)));
        }
        ZkDocument::open(cfg, &format!("reservations/{}", self.lun)).map_err(|e| bad(e.to_string()))
    }
}

enum Home {
    /// The state is in the volume's slot.
    Slot,
    /// The state is in ZooKeeper; the slot holds `pointer`.
    Zk {
        doc: Box<ZkDocument>,
        pointer: Vec<u8>,
    },
}

/// The reservations' slot and where the state really lives.
pub(crate) struct PrStore {
    /// The served volume's metadata (the source's while migrating).
    slot: Mutex<Arc<dyn MetaStore>>,
    home: Mutex<Home>,
}

impl PrStore {
    /// Opens the slot, following a pointer; returns the saved state. A
    /// gateway opening the LUN to serve it (`serving`) claims a document
    /// in ZooKeeper: it writes it back unchanged, so a gateway that served
    /// the LUN before and still runs somewhere cannot save over it.
    pub(crate) fn open(
        slot: Arc<dyn MetaStore>,
        serving: bool,
    ) -> Result<(PrStore, Option<Vec<u8>>)> {
        let saved = slot.load_reservations()?;
        let (home, saved) = match saved.as_deref().and_then(Pointer::decode) {
            Some(p) => {
                let doc = p.connect()?;
                let bad = |why: String| Error::Reservations {
                    what: p.describe(),
                    why,
                };
                let read = if serving { doc.claim() } else { doc.load() };
                // The document is written before any pointer to it, so a
                // missing one was deleted: the registrations hosts rely on
                // for fencing are gone, which must not pass for "none".
                let state = read.map_err(|e| bad(e.to_string()))?.ok_or_else(|| {
                    bad(
                        "the document is missing (deleted?); `ferry pr clear` starts it empty"
                            .into(),
                    )
                })?;
                let state = Some(state);
                let pointer = saved.unwrap_or_default();
                (
                    Home::Zk {
                        doc: Box::new(doc),
                        pointer,
                    },
                    state,
                )
            }
            None => (Home::Slot, saved),
        };
        Ok((
            PrStore {
                slot: Mutex::new(slot),
                home: Mutex::new(home),
            },
            saved,
        ))
    }

    /// Where the state is saved, for messages.
    pub(crate) fn describe(&self) -> String {
        match &*self.home.lock() {
            Home::Slot => self.slot.lock().describe(),
            Home::Zk { doc, .. } => doc.describe(),
        }
    }

    /// Saves the state durably.
    pub(crate) fn save(&self, bytes: &[u8]) -> Result<()> {
        match &*self.home.lock() {
            Home::Slot => self.slot.lock().store_reservations(bytes),
            Home::Zk { doc, .. } => doc.store(bytes).map_err(|e| Error::Reservations {
                what: doc.describe(),
                why: e.to_string(),
            }),
        }
    }

    /// Moves the slot to another volume's metadata `to` (the target of a
    /// commit, the clone of a restore): what the slot holds (the state
    /// `state`, or the pointer) is saved there first, then `switch` makes
    /// that volume the LUN's, then the slot is `to`. If `switch` fails,
    /// nothing moves.
    pub(crate) fn move_slot(
        &self,
        to: Arc<dyn MetaStore>,
        state: &[u8],
        switch: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        match &*self.home.lock() {
            Home::Slot => to.store_reservations(state)?,
            Home::Zk { pointer, .. } => to.store_reservations(pointer)?,
        }
        switch()?;
        *self.slot.lock() = to;
        Ok(())
    }

    /// Keeps the state in ZooKeeper from now on, at `pointer`: `state` is
    /// written there (replacing whatever an earlier pointer left), then
    /// the pointer into the slot.
    pub(crate) fn keep_in(&self, pointer: &Pointer, state: &[u8]) -> Result<()> {
        let doc = pointer.connect()?;
        doc.overwrite(state).map_err(|e| Error::Reservations {
            what: pointer.describe(),
            why: e.to_string(),
        })?;
        let bytes = pointer.encode();
        self.slot.lock().store_reservations(&bytes)?;
        *self.home.lock() = Home::Zk {
            doc: Box::new(doc),
            pointer: bytes,
        };
        Ok(())
    }

    /// Keeps the state in the volume's slot from now on: `state` replaces
    /// the pointer there.
    pub(crate) fn keep_in_slot(&self, state: &[u8]) -> Result<()> {
        self.slot.lock().store_reservations(state)?;
        *self.home.lock() = Home::Slot;
        Ok(())
    }

    /// The pointer the slot holds, if the state is in ZooKeeper.
    pub(crate) fn pointer(&self) -> Option<Pointer> {
        match &*self.home.lock() {
            Home::Slot => None,
            Home::Zk { pointer, .. } => Pointer::decode(pointer),
        }
    }
}

/// Replaces the reservations saved for the volume whose metadata is
/// `slot` with `change` of them, where they are kept (a pointer is
/// followed, and stays), for an administrator working on a volume no
/// gateway serves. State that is damaged or missing counts as none.
/// Returns the new state and where it was saved.
pub fn replace_offline(
    slot: Arc<dyn MetaStore>,
    change: impl FnOnce(PrState) -> PrState,
) -> Result<(PrState, String)> {
    let saved = slot.load_reservations()?;
    let old = |bytes: Option<Vec<u8>>| {
        bytes
            .and_then(|b| PrState::decode(&b).ok())
            .unwrap_or_default()
    };
    match saved.as_deref().and_then(Pointer::decode) {
        Some(p) => {
            let doc = p.connect()?;
            let bad = |why: String| Error::Reservations {
                what: p.describe(),
                why,
            };
            let next = change(old(doc.load().map_err(|e| bad(e.to_string()))?));
            doc.store(&next.encode()).map_err(|e| bad(e.to_string()))?;
            Ok((next, doc.describe()))
        }
        None => {
            let next = change(old(saved));
            slot.store_reservations(&next.encode())?;
            Ok((next, slot.describe()))
        }
    }
}

/// A pointer for the LUN `lun` of the map at `map_url`, with the
/// credentials in `auth_file`.
pub fn pointer(map_url: &str, lun: &str, auth_file: Option<&Path>) -> Pointer {
    Pointer {
        kept_in: map_url.to_string(),
        lun: lun.to_string(),
        auth_file: auth_file.map(Path::to_path_buf),
    }
}

/// Makes the LUN served from `spec` keep its reservations at `pointer`
/// (the agent does this before its node serves the LUN; nobody may be
/// serving it). Returns whether anything changed.
pub fn keep_in_map(spec: &str, pointer: &Pointer) -> Result<bool> {
    // Most LUNs point there already (a node serving a LUN again): one read
    // of the slot says so, without opening the LUN.
    let (_, served) = crate::lun::resolve(&VolumeSpec::parse(spec)?)?;
    let slot = served.store()?.load_reservations()?;
    if slot.as_deref().and_then(Pointer::decode).as_ref() == Some(pointer) {
        return Ok(false);
    }
    let lun = crate::Lun::open_with(spec, false)?;
    if lun.reservations_pointer().as_ref() == Some(pointer) {
        return Ok(false);
    }
    lun.keep_reservations_in(pointer)?;
    log::info!(
        "{spec}: persistent reservations are kept in {} from now on",
        pointer.describe()
    );
    Ok(true)
}

/// Makes the LUN served from `spec` keep its reservations with its volume
/// again (a LUN leaving the map); nobody may be serving it. Returns
/// whether anything changed.
pub fn keep_with_volume(spec: &str) -> Result<bool> {
    let lun = crate::Lun::open_with(spec, false)?;
    if lun.reservations_pointer().is_none() {
        return Ok(false);
    }
    lun.keep_reservations_with_volume()?;
    log::info!("{spec}: persistent reservations are kept with the volume from now on");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_and_states_are_told_apart() {
        let p = pointer(
            "zk://127.0.0.1:2181/ferry",
            "db",
            Some(Path::new("/etc/ferry/zk")),
        );
        assert_eq!(Pointer::decode(&p.encode()), Some(p.clone()));
        let p2 = pointer("zk://a:1,b:2/x", "web", None);
        assert!(!String::from_utf8(p2.encode())
            .unwrap()
            .contains("auth_file"));
        assert_eq!(Pointer::decode(&p2.encode()), Some(p2));
        // A saved state is not a pointer, nor is garbage.
        let state = ferry_pr::PrState::default().encode();
        assert_eq!(Pointer::decode(&state), None);
        assert_eq!(Pointer::decode(b"{\"kept_in\": 1}"), None);
        assert_eq!(Pointer::decode(b"\x00\x01"), None);
    }

    #[test]
    fn bad_pointers_are_clear_errors_without_connecting() {
        let e = pointer("zk://nowhere", "db", None).connect().unwrap_err();
        assert!(e.to_string().contains("zk://nowhere"), "{e}");
        let e = pointer("zk://127.0.0.1:1/ferry", "a/b", None)
            .connect()
            .unwrap_err();
        assert!(e.to_string().contains("bad LUN name"), "{e}");
        let e = pointer(
            "zk://127.0.0.1:1/ferry",
            "db",
            Some(Path::new("/nonexistent/zk-auth")),
        )
        .connect()
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/zk-auth"), "{e}");
    }
}
