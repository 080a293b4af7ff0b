//! The administrator's moves of a LUN's persistent reservations between
//! its volume and the cluster map, for LUNs nobody serves. The agent
//! makes the first before its node first serves a LUN of a ZooKeeper map;
//! `ferry pr` makes all three on an administrator's word.
//!
//! The homes (`ferry_zk::ZkReservations`) are injected: this crate, like
//! the data path, links no ZooKeeper client.
use std::sync::Arc;

use ferry_host::ferry_pr::ReservationStore;
use ferry_host::ferry_pr::{OpenMode, Pointer, PrState, ReservationHomes};
use ferry_host::reservations::VolumeSlot;
use ferry_host::{Lun, OpenOptions, VolumeSpec};

use crate::AgentError;

type Result<T, E = AgentError> = std::result::Result<T, E>;

fn offline(spec: &str, homes: &Arc<dyn ReservationHomes>) -> Result<Arc<Lun>> {
    Ok(Lun::open_opts(
        spec,
        OpenOptions {
            run_copier: false,
            homes: homes.clone(),
            kernel_reservations: false,
        },
    )?)
}

/// Makes the LUN served from `spec` keep its reservations at `pointer`
/// (nobody may be serving it). Returns whether anything changed.
pub fn keep_in_map(
    spec: &str,
    pointer: &Pointer,
    homes: &Arc<dyn ReservationHomes>,
) -> Result<bool> {
    // Most LUNs point there already (a node serving a LUN again): one read
    // of the slot says so, without opening the LUN.
    let (_, served) = ferry_host::lun::resolve(&VolumeSpec::parse(spec)?)?;
    let slot = served.store()?.load_reservations()?;
    if slot.as_deref().and_then(Pointer::decode).as_ref() == Some(pointer) {
        return Ok(false);
    }
    let lun = offline(spec, homes)?;
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
pub fn keep_with_volume(spec: &str, homes: &Arc<dyn ReservationHomes>) -> Result<bool> {
    let lun = offline(spec, homes)?;
    if lun.reservations_pointer().is_none() {
        return Ok(false);
    }
    lun.keep_reservations_with_volume()?;
    log::info!("{spec}: persistent reservations are kept with the volume from now on");
    Ok(true)
}

/// Replaces the reservations saved for the LUN whose served volume is
/// `spec` with `change` of them, where they are kept (a pointer is
/// followed, and stays), for an administrator working on a volume no
/// gateway serves. State that is damaged or missing counts as none.
/// Returns the new state and where it was saved.
pub fn replace_offline(
    spec: &VolumeSpec,
    homes: &dyn ReservationHomes,
    change: impl FnOnce(PrState) -> PrState,
) -> Result<(PrState, String)> {
    let slot = spec.store()?;
    let saved = slot.load_reservations()?;
    let old = |bytes: Option<Vec<u8>>| {
        bytes
            .and_then(|b| PrState::decode(&b).ok())
            .unwrap_or_default()
    };
    let bad = |what: String, source| AgentError::Reservations { what, source };
    // What each home held is read once, when it is opened (for a ZooKeeper
    // document, that read is also the version the save is checked against).
    let (store, before): (Box<dyn ReservationStore>, _) =
        match saved.as_deref().and_then(Pointer::decode) {
            Some(p) => homes
                .open(&p, OpenMode::Read)
                .map_err(|e| bad(p.describe(), e))?,
            None => (Box::new(VolumeSlot(slot)), saved),
        };
    let next = change(old(before));
    store
        .save(&next.encode())
        .map_err(|e| bad(store.describe(), e))?;
    Ok((next, store.describe()))
}
