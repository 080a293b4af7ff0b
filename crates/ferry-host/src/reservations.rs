//! Where a served LUN's persistent reservations are saved.
//!
//! Every volume has a slot for them in its metadata (RBD image metadata
//! `ferry.pr`, a file volume's `<path>.ferry-pr`). The slot holds either
//! the state itself (`ferry_pr`'s document) or a [`Pointer`] to a document
//! kept elsewhere, which the [`ReservationHomes`] the LUN was opened with
//! follows (the ZooKeeper map's, reached directly by the `ferry` command
//! and the agent, and through the node's agent by the target plugins:
//! see [`crate::relay`]). A LUN served by the map's agents keeps its
//! reservations in the map; a LUN outside any map keeps them in the slot.
//!
//! Either way the slot travels with the volume: a migration commit or a
//! snapshot restore copies the slot's content to the new volume, so
//! whoever opens the LUN next finds the same reservations.
use std::sync::Arc;

use ferry_core::{Error, MetaStore, Result};
use ferry_pr::{OpenMode, Pointer, PrError, ReservationHomes, ReservationStore};
use parking_lot::Mutex;

/// A volume's own slot, as a store.
pub struct VolumeSlot(pub Arc<dyn MetaStore>);

impl ReservationStore for VolumeSlot {
    fn load(&self) -> std::result::Result<Option<Vec<u8>>, PrError> {
        self.0
            .load_reservations()
            .map_err(|e| PrError::store(self.0.describe(), e))
    }
    fn save(&self, bytes: &[u8]) -> std::result::Result<(), PrError> {
        self.0
            .store_reservations(bytes)
            .map_err(|e| PrError::store(self.0.describe(), e))
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// A reservations error as the engine's, naming where.
pub(crate) fn pr_err(e: PrError) -> Error {
    match e {
        PrError::Store { what, why } | PrError::BadPointer { what, why } => {
            Error::Reservations { what, why }
        }
        e => Error::Reservations {
            what: "persistent reservations".into(),
            why: e.to_string(),
        },
    }
}

enum Home {
    /// The front-end's core answers reservations (LIO, in the kernel):
    /// ferry neither reads nor enforces the slot, only carries its bytes
    /// along when the LUN changes volumes.
    Passive,
    /// The state is in the volume's slot.
    Slot,
    /// The state is kept elsewhere; the slot holds `pointer`.
    Away {
        store: Box<dyn ReservationStore>,
        pointer: Vec<u8>,
    },
}

/// The reservations' slot and where the state really lives.
pub(crate) struct PrStore {
    /// The served volume's metadata (the source's while migrating).
    slot: Mutex<Arc<dyn MetaStore>>,
    home: Mutex<Home>,
    homes: Arc<dyn ReservationHomes>,
}

impl PrStore {
    /// Opens the slot, following a pointer through `homes`; returns the
    /// saved state. A gateway opening the LUN to serve it (`serving`)
    /// claims an outside document (see [`OpenMode::Claim`]).
    pub(crate) fn open(
        slot: Arc<dyn MetaStore>,
        serving: bool,
        homes: Arc<dyn ReservationHomes>,
    ) -> Result<(PrStore, Option<Vec<u8>>)> {
        let saved = slot.load_reservations()?;
        let (home, saved) = match saved.as_deref().and_then(Pointer::decode) {
            Some(p) => {
                let mode = if serving {
                    OpenMode::Claim
                } else {
                    OpenMode::Read
                };
                let (store, state) = homes.open(&p, mode).map_err(pr_err)?;
                let state = state.ok_or_else(|| Error::Reservations {
                    what: p.describe(),
                    why: "the document is missing (deleted?); `ferry pr clear` starts it empty"
                        .into(),
                })?;
                let pointer = saved.unwrap_or_default();
                (Home::Away { store, pointer }, Some(state))
            }
            None => (Home::Slot, saved),
        };
        Ok((
            PrStore {
                slot: Mutex::new(slot),
                home: Mutex::new(home),
                homes,
            },
            saved,
        ))
    }

    /// The slot of a LUN whose front-end answers reservations itself:
    /// nothing is read or followed; see [`Home::Passive`].
    pub(crate) fn passive(slot: Arc<dyn MetaStore>, homes: Arc<dyn ReservationHomes>) -> PrStore {
        PrStore {
            slot: Mutex::new(slot),
            home: Mutex::new(Home::Passive),
            homes,
        }
    }

    /// Where the state is saved, for messages.
    pub(crate) fn describe(&self) -> String {
        match &*self.home.lock() {
            Home::Passive => format!(
                "the target's own core (ferry carries {} along)",
                self.slot.lock().describe()
            ),
            Home::Slot => self.slot.lock().describe(),
            Home::Away { store, .. } => store.describe(),
        }
    }

    /// Saves the state durably.
    pub(crate) fn save(&self, bytes: &[u8]) -> std::result::Result<(), PrError> {
        match &*self.home.lock() {
            Home::Passive => Err(PrError::store(
                self.describe(),
                "this LUN's target answers persistent reservations itself",
            )),
            Home::Slot => VolumeSlot(self.slot.lock().clone()).save(bytes),
            Home::Away { store, .. } => store.save(bytes),
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
            // Whatever the slot holds (a state, a pointer), as it is.
            Home::Passive => {
                if let Some(raw) = self.slot.lock().load_reservations()? {
                    to.store_reservations(&raw)?;
                }
            }
            Home::Slot => to.store_reservations(state)?,
            Home::Away { pointer, .. } => to.store_reservations(pointer)?,
        }
        switch()?;
        *self.slot.lock() = to;
        Ok(())
    }

    /// Keeps the state at `pointer` from now on: `state` is written there
    /// (replacing whatever an earlier pointer left), then the pointer into
    /// the slot.
    pub(crate) fn keep_in(&self, pointer: &Pointer, state: &[u8]) -> Result<()> {
        let (store, _) = self
            .homes
            .open(pointer, OpenMode::Replace(state.to_vec()))
            .map_err(pr_err)?;
        let bytes = pointer.encode();
        self.slot.lock().store_reservations(&bytes)?;
        *self.home.lock() = Home::Away {
            store,
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

    /// The pointer the slot holds, if the state is kept elsewhere.
    pub(crate) fn pointer(&self) -> Option<Pointer> {
        match &*self.home.lock() {
            Home::Passive | Home::Slot => None,
            Home::Away { pointer, .. } => Pointer::decode(pointer),
        }
    }
}
