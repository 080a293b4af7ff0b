//! SPC-4 persistent reservations for ferry's LUNs.
//!
//! Front-ends that answer PERSISTENT RESERVE IN/OUT themselves keep the
//! state in the gateway's memory, so a failover or restart forgets it and
//! clustered hosts (Windows failover clusters, Pacemaker's fence_scsi,
//! VMware) see their reservations vanish. ferry answers PR commands in the
//! handler instead and keeps the state in shared storage (the ZooKeeper
//! map for LUNs its agents serve, else with the volume: image metadata for
//! RBD, a sidecar file for file volumes), so every gateway that serves the
//! LUN sees the same registrations. This crate does not know where: it
//! hands the saved form to a [`ReservationStore`].
//!
//! - [`state`]: the state, and its saved form;
//! - [`out`]: PERSISTENT RESERVE OUT, every service action;
//! - [`prin`]: PERSISTENT RESERVE IN: READ KEYS, READ RESERVATION, REPORT
//!   CAPABILITIES, READ FULL STATUS;
//! - [`access`]: which other commands a reservation lets through;
//! - [`store`]: the traits of where the saved form is kept;
//! - [`Reservations`]: the state of one served LUN, shared by the
//!   front-end's threads, saved before a change is acknowledged, checked
//!   without waiting on storage.
//!
//! Plain safe Rust, tested from literal CDBs without a target.
#![forbid(unsafe_code)]

pub mod access;
mod error;
pub mod out;
pub mod prin;
pub mod state;
pub mod store;

use std::sync::atomic::{AtomicBool, Ordering};

use ferry_scsi::sense::{key, Sense};
use parking_lot::Mutex;

pub use error::PrError;
pub use state::{Nexus, PrState, PrType, Registration, Reservation};
pub use store::{OpenMode, OpenedHome, Pointer, ReservationHomes, ReservationStore};

/// Why a command is not completed with GOOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

/// Saves the encoded state durably in the LUN's shared storage.
pub type Persist<'a> = &'a dyn Fn(&[u8]) -> Result<(), PrError>;

/// The persistent reservations of one served LUN.
///
/// Two locks, so that checking a command never waits on storage: `state`
/// is held only to read or swap the state; `changes` serializes the
/// changes (PR OUT, an administrator's clear, moving the saved state),
/// which save the next state with `state` free and swap it in after.
pub struct Reservations {
    state: Mutex<PrState>,
    changes: Mutex<()>,
    /// No reservation and no unit attention pending: every command may
    /// run, and [`Reservations::check`] answers without taking a lock.
    quiet: AtomicBool,
}

impl Default for Reservations {
    fn default() -> Self {
        Self::new(PrState::default())
    }
}

impl Reservations {
    pub fn new(state: PrState) -> Self {
        let quiet = AtomicBool::new(state.is_quiet());
        Reservations {
            state: Mutex::new(state),
            changes: Mutex::new(()),
            quiet,
        }
    }

    /// Loads a saved document (`None`: nothing saved yet).
    pub fn load(saved: Option<&[u8]>) -> Result<Self, PrError> {
        let state = match saved {
            Some(bytes) => PrState::decode(bytes)?,
            None => PrState::default(),
        };
        Ok(Self::new(state))
    }

