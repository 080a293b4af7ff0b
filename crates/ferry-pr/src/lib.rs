//! SPC-4 persistent reservations for ferry's LUNs.
//!
//! Front-ends that answer PERSISTENT RESERVE IN/OUT themselves keep the
//! state in the gateway's memory, so a failover or restart forgets it and
//! clustered hosts (Windows failover clusters, Pacemaker's fence_scsi,
//! VMware) see their reservations vanish. ferry answers PR commands in the
//! handler instead and keeps the state with the LUN's volume, in the same
//! shared storage as the data (image metadata for RBD, a sidecar file for
//! file volumes), so every gateway that serves the LUN sees the same
//! registrations.
//!
//! - [`state`]: the state, and its saved form;
//! - [`out`]: PERSISTENT RESERVE OUT, every service action but REGISTER
//!   AND MOVE;
//! - [`prin`]: PERSISTENT RESERVE IN: READ KEYS, READ RESERVATION, REPORT
//!   CAPABILITIES, READ FULL STATUS;
//! - [`access`]: which other commands a reservation lets through;
//! - [`Reservations`]: the state of one served LUN, shared by the
//!   front-end's threads, saved before a change is acknowledged.
//!
//! Plain safe Rust, tested from literal CDBs without a target.
#![forbid(unsafe_code)]

pub mod access;
pub mod out;
pub mod prin;
pub mod state;

use std::sync::atomic::{AtomicBool, Ordering};

use ferry_scsi::sense::{asc, key, Sense};
use parking_lot::Mutex;

pub use state::{Nexus, PrState, PrType, Registration, Reservation};

/// Why a command is not completed with GOOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

/// Saves the encoded state durably in the LUN's shared storage.
pub type Persist<'a> = &'a dyn Fn(&[u8]) -> Result<(), String>;

/// The persistent reservations of one served LUN.
pub struct Reservations {
    state: Mutex<PrState>,
    /// No reservation and no unit attention pending: every command may
    /// run, and [`Reservations::check`] answers without taking the lock.
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
            quiet,
        }
    }

    /// Loads a saved document (`None`: nothing saved yet).
    pub fn load(saved: Option<&[u8]>) -> Result<Self, String> {
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

    /// Runs `f` with the state locked: no PR command is served meanwhile.
    /// The host moves the saved state to another volume this way.
    pub fn locked<T>(&self, f: impl FnOnce(&PrState) -> T) -> T {
        f(&self.state.lock())
    }

    /// Replaces the whole state (an administrator's clear), saving first.
    pub fn replace(&self, next: PrState, persist: Persist) -> Result<(), String> {
        let mut state = self.state.lock();
        persist(&next.encode())?;
        self.quiet.store(next.is_quiet(), Ordering::Release);
        *state = next;
        Ok(())
    }

    /// Decides whether `nexus` may run `cdb` (any command but PR IN/OUT,
    /// which [`Reservations::serve_in`] and [`Reservations::serve_out`]
    /// check themselves): a unit attention owed to the nexus is reported
    /// first, then reservation conflicts.
    pub fn check(&self, nexus: &Nexus, cdb: &[u8], persist: Persist) -> Result<(), Refusal> {
        if self.quiet.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = self.state.lock();
        if reports_attention(cdb) {
            if let Some(code) = state.take_attention(nexus) {
                // Best effort: a unit attention reported twice (after a
                // failover before this save) is harmless; one lost is not
                // worth failing the command for.
                if let Err(e) = persist(&state.encode()) {
                    log::warn!("could not save the PR state after a unit attention: {e}");
                }
                self.quiet.store(state.is_quiet(), Ordering::Release);
                return Err(Refusal::Check(Sense::new(key::UNIT_ATTENTION, code)));
            }
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
        let req = out::ProutRequest::parse(cdb, params)?;
        let mut state = self.state.lock();
        if let Some(code) = state.take_attention(nexus) {
            let _ = persist(&state.encode());
            self.quiet.store(state.is_quiet(), Ordering::Release);
            return Err(Refusal::Check(Sense::new(key::UNIT_ATTENTION, code)));
        }
        let mut next = state.clone();
        if next.apply(nexus, &req)? == out::Change::Changed {
            persist(&next.encode()).map_err(|e| {
                log::error!("PR OUT from {nexus} not saved, so refused: {e}");
                Refusal::Check(Sense::new(
                    key::HARDWARE_ERROR,
                    asc::INTERNAL_TARGET_FAILURE,
                ))
            })?;
            log::info!(
                "PR OUT {:?} from {nexus}: generation {}",
                req.action,
                next.generation
            );
        }
        self.quiet.store(next.is_quiet(), Ordering::Release);
        *state = next;
        Ok(())
    }

    /// PERSISTENT RESERVE IN: fills `buf` (the initiator's allocation) and
    /// returns how many bytes are valid.
    pub fn serve_in(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        buf: &mut [u8],
        persist: Persist,
    ) -> Result<usize, Refusal> {
        let req = prin::PrinRequest::parse(cdb)?;
        let mut state = self.state.lock();
        if let Some(code) = state.take_attention(nexus) {
            let _ = persist(&state.encode());
            self.quiet.store(state.is_quiet(), Ordering::Release);
            return Err(Refusal::Check(Sense::new(key::UNIT_ATTENTION, code)));
        }
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