    /// No reservation and no unit attention pending: every command may run.
    pub fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Acquire)
    }

    /// A copy of the current state.
    pub fn state(&self) -> PrState {
        self.state.lock().clone()
    }

    /// Runs `f` on the current state with changes held off (PR OUT waits;
    /// commands are still checked). The host moves the saved state to
    /// another volume this way.
    pub fn serialized<T>(&self, f: impl FnOnce(&PrState) -> T) -> T {
        let _changes = self.changes.lock();
        let current = self.state();
        f(&current)
    }

    /// Replaces the state with `change` of it (an administrator's clear),
    /// saved first.
    pub fn replace_with(
        &self,
        change: impl FnOnce(&PrState) -> PrState,
        persist: Persist,
    ) -> Result<(), PrError> {
        let _changes = self.changes.lock();
        let next = change(&self.state());
        persist(&next.encode())?;
        self.install(&mut self.state.lock(), next);
        Ok(())
    }

    /// Makes `next` the enforced state (`state` is the locked current one).
    fn install(&self, state: &mut PrState, next: PrState) {
        self.quiet.store(next.is_quiet(), Ordering::Release);
        *state = next;
    }

    /// Removes the unit attention owed to `nexus`, if any, as sense.
    ///
    /// The removal is not saved: a unit attention reported twice (after a
    /// failover before the next save) is harmless, and saving here would
    /// put a storage write on the path of ordinary commands.
    fn attention(&self, state: &mut PrState, nexus: &Nexus) -> Result<(), Refusal> {
        match state.take_attention(nexus) {
            Some(code) => {
                self.quiet.store(state.is_quiet(), Ordering::Release);
                Err(Refusal::Check(Sense::new(key::UNIT_ATTENTION, code)))
            }
            None => Ok(()),
        }
    }

    /// Decides whether `nexus` may run `cdb` (any command but PR IN/OUT,
    /// which [`Reservations::serve_in`] and [`Reservations::serve_out`]
    /// check themselves): a unit attention owed to the nexus is reported
    /// first, then reservation conflicts.
    pub fn check(&self, nexus: &Nexus, cdb: &[u8]) -> Result<(), Refusal> {
        if self.quiet.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = self.state.lock();
        if reports_attention(cdb) {
            self.attention(&mut state, nexus)?;
        }
        if state.allows(nexus, cdb) {
            Ok(())
        } else {
            Err(Refusal::Conflict)
        }
    }

    /// PERSISTENT RESERVE OUT from `nexus` with its parameter list.
    ///
    /// Ordering rule: a change is saved (durably, through `persist`)
    /// before it becomes the state the LUN enforces and before the
    /// initiator is told GOOD, so an acknowledged registration or
    /// reservation is never lost to a crash or a failover. A failed save
    /// leaves the state as it was and fails the command.
    pub fn serve_out(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        params: &[u8],
        persist: Persist,
    ) -> Result<(), Refusal> {
        let _changes = self.changes.lock();
        self.attention(&mut self.state.lock(), nexus)?;
        let req = out::ProutRequest::parse(cdb, params)?;
        let before = self.state();
        let mut next = before.clone();
        if next.apply(nexus, &req)? == out::Change::None {
            return Ok(());
        }
        persist(&next.encode()).map_err(|e| {
            log::error!("PR OUT from {nexus} not saved, so refused: {e}");
            Refusal::Check(Sense::internal_failure())
        })?;
        log::info!(
            "PR OUT {:?} from {nexus}: generation {}",
            req.action,
            next.generation
        );
        let mut state = self.state.lock();
        // Unit attentions reported while this one was saved stay reported:
        // keep the ones this command added, and the older ones only if
        // still owed.
        next.attentions
            .retain(|a| !before.attentions.contains(a) || state.attentions.contains(a));
        self.install(&mut state, next);
        Ok(())
    }

    /// PERSISTENT RESERVE IN: fills `buf` (the initiator's allocation) and
    /// returns how many bytes are valid.
    pub fn serve_in(&self, nexus: &Nexus, cdb: &[u8], buf: &mut [u8]) -> Result<usize, Refusal> {
        let mut state = self.state.lock();
        self.attention(&mut state, nexus)?;
        let req = prin::PrinRequest::parse(cdb)?;
        let data = state.report(req.report);
        let n = data.len().min(req.allocation_length).min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }
}

/// Commands that report a pending unit attention (SAM-5 5.14: all but
/// INQUIRY, REPORT LUNS and REQUEST SENSE).
fn reports_attention(cdb: &[u8]) -> bool {
    !matches!(cdb.first(), Some(0x12 | 0xa0 | 0x03))
}

#[cfg(test)]
mod tests;
